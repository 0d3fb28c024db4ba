"""Soak: one long generation and many generate calls on one loaded model hold memory steady.

What is checked, with the operating system's figures (``VmRSS``) and the pool's:

* The pool: a loaded model keeps standing buffers between calls (the KV cache, resident groups or
  stage slots, the loader's scratch, the activations' accounting block). Nothing a generate call
  takes from the pool stays behind: after every call the pool's in-use and held bytes and its number
  of live buffers equal their standing values (measured after a warm-up call), nothing is stuck, the
  pool's peak stays at or under the plan's predicted peak, and after ``close`` it holds 0 bytes.
* The long run: as the KV cache fills, its pages are touched, so RSS grows by up to the cache's
  size. RSS may grow by no more than the KV cache's newly resident bytes (``mincore`` over the cache's
  arrays) plus :data:`SLACK_BYTES`.
* The repeated calls: after :data:`WARMUP_CALLS` calls, RSS stays within :data:`SLACK_BYTES`.

The tiny fixture runs in CI (resident and streamed with prefetch); SmolLM2 (``slow``) runs the
2,000-token generation with ``max_context=2048`` and 50 calls in about a minute and a half.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import model_helpers as mh
import numpy as np
import pytest
from numpy.typing import NDArray

from edgert_core.api import Model, load_model
from edgert_core.memory.malloc import give_back_freed_memory
from edgert_core.memory.pool import PoolStats
from edgert_core.memory.rss import current_rss_bytes
from edgert_core.plan import PlanningContext

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="RSS and mincore figures are read from Linux")

MiB = 2**20
SLACK_BYTES = 2 * MiB
WARMUP_CALLS = 2
MAX_CONTEXT = 2048
LONG_TOKENS = 2000
CALLS = 50
LEAK_BYTES = 4 * MiB  # per call, in the test that the soak sees a leak


def resident_bytes(array: NDArray[np.float32]) -> int:
    """Bytes of the pages under ``array`` that are in memory (``mincore``)."""
    page = mmap.PAGESIZE
    address = array.ctypes.data
    start = address // page * page
    length = address + array.nbytes - start
    vec = (ctypes.c_ubyte * ((length + page - 1) // page))()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return sum(b & 1 for b in vec) * page


def kv_resident_bytes(model: Model) -> int:
    cache = model.engine.cache
    return resident_bytes(cache.k) + resident_bytes(cache.v)


@dataclass
class SoakFigures:
    kv_cache_bytes: int
    pool_standing_in_use_bytes: int
    pool_standing_held_bytes: int
    pool_peak_bytes: int
    predicted_peak_bytes: int
    long_rss_before: int
    long_rss_after: int
    long_kv_touched_bytes: int
    long_tokens: int
    calls_rss: list[int]

    def lines(self) -> str:
        span = max(self.calls_rss[WARMUP_CALLS:]) - min(self.calls_rss[WARMUP_CALLS:])
        return (
            f"KV cache {self.kv_cache_bytes / MiB:.2f} MiB; pool standing in use "
            f"{self.pool_standing_in_use_bytes / MiB:.2f} MiB, held "
            f"{self.pool_standing_held_bytes / MiB:.2f} MiB, peak {self.pool_peak_bytes / MiB:.2f} "
            f"MiB (predicted {self.predicted_peak_bytes / MiB:.2f} MiB)\n"
            f"long run of {self.long_tokens} tokens: RSS {self.long_rss_before / MiB:.2f} -> "
            f"{self.long_rss_after / MiB:.2f} MiB (+"
            f"{(self.long_rss_after - self.long_rss_before) / MiB:.2f}), KV pages touched +"
            f"{self.long_kv_touched_bytes / MiB:.2f} MiB\n"
            f"{len(self.calls_rss)} calls: RSS {self.calls_rss[0] / MiB:.2f} -> "
            f"{self.calls_rss[-1] / MiB:.2f} MiB, spread after {WARMUP_CALLS} calls "
            f"{span / 1024:.0f} KiB"
        )


def _pool_as_standing(stats: PoolStats, standing: PoolStats, when: str) -> None:
    assert stats.in_use_bytes == standing.in_use_bytes, when
    assert stats.held_bytes == standing.held_bytes, when
    assert stats.buffers_in_use == standing.buffers_in_use, when
    assert stats.stuck_bytes == 0, when


def settled_rss_bytes() -> int:
    """VmRSS after glibc has given back pages that hold only freed memory (``malloc_trim``). Heaps
    that threads of earlier tests left behind (a server's, an HTTP client's) otherwise keep freed
    blocks in the RSS, which moves with what later threads happen to reuse; memory still referenced,
    a leak, stays counted (``test_the_soak_sees_a_leak`` checks that)."""
    give_back_freed_memory()
    return current_rss_bytes()


def soak(model: Model, prompt: Callable[[int], str | Sequence[int]], *, call_tokens: int,
         long_tokens: int = LONG_TOKENS, calls: int = CALLS) -> SoakFigures:
    pool = model.engine.pool
    gc.collect()  # garbage of earlier tests freed now, not in the middle of the measured calls
    warm = model.generate(prompt(-1), max_tokens=call_tokens).result()  # touches slots, caches
    assert warm.ids
    standing = pool.stats()

    kv_before = kv_resident_bytes(model)
    rss_before = settled_rss_bytes()
    gen = model.generate(prompt(-2), max_tokens=long_tokens).result()
    rss_after = settled_rss_bytes()
    kv_touched = kv_resident_bytes(model) - kv_before
    assert gen.stats.stop_reason == "max_tokens" and len(gen.ids) == long_tokens
    _pool_as_standing(pool.stats(), standing, "after the long run")
    assert 0 < kv_touched <= model.engine.cache.nbytes
    assert rss_after - rss_before <= kv_touched + SLACK_BYTES, (
        f"RSS grew {(rss_after - rss_before) / MiB:.2f} MiB over a long run that touched "
        f"{kv_touched / MiB:.2f} MiB of KV cache"
    )
    del gen

    rss: list[int] = []
    for i in range(calls):
        g = model.generate(prompt(i), max_tokens=call_tokens).result()
        assert g.ids
        _pool_as_standing(pool.stats(), standing, f"after call {i}")
        del g
        rss.append(settled_rss_bytes())
    spread = max(rss[WARMUP_CALLS:]) - min(rss[WARMUP_CALLS:])
    assert spread <= SLACK_BYTES, f"RSS moved {spread / MiB:.2f} MiB over {calls} calls"
    figures = SoakFigures(
        kv_cache_bytes=model.engine.cache.nbytes,
        pool_standing_in_use_bytes=standing.in_use_bytes,
        pool_standing_held_bytes=standing.held_bytes,
        pool_peak_bytes=pool.peak_bytes,
        predicted_peak_bytes=model.plan.predicted_peak_bytes,
        long_rss_before=rss_before,
        long_rss_after=rss_after,
        long_kv_touched_bytes=kv_touched,
        long_tokens=long_tokens,
        calls_rss=rss,
    )
    assert pool.peak_bytes <= model.plan.predicted_peak_bytes
    engine = model.engine
    model.close()
    assert engine.pool.closed and engine.pool.held_bytes == 0
    return figures


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny llama as Q8_0 GGUF without a tokenizer: no end-of-sequence id, so every generation runs
    to its ``max_tokens``."""
    return mh.write_gguf(mh.fixture("tiny_llama"), tmp_path_factory.mktemp("soak") / "t.gguf",
                               "Q8_0", with_tokenizer=False)


