"""The KV cache: fp32 keys and values of every layer, preallocated for ``max_context`` tokens.

The arrays may be handed in (the engine passes pool memory, so the cache counts against the budget);
they must start zeroed or be written before they are read (positions are written before use).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edgert_core.models.config import ModelConfig


class KVCache:
    """Keys and values as float32 ``[n_layers, n_kv_heads, max_context, head_dim]``.

    Laid out head-major so each head's cached keys are one contiguous ``[S, head_dim]`` matrix.
    ``length`` counts the positions written by completed forward passes.
    """

    def __init__(
        self,
        config: ModelConfig,
        max_context: int,
        arrays: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None,
    ) -> None:
        shape = self.shape(config, max_context)
        if arrays is None:
            arrays = (np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32))
        k, v = arrays
        if k.shape != shape or v.shape != shape or k.dtype != np.float32 or v.dtype != np.float32:
            raise ValueError(f"KV cache arrays must be float32 {list(shape)}")
        self.k: NDArray[np.float32] = k
        self.v: NDArray[np.float32] = v
        self.max_context = max_context
        self.length = 0

    @staticmethod
    def shape(config: ModelConfig, max_context: int) -> tuple[int, int, int, int]:
        """``(n_layers, n_kv_heads, max_context, head_dim)``: the shape of each of K and V."""
        d = config.dims
        return (d.n_layers, d.n_kv_heads, max_context, d.head_dim)

    def release(self) -> None:
        """Drop the arrays (so pool memory under them can be returned)."""
        self.k = self.v = np.zeros((0, 0, 0, 0), dtype=np.float32)
        self.length = 0

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def write(
        self, layer: int, start: int, k: NDArray[np.float32], v: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Store new keys/values (float32 ``[T, n_kv_heads, head_dim]``) at positions
        ``start .. start+T-1`` of ``layer``; return the cached float32 ``[n_kv_heads, start+T,
        head_dim]`` views of keys and values up to the last new position."""
        end = start + k.shape[0]
        self.k[layer, :, start:end] = k.transpose(1, 0, 2)
        self.v[layer, :, start:end] = v.transpose(1, 0, 2)
        return self.k[layer, :, :end], self.v[layer, :, :end]
