"""The built-in system monitors: CPU, memory, swap, this process, thermal zones, the cgroup memory
limit, memory pressure (PSI), Raspberry Pi throttling and the device model.

They read Linux pseudo-files (``/proc``, ``/sys``) and, on the live machine only, psutil and
``vcgencmd`` for what the files do not say. The monitors that describe the *machine* read under the
environment roots (:func:`~edgert_core.monitors.roots.procfs_root`, ``$EDGERT_PROCFS_ROOT``, and
:func:`~edgert_core.monitors.roots.sysfs_root`, ``$EDGERT_SYSFS_ROOT``), looked up at every read, so
a fake tree (``tests/fixtures/pi4``) stands in for a Raspberry Pi. The ``process`` monitor describes
this process and reads the real ``/proc``. A ``root`` argument (a directory holding ``proc/`` and
``sys/``; or the module's :data:`ROOT`) overrides both, for every monitor. A sensor this machine does
not have is a reading with value ``None`` and a note saying why, never an exception; the one
exception is a root variable that names no directory
(:class:`~edgert_core.monitors.roots.MonitorRootError`), a typo to say rather than a bare machine.

Two monitors can block: ``cpu`` with its default ``interval`` (``edge-rt status`` samples the busy
percentage over 0.1 s) and ``throttling`` where it runs ``vcgencmd`` (a Pi without the firmware's
sysfs file). :func:`~edgert_core.monitors.sampler.machine_monitors` builds both so they do not.

Units: bytes are ``"B"`` (plain ints; the CLI makes them human-readable), percentages ``"%"``,
frequencies ``"MHz"``, temperatures ``"°C"``.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgert_core.hookspecs import hookimpl
from edgert_core.memory.auto_budget import parse_meminfo
from edgert_core.memory.cgroup import V1_UNLIMITED, keyed_value, own_cgroup_paths
from edgert_core.memory.rss import current_rss_bytes
from edgert_core.monitors.base import Reading, SystemMonitor
from edgert_core.monitors.roots import is_real, procfs_root, sysfs_root

#: A directory holding ``proc/`` and ``sys/`` that monitors built with no ``root`` read under
#: instead of the environment roots; ``None`` (the default) follows the environment roots.
ROOT: Path | None = None
#: Where the ``process`` monitor reads ``proc/self/status`` when given no ``root``: always the live
#: machine, since it describes this process.
REAL_ROOT = Path("/")


#: Bits of the Raspberry Pi firmware's ``get_throttled`` word: (bit, key, label).
THROTTLE_BITS: tuple[tuple[int, str, str], ...] = (
    (0, "under_voltage", "under-voltage now"),
    (1, "freq_capped", "arm frequency capped now"),
    (2, "throttled", "throttled now"),
    (3, "soft_temp_limit", "soft temperature limit now"),
    (16, "under_voltage_occurred", "under-voltage has occurred"),
    (17, "freq_capped_occurred", "arm frequency capping has occurred"),
    (18, "throttled_occurred", "throttling has occurred"),
    (19, "soft_temp_limit_occurred", "soft temperature limit has occurred"),
)

FIRMWARE_THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
VCGENCMD_TIMEOUT_S = 2.0


# -- small file helpers ---------------------------------------------------------------------------
def _read_text(path: Path) -> str | None:
    """The stripped text of a pseudo-file, or ``None`` if it is missing or unreadable. Read with
    bare ``os`` calls (open, read until the end, close): half the system calls of
    :meth:`Path.read_text`, which matters at a governor's reading rate."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace").strip()


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _psutil() -> Any:  # (psutil has no type hints)
    """psutil, imported when a monitor that reads it is made (:class:`CpuMonitor`: per-core busy
    time and core counts) or where ``/proc`` lacks a file (off Linux), not when this module is: a
    run's baseline RSS (taken after its governor's monitors are made) holds it only if it is used."""
    import psutil

    return psutil


def _absent(key: str, label: str, unit: str, note: str) -> Reading:
    return Reading(key, label, None, unit, note)


