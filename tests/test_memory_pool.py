"""The memory pool: budget, reuse, guards, counters under threads, leaks, trimming."""

from __future__ import annotations

import gc
import random
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from edgert_core.errors import MemoryPoolError
from edgert_core.memory import (
    ALIGNMENT,
    PAGE_BYTES,
    MemoryPool,
    PoolBuffer,
    PoolLeakError,
    block_bytes,
    current_rss_bytes,
    pack_offsets,
)
from edgert_core.memory.pool import HUGEPAGE_MIN_BYTES

MiB = 1024 * 1024


@pytest.fixture
def pool() -> Iterator[MemoryPool]:
    with MemoryPool(8 * MiB) as p:
        yield p
    assert p.held_bytes == 0


def address(a: NDArray[Any]) -> int:
    return int(a.__array_interface__["data"][0])


# -- sizes and layout -------------------------------------------------------------------------------


def test_block_bytes_rounds_to_whole_pages() -> None:
    assert block_bytes(0) == PAGE_BYTES
    assert block_bytes(1) == PAGE_BYTES
    assert block_bytes(PAGE_BYTES) == PAGE_BYTES
    assert block_bytes(PAGE_BYTES + 1) == 2 * PAGE_BYTES
    with pytest.raises(ValueError):
        block_bytes(-1)


def test_pack_offsets_aligns_every_array() -> None:
    offsets, total = pack_offsets([((3,), np.float32), ((5, 7), np.float16), (1, np.uint8)])
    assert offsets == [0, 64, 192]
    assert total == 193


def test_allocate_gives_requested_shape_dtype_and_alignment(pool: MemoryPool) -> None:
    with pool.allocate((3, 5), np.float32, label="x") as buf:
        a = buf.array
        assert a.shape == (3, 5) and a.dtype == np.float32 and a.flags.c_contiguous
        assert a.flags.writeable
        assert address(a) % ALIGNMENT == 0
        a[:] = 7.0
        assert buf.raw.shape == (60,) and buf.raw.dtype == np.uint8
        assert buf.block_bytes == PAGE_BYTES and buf.nbytes == 60
        del a
    with pool.allocate(10, "int8") as buf:
        assert buf.array.shape == (10,)


def test_allocate_many_packs_aligned_arrays_in_one_block(pool: MemoryPool) -> None:
    specs = [((4, 3), np.float32), ((5,), np.float16), ((2, 2), np.int32)]
    with pool.allocate_many(specs, label="layer 0") as buf:
        arrays = buf.arrays
        assert [a.shape for a in arrays] == [(4, 3), (5,), (2, 2)]
        assert [a.dtype for a in arrays] == [np.float32, np.float16, np.int32]
        assert all(address(a) % ALIGNMENT == 0 for a in arrays)
        for i, a in enumerate(arrays):
            a[...] = i + 1
        # writing one array does not touch the others
        assert arrays[0].sum() == 12 and arrays[1].sum() == 10 and arrays[2].sum() == 12
        assert pool.held_bytes == block_bytes(pack_offsets(specs)[1])
        with pytest.raises(ValueError, match="3 arrays"):
            _ = buf.array
        del arrays, a


def test_bad_requests_are_rejected(pool: MemoryPool) -> None:
    with pytest.raises(ValueError):
        pool.allocate((-1, 4))
    with pytest.raises(ValueError):
        pool.allocate(4, object)
    with pytest.raises(ValueError):
        pool.allocate_many([])
    with pytest.raises(MemoryPoolError):
        MemoryPool(0)


# -- guards -----------------------------------------------------------------------------------------


def test_guard_returns_memory_when_an_exception_escapes(pool: MemoryPool) -> None:
    with pytest.raises(RuntimeError, match="boom"), pool.allocate(MiB, label="w") as buf:
        assert pool.in_use_bytes == MiB
        buf.array[:] = 1
        raise RuntimeError("boom")
    assert buf.released
    assert pool.in_use_bytes == 0
    assert pool.free_list_bytes == MiB  # cached for reuse, still held


def test_release_is_idempotent_and_use_after_release_raises(pool: MemoryPool) -> None:
    buf = pool.allocate(100, label="tmp")
    buf.release()
    buf.release()
    with buf:  # exiting a released guard is fine too
        pass
    assert pool.stats().releases == 1
    assert pool.in_use_bytes == 0
    with pytest.raises(MemoryPoolError, match="'tmp' was used after it was released"):
        _ = buf.array
    with pytest.raises(MemoryPoolError, match="after it was released"):
        _ = buf.raw


# -- reuse and trimming -----------------------------------------------------------------------------


