"""Every kernel (each compiled path, both activation modes, each block type) against an exact
numpy reference on random blocks, odd sizes, several thread counts and extreme scales.

These tests fail, never skip, when the C extension did not build: a missing extension must not
turn the suite green."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from edgert_neon_kernels import kernels
from gguf import GGMLQuantizationType, quants
from neon_testutil import (
    BLOCK_BYTES,
    dequantize,
    f32_tolerance,
    magnitude,
    q8_tolerance,
    random_blocks,
    reference,
)

from edgert_core.backends import numpy_ref

DTYPES = ["Q4_0", "Q4_1", "Q8_0"]
GGML = {"Q4_0": GGMLQuantizationType.Q4_0, "Q4_1": GGMLQuantizationType.Q4_1,
        "Q8_0": GGMLQuantizationType.Q8_0}


def runnable_paths() -> list[str]:
    return [p for p, ok in kernels.paths().items() if ok]


def check(dtype: str, x: np.ndarray, blocks: np.ndarray, y: np.ndarray, act_q8: bool) -> None:
    k = x.shape[1]
    w = dequantize(dtype, blocks, k)
    mag = magnitude(dtype, blocks, k)
    ref = reference(x, w)
    tol = q8_tolerance(x, w, mag) if act_q8 else f32_tolerance(x, mag)
    err = np.abs(y.astype(np.float64) - ref)
    bad = err > tol
    assert not bad.any(), (
        f"{dtype} act_q8={act_q8} path={kernels.active_path()}: {int(bad.sum())} of {bad.size} outputs "
        f"off; worst error {err.max():.3g} vs tolerance {tol[np.unravel_index(err.argmax(), err.shape)]:.3g}"
    )


def test_extension_is_built() -> None:
    assert kernels.load_error() == "", kernels.load_error()
    assert kernels.active_path() in {"portable", "neon", "neon-dotprod", "x86-avx2", "x86-avx512"}
    assert kernels.paths()["portable"] is True


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_dequantizer_matches_gguf_and_numpy_backend(dtype: str) -> None:
    """The test reference, gguf.quants and the numpy backend agree bit for bit (nibble order)."""
    rng = np.random.default_rng(1)
    blocks = random_blocks(dtype, 5, 96, rng, scales="mixed")
    ours = dequantize(dtype, blocks, 96).astype(np.float32)
    theirs = quants.dequantize(blocks, GGML[dtype]).reshape(5, 96)
    backend = numpy_ref.dequantize(dtype, blocks.reshape(-1), (5, 96))
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act_q8", [True, False], ids=["q8", "f32"])
@pytest.mark.parametrize("shape", [(1, 1, 32), (1, 67, 96), (3, 129, 576), (7, 31, 1536), (5, 257, 64)])
@pytest.mark.parametrize("threads", [1, 3])
def test_linear_every_path(
    dtype: str, act_q8: bool, shape: tuple[int, int, int], threads: int, restore_path: None
) -> None:
    t, n, k = shape
    rng = np.random.default_rng(hash((dtype, shape)) % 2**32)
    blocks = random_blocks(dtype, n, k, rng)
    x = rng.standard_normal((t, k)).astype(np.float32)
    for path in runnable_paths():
        kernels.set_path(path)
        y = kernels.linear(x, blocks, dtype, threads=threads, act_q8=act_q8)
        assert y.shape == (t, n) and y.dtype == np.float32
        check(dtype, x, blocks, y, act_q8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scales", ["tiny", "huge", "zero", "mixed"])
@pytest.mark.parametrize("act_q8", [True, False], ids=["q8", "f32"])
def test_extreme_scales(dtype: str, scales: str, act_q8: bool, restore_path: None) -> None:
    rng = np.random.default_rng(7)
    blocks = random_blocks(dtype, 45, 320, rng, scales=scales)
    x = rng.standard_normal((3, 320)).astype(np.float32)
    x[1] *= 1e4  # large activations
    x[2, :64] = 0.0  # whole zero blocks (q8 scale 0)
    x[2, 64:96] = 1e-30  # tiny activations
    for path in runnable_paths():
        kernels.set_path(path)
        y = kernels.linear(x, blocks, dtype, threads=2, act_q8=act_q8)
        assert np.isfinite(y).all()
        check(dtype, x, blocks, y, act_q8)
        if scales == "zero" and dtype != "Q4_1":
            assert not y.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "threads"), [(7, 8), (13, 5), (1001, 3), (2, 2)])
def test_threads_split_rows_not_multiple(dtype: str, n: int, threads: int) -> None:
    """Rows not a multiple of the threads; K large enough that every requested thread gets rows."""
    k = 32 * 1024
    rng = np.random.default_rng(3)
    blocks = random_blocks(dtype, n, k, rng)
    x = rng.standard_normal((2, k)).astype(np.float32)
    one = kernels.linear(x, blocks, dtype, threads=1)
    many = kernels.linear(x, blocks, dtype, threads=threads)
    np.testing.assert_array_equal(one, many)  # the same kernel per row: identical bits
    check(dtype, x, blocks, many, act_q8=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act_q8", [True, False], ids=["q8", "f32"])
@pytest.mark.parametrize(("n", "k", "t"), [(67, 96, 9), (129, 576, 5), (31, 1536, 7), (300, 544, 64)])
def test_prompt_products_equal_one_token_at_a_time(
    dtype: str, act_q8: bool, n: int, k: int, t: int, restore_path: None
) -> None:
    """A prompt's products (T >= 4: the tile kernels, which unpack each weight row once for every
    token) are bit for bit its tokens' products one at a time (the decode kernels), on every path,
    so prefill and decode never disagree about a position. K = 96 and 544 leave an odd block at the
    end of a group of 16; n = 67, 129, 31 leave a partial tile of rows."""
    rng = np.random.default_rng(hash((dtype, n, k, t)) % 2**32)
    blocks = random_blocks(dtype, n, k, rng)
    x = rng.standard_normal((t, k)).astype(np.float32)
    for path in runnable_paths():
        kernels.set_path(path)
        prompt = kernels.linear(x, blocks, dtype, threads=2, act_q8=act_q8)
        one = np.stack([kernels.linear(x[i], blocks, dtype, threads=1, act_q8=act_q8)
                        for i in range(t)])
        differ = prompt != one
        assert not differ.any(), (
            f"{dtype} act_q8={act_q8} path={path}: {int(differ.sum())} of {differ.size} outputs differ, "
            f"worst by {float(np.abs(prompt - one).max()):.3g}"
        )
        check(dtype, x, blocks, prompt, act_q8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act_q8", [True, False], ids=["q8", "f32"])
@pytest.mark.parametrize(("n", "k"), [(67, 96), (37, 576), (9, 1536)])
@pytest.mark.parametrize("t", [1, 2, 5])
def test_rows_together_equal_rows_alone(
    dtype: str, act_q8: bool, n: int, k: int, t: int, restore_path: None
) -> None:
    """Each row's products are bit for bit the same whether the row is computed alone (one-row
    kernels) or in a group with others (the multi-row decode kernels for T < 4, the prompt tiles for
    T >= 4), on every path. n leaves partial groups; K = 96 ends in an odd block; K = 576 and 1536
    give rows on either side of the AVX2 path's size limit for multi-row decode."""
    rng = np.random.default_rng(hash((dtype, n, k, t, "rows")) % 2**32)
    blocks = random_blocks(dtype, n, k, rng)
    x = rng.standard_normal((t, k)).astype(np.float32)
    for path in runnable_paths():
        kernels.set_path(path)
        together = kernels.linear(x, blocks, dtype, threads=1, act_q8=act_q8)
        alone = np.concatenate([kernels.linear(x, blocks[i : i + 1], dtype, threads=1, act_q8=act_q8)
                                for i in range(n)], axis=1)
        differ = together != alone
        assert not differ.any(), (
            f"{dtype} act_q8={act_q8} path={path}: {int(differ.sum())} of {differ.size} outputs differ"
        )
        check(dtype, x, blocks, together, act_q8)


