"""Memory cgroups for measured runs: a run limited as a device limits it, page cache included.

A device (a Pi's RAM, a container's memory limit) counts a process's RSS *and* the page cache that
its file reads fill. :class:`MemoryCgroup` makes a fresh child memory cgroup under this process's own
one, with a hard limit and no swap, puts a subprocess into it before the subprocess allocates
anything (:meth:`MemoryCgroup.enter`, a ``preexec_fn`` for :mod:`subprocess`), reads what the kernel
counted afterwards (:class:`CgroupStats`: peak usage, how often the limit was hit, OOM kills) and
removes the cgroup.

Both hierarchies:

* **cgroup v2** (the unified hierarchy; used when its ``memory`` controller is available to this
  process's cgroup): ``memory.max``, ``memory.swap.max`` = 0 where present; peak ``memory.peak``
  (Linux 5.19+); ``max`` (limit hit) and ``oom_kill`` counts of ``memory.events``. Under v2 a cgroup
  that holds processes cannot hand the memory controller to children ("no internal processes"), so
  this works from the root cgroup or from a delegated one (``systemd-run --scope -p Delegate=yes``).
* **cgroup v1**: ``<memory mount>/<own path from /proc/self/cgroup>/<name>``,
  ``memory.limit_in_bytes`` (charges page cache too), ``memory.memsw.limit_in_bytes`` equal to it
  where present (no swap); peak ``memory.max_usage_in_bytes``, ``memory.failcnt``, ``oom_kill`` of
  ``memory.oom_control`` (Linux 4.13+).

Making a cgroup needs root (or a delegated v2 subtree) and a writable memory controller; where that
is missing, :class:`~edgert_core.errors.MemoryLimitError` says what and what to do. This module does
no printing.

Reading a cgroup (:func:`effective_memory_limit`, :func:`own_memory_charge`, what ``--memory-budget
auto`` uses) follows the environment roots (``$EDGERT_PROCFS_ROOT``, ``$EDGERT_SYSFS_ROOT``:
:mod:`edgert_core.monitors.roots`), so a fake tree can stand for a device's cgroup
(:func:`machine_parent`). Making one (:class:`MemoryCgroup`, :func:`own_parent`) always uses the real
``/proc`` and ``/sys``: only the kernel can limit a process.

What the limit does not count: pages of files that another cgroup read first (the Python
interpreter and libraries the parent had already loaded) stay charged to that cgroup. Drop the model
file's cached pages first (:func:`edgert_core.memory.io_stats.drop_page_cache`), so that the run
reads, and is charged for, its weights.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgert_core.errors import MemoryLimitError
from edgert_core.monitors.roots import REAL_SYSFS, is_real, is_real_sysfs, procfs_root, sysfs_root

PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MOUNTINFO = Path("/proc/self/mountinfo")
WHAT_TO_DO = "run as root, or drop --memory-limit"
#: A cgroup v1 limit at or above this many bytes means "no limit" (the kernel reports
#: ``PAGE_COUNTER_MAX`` pages, about 2**63 bytes, rounded down to a page).
V1_UNLIMITED = 2**62
NEEDS = "--memory-limit needs root and a writable memory cgroup (v1 or v2)"
_counter = itertools.count(1)


@dataclass(frozen=True)
class CgroupParent:
    """This process's own memory cgroup: the hierarchy's version and its directory."""

    version: Literal[1, 2]
    path: Path


@dataclass(frozen=True)
class CgroupStats:
    """What the kernel counted for a cgroup; ``None`` where this kernel does not say."""

    limit_bytes: int
    peak_bytes: int | None
    failcnt: int | None  # times usage hit the limit (v1 failcnt, v2 the "max" event count)
    oom_kills: int | None


@dataclass(frozen=True)
class _Mount:
    root: str  # the hierarchy path mounted (mountinfo's 4th field)
    point: Path
    fstype: str
    options: frozenset[str]  # super options (cgroup v1: the controllers)


def _mounts(mountinfo: str) -> list[_Mount]:
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        out.append(_Mount(fields[3], Path(fields[4]), tail[0], frozenset(tail[2].split(","))))
    return out


def own_cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and cgroup v1 memory path from a ``/proc/self/cgroup`` text
    (also what the ``cgroup`` monitor reads)."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _under(mount: _Mount, own: str) -> Path:
    """The directory of cgroup ``own`` (a path in the hierarchy) below ``mount``."""
    root = mount.root.rstrip("/")
    rel = own[len(root):] if root and (own == root or own.startswith(root + "/")) else own
    return mount.point / rel.lstrip("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def find_parent(proc_cgroup: str, mountinfo: str) -> CgroupParent:
    """This process's memory cgroup, from the texts of ``/proc/self/cgroup`` and
    ``/proc/self/mountinfo``: cgroup v2 where its memory controller is available there, else the
    cgroup v1 memory hierarchy. Raises :class:`MemoryLimitError` when neither is."""
    return _find(proc_cgroup, _mounts(mountinfo))


def _find(proc_cgroup: str, mounts: list[_Mount]) -> CgroupParent:
    """:func:`find_parent` over mounts already parsed."""
    v2_path, v1_path = own_cgroup_paths(proc_cgroup)
    if v2_path is not None:
        for m in (m for m in mounts if m.fstype == "cgroup2"):
            here = _under(m, v2_path)
            if "memory" in (_read(here / "cgroup.controllers") or "").split():
                return CgroupParent(2, here)
    if v1_path is not None:
        for m in (m for m in mounts if m.fstype == "cgroup" and "memory" in m.options):
            here = _under(m, v1_path)
            if here.is_dir():
                return CgroupParent(1, here)
            raise MemoryLimitError(
                f"{NEEDS}: this process's memory cgroup {v1_path} has no directory {here} (a cgroup "
                f"namespace that the mount does not match?); {WHAT_TO_DO}."
            )
    raise MemoryLimitError(
        f"{NEEDS}, but no memory controller is mounted for this process (neither cgroup v2 with "
        f"'memory' in cgroup.controllers nor a cgroup v1 memory hierarchy); {WHAT_TO_DO}."
    )


def own_parent() -> CgroupParent:
    """This process's memory cgroup (see :func:`find_parent`) in the real ``/proc`` and ``/sys``,
    whatever the environment roots say: the cgroup a :class:`MemoryCgroup` is made under."""
    proc_cgroup, mountinfo = _read(PROC_CGROUP), _read(PROC_MOUNTINFO)
    if proc_cgroup is None or mountinfo is None:
        raise MemoryLimitError(
            f"{NEEDS}, and this system has no {PROC_CGROUP} and {PROC_MOUNTINFO} (Linux only); "
            "drop --memory-limit."
        )
    return find_parent(proc_cgroup, mountinfo)


def _default_mounts(sysfs: Path) -> list[_Mount]:
    """The usual places of the hierarchies when no mountinfo says: cgroup v2 at
    ``<sysfs>/fs/cgroup``, the cgroup v1 memory controller at ``<sysfs>/fs/cgroup/memory``."""
    cgroup = sysfs / "fs" / "cgroup"
    return [_Mount("/", cgroup, "cgroup2", frozenset()),
            _Mount("/", cgroup / "memory", "cgroup", frozenset({"memory"}))]


def _rebased(mounts: list[_Mount], sysfs: Path) -> list[_Mount]:
    """``mounts`` with the mount points below ``/sys`` moved below ``sysfs``; under a fake ``sysfs``
    a mount point elsewhere is dropped, since reading it would mix the real machine in."""
    if is_real_sysfs(sysfs):
        return mounts
    out = []
    for m in mounts:
        if m.point == REAL_SYSFS or REAL_SYSFS in m.point.parents:
            out.append(_Mount(m.root, sysfs / m.point.relative_to(REAL_SYSFS), m.fstype, m.options))
    return out


def machine_parent(procfs: Path | None = None, sysfs: Path | None = None) -> CgroupParent:
    """This process's memory cgroup as the tree at ``procfs`` and ``sysfs`` describes it (default:
    the environment roots, read now): the own path from ``<procfs>/self/cgroup``, the mounts from
    ``<procfs>/self/mountinfo`` (mount points under ``/sys`` taken under ``sysfs``) or, where a fake
    tree has no mountinfo, cgroup v2 at ``<sysfs>/fs/cgroup`` and v1 at
    ``<sysfs>/fs/cgroup/memory``. On the real machine this is :func:`own_parent`. Raises
    :class:`MemoryLimitError` where there is no memory cgroup."""
    procfs = procfs_root() if procfs is None else procfs
    sysfs = sysfs_root() if sysfs is None else sysfs
    if is_real(procfs, sysfs):
        return own_parent()
    proc_cgroup = _read(procfs / "self" / "cgroup")
    if proc_cgroup is None:
        raise MemoryLimitError(f"No memory cgroup: there is no {procfs / 'self' / 'cgroup'}.")
    mountinfo = _read(procfs / "self" / "mountinfo")
    mounts = _default_mounts(sysfs) if mountinfo is None else _rebased(_mounts(mountinfo), sysfs)
    return _find(proc_cgroup, mounts)


def keyed_value(text: str | None, key: str) -> int | None:
    """The value of ``key`` in a ``key value`` per line file (``memory.events``, ``oom_control``,
    ``memory.stat``); ``None`` where the text or the key is missing."""
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return None


def _number(text: str | None) -> int | None:
    value = (text or "").strip()
    return int(value) if value.isdigit() else None


class MemoryCgroup:
    """A fresh child memory cgroup of ``parent`` (default: this process's own) limited to
    ``limit_bytes``, page cache included, without swap.

    ``with MemoryCgroup(limit) as cg:`` makes it and removes it at the end, whatever happens;
    ``subprocess.run(..., preexec_fn=cg.enter)`` runs a process in it from its first allocation;
    :meth:`stats` reads what the kernel counted (call it after the process ended, before removal).
    """

    def __init__(self, limit_bytes: int, *, parent: CgroupParent | None = None,
                 name: str | None = None) -> None:
        if limit_bytes <= 0:
            raise MemoryLimitError(f"A memory limit must be positive, got {limit_bytes} bytes.")
        self.limit_bytes = limit_bytes
        self.parent = parent if parent is not None else own_parent()
        self.name = name or f"edgert-{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"
        self.path = self.parent.path / self.name
        self._procs = str(self.path / "cgroup.procs")
        self.created = False

    @property
    def version(self) -> Literal[1, 2]:
        return self.parent.version

    def __enter__(self) -> MemoryCgroup:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def create(self) -> None:
        """Make the cgroup and set its limits; raise :class:`MemoryLimitError` where it cannot be."""
        if self.version == 2:
            self._delegate_memory()
        try:
            self.path.mkdir()
        except OSError as exc:
            raise MemoryLimitError(
                f"{NEEDS}: could not create the cgroup {self.path} ({exc.strerror or exc}); "
                f"{WHAT_TO_DO}."
            ) from None
        self.created = True
        try:
            if self.version == 2:
                self._write("memory.max", self.limit_bytes)
                if (self.path / "memory.swap.max").exists():
                    self._write("memory.swap.max", 0)
            else:
                self._write("memory.limit_in_bytes", self.limit_bytes)
                if (self.path / "memory.memsw.limit_in_bytes").exists():
                    self._write("memory.memsw.limit_in_bytes", self.limit_bytes)
        except BaseException:
            self.remove()
            raise

    def set_limit(self, limit_bytes: int) -> None:
        """Change the limit of the cgroup made (a container's limit lowered or raised while its
        process runs). The kernel reclaims what it can to get under a lower limit; a limit below
        what the cgroup holds and cannot give back is refused (:class:`MemoryLimitError`)."""
        if limit_bytes <= 0:
            raise MemoryLimitError(f"A memory limit must be positive, got {limit_bytes} bytes.")
        if self.version == 2:
            self._write("memory.max", limit_bytes)
        else:  # memory+swap may never be below memory alone: lower memory first, raise it last
            files = ["memory.limit_in_bytes"]
            if (self.path / "memory.memsw.limit_in_bytes").exists():
                files.append("memory.memsw.limit_in_bytes")
            for file in files if limit_bytes < self.limit_bytes else reversed(files):
                self._write(file, limit_bytes)
        self.limit_bytes = limit_bytes

    def _delegate_memory(self) -> None:
        """cgroup v2: the parent must list ``memory`` in ``cgroup.subtree_control`` for its children
        to have ``memory.max``; enable it where it is not yet."""
        control = self.parent.path / "cgroup.subtree_control"
        if "memory" in (_read(control) or "").split():
            return
        try:
            control.write_text("+memory")
        except OSError as exc:
            busy = exc.errno == errno.EBUSY
            why = (" (this cgroup holds processes, and cgroup v2 hands controllers only to the "
                   "children of a cgroup without processes: run from a delegated cgroup, e.g. "
                   "`systemd-run --scope -p Delegate=yes edge-rt ...`)") if busy else ""
            raise MemoryLimitError(
                f"{NEEDS}: could not enable the memory controller for the children of "
                f"{self.parent.path} ({exc.strerror or exc}){why}; {WHAT_TO_DO}."
            ) from None

    def _write(self, file: str, value: int) -> None:
        try:
            (self.path / file).write_text(str(value))
        except OSError as exc:
            raise MemoryLimitError(
                f"{NEEDS}: could not write {value} to {self.path / file} ({exc.strerror or exc}); "
                f"{WHAT_TO_DO}."
            ) from None

    def enter(self) -> None:
        """Move the calling process into the cgroup: the ``preexec_fn`` of a subprocess, so that the
        child is inside before it runs a single instruction of the new program."""
        fd = os.open(self._procs, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    def stats(self) -> CgroupStats:
        """Peak usage, limit hits and OOM kills so far."""
        if self.version == 2:
            events = _read(self.path / "memory.events")
            return CgroupStats(self.limit_bytes, _number(_read(self.path / "memory.peak")),
                               keyed_value(events, "max"), keyed_value(events, "oom_kill"))
        return CgroupStats(
            self.limit_bytes,
            _number(_read(self.path / "memory.max_usage_in_bytes")),
            _number(_read(self.path / "memory.failcnt")),
            keyed_value(_read(self.path / "memory.oom_control"), "oom_kill"),
        )

    def remove(self, timeout: float = 2.0) -> None:
        """Remove the cgroup (its processes must have exited; retried for up to ``timeout`` seconds
        while the kernel still counts exiting ones). Raises :class:`MemoryLimitError` when it stays."""
        if not self.created:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise MemoryLimitError(
                    f"Could not remove the cgroup {self.path} ({exc.strerror or exc}); once the "
                    f"processes in {self._procs} have exited, remove it with `rmdir {self.path}`."
                ) from None
            self.created = False
            return


def leftover(parent: CgroupParent, prefix: str = "edgert-") -> list[Path]:
    """Child cgroups of ``parent`` whose names start with ``prefix`` (what a run left behind)."""
    with contextlib.suppress(OSError):
        return sorted(p for p in parent.path.iterdir() if p.is_dir() and p.name.startswith(prefix))
    return []


def effective_memory_limit() -> int | None:
    """The memory limit this process runs under, in bytes: the smallest ``memory.max`` from its
    cgroup up to the hierarchy's root (v2), or ``hierarchical_memory_limit`` of ``memory.stat``
    (v1, the same smallest limit); ``None`` without a memory cgroup or a limit. Read under the
    environment roots (:func:`machine_parent`)."""
    try:
        own = machine_parent()
    except MemoryLimitError:
        return None
    if own.version == 1:
        stat = _read(own.path / "memory.stat")
        limit = keyed_value(stat, "hierarchical_memory_limit")
        if limit is None:
            limit = _number(_read(own.path / "memory.limit_in_bytes"))
        return limit if limit is not None and limit < V1_UNLIMITED else None
    limits = []
    path = own.path
    while True:
        value = _number(_read(path / "memory.max"))  # "max" (no limit) is not a number
        if value is not None:
            limits.append(value)
        if not (path.parent / "cgroup.controllers").exists() or path.parent == path:
            break
        path = path.parent
    return min(limits) if limits else None


@dataclass(frozen=True)
class MemoryCharge:
    """What a memory cgroup is charged now, split into what the kernel can take back at once and
    what it cannot.

    ``usage_bytes`` is what the limit is measured against (v2 ``memory.current``, v1
    ``memory.usage_in_bytes``). ``reclaimable_bytes`` is the part that is clean page cache no process
    maps: file pages on the cgroup's LRU lists (``active_file`` + ``inactive_file``) less the mapped
    (``file_mapped``/``mapped_file``: code and data some process uses), dirty and under-writeback
    ones. Under the limit the kernel drops those pages before it fails an allocation, so they are
    room, not use: a process that has just read its libraries and a model's header is charged tens
    of MiB of such cache."""

    usage_bytes: int
    reclaimable_bytes: int

    @property
    def held_bytes(self) -> int:
        """What stays charged however hard the kernel reclaims: anonymous memory, shared memory and
        the file pages that are mapped or dirty."""
        return max(0, self.usage_bytes - self.reclaimable_bytes)


#: ``memory.stat`` keys of the file LRU lists and of the file pages they hold that cannot be dropped
#: at once, per hierarchy version (v1's ``total_`` keys count the cgroup and its children, as its
#: ``usage_in_bytes`` does; v2's keys are hierarchical already).
#: per version: the file LRU lists, the dirty and under-writeback counts, the mapped count and the
#: shared-memory count (``total_*``: v1's figures for the cgroup and its children)
_STAT_KEYS: dict[int, tuple[tuple[str, ...], tuple[str, ...], str, str]] = {
    1: (("total_active_file", "total_inactive_file"), ("total_dirty", "total_writeback"),
        "total_mapped_file", "total_shmem"),
    2: (("active_file", "inactive_file"), ("file_dirty", "file_writeback"), "file_mapped", "shmem"),
}


def reclaimable_bytes(memory_stat: str, version: Literal[1, 2]) -> int:
    """Clean, unmapped page cache in a ``memory.stat`` text (see :class:`MemoryCharge`); 0 where the
    keys are missing. The mapped count also holds mapped shared memory (``shmem``: the pool's
    anonymous shared mappings, which live on the anon lists, not the file lists), so only the
    mapped pages beyond ``shmem`` are taken off the file lists."""
    lists, unclean, mapped_key, shmem_key = _STAT_KEYS[version]
    files = sum(keyed_value(memory_stat, key) or 0 for key in lists)
    dirty = sum(keyed_value(memory_stat, key) or 0 for key in unclean)
    mapped = max(0, (keyed_value(memory_stat, mapped_key) or 0) - (keyed_value(memory_stat, shmem_key) or 0))
    return max(0, files - mapped - dirty)


def own_memory_charge() -> MemoryCharge | None:
    """This process's memory cgroup's charge now (:class:`MemoryCharge`); ``None`` without a memory
    cgroup. Read under the environment roots (:func:`machine_parent`)."""
    try:
        own = machine_parent()
    except MemoryLimitError:
        return None
    usage = _number(_read(own.path / ("memory.current" if own.version == 2 else "memory.usage_in_bytes")))
    if usage is None:
        return None
    return MemoryCharge(usage, reclaimable_bytes(_read(own.path / "memory.stat") or "", own.version))
