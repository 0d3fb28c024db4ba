"""Test-only helpers: random GGUF blocks, an independent numpy dequantizer, and the error bounds
the kernels are held to."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

QK = 32
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
SCALE_BYTES = {"Q4_0": 2, "Q4_1": 4, "Q8_0": 2}  # f16 d (and f16 m for Q4_1) before the quants

# fp32 rounding tolerance, relative to sum_i |w_i x_i| of each output. Every path sums in fp32 in a
# different order (per block, per SIMD lane, two accumulators), so results differ by a few ulps of
# the largest partial sums: K <= 4096 terms in blocks of 32 gives worst-case (K/32 + 32) * 2^-24,
# about 1e-5. A wrong nibble order, sign or scale gives errors of order 1e-1 of that sum.
F32_RTOL = 1e-5

# Activation quantization (q8 mode) rounds each activation to the nearest multiple of
# d = max|x_block| / 127, an error of at most d/2 per activation, so an output's error is at most
# sum over blocks of (max|x_block| / 254) * sum_block |w_i|. Allow 0.1% on top for the one-ulp
# rounding of 1/d, plus the fp32 term above.
Q8_BOUND_SLACK = 1.001


def f16_bits(values: NDArray[np.floating]) -> NDArray[np.uint8]:
    """float16 values -> their 2 bytes each, ``uint8 [n, 2]``."""
    return np.asarray(values, dtype=np.float16).reshape(-1, 1).view(np.uint8)


def random_blocks(
    dtype: str, rows: int, k: int, rng: np.random.Generator, scales: str = "normal"
) -> NDArray[np.uint8]:
    """``uint8 [rows, k/32 * block_bytes]`` of random quants and f16 scales.

    ``scales``: ``normal`` (|d| ~ 0.01..0.1), ``tiny`` (f16 subnormals, down to 2^-24), ``huge``
    (up to the f16 maximum 65504), ``zero`` (every scale and minimum 0), ``mixed`` (all of these).
    """
    nb = rows * k // QK
    bb = BLOCK_BYTES[dtype]
    blocks = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    n_scales = SCALE_BYTES[dtype] // 2
    if scales == "normal":
        vals = rng.uniform(0.01, 0.1, size=(nb, n_scales)) * rng.choice([-1, 1], size=(nb, n_scales))
    elif scales == "tiny":
        vals = rng.integers(1, 1024, size=(nb, n_scales)) * 2.0**-24  # every f16 subnormal
    elif scales == "huge":
        vals = rng.uniform(1e4, 65504, size=(nb, n_scales)) * rng.choice([-1, 1], size=(nb, n_scales))
    elif scales == "zero":
        vals = np.zeros((nb, n_scales))
    elif scales == "mixed":
        choice = rng.integers(0, 4, size=(nb, n_scales))
        vals = np.select(
            [choice == 0, choice == 1, choice == 2],
            [rng.uniform(-0.1, 0.1, (nb, n_scales)), 2.0**-24 * rng.integers(1, 1024, (nb, n_scales)),
             65504.0 * rng.choice([-1, 1], size=(nb, n_scales))],
            0.0,
        )
    else:
        raise ValueError(scales)
    blocks[:, : 2 * n_scales] = f16_bits(vals).reshape(nb, 2 * n_scales)
    return blocks.reshape(rows, -1)


def dequantize(dtype: str, blocks: NDArray[np.uint8], k: int) -> NDArray[np.float64]:
    """Exact values of ``blocks`` (``uint8 [rows, row_bytes]``) as float64 ``[rows, k]``, written from the
    GGUF definitions (independent of the backends under test)."""
    rows = blocks.shape[0]
    b = blocks.reshape(-1, BLOCK_BYTES[dtype])
    d = b[:, 0:2].copy().view(np.float16).astype(np.float64)  # [nb, 1]
    if dtype == "Q8_0":
        q = b[:, 2:].view(np.int8).astype(np.float64)
        vals = q * d
    else:
        qs = b[:, SCALE_BYTES[dtype] :]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)  # low nibbles first
        if dtype == "Q4_0":
            vals = (q - 8) * d
        else:
            m = b[:, 2:4].copy().view(np.float16).astype(np.float64)
            vals = q * d + m
    return vals.reshape(rows, k)


def magnitude(dtype: str, blocks: NDArray[np.uint8], k: int) -> NDArray[np.float64]:
    """Per-weight size of the terms the kernels actually add, float64 ``[rows, k]``: Q4_0 computes
    ``d*q - 8*d`` and Q4_1 ``d*q + m`` as separate sums, which may cancel, so their fp32 rounding
    scales with ``|d|*(q + 8)`` and ``|d|*q + |m|``, not with the (smaller) weight itself."""
    rows = blocks.shape[0]
    b = blocks.reshape(-1, BLOCK_BYTES[dtype])
    d = np.abs(b[:, 0:2].copy().view(np.float16).astype(np.float64))
    if dtype == "Q8_0":
        return (np.abs(b[:, 2:].view(np.int8).astype(np.float64)) * d).reshape(rows, k)
    qs = b[:, SCALE_BYTES[dtype] :]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)
    if dtype == "Q4_0":
        return ((q + 8) * d).reshape(rows, k)
    m = np.abs(b[:, 2:4].copy().view(np.float16).astype(np.float64))
    return (q * d + m).reshape(rows, k)


def reference(x: NDArray[np.float32], w: NDArray[np.float64]) -> NDArray[np.float64]:
    """``x [T, K] @ w[N, K].T`` in float64."""
    out: NDArray[np.float64] = x.astype(np.float64) @ w.T
    return out


def f32_tolerance(x: NDArray[np.float32], mag: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-output tolerance of fp32 accumulation, ``[T, N]`` (``mag`` from :func:`magnitude`)."""
    return F32_RTOL * (np.abs(x.astype(np.float64)) @ mag.T)


def q8_tolerance(
    x: NDArray[np.float32], w: NDArray[np.float64], mag: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Per-output bound of the q8 activation error plus fp32 accumulation, ``[T, N]``."""
    t, k = x.shape
    amax = np.abs(x.astype(np.float64)).reshape(t, k // QK, QK).max(axis=2)  # [T, nb]
    wabs = np.abs(w).reshape(w.shape[0], k // QK, QK).sum(axis=2)  # [N, nb]
    bound: NDArray[np.float64] = Q8_BOUND_SLACK * (amax / 254.0) @ wabs.T + f32_tolerance(x, mag)
    return bound