def test_simd_q8_matches_portable_closely(restore_path: None) -> None:
    """Integer block dots are exact on every path; only the fp32 scaling order differs. Each SIMD
    path is compared with the portable one (never a path with itself)."""
    simd = [p for p in runnable_paths() if p != "portable"]
    if not simd:
        pytest.skip("only the portable path is compiled for this CPU: no SIMD path to compare")
    rng = np.random.default_rng(11)
    for dtype in DTYPES:
        blocks = random_blocks(dtype, 96, 1536, rng)
        x = rng.standard_normal((4, 1536)).astype(np.float32)
        tol = f32_tolerance(x, magnitude(dtype, blocks, 1536))
        kernels.set_path("portable")
        assert kernels.active_path() == "portable"
        base = kernels.linear(x, blocks, dtype).astype(np.float64)
        for path in simd:
            kernels.set_path(path)
            assert kernels.active_path() == path
            y = kernels.linear(x, blocks, dtype)
            worst = float(np.abs(y - base).max())
            assert (np.abs(y - base) <= tol).all(), (dtype, path, worst)


def test_vector_input_and_out_argument() -> None:
    rng = np.random.default_rng(5)
    blocks = random_blocks("Q4_1", 10, 64, rng)
    x = rng.standard_normal(64).astype(np.float32)
    y = kernels.linear(x, blocks, "Q4_1")
    assert y.shape == (10,)
    out = np.empty((1, 10), dtype=np.float32)
    res = kernels.linear(x[None], blocks, "Q4_1", out=out)
    assert np.shares_memory(res, out)
    np.testing.assert_array_equal(res[0], y)


