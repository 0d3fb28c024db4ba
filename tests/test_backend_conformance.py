"""The backend contract: the conformance suite (``edgert_core.testing.check_backend``) on the numpy
reference, the suite failing broken backends, and a backend that subclasses ``KernelBackend``
directly (the example of docs/plugins.md, ``tests/thirdparty_backend``) running real models.

Run with ``pytest -s`` to see the suite's per-op lines."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import model_helpers as mh
import numpy as np
import pytest
from numpy.typing import NDArray

from edgert_core.api import choose_backend, load_model
from edgert_core.backends.base import KernelBackend, TensorForm, Weight
from edgert_core.backends.numpy_ref import NumpyBackend
from edgert_core.engine import Engine
from edgert_core.errors import EdgeRTError
from edgert_core.layout import TensorInfo
from edgert_core.plan import PlanningContext
from edgert_core.plugins import PluginRegistry, load_registry
from edgert_core.testing import CONFORMANCE_OPS, WEIGHT_DTYPES, check_backend

ROOT = Path(__file__).resolve().parents[1]
F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]


def example_backend_module() -> ModuleType:
    """``tests/thirdparty_backend/edgert_example_backend.py``, imported from its file."""
    path = ROOT / "tests" / "thirdparty_backend" / "edgert_example_backend.py"
    spec = importlib.util.spec_from_file_location("edgert_example_backend", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numpy_backend_conforms_on_every_op_and_weight_type() -> None:
    results = check_backend(NumpyBackend())
    seen = {(r.op, r.dtype) for r in results}
    weight_ops = ("prepare", "rows", "linear", "fuse_rows")
    assert {(op, d) for op in weight_ops for d in WEIGHT_DTYPES} <= seen
    assert {r.op for r in results} == set(CONFORMANCE_OPS)
    assert all(r.cases > 0 and r.max_error == 0.0 for r in results)  # the reference against itself


# -- the suite fails broken backends ------------------------------------------------------------------


class LinearOffByAPart(NumpyBackend):
    name = "broken-linear"

    def linear(self, x: F32, w: Weight) -> F32:
        out = super().linear(x, w)
        out *= np.float32(1.0001)
        return out


class PreparesPastTheStart(NumpyBackend):
    name = "broken-offset"

    def prepared_form(self, info: TensorInfo) -> TensorForm:
        form = super().prepared_form(info)
        return TensorForm(form.dtype, form.shape, form.nbytes + 4, False, form.row_nbytes)

    def prepare_weight(self, info: TensorInfo, raw: U8, out: U8) -> Weight:
        return super().prepare_weight(info, raw, out[4:])


class PreparesIntoItsOwnMemory(NumpyBackend):
    name = "broken-own-memory"

    def prepared_form(self, info: TensorInfo) -> TensorForm:
        return TensorForm.of(np.float32, info.shape)  # never the file's bytes: always prepared

    def prepare_weight(self, info: TensorInfo, raw: U8, out: U8) -> Weight:
        return super().prepare_weight(info, raw, np.empty_like(out))


class RowsNotContiguous(NumpyBackend):
    """Declares and holds every matrix transposed ``[in, out]``."""

    name = "broken-rows"

    def prepared_form(self, info: TensorInfo) -> TensorForm:
        return TensorForm.of(np.float32, info.shape[::-1])

    def prepare_weight(self, info: TensorInfo, raw: U8, out: U8) -> Weight:
        w = super().prepare_weight(info, raw, np.empty_like(out))
        data = out[: w.data.nbytes].view(np.float32).reshape(info.shape[::-1])
        data[...] = w.data.T
        return Weight(info, data)

    def to_float(self, w: Weight) -> F32:
        out: F32 = np.ascontiguousarray(w.data.T)
        return out


class RopeHalves(NumpyBackend):
    name = "broken-rope"

    def rope(self, x: F32, cos: F32, sin: F32, *, interleaved: bool) -> F32:
        return super().rope(x, cos, sin, interleaved=False)


class AttentionNotCausal(NumpyBackend):
    name = "broken-attention"

    def attention(self, q: F32, k: F32, v: F32, start: int) -> F32:
        return super().attention(q, k, v, k.shape[1])  # every query sees every key


class FusesInTheWrongOrder(NumpyBackend):
    name = "broken-fuse"

    def fuse_rows(self, weights: Sequence[Weight]) -> Weight | None:
        fused = super().fuse_rows(weights)
        if fused is None:
            return None
        first = weights[0].info.shape[0]  # the first weight's rows moved to the end
        return Weight(fused.info, np.roll(fused.data, -first, axis=0))


class FloatSoftmax64(NumpyBackend):
    name = "broken-dtype"

    def softmax(self, x: F32) -> F32:
        return super().softmax(x).astype(np.float64)


@pytest.mark.parametrize(
    ("backend", "op"),
    [
        (LinearOffByAPart(), "linear"),
        (PreparesPastTheStart(), "prepare"),
        (PreparesIntoItsOwnMemory(), "prepare"),
        (RowsNotContiguous(), "prepare"),
        (RopeHalves(), "rope"),
        (AttentionNotCausal(), "attention"),
        (FusesInTheWrongOrder(), "fuse_rows"),
        (FloatSoftmax64(), "softmax"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_the_suite_fails_a_broken_backend_on_that_op(backend: KernelBackend, op: str) -> None:
    lines: list[str] = []
    with pytest.raises(AssertionError, match="fails the conformance suite") as caught:
        check_backend(backend, report=lines.append)
    failed = [line.split()[1] for line in str(caught.value).splitlines()[1:]]
    assert op in failed
    assert any(line.split()[1] == op and line.endswith(("FAIL", ")")) and "FAIL" in line
               for line in lines)


def test_a_declared_tolerance_is_what_an_op_is_held_to() -> None:
    with pytest.raises(AssertionError, match="linear"):
        check_backend(LinearOffByAPart(), report=None)
    results = check_backend(LinearOffByAPart(), tolerances={"linear": 1e-3, "fuse_rows": 1e-3},
                            report=None)
    linear = [r for r in results if r.op == "linear"]
    assert all(5e-5 < r.max_error <= 1e-3 and r.tolerance == 1e-3 for r in linear)
    # a key op:TYPE holds one op on one weight type: the other types keep the default
    only_f32 = {"linear:F32": 1e-3, "fuse_rows:F32": 1e-3}
    with pytest.raises(AssertionError, match=r"linear +F16") as caught:
        check_backend(LinearOffByAPart(), tolerances=only_f32, report=None)
    assert "linear     F32" not in str(caught.value)
    with pytest.raises(ValueError, match="Unknown ops"):
        check_backend(NumpyBackend(), tolerances={"matmul": 1.0})


# -- a backend that is not the numpy backend -----------------------------------------------------------


def test_the_example_backend_derives_from_kernel_backend_only_and_conforms() -> None:
    module = example_backend_module()
    backend = module.Float64Backend()
    assert isinstance(backend, KernelBackend) and not isinstance(backend, NumpyBackend)
    abstract = set(KernelBackend.__abstractmethods__)
    assert abstract == {"status", "supported_dtypes", "prepared_form", "prepare_weight", "to_float",
                        "linear"}
    assert set(vars(module.Float64Backend)) >= abstract
    results = check_backend(backend)
    assert {r.dtype for r in results if r.op == "linear"} == {"F32", "F16", "BF16"}


def greedy(model_name: str, backend: str, registry: PluginRegistry, strategy: str = "auto") -> list[int]:
    """16 greedy tokens after the fixture's prompt; with ``sequential``, every layer streamed."""
    meta, _ = mh.reference(model_name)
    model = load_model(mh.fixture(model_name), backend=backend, max_context=64,
                       registry=registry, strategy=strategy, notify=None)
    try:
        tokens = [t.id for t in model.generate(meta["prompt_ids"][:8], max_tokens=16) if t.id >= 0]
        if strategy == "sequential":
            assert not any(g.resident for g in model.engine.plan.groups)
        return tokens
    finally:
        model.close()