@dataclass(frozen=True, slots=True)
class Roots:
    """The two directories one read uses as ``/proc`` and ``/sys``."""

    procfs: Path
    sysfs: Path

    def path(self, relative: str) -> Path:
        """``proc/...`` under :attr:`procfs`, ``sys/...`` under :attr:`sysfs`."""
        head, _, tail = relative.partition("/")
        if head == "proc":
            return self.procfs / tail
        if head == "sys":
            return self.sysfs / tail
        raise ValueError(f"a monitor path starts with proc/ or sys/, got {relative!r}")

    @property
    def real(self) -> bool:
        """Whether these are the live machine's, where psutil and commands also apply."""
        return is_real(self.procfs, self.sysfs)


class RootedMonitor(SystemMonitor):
    """A monitor that reads files under ``/proc`` and ``/sys``: under ``root/proc`` and ``root/sys``
    when given a ``root`` (or when the module's :data:`ROOT` is set), else under the environment
    roots as they are at each read."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else None

    def roots(self) -> Roots:
        """The directories to read this time (the environment is looked up again at every call)."""
        root = self.root if self.root is not None else ROOT
        if root is not None:
            return Roots(root / "proc", root / "sys")
        return Roots(procfs_root(), sysfs_root())

    def path(self, relative: str) -> Path:
        """The file ``relative`` (``proc/loadavg``, ``sys/class/thermal``) under this read's roots."""
        return self.roots().path(relative)

    @property
    def real_root(self) -> bool:
        """Whether this monitor reads the live machine, where psutil and commands also apply."""
        return self.roots().real


# -- device ---------------------------------------------------------------------------------------
class DeviceMonitor(RootedMonitor):
    """The board model (from the device tree), CPU architecture and kernel."""

    name: ClassVar[str] = "device"
    description: ClassVar[str] = "board model, architecture and kernel"

    MODEL_FILES = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")

    def read(self) -> list[Reading]:
        roots = self.roots()
        model = None
        for relative in self.MODEL_FILES:
            text = _read_text(roots.path(relative))
            if text:
                model = text.replace("\x00", "").strip() or None
                break
        readings = [
            Reading("device.model", "model", model, "", "" if model else "no device-tree model"),
        ]
        if roots.real:
            readings.append(Reading("device.arch", "architecture", platform.machine() or None))
            kernel = f"{platform.system()} {platform.release()}".strip()
            readings.append(Reading("device.kernel", "kernel", kernel or None))
        return readings


