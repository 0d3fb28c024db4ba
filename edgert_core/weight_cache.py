"""The prepared-weights cache: a backend's in-memory form of every tensor, written once to a file in
the user cache, so that a streamed run loads each weight with one plain positional read.

Why: a run under a budget streams most weights once per token. The numpy backend holds fp32, and
dequantizing a quantized file (Q4_1, Q8_0) to fp32 in numpy runs at about 0.5 GB/s on the reference
machine: about 1 s per token for SmolLM2-135M's 513 MB. Reading the already prepared fp32 bytes from
the page cache into a pool buffer runs at several GB/s. A tensor whose prepared form is its file
bytes (fp32 files on the numpy backend, quantized blocks on the neon backend) needs no cache: it is
read from the model file directly.

The file
--------
``$EDGERT_CACHE/prepared`` (default ``~/.cache/edge-rt/prepared``), one file per model and backend,
named by a hash of the model files' identity (path, size, mtime), the backend's name and class, and
:data:`FORMAT_VERSION`. Layout: ``MAGIC``, the header's offset and length (two little-endian
``u64``), the tensors' bytes, then the header (JSON: per tensor its offset, bytes, numpy dtype and
shape of the prepared array). Tensors follow each other at :data:`~edgert_core.memory.pool.ALIGNMENT`
byte offsets in the engine's load order (layer by layer, each layer block part by block part), so the
tensors of consecutive parts and layers lie exactly as the engine packs a stage and a whole stage is
one read. Version 2 changed that order from layer order to block-part order.

The file is written to a temporary name in the same folder and renamed into place (atomic); the
model file is only ever read. The header records the backend and the model files' paths, so that
after writing a new file :func:`remove_stale` deletes the ones this version can never read again:
the same model files for the same backend with another size, mtime or format version (the model was
replaced, or edge-rt was upgraded), and older-format files of the same model name that do not
record their source. Without that, each replaced model file would leave its prepared weights (about
540 MB for SmolLM2) behind. ``EDGERT_WEIGHT_CACHE=0`` (or ``load_model(weight_cache=False)``,
``edge-rt run --no-weight-cache``) turns the cache off: weights are then dequantized on every load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgert_core.errors import ModelError
from edgert_core.memory.pool import align_up
from edgert_core.memory.reader import FileRangeReader
from edgert_core.pull import CACHE_ENV, cache_dir

FORMAT_VERSION = 2
MAGIC = b"EDGERTPW"
_PREAMBLE = struct.Struct("<8sQQ")
SUFFIX = ".edgert-prepared"
ENV_SWITCH = "EDGERT_WEIGHT_CACHE"
_OFF = {"0", "off", "no", "false"}


def enabled_by_env() -> bool:
    """False when ``EDGERT_WEIGHT_CACHE`` is ``0``, ``off``, ``no`` or ``false``."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in _OFF


def cache_path(model_name: str, identity: tuple[tuple[str, int, int], ...], backend_id: str) -> Path:
    """Where the prepared weights of a model (by its files' identity) for a backend live."""
    key = json.dumps([FORMAT_VERSION, backend_id, [list(i) for i in identity]])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)[:60]
    return cache_dir() / "prepared" / f"{safe}-{digest}{SUFFIX}"


def _named(path: Path) -> str:
    """The model-name part of a prepared file's name (:func:`cache_path`), without the digest."""
    return path.stem.rsplit("-", 1)[0]


@dataclass(frozen=True)
class PreparedEntry:
    """One tensor in a prepared file: byte range and the prepared array's dtype and shape."""

    name: str
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


class PreparedWeights:
    """An open prepared-weights file: its entries, its recorded source (:func:`source_record`), and
    positional reads into caller memory."""

    def __init__(self, path: Path, entries: dict[str, PreparedEntry],
                 source: dict[str, Any] | None = None) -> None:
        self.path = path
        self.entries = entries
        self.source = source
        self.reader = FileRangeReader(path)

    def read_into(self, offset: int, nbytes: int, out: NDArray[Any], what: str = "") -> None:
        """Bytes ``[offset, offset + nbytes)`` of the file into the start of ``out``."""
        self.reader.read_into(offset, nbytes, out, what=what)

    def close(self) -> None:
        self.reader.close()


