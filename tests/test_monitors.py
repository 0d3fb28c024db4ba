"""The built-in monitors over fake sysfs trees (a Raspberry Pi, cgroup v1/v2 containers, a bare
machine) and over the real machine."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psutil
import pytest

from edgert_core.monitors import Reading, SystemMonitor, builtin
from edgert_core.monitors.builtin import (
    BUILTIN_MONITORS,
    CgroupMonitor,
    CpuMonitor,
    DeviceMonitor,
    ProcessMonitor,
    ThermalMonitor,
    ThrottlingMonitor,
    decode_throttled,
    parse_throttled,
)
from edgert_core.plugins import load_registry

PI_MODEL = "Raspberry Pi 4 Model B Rev 1.4"


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def by_key(readings: list[Reading]) -> dict[str, Reading]:
    keys = [r.key for r in readings]
    assert len(keys) == len(set(keys)), f"duplicate keys: {keys}"
    return {r.key: r for r in readings}


@pytest.fixture
def pi_root(tmp_path: Path) -> Path:
    """A Raspberry Pi 4: device-tree model (NUL-terminated, as the kernel writes it), two thermal
    zones listed out of order, cpufreq in kHz, VmHWM, and throttled flags 0x50005."""
    write(tmp_path, "proc/device-tree/model", PI_MODEL + "\x00")
    write(tmp_path, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "48312\n")
    write(tmp_path, "sys/class/thermal/thermal_zone10/type", "gpu-thermal\n")
    write(tmp_path, "sys/class/thermal/thermal_zone10/temp", "51000\n")
    write(tmp_path, "sys/class/thermal/thermal_zone2/type", "broken\n")
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "1500000\n")
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_min_freq", "600000\n")
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "1800000\n")
    write(tmp_path, "proc/loadavg", "1.50 0.75 0.25 2/91 4418\n")
    write(tmp_path, "proc/self/status", "Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t 1000 kB\n")
    write(tmp_path, "sys/devices/platform/soc/soc:firmware/get_throttled", "50005\n")
    return tmp_path


# -- throttling -----------------------------------------------------------------------------------
def test_decode_throttled_bits() -> None:
    flags = decode_throttled(0x50005)
    assert flags == {
        "under_voltage": True,
        "freq_capped": False,
        "throttled": True,
        "soft_temp_limit": False,
        "under_voltage_occurred": True,
        "freq_capped_occurred": False,
        "throttled_occurred": True,
        "soft_temp_limit_occurred": False,
    }
    assert not any(decode_throttled(0).values())
    assert all(decode_throttled(0xF000F).values())
    only_soft = decode_throttled(0x80008)
    assert [k for k, v in only_soft.items() if v] == ["soft_temp_limit", "soft_temp_limit_occurred"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("throttled=0x50005\n", 0x50005), ("0x0", 0), ("50000\n", 0x50000), ("garbage", None)],
)
def test_parse_throttled(text: str, expected: int | None) -> None:
    assert parse_throttled(text) == expected


def test_pi_throttling_from_firmware_sysfs(pi_root: Path) -> None:
    readings = by_key(ThrottlingMonitor(root=pi_root).read())
    assert readings["throttling.raw"].value == "0x50005"
    assert "firmware" in readings["throttling.raw"].note
    assert readings["throttling.under_voltage"].value is True
    assert readings["throttling.freq_capped"].value is False
    assert readings["throttling.throttled"].value is True
    assert readings["throttling.soft_temp_limit"].value is False
    assert readings["throttling.under_voltage_occurred"].value is True
    assert readings["throttling.throttled_occurred"].value is True
    assert readings["throttling.soft_temp_limit_occurred"].value is False


def test_throttling_from_vcgencmd(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "vcgencmd"
    script.parent.mkdir()
    script.write_text('#!/bin/sh\n[ "$1" = get_throttled ] && echo "throttled=0x80008"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    readings = by_key(ThrottlingMonitor(root=tmp_path, vcgencmd=str(script)).read())
    assert readings["throttling.raw"].value == "0x80008"
    assert readings["throttling.raw"].note == "from vcgencmd"
    assert readings["throttling.soft_temp_limit"].value is True
    assert readings["throttling.throttled"].value is False


def test_throttling_absent_on_bare_machine(tmp_path: Path) -> None:
    readings = ThrottlingMonitor(root=tmp_path).read()
    assert len(readings) == 1
    assert readings[0].value is None
    assert "not a Raspberry Pi" in readings[0].note


# -- device, thermal, cpu, process on the Pi tree -------------------------------------------------
def test_pi_device_model(pi_root: Path) -> None:
    readings = by_key(DeviceMonitor(root=pi_root).read())
    assert readings["device.model"].value == PI_MODEL


def test_pi_thermal_zones_in_numeric_order(pi_root: Path) -> None:
    readings = ThermalMonitor(root=pi_root).read()
    assert [r.key for r in readings] == ["thermal.zone0", "thermal.zone2", "thermal.zone10",
                                         "thermal.max"]
    zone0, zone2, zone10, hottest = readings
    assert zone0.value == pytest.approx(48.3)
    assert zone0.unit == "°C"
    assert "cpu-thermal" in zone0.label
    assert zone2.value is None  # type file but no temp: absent, not an error
    assert zone2.note == "temperature unreadable"
    assert zone10.value == pytest.approx(51.0)
    assert hottest.value == pytest.approx(51.0)  # the hottest readable zone
    assert "gpu-thermal" in hottest.note


def test_pi_cpu_frequency_and_load_from_files(pi_root: Path) -> None:
    readings = by_key(CpuMonitor(root=pi_root, interval=0).read())
    assert readings["cpu.freq_current"].value == pytest.approx(1500.0)
    assert readings["cpu.freq_min"].value == pytest.approx(600.0)
    assert readings["cpu.freq_max"].value == pytest.approx(1800.0)
    assert readings["cpu.load_1m"].value == pytest.approx(1.5)
    assert readings["cpu.load_15m"].value == pytest.approx(0.25)


def test_pi_process_peak_from_vmhwm(pi_root: Path) -> None:
    readings = by_key(ProcessMonitor(root=pi_root).read())
    assert readings["process.peak_rss"].value == 204800 * 1024


# -- cgroup ---------------------------------------------------------------------------------------
def test_cgroup_v2_with_limit(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", "536870912\n")
    write(tmp_path, "sys/fs/cgroup/memory.current", "104857600\n")
    readings = by_key(CgroupMonitor(root=tmp_path).read())
    assert readings["cgroup.version"].value == 2
    assert readings["cgroup.limited"].value is True
    assert readings["cgroup.memory_limit"].value == 512 * 2**20
    assert readings["cgroup.memory_current"].value == 100 * 2**20
    assert readings["cgroup.memory_peak"].value is None  # no memory.peak on older kernels


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/memory.max", "max\n")
    write(tmp_path, "sys/fs/cgroup/memory.current", "4096\n")
    write(tmp_path, "sys/fs/cgroup/memory.peak", "8192\n")
    readings = by_key(CgroupMonitor(root=tmp_path).read())
    assert readings["cgroup.limited"].value is False
    assert readings["cgroup.memory_limit"].value is None
    assert "no limit" in readings["cgroup.memory_limit"].note
    assert readings["cgroup.memory_current"].value == 4096
    assert readings["cgroup.memory_peak"].value == 8192


def test_cgroup_v2_own_path_from_proc_self_cgroup(tmp_path: Path) -> None:
    """On a host (no cgroup namespace) the process's own cgroup directory holds the limit."""
    write(tmp_path, "proc/self/cgroup", "0::/system.slice/edge.service\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", "max\n")  # no memory.max at the real root,
    write(tmp_path, "sys/fs/cgroup/system.slice/edge.service/memory.max", "1073741824\n")
    readings = by_key(CgroupMonitor(root=tmp_path).read())
    assert readings["cgroup.memory_limit"].value == 2**30


