"""The environment roots (``EDGERT_PROCFS_ROOT``, ``EDGERT_SYSFS_ROOT``) over the shipped Raspberry Pi
4 tree: the machine monitors, ``--memory-budget auto``'s figures and ``edge-rt status`` read the fake
device, re-read it at every reading, and leave what describes this process to the real ``/proc``;
and the :class:`ReadingSampler` a governor reads through.

Every test works on a copy of ``tests/fixtures/pi4`` in ``tmp_path``: the shipped tree is never
written."""

from __future__ import annotations

import contextlib
import json
import shutil
import stat
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

import edgert_core.cli.status_cmd  # noqa: F401  (registers the command)
from edgert_core.cli.app import app
from edgert_core.errors import MemoryLimitError
from edgert_core.memory import auto_budget, cgroup
from edgert_core.memory.auto_budget import AUTO_MARGIN_BYTES, parse_meminfo
from edgert_core.monitors import Reading, SystemMonitor, builtin
from edgert_core.monitors.builtin import (
    CgroupMonitor,
    CpuMonitor,
    DeviceMonitor,
    MemoryMonitor,
    PressureMonitor,
    ProcessMonitor,
    SwapMonitor,
    ThermalMonitor,
    ThrottlingMonitor,
    parse_psi,
)
from edgert_core.monitors.roots import MonitorRootError, procfs_root, simulated, sysfs_root
from edgert_core.monitors.sampler import ReadingSampler, machine_monitors
from edgert_core.status import collect_status

SHIPPED = Path(__file__).parent / "fixtures" / "pi4"
PI_MODEL = "Raspberry Pi 4 Model B Rev 1.4"
KIB, MIB = 1024, 1 << 20
SCOPE = "sys/fs/cgroup/user.slice/user-1000.slice/session-1.scope"
#: The shipped session's memory.current and what of it is clean, unmapped page cache
#: (active_file + inactive_file - (file_mapped - shmem) - file_dirty - file_writeback of its
#: memory.stat: mapped shared memory lives on the anon lists, so it takes nothing off the file ones).
PI_CURRENT = 429551616
PI_RECLAIMABLE = 90779648 + 57622528 - (92143616 - 9789440) - 12288
PI_HELD = PI_CURRENT - PI_RECLAIMABLE


def by_key(readings: list[Reading]) -> dict[str, Reading]:
    keys = [r.key for r in readings]
    assert len(keys) == len(set(keys)), f"duplicate keys: {keys}"
    return {r.key: r for r in readings}


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


@pytest.fixture
def pi(pi4: Path) -> Path:
    """A copy of the shipped Pi 4 tree, with the environment roots pointing into it (conftest.py)."""
    return pi4


# -- the roots ------------------------------------------------------------------------------------
def test_roots_default_to_the_real_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGERT_PROCFS_ROOT", raising=False)
    monkeypatch.setenv("EDGERT_SYSFS_ROOT", "")  # empty counts as unset
    assert procfs_root() == Path("/proc")
    assert sysfs_root() == Path("/sys")
    assert not simulated()