# -- CPU ------------------------------------------------------------------------------------------
class CpuMonitor(RootedMonitor):
    """Load averages, busy percent per core and overall, core counts and clock frequency.

    Load averages and frequencies come from files under the roots; usage and core counts always
    come from psutil, that is from the live machine.

    ``interval`` is how long (seconds) the busy percentage is sampled over, blocking the read that
    long; ``0`` does not block and reports the usage since the previous call in this process
    (meaningless on the first call).
    """

    name: ClassVar[str] = "cpu"
    description: ClassVar[str] = "load, usage, core count and frequency"

    def __init__(self, root: Path | None = None, interval: float = 0.1) -> None:
        super().__init__(root)
        self.interval = interval
        self._count_readings: list[Reading] | None = None
        self._psutil = _psutil()

    def read(self) -> list[Reading]:
        roots = self.roots()
        return [*self._load(roots), *self._percent(), *self._counts(), *self._frequency(roots)]

    def _load(self, roots: Roots) -> list[Reading]:
        text = _read_text(roots.path("proc/loadavg"))
        loads: list[float] | None = None
        if text is not None:
            try:
                loads = [float(part) for part in text.split()[:3]]
            except ValueError:
                loads = None
        if loads is None and roots.real and hasattr(os, "getloadavg"):
            try:
                loads = list(os.getloadavg())
            except OSError:
                loads = None
        labels = (("load_1m", "load average 1 min"), ("load_5m", "load average 5 min"),
                  ("load_15m", "load average 15 min"))
        if loads is None or len(loads) != 3:
            return [_absent(f"cpu.{k}", label, "", "load average not available")
                    for k, label in labels]
        return [Reading(f"cpu.{k}", label, v) for (k, label), v in zip(labels, loads, strict=True)]

    def _percent(self) -> list[Reading]:
        psutil = self._psutil
        try:
            per_core = psutil.cpu_percent(interval=self.interval or None, percpu=True)
        except (OSError, RuntimeError, psutil.Error) as exc:
            return [_absent("cpu.percent", "busy (all cores)", "%", f"psutil: {exc}")]
        if not per_core:
            return [_absent("cpu.percent", "busy (all cores)", "%", "no per-core usage")]
        note = "" if self.interval else "since the previous sample"
        overall = round(sum(per_core) / len(per_core), 1)
        out = [Reading("cpu.percent", "busy (all cores)", overall, "%", note)]
        out += [Reading(f"cpu.percent.core{i}", f"busy core {i}", float(p), "%", note)
                for i, p in enumerate(per_core)]
        return out

    def _counts(self) -> list[Reading]:
        """Core counts, asked of psutil once per monitor: the machine's shape, not its state (the
        physical count alone reads a topology file per core)."""
        if self._count_readings is None:
            psutil = self._psutil
            logical = psutil.cpu_count(logical=True)
            physical = psutil.cpu_count(logical=False)
            self._count_readings = [
                Reading("cpu.logical", "logical cores", logical, "",
                        "" if logical else "core count not available"),
                Reading("cpu.physical", "physical cores", physical, "",
                        "" if physical else "physical core count not available"),
            ]
        return list(self._count_readings)

    def _frequency(self, roots: Roots) -> list[Reading]:
        """MHz from cpufreq sysfs (kHz files) for core 0, else psutil; ``0`` counts as absent."""
        base = roots.path("sys/devices/system/cpu/cpu0/cpufreq")
        files = {"current": "scaling_cur_freq", "min": "cpuinfo_min_freq",
                 "max": "cpuinfo_max_freq"}
        mhz: dict[str, float | None] = {}
        for what, filename in files.items():
            khz = _read_int(base / filename)
            mhz[what] = khz / 1000 if khz else None
        missing = "no cpufreq"
        if all(v is None for v in mhz.values()) and roots.real:
            missing = "not reported (no cpufreq, psutil gives none)"
            psutil = self._psutil
            try:
                freq = psutil.cpu_freq()
            except (OSError, RuntimeError, NotImplementedError, psutil.Error):
                freq = None
            if freq is not None:
                mhz = {"current": freq.current or None, "min": freq.min or None,
                       "max": freq.max or None}
        out = []
        for what in files:
            value = mhz[what]
            label = f"frequency {what}"
            if value is None:
                out.append(_absent(f"cpu.freq_{what}", label, "MHz", missing))
            else:
                out.append(Reading(f"cpu.freq_{what}", label, round(float(value), 1), "MHz"))
        return out


# -- memory and swap ------------------------------------------------------------------------------
def _meminfo(roots: Roots) -> dict[str, int] | None:
    """``<procfs>/meminfo`` in bytes by field, or ``None`` where it is missing."""
    text = _read_text(roots.path("proc/meminfo"))
    return parse_meminfo(text) if text is not None else None


