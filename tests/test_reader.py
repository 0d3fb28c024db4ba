"""FileRangeReader: exact bytes at offsets, clean errors, and reads that stay out of the RSS."""

from __future__ import annotations

import mmap
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edgert_core.errors import ConfigError, ModelError
from edgert_core.memory import (
    FileRangeReader,
    MemoryPool,
    current_rss_bytes,
    drop_mapped_pages,
    peak_rss_bytes,
    reset_peak_rss,
)
from edgert_core.memory.io_stats import cached_bytes, drop_page_cache
from edgert_core.memory.reader import DIRECT_BOUNCE_BYTES, READ_MODES, default_read_mode

MiB = 1024 * 1024


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = np.random.default_rng(0).integers(0, 256, size=1_000_003, dtype=np.uint8).tobytes()
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    return path, data


def test_reads_exact_bytes_at_offsets(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    out = np.zeros(300_000, dtype=np.uint8)
    with FileRangeReader(path, chunk_bytes=4096) as reader:  # many chunks per read
        assert reader.size == len(data)
        for offset, nbytes in [(0, 10), (12_345, 250_000), (len(data) - 7, 7), (500, 0)]:
            out[:] = 0
            got = reader.read_into(offset, nbytes, out)
            assert got.shape == (nbytes,) and got.dtype == np.uint8
            assert got.tobytes() == data[offset : offset + nbytes]
            assert np.all(out[nbytes:] == 0)  # nothing past the range is written
        assert reader.read_bytes(3, 5) == data[3:8]


def test_reads_into_a_typed_pool_buffer(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    with (
        MemoryPool(MiB) as pool,
        FileRangeReader(path) as reader,
        pool.allocate((100, 25), np.float32, label="w") as buf,
    ):
        reader.read_into(64, 10_000, buf.array)
        expected = np.frombuffer(data[64:10_064], dtype=np.float32).reshape(100, 25)
        np.testing.assert_array_equal(buf.array, expected)


def test_concurrent_reads_from_two_threads(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    errors: list[BaseException] = []

    def worker(start: int, reader: FileRangeReader) -> None:
        out = np.empty(1000, dtype=np.uint8)
        try:
            for offset in range(start, 900_000, 7919):
                reader.read_into(offset, 1000, out)
                assert out.tobytes() == data[offset : offset + 1000]
        except BaseException as e:
            errors.append(e)

    with FileRangeReader(path) as reader:
        threads = [threading.Thread(target=worker, args=(s, reader)) for s in (0, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads) and not errors


def test_truncated_file_names_the_file_and_range(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    out = np.empty(100, dtype=np.uint8)
    with FileRangeReader(path) as reader, pytest.raises(ModelError) as info:
        reader.read_into(len(data) - 50, 100, out, what="tensor 'lm_head.weight'")
    msg = str(info.value)
    assert str(path) in msg and "truncated" in msg
    assert f"bytes {len(data) - 50}..{len(data) + 50} (tensor 'lm_head.weight')" in msg
    assert f"end at byte {len(data)}" in msg


def test_file_truncated_after_open_is_caught(data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file
    out = np.empty(100_000, dtype=np.uint8)
    with FileRangeReader(path) as reader:
        os.truncate(path, 500_000)
        with pytest.raises(ModelError, match=r"truncated: bytes 450000..550000 .* byte 500000"):
            reader.read_into(450_000, 100_000, out)


def test_missing_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"Cannot open model file .*nope.bin"):
        FileRangeReader(tmp_path / "nope.bin")


def test_bad_arguments(data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file
    with FileRangeReader(path) as reader:
        with pytest.raises(ValueError, match="fewer than"):
            reader.read_into(0, 10, np.empty(9, dtype=np.uint8))
        with pytest.raises(ValueError, match="contiguous"):
            reader.read_into(0, 10, np.empty(40, dtype=np.uint8)[::2])
        with pytest.raises(ValueError, match="negative"):
            reader.read_into(-1, 10, np.empty(10, dtype=np.uint8))
    with pytest.raises(ValueError, match="closed"):
        reader.read_into(0, 1, np.empty(1, dtype=np.uint8))
    reader.close()  # twice is fine


def test_drop_cache_option_reads_the_same_bytes(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    out = np.empty(len(data), dtype=np.uint8)
    with FileRangeReader(path, drop_cache=True, chunk_bytes=65536) as reader:
        assert reader.read_into(0, len(data), out).tobytes() == data
        reader.drop_page_cache()


# -- RSS: positional reads vs a mapping of the whole file ------------------------------------------

BIG = 200 * MiB
CHUNK = 8 * MiB


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rss") / "big.bin"
    block = np.arange(CHUNK, dtype=np.uint32).astype(np.uint8)
    with path.open("wb") as f:
        for _ in range(BIG // CHUNK):
            f.write(block.tobytes())
    return path


def test_streaming_200mb_through_a_pool_buffer_keeps_rss_flat(big_file: Path) -> None:
    """The same 200 MB read two ways: pread into one reused 8 MB pool buffer grows the RSS by about
    the buffer; copying out of an np.memmap of the file grows it by about the file."""
    with MemoryPool(2 * CHUNK) as pool, pool.allocate(CHUNK, label="stage") as buf:
        out = buf.array
        out.fill(0)  # fault the buffer in before measuring
        checksum = 0
        reset_peak_rss()
        base = current_rss_bytes()
        with FileRangeReader(big_file) as reader:
            for offset in range(0, BIG, CHUNK):
                checksum += int(reader.read_into(offset, CHUNK, out)[::4096].sum())
        pread_growth = max(peak_rss_bytes(), current_rss_bytes()) - base

        mapped = np.memmap(big_file, dtype=np.uint8, mode="r")
        reset_peak_rss()
        base = current_rss_bytes()
        mapped_checksum = 0
        for offset in range(0, BIG, CHUNK):
            np.copyto(out, mapped[offset : offset + CHUNK])
            mapped_checksum += int(out[::4096].sum())
        memmap_growth = current_rss_bytes() - base
        del mapped
        del out

    assert checksum == mapped_checksum  # both read the same bytes
    assert pread_growth < 40 * MiB, pread_growth
    assert memmap_growth > 150 * MiB, memmap_growth
    assert memmap_growth - pread_growth > 120 * MiB


def test_drop_mapped_pages_gives_file_pages_back(big_file: Path) -> None:
    with big_file.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
        view = np.frombuffer(mapping, dtype=np.uint8)
        base = current_rss_bytes()
        # touch every page: byte 1 of each 4 KiB holds 1 (the file repeats 0..255)
        assert int(view[1::4096].sum()) == BIG // 4096
        touched = current_rss_bytes()
        assert drop_mapped_pages(mapping, 0, len(mapping)) == BIG
        dropped = current_rss_bytes()
        del view
    assert touched - base > 150 * MiB
    assert touched - dropped > 150 * MiB


# -- read modes ---------------------------------------------------------------------------------
MODE_DATA = np.random.default_rng(5).integers(0, 256, size=3 * DIRECT_BOUNCE_BYTES + 4099, dtype=np.uint8)


@pytest.fixture(scope="module")
def mode_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("modes") / "weights.bin"
    with path.open("wb") as f:  # on disk, so its pages are clean and can be dropped
        f.write(MODE_DATA.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return path


@pytest.mark.parametrize("mode", READ_MODES)
@settings(max_examples=60, deadline=None)
@given(offset=st.integers(0, MODE_DATA.size), length=st.integers(0, 2 * DIRECT_BOUNCE_BYTES + 10))
def test_every_read_mode_reads_the_exact_bytes(mode_file: Path, mode: str, offset: int, length: int) -> None:
    """Any offset and length (unaligned, across bounce buffers, up to the file's end) give the
    file's bytes in every mode; ``direct`` goes through its aligned bounce buffer."""
    length = min(length, MODE_DATA.size - offset)
    out = np.full(length + 3, 7, dtype=np.uint8)
    with FileRangeReader(mode_file, read_mode=mode, chunk_bytes=DIRECT_BOUNCE_BYTES // 2 + 1) as reader:
        assert reader.read_mode == mode  # ext4/tmpfs under the test's tmp folder take O_DIRECT
        got = reader.read_into(offset, length, out)
    np.testing.assert_array_equal(got, MODE_DATA[offset : offset + length])
    assert (out[length:] == 7).all()  # nothing written past the range


@pytest.mark.parametrize("mode", READ_MODES)
@settings(max_examples=40, deadline=None)
@given(first=st.integers(0, 3 * 4096), gaps=st.lists(st.integers(0, 6000), min_size=1, max_size=8),
       lengths=st.lists(st.integers(1, 700_000), min_size=8, max_size=8), shuffle=st.randoms())
def test_read_spans_fills_every_part_with_its_bytes(
    mode_file: Path, mode: str, first: int, gaps: list[int], lengths: list[int], shuffle: object
) -> None:
    """Parts next to each other in the file (gaps up to past ``max_gap``, any order, unaligned,
    across bounce buffers) get exactly their bytes in every mode, whether they are read together
    (one vectored read, or one O_DIRECT span) or one by one; nothing around them is written."""
    parts: list[tuple[int, np.ndarray]] = []
    pos = first
    for gap, length in zip(gaps, lengths, strict=False):
        length = min(length, MODE_DATA.size - pos)
        if length <= 0:
            break
        parts.append((pos, np.full(length + 2, 7, dtype=np.uint8)))
        pos += length + gap
    assume(parts)
    order = list(parts)
    shuffle.shuffle(order)  # type: ignore[attr-defined]
    with FileRangeReader(mode_file, read_mode=mode) as reader:
        reader.read_spans([(o, out[:-2]) for o, out in order])
    for offset, out in parts:
        n = out.size - 2
        np.testing.assert_array_equal(out[:n], MODE_DATA[offset : offset + n])
        assert (out[n:] == 7).all()


@pytest.mark.parametrize(("mode", "stays_cached"), [("cached", True), ("drop", False), ("direct", False)])
def test_drop_and_direct_leave_the_file_out_of_the_page_cache(
    mode_file: Path, mode: str, stays_cached: bool
) -> None:
    """What a device's memory limit counts: after reading the whole file, ``cached`` leaves it in
    the page cache, ``drop`` and ``direct`` leave (almost) none of it there."""
    assert drop_page_cache(mode_file)
    before = cached_bytes(mode_file)
    if before is None:
        pytest.skip("this OS cannot say which pages of a file are cached (no mincore)")
    assert before < MODE_DATA.size // 4  # the drop worked, so the check below means something
    out = np.empty(MODE_DATA.size, dtype=np.uint8)
    with FileRangeReader(mode_file, read_mode=mode) as reader:
        reader.read_into(0, MODE_DATA.size, out)
    after = cached_bytes(mode_file)
    assert after is not None
    if stays_cached:
        assert after > MODE_DATA.size // 2, after
    else:
        assert after < MODE_DATA.size // 4, after


@pytest.fixture(scope="module")
def pieces_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pieces") / "weights.bin"
    with path.open("wb") as f:  # on disk, so its pages are clean and can be dropped
        f.write(np.random.default_rng(6).integers(0, 256, size=24 * 2**20, dtype=np.uint8).tobytes())
        f.flush()
        os.fsync(f.fileno())
    return path


@pytest.mark.parametrize("piece", [331_777, 2_100_017])
def test_drop_leaves_a_file_read_in_unaligned_pieces_out_of_the_page_cache(
    pieces_file: Path, piece: int
) -> None:
    """A model's tensors are read one after another at offsets that are not page-aligned. ``drop``
    must leave them out of the page cache then too: dropping exact ranges kept the page each read
    covered in part, with its read-ahead state, and most of the file stayed cached (59-86 of
    SmolLM2's 92 MiB, measured)."""
    assert drop_page_cache(pieces_file)
    before = cached_bytes(pieces_file)
    if before is None:
        pytest.skip("this OS cannot say which pages of a file are cached (no mincore)")
    size = pieces_file.stat().st_size
    assert before < size // 8
    out = np.empty(piece, dtype=np.uint8)
    with FileRangeReader(pieces_file, read_mode="drop") as reader:
        for offset in range(0, size - piece, piece):
            reader.read_into(offset, piece, out)
    time.sleep(0.1)  # read-ahead still in flight lands in the cache too
    after = cached_bytes(pieces_file)
    assert after is not None and after < size // 8, after


def test_direct_falls_back_to_drop_once_where_o_direct_is_refused(
    mode_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    o_direct = getattr(os, "O_DIRECT", 0)

    def refuse(path: object, flags: int, *args: object) -> int:
        if o_direct and flags & o_direct:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    out = np.empty(100, dtype=np.uint8)
    with pytest.warns(RuntimeWarning, match="read mode 'drop'") as said:
        reader = FileRangeReader(mode_file, read_mode="direct")
    with reader:
        assert reader.read_mode == "drop"
        np.testing.assert_array_equal(reader.read_into(5, 100, out), MODE_DATA[5:105])
    assert len(said) == 1


def test_read_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch, mode_file: Path) -> None:
    monkeypatch.delenv("EDGERT_READ_MODE", raising=False)
    assert default_read_mode() == "cached"
    monkeypatch.setenv("EDGERT_READ_MODE", "Direct")
    assert default_read_mode() == "direct"
    with FileRangeReader(mode_file) as reader:
        assert reader.read_mode == "direct"
    monkeypatch.setenv("EDGERT_READ_MODE", "fast")
    with pytest.raises(ConfigError, match="cached, drop, direct"):
        FileRangeReader(mode_file)