def test_same_size_class_reuses_the_same_memory(pool: MemoryPool) -> None:
    with pool.allocate(3000, np.uint8) as buf:
        first = address(buf.array)
    # a different shape and dtype in the same class (one page) gets the same block back
    with pool.allocate((10, 20), np.float32) as buf:
        assert address(buf.array) == first
    s = pool.stats()
    assert (s.allocations, s.reuses, s.fresh_blocks) == (2, 1, 1)
    with pool.allocate(PAGE_BYTES + 1) as buf:  # another class: a new block
        assert address(buf.array) != first
    assert pool.stats().fresh_blocks == 2


def test_huge_page_advice_only_where_asked_and_blocks_reused_by_kind() -> None:
    """Large blocks are advised for transparent huge pages (the kernel shows ``hg`` in the
    mapping's VmFlags) unless the caller says ``hugepages=False``; a free block is handed out again
    only to a request of the same kind."""
    import model_helpers as mh

    size = HUGEPAGE_MIN_BYTES
    with MemoryPool(8 * size) as pool:
        with pool.allocate(size) as weights:
            weights_at = address(weights.array)
            assert "hg" in mh.vm_flags(weights_at)
        with pool.allocate_many([(size, np.uint8)], hugepages=False) as cache:
            assert address(cache.arrays[0]) != weights_at  # not the advised block
            assert "hg" not in mh.vm_flags(address(cache.arrays[0]))
        with pool.allocate(size) as again:
            assert address(again.array) == weights_at
        with pool.allocate(PAGE_BYTES) as small:
            assert "hg" not in mh.vm_flags(address(small.array))


def test_cached_block_with_a_live_view_is_not_handed_out_again(pool: MemoryPool) -> None:
    buf = pool.allocate(1000, np.uint8)
    stale = buf.array  # kept past release: a caller bug the pool must not turn into aliasing
    buf.release()
    with pool.allocate(1000, np.uint8) as again:
        assert address(again.array) != address(stale)
    del stale
    with pool.allocate(1000, np.uint8) as third:  # now both blocks are free of views
        assert third.array.shape == (1000,)
    assert pool.stats().reuses == 1


def test_trimming_makes_room_for_a_different_size_class() -> None:
    with MemoryPool(4 * MiB) as pool:
        with pool.allocate(3 * MiB, label="layer"):
            pass
        assert pool.held_bytes == 3 * MiB and pool.free_list_bytes == 3 * MiB
        # 2 MiB fits only after the cached 3 MiB block is unmapped
        with pool.allocate(2 * MiB, label="head slice"):
            s = pool.stats()
            assert s.held_bytes == 2 * MiB and s.free_list_bytes == 0 and s.unmapped_blocks == 1
        assert pool.trim() == 2 * MiB
        assert pool.held_bytes == 0


def test_an_explicit_size_class_lets_different_sizes_share_one_block() -> None:
    with MemoryPool(4 * MiB) as pool:
        # without a class, a layer (3 MiB) and a head slice (2 MiB) evict each other in this budget
        specs = {"layer": 3 * MiB, "head slice": 2 * MiB}
        for label in ["layer", "head slice", "layer", "head slice"]:
            with pool.allocate_many([(specs[label], np.uint8)], label=label,
                                    size_class=3 * MiB) as buf:
                assert buf.block_bytes == 3 * MiB and buf.nbytes == specs[label]
                assert pool.in_use_bytes == 3 * MiB  # counted for the whole class
        s = pool.stats()
        assert (s.fresh_blocks, s.reuses, s.unmapped_blocks) == (1, 3, 0)
        with pytest.raises(ValueError, match="smaller than"):
            pool.allocate_many([(3 * MiB, np.uint8)], size_class=2 * MiB)


def test_trim_keeps_requested_bytes_and_frees_oldest_first() -> None:
    with MemoryPool(None) as pool:
        for size in (MiB, 2 * MiB, 3 * MiB):
            pool.allocate(size).release()
        assert pool.trim(keep_bytes=3 * MiB) == 3 * MiB  # the 1 and 2 MiB blocks, oldest first
        assert pool.snapshot().free_blocks == {3 * MiB: 1}


def test_stuck_block_counts_until_its_views_die() -> None:
    pool = MemoryPool(4 * MiB)
    buf = pool.allocate(MiB)
    stale = buf.array
    buf.release()
    assert pool.trim() == 0  # cannot unmap while `stale` points into it
    assert pool.stats().stuck_bytes == MiB and pool.held_bytes == MiB
    with pytest.raises(MemoryPoolError, match="still referenced"):
        pool.allocate(3 * MiB + 1)
    del stale
    gc.collect()
    assert pool.trim() == MiB
    assert pool.held_bytes == 0
    pool.close()


def test_trim_returns_memory_to_the_os() -> None:
    size = 100 * MiB
    with MemoryPool(2 * size) as pool:
        before = current_rss_bytes()
        with pool.allocate(size, label="big") as buf:
            buf.array.fill(1)  # touch every page
        touched = current_rss_bytes()
        assert touched - before > 0.9 * size  # cached, still resident
        assert pool.trim() == size
        after = current_rss_bytes()
    assert touched - after > 0.9 * size


