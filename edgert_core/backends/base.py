"""The kernel-backend contract.

A backend decides how weights are held in memory (:meth:`KernelBackend.prepared_form`,
:meth:`KernelBackend.prepare_weight`) and computes the math the model modules (``edgert_core.models``)
and the engine call. Those call a backend only through the methods declared here.

Six methods are abstract, what only the backend can know: ``status``, ``supported_dtypes``,
``prepared_form``, ``prepare_weight``, ``to_float`` and ``linear``. Every other operation has a
default here, the reference fp32 numpy math written in terms of ``to_float`` (``weight_nbytes``,
``rows``, ``fuse_rows`` (never fuses), ``rmsnorm``, ``layernorm``, ``silu``, ``swiglu``,
``linear_add``, ``gelu_tanh``, ``softmax``, ``rope``, ``attention``); a backend overrides the ones
it speeds up. The numpy backend
(``edgert_core.backends.numpy_ref``) is the reference every backend is checked against
(``edgert_core.testing.check_backend``); a backend may subclass it instead of this class.

Optional one-call paths (``attention_block``, ``mlp_block``, ``prepare_llama_block`` with
``llama_blocks``) return ``None`` by default; a backend that implements them must give exactly the
results of the ops they replace.

Arrays: activations are float32 and C-contiguous unless said otherwise; ``T`` is the number of
tokens of a call, ``H``/``Hkv`` the query/KV heads, ``D`` the head dimension. Every op returns a new
array unless its docstring says it may update an argument.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from edgert_core.layout import TensorInfo

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here; ``path`` names the active code path (``numpy``, ``neon``,
    ``portable``, ``x86-avx2`` ...); ``reason`` says why it is unavailable."""

    available: bool
    path: str
    reason: str = ""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one), at least 1: the
    default for a backend's kernel threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Weight:
    """A weight prepared by a backend. ``data`` is backend-specific: the numpy backend holds fp32
    ``[out, in]`` (or ``[n]`` for vectors); a quantized backend may hold the file's raw blocks as
    ``uint8 [out, row_bytes]``. ``info`` describes the tensor (its ``shape`` is the logical shape)."""

    info: TensorInfo
    data: NDArray[np.generic]


@dataclass(frozen=True)
class LlamaLayer:
    """One Llama block's weights in the form its one-call paths take (since 1.4): the attention
    part's RMSNorm ``attn_norm`` ``[n]``, stacked q/k/v ``qkv`` ``[(H + 2 Hkv) D, n]`` and
    ``output`` ``[n, H D]``; the MLP's RMSNorm ``ffn_norm`` ``[n]``, stacked ``gate_up``
    ``[2I, n]`` (gate rows, then up rows) and ``down`` ``[n, I]``."""

    attn_norm: Weight
    qkv: Weight
    output: Weight
    ffn_norm: Weight
    gate_up: Weight
    down: Weight


