"""Rotary position embedding tables, computed once per run."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def rope_tables(
    head_dim: int, max_context: int, theta: float
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``cos`` and ``sin`` as float32 ``[max_context, head_dim/2]``: the angle of position ``p`` and
    pair ``i`` is ``p * theta**(-2i/head_dim)``, computed in float32 as Hugging Face does so the
    tables agree with it bit for bit on the angles."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)  # [D/2]
    inv_freq = np.float32(1.0) / np.power(np.float32(theta), exponent)  # [D/2]
    positions = np.arange(max_context, dtype=np.float32)  # [C]
    angles = positions[:, None] * inv_freq[None, :]  # [C, D/2]
    return np.cos(angles), np.sin(angles)