def _read_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a prepared file, or ``None`` when it is missing or damaged."""
    try:
        with path.open("rb") as f:
            magic, hoff, hlen = _PREAMBLE.unpack(f.read(_PREAMBLE.size))
            if magic != MAGIC or hoff + hlen != path.stat().st_size:
                return None
            f.seek(hoff)
            header = json.loads(f.read(hlen))
    except (OSError, ValueError, struct.error):
        return None
    return header if isinstance(header, dict) else None


def open_prepared(path: Path) -> PreparedWeights | None:
    """The prepared file at ``path``, or ``None`` when it is missing, of another format version, or
    damaged (then it is rebuilt)."""
    header = _read_header(path)
    if header is None or header.get("version") != FORMAT_VERSION:
        return None
    entries = {
        e["name"]: PreparedEntry(e["name"], int(e["offset"]), int(e["nbytes"]), str(e["dtype"]),
                                 tuple(int(x) for x in e["shape"]))
        for e in header["tensors"]
    }
    source = header.get("source")
    return PreparedWeights(path, entries, source if isinstance(source, dict) else None)


class PreparedWriter:
    """Writes a prepared file: :meth:`begin` a tensor, :meth:`write` its bytes in order, then
    :meth:`commit` (rename into place) or :meth:`abort` (delete the temporary file)."""

    def __init__(self, path: Path, source: dict[str, Any] | None = None) -> None:
        self.path = path
        self.source = source
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        except OSError as err:
            raise ModelError(
                f"Cannot write the prepared-weights cache in {path.parent}: {err.strerror}. Set "
                f"{CACHE_ENV} to a writable folder or turn the cache off with {ENV_SWITCH}=0."
            ) from err
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._file.write(_PREAMBLE.pack(MAGIC, 0, 0))
        self._pos = _PREAMBLE.size
        self._entries: list[PreparedEntry] = []
        self._open: PreparedEntry | None = None
        self._written = 0

    def begin(self, name: str, nbytes: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        self._finish()
        start = align_up(self._pos)
        self._file.write(b"\0" * (start - self._pos))
        self._pos = start
        self._open = PreparedEntry(name, start, nbytes, dtype.str, shape)
        self._written = 0

    def write(self, data: NDArray[Any]) -> None:
        """Append the bytes of ``data`` (C-contiguous) to the current tensor."""
        view = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        self._file.write(memoryview(view))  # type: ignore[arg-type]
        self._pos += view.nbytes
        self._written += view.nbytes

    def _finish(self) -> None:
        if self._open is not None:
            if self._written != self._open.nbytes:
                raise ValueError(
                    f"{self._open.name}: wrote {self._written} bytes, expected {self._open.nbytes}"
                )
            self._entries.append(self._open)
            self._open = None

    def commit(self) -> Path:
        self._finish()
        header = json.dumps({
            "version": FORMAT_VERSION,
            "source": self.source,
            "tensors": [
                {"name": e.name, "offset": e.offset, "nbytes": e.nbytes, "dtype": e.dtype,
                 "shape": list(e.shape)}
                for e in self._entries
            ],
        }).encode()
        hoff = self._pos
        self._file.write(header)
        self._file.seek(0)
        self._file.write(_PREAMBLE.pack(MAGIC, hoff, len(header)))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


def source_record(identity: tuple[tuple[str, int, int], ...], backend_id: str) -> dict[str, Any]:
    """What a prepared file records about where it came from: the backend and the model files."""
    return {"backend": backend_id, "files": [i[0] for i in identity]}


def remove_stale(path: Path, source: dict[str, Any]) -> list[tuple[Path, int]]:
    """Delete the prepared files beside ``path`` that this version can never read again for the same
    model (see the module docstring); the ``(path, bytes)`` removed. Files it cannot read or delete
    are left alone."""
    name = _named(path)
    removed: list[tuple[Path, int]] = []
    for other in sorted(path.parent.glob("*" + SUFFIX)):
        if other.name == path.name:
            continue
        header = _read_header(other)
        if header is None:
            continue
        recorded = header.get("source")
        same_source = recorded == source
        old_unrecorded = recorded is None and header.get("version") != FORMAT_VERSION
        if not (same_source or (old_unrecorded and _named(other) == name)):
            continue
        with contextlib.suppress(OSError):
            size = other.stat().st_size
            other.unlink()
            removed.append((other, size))
    return removed


def prepared_files_of(model_files: Iterable[Path]) -> list[Path]:
    """The prepared files in the cache that record being made from any of ``model_files`` (for any
    backend), so that a measured run can drop their cached pages too."""
    wanted = {str(Path(f).resolve()) for f in model_files}
    folder = cache_dir() / "prepared"
    out = []
    with contextlib.suppress(OSError):
        for path in sorted(folder.glob("*" + SUFFIX)):
            source = (_read_header(path) or {}).get("source")
            files = source.get("files") if isinstance(source, dict) else None
            if isinstance(files, list) and wanted & {str(f) for f in files}:
                out.append(path)
    return out


@contextlib.contextmanager
def writing(path: Path, source: dict[str, Any] | None = None) -> Iterator[PreparedWriter]:
    """A :class:`PreparedWriter` committed at the end of the block, aborted on an exception."""
    writer = PreparedWriter(path, source)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()
