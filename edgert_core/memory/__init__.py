"""Memory machinery: the budget-enforced buffer pool, positional file reads into pool buffers, and
the OS's view of the process's memory (RSS) and disk reads, and memory cgroups for measured runs."""

from __future__ import annotations

from edgert_core.memory.io_stats import drop_page_cache, read_bytes
from edgert_core.memory.pool import (
    ALIGNMENT,
    PAGE_BYTES,
    AllocationInfo,
    BufferSpec,
    MemoryPool,
    PoolBuffer,
    PoolLeakError,
    PoolSnapshot,
    PoolStats,
    block_bytes,
    pack_offsets,
)
from edgert_core.memory.reader import FileRangeReader, drop_mapped_pages
from edgert_core.memory.rss import (
    current_rss_bytes,
    peak_rss_bytes,
    reset_peak_rss,
)

__all__ = [
    "ALIGNMENT",
    "PAGE_BYTES",
    "AllocationInfo",
    "BufferSpec",
    "FileRangeReader",
    "MemoryPool",
    "PoolBuffer",
    "PoolLeakError",
    "PoolSnapshot",
    "PoolStats",
    "block_bytes",
    "current_rss_bytes",
    "drop_mapped_pages",
    "drop_page_cache",
    "pack_offsets",
    "peak_rss_bytes",
    "read_bytes",
    "reset_peak_rss",
]
