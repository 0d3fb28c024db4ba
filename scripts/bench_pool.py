"""Micro-benchmark of the memory machinery, all in one process, reported as ratios.

1. Allocate + release through ``MemoryPool`` (a reused block) against ``np.empty``, for a small and a
   large buffer, with and without writing every page (what loading weights into it does).
2. Read throughput of a file into one reused pool buffer: ``FileRangeReader`` (pread) against copying
   out of an ``np.memmap`` of the whole file, with the RSS growth of each.

Usage: ``python scripts/bench_pool.py [--file-mb 256] [--buffer-mb 8] [--dir /tmp]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgert_core.budget import format_bytes
from edgert_core.memory import FileRangeReader, MemoryPool, current_rss_bytes

MiB = 1024 * 1024


def best_of(fn: Callable[[], None], repeats: int = 5) -> float:
    """Shortest wall time of ``repeats`` runs of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_allocation(nbytes: int, iterations: int, touch: bool) -> tuple[float, float]:
    """Seconds per allocate+release cycle: (pool, np.empty)."""
    step = 4096

    def with_pool() -> None:
        for _ in range(iterations):
            with pool.allocate(nbytes, label="bench") as buf:
                if touch:
                    buf.array[::step] = 1

    def with_numpy() -> None:
        for _ in range(iterations):
            a = np.empty(nbytes, dtype=np.uint8)
            if touch:
                a[::step] = 1
            del a

    with MemoryPool(4 * nbytes + MiB) as pool:
        t_pool = best_of(with_pool) / iterations
    t_numpy = best_of(with_numpy) / iterations
    return t_pool, t_numpy


def pread_all(reader: FileRangeReader, out: np.ndarray, file_bytes: int) -> None:
    """Read the file front to back into ``out`` (``uint8 [buffer_bytes]``)."""
    for off in range(0, file_bytes - out.nbytes + 1, out.nbytes):
        reader.read_into(off, out.nbytes, out)


def memmap_all(mapped: np.memmap, out: np.ndarray, file_bytes: int) -> None:
    """Copy the mapped file front to back into ``out`` (``uint8 [buffer_bytes]``)."""
    for off in range(0, file_bytes - out.nbytes + 1, out.nbytes):
        np.copyto(out, mapped[off : off + out.nbytes])


def bench_read(path: Path, file_bytes: int, buffer_bytes: int) -> dict[str, float]:
    """Seconds and RSS growth of reading the whole file through one reused pool buffer."""
    results: dict[str, float] = {"bytes": file_bytes // buffer_bytes * buffer_bytes}
    with MemoryPool(2 * buffer_bytes) as pool, pool.allocate(buffer_bytes, label="stage") as buf:
        buf.array.fill(0)
        with FileRangeReader(path) as reader:
            pread_all(reader, buf.array, file_bytes)  # warm the page cache for both methods
            base = current_rss_bytes()
            results["pread_s"] = best_of(lambda: pread_all(reader, buf.array, file_bytes))
            results["pread_rss_growth"] = current_rss_bytes() - base

        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        base = current_rss_bytes()
        results["memmap_s"] = best_of(lambda: memmap_all(mapped, buf.array, file_bytes))
        results["memmap_rss_growth"] = current_rss_bytes() - base
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file-mb", type=int, default=256, help="size of the test file")
    parser.add_argument("--buffer-mb", type=int, default=8, help="size of the reused pool buffer")
    parser.add_argument("--dir", default=None, help="where to write the test file")
    args = parser.parse_args()

    print("allocate + release (best of 5)")
    print(f"  {'size':>10} {'touch':>6} {'pool':>10} {'np.empty':>10} {'pool/np':>8}")
    for nbytes, iterations in ((4096, 20000), (8 * MiB, 200)):
        for touch in (False, True):
            t_pool, t_np = bench_allocation(nbytes, iterations, touch)
            print(
                f"  {format_bytes(nbytes):>10} {'yes' if touch else 'no':>6} "
                f"{t_pool * 1e6:>8.2f}us {t_np * 1e6:>8.2f}us {t_pool / t_np:>8.2f}"
            )

    file_bytes = args.file_mb * MiB
    buffer_bytes = args.buffer_mb * MiB
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.bin"
        chunk = np.random.default_rng(0).integers(0, 256, size=buffer_bytes, dtype=np.uint8)
        with path.open("wb") as f:
            for _ in range(file_bytes // buffer_bytes):
                f.write(chunk.tobytes())
        r = bench_read(path, file_bytes, buffer_bytes)

    pread_rate = r["bytes"] / r["pread_s"]
    memmap_rate = r["bytes"] / r["memmap_s"]
    print(f"read {format_bytes(int(r['bytes']))} into a {format_bytes(buffer_bytes)} pool buffer")
    print(
        f"  pread : {pread_rate / 1e9:6.2f} GB/s, "
        f"RSS +{format_bytes(int(r['pread_rss_growth']))}"
    )
    print(
        f"  memmap: {memmap_rate / 1e9:6.2f} GB/s, "
        f"RSS +{format_bytes(int(r['memmap_rss_growth']))}"
    )
    print(f"  pread/memmap throughput ratio: {pread_rate / memmap_rate:.2f}")


if __name__ == "__main__":
    main()