def test_bad_arguments_are_clear_errors() -> None:
    blocks = np.zeros((4, 2 * BLOCK_BYTES["Q8_0"]), dtype=np.uint8)
    with pytest.raises(ValueError, match="multiple of the block size"):
        kernels.linear(np.zeros((1, 48), np.float32), blocks, "Q8_0")
    with pytest.raises(ValueError, match=r"uint8 \[N, 68\]"):
        kernels.linear(np.zeros((1, 64), np.float32), blocks[:, :60], "Q8_0")
    with pytest.raises(ValueError, match="no quantized kernel"):
        kernels.linear(np.zeros((1, 64), np.float32), blocks, "F16")
    with pytest.raises(ValueError, match="not compiled"):
        kernels.set_path("sve2")


def test_float64_and_strided_inputs_are_converted() -> None:
    rng = np.random.default_rng(9)
    blocks = random_blocks("Q8_0", 6, 64, rng)
    x = rng.standard_normal((3, 128))[:, ::2]  # float64, not contiguous
    y = kernels.linear(x, blocks, "Q8_0")  # type: ignore[arg-type]
    check("Q8_0", x.astype(np.float32), blocks, y, act_q8=True)


def test_concurrent_python_threads() -> None:
    """Two Python threads share the kernel pool (the GIL is released during the kernel)."""
    rng = np.random.default_rng(13)
    blocks = random_blocks("Q4_0", 512, 1536, rng)
    xs = [rng.standard_normal((2, 1536)).astype(np.float32) for _ in range(2)]
    expected = [kernels.linear(x, blocks, "Q4_0", threads=1) for x in xs]
    results: list[list[np.ndarray]] = [[], []]

    def work(i: int) -> None:
        for _ in range(20):
            results[i].append(kernels.linear(xs[i], blocks, "Q4_0", threads=2))

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    for i in range(2):
        assert len(results[i]) == 20
        for r in results[i]:
            np.testing.assert_array_equal(r, expected[i])


def test_pool_restarts_after_shutdown() -> None:
    rng = np.random.default_rng(17)
    blocks = random_blocks("Q4_1", 300, 576, rng)
    x = rng.standard_normal((1, 576)).astype(np.float32)
    a = kernels.linear(x, blocks, "Q4_1", threads=2)
    kernels.shutdown_pool()
    b = kernels.linear(x, blocks, "Q4_1", threads=4)
    np.testing.assert_array_equal(a, b)