class MemoryMonitor(RootedMonitor):
    """System RAM: total, available (``MemAvailable``: what the kernel can still give without
    swapping, page cache it can drop included) and used percent, from ``<procfs>/meminfo``; from
    psutil only on the live machine where that file is missing (not Linux)."""

    name: ClassVar[str] = "memory"
    description: ClassVar[str] = "system RAM"

    def read(self) -> list[Reading]:
        roots = self.roots()
        fields = _meminfo(roots)
        if fields is None and roots.real:
            vm = _psutil().virtual_memory()
            return [
                Reading("memory.total", "total", int(vm.total), "B"),
                Reading("memory.available", "available", int(vm.available), "B"),
                Reading("memory.percent", "used", float(vm.percent), "%"),
            ]
        if fields is None:
            why = f"no {roots.path('proc/meminfo')}"
            return [_absent("memory.total", "total", "B", why),
                    _absent("memory.available", "available", "B", why),
                    _absent("memory.percent", "used", "%", why)]
        total, available = fields.get("MemTotal"), fields.get("MemAvailable")
        percent = (round((total - available) / total * 100, 1)
                   if total and available is not None else None)
        return [
            Reading("memory.total", "total", total, "B", "" if total else "no MemTotal in meminfo"),
            Reading("memory.available", "available", available, "B",
                    "" if available is not None else "no MemAvailable in meminfo"),
            Reading("memory.percent", "used", percent, "%",
                    "" if percent is not None else "needs MemTotal and MemAvailable"),
        ]


class SwapMonitor(RootedMonitor):
    """Swap space: total and used (``SwapTotal`` less ``SwapFree`` of ``<procfs>/meminfo``; psutil on
    the live machine where that file is missing)."""

    name: ClassVar[str] = "swap"
    description: ClassVar[str] = "swap space"

    def read(self) -> list[Reading]:
        roots = self.roots()
        fields = _meminfo(roots)
        total: int | None
        used: int | None
        if fields is None and roots.real:
            psutil = _psutil()
            try:
                sw = psutil.swap_memory()
            except (OSError, RuntimeError, psutil.Error) as exc:
                return [_absent("swap.total", "total", "B", f"psutil: {exc}")]
            total, used = int(sw.total), int(sw.used)
        elif fields is None:
            return [_absent("swap.total", "total", "B", f"no {roots.path('proc/meminfo')}")]
        else:
            total, free = fields.get("SwapTotal"), fields.get("SwapFree")
            used = total - free if total is not None and free is not None else None
        if total is None:
            return [_absent("swap.total", "total", "B", "no SwapTotal in meminfo")]
        note = "" if total else "no swap configured"
        return [
            Reading("swap.total", "total", total, "B", note),
            Reading("swap.used", "used", used, "B", "" if used is not None else "no SwapFree"),
        ]


# -- this process ---------------------------------------------------------------------------------
class ProcessMonitor(RootedMonitor):
    """This process: resident set size now and its peak as recorded by the OS. It describes this
    process, not the machine, so with no ``root`` it reads the real ``/proc`` whatever the
    environment roots say."""

    name: ClassVar[str] = "process"
    description: ClassVar[str] = "this process's memory"

    def roots(self) -> Roots:
        root = self.root if self.root is not None else ROOT
        root = root if root is not None else REAL_ROOT
        return Roots(root / "proc", root / "sys")

    def read(self) -> list[Reading]:
        try:
            rss: int | None = current_rss_bytes()
            rss_note = ""
        except (OSError, _psutil().Error) as exc:  # (psutil only where /proc/self/statm is not)
            rss, rss_note = None, f"psutil: {exc}"
        peak, peak_note = self._peak()
        return [
            Reading("process.pid", "pid", os.getpid()),
            Reading("process.rss", "resident (RSS)", rss, "B", rss_note),
            Reading("process.peak_rss", "peak resident (HWM)", peak, "B", peak_note),
        ]

    def _peak(self) -> tuple[int | None, str]:
        roots = self.roots()
        status = _read_text(roots.path("proc/self/status"))
        if status is not None:
            match = re.search(r"^VmHWM:\s*(\d+)\s*kB", status, re.MULTILINE)
            if match:
                return int(match.group(1)) * 1024, ""
        if not roots.real:
            return None, "no VmHWM in proc/self/status"
        try:
            import resource
        except ImportError:
            return None, "no VmHWM and no resource module"
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is KiB on Linux and the BSDs, bytes on macOS.
        scale = 1 if platform.system() == "Darwin" else 1024
        return int(maxrss) * scale, "from getrusage"