@pytest.mark.parametrize("name", mh.TINY_MODELS)
def test_a_kernel_backend_subclass_generates_the_numpy_tokens(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path))
    registry = load_registry(extra=[("f64acc", example_backend_module())])
    assert choose_backend(registry, frozenset({"F32"}), "f64acc").name == "f64acc"
    assert choose_backend(registry, frozenset({"F32"})).name != "f64acc"  # priority -10
    want = greedy(name, "numpy", registry)
    assert len(want) == 16
    assert greedy(name, "f64acc", registry) == want
    # every layer streamed: weights prepared into stage slots of pool memory as they are needed
    assert greedy(name, "f64acc", registry, "sequential") == want


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (PreparesIntoItsOwnMemory(), "did not prepare tensor .* at the start of the memory"),
        (PreparesPastTheStart(), "declares 16388 bytes for tensor .*fix its prepared_form"),
        (RowsNotContiguous(), "rows are not contiguous"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_the_engine_refuses_a_backend_that_breaks_the_memory_rule(
    backend: KernelBackend, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path))
    model = load_model(mh.fixture("tiny_llama"), backend="numpy", max_context=16, notify=None)
    planned = Engine(model.source, backend).plan(PlanningContext(None, max_context=16))
    with pytest.raises(EdgeRTError, match=message):
        planned.prepare(weight_cache=False)
    model.close()
