"""The KV cache: keys and values of every layer, preallocated for ``max_context`` tokens, stored at
one of the precisions of :mod:`edgert_core.models.kv_quant` (``f32``, the exact default; ``f16``;
``q8_0``).

Attention always reads float32 ``[n_kv_heads, S, head_dim]`` views (:meth:`KVCache.write`). For
``f32`` they are views of the cache itself. For ``f16`` and ``q8_0`` the layer being computed is
dequantized into a *scratch*: one layer's float32 K and V at ``max_context``, reused by every layer
(the layers run one after another), so the cache in memory is the small stored form plus one layer's
fp32 copy, never every layer's.

The arrays may be handed in (the engine passes pool memory, so the cache counts against the budget);
they must start zeroed or be written before they are read (positions are written before use).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edgert_core.layout import ModelDims
from edgert_core.models import kv_quant
from edgert_core.models.config import ModelConfig

F32 = NDArray[np.float32]

Spec = tuple[tuple[int, ...], np.dtype[np.generic]]


class KVCache:
    """Keys and values of ``n_layers`` layers, stored in one array ``store`` of shape
    ``[2, n_layers, n_kv_heads, max_context, row]`` (``store[0]`` keys, ``store[1]`` values; ``row``
    and the dtype from ``precision``: float32 ``[head_dim]``, float16 ``[head_dim]`` or uint8 Q8_0
    blocks ``[head_dim/32*34]``).

    Laid out head-major so each head's cached rows are one contiguous ``[S, row]`` matrix.
    ``k`` and ``v`` are ``store[0]`` and ``store[1]``. ``scratch`` (``f16``/``q8_0`` only) is float32
    ``[2, n_kv_heads, max_context, head_dim]``. ``length`` counts the positions written by completed
    forward passes.
    """

    def __init__(
        self,
        config: ModelConfig,
        max_context: int,
        store: NDArray[np.generic] | None = None,
        *,
        precision: str = kv_quant.DEFAULT_KV_CACHE,
        scratch: F32 | None = None,
    ) -> None:
        self.precision = kv_quant.check_kv_cache(precision, config.dims.head_dim)
        shape, dtype = self.store_spec(config.dims, max_context, precision)
        if store is None:
            store = np.zeros(shape, dtype=dtype)
        if store.shape != shape or store.dtype != dtype:
            raise ValueError(f"a {precision} KV cache must be {dtype} {list(shape)}")
        scratch_spec = self.scratch_spec(config.dims, max_context, precision)
        if scratch_spec is None:
            scratch = None
        else:
            if scratch is None:
                scratch = np.zeros(scratch_spec[0], dtype=np.float32)
            if scratch.shape != scratch_spec[0] or scratch.dtype != np.float32:
                raise ValueError(f"the KV cache scratch must be float32 {list(scratch_spec[0])}")
        self.store: NDArray[np.generic] = store
        self.k: NDArray[np.generic] = store[0]
        self.v: NDArray[np.generic] = store[1]
        self.scratch = scratch
        self.max_context = max_context
        self.length = 0

    @staticmethod
    def shape(config: ModelConfig, max_context: int) -> tuple[int, int, int, int]:
        """``(n_layers, n_kv_heads, max_context, head_dim)``: the logical shape of each of K and V."""
        d = config.dims
        return (d.n_layers, d.n_kv_heads, max_context, d.head_dim)

    @staticmethod
    def store_spec(dims: ModelDims, max_context: int, precision: str) -> Spec:
        """Shape and dtype of the one array that stores K and V at ``precision``."""
        row = kv_quant.row_elements(precision, dims.head_dim)
        shape = (2, dims.n_layers, dims.n_kv_heads, max_context, row)
        return shape, kv_quant.store_dtype(precision)

    @staticmethod
    def scratch_spec(dims: ModelDims, max_context: int, precision: str) -> Spec | None:
        """Shape and dtype of the fp32 scratch attention reads one layer from (``None`` for
        ``f32``, which attention reads in place)."""
        if kv_quant.check_mode(precision) == "f32":
            return None
        return (2, dims.n_kv_heads, max_context, dims.head_dim), np.dtype(np.float32)

    def release(self) -> None:
        """Drop the arrays (so pool memory under them can be returned)."""
        empty = np.zeros((2, 0, 0, 0, 0), dtype=self.store.dtype)
        self.store, self.k, self.v = empty, empty[0], empty[1]
        self.scratch = None
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the stored K and V (the scratch not included: :attr:`scratch_nbytes`)."""
        return self.store.nbytes

    @property
    def scratch_nbytes(self) -> int:
        return 0 if self.scratch is None else self.scratch.nbytes

    def filled(self) -> NDArray[np.generic]:
        """A copy of the stored keys and values of the positions written so far (every layer, the
        stored precision): ``[2, n_layers, n_kv_heads, length, row]``, for :meth:`refill` into
        another cache of the same model, context and precision (a re-planned engine's)."""
        return self.store[:, :, :, : self.length].copy()

    def refill(self, filled: NDArray[np.generic]) -> None:
        """Write back what :meth:`filled` copied: its positions become ``0..length-1``."""
        n = filled.shape[3]
        if filled.shape[:3] + filled.shape[4:] != self.store.shape[:3] + self.store.shape[4:] \
                or filled.dtype != self.store.dtype or n > self.store.shape[3]:
            raise ValueError(f"cannot refill a {self.precision} cache {list(self.store.shape)} from "
                             f"{filled.dtype} {list(filled.shape)}")
        self.store[:, :, :, :n] = filled
        self.length = n

    def fp32_layer(self, layer: int) -> tuple[F32, F32] | None:
        """The whole fp32 K and V arrays of ``layer``, float32 ``[n_kv_heads, max_context,
        head_dim]`` each, for a backend's one-call attention part to write new positions into and
        read in place (``KernelBackend.attention_block``); ``None`` when the cache stores another
        precision (then only :meth:`write` gives fp32 views)."""
        if self.scratch is not None:
            return None
        return self.k[layer], self.v[layer]

    def write(
        self, layer: int, start: int, k: F32, v: F32
    ) -> tuple[F32, F32]:
        """Store new keys/values (float32 ``[T, n_kv_heads, head_dim]``) at positions
        ``start .. start+T-1`` of ``layer``; return the cached float32 ``[n_kv_heads, start+T,
        head_dim]`` views of keys and values up to the last new position (for ``f16``/``q8_0``,
        views of the scratch, valid until the next ``write``)."""
        end = start + k.shape[0]
        if self.scratch is None:  # f32: attention reads the cache itself
            self.k[layer, :, start:end] = k.transpose(1, 0, 2)
            self.v[layer, :, start:end] = v.transpose(1, 0, 2)
            return self.k[layer, :, :end], self.v[layer, :, :end]  # type: ignore[return-value]
        mode = self.precision
        kv_quant.quantize_into(mode, k.transpose(1, 0, 2), self.k[layer, :, start:end])
        kv_quant.quantize_into(mode, v.transpose(1, 0, 2), self.v[layer, :, start:end])
        keys, values = self.scratch[0, :, :end], self.scratch[1, :, :end]
        kv_quant.dequantize_into(mode, self.k[layer, :, :end], keys)
        kv_quant.dequantize_into(mode, self.v[layer, :, :end], values)
        return keys, values