# -- the budget -------------------------------------------------------------------------------------


def test_budget_exceeded_error_says_what_was_asked_held_and_what_to_do(pool: MemoryPool) -> None:
    with pool.allocate(5 * MiB, label="kv-cache"), pool.allocate(2 * MiB, label="layer 3 weights"):
        with pytest.raises(MemoryPoolError) as info:
            pool.allocate(2 * MiB, label="head slice 2")
        msg = str(info.value)
        assert "2.0 MiB for 'head slice 2'" in msg
        assert "7.0 MiB of the 8.0 MiB memory budget is in use" in msg
        assert "kv-cache 5.0 MiB" in msg and "layer 3 weights 2.0 MiB" in msg
        assert "--memory-budget" in msg
        assert pool.stats().failures == 1
    assert pool.held_bytes == 7 * MiB  # the failed request took nothing


def test_request_larger_than_budget_says_it_can_never_fit(pool: MemoryPool) -> None:
    with pytest.raises(MemoryPoolError, match=r"larger than the whole memory budget of 8\.0 MiB"):
        pool.allocate(9 * MiB, label="huge")
    assert pool.stats().failures == 1 and pool.held_bytes == 0


def test_pool_never_holds_more_than_its_budget(pool: MemoryPool) -> None:
    bufs: list[PoolBuffer] = []
    with pytest.raises(MemoryPoolError):
        while True:
            bufs.append(pool.allocate(MiB))
    assert len(bufs) == 8 and pool.held_bytes == 8 * MiB == pool.peak_bytes
    for b in bufs:
        b.release()


# -- threads ----------------------------------------------------------------------------------------


def test_counters_stay_right_with_a_concurrent_producer() -> None:
    budget = 2 * MiB
    pool = MemoryPool(budget)
    n_per_thread = 1500
    errors: list[BaseException] = []
    over_budget: list[int] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(n_per_thread):
                size = rng.choice((100, 5000, 70_000, 300_000))
                with pool.allocate(size, label=f"t{seed}") as buf:
                    a = buf.array
                    a.fill(seed)  # nobody else may write into this block while we hold it
                    if pool.held_bytes > budget:
                        over_budget.append(pool.held_bytes)
                    assert int(a.min()) == seed == int(a.max())
                    del a
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors and not over_budget
    s = pool.stats()
    assert s.allocations == s.releases == 2 * n_per_thread
    assert s.reuses + s.fresh_blocks == s.allocations
    assert s.reuses > s.allocations // 2  # the free lists do their job
    assert s.in_use_bytes == 0 and s.buffers_in_use == 0
    assert s.held_bytes == s.free_list_bytes <= budget
    assert s.peak_bytes <= budget
    pool.close()
    assert pool.held_bytes == 0


# -- closing, leaks, snapshot ----------------------------------------------------------------------


def test_close_unmaps_everything_and_refuses_new_work() -> None:
    pool = MemoryPool(4 * MiB)
    with pool:
        pool.allocate(MiB).release()
        assert pool.held_bytes == MiB
    assert pool.closed and pool.held_bytes == 0
    with pytest.raises(MemoryPoolError, match="closed"):
        pool.allocate(1)


def test_close_reports_leaked_buffers_by_label() -> None:
    pool = MemoryPool(4 * MiB)
    leaked = pool.allocate(MiB, label="layer 7 weights")
    with pytest.raises(PoolLeakError, match="1 buffers still in use \\('layer 7 weights'\\)"):
        pool.close()
    pool.close()  # second close: no second report
    leaked.release()
    assert pool.held_bytes == 0


def test_leaks_do_not_mask_the_exception_that_ended_the_run() -> None:
    with pytest.raises(KeyError), MemoryPool(4 * MiB) as pool:
        pool.allocate(MiB, label="lost")
        raise KeyError("original")


def test_snapshot_lists_labels_and_free_classes(pool: MemoryPool) -> None:
    pool.allocate(2 * MiB).release()
    with pool.allocate(MiB, label="kv-cache"), pool.allocate(100, label="head slice 2"):
        snap = pool.snapshot()
    assert [a.label for a in snap.in_use] == ["kv-cache", "head slice 2"]
    assert snap.free_blocks == {2 * MiB: 1}
    assert snap.stats.in_use_bytes == MiB + PAGE_BYTES
    text = snap.format()
    assert "kv-cache" in text and "head slice 2" in text and "x1" in text
    d = snap.to_dict()
    assert d["stats"]["held_bytes"] == 3 * MiB + PAGE_BYTES
    assert d["in_use"][0]["label"] == "kv-cache"


def test_poison_fills_released_blocks() -> None:
    with MemoryPool(MiB, poison=True) as pool:
        with pool.allocate(16, np.float32) as buf:
            buf.array[:] = 1.0
        with pool.allocate(16, np.float32) as buf:
            assert np.isnan(buf.array).all()
