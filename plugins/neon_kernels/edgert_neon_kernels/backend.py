"""The ``neon`` kernel backend: quantized weights stay as the file's GGUF blocks in memory and
``linear`` runs the C kernels on them in place; RMSNorm, RoPE and attention over the KV cache run as
fused C ops too (one call each instead of several numpy calls per decoded token). SiLU, LayerNorm,
GELU, softmax and embedding lookups are the numpy reference's.

Q4_0, Q4_1 and Q8_0 matrices are held as ``uint8 [out, row_bytes]`` (their file bytes, about 1/6 to
1/8 of fp32); float tensors (norms, F16/F32 matrices) are prepared by the numpy backend as fp32.
When the C extension cannot be imported the backend still registers, reports itself unavailable
with the reason, and would behave exactly like the numpy backend.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgert_core.plugin_api import (
    BackendStatus,
    LlamaLayer,
    NumpyBackend,
    TensorForm,
    TensorInfo,
    Weight,
    usable_cpus,
)
from edgert_neon_kernels import kernels

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]
_CODES = kernels.WTYPE_CODES


class NeonBackend(NumpyBackend):
    """Quantized matrix products on GGUF blocks: NEON on aarch64 (SDOT when the CPU has it), AVX2
    on x86-64, portable C elsewhere; threads over output rows with the GIL released."""

    name = "neon"
    description = "quantized GGUF blocks in place; C kernels (NEON, x86 AVX2 or portable C)"
    priority = 10
    threads: int

    activation_modes = ("f32", "q8")

    def __init__(self, threads: int | None = None, act_q8: bool = False) -> None:
        """``threads``: kernel threads, default the CPUs this process may use. ``act_q8``: start in
        the ``"q8"`` activation mode (see :attr:`activations`); the default is exact fp32."""
        self.threads = threads if threads and threads > 0 else usable_cpus()
        self.activations = "q8" if act_q8 else "f32"
        self._c = not kernels.load_error()  # False: every op falls back to the numpy backend
        self._k = kernels.extension()  # the C module for the hot paths (None without it)

    @property
    def act_q8(self) -> bool:
        """Whether ``linear`` quantizes activations to int8 per block of 32 before a product on
        quantized weights (:attr:`activations` ``"q8"``: faster; relative error of order 1/254 of
        each block's largest activation) or keeps them fp32 (``"f32"``, the default: the numpy
        reference's results to fp32 rounding)."""
        return self.activations == "q8"

    @act_q8.setter
    def act_q8(self, value: bool) -> None:
        self.activations = "q8" if value else "f32"

    def status(self) -> BackendStatus:
        error = kernels.load_error()
        if error:
            return BackendStatus(available=False, path="none", reason=error)
        return BackendStatus(available=True, path=kernels.active_path())

    def _in_place(self, info: TensorInfo) -> bool:
        """Whether this tensor is held as its file's blocks and multiplied by the C kernels."""
        return (
            info.dtype in kernels.WTYPE_CODES
            and len(info.shape) == 2
            and info.shape[1] % kernels.QK == 0
            and self._c
        )

    def prepared_form(self, info: TensorInfo) -> TensorForm:
        """A quantized matrix: its file's blocks, ``uint8 [rows, row_bytes]``; others: as numpy."""
        if self._in_place(info):
            rows, k = info.shape
            return TensorForm.of(np.uint8, (rows, kernels.row_nbytes(info.dtype, k)), identical=True)
        return super().prepared_form(info)

    def prepare_weight(self, info: TensorInfo, raw: U8, out: U8) -> Weight:
        """Copy a quantized matrix's blocks (``raw``, ``uint8 [info.nbytes]``) into ``out``; the weight's
        data is ``uint8 [rows, row_bytes]``, a view of ``out``. When the caller read the file's bytes
        straight into ``out`` (``raw`` starts where ``out`` does) nothing is copied. Other tensors:
        as the numpy backend."""
        if not self._in_place(info):
            return super().prepare_weight(info, raw, out)
        rows, k = info.shape
        data = out[: info.nbytes].reshape(rows, kernels.row_nbytes(info.dtype, k))
        if raw.ctypes.data != out.ctypes.data:
            data.reshape(-1)[:] = raw[: info.nbytes]
        return Weight(info, data)

    def fuse_rows(self, weights: Sequence[Weight]) -> Weight | None:
        """One weight ``[sum(out_i), in]`` viewing quantized ``weights`` stacked by rows, when they
        share the block type and ``in`` and lie back to back in memory (so one ``linear`` call, one
        activation quantization and one hand-over to the threads serve Q, K and V, or gate and up);
        ``None`` when they do not. fp32 weights: as the numpy backend. Nothing is copied."""
        arrays = [w.data for w in weights]
        if not arrays or any(a.dtype != np.uint8 for a in arrays):
            return super().fuse_rows(weights)
        dtype, cols = weights[0].info.dtype, weights[0].info.shape[-1]
        if any(w.info.dtype != dtype or w.info.shape[-1] != cols for w in weights):
            return None
        if any(a.ndim != 2 or not a.flags.c_contiguous for a in arrays):
            return None
        for a, b in itertools.pairwise(arrays):
            if b.ctypes.data != a.ctypes.data + a.nbytes:
                return None
        rows = sum(a.shape[0] for a in arrays)
        rb = arrays[0].shape[1]
        data = np.lib.stride_tricks.as_strided(arrays[0], shape=(rows, rb), strides=(rb, 1))
        name = "+".join(w.info.name for w in weights)
        return Weight(TensorInfo(name, (rows, cols), dtype, rows * rb), data)

    def _fast(self, x: F32, w: Weight) -> int:
        """The C weight-type code when ``linear`` on ``w`` can call the kernels directly (quantized
        blocks, ``x`` C-contiguous float32 ``[T, in]``), else -1. The shapes of the blocks were
        checked when the weight was prepared; the C side still checks every buffer's size."""
        if (self._k is None or w.data.dtype != np.uint8 or x.ndim != 2 or x.dtype != np.float32
                or not x.flags.c_contiguous or x.shape[1] != w.info.shape[1]):
            return -1
        return _CODES.get(w.info.dtype, -1)

    def linear(self, x: F32, w: Weight) -> F32:
        """``x @ W.T``: ``x`` float32 ``[T, in]``, ``w`` logical ``[out, in]`` -> float32 ``[T, out]``.
        On quantized blocks the C kernels run in place; fp32 weights go to the numpy backend."""
        code, ext = self._fast(x, w), self._k
        if code >= 0 and ext is not None:  # the decode hot path: 121 calls a token for SmolLM2
            t, k = x.shape
            n = w.data.shape[0]
            out = np.empty((t, n), dtype=np.float32)
            ext.linear(x, w.data, out, t, k, n, code, self.threads, self.activations == "q8")
            return out
        if w.data.dtype == np.uint8 and w.info.dtype in kernels.WTYPE_CODES:
            blocks: U8 = w.data  # type: ignore[assignment]
            return kernels.linear(
                x, blocks, w.info.dtype, threads=self.threads, act_q8=self.act_q8
            )
        return super().linear(x, w)

    def linear_add(self, x: F32, w: Weight, residual: F32, *, out: F32 | None = None) -> F32:
        """``residual + x @ W.T`` in one C call on quantized blocks (the residual is added by the
        kernel threads as each row is done); ``out`` may be ``residual`` itself. Otherwise as the
        numpy backend."""
        code, ext = self._fast(x, w), self._k
        n = w.data.shape[0]
        if (code >= 0 and ext is not None and residual.dtype == np.float32 and residual.flags.c_contiguous
                and residual.shape == (x.shape[0], n)
                and (out is None or (out.dtype == np.float32 and out.flags.c_contiguous
                                     and out.shape == residual.shape))):
            t, k = x.shape
            y = np.empty((t, n), dtype=np.float32) if out is None else out
            ext.linear(x, w.data, y, t, k, n, code, self.threads, self.activations == "q8",
                       residual)
            return y
        return super().linear_add(x, w, residual, out=out)

    # -- block parts in one C call (plugin API 1.3) ------------------------------------------------
    @staticmethod
    def _f32_ok(*arrays: NDArray[Any]) -> bool:
        return all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)

    def attention_block(
        self, x: F32, norm: Weight, eps: float, qkv: Weight, output: Weight, cos: F32, sin: F32,
        keys: F32, values: F32, start: int, *, interleaved: bool,
    ) -> F32 | None:
        """The attention part in one C call (the same kernels in the same order as the separate
        calls, so the same bits), when every operand is in the kernels' form; else ``None``."""
        ext = self._k
        cq, co = self._fast(x, qkv), _CODES.get(output.info.dtype, -1)
        if (ext is None or cq < 0 or co < 0 or output.data.dtype != np.uint8 or keys.ndim != 3
                or not self._f32_ok(norm.data, cos, sin, keys, values)
                or keys.shape != values.shape):
            return None
        t, n = x.shape
        hkv, ctx, d = keys.shape
        h = (qkv.info.shape[0] - 2 * hkv * d) // d
        if h <= 0 or output.info.shape != (n, h * d) or cos.shape != (t, d // 2):
            return None
        y = np.empty((t, n), dtype=np.float32)
        ext.attention_block(x, norm.data, qkv.data, cos, sin, keys, values, output.data, y, t, n,
                            eps, cq, h, hkv, d, interleaved, ctx, start, co, self.threads,
                            self.activations == "q8")
        return y

    def mlp_block(self, x: F32, norm: Weight, eps: float, gate_up: Weight, down: Weight) -> F32 | None:
        """The MLP and its residual in one C call, written into ``x`` (the same bits as the
        separate calls), when every operand is in the kernels' form; else ``None``."""
        ext = self._k
        cg, cd = self._fast(x, gate_up), _CODES.get(down.info.dtype, -1)
        if (ext is None or cg < 0 or cd < 0 or down.data.dtype != np.uint8
                or not self._f32_ok(norm.data)):
            return None
        t, n = x.shape
        inner = gate_up.info.shape[0] // 2
        if down.info.shape != (n, inner):
            return None
        ext.mlp_block(x, norm.data, gate_up.data, down.data, x, t, n, eps, cg, inner, cd,
                      self.threads, self.activations == "q8")
        return x

    # -- whole groups of blocks in one C call (plugin API 1.4) ---------------------------------------
    def prepare_llama_block(self, layer: LlamaLayer) -> object | None:
        """The block's operands as :meth:`llama_blocks` hands them to C: its shapes ``(n, rows of
        qkv, I, H D)`` and the tuple of norms, blocks and weight-type codes; ``None`` unless every
        matrix is quantized blocks the kernels take and every norm fp32."""
        mats = (layer.qkv, layer.output, layer.gate_up, layer.down)
        codes = [_CODES.get(w.info.dtype, -1) for w in mats]
        if (self._k is None or min(codes) < 0
                or any(w.data.dtype != np.uint8 or w.data.ndim != 2 or not w.data.flags.c_contiguous
                       for w in mats)
                or not self._f32_ok(layer.attn_norm.data, layer.ffn_norm.data)):
            return None
        n = layer.qkv.info.shape[1]
        inner = layer.down.info.shape[1]
        if (layer.output.info.shape[0] != n or layer.gate_up.info.shape != (2 * inner, n)
                or layer.down.info.shape[0] != n or layer.attn_norm.data.size != n
                or layer.ffn_norm.data.size != n):
            return None
        shapes = (n, layer.qkv.info.shape[0], inner, layer.output.info.shape[1])
        return shapes, (layer.attn_norm.data, layer.qkv.data, codes[0], layer.output.data, codes[1],
                        layer.ffn_norm.data, layer.gate_up.data, codes[2], layer.down.data, codes[3])

    def llama_blocks(
        self, x: F32, eps: float, layers: Sequence[tuple[object, F32, F32]], cos: F32, sin: F32,
        start: int, *, interleaved: bool,
    ) -> F32 | None:
        """Every block in one C call with the GIL released once (the same kernels in the same order
        as :meth:`attention_block` then :meth:`mlp_block` per block, so the same bits); ``None``
        unless the blocks were prepared here, share their shapes and every operand is in the
        kernels' form."""
        ext = self._k
        if ext is None or not layers or x.ndim != 2 or not self._f32_ok(x, cos, sin):
            return None
        first = layers[0][0]
        if not isinstance(first, tuple):
            return None
        shapes = first[0]
        t, n = x.shape
        keys = layers[0][1]
        if keys.ndim != 3 or shapes[0] != n:
            return None
        hkv, ctx, d = keys.shape
        h = shapes[3] // d if d else 0
        if (h <= 0 or h * d != shapes[3] or shapes[1] != (h + 2 * hkv) * d
                or cos.shape != (t, d // 2) or sin.shape != cos.shape):
            return None
        calls = []
        for prepared, k, v in layers:
            if (not isinstance(prepared, tuple) or prepared[0] != shapes or k.shape != keys.shape
                    or v.shape != keys.shape or not self._f32_ok(k, v)):
                return None
            calls.append((*prepared[1], k, v))
        y = np.array(x, dtype=np.float32, order="C")  # the caller's x stays as it was
        ext.llama_blocks(y, cos, sin, calls, t, n, eps, h, hkv, d, shapes[2], interleaved, ctx,
                         start, self.threads, self.activations == "q8")
        return y

    # -- fused ops: C when the extension loaded, else the numpy reference ------------------------
    def rmsnorm(self, x: F32, w: Weight, eps: float) -> F32:
        """RMSNorm over the last axis: ``x`` float32 ``[T, n]``, ``w`` ``[n]`` -> float32 ``[T, n]``."""
        wd = w.data
        if self._k is None or x.ndim != 2 or wd.dtype != np.float32:
            return super().rmsnorm(x, w, eps)
        if x.dtype == np.float32 and x.flags.c_contiguous and wd.flags.c_contiguous:
            t, n = x.shape
            out = np.empty((t, n), dtype=np.float32)
            self._k.rmsnorm(x, wd, out, t, n, eps)  # the C side checks the weight's size
            return out
        return kernels.rmsnorm(x, wd, eps)  # type: ignore[arg-type]

    def swiglu(self, gate_up: F32) -> F32:
        """``silu(gate) * up`` of ``gate_up`` float32 ``[T, 2n]`` (gate columns, then up) -> float32
        ``[T, n]``, in one C pass (a vectorized exp where the path has one)."""
        if (self._k is not None and gate_up.ndim == 2 and gate_up.dtype == np.float32
                and gate_up.flags.c_contiguous and gate_up.shape[1] % 2 == 0):
            t, n2 = gate_up.shape
            out = np.empty((t, n2 // 2), dtype=np.float32)
            self._k.swiglu(gate_up, out, t, n2 // 2)
            return out
        return super().swiglu(gate_up)

    def rope(self, x: F32, cos: F32, sin: F32, *, interleaved: bool) -> F32:
        """Rotary embedding: ``x`` float32 ``[T, H, D]``, ``cos``/``sin`` float32 ``[T, D/2]`` ->
        a new float32 ``[T, H, D]`` (see :meth:`NumpyBackend.rope` for the two pair layouts)."""
        if self._k is None:
            return super().rope(x, cos, sin, interleaved=interleaved)
        if (x.ndim == 3 and x.dtype == np.float32 and x.flags.c_contiguous and cos.dtype == np.float32
                and cos.flags.c_contiguous and sin.dtype == np.float32 and sin.flags.c_contiguous
                and cos.shape == sin.shape == (x.shape[0], x.shape[2] // 2)):
            t, h, d = x.shape
            out = np.empty((t, h, d), dtype=np.float32)
            self._k.rope(x, cos, sin, out, t, h, d, interleaved)
            return out
        return kernels.rope(x, cos, sin, interleaved=interleaved)

    def attention(self, q: F32, k: F32, v: F32, start: int) -> F32:
        """Causal attention with grouped KV heads: ``q`` float32 ``[T, H, D]`` at positions
        ``start .. start+T-1``; ``k``, ``v`` float32 ``[Hkv, S, D]`` (``S = start + T``, views into
        the KV cache) -> float32 ``[T, H * D]``. Heads are split over the kernel threads."""
        if self._c:
            return kernels.attention(q, k, v, start, threads=self.threads)
        return super().attention(q, k, v, start)
