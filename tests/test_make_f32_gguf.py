"""scripts/make_f32_gguf.py: the F32 copy of a quantized GGUF that the F32 memory-limit rows run on
holds the same model (metadata, tokenizer, tensor names and shapes) with every weight in float32,
and the numpy backend computes the same logits from it as from the quantized file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import model_helpers as mh
import numpy as np
import pytest

from edgert_core.api import load_model, open_source

ROOT = Path(__file__).resolve().parents[1]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_f32_gguf", ROOT / "scripts" / "make_f32_gguf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_f32_gguf"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_f32_copy_is_the_same_model_in_float32(tmp_path: Path, qtype: str) -> None:
    quantized = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / f"t-{qtype}.gguf", qtype)
    out = tmp_path / "t-f32.gguf"
    assert _script().main(["--model", str(quantized), str(out)]) == 0
    a, b = open_source(str(quantized)), open_source(str(out))
    try:
        assert a.config == b.config
        assert set(b.validate().dtypes) == {"F32"}
        assert qtype in set(a.validate().dtypes)
    finally:
        a.close()
        b.close()
    ids = [5, 6, 7, 8, 9, 10, 11]
    logits = []
    for path in (quantized, out):
        model = load_model(path, backend="numpy", max_context=32, notify=None)
        try:
            logits.append(model.logits(ids))
            assert model.tokenizer is not None and model.tokenizer.encode("hello world")
        finally:
            model.close()
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_an_existing_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quantized = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "t.gguf", "Q8_0")
    out = tmp_path / "taken.gguf"
    out.write_bytes(b"mine")
    assert _script().main(["--model", str(quantized), str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"mine"