# -- thermal zones --------------------------------------------------------------------------------
def _zone_number(path: Path) -> int:
    digits = path.name.removeprefix("thermal_zone")
    return int(digits) if digits.isdigit() else 1 << 30


class ThermalMonitor(RootedMonitor):
    """Linux thermal zones (``<sysfs>/class/thermal/thermal_zone*``), in °C: one reading per zone,
    then ``thermal.max``, the hottest readable zone (what a governor compares with its limit)."""

    name: ClassVar[str] = "thermal"
    description: ClassVar[str] = "temperatures of the thermal zones"

    def read(self) -> list[Reading]:
        base = self.path("sys/class/thermal")
        try:
            names = [n for n in os.listdir(base) if n.startswith("thermal_zone")]
        except OSError:
            names = []
        zones = sorted((base / n for n in names), key=_zone_number)
        if not zones:
            return [_absent("thermal.zones", "temperature", "°C", "no thermal zones"),
                    _absent("thermal.max", "hottest zone", "°C", "no thermal zones")]
        out = []
        hottest: tuple[float, str] | None = None  # (°C, zone label)
        for zone in zones:
            kind = _read_text(zone / "type") or "unknown"
            label = f"{kind} ({zone.name})"
            key = f"thermal.{zone.name.removeprefix('thermal_')}"
            millideg = _read_int(zone / "temp")
            if millideg is None:
                out.append(_absent(key, label, "°C", "temperature unreadable"))
                continue
            celsius = round(millideg / 1000, 1)
            out.append(Reading(key, label, celsius, "°C"))
            if hottest is None or celsius > hottest[0]:
                hottest = (celsius, label)
        if hottest is None:
            out.append(_absent("thermal.max", "hottest zone", "°C", "no zone temperature readable"))
        else:
            out.append(Reading("thermal.max", "hottest zone", hottest[0], "°C", hottest[1]))
        return out


# -- cgroup memory limit --------------------------------------------------------------------------
def _candidates(mount: Path, own: str | None) -> list[Path]:
    """Where this process's cgroup directory may be: its own path under the mount (on a host), then
    the mount itself (inside a container with a cgroup namespace, where the own path is ``/``)."""
    out = []
    if own and own.strip("/"):
        out.append(mount / own.strip("/"))
    out.append(mount)
    return out


