"""Opening the files of a model safely: only regular files (after resolving symlinks) are ever opened.

A FIFO passed as a model would block the first ``open`` forever, a device file (``/dev/zero``,
``/dev/tty``) never ends or has side effects when opened, a socket cannot be read: each is refused by
its kind from ``stat`` before anything opens it. Files are then opened with ``O_NONBLOCK`` and checked
again with ``fstat``, so a path swapped for a FIFO between the two checks cannot hang a run either.

PyTorch checkpoints (``pytorch_model.bin``, ``.pt``, ``.pth``, ``.ckpt``) are pickles: unpickling one
can run arbitrary code, so edge-rt never unpickles; it recognises them by name or by their first bytes
and says how to convert them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from edgert_core.errors import ModelError

#: Suffixes of PyTorch pickle checkpoints (recognised by name, never opened as models).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Largest JSON side file (config.json, tokenizer_config.json, index) read whole.
MAX_JSON_BYTES = 64 << 20


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def stat_path(path: Path, what: str = "Model") -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed), with every failure as one :class:`ModelError`."""
    try:
        return os.stat(path)
    except OSError as err:
        if err.errno == errno.ENOENT:
            broken = " (a broken symlink)" if path.is_symlink() else ""
            raise ModelError(
                f"{what} {path} does not exist{broken}; pass a .gguf file, a Hugging Face model "
                "folder, or a known name such as smollm2 (fetch it with: edge-rt pull smollm2)."
            ) from None
        if err.errno == errno.ELOOP:
            raise ModelError(f"{what} {path} is a symlink loop; point it at a real file.") from None
        raise ModelError(f"Cannot access {what.lower()} {path}: {err.strerror}.") from None


def check_regular(path: Path, what: str = "Model file") -> os.stat_result:
    """Refuse ``path`` unless it is a regular, non-empty file (after resolving symlinks)."""
    st = stat_path(path, what)
    if not stat.S_ISREG(st.st_mode):
        target = "" if not path.is_symlink() else f" (it resolves to {os.path.realpath(path)})"
        raise ModelError(
            f"{what} {path} is {_kind(st.st_mode)}{target}, not a regular file; edge-rt reads "
            "model files only from regular files."
        )
    if st.st_size == 0:
        raise ModelError(f"{what} {path} is empty (0 bytes); download or convert it again.")
    return st


def open_regular(path: Path, what: str = "Model file") -> int:
    """An ``O_RDONLY`` descriptor of the regular file ``path`` (checked before and after opening;
    the caller closes it)."""
    check_regular(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise ModelError(f"Cannot open {what.lower()} {path}: {err.strerror}.") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ModelError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file.")
    return fd


def read_prefix(path: Path, nbytes: int, what: str = "Model file") -> bytes:
    """The first ``nbytes`` (or fewer) bytes of the regular file ``path``."""
    fd = open_regular(path, what)
    try:
        return os.pread(fd, nbytes, 0)
    except OSError as err:
        raise ModelError(f"Cannot read {what.lower()} {path}: {err.strerror}.") from None
    finally:
        os.close(fd)


def read_small(path: Path, limit: int = MAX_JSON_BYTES, what: str = "File") -> bytes:
    """The whole regular file ``path`` when it is at most ``limit`` bytes."""
    st = check_regular(path, what)
    if st.st_size > limit:
        raise ModelError(
            f"{what} {path} has {st.st_size} bytes, more than the {limit} such a file can "
            "sensibly hold; it is not a model side file."
        )
    fd = open_regular(path, what)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            if sum(len(c) for c in chunks) > limit:
                raise ModelError(f"{what} {path} grew while being read; try again.")
        return b"".join(chunks)
    except OSError as err:
        raise ModelError(f"Cannot read {what.lower()} {path}: {err.strerror}.") from None
    finally:
        os.close(fd)


def looks_like_pickle(path: Path, head: bytes) -> bool:
    """Whether a file is a PyTorch checkpoint: a pickle suffix, a pickle protocol header, or the
    zip container ``torch.save`` writes."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head[:4] == b"PK\x03\x04"


def pickle_refusal(path: Path) -> ModelError:
    return ModelError(
        f"{path} is a PyTorch pickle checkpoint, which edge-rt never loads (unpickling can run "
        "arbitrary code); convert it to safetensors (save_pretrained(..., safe_serialization=True)) "
        "or GGUF and pass that instead."
    )
