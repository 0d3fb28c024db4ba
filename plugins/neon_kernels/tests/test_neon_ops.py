"""The fused C ops (RMSNorm, RoPE, attention over the KV cache) on every compiled path,
against float64 references and the numpy backend, and the backend's row stacking of blocks.

Tolerances (each op computes in fp32, in its own summation order):
  RMSNorm:   |y - ref| <= 1e-5 * max|ref row|        (fp32 sum of n <= 4096 squares, one sqrt)
  RoPE:      |y - ref| <= 2.5e-7 * (|a| + |b|) for y = a -+ b  (two products, one add, each rounded)
  attention: |y - ref| <= 2e-6 * max|v|             (scores of order 1: the fp32 dot, exp and
             weighted sum each keep ~1e-7 relative accuracy; a wrong head, mask or scale is off by
             order max|v|)
These tests fail, never skip, when the C extension did not build."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from edgert_neon_kernels import NeonBackend, kernels
from neon_testutil import random_blocks

from edgert_core.plugin_api import LlamaLayer, NumpyBackend, TensorInfo, Weight


def runnable_paths() -> list[str]:
    return [p for p, ok in kernels.paths().items() if ok]


@pytest.fixture(params=runnable_paths())
def path(request: pytest.FixtureRequest, restore_path: None) -> Iterator[str]:
    kernels.set_path(request.param)
    yield request.param


def f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


# -- RMSNorm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("t,n", [(1, 576), (3, 1536), (2, 100), (1, 7), (4, 4096)])
def test_rmsnorm(path: str, t: int, n: int) -> None:
    rng = np.random.default_rng(n)
    x = f32(rng.standard_normal((t, n)) * rng.choice([1e-3, 1.0, 1e3], size=(t, 1)))
    w = f32(rng.standard_normal(n))
    eps = 1e-5
    y = kernels.rmsnorm(x, w, eps)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + eps) * w
    tol = 1e-5 * np.abs(ref).max(axis=1, keepdims=True)
    assert (np.abs(y - ref) <= tol).all(), f"{path}: worst {np.abs(y - ref).max():.3g}"
    # the input is left alone and a zero row gives zeros (eps keeps the divisor positive)
    np.testing.assert_array_equal(kernels.rmsnorm(np.zeros((1, n), np.float32), w, eps), 0.0)


# -- RoPE -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("t,h,d", [(1, 9, 64), (5, 3, 64), (2, 4, 2), (3, 2, 128)])
def test_rope(path: str, interleaved: bool, t: int, h: int, d: int) -> None:
    rng = np.random.default_rng(t * 100 + d)
    x = f32(rng.standard_normal((t, h, d)))
    ang = rng.uniform(-50, 50, size=(t, d // 2))
    cos, sin = f32(np.cos(ang)), f32(np.sin(ang))
    y = kernels.rope(x, cos, sin, interleaved=interleaved)
    if interleaved:
        i1, i2 = np.arange(0, d, 2), np.arange(1, d, 2)
    else:
        i1, i2 = np.arange(d // 2), np.arange(d // 2, d)
    x1, x2 = x[..., i1].astype(np.float64), x[..., i2].astype(np.float64)
    c, s = cos[:, None, :].astype(np.float64), sin[:, None, :].astype(np.float64)
    mag1, mag2 = np.abs(x1 * c) + np.abs(x2 * s), np.abs(x2 * c) + np.abs(x1 * s)
    assert (np.abs(y[..., i1] - (x1 * c - x2 * s)) <= 2.5e-7 * mag1).all()
    assert (np.abs(y[..., i2] - (x2 * c + x1 * s)) <= 2.5e-7 * mag2).all()


def test_rope_rejects_wrong_table_shape() -> None:
    x = np.zeros((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match="cos and sin"):
        kernels.rope(x, np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32), interleaved=True)


# -- attention --------------------------------------------------------------------------------------


def reference_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
    """float64, one (token, head) at a time: the definition, no shared code with either backend."""
    t, h, d = q.shape
    hkv = k.shape[0]
    out = np.zeros((t, h, d))
    for i in range(t):
        for j in range(h):
            kv = j // (h // hkv)
            keys = k[kv, : start + i + 1].astype(np.float64)
            scores = keys @ q[i, j].astype(np.float64) / math.sqrt(d)
            p = np.exp(scores - scores.max())
            out[i, j] = (p / p.sum()) @ v[kv, : start + i + 1]
    return out.reshape(t, h * d)


ATTN_CASES = [  # T, H, Hkv, D, start, max_context
    (1, 9, 3, 64, 0, 16),  # first decoded token: one position
    (1, 9, 3, 64, 40, 512),  # SmolLM2 decode, a view into a larger cache
    (7, 9, 3, 64, 0, 64),  # prefill, causal mask
    (4, 4, 4, 32, 10, 20),  # multi-head (no grouping), prefill after a prefix
    (3, 8, 1, 16, 5, 8),  # one KV head (multi-query)
    (1, 6, 2, 64, 2999, 3000),  # longer than the on-stack score buffer
]


@pytest.mark.parametrize("t,h,hkv,d,start,ctx", ATTN_CASES)
def test_attention(path: str, t: int, h: int, hkv: int, d: int, start: int, ctx: int) -> None:
    rng = np.random.default_rng(t + h + start)
    cache_k = f32(rng.standard_normal((hkv, ctx, d)))
    cache_v = f32(rng.standard_normal((hkv, ctx, d)))
    q = f32(rng.standard_normal((t, h, d)))
    k, v = cache_k[:, : start + t], cache_v[:, : start + t]  # as KVCache.write returns them
    ref = reference_attention(q, k, v, start)
    tol = 2e-6 * np.abs(v).max()
    for threads in (1, 3):
        y = kernels.attention(q, k, v, start, threads=threads)
        assert y.shape == (t, h * d)
        err = np.abs(y - ref).max()
        assert err <= tol, f"{path} threads={threads}: error {err:.3g} > {tol:.3g}"
    np.testing.assert_array_equal(
        kernels.attention(q, k, v, start, threads=1), kernels.attention(q, k, v, start, threads=3)
    )


def test_attention_matches_numpy_backend_on_a_layered_cache() -> None:
    """The backend method on a [layers, Hkv, ctx, D] cache slice, as the transformer calls it."""
    rng = np.random.default_rng(9)
    kc = f32(rng.standard_normal((2, 3, 32, 64)))
    vc = f32(rng.standard_normal((2, 3, 32, 64)))
    q = f32(rng.standard_normal((2, 9, 64)))
    k, v = kc[1, :, :12], vc[1, :, :12]
    got = NeonBackend(threads=2).attention(q, k, v, 10)
    want = NumpyBackend().attention(q, k, v, 10)
    np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(vc).max())


def test_attention_rejects_bad_sizes() -> None:
    q = np.zeros((2, 4, 8), np.float32)
    kv = np.zeros((3, 5, 8), np.float32)  # 4 query heads cannot share 3 KV heads
    with pytest.raises(ValueError):
        kernels.attention(q, kv, kv, 3)
    kv2 = np.zeros((2, 4, 8), np.float32)  # start + T = 5 positions, the cache holds 4
    with pytest.raises(ValueError):
        kernels.attention(q, kv2, kv2, 3)


# -- the backend's overrides -----------------------------------------------------------------------


def test_backend_ops_match_numpy_backend() -> None:
    be, ref = NeonBackend(threads=2), NumpyBackend()
    rng = np.random.default_rng(5)
    x = f32(rng.standard_normal((3, 576)))
    norm = Weight(TensorInfo("norm", (576,), "F32", 576 * 4), f32(rng.standard_normal(576)))
    np.testing.assert_allclose(be.rmsnorm(x, norm, 1e-5), ref.rmsnorm(x, norm, 1e-5),
                               rtol=1e-5, atol=1e-5)
    q = f32(rng.standard_normal((3, 9, 64)))
    cos, sin = f32(rng.uniform(-1, 1, (3, 32))), f32(rng.uniform(-1, 1, (3, 32)))
    for il in (True, False):
        np.testing.assert_allclose(be.rope(q, cos, sin, interleaved=il),
                                   ref.rope(q, cos, sin, interleaved=il), rtol=1e-6, atol=1e-6)


def block_weights(be: NeonBackend, dtype: str, rows: list[int], k: int, buf: np.ndarray,
                  gap: int = 0) -> list[Weight]:
    rng = np.random.default_rng(7)
    out, offset = [], 0
    for i, r in enumerate(rows):
        raw = random_blocks(dtype, r, k, rng)
        ti = TensorInfo(f"w{i}", (r, k), dtype, raw.size)
        out.append(be.prepare_weight(ti, raw.reshape(-1), buf[offset : offset + raw.size]))
        offset += raw.size + gap
    return out


@pytest.mark.parametrize("dtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_fuse_rows_stacks_adjacent_blocks_without_copying(dtype: str) -> None:
    be = NeonBackend(threads=2)
    buf = np.zeros(1 << 16, dtype=np.uint8)
    parts = block_weights(be, dtype, [64, 32, 32], 96, buf)
    fused = be.fuse_rows(parts)
    assert fused is not None
    assert fused.info.shape == (128, 96) and fused.info.dtype == dtype
    assert np.shares_memory(fused.data, buf)
    x = f32(np.random.default_rng(8).standard_normal((2, 96)))
    want = np.concatenate([be.linear(x, p) for p in parts], axis=1)
    np.testing.assert_array_equal(be.linear(x, fused), want)  # same rows, same kernels


def test_fuse_rows_refuses_gaps_and_mixed_types() -> None:
    be = NeonBackend()
    buf = np.zeros(1 << 16, dtype=np.uint8)
    assert be.fuse_rows(block_weights(be, "Q4_1", [32, 32], 64, buf, gap=64)) is None
    a = block_weights(be, "Q4_0", [32], 64, buf)[0]
    b = block_weights(be, "Q8_0", [32], 64, buf[a.data.nbytes :])[0]
    assert be.fuse_rows([a, b]) is None


def test_linear_hot_path_matches_checked_path_and_refuses_wrong_width() -> None:
    be = NeonBackend(threads=2)
    buf = np.zeros(1 << 16, dtype=np.uint8)
    w = block_weights(be, "Q4_1", [48], 96, buf)[0]
    x = f32(np.random.default_rng(10).standard_normal((3, 96)))
    want = kernels.linear(x, w.data, "Q4_1", threads=2, act_q8=be.act_q8)  # type: ignore[arg-type]
    np.testing.assert_array_equal(be.linear(x, w), want)
    np.testing.assert_array_equal(be.linear(np.asfortranarray(x), w), want)  # copied, same values
    with pytest.raises(ValueError, match="weight blocks must be"):
        be.linear(f32(np.ones((1, 64))), w)


# -- whole groups of blocks in one call (plugin API 1.4) -------------------------------------------

N, H, HKV, D, INNER, CTX = 64, 4, 2, 16, 96, 8


def llama_layer(be: NeonBackend, seed: int, dtypes: tuple[str, str, str, str]) -> LlamaLayer:
    """A block of random quantized weights: q/k/v stacked, output, gate/up stacked, down (their
    block types in that order) and fp32 norms."""
    rng = np.random.default_rng(seed)
    buf = np.zeros(1 << 18, dtype=np.uint8)
    shapes = [((H + 2 * HKV) * D, N), (N, H * D), (2 * INNER, N), (N, INNER)]
    mats, offset = [], 0
    for i, (dtype, (rows, k)) in enumerate(zip(dtypes, shapes, strict=True)):
        raw = random_blocks(dtype, rows, k, rng)
        ti = TensorInfo(f"m{i}", (rows, k), dtype, raw.size)
        mats.append(be.prepare_weight(ti, raw.reshape(-1), buf[offset : offset + raw.size]))
        offset += raw.size

    def norm(name: str) -> Weight:
        return Weight(TensorInfo(name, (N,), "F32", N * 4), f32(rng.uniform(0.5, 1.5, N)))

    return LlamaLayer(norm("attn_norm"), mats[0], mats[1], norm("ffn_norm"), mats[2], mats[3])


@pytest.mark.parametrize("act_q8", [False, True])
@pytest.mark.parametrize(("t", "start"), [(1, 0), (1, 5), (3, 2)])
def test_llama_blocks_equal_the_block_parts_one_by_one(path: str, act_q8: bool, t: int,
                                                       start: int) -> None:
    """Three blocks of mixed weight types in one call give the bits of ``attention_block`` then
    ``mlp_block`` per block, and leave the same keys and values in every layer's cache."""
    be = NeonBackend(threads=2, act_q8=act_q8)
    types = [("Q4_1", "Q4_1", "Q4_1", "Q8_0"), ("Q4_0", "Q8_0", "Q4_0", "Q4_1"),
             ("Q8_0", "Q4_1", "Q8_0", "Q4_0")]
    layers = [llama_layer(be, 20 + i, ty) for i, ty in enumerate(types)]
    rng = np.random.default_rng(30)
    x = f32(rng.standard_normal((t, N)))
    angles = rng.uniform(-3, 3, (t, D // 2))
    cos, sin = f32(np.cos(angles)), f32(np.sin(angles))
    history = f32(rng.standard_normal((len(layers), 2, HKV, CTX, D)))  # positions before start
    caches_one, caches_parts = history.copy(), history.copy()

    prepared = [be.prepare_llama_block(ly) for ly in layers]
    assert all(p is not None for p in prepared)
    args = [(p, caches_one[i, 0], caches_one[i, 1]) for i, p in enumerate(prepared)]
    x_before = x.copy()
    one = be.llama_blocks(x, 1e-5, args, cos, sin, start, interleaved=True)
    assert one is not None
    np.testing.assert_array_equal(x, x_before)  # the caller's x is not touched

    y = x
    for i, ly in enumerate(layers):
        mid = be.attention_block(y, ly.attn_norm, 1e-5, ly.qkv, ly.output, cos, sin,
                                 caches_parts[i, 0], caches_parts[i, 1], start, interleaved=True)
        assert mid is not None
        y = be.mlp_block(mid, ly.ffn_norm, 1e-5, ly.gate_up, ly.down)
        assert y is not None
    np.testing.assert_array_equal(one, y)
    np.testing.assert_array_equal(caches_one, caches_parts)
    assert not np.array_equal(caches_one[:, :, :, start], history[:, :, :, start])  # written


def test_llama_blocks_refuse_what_they_cannot_take() -> None:
    be = NeonBackend(threads=2)
    layer = llama_layer(be, 40, ("Q4_1", "Q4_1", "Q4_1", "Q4_1"))
    prepared = be.prepare_llama_block(layer)
    x = f32(np.ones((1, N)))
    cos, sin = f32(np.ones((1, D // 2))), f32(np.zeros((1, D // 2)))
    cache = np.zeros((2, HKV, CTX, D), np.float32)
    # an fp32 matrix is not blocks the kernels take: no one-call path for that block
    fp32 = NumpyBackend()
    qkv = fp32.prepare_weight(TensorInfo("qkv", ((H + 2 * HKV) * D, N), "F32", 4 * N * (H + 2 * HKV) * D),
                              f32(np.ones(N * (H + 2 * HKV) * D)).view(np.uint8),
                              np.zeros(4 * N * (H + 2 * HKV) * D, np.uint8))
    assert be.prepare_llama_block(LlamaLayer(layer.attn_norm, qkv, layer.output, layer.ffn_norm,
                                             layer.gate_up, layer.down)) is None
    # a block of other shapes than the first's (here a wider MLP) cannot share the call
    assert isinstance(prepared, tuple) and prepared[0] == (N, (H + 2 * HKV) * D, INNER, H * D)
    wider = ((N, (H + 2 * HKV) * D, 2 * INNER, H * D), prepared[1])
    assert be.llama_blocks(x, 1e-5, [(prepared, cache[0], cache[1]), (wider, cache[0], cache[1])],
                           cos, sin, 0, interleaved=True) is None
    # what Python did not prepare is refused by C with a clear error, not read out of bounds
    ext = kernels.extension()
    assert ext is not None
    short_cache = np.zeros((HKV, CTX - 1, D), np.float32)
    with pytest.raises(ValueError, match="llama_blocks key cache holds"):
        ext.llama_blocks(x.copy(), cos, sin, [(*prepared[1], short_cache, cache[1])], 1, N, 1e-5,
                         H, HKV, D, INNER, True, CTX, 0, 2, False)
    with pytest.raises(TypeError, match="each layer must be a tuple"):
        ext.llama_blocks(x.copy(), cos, sin, [list(prepared[1])], 1, N, 1e-5, H, HKV, D, INNER,
                         True, CTX, 0, 2, False)
    with pytest.raises(ValueError, match="bad sizes"):
        ext.llama_blocks(x.copy(), cos, sin, [], 1, N, 1e-5, H, HKV, D, INNER, True, CTX, CTX, 2,
                         False)