class CgroupMonitor(RootedMonitor):
    """The cgroup memory limit and usage of this process (v2 ``memory.max``/``memory.current``, v1
    ``memory.limit_in_bytes``/``memory.usage_in_bytes``), and how often the cgroup hit its limits
    (v2 ``memory.events``: ``events_high``, the times reclaim was forced for going over
    ``memory.high``, and ``events_max``, the times usage reached ``memory.max``; v1 only has the
    latter, as ``memory.failcnt``). A limit of ``max`` (v2) or about 2**63 (v1) means no limit: the
    limit reading is then ``None`` and ``cgroup.limited`` is ``False``. The own cgroup comes from
    ``<procfs>/self/cgroup``; the hierarchy is the one mounted at ``<sysfs>/fs/cgroup`` (v2) or
    ``<sysfs>/fs/cgroup/memory`` (v1)."""

    name: ClassVar[str] = "cgroup"
    description: ClassVar[str] = "container (cgroup) memory limit"

    def read(self) -> list[Reading]:
        roots = self.roots()
        v2_path, v1_path = own_cgroup_paths(_read_text(roots.path("proc/self/cgroup")) or "")
        for directory in _candidates(roots.path("sys/fs/cgroup"), v2_path):
            if (directory / "memory.max").is_file():
                return self._v2(directory)
        for directory in _candidates(roots.path("sys/fs/cgroup/memory"), v1_path):
            if (directory / "memory.limit_in_bytes").is_file():
                return self._v1(directory)
        return [
            _absent("cgroup.version", "cgroup version", "", "no cgroup memory controller"),
        ]

    def _v2(self, directory: Path) -> list[Reading]:
        raw = _read_text(directory / "memory.max")
        if raw == "max":
            limited: bool | None = False
            limit, note = None, "no limit (memory.max is 'max')"
        else:
            limit = _int_or_none(raw) if raw is not None else None
            limited = True if limit is not None else None
            note = "" if limit is not None else "memory.max unreadable"
        events = _read_text(directory / "memory.events")
        missing = "" if events is not None else "no memory.events"
        high, high_note = keyed_value(events, "high"), missing
        hits, hits_note = keyed_value(events, "max"), missing
        if events is not None:
            high_note = "" if high is not None else "no 'high' in memory.events"
            hits_note = "" if hits is not None else "no 'max' in memory.events"
        return [*self._readings(2, limited, limit, note,
                                _read_int(directory / "memory.current"),
                                _read_int(directory / "memory.peak"), "memory.peak"),
                Reading("cgroup.events_high", "times over memory.high", high, "", high_note),
                Reading("cgroup.events_max", "times at memory.max", hits, "", hits_note)]

    def _v1(self, directory: Path) -> list[Reading]:
        raw = _read_int(directory / "memory.limit_in_bytes")
        if raw is None:
            limited: bool | None = None
            limit, note = None, "memory.limit_in_bytes unreadable"
        elif raw >= V1_UNLIMITED:
            limited, limit, note = False, None, "no limit"
        else:
            limited, limit, note = True, raw, ""
        failcnt = _read_int(directory / "memory.failcnt")
        return [*self._readings(1, limited, limit, note,
                                _read_int(directory / "memory.usage_in_bytes"),
                                _read_int(directory / "memory.max_usage_in_bytes"),
                                "memory.max_usage_in_bytes"),
                _absent("cgroup.events_high", "times over memory.high", "",
                        "cgroup v1 has no memory.high"),
                Reading("cgroup.events_max", "times at the limit", failcnt, "",
                        "memory.failcnt" if failcnt is not None else "no memory.failcnt")]

    @staticmethod
    def _readings(version: int, limited: bool | None, limit: int | None, note: str,
                  current: int | None, peak: int | None, peak_file: str) -> list[Reading]:
        return [
            Reading("cgroup.version", "cgroup version", version),
            Reading("cgroup.limited", "memory limited", limited, "",
                    "" if limited is not None else note),
            Reading("cgroup.memory_limit", "memory limit", limit, "B", note),
            Reading("cgroup.memory_current", "memory in use", current, "B",
                    "" if current is not None else "usage unreadable"),
            Reading("cgroup.memory_peak", "memory peak", peak, "B",
                    "" if peak is not None else f"no {peak_file}"),
        ]


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