@pytest.mark.parametrize("streamed", [False, True], ids=["resident", "streamed-prefetch"])
def test_tiny_model_soak_keeps_rss_and_pool_steady(tiny_gguf: Path, streamed: bool) -> None:
    kw: dict[str, object] = {}
    if streamed:
        from edgert_speculative import prefetch_minimum

        probe = load_model(tiny_gguf, backend="numpy", max_context=MAX_CONTEXT, notify=None)
        kw = {"memory_budget": prefetch_minimum(probe.layout, PlanningContext(None, MAX_CONTEXT)),
              "strategy": "speculative-prefetch"}
    model = load_model(tiny_gguf, backend="numpy", max_context=MAX_CONTEXT, notify=None,
                       weight_cache=False, **kw)  # type: ignore[arg-type]
    assert model.stop_ids == ()
    if streamed:
        assert model.plan.prefetch and not any(g.resident for g in model.plan.groups)
    figures = soak(model, lambda i: [5, 6, 7, 40 + i % 300, 9 + i % 7], call_tokens=16)
    print(figures.lines())


@pytest.mark.slow
def test_smollm2_soak_2000_tokens_and_50_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(mh.smollm2_path(), max_context=MAX_CONTEXT, notify=None, weight_cache=False)
    # no stop at end-of-sequence, so the long run is LONG_TOKENS tokens on any backend
    monkeypatch.setattr(Model, "stop_ids", property(lambda self: ()))
    questions = ["What is the capital of France?", "Name a prime number.", "Why is the sky blue?",
                 "Write one word.", "Count to three."]

    def prompt(i: int) -> str:
        if i == -2:
            return "Once upon a time"
        return f"Question {i}: {questions[i % len(questions)]}"

    figures = soak(model, prompt, call_tokens=8)
    print(f"SmolLM2 on {model.backend.name}:\n{figures.lines()}")


@pytest.mark.parametrize("leak", ["pool", "rss"])
def test_the_soak_sees_a_leak(tiny_gguf: Path, leak: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: a generate call that keeps a pool buffer, or :data:`LEAK_BYTES` of
    touched memory, each time is caught. (The leak is well above the slack, so that memory another
    test leaves for the garbage collector, freed during the loop, cannot hide it.)"""
    model = load_model(tiny_gguf, backend="numpy", max_context=MAX_CONTEXT, notify=None)
    kept: list[object] = []
    calls: list[None] = []
    original = Model.generate

    def leaky(self: Model, prompt: str | Sequence[int], **kw: object) -> object:
        calls.append(None)
        if leak == "pool":
            kept.append(self.engine.pool.allocate(64 * 1024, label="leak"))
        elif len(calls) > 2:  # past the warm-up call and the long run: the repeated calls' check
            # fresh anonymous pages, touched: resident whatever malloc's settings or free lists
            leaked = mmap.mmap(-1, LEAK_BYTES)
            leaked.write(b"\x01" * LEAK_BYTES)
            kept.append(leaked)
        return original(self, prompt, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Model, "generate", leaky)
    with pytest.raises(AssertionError, match="after the long run" if leak == "pool" else "RSS moved"):
        soak(model, lambda i: [5, 6, 7 + i % 100], call_tokens=4, long_tokens=300, calls=6)
    for buf in kept:
        if hasattr(buf, "release"):
            buf.release()
    model.close()
