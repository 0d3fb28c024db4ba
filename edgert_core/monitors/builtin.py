"""The built-in system monitors: CPU, memory, swap, this process, thermal zones, the cgroup memory
limit, Raspberry Pi throttling and the device model.

They read psutil and Linux pseudo-files (``/proc``, ``/sys``). Every file path is taken relative to
a root directory (``root`` argument, default :data:`ROOT`) so tests can fake a sysfs tree in a
temporary directory. A sensor this machine does not have is a reading with value ``None`` and a note
saying why, never an exception.

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
from pathlib import Path
from typing import ClassVar

import psutil

from edgert_core.hookspecs import hookimpl
from edgert_core.memory.cgroup import V1_UNLIMITED, own_cgroup_paths
from edgert_core.monitors.base import Reading, SystemMonitor

#: The filesystem root the monitors read ``proc``/``sys`` files under when given no ``root``.
ROOT = Path("/")


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
    """The stripped text of a pseudo-file, or ``None`` if it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _absent(key: str, label: str, unit: str, note: str) -> Reading:
    return Reading(key, label, None, unit, note)


class RootedMonitor(SystemMonitor):
    """A monitor that reads files under a root directory (``/`` on a real machine)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else ROOT

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def real_root(self) -> bool:
        """Whether this monitor reads the live machine, where psutil and commands also apply."""
        return self.root.resolve() == Path("/").resolve()


# -- device ---------------------------------------------------------------------------------------
class DeviceMonitor(RootedMonitor):
    """The board model (from the device tree), CPU architecture and kernel."""

    name: ClassVar[str] = "device"
    description: ClassVar[str] = "board model, architecture and kernel"

    MODEL_FILES = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")

    def read(self) -> list[Reading]:
        model = None
        for relative in self.MODEL_FILES:
            text = _read_text(self.path(relative))
            if text:
                model = text.replace("\x00", "").strip() or None
                break
        readings = [
            Reading("device.model", "model", model, "", "" if model else "no device-tree model"),
        ]
        if self.real_root:
            readings.append(Reading("device.arch", "architecture", platform.machine() or None))
            kernel = f"{platform.system()} {platform.release()}".strip()
            readings.append(Reading("device.kernel", "kernel", kernel or None))
        return readings


# -- CPU ------------------------------------------------------------------------------------------
class CpuMonitor(RootedMonitor):
    """Load averages, busy percent per core and overall, core counts and clock frequency.

    Load averages and frequencies come from files under ``root``; usage and core counts always
    come from psutil, that is from the live machine.

    ``interval`` is how long (seconds) the busy percentage is sampled over; ``0`` does not block and
    reports the usage since the previous call in this process (meaningless on the first call).
    """

    name: ClassVar[str] = "cpu"
    description: ClassVar[str] = "load, usage, core count and frequency"

    def __init__(self, root: Path | None = None, interval: float = 0.1) -> None:
        super().__init__(root)
        self.interval = interval

    def read(self) -> list[Reading]:
        return [*self._load(), *self._percent(), *self._counts(), *self._frequency()]

    def _load(self) -> list[Reading]:
        text = _read_text(self.path("proc/loadavg"))
        loads: list[float] | None = None
        if text is not None:
            try:
                loads = [float(part) for part in text.split()[:3]]
            except ValueError:
                loads = None
        if loads is None and self.real_root and hasattr(os, "getloadavg"):
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
        logical = psutil.cpu_count(logical=True)
        physical = psutil.cpu_count(logical=False)
        return [
            Reading("cpu.logical", "logical cores", logical, "",
                    "" if logical else "core count not available"),
            Reading("cpu.physical", "physical cores", physical, "",
                    "" if physical else "physical core count not available"),
        ]

    def _frequency(self) -> list[Reading]:
        """MHz from cpufreq sysfs (kHz files) for core 0, else psutil; ``0`` counts as absent."""
        base = self.path("sys/devices/system/cpu/cpu0/cpufreq")
        files = {"current": "scaling_cur_freq", "min": "cpuinfo_min_freq",
                 "max": "cpuinfo_max_freq"}
        mhz: dict[str, float | None] = {}
        for what, filename in files.items():
            khz = _read_int(base / filename)
            mhz[what] = khz / 1000 if khz else None
        missing = "no cpufreq"
        if all(v is None for v in mhz.values()) and self.real_root:
            missing = "not reported (no cpufreq, psutil gives none)"
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
class MemoryMonitor(SystemMonitor):
    """System RAM: total, available and used percent."""

    name: ClassVar[str] = "memory"
    description: ClassVar[str] = "system RAM"

    def read(self) -> list[Reading]:
        vm = psutil.virtual_memory()
        return [
            Reading("memory.total", "total", int(vm.total), "B"),
            Reading("memory.available", "available", int(vm.available), "B"),
            Reading("memory.percent", "used", float(vm.percent), "%"),
        ]


class SwapMonitor(SystemMonitor):
    """Swap space: total and used."""

    name: ClassVar[str] = "swap"
    description: ClassVar[str] = "swap space"

    def read(self) -> list[Reading]:
        try:
            sw = psutil.swap_memory()
        except (OSError, RuntimeError, psutil.Error) as exc:
            return [_absent("swap.total", "total", "B", f"psutil: {exc}")]
        note = "" if sw.total else "no swap configured"
        return [
            Reading("swap.total", "total", int(sw.total), "B", note),
            Reading("swap.used", "used", int(sw.used), "B"),
        ]


# -- this process ---------------------------------------------------------------------------------
class ProcessMonitor(RootedMonitor):
    """This process: resident set size now and its peak as recorded by the OS."""

    name: ClassVar[str] = "process"
    description: ClassVar[str] = "this process's memory"

    def read(self) -> list[Reading]:
        try:
            rss: int | None = int(psutil.Process().memory_info().rss)
            rss_note = ""
        except (OSError, psutil.Error) as exc:
            rss, rss_note = None, f"psutil: {exc}"
        peak, peak_note = self._peak()
        return [
            Reading("process.pid", "pid", os.getpid()),
            Reading("process.rss", "resident (RSS)", rss, "B", rss_note),
            Reading("process.peak_rss", "peak resident (HWM)", peak, "B", peak_note),
        ]

    def _peak(self) -> tuple[int | None, str]:
        status = _read_text(self.path("proc/self/status"))
        if status is not None:
            match = re.search(r"^VmHWM:\s*(\d+)\s*kB", status, re.MULTILINE)
            if match:
                return int(match.group(1)) * 1024, ""
        if not self.real_root:
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
    """Linux thermal zones (``/sys/class/thermal/thermal_zone*``), in °C."""

    name: ClassVar[str] = "thermal"
    description: ClassVar[str] = "temperatures of the thermal zones"

    def read(self) -> list[Reading]:
        zones = sorted(self.path("sys/class/thermal").glob("thermal_zone*"), key=_zone_number)
        if not zones:
            return [_absent("thermal.zones", "temperature", "°C", "no thermal zones")]
        out = []
        for zone in zones:
            kind = _read_text(zone / "type") or "unknown"
            label = f"{kind} ({zone.name})"
            key = f"thermal.{zone.name.removeprefix('thermal_')}"
            millideg = _read_int(zone / "temp")
            if millideg is None:
                out.append(_absent(key, label, "°C", "temperature unreadable"))
            else:
                out.append(Reading(key, label, round(millideg / 1000, 1), "°C"))
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
    ``memory.limit_in_bytes``/``memory.usage_in_bytes``). A limit of ``max`` (v2) or about 2**63
    (v1) means no limit: the limit reading is then ``None`` and ``cgroup.limited`` is ``False``."""

    name: ClassVar[str] = "cgroup"
    description: ClassVar[str] = "container (cgroup) memory limit"

    def read(self) -> list[Reading]:
        v2_path, v1_path = own_cgroup_paths(_read_text(self.path("proc/self/cgroup")) or "")
        for directory in _candidates(self.path("sys/fs/cgroup"), v2_path):
            if (directory / "memory.max").is_file():
                return self._v2(directory)
        for directory in _candidates(self.path("sys/fs/cgroup/memory"), v1_path):
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
        return self._readings(2, limited, limit, note,
                              _read_int(directory / "memory.current"),
                              _read_int(directory / "memory.peak"), "memory.peak")

    def _v1(self, directory: Path) -> list[Reading]:
        raw = _read_int(directory / "memory.limit_in_bytes")
        if raw is None:
            limited: bool | None = None
            limit, note = None, "memory.limit_in_bytes unreadable"
        elif raw >= V1_UNLIMITED:
            limited, limit, note = False, None, "no limit"
        else:
            limited, limit, note = True, raw, ""
        return self._readings(1, limited, limit, note,
                              _read_int(directory / "memory.usage_in_bytes"),
                              _read_int(directory / "memory.max_usage_in_bytes"),
                              "memory.max_usage_in_bytes")

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
    """Raspberry Pi under-voltage and throttling flags, from the firmware's sysfs file or, when that
    is not readable, ``vcgencmd get_throttled``.

    ``vcgencmd`` is the command name or path to run; by default ``vcgencmd`` on ``PATH``, and only
    when reading the live machine (``root`` is ``/``).
    """

    name: ClassVar[str] = "throttling"
    description: ClassVar[str] = "Raspberry Pi under-voltage and throttling flags"

    def __init__(self, root: Path | None = None, vcgencmd: str | None = None) -> None:
        super().__init__(root)
        self.vcgencmd = vcgencmd

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
        text = _read_text(self.path(FIRMWARE_THROTTLED))
        if text:
            word = parse_throttled(text)
            if word is not None:
                return word, "firmware sysfs"
        name = self.vcgencmd or ("vcgencmd" if self.real_root else None)
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
    ThrottlingMonitor,
)


@hookimpl
def edgert_register_monitors(register: Callable[[type[SystemMonitor]], None]) -> None:
    for cls in BUILTIN_MONITORS:
        register(cls)