def test_roots_follow_the_environment_at_every_call(pi: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert procfs_root() == pi / "proc" and sysfs_root() == pi / "sys"
    assert simulated()
    thermal = ThermalMonitor()
    assert by_key(thermal.read())["thermal.max"].value == pytest.approx(52.6)
    other = tmp_path / "other"
    shutil.copytree(SHIPPED / "sys", other / "sys")
    (other / "sys/class/thermal/thermal_zone0/temp").write_text("71000\n")
    monkeypatch.setenv("EDGERT_SYSFS_ROOT", str(other / "sys"))
    assert by_key(thermal.read())["thermal.max"].value == pytest.approx(71.0)  # same instance


def test_a_root_that_is_not_a_directory_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGERT_SYSFS_ROOT", str(tmp_path / "no-such-dir"))
    with pytest.raises(MonitorRootError, match=r"EDGERT_SYSFS_ROOT=.*no-such-dir is not a directory"):
        ThermalMonitor().read()
    status = collect_status(monitors=[ThermalMonitor(), ProcessMonitor()])
    thermal, process = status.sections
    assert thermal.error is not None and "not a directory" in thermal.error
    assert process.ok  # this process is read from the real /proc, whatever the roots say
    monkeypatch.setenv("EDGERT_PROCFS_ROOT", str(tmp_path / "nor-this"))
    with pytest.raises(MonitorRootError, match="EDGERT_PROCFS_ROOT"):
        auto_budget.mem_available()


# -- each machine monitor reads the Pi ------------------------------------------------------------
def test_device_model_of_the_pi(pi: Path) -> None:
    readings = by_key(DeviceMonitor().read())
    assert readings["device.model"].value == PI_MODEL  # the trailing NUL is dropped
    assert "device.arch" not in readings  # the host's architecture is not the Pi's


def test_thermal_of_the_pi(pi: Path) -> None:
    readings = by_key(ThermalMonitor().read())
    assert list(readings) == ["thermal.zone0", "thermal.max"]
    assert readings["thermal.zone0"].value == pytest.approx(52.6)
    assert "cpu-thermal" in readings["thermal.zone0"].label
    assert readings["thermal.max"].value == pytest.approx(52.6)
    assert readings["thermal.max"].unit == "°C"


def test_throttling_of_the_pi_is_all_clear(pi: Path) -> None:
    readings = by_key(ThrottlingMonitor().read())
    assert readings["throttling.raw"].value == "0x0"
    assert readings["throttling.raw"].note == "from firmware sysfs"
    flags = {k: r.value for k, r in readings.items() if k != "throttling.raw"}
    assert len(flags) == 8 and set(flags.values()) == {False}


def test_a_fake_tree_never_runs_vcgencmd(pi: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the firmware file a fake tree reads as "not a Pi": a ``vcgencmd`` on PATH is not run."""
    (pi / "sys/devices/platform/soc/soc:firmware/get_throttled").unlink()
    marker = tmp_path / "ran"
    script = tmp_path / "bin" / "vcgencmd"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\ntouch "{marker}"\necho throttled=0x50005\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert shutil.which("vcgencmd") == str(script)
    readings = ThrottlingMonitor().read()
    assert [r.key for r in readings] == ["throttling.raw"]
    assert readings[0].value is None and "not a Raspberry Pi" in readings[0].note
    assert not marker.exists()


def test_commands_off_never_runs_vcgencmd_even_on_the_real_root(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(argv: list[str]) -> str | None:
        raise AssertionError(f"ran {argv}")

    monkeypatch.setattr(builtin, "_run_command", refuse)
    script = tmp_path / "vcgencmd"
    script.write_text("#!/bin/sh\necho throttled=0x0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    readings = ThrottlingMonitor(root=tmp_path, vcgencmd=str(script), allow_commands=False).read()
    assert readings[0].value is None and "vcgencmd not run" in readings[0].note


def test_memory_and_swap_of_the_pi(pi: Path) -> None:
    memory = by_key(MemoryMonitor().read())
    assert memory["memory.total"].value == 3884328 * KIB
    assert memory["memory.available"].value == 3126412 * KIB
    assert memory["memory.percent"].value == pytest.approx(19.5)
    swap = by_key(SwapMonitor().read())
    assert swap["swap.total"].value == 524284 * KIB
    assert swap["swap.used"].value == 0


def test_memory_without_meminfo_in_a_fake_tree_is_absent_not_the_host(pi: Path) -> None:
    (pi / "proc/meminfo").unlink()
    memory = by_key(MemoryMonitor().read())
    assert memory["memory.available"].value is None
    assert "meminfo" in memory["memory.available"].note


def test_cgroup_of_the_pi_is_v2_without_a_limit(pi: Path) -> None:
    readings = by_key(CgroupMonitor().read())
    assert readings["cgroup.version"].value == 2
    assert readings["cgroup.limited"].value is False
    assert readings["cgroup.memory_limit"].value is None
    assert readings["cgroup.memory_current"].value == PI_CURRENT
    assert readings["cgroup.memory_peak"].value == 468000768
    assert readings["cgroup.events_high"].value == 0
    assert readings["cgroup.events_max"].value == 0


def test_cgroup_v2_without_memory_events_says_so(pi: Path) -> None:
    (pi / SCOPE / "memory.events").unlink()
    readings = by_key(CgroupMonitor().read())
    assert readings["cgroup.events_max"].value is None
    assert readings["cgroup.events_max"].note == "no memory.events"


def test_cgroup_v1_events(tmp_path: Path) -> None:
    group = tmp_path / "sys/fs/cgroup/memory/docker/abc"
    group.mkdir(parents=True)
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("4:memory:/docker/abc\n0::/\n")
    (group / "memory.limit_in_bytes").write_text(f"{256 * MIB}\n")
    (group / "memory.usage_in_bytes").write_text(f"{100 * MIB}\n")
    (group / "memory.failcnt").write_text("7\n")
    readings = by_key(CgroupMonitor(root=tmp_path).read())
    assert readings["cgroup.version"].value == 1
    assert readings["cgroup.events_max"].value == 7
    assert readings["cgroup.events_high"].value is None
    assert "v1" in readings["cgroup.events_high"].note


def test_pressure_of_the_pi_is_zero(pi: Path) -> None:
    readings = by_key(PressureMonitor().read())
    assert readings["pressure.memory_some_avg10"].value == 0.0
    assert readings["pressure.memory_full_avg10"].value == 0.0
    assert readings["pressure.memory_some_avg10"].unit == "%"


def test_pressure_absent_without_psi(pi: Path) -> None:
    (pi / "proc/pressure/memory").unlink()
    readings = by_key(PressureMonitor().read())
    assert [r.value for r in readings.values()] == [None, None]
    assert all("PSI" in r.note for r in readings.values())


def test_parse_psi() -> None:
    text = ("some avg10=12.50 avg60=3.00 avg300=0.75 total=123456\n"
            "full avg10=1.25 avg60=0.50 avg300=0.10 total=9876\n")
    psi = parse_psi(text)
    assert psi["some"]["avg10"] == 12.5 and psi["full"]["avg60"] == 0.5
    assert psi["some"]["total"] == 123456
    assert parse_psi("some avg10=oops\n\n") == {"some": {}}


def test_parse_meminfo() -> None:
    fields = parse_meminfo("MemTotal:  2048 kB\nHugePages_Total:       3\nbogus line\n")
    assert fields == {"MemTotal": 2048 * KIB, "HugePages_Total": 3}


def test_cpu_load_and_frequency_of_the_pi(pi: Path) -> None:
    readings = by_key(CpuMonitor(interval=0).read())
    assert readings["cpu.load_1m"].value == pytest.approx(0.08)
    assert readings["cpu.freq_current"].value == pytest.approx(1500.0)
    assert readings["cpu.freq_max"].value == pytest.approx(1500.0)
    assert readings["cpu.freq_min"].value == pytest.approx(600.0)


def test_this_process_is_read_from_the_real_proc(pi: Path) -> None:
    """A VmHWM of 1 kB in the fake tree must not be this process's peak: the process monitor reads
    the real /proc whatever the roots say."""
    (pi / "proc/self/status").write_text("Name:\tfake\nVmHWM:\t       1 kB\n")
    readings = by_key(ProcessMonitor().read())
    peak, rss = readings["process.peak_rss"].value, readings["process.rss"].value
    assert isinstance(peak, int) and isinstance(rss, int)
    assert peak != 1024 and peak >= rss * 0.9 and rss > MIB


# -- rewriting the tree between two readings ------------------------------------------------------
def test_sampler_rereads_after_its_interval_and_not_before(pi: Path) -> None:
    sampler = ReadingSampler(machine_monitors(), min_interval_s=0.25)
    before = sampler.readings(now=100.0)
    assert sampler.reads == 1 and sampler.errors == {}
    assert before["memory.available"].value == 3126412 * KIB
    assert before["thermal.max"].value == pytest.approx(52.6)
    assert before["throttling.throttled"].value is False
    assert before["cgroup.limited"].value is False
    assert before["cgroup.events_max"].value == 0
    assert before["pressure.memory_some_avg10"].value == 0.0

    rewrite(pi / "proc/meminfo", "MemAvailable:    3126412 kB", "MemAvailable:     204800 kB")
    (pi / "sys/class/thermal/thermal_zone0/temp").write_text("81234\n")
    (pi / "sys/devices/platform/soc/soc:firmware/get_throttled").write_text("0x50005\n")
    (pi / SCOPE / "memory.max").write_text(f"{512 * MIB}\n")
    rewrite(pi / SCOPE / "memory.events", "max 0", "max 3")
    rewrite(pi / "proc/pressure/memory", "some avg10=0.00", "some avg10=12.50")

    early = sampler.readings(now=100.2)
    assert sampler.reads == 1  # not yet: the last readings again
    assert early == before and early is not before
    after = sampler.readings(now=100.25)
    assert sampler.reads == 2
    assert after["memory.available"].value == 200 * MIB
    assert after["thermal.zone0"].value == pytest.approx(81.2)
    assert after["thermal.max"].value == pytest.approx(81.2)
    assert after["throttling.raw"].value == "0x50005"
    assert after["throttling.under_voltage"].value is True
    assert after["throttling.throttled"].value is True
    assert after["throttling.soft_temp_limit"].value is False
    assert after["cgroup.limited"].value is True
    assert after["cgroup.memory_limit"].value == 512 * MIB
    assert after["cgroup.events_max"].value == 3
    assert after["pressure.memory_some_avg10"].value == pytest.approx(12.5)
    assert sampler.read_seconds > 0


def test_sampler_rereads_when_the_clock_goes_back_and_every_time_at_interval_zero(pi: Path) -> None:
    sampler = ReadingSampler([ThermalMonitor()], min_interval_s=10.0)
    sampler.readings(now=50.0)
    sampler.readings(now=49.0)
    assert sampler.reads == 2
    eager = ReadingSampler([ThermalMonitor()], min_interval_s=0)
    for _ in range(3):
        eager.readings(now=1.0)
    assert eager.reads == 3


def test_sampler_default_clock(pi: Path) -> None:
    sampler = ReadingSampler([ThermalMonitor()], min_interval_s=3600)
    first = sampler.readings()
    (pi / "sys/class/thermal/thermal_zone0/temp").write_text("90000\n")
    assert sampler.readings() == first and sampler.reads == 1


def test_sampler_refuses_a_negative_interval() -> None:
    with pytest.raises(ValueError, match="min_interval_s must be 0 or more"):
        ReadingSampler([], min_interval_s=-1)


class Exploding(SystemMonitor):
    name: ClassVar[str] = "exploding"

    def __init__(self) -> None:
        self.broken = True

    def read(self) -> list[Reading]:
        if self.broken:
            raise RuntimeError("sensor bus exploded")
        return [Reading("exploding.ok", "ok", 1)]


def test_a_monitor_that_raises_is_an_error_and_the_others_still_read(pi: Path) -> None:
    bad = Exploding()
    sampler = ReadingSampler([bad, ThermalMonitor(), MemoryMonitor()], min_interval_s=0)
    readings = sampler.readings(now=0.0)
    assert sampler.errors == {"exploding": "RuntimeError: sensor bus exploded"}
    assert readings["thermal.max"].value == pytest.approx(52.6)
    assert readings["memory.available"].value == 3126412 * KIB
    assert not any(key.startswith("exploding.") for key in readings)
    bad.broken = False
    readings = sampler.readings(now=1.0)
    assert sampler.errors == {}  # the errors are the latest read's
    assert readings["exploding.ok"].value == 1


def test_machine_monitors_are_fresh_and_do_not_block() -> None:
    first, second = machine_monitors(), machine_monitors()
    assert {m.name for m in first} == {"memory", "cgroup", "pressure", "thermal", "throttling", "cpu"}
    assert not any(a is b for a, b in zip(first, second, strict=True))
    cpu = next(m for m in first if isinstance(m, CpuMonitor))
    assert cpu.interval == 0
    throttling = next(m for m in first if isinstance(m, ThrottlingMonitor))
    assert throttling.allow_commands is False


def test_machine_monitors_on_the_real_machine_read_without_errors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGERT_PROCFS_ROOT", raising=False)
    monkeypatch.delenv("EDGERT_SYSFS_ROOT", raising=False)
    sampler = ReadingSampler(machine_monitors(), min_interval_s=0)
    readings = sampler.readings()
    assert sampler.errors == {}
    for key in ("memory.available", "memory.total", "thermal.max", "pressure.memory_some_avg10",
                "throttling.raw", "cpu.percent"):
        assert key in readings, key
        assert readings[key].present or readings[key].note, f"{key} absent without a note"


# -- --memory-budget auto under the fake tree ------------------------------------------------------
def test_mem_available_and_room_follow_the_tree_without_a_limit(pi: Path) -> None:
    assert auto_budget.mem_available() == 3126412 * KIB
    assert cgroup.effective_memory_limit() is None
    charge = cgroup.own_memory_charge()
    assert charge is not None
    assert (charge.usage_bytes, charge.held_bytes) == (PI_CURRENT, PI_HELD)
    assert auto_budget.room_under_limit(100 * MIB) is None  # no limit: the kernel's business
    room = auto_budget.device_room(100 * MIB)
    assert room is not None and room.bytes == 3126412 * KIB
    assert room.why.startswith("MemAvailable")


def test_a_limit_in_the_tree_binds_until_memavailable_is_lower(pi: Path) -> None:
    (pi / SCOPE / "memory.max").write_text(f"{512 * MIB}\n")
    assert cgroup.effective_memory_limit() == 512 * MIB
    room = auto_budget.room_under_limit(100 * MIB)
    assert room is not None
    assert room.limit_bytes == 512 * MIB and room.held_bytes == PI_HELD
    assert room.bytes == 512 * MIB - PI_HELD
    assert room.why.startswith("cgroup limit 512.0 MiB - cgroup held")
    budget = auto_budget.resolve(100 * MIB)
    assert budget.bytes == 512 * MIB - PI_HELD - AUTO_MARGIN_BYTES
    assert budget.limit_bytes == 512 * MIB and budget.available_bytes == 3126412 * KIB

    rewrite(pi / "proc/meminfo", "MemAvailable:    3126412 kB", "MemAvailable:      81920 kB")
    room = auto_budget.device_room(100 * MIB)
    assert room is not None and room.bytes == 80 * MIB
    assert room.why == "MemAvailable 80.0 MiB"
    assert auto_budget.resolve(100 * MIB).bytes == 80 * MIB - AUTO_MARGIN_BYTES


def test_the_smallest_limit_up_the_tree_counts(pi: Path) -> None:
    (pi / SCOPE / "memory.max").write_text(f"{512 * MIB}\n")
    (pi / "sys/fs/cgroup/user.slice/memory.max").write_text(f"{300 * MIB}\n")
    assert cgroup.effective_memory_limit() == 300 * MIB


def test_without_mountinfo_the_default_mounts_are_used(pi: Path) -> None:
    (pi / "proc/self/mountinfo").unlink()
    (pi / SCOPE / "memory.max").write_text(f"{512 * MIB}\n")
    parent = cgroup.machine_parent()
    assert parent == cgroup.CgroupParent(2, pi / SCOPE)
    assert cgroup.effective_memory_limit() == 512 * MIB


def test_mountinfo_points_under_sys_are_taken_under_the_fake_sysfs(pi: Path) -> None:
    """A hybrid host mounts cgroup2 at /sys/fs/cgroup/unified: the mount point is moved into the
    fake tree, and a mount outside /sys (which would read the host) is ignored."""
    unified = pi / "sys/fs/cgroup/unified"
    shutil.copytree(pi / "sys/fs/cgroup/user.slice", unified / "user.slice")
    shutil.copy(pi / "sys/fs/cgroup/cgroup.controllers", unified)
    (unified / "user.slice/user-1000.slice/session-1.scope/memory.max").write_text(f"{200 * MIB}\n")
    (pi / "proc/self/mountinfo").write_text(
        "30 22 0:26 / /cgroup rw - cgroup2 cgroup2 rw\n"
        "32 22 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n")
    parent = cgroup.machine_parent()
    assert parent.path == unified / "user.slice/user-1000.slice/session-1.scope"
    assert cgroup.effective_memory_limit() == 200 * MIB


def test_a_v1_tree_without_mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = tmp_path / "sys/fs/cgroup/memory/docker/abc"
    group.mkdir(parents=True)
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("4:memory:/docker/abc\n0::/\n")
    (group / "memory.stat").write_text(f"hierarchical_memory_limit {256 * MIB}\n"
                                       f"total_active_file {30 * MIB}\ntotal_inactive_file {10 * MIB}\n"
                                       f"total_mapped_file {5 * MIB}\n")
    (group / "memory.usage_in_bytes").write_text(f"{100 * MIB}\n")
    monkeypatch.setenv("EDGERT_PROCFS_ROOT", str(tmp_path / "proc"))
    monkeypatch.setenv("EDGERT_SYSFS_ROOT", str(tmp_path / "sys"))
    assert cgroup.effective_memory_limit() == 256 * MIB
    charge = cgroup.own_memory_charge()
    assert charge is not None and charge.held_bytes == 65 * MIB


def test_a_tree_without_a_memory_cgroup_has_no_limit(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "sys").mkdir()
    monkeypatch.setenv("EDGERT_PROCFS_ROOT", str(tmp_path / "proc"))
    monkeypatch.setenv("EDGERT_SYSFS_ROOT", str(tmp_path / "sys"))
    with pytest.raises(MemoryLimitError, match=r"No memory cgroup: there is no .*self/cgroup"):
        cgroup.machine_parent()
    assert cgroup.effective_memory_limit() is None
    assert cgroup.own_memory_charge() is None
    assert auto_budget.device_room(MIB) is None  # neither a limit nor MemAvailable


def test_the_real_machine_is_read_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no roots set, the reading lookups are the ones that make cgroups (:func:`own_parent`)."""
    monkeypatch.delenv("EDGERT_PROCFS_ROOT", raising=False)
    monkeypatch.delenv("EDGERT_SYSFS_ROOT", raising=False)
    try:
        expected: object = cgroup.own_parent()
    except MemoryLimitError as exc:
        expected = type(exc)
    try:
        found: object = cgroup.machine_parent()
    except MemoryLimitError as exc:
        found = type(exc)
    assert found == expected


def test_making_a_cgroup_ignores_the_fake_tree(pi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake tree cannot limit a process: the cgroup a measured run is made under is the real one."""
    seen: list[Path] = []
    real_read = cgroup._read

    def spy(path: Path) -> str | None:
        seen.append(path)
        return real_read(path)

    monkeypatch.setattr(cgroup, "_read", spy)
    with contextlib.suppress(MemoryLimitError):
        cgroup.own_parent()
    assert seen[:2] == [cgroup.PROC_CGROUP, cgroup.PROC_MOUNTINFO]
    assert not any(str(pi) in str(p) for p in seen)


# -- edge-rt status -------------------------------------------------------------------------------
def test_status_shows_the_pi(pi: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert PI_MODEL in result.output
    assert "52.6°C" in result.output
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    readings = {r["key"]: r for s in json.loads(result.output)["sections"] for r in s["readings"]}
    assert readings["device.model"]["value"] == PI_MODEL
    assert readings["thermal.max"]["value"] == pytest.approx(52.6)
    assert readings["memory.available"]["value"] == 3126412 * KIB
    assert readings["cgroup.version"]["value"] == 2
    assert readings["pressure.memory_full_avg10"]["value"] == 0.0
    assert readings["throttling.under_voltage"]["value"] is False


def test_the_shipped_tree_is_complete() -> None:
    """The files the docs promise, with a model ending in NUL as the kernel writes it."""
    for relative in ("proc/meminfo", "proc/loadavg", "proc/pressure/memory", "proc/self/cgroup",
                     "proc/device-tree/model", "sys/class/thermal/thermal_zone0/temp",
                     "sys/devices/platform/soc/soc:firmware/get_throttled",
                     "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq",
                     f"{SCOPE}/memory.max", f"{SCOPE}/memory.current", f"{SCOPE}/memory.events",
                     f"{SCOPE}/memory.stat", "README.md"):
        assert (SHIPPED / relative).is_file(), relative
    assert (SHIPPED / "proc/device-tree/model").read_bytes() == PI_MODEL.encode() + b"\x00"
    stat_keys = {line.split()[0] for line in (SHIPPED / SCOPE / "memory.stat").read_text().splitlines()}
    assert {"anon", "file", "active_file", "inactive_file", "file_mapped", "file_dirty",
            "file_writeback"} <= stat_keys