@dataclass(frozen=True)
class TensorForm:
    """How a backend holds one prepared tensor in memory, as it declares it
    (:meth:`KernelBackend.prepared_form`).

    ``dtype`` and ``shape``: the prepared array (``Weight.data``); ``nbytes``: its bytes
    (``dtype.itemsize * prod(shape)``); ``identical``: the prepared bytes are exactly the file's bytes
    of the tensor in its logical layout (the engine then reads them straight into place and never
    calls ``prepare_weight``); ``row_nbytes``: for a 2-D tensor, the prepared bytes of one row
    (``nbytes == shape[0] * row_nbytes``), 0 for other tensors."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    nbytes: int
    identical: bool
    row_nbytes: int

    @classmethod
    def of(cls, dtype: np.dtype[Any] | type[np.generic], shape: tuple[int, ...], *,
           identical: bool = False) -> TensorForm:
        """The form of an array of ``dtype`` and ``shape`` (rows counted along the first axis when
        it is 2-D)."""
        dt = np.dtype(dtype)
        nbytes = dt.itemsize * math.prod(shape)
        row = nbytes // shape[0] if len(shape) == 2 and shape[0] else 0
        return cls(dt, tuple(shape), nbytes, identical, row)


class KernelBackend(ABC):
    """Base class of kernel backends, registered through ``edgert_register_backends``.

    ``priority`` orders backends when the user does not choose one: the available backend with the
    highest priority that supports the model wins (the numpy reference has priority 0).

    **The memory rule.** ``prepare_weight(info, raw, out)`` writes the prepared tensor at the start of
    ``out`` (the caller's memory, usually a pool buffer, maybe larger than needed) and returns a
    ``Weight`` whose ``data`` is a C-contiguous view of ``out[:form.nbytes]`` with the declared
    ``prepared_form(info)`` dtype and shape. A 2-D tensor's rows are contiguous and independent:
    preparing rows ``a..b`` alone (a ``TensorInfo`` of shape ``[b - a, in]``) gives exactly bytes
    ``a * row_nbytes .. b * row_nbytes`` of the whole tensor's prepared bytes, so the engine can
    prepare a large tensor row chunk by row chunk, load row slices of it, and cache prepared bytes
    on disk. The engine views prepared memory through the declared form; it does not keep the
    returned ``Weight``'s array. ``edgert_core.testing.check_backend`` checks all of this.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    threads: int | None = None
    """Kernel threads, for a backend that runs its own (``None``: it has none). ``load_model``'s
    ``threads`` sets it; while a prefetching engine with process tuning on runs (``load_model(...,
    tune_process=True)``, as the CLI does), the engine lowers it to one fewer than the CPUs so the
    prefetch thread has a core, and puts it back on close."""
    activation_modes: ClassVar[tuple[str, ...]] = ("f32",)
    """The precisions this backend can compute ``linear`` in for its activations: ``"f32"`` (exact,
    every backend) and, where the backend has it, ``"q8"`` (activations quantized to int8 per block of
    32 before a product on quantized weights: faster, with an error of order 1/254 of each block's
    largest activation). The first is the default."""
    activations: str = "f32"
    """The mode in force, one of :attr:`activation_modes`; ``load_model``'s ``activations`` sets it."""

    # -- what only the backend knows (abstract) ----------------------------------------------------
    @abstractmethod
    def status(self) -> BackendStatus:
        """Whether this backend can run on this machine, and which path it takes."""

    @abstractmethod
    def supported_dtypes(self) -> frozenset[str]:
        """File tensor types this backend can load (``F32``, ``F16``, ``BF16``, ``Q8_0`` ...)."""

    @abstractmethod
    def prepared_form(self, info: TensorInfo) -> TensorForm:
        """How ``info`` (a tensor of a supported type, logical shape ``info.shape``) is held once
        prepared: its array's dtype, shape and bytes, the bytes of one row (2-D), and whether they
        are the file's bytes. Pure arithmetic on ``info``; must agree with :meth:`prepare_weight`."""

    @abstractmethod
    def prepare_weight(self, info: TensorInfo, raw: U8, out: U8) -> Weight:
        """Turn the file's bytes of one tensor (``raw``, ``uint8 [info.nbytes]``, logical layout) into
        a weight held at the start of ``out`` (``uint8``, at least ``prepared_form(info).nbytes``),
        as the class docstring's memory rule says. ``raw`` may start where ``out`` does (the file's
        bytes were read into place)."""

    @abstractmethod
    def to_float(self, w: Weight) -> F32:
        """A weight's values as float32 ``[*w.info.shape]`` (a view when held as fp32): biases,
        embedding rows, and the default ops' weights."""

    @abstractmethod
    def linear(self, x: F32, w: Weight) -> F32:
        """``x @ W.T``: ``x`` float32 ``[T, in]``, ``w`` logical ``[out, in]`` -> float32 ``[T, out]``.
        Where the time goes."""

    # -- defaults, in terms of the above -------------------------------------------------------------
    def weight_nbytes(self, info: TensorInfo) -> int:
        """Bytes this backend holds in memory for ``info`` once prepared (``prepared_form(info).nbytes``)."""
        return self.prepared_form(info).nbytes

    def rows(self, w: Weight, ids: NDArray[np.int64]) -> F32:
        """Rows ``ids`` (``int64 [T]``) of a 2-D weight ``[rows, in]``: float32 ``[T, in]`` (embedding
        lookup of the output matrix when the head is tied to the embeddings)."""
        out: F32 = self.to_float(w)[ids]
        return out

    def fuse_rows(self, weights: Sequence[Weight]) -> Weight | None:
        """One weight ``[sum(out_i), in]`` viewing ``weights`` (2-D, same ``in``) stacked by rows
        without copying, so one ``linear`` call replaces several (Q, K and V; gate and up), or
        ``None`` when they cannot be (the default: the model then calls ``linear`` once per weight).
        The fused weight's ``linear`` must equal the per-weight results side by side."""
        return None

    def rmsnorm(self, x: F32, w: Weight, eps: float) -> F32:
        """RMSNorm over the last axis: ``x`` float32 ``[T, n]``, ``w`` ``[n]`` -> float32 ``[T, n]``:
        ``x / sqrt(mean(x**2) + eps) * w``."""
        ms: F32 = np.einsum("ij,ij->i", x, x)[:, None]  # [T, 1]
        ms *= np.float32(1.0 / x.shape[-1])
        ms += np.float32(eps)
        np.sqrt(ms, out=ms)
        out: F32 = x / ms
        out *= self.to_float(w)
        return out

    def layernorm(self, x: F32, w: Weight, b: Weight, eps: float) -> F32:
        """LayerNorm over the last axis: ``x`` float32 ``[T, n]``, ``w`` and ``b`` ``[n]`` -> float32
        ``[T, n]``."""
        mean = x.mean(axis=-1, keepdims=True, dtype=np.float32)
        centered: F32 = x - mean
        var: F32 = np.einsum("ij,ij->i", centered, centered)[:, None]
        var *= np.float32(1.0 / x.shape[-1])
        var += np.float32(eps)
        np.sqrt(var, out=var)
        centered /= var
        centered *= self.to_float(w)
        centered += self.to_float(b)
        return centered

    def silu(self, x: F32) -> F32:
        """``x * sigmoid(x)`` elementwise: float32 any shape -> float32 the same shape. The model
        multiplies the result in place, so it must be a new writable array."""
        out: F32 = np.exp(-x)
        out += np.float32(1.0)
        np.divide(x, out, out=out)
        return out

    def swiglu(self, gate_up: F32) -> F32:
        """SwiGLU of the stacked gate and up products: ``gate_up`` float32 ``[T, 2n]`` (the gate's
        ``n`` columns, then the up's) -> float32 ``[T, n]``, ``silu(gate) * up`` (a new array)."""
        n = gate_up.shape[-1] // 2
        out = self.silu(gate_up[:, :n])
        out *= gate_up[:, n:]
        return out

    def linear_add(self, x: F32, w: Weight, residual: F32, *, out: F32 | None = None) -> F32:
        """``residual + x @ W.T``: ``x`` float32 ``[T, in]``, ``w`` logical ``[out, in]``,
        ``residual`` float32 ``[T, out]`` -> float32 ``[T, out]``, written into ``out`` when given
        (``out`` may be ``residual`` itself: a residual connection updated in place), else a new
        array. One call instead of a ``linear`` and an addition."""
        y = self.linear(x, w)
        if out is None:
            sum_: F32 = residual + y
            return sum_
        np.add(residual, y, out=out)
        return out

    def attention_block(
        self, x: F32, norm: Weight, eps: float, qkv: Weight, output: Weight, cos: F32, sin: F32,
        keys: F32, values: F32, start: int, *, interleaved: bool,
    ) -> F32 | None:
        """Optional (since 1.3): a Llama attention part in one call, for backends that can run it
        without returning to Python between the ops. ``x`` float32 ``[T, n]`` at positions
        ``start..start+T-1``; ``norm`` the RMSNorm weight ``[n]``; ``qkv`` the stacked q, k, v
        projection ``[(H + 2 Hkv) D, n]``; ``output`` ``[n, H D]``; ``cos``/``sin`` ``[T, D/2]``;
        ``keys``/``values`` the layer's whole fp32 KV cache ``[Hkv, max_context, D]``, into which
        the new positions' keys (after RoPE) and values are written. Returns ``x + output(
        attention(...))`` float32 ``[T, n]`` (a new array), or ``None`` (the default) to have the
        model run ``rmsnorm``, ``linear``, ``rope``, ``attention`` and ``linear_add`` one by one.
        A backend that returns a result must return exactly what those calls give it."""
        return None

    def mlp_block(self, x: F32, norm: Weight, eps: float, gate_up: Weight, down: Weight) -> F32 | None:
        """Optional (since 1.3): a SwiGLU MLP with its residual in one call: ``x`` float32
        ``[T, n]`` -> ``x + down(swiglu(rmsnorm(x) @ gate_up.T))`` float32 ``[T, n]`` (written
        into ``x``, which is returned), with ``gate_up`` the stacked ``[2I, n]`` (gate rows, then
        up rows) and ``down`` ``[n, I]``; or ``None`` (the default) to have the model call
        ``rmsnorm``, ``linear``, ``swiglu`` and ``linear_add``. A result must be exactly theirs."""
        return None

    def prepare_llama_block(self, layer: LlamaLayer) -> object | None:
        """Optional (since 1.4): what :meth:`llama_blocks` needs of one block's weights, checked and
        put in the backend's form once; the model keeps it beside those weights and hands it back
        at every call. ``None`` (the default): this backend has no one-call path for the block."""
        return None

    def llama_blocks(
        self, x: F32, eps: float, layers: Sequence[tuple[object, F32, F32]], cos: F32, sin: F32,
        start: int, *, interleaved: bool,
    ) -> F32 | None:
        """Optional (since 1.4): consecutive Llama blocks in one call, for backends that can run a
        whole group of layers without returning to Python. ``layers``: per block, in order, what
        :meth:`prepare_llama_block` returned for it and the layer's whole fp32 KV cache ``keys``,
        ``values`` ``[Hkv, max_context, D]``; the rest as in :meth:`attention_block`. Returns the
        hidden state after the last block, float32 ``[T, n]`` (a new array; ``x`` is unchanged),
        having written the new positions into every layer's cache; or ``None`` (the default) to
        have the model run the blocks part by part. A result must be exactly that of
        :meth:`attention_block` then :meth:`mlp_block` for each block in turn."""
        return None

    def gelu_tanh(self, x: F32) -> F32:
        """GELU, tanh approximation (GPT-2's ``gelu_new``): float32 any shape -> the same shape."""
        c = np.float32(math.sqrt(2.0 / math.pi))
        inner = x * x
        inner *= np.float32(0.044715)
        inner += np.float32(1.0)
        inner *= x
        inner *= c
        np.tanh(inner, out=inner)
        inner += np.float32(1.0)
        inner *= x
        inner *= np.float32(0.5)
        return inner

    def softmax(self, x: F32) -> F32:
        """Softmax over the last axis: float32 any shape -> the same shape (``-inf`` entries give 0)."""
        out: F32 = x - x.max(axis=-1, keepdims=True)
        np.exp(out, out=out)
        out /= out.sum(axis=-1, keepdims=True)
        return out

    def rope(self, x: F32, cos: F32, sin: F32, *, interleaved: bool) -> F32:
        """Rotary position embedding.

        ``x`` float32 ``[T, H, D]``; ``cos``/``sin`` float32 ``[T, D/2]`` for the tokens' positions.
        ``interleaved``: rotate pairs ``(x[2i], x[2i+1])`` (GGUF/llama.cpp layout); otherwise pairs
        ``(x[i], x[i + D/2])`` (Hugging Face ``rotate_half`` layout). Returns a new float32
        ``[T, H, D]``.
        """
        c = cos[:, None, :]
        s = sin[:, None, :]
        out = np.empty_like(x)
        if interleaved:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            o1, o2 = out[..., 0::2], out[..., 1::2]
        else:
            half = x.shape[-1] // 2
            x1, x2 = x[..., :half], x[..., half:]
            o1, o2 = out[..., :half], out[..., half:]
        np.multiply(x1, c, out=o1)
        o1 -= x2 * s
        np.multiply(x2, c, out=o2)
        o2 += x1 * s
        return out

    def attention(self, q: F32, k: F32, v: F32, start: int) -> F32:
        """Causal attention of ``T`` new queries over a KV cache, with grouped KV heads.

        ``q`` float32 ``[T, H, D]`` for positions ``start .. start+T-1``; ``k``, ``v`` float32
        ``[Hkv, S, D]`` with ``S = start + T`` cached positions (the new ones included; views into
        the KV cache, not C-contiguous as a whole). Query head ``h`` reads KV head
        ``h // (H / Hkv)``; scores are scaled by ``1/sqrt(D)``. Returns float32 ``[T, H * D]``.
        """
        t, h, d = q.shape
        hkv, s, _ = k.shape
        g = h // hkv
        qg = q.reshape(t, hkv, g, d).transpose(1, 2, 0, 3)  # [Hkv, G, T, D]
        scores = qg @ k.transpose(0, 2, 1)[:, None]  # [Hkv, G, T, S]
        scores *= np.float32(1.0 / math.sqrt(d))
        if t > 1:
            # query i (position start+i) sees keys 0..start+i
            mask = np.arange(s)[None, :] > (start + np.arange(t))[:, None]  # [T, S]
            scores[..., mask] = -np.inf
        probs = self.softmax(scores)
        out = probs @ v[:, None]  # [Hkv, G, T, D]
        return np.ascontiguousarray(out.transpose(2, 0, 1, 3)).reshape(t, h * d)
