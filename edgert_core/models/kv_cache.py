"""The KV cache: fp32 keys and values of every layer, preallocated for ``max_context`` tokens."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edgert_core.models.config import ModelConfig


class KVCache:
    """Keys and values as float32 ``[n_layers, n_kv_heads, max_context, head_dim]``.

    Laid out head-major so each head's cached keys are one contiguous ``[S, head_dim]`` matrix.
    ``length`` counts the positions written by completed forward passes.
    """

    def __init__(self, config: ModelConfig, max_context: int) -> None:
        d = config.dims
        shape = (d.n_layers, d.n_kv_heads, max_context, d.head_dim)
        self.k: NDArray[np.float32] = np.zeros(shape, dtype=np.float32)
        self.v: NDArray[np.float32] = np.zeros(shape, dtype=np.float32)
        self.max_context = max_context
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

    def reset(self) -> None:
        """Forget every position (the arrays are reused)."""
        self.length = 0
