"""Rotary position embedding tables, computed once per run (plain RoPE and Llama 3's scaling)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Llama3Scaling:
    """Llama 3's RoPE scaling (``rope_type: llama3``): frequencies whose wavelength exceeds
    ``original_context / low_freq_factor`` are divided by ``factor``, those under
    ``original_context / high_freq_factor`` are kept, those between are interpolated."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_context: int


def inverse_frequencies(
    head_dim: int, theta: float, *, llama3: Llama3Scaling | None = None,
    freq_factors: tuple[float, ...] | None = None,
) -> F32:
    """float32 ``[head_dim/2]``: pair ``i`` turns by ``theta**(-2i/head_dim)`` per position, computed
    in float32 as Hugging Face does. ``llama3``: Llama 3's scaling, as transformers computes it;
    ``freq_factors``: llama.cpp's ``rope_freqs`` tensor (each frequency divided by its factor)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)  # [D/2]
    inv_freq: F32 = np.float32(1.0) / np.power(np.float32(theta), exponent)  # [D/2]
    if freq_factors is not None:
        inv_freq = (inv_freq / np.asarray(freq_factors, dtype=np.float32)).astype(np.float32)
    if llama3 is not None:
        s = llama3
        low_wavelen = np.float32(s.original_context / s.low_freq_factor)
        high_wavelen = np.float32(s.original_context / s.high_freq_factor)
        wavelen = np.float32(2 * math.pi) / inv_freq  # [D/2]
        factor = np.float32(s.factor)
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
        smooth = (np.float32(s.original_context) / wavelen - np.float32(s.low_freq_factor)) / (
            np.float32(s.high_freq_factor - s.low_freq_factor))
        smoothed = (np.float32(1.0) - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_tables(
    head_dim: int, max_context: int, theta: float, *, llama3: Llama3Scaling | None = None,
    freq_factors: tuple[float, ...] | None = None,
) -> tuple[F32, F32]:
    """``cos`` and ``sin`` as float32 ``[max_context, head_dim/2]``: the angle of position ``p`` and
    pair ``i`` is ``p * inv_freq[i]`` (see :func:`inverse_frequencies`), computed in float32 as
    Hugging Face does so the tables agree with it bit for bit on the angles."""
    inv_freq = inverse_frequencies(head_dim, theta, llama3=llama3, freq_factors=freq_factors)
    positions = np.arange(max_context, dtype=np.float32)  # [C]
    angles = positions[:, None] * inv_freq[None, :]  # [C, D/2]
    return np.cos(angles), np.sin(angles)
