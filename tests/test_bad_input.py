"""Bad input gives a project exception with one clear sentence, and the CLI prints it without a
traceback: truncated/corrupt files, non-models, unsupported architectures and tensor types, empty
prompts, --max-tokens 0, missing models."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gguf
import model_helpers as mh
import numpy as np
import pytest
from gguf import quants

from edgert_core.api import load_model
from edgert_core.errors import EdgeRTError, GenerationError, ModelError


def one_sentence(exc: pytest.ExceptionInfo[EdgeRTError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.endswith("."), text
    return text


@pytest.fixture()
def tiny_gguf(tmp_path: Path) -> Path:
    return mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "tiny.gguf", "Q8_0")


def test_truncated_gguf(tiny_gguf: Path) -> None:
    data = tiny_gguf.read_bytes()
    cut = tiny_gguf.with_name("cut.gguf")
    cut.write_bytes(data[: len(data) - 5000])
    with pytest.raises(ModelError) as exc:
        load_model(cut)
    text = one_sentence(exc)
    assert "truncated" in text and "cut.gguf" in text
    assert "tensor output.weight" in text or "tensor blk." in text


def test_gguf_cut_inside_its_header(tiny_gguf: Path) -> None:
    cut = tiny_gguf.with_name("head.gguf")
    cut.write_bytes(tiny_gguf.read_bytes()[:300])
    with pytest.raises(ModelError) as exc:
        load_model(cut)
    assert "truncated" in one_sentence(exc) and "head.gguf" in str(exc.value)


def test_corrupt_gguf_header(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + np.random.default_rng(0).bytes(4000))
    with pytest.raises(ModelError) as exc:
        load_model(bad)
    assert "bad.gguf" in one_sentence(exc)


def test_file_that_is_no_model(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("just some notes, not a model\n" * 10)
    with pytest.raises(ModelError) as exc:
        load_model(text)
    assert "notes.gguf" in one_sentence(exc) and "GGUF" in str(exc.value)
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(ModelError) as exc:
        load_model(folder)
    assert "config.json" in one_sentence(exc)


def test_unsupported_gguf_architecture(tmp_path: Path) -> None:
    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError) as exc:
        load_model(path)
    assert "'mamba'" in one_sentence(exc) and "llama" in str(exc.value)


def test_unsupported_hf_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(ModelError) as exc:
        load_model(tmp_path)
    assert "MistralForCausalLM" in one_sentence(exc)


def test_unsupported_tensor_type_is_named(tmp_path: Path) -> None:
    """A Q5_0 tensor in an otherwise good file: the error names the tensor and the type."""
    src = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "ok.gguf", "F32")
    out = tmp_path / "q5.gguf"
    reader_meta = mh.load_tensors(mh.fixture("tiny_llama") / "model.safetensors")
    w = gguf.GGUFWriter(str(out), "llama")
    for key, value in _llama_kv(src).items():
        getattr(w, key)(value)
    for name, arr in _gguf_tensors(src).items():
        if name == "blk.1.ffn_up.weight":
            q = quants.quantize(arr, gguf.GGMLQuantizationType.Q5_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q5_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert reader_meta
    with pytest.raises(ModelError) as exc:
        load_model(out)
    text = one_sentence(exc)
    assert "blk.1.ffn_up.weight" in text and "Q5_0" in text


def _llama_kv(path: Path) -> dict[str, object]:
    from edgert_core.loaders.gguf_loader import read_header

    md = read_header(path).metadata
    return {
        "add_block_count": md["llama.block_count"],
        "add_context_length": md["llama.context_length"],
        "add_embedding_length": md["llama.embedding_length"],
        "add_feed_forward_length": md["llama.feed_forward_length"],
        "add_head_count": md["llama.attention.head_count"],
        "add_head_count_kv": md["llama.attention.head_count_kv"],
        "add_layer_norm_rms_eps": md["llama.attention.layer_norm_rms_epsilon"],
    }


def _gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: np.array(t.data) for t in reader.tensors}


def test_truncated_and_corrupt_safetensors(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(mh.fixture("tiny_llama"), folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1000])
    with pytest.raises(ModelError) as exc:
        load_model(folder)
    assert "truncated" in one_sentence(exc) and "model.safetensors" in str(exc.value)
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64)
    with pytest.raises(ModelError) as exc:
        load_model(folder)
    assert "model.safetensors" in one_sentence(exc)


def test_missing_tensor_and_wrong_shape(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(mh.fixture("tiny_llama"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError) as exc:
        load_model(folder)
    assert "model.layers.2." in one_sentence(exc)
    cfg["num_hidden_layers"] = 2
    cfg["intermediate_size"] = 100
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError) as exc:
        load_model(folder)
    assert "mlp" in one_sentence(exc) and "shape" in str(exc.value)


def test_empty_prompt_max_tokens_zero_and_long_prompt() -> None:
    model = load_model(mh.fixture("tiny_llama"), backend="numpy", max_context=16)
    with pytest.raises(GenerationError) as exc:
        model.generate("")
    assert "empty" in one_sentence(exc)
    with pytest.raises(GenerationError) as exc:
        model.generate([])
    assert "empty" in one_sentence(exc)
    with pytest.raises(GenerationError) as exc:
        model.generate("hello", max_tokens=0)
    assert "max_tokens" in one_sentence(exc)
    with pytest.raises(GenerationError) as exc:
        model.generate(list(range(16)), max_tokens=1)
    assert "--max-context" in one_sentence(exc)
    with pytest.raises(GenerationError) as exc:
        model.generate([1, 99999])
    assert "99999" in one_sentence(exc)


def test_missing_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError) as exc:
        load_model(tmp_path / "nope.gguf")
    assert "nope.gguf" in one_sentence(exc) and "does not exist" in str(exc.value)
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError) as exc:
        load_model("smollm2")
    assert "edge-rt pull smollm2" in one_sentence(exc)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "/nonexistent/model.gguf", "--prompt", "hi"], "does not exist"),
        (["--model", "{tiny}", "--prompt", ""], "empty"),
        (["--model", "{tiny}", "--prompt", "hi", "--max-tokens", "0"], "--max-tokens"),
        (["--model", "{tiny}", "--prompt-ids", "1,x"], "--prompt-ids"),
        (["--model", "{notes}", "--prompt", "hi"], "not a model"),
    ],
)
def test_cli_prints_one_line_without_traceback(
    args: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edgert_core.cli.app import main

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    args = [a.replace("{tiny}", str(mh.fixture("tiny_llama"))).replace("{notes}", str(notes))
            for a in args]
    monkeypatch.setattr(sys, "argv", ["edge-rt", "run", "--backend", "numpy", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and needle in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