def test_cgroup_v1_with_limit(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "4:memory:/docker/abc\n0::/\n")
    write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "268435456\n")
    write(tmp_path, "sys/fs/cgroup/memory/memory.usage_in_bytes", "1048576\n")
    write(tmp_path, "sys/fs/cgroup/memory/memory.max_usage_in_bytes", "2097152\n")
    readings = by_key(CgroupMonitor(root=tmp_path).read())
    assert readings["cgroup.version"].value == 1
    assert readings["cgroup.limited"].value is True
    assert readings["cgroup.memory_limit"].value == 256 * 2**20
    assert readings["cgroup.memory_current"].value == 2**20
    assert readings["cgroup.memory_peak"].value == 2 * 2**20


def test_cgroup_v1_huge_limit_means_no_limit(tmp_path: Path) -> None:
    # what a 4 KiB-page kernel reports for "no limit"
    write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    readings = by_key(CgroupMonitor(root=tmp_path).read())
    assert readings["cgroup.limited"].value is False
    assert readings["cgroup.memory_limit"].value is None


def test_cgroup_unreadable_limit_is_absent_not_error(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/memory.max", "nonsense\n")
    readings = by_key(CgroupMonitor(root=tmp_path).read())
    assert readings["cgroup.limited"].value is None
    assert readings["cgroup.memory_limit"].value is None
    assert readings["cgroup.memory_limit"].note == "memory.max unreadable"


# -- a bare machine -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [DeviceMonitor, ThermalMonitor, CgroupMonitor, ThrottlingMonitor])
def test_bare_machine_sensors_are_absent(tmp_path: Path, cls: type[builtin.RootedMonitor]) -> None:
    readings = cls(root=tmp_path).read()
    assert readings, f"{cls.name} returned no readings"
    first = readings[0]
    assert first.value is None
    assert not first.present
    assert first.note, f"{cls.name} gave no reason for the absent sensor"


def test_bare_machine_no_thermal_zones(tmp_path: Path) -> None:
    (tmp_path / "sys/class/thermal").mkdir(parents=True)  # the class exists, with no zones
    readings = ThermalMonitor(root=tmp_path).read()
    assert readings == [Reading("thermal.zones", "temperature", None, "°C", "no thermal zones"),
                        Reading("thermal.max", "hottest zone", None, "°C", "no thermal zones")]


def test_bare_machine_cpu_has_no_frequency_files(tmp_path: Path) -> None:
    readings = by_key(CpuMonitor(root=tmp_path, interval=0).read())
    assert readings["cpu.freq_max"].value is None
    assert readings["cpu.load_1m"].value is None
    assert readings["cpu.logical"].value == psutil.cpu_count()  # psutil: always the live machine


def test_module_root_constant_redirects_default_monitors(
    pi_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Monitors built with no arguments (as the registry builds them) read under ``ROOT``."""
    monkeypatch.setattr(builtin, "ROOT", pi_root)
    readings = by_key(DeviceMonitor().read())
    assert readings["device.model"].value == PI_MODEL


# -- the real machine -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", BUILTIN_MONITORS, ids=lambda c: c.name)
def test_real_machine_read_does_not_raise(cls: type[SystemMonitor]) -> None:
    readings = cls().read()
    assert readings
    for r in readings:
        assert isinstance(r, Reading)
        assert r.key.startswith(cls.name + ".")
        assert r.present or r.note, f"{r.key} is absent without a note"


def test_real_machine_memory_matches_psutil() -> None:
    readings = by_key(builtin.MemoryMonitor().read())
    total = readings["memory.total"].value
    available = readings["memory.available"].value
    assert isinstance(total, int) and isinstance(available, int)
    assert total == psutil.virtual_memory().total
    assert 64 * 2**20 < total < 2**50
    assert 0 < available <= total
    percent = readings["memory.percent"].value
    assert isinstance(percent, float) and 0.0 <= percent <= 100.0


def test_real_machine_process_rss_is_plausible() -> None:
    readings = by_key(ProcessMonitor().read())
    rss, peak = readings["process.rss"].value, readings["process.peak_rss"].value
    assert readings["process.pid"].value == os.getpid()
    assert isinstance(rss, int) and isinstance(peak, int)
    assert 2**20 < rss <= psutil.virtual_memory().total
    assert peak >= rss * 0.9  # the peak cannot be well below the current size


def test_real_machine_cpu_percent_in_range() -> None:
    readings = by_key(CpuMonitor(interval=0.05).read())
    percent = readings["cpu.percent"].value
    assert isinstance(percent, float) and 0.0 <= percent <= 100.0
    logical = psutil.cpu_count()
    assert logical is not None
    assert f"cpu.percent.core{logical - 1}" in readings


def test_registry_lists_every_builtin_monitor() -> None:
    registry = load_registry(entry_points=False)
    names = {m.name for m in registry.monitors()}
    assert names == {cls.name for cls in BUILTIN_MONITORS}