# -- memory pressure (PSI) ------------------------------------------------------------------------
def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """A pressure-stall file (``some avg10=0.12 avg60=... total=...`` and a ``full`` line) as
    ``{"some": {"avg10": 0.12, ...}, "full": {...}}``; fields that are not numbers are left out."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, *fields = line.split() or [""]
        values: dict[str, float] = {}
        for field in fields:
            name, _, value = field.partition("=")
            try:
                values[name] = float(value)
            except ValueError:
                continue
        if kind:
            out[kind] = values
    return out


class PressureMonitor(RootedMonitor):
    """Memory pressure stall information from ``<procfs>/pressure/memory`` (Linux 4.20+ with PSI
    on): the share of the last 10 s in which some task (``some``) or every non-idle task (``full``)
    waited for memory, in %. It rises as the kernel reclaims and swaps, before free memory runs out,
    so a governor can give memory back early. Absent where the kernel has no PSI (or has it off:
    ``psi=0``, the Raspberry Pi kernels' default, makes the file unreadable)."""

    name: ClassVar[str] = "pressure"
    description: ClassVar[str] = "memory pressure stall (PSI)"

    def read(self) -> list[Reading]:
        text = _read_text(self.path("proc/pressure/memory"))
        psi = parse_psi(text) if text is not None else {}
        out = []
        for kind, label in (("some", "some task stalled on memory (10 s)"),
                            ("full", "all tasks stalled on memory (10 s)")):
            key = f"pressure.memory_{kind}_avg10"
            value = psi.get(kind, {}).get("avg10")
            if text is None:
                out.append(_absent(key, label, "%", "no pressure/memory (no PSI in this kernel)"))
            elif value is None:
                out.append(_absent(key, label, "%", f"no '{kind} avg10' in pressure/memory"))
            else:
                out.append(Reading(key, label, value, "%"))
        return out


# -- Raspberry Pi throttling ----------------------------------------------------------------------
def parse_throttled(text: str) -> int | None:
    """The throttled word from ``vcgencmd get_throttled`` output (``throttled=0x50005``) or the
    firmware sysfs file (hex, with or without ``0x``); ``None`` if it is not hex."""
    value = text.strip().rpartition("=")[2].strip()
    try:
        return int(value, 16)
    except ValueError:
        return None


def decode_throttled(word: int) -> dict[str, bool]:
    """Each flag of :data:`THROTTLE_BITS` by key, set or not in ``word``."""
    return {key: bool(word >> bit & 1) for bit, key, _ in THROTTLE_BITS}


def _run_command(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=VCGENCMD_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


class ThrottlingMonitor(RootedMonitor):
    """Raspberry Pi under-voltage and throttling flags, from the firmware's sysfs file
    (``<sysfs>/devices/platform/soc/soc:firmware/get_throttled``) or, when that is not readable,
    ``vcgencmd get_throttled``.

    ``vcgencmd`` is the command name or path to run when given; by default ``vcgencmd`` on ``PATH``,
    and only when reading the live machine (a fake tree never runs a command). ``allow_commands=False``
    never runs one (a command takes milliseconds, too long for a governor's reading).
    """

    name: ClassVar[str] = "throttling"
    description: ClassVar[str] = "Raspberry Pi under-voltage and throttling flags"

    def __init__(self, root: Path | None = None, vcgencmd: str | None = None,
                 allow_commands: bool = True) -> None:
        super().__init__(root)
        self.vcgencmd = vcgencmd
        self.allow_commands = allow_commands

    def read(self) -> list[Reading]:
        word, source = self._word()
        if word is None:
            return [_absent("throttling.raw", "throttled word", "", source)]
        flags = decode_throttled(word)
        out = [Reading("throttling.raw", "throttled word", f"0x{word:x}", "", f"from {source}")]
        out += [Reading(f"throttling.{key}", label, flags[key]) for _, key, label in THROTTLE_BITS]
        return out

    def _word(self) -> tuple[int | None, str]:
        """The throttled word and where it came from, or ``None`` and why not."""
        roots = self.roots()
        text = _read_text(roots.path(FIRMWARE_THROTTLED))
        if text:
            word = parse_throttled(text)
            if word is not None:
                return word, "firmware sysfs"
        if not self.allow_commands:
            return None, "no firmware get_throttled (not a Raspberry Pi?); vcgencmd not run"
        name = self.vcgencmd or ("vcgencmd" if roots.real else None)
        command = shutil.which(name) if name else None
        if command is None:
            return None, "not a Raspberry Pi (no firmware get_throttled, no vcgencmd)"
        output = _run_command([command, "get_throttled"])
        word = parse_throttled(output) if output is not None else None
        if word is None:
            return None, "vcgencmd get_throttled failed or printed no hex word"
        return word, "vcgencmd"


BUILTIN_MONITORS: tuple[type[SystemMonitor], ...] = (
    DeviceMonitor,
    CpuMonitor,
    MemoryMonitor,
    SwapMonitor,
    ProcessMonitor,
    ThermalMonitor,
    CgroupMonitor,
    PressureMonitor,
    ThrottlingMonitor,
)


@hookimpl
def edgert_register_monitors(register: Callable[[type[SystemMonitor]], None]) -> None:
    for cls in BUILTIN_MONITORS:
        register(cls)
