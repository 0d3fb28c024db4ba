"""Fuzzing of GGUF and safetensors headers with ``hypothesis``: mutated bytes and mutated fields of
valid tiny files. Every example must end, within 5 s, in a clean one-line :class:`EdgeRTError` or a
run; a mutation of a structural field (a count, a size, a dimension, a type, an offset, a byte range)
that is accepted must give the same tokens as the unmodified file.

Example counts are bounded (see ``settings`` below) so the file runs in well under a minute.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import model_helpers as mh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_inputs import (
    CASE_SECONDS,
    base_gguf,
    fixture_bytes,
    join_safetensors,
    outcome,
    parsed,
    split_safetensors,
)

from edgert_core.errors import EdgeRTError
from edgert_core.plugins import PluginRegistry, load_registry

FUZZ = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


TALLY: Counter[str] = Counter()  # outcomes, for a look with -s


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return load_registry()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def baseline(work: Path, registry: PluginRegistry) -> dict[str, list[int]]:
    from test_hostile_inputs import run_ids

    (work / "base.gguf").write_bytes(base_gguf())
    return {"gguf": run_ids(work / "base.gguf", registry),
            "llama": run_ids(mh.fixture("tiny_llama"), registry)}


def check(model: Path, registry: PluginRegistry, same_as: list[int] | None) -> str:
    """Load and run ``model``; returns "error" or "ran". ``same_as``: tokens an accepted file must
    give (``None``: any tokens)."""
    ids, error, took = outcome(model, registry)
    assert took < CASE_SECONDS
    if error is not None:
        assert isinstance(error, EdgeRTError), f"{type(error).__name__}: {error}"
        text = str(error)
        assert "\n" not in text and text.endswith("."), text
        TALLY["error"] += 1
        return "error"
    assert ids is not None and len(ids) >= 1
    TALLY["ran"] += 1
    if same_as is not None:
        assert ids == same_as
    return "ran"


# -- GGUF ---------------------------------------------------------------------------------------------

_HEADER_END = parsed().data_start
_STRUCTURAL = [f for f in parsed().fields
               if f.label in ("n_tensors", "n_kv") or f.label.endswith(
                   (".n_dims", ".type", ".offset", ".count", ".len", ".etype")) or ".ne[" in f.label]


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, _HEADER_END - 1), st.integers(0, 255)),
                      min_size=1, max_size=8))
def test_gguf_header_bytes(edits: list[tuple[int, int]], work: Path, registry: PluginRegistry,
                           baseline: dict[str, list[int]]) -> None:
    data = bytearray(base_gguf())
    for pos, value in edits:
        data[pos] = value
    path = work / "bytes.gguf"
    path.write_bytes(bytes(data))
    check(path, registry, None)  # a changed metadata value may legitimately change the output


@FUZZ
@given(index=st.integers(0, len(_STRUCTURAL) - 1),
       value=st.one_of(st.integers(0, 64), st.integers(0, (1 << 64) - 1),
                       st.sampled_from([1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63])))
def test_gguf_structural_fields(index: int, value: int, work: Path, registry: PluginRegistry,
                                baseline: dict[str, list[int]]) -> None:
    f = _STRUCTURAL[index]
    data = bytearray(base_gguf())
    width = {4: "<I", 8: "<Q"}[f.size]
    struct.pack_into(width, data, f.offset, value % (1 << (8 * f.size)))
    path = work / "field.gguf"
    path.write_bytes(bytes(data))
    check(path, registry, baseline["gguf"])


@FUZZ
@given(cut=st.integers(0, _HEADER_END + 64))
def test_gguf_truncated_anywhere_in_the_header(cut: int, work: Path, registry: PluginRegistry,
                                               baseline: dict[str, list[int]]) -> None:
    path = work / "cut.gguf"
    path.write_bytes(base_gguf()[:cut])
    assert check(path, registry, None) == "error"


# -- safetensors --------------------------------------------------------------------------------------

_ST = fixture_bytes("tiny_llama", "model.safetensors")
_ST_HEADER, _ST_DATA = split_safetensors(_ST)
_ST_NAMES = sorted(k for k in _ST_HEADER if k != "__metadata__")
_HEADER_LEN = struct.unpack_from("<Q", _ST)[0]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def st_folder(work: Path) -> Path:
    import shutil

    folder = work / "st"
    shutil.copytree(mh.fixture("tiny_llama"), folder)
    return folder


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 8 + _HEADER_LEN - 1), st.integers(0, 255)),
                      min_size=1, max_size=8))
def test_safetensors_header_bytes(edits: list[tuple[int, int]], st_folder: Path,
                                  registry: PluginRegistry, baseline: dict[str, list[int]]) -> None:
    data = bytearray(_ST)
    for pos, value in edits:
        data[pos] = value
    (st_folder / "model.safetensors").write_bytes(bytes(data))
    # only the header changed: an accepted file holds the same tensors in the same places
    check(st_folder, registry, baseline["llama"])


@FUZZ
@given(name=st.sampled_from(_ST_NAMES), key=st.sampled_from(["dtype", "shape", "data_offsets"]),
       value=st.one_of(json_values, st.sampled_from(["F16", "BF16", "I8", "F64", "U8"]),
                       st.lists(st.integers(0, 1 << 20), min_size=0, max_size=4)))
def test_safetensors_header_fields(name: str, key: str, value: Any, st_folder: Path,
                                   registry: PluginRegistry, baseline: dict[str, list[int]]) -> None:
    header = json.loads(json.dumps(_ST_HEADER))
    header[name][key] = value
    (st_folder / "model.safetensors").write_bytes(join_safetensors(header, _ST_DATA))
    check(st_folder, registry, baseline["llama"])


@FUZZ
@given(length=st.one_of(st.integers(0, _HEADER_LEN + 64), st.integers(0, (1 << 64) - 1)))
def test_safetensors_header_length(length: int, st_folder: Path, registry: PluginRegistry,
                                   baseline: dict[str, list[int]]) -> None:
    (st_folder / "model.safetensors").write_bytes(struct.pack("<Q", length) + _ST[8:])
    check(st_folder, registry, baseline["llama"])


def test_fuzz_examples_finish_quickly(work: Path, registry: PluginRegistry) -> None:
    """The per-example bound holds for the slowest kind of input (a file that runs)."""
    path = work / "ok.gguf"
    path.write_bytes(base_gguf())
    start = time.perf_counter()
    assert check(path, registry, None) == "ran"
    assert time.perf_counter() - start < CASE_SECONDS
