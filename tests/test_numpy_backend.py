"""The numpy reference backend: exact dequantization, weight preparation, and every math op."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
from gguf import quants

from edgert_core.backends.base import Weight
from edgert_core.backends.numpy_ref import (
    SUPPORTED_DTYPES,
    NumpyBackend,
    dequantize,
    file_nbytes,
)
from edgert_core.errors import ModelError
from edgert_core.layout import TensorInfo
from edgert_core.plugins import load_registry

BE = NumpyBackend()
RNG = np.random.default_rng(1234)


def encoded(dtype: str, values: np.ndarray) -> np.ndarray:
    """File bytes of ``values`` (float32 [rows, cols]) in ``dtype``, by the gguf package."""
    if dtype == "F32":
        return values.astype(np.float32).reshape(-1).view(np.uint8)
    if dtype == "F16":
        return values.astype(np.float16).reshape(-1).view(np.uint8)
    q = quants.quantize(values, gguf.GGMLQuantizationType[dtype])
    return np.ascontiguousarray(q).reshape(-1).view(np.uint8)


def weight(dtype: str, values: np.ndarray, name: str = "w") -> Weight:
    raw = encoded(dtype, values)
    info = TensorInfo(name, values.shape, dtype, raw.nbytes)
    return BE.new_weight(info, raw)


@pytest.mark.parametrize("dtype", ["Q8_0", "Q4_0", "Q4_1", "BF16", "F16", "F32"])
def test_dequantization_is_exact(dtype: str) -> None:
    values = RNG.standard_normal((6, 96)).astype(np.float32) * 3
    raw = encoded(dtype, values)
    ours = dequantize(dtype, raw, values.shape)
    expected = quants.dequantize(raw.reshape(6, -1), gguf.GGMLQuantizationType[dtype]) if dtype not in (
        "F32", "F16") else raw.view(np.float32 if dtype == "F32" else np.float16).astype(np.float32)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours.reshape(-1), np.asarray(expected, dtype=np.float32).reshape(-1))


def test_q4_block_layout_by_hand() -> None:
    """One Q4_1 block written byte by byte: low nibbles are weights 0..15, high nibbles 16..31."""
    d, m = np.float16(0.5), np.float16(-1.0)
    qs = np.arange(16, dtype=np.uint8) | (np.arange(15, -1, -1, dtype=np.uint8) << 4)
    raw = np.concatenate([np.array([d]).view(np.uint8), np.array([m]).view(np.uint8), qs])
    out = dequantize("Q4_1", raw, (32,))
    expected = np.concatenate([np.arange(16), np.arange(15, -1, -1)]) * 0.5 - 1.0
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    raw0 = np.concatenate([np.array([d]).view(np.uint8), qs])
    out0 = dequantize("Q4_0", raw0, (32,))
    np.testing.assert_array_equal(out0, ((expected + 1.0) - 4.0).astype(np.float32))


def test_prepare_weight_fills_the_callers_buffer() -> None:
    values = RNG.standard_normal((4, 64)).astype(np.float32)
    raw = encoded("Q8_0", values)
    info = TensorInfo("w", (4, 64), "Q8_0", raw.nbytes)
    assert BE.weight_nbytes(info) == 4 * 64 * 4
    buf = np.zeros(BE.weight_nbytes(info) + 16, dtype=np.uint8)
    w = BE.prepare_weight(info, raw, buf)
    assert np.shares_memory(w.data, buf)
    assert w.data.shape == (4, 64) and w.data.dtype == np.float32
    assert file_nbytes("Q8_0", (4, 64)) == raw.nbytes == 4 * 2 * 34


def test_unsupported_type_is_named() -> None:
    info = TensorInfo("blk.0.ffn_up.weight", (2, 32), "Q4_K", 10)
    with pytest.raises(ModelError, match=r"blk\.0\.ffn_up\.weight.*Q4_K"):
        BE.prepare_weight(info, np.zeros(10, np.uint8), np.zeros(256, np.uint8))
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"} == set(SUPPORTED_DTYPES)


def test_linear_and_rows_on_raw_block_weights() -> None:
    """A backend that keeps file blocks (uint8 data) still gets correct math from the base ops."""
    values = RNG.standard_normal((8, 64)).astype(np.float32)
    raw = encoded("Q4_1", values)
    info = TensorInfo("w", (8, 64), "Q4_1", raw.nbytes)
    as_blocks = Weight(info, raw.reshape(8, -1))
    as_fp32 = BE.new_weight(info, raw)
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(BE.linear(x, as_blocks), BE.linear(x, as_fp32), rtol=0, atol=1e-5)
    ids = np.array([5, 0, 5], dtype=np.int64)
    np.testing.assert_array_equal(BE.rows(as_blocks, ids), BE.rows(as_fp32, ids))


def test_ops_against_float64_formulas() -> None:
    x = RNG.standard_normal((5, 48)).astype(np.float32)
    g = RNG.standard_normal(48).astype(np.float32)
    b = RNG.standard_normal(48).astype(np.float32)
    wg, wb = weight("F32", g), weight("F32", b)
    x64 = x.astype(np.float64)

    rms = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * g
    ln = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * g + b
    silu = x64 / (1 + np.exp(-x64))
    gelu = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    soft = np.exp(x64 - x64.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    cases = [
        (BE.rmsnorm(x, wg, 1e-6), rms),
        (BE.layernorm(x, wg, wb, 1e-5), ln),
        (BE.silu(x), silu),
        (BE.gelu_tanh(x), gelu),
        (BE.softmax(x), soft),
    ]
    for ours, expected in cases:
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_rope_layouts_agree_up_to_the_llama_cpp_permutation() -> None:
    t, h, d = 3, 2, 8
    x = RNG.standard_normal((t, h, d)).astype(np.float32)
    angles = np.arange(t)[:, None] * (10000.0 ** (-np.arange(0, d, 2) / d))[None, :]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    half = BE.rope(x, cos, sin, interleaved=False)
    # half-split pair (i, i + d/2) becomes adjacent pair (2i, 2i+1)
    perm = np.stack([np.arange(d // 2), np.arange(d // 2) + d // 2], axis=1).reshape(-1)
    inter = BE.rope(x[..., perm], cos, sin, interleaved=True)
    np.testing.assert_allclose(inter, half[..., perm], rtol=0, atol=1e-6)
    # rotation by hand for the half-split layout
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    c, s = cos[:, None], sin[:, None]
    np.testing.assert_allclose(half, np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1), atol=1e-6)
    assert half.dtype == np.float32


def test_attention_with_grouped_kv_heads_matches_a_loop() -> None:
    t, h, hkv, d, start = 4, 6, 2, 8, 3
    s = start + t
    q = RNG.standard_normal((t, h, d)).astype(np.float32)
    k = RNG.standard_normal((hkv, s, d)).astype(np.float32)
    v = RNG.standard_normal((hkv, s, d)).astype(np.float32)
    out = BE.attention(q, k, v, start)
    assert out.shape == (t, h * d) and out.dtype == np.float32
    expected = np.zeros((t, h, d))
    for i in range(t):
        for head in range(h):
            kv = head // (h // hkv)
            visible = start + i + 1
            scores = k[kv, :visible] @ q[i, head] / math.sqrt(d)
            p = np.exp(scores - scores.max())
            p /= p.sum()
            expected[i, head] = p @ v[kv, :visible]
    np.testing.assert_allclose(out, expected.reshape(t, h * d), rtol=1e-5, atol=1e-5)


def test_numpy_backend_is_registered_as_a_builtin_plugin() -> None:
    registry = load_registry(entry_points=False)
    assert "numpy" in registry.names("backend")
    backend = registry.backend("numpy")
    assert isinstance(backend, NumpyBackend)
    assert backend.status().available and backend.priority == 0
