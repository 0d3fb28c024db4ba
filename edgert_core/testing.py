"""Helpers for testing partition strategies and backends (ours and third parties'): layouts whose
layers weigh exactly what a test says, a small planning context, the real SmolLM2 model file, and
the backend conformance suite (:func:`check_backend`). Import from tests only
(:func:`smollm2_for_tests` imports pytest)."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edgert_core.backends.base import KernelBackend, Weight
from edgert_core.backends.numpy_ref import BLOCK_BYTES, QK, NumpyBackend, file_nbytes
from edgert_core.layout import LayerInfo, ModelDims, ModelLayout, TensorInfo
from edgert_core.plan import PlanningContext

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]


def handmade_layout(layer_bytes: Sequence[int], head_bytes: int, name: str = "handmade") -> ModelLayout:
    """A tiny Llama-shaped model whose layers and head weigh exactly the given bytes (one tensor
    each); its KV-cache and activation bytes are small and fixed."""
    dims = ModelDims(
        "llama",
        len(layer_bytes),
        hidden=8,
        n_heads=2,
        n_kv_heads=1,
        head_dim=4,
        intermediate=16,
        vocab=32,
        max_position=64,
    )
    layers = tuple(
        LayerInfo(i, (TensorInfo(f"layers.{i}.w", (n,), "F32", n),)) for i, n in enumerate(layer_bytes)
    )
    head = (TensorInfo("head.w", (head_bytes,), "F32", head_bytes),) if head_bytes else ()
    return ModelLayout(name, dims, layers, (), head)


def small_context(budget: int | None) -> PlanningContext:
    """A planning context of 8 tokens (prefill chunks of 4), so fixed bytes stay tiny."""
    return PlanningContext(budget, max_context=8, prefill_chunk=4)


@functools.cache
def smollm2_for_tests() -> Path:
    """The SmolLM2-135M-Instruct GGUF for a test: ``$EDGERT_SMOLLM2_GGUF`` (a copy the tests only
    read; this repo's conftest.py points it at one the user already pulled), else fetched once with
    ``edge-rt pull``'s logic into ``$EDGERT_CACHE`` (a temporary folder in this repo's test runs).
    When it cannot be had, the test is skipped with the reason, or fails where
    ``EDGERT_REQUIRE_SMOLLM2=1`` (as in .ci/run)."""
    import pytest

    from edgert_core.errors import ModelError
    from edgert_core.pull import pull

    env = os.environ.get("EDGERT_SMOLLM2_GGUF")
    if env:
        return Path(env)
    try:
        return pull("smollm2")
    except ModelError as exc:
        if os.environ.get("EDGERT_REQUIRE_SMOLLM2") == "1":
            pytest.fail(f"SmolLM2 is required (EDGERT_REQUIRE_SMOLLM2=1) but could not be fetched: {exc}")
        pytest.skip(f"SmolLM2 could not be fetched into the test cache: {exc}")


# -- the backend conformance suite -----------------------------------------------------------------

#: The tolerance of each op: its largest error (see :class:`OpResult`) against the numpy reference.
#: ``prepare`` (a weight's values, ``to_float`` of a prepared weight) and ``rows`` must be exact;
#: the math may differ by fp32 rounding in another summation order. A backend that computes
#: differently (quantized activations, fp16 math) declares its own, per op, in ``tolerances``.
DEFAULT_TOLERANCES: dict[str, float] = {
    "prepare": 0.0,
    "rows": 0.0,
    "linear": 1e-5,
    "fuse_rows": 1e-5,
    "rmsnorm": 1e-5,
    "layernorm": 1e-5,
    "silu": 1e-6,
    "gelu_tanh": 1e-6,
    "softmax": 1e-6,
    "rope": 1e-6,
    "attention": 1e-5,
}

#: The operations :func:`check_backend` checks, in order (every method of ``KernelBackend`` that the
#: model code and the engine call; ``prepare`` covers ``prepared_form``, ``weight_nbytes``,
#: ``prepare_weight`` and ``to_float``).
CONFORMANCE_OPS: tuple[str, ...] = tuple(DEFAULT_TOLERANCES)

#: Weight types the suite can make random file bytes of.
WEIGHT_DTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
FLOAT_DTYPES = ("F32", "F16", "BF16")

#: ``(rows, cols)`` of the matrices checked; columns are whole blocks of 32.
MATRIX_SHAPES = ((8, 32), (40, 64), (3, 96), (64, 256))
#: Tokens per call of ``linear``.
TOKEN_COUNTS = (1, 2, 5)
ALIGNMENT = 64


@dataclass(frozen=True)
class OpResult:
    """One op (on one weight type, ``f32`` for ops without a weight) over every case the suite
    ran: ``max_error`` is the largest ``max|got - ref| / max|ref|`` of a case (the difference
    relative to the reference output's largest magnitude), ``inf`` when a case broke the contract
    (wrong shape or dtype, memory rule); ``note`` says how."""

    op: str
    dtype: str
    max_error: float
    tolerance: float
    cases: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.max_error <= self.tolerance

    def line(self, label: str) -> str:
        """``label op dtype max error ... tolerance ... ok|FAIL (note)``, one line."""
        verdict = "ok" if self.ok else "FAIL"
        note = f" ({self.note})" if self.note else ""
        return (f"{label:<18} {self.op:<10} {self.dtype:<5} max error {self.max_error:8.2e}  "
                f"tolerance {self.tolerance:7.1e}  {self.cases:3d} cases  {verdict}{note}")


class _Op:
    """Accumulates the cases of one op and dtype."""

    def __init__(self, op: str, dtype: str) -> None:
        self.op, self.dtype = op, dtype
        self.error = 0.0
        self.cases = 0
        self.notes: list[str] = []

    def compare(self, got: NDArray[np.generic], ref: F32, case: str) -> None:
        self.cases += 1
        if not isinstance(got, np.ndarray) or got.shape != ref.shape or got.dtype != np.float32:
            shape = getattr(got, "shape", None)
            self.fail(f"{case}: returned {getattr(got, 'dtype', type(got).__name__)} {shape}, "
                      f"expected float32 {ref.shape}")
            return
        scale = float(np.max(np.abs(ref[np.isfinite(ref)]), initial=0.0)) or 1.0
        with np.errstate(invalid="ignore"):
            diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        diff[np.isnan(diff) & (got == ref)] = 0.0  # equal infinities
        err = float(np.max(diff, initial=0.0)) / scale
        if not math.isfinite(err):
            self.fail(f"{case}: non-finite values where the reference has finite ones")
            return
        self.error = max(self.error, err)

    def fail(self, note: str) -> None:
        self.error = math.inf
        self.notes.append(note)

    def result(self, tolerance: float) -> OpResult:
        return OpResult(self.op, self.dtype, self.error, tolerance, self.cases, "; ".join(self.notes[:2]))


def _aligned(nbytes: int, fill: int = 0) -> U8:
    """``uint8 [nbytes]`` starting at a 64-byte boundary, as pool buffers do, filled with ``fill``."""
    raw = np.full(nbytes + ALIGNMENT, fill, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    out: U8 = raw[start : start + nbytes]
    return out


def random_tensor_bytes(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> U8:
    """File bytes ``uint8 [nbytes]`` of a random tensor of ``dtype`` and logical ``shape``: values of
    order 1 for float types, random quants with scales of 0.01..0.1 for block types."""
    n = math.prod(shape)
    if dtype in FLOAT_DTYPES:
        values = rng.standard_normal(n).astype(np.float32)
        if dtype == "F32":
            return values.view(np.uint8)
        if dtype == "F16":
            return values.astype(np.float16).view(np.uint8)
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    if dtype not in BLOCK_BYTES:
        raise ValueError(f"The conformance suite cannot make {dtype} tensors; it makes {WEIGHT_DTYPES}.")
    nb = n // QK
    blocks = rng.integers(0, 256, size=(nb, BLOCK_BYTES[dtype]), dtype=np.uint8)
    n_scales = 2 if dtype == "Q4_1" else 1
    scales = rng.uniform(0.01, 0.1, size=(nb, n_scales)) * rng.choice([-1.0, 1.0], size=(nb, n_scales))
    blocks[:, : 2 * n_scales] = scales.astype(np.float16).view(np.uint8).reshape(nb, 2 * n_scales)
    return blocks.reshape(-1)


def _info(name: str, dtype: str, shape: tuple[int, ...]) -> TensorInfo:
    return TensorInfo(name, shape, dtype, file_nbytes(dtype, shape))


def _check_prepare(be: KernelBackend, info: TensorInfo, raw: U8, op: _Op) -> tuple[Weight, U8] | None:
    """Prepare ``info`` and check the declared form and the memory rule; the weight and its memory,
    or ``None`` when the contract was broken (noted in ``op``)."""
    form = be.prepared_form(info)
    case = f"{info.dtype} {info.shape}"
    if be.weight_nbytes(info) != form.nbytes:
        op.fail(f"{case}: weight_nbytes {be.weight_nbytes(info)} != prepared_form nbytes {form.nbytes}")
        return None
    if form.nbytes != form.dtype.itemsize * math.prod(form.shape):
        op.fail(f"{case}: prepared_form nbytes {form.nbytes} is not its {form.dtype} {form.shape}")
        return None
    two_d = len(info.shape) == 2
    if two_d and (form.shape[:1] != info.shape[:1] or form.row_nbytes * info.shape[0] != form.nbytes):
        op.fail(f"{case}: prepared_form {form.shape} / row bytes {form.row_nbytes} are not whole rows")
        return None
    poison = 0xA5
    out = _aligned(form.nbytes + ALIGNMENT, poison)
    raw_copy = raw.copy()
    w = be.prepare_weight(info, raw_copy, out)
    data = w.data
    if not (isinstance(data, np.ndarray) and data.ctypes.data == out.ctypes.data
            and data.flags.c_contiguous and data.dtype == form.dtype and data.shape == form.shape):
        op.fail(f"{case}: prepare_weight did not return a C-contiguous {form.dtype} {form.shape} view "
                "of the start of out")
        return None
    if np.any(out[form.nbytes :] != poison):
        op.fail(f"{case}: prepare_weight wrote past prepared_form(info).nbytes")
        return None
    if form.identical and not np.array_equal(out[: form.nbytes], raw):
        op.fail(f"{case}: declared identical to the file's bytes, but they differ")
        return None
    if two_d and info.shape[0] > 2:
        a, b = 1, info.shape[0] - 1
        rb = len(raw) // info.shape[0]
        part = TensorInfo(f"{info.name}[{a}:{b}]", (b - a, info.shape[1]), info.dtype, (b - a) * rb)
        sub = _aligned(be.weight_nbytes(part))
        be.prepare_weight(part, raw[a * rb : b * rb].copy(), sub)
        if not np.array_equal(sub, out[a * form.row_nbytes : b * form.row_nbytes]):
            op.fail(f"{case}: rows {a}..{b} prepared alone differ from those rows of the whole tensor")
            return None
    return w, out


def check_backend(
    backend: KernelBackend,
    *,
    tolerances: Mapping[str, float] | None = None,
    dtypes: Sequence[str] | None = None,
    seed: int = 0,
    label: str | None = None,
    report: Callable[[str], None] | None = print,
) -> list[OpResult]:
    """Run every op of ``backend`` against the numpy reference on random inputs of several shapes,
    for every weight type it supports (or ``dtypes``), and raise ``AssertionError`` listing the ops
    whose error exceeds their tolerance (:data:`DEFAULT_TOLERANCES`, overridden by ``tolerances``
    per op, ``{"linear": 1e-3}``, or per op and weight type, ``{"linear:Q8_0": 1e-2}``) or that
    break the contract (declared form, memory rule, shapes and dtypes).
    ``report`` gets one line per op and weight type (``print``: quote ``pytest -s`` output).
    Returns the results when all pass."""
    unknown = {k for k in tolerances or {} if k.split(":")[0] not in CONFORMANCE_OPS}
    if unknown:
        raise ValueError(f"Unknown ops {sorted(unknown)}; the ops are {CONFORMANCE_OPS}.")
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    if dtypes is None:
        dtypes = sorted(backend.supported_dtypes())
    missing = [d for d in dtypes if d not in WEIGHT_DTYPES]
    if missing:
        raise ValueError(f"The conformance suite cannot make {missing} tensors; pass dtypes= from "
                         f"{WEIGHT_DTYPES}.")
    ref = NumpyBackend()
    rng = np.random.default_rng(seed)
    ops: list[_Op] = []

    def new(op: str, dtype: str) -> _Op:
        ops.append(_Op(op, dtype))
        return ops[-1]

    for dtype in dtypes:
        prep, rows, lin, fuse = (new(o, dtype) for o in ("prepare", "rows", "linear", "fuse_rows"))
        shapes: list[tuple[int, ...]] = list(MATRIX_SHAPES)
        if dtype in FLOAT_DTYPES:
            shapes += [(64,), (7,)]
        for shape in shapes:
            info = _info(f"w.{dtype}", dtype, shape)
            raw = random_tensor_bytes(dtype, shape, rng)
            prepared = _check_prepare(backend, info, raw, prep)
            if prepared is None:
                continue
            w, _memory = prepared
            rw = ref.new_weight(info, raw.copy())
            prep.compare(backend.to_float(w), ref.to_float(rw), f"to_float {shape}")
            if len(shape) != 2:
                continue
            ids = rng.integers(0, shape[0], size=5).astype(np.int64)
            rows.compare(backend.rows(w, ids), ref.rows(rw, ids), f"rows {shape}")
            for t in TOKEN_COUNTS:
                x = rng.standard_normal((t, shape[1])).astype(np.float32)
                lin.compare(backend.linear(x, w), ref.linear(x, rw), f"linear {t}x{shape}")
        _check_fuse(backend, ref, dtype, rng, fuse)

    _check_math(backend, ref, [d for d in dtypes if d in FLOAT_DTYPES], rng, new)
    results = [o.result(tol.get(f"{o.op}:{o.dtype}", tol[o.op])) for o in ops if o.cases or o.notes]
    name = label or backend.name
    if report is not None:
        for r in results:
            report(r.line(name))
    failed = [r for r in results if not r.ok]
    if failed:
        raise AssertionError(f"backend {name!r} fails the conformance suite:\n"
                             + "\n".join(r.line(name) for r in failed))
    return results


def _check_fuse(be: KernelBackend, ref: NumpyBackend, dtype: str, rng: np.random.Generator,
                op: _Op) -> None:
    """Three matrices prepared back to back in one buffer, as the engine loads Q, K and V: when the
    backend fuses them, ``linear`` on the fused weight must equal the three side by side."""
    cols, heights = 64, (16, 8, 8)
    infos = [_info(f"{n}.{dtype}", dtype, (h, cols)) for n, h in zip("qkv", heights, strict=True)]
    raws = [random_tensor_bytes(dtype, i.shape, rng) for i in infos]
    sizes = [be.weight_nbytes(i) for i in infos]
    buf = _aligned(sum(sizes))
    weights, off = [], 0
    for info, raw, n in zip(infos, raws, sizes, strict=True):
        weights.append(be.prepare_weight(info, raw.copy(), buf[off : off + n]))
        off += n
    fused = be.fuse_rows(weights)
    if fused is None:
        op.notes.append("not fused")
        return
    if fused.info.shape != (sum(heights), cols):
        op.fail(f"fused shape {fused.info.shape}, expected {(sum(heights), cols)}")
        return
    refs = [ref.new_weight(i, r.copy()) for i, r in zip(infos, raws, strict=True)]
    for t in TOKEN_COUNTS:
        x = rng.standard_normal((t, cols)).astype(np.float32)
        want = np.concatenate([ref.linear(x, w) for w in refs], axis=1)
        op.compare(be.linear(x, fused), want, f"fused linear {t}")


def _check_math(be: KernelBackend, ref: NumpyBackend, norm_dtypes: Sequence[str],
                rng: np.random.Generator, new: Callable[[str, str], _Op]) -> None:
    """The ops on activations: norms (with weights of each float type), activations, RoPE,
    attention over a cache-like view."""

    def vector(dtype: str, n: int) -> tuple[Weight, Weight]:
        info = _info(f"norm.{dtype}", dtype, (n,))
        raw = random_tensor_bytes(dtype, (n,), rng)
        w = be.prepare_weight(info, raw.copy(), _aligned(be.weight_nbytes(info)))
        return w, ref.new_weight(info, raw)

    for dtype in norm_dtypes:
        rms, ln = new("rmsnorm", dtype), new("layernorm", dtype)
        for t, n in ((1, 64), (3, 96), (12, 16)):
            x = (rng.standard_normal((t, n)) * 3).astype(np.float32)
            (w, rw), (b, rb) = vector(dtype, n), vector(dtype, n)
            for eps in (1e-5, 1e-6):
                rms.compare(be.rmsnorm(x.copy(), w, eps), ref.rmsnorm(x, rw, eps), f"rmsnorm {t}x{n}")
                ln.compare(be.layernorm(x.copy(), w, b, eps), ref.layernorm(x, rw, rb, eps),
                           f"layernorm {t}x{n}")
    silu, gelu, soft = new("silu", "f32"), new("gelu_tanh", "f32"), new("softmax", "f32")
    for shape in ((1, 64), (5, 96), (2, 3, 40)):
        x = (rng.standard_normal(shape) * 4).astype(np.float32)
        silu.compare(be.silu(x.copy()), ref.silu(x), f"silu {shape}")
        gelu.compare(be.gelu_tanh(x.copy()), ref.gelu_tanh(x), f"gelu {shape}")
        soft.compare(be.softmax(x.copy()), ref.softmax(x), f"softmax {shape}")
    masked = (rng.standard_normal((2, 3, 4, 9)) * 4).astype(np.float32)
    masked[..., 5:] = -np.inf  # as causal attention masks
    soft.compare(be.softmax(masked.copy()), ref.softmax(masked), "softmax masked")
    rope = new("rope", "f32")
    for t, h, d in ((1, 4, 16), (5, 3, 64), (2, 2, 8)):
        x = rng.standard_normal((t, h, d)).astype(np.float32)
        angles = rng.uniform(0, 100, size=(t, d // 2))
        cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        for interleaved in (True, False):
            rope.compare(be.rope(x.copy(), cos, sin, interleaved=interleaved),
                         ref.rope(x, cos, sin, interleaved=interleaved), f"rope {t}x{h}x{d}")
    att = new("attention", "f32")
    for t, h, hkv, d, start in ((1, 4, 2, 16, 5), (3, 4, 1, 16, 0), (4, 6, 2, 8, 3), (1, 2, 2, 64, 0)):
        q = rng.standard_normal((t, h, d)).astype(np.float32)
        cache = rng.standard_normal((2, hkv, start + t + 7, d)).astype(np.float32)
        k, v = cache[0, :, : start + t], cache[1, :, : start + t]  # views of a longer cache
        att.compare(be.attention(q.copy(), k, v, start), ref.attention(q, k, v, start),
                    f"attention t={t} h={h}/{hkv} d={d} start={start}")
