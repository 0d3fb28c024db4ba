"""Measuring a run as a device would (issue 17 part 1): bytes read from disk per token, memory
cgroups (parsed from fake trees; for real where this process may make one), the benchmark's new
columns, the OOM-killed row, and the llama.cpp row's plumbing."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import model_helpers as mh
import pytest

from edgert_core import benchmark
from edgert_core.benchmark import (
    CSV_FIELDS,
    LLAMA_CPP,
    LLAMA_CPP_CHILD,
    LLAMA_CPP_CONFIG,
    BenchConfig,
    LlamaCppSettings,
    check_llama_cpp,
    combine,
    llama_cpp_args,
    parse_run,
    summarize,
    to_csv,
)
from edgert_core.errors import EdgeRTError, MemoryLimitError
from edgert_core.generate import GenerationStats
from edgert_core.memory import cgroup as cgroup_module
from edgert_core.memory.cgroup import (
    CgroupParent,
    CgroupStats,
    MemoryCgroup,
    find_parent,
    leftover,
    own_parent,
)
from edgert_core.memory.io_stats import cached_bytes, drop_page_cache, parse_proc_io, read_bytes

MiB = 2**20
PROC_IO = """rchar: 6976
wchar: 12
syscr: 10
syscw: 1
read_bytes: 8192
write_bytes: 4096
cancelled_write_bytes: 0
"""


# -- /proc/self/io ---------------------------------------------------------------------------------
def test_read_bytes_from_a_proc_io_text(tmp_path: Path) -> None:
    assert parse_proc_io(PROC_IO)["read_bytes"] == 8192
    assert parse_proc_io("garbage\nread_bytes: lots\n") == {}
    fake = tmp_path / "io"
    fake.write_text(PROC_IO)
    assert read_bytes(fake) == 8192
    fake.write_text(PROC_IO.replace("read_bytes: 8192\n", ""))
    assert read_bytes(fake) is None  # a kernel that does not say
    assert read_bytes(tmp_path / "missing") is None


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="no /proc/self/io on this OS")
def test_read_bytes_of_this_process_is_a_count() -> None:
    n = read_bytes()
    assert isinstance(n, int) and n >= 0


def test_read_bytes_per_token() -> None:
    stats = GenerationStats(decode_steps=4, decode_read_bytes=4000)
    assert stats.read_bytes_per_token == 1000.0
    assert GenerationStats(decode_steps=0, decode_read_bytes=10).read_bytes_per_token is None
    assert GenerationStats(decode_steps=3).read_bytes_per_token is None


def test_run_json_reports_decode_read_bytes(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The decode loop's read_bytes delta (a fake counter that grows 100 bytes a call): the first
    reading is after the prefill's first token, the last at the end."""
    counter = iter(range(1000, 10**6, 100))
    monkeypatch.setattr("edgert_core.generate.read_bytes", lambda: next(counter))
    code, out, err = mh.run_cli(["run", "--model", str(mh.fixture("tiny_llama")), "--backend", "numpy",
                                 "--max-tokens", "5", "--max-context", "64", "--prompt-ids", "1,2,3",
                                 "--json"], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["decode_read_bytes"] == 100
    steps = report["generated_tokens"] - 1
    assert report["read_bytes_per_token"] == pytest.approx(100 / steps)
    assert "prefill_tokens_per_s" in report  # the old keys stay


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this OS")
def test_drop_page_cache(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\1" * (1 * MiB))
    os.sync()  # dirty pages are not dropped
    assert drop_page_cache(f) is True
    left = cached_bytes(f)
    assert left is None or left <= 1 * MiB
    assert drop_page_cache(tmp_path / "missing") is False


# -- cgroup files from a fake tree -----------------------------------------------------------------
def _mountinfo(v1: Path | None = None, v2: Path | None = None, v1_root: str = "/") -> str:
    lines = ["23 1 0:21 / / rw,relatime - ext4 /dev/vda rw"]
    if v1 is not None:
        lines.append(f"35 31 0:32 {v1_root} {v1} rw,relatime - cgroup cgroup rw,memory")
        lines.append(f"36 31 0:33 / {v1.parent / 'cpu'} rw,relatime - cgroup cgroup rw,cpu")
    if v2 is not None:
        lines.append(f"41 31 0:38 / {v2} rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate")
    return "\n".join(lines) + "\n"


PROC_CGROUP_V1 = "5:devices:/\n4:memory:/jobs/me\n1:cpu,cpuacct:/\n0::/\n"


def test_find_parent_v1(tmp_path: Path) -> None:
    mount = tmp_path / "memory"
    (mount / "jobs" / "me").mkdir(parents=True)
    found = find_parent(PROC_CGROUP_V1, _mountinfo(v1=mount))
    assert found == CgroupParent(1, mount / "jobs" / "me")
    # a mount of a subtree (mountinfo's root field): the path below it
    (tmp_path / "sub" / "me").mkdir(parents=True)
    assert find_parent(PROC_CGROUP_V1, _mountinfo(v1=tmp_path / "sub", v1_root="/jobs")).path == (
        tmp_path / "sub" / "me")


def test_find_parent_prefers_v2_when_it_has_memory(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "memory", tmp_path / "unified"
    (v1 / "jobs" / "me").mkdir(parents=True)
    (v2 / "svc").mkdir(parents=True)
    proc = "4:memory:/jobs/me\n0::/svc\n"
    (v2 / "svc" / "cgroup.controllers").write_text("cpu io hugetlb\n")
    assert find_parent(proc, _mountinfo(v1, v2)).version == 1  # a hybrid v2 without memory
    (v2 / "svc" / "cgroup.controllers").write_text("cpu io memory pids\n")
    assert find_parent(proc, _mountinfo(v1, v2)) == CgroupParent(2, v2 / "svc")


def test_no_memory_controller_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MemoryLimitError, match=r"no memory controller.*drop --memory-limit"):
        find_parent("1:cpu:/\n0::/\n", _mountinfo(v2=tmp_path))
    with pytest.raises(MemoryLimitError, match="has no directory"):
        find_parent(PROC_CGROUP_V1, _mountinfo(v1=tmp_path / "absent"))


_V1_FILES = ("cgroup.procs", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
             "memory.max_usage_in_bytes", "memory.failcnt", "memory.oom_control")
_V2_FILES = ("cgroup.procs", "memory.max", "memory.swap.max", "memory.peak", "memory.events")


def _fake_kernel(monkeypatch: pytest.MonkeyPatch, files: tuple[str, ...], dirs: tuple[str, ...] = (),
                 busy: int = 0) -> list[Path]:
    """cgroupfs in a plain folder: mkdir fills the new cgroup with its control ``files`` (``dirs``:
    names that become folders, so that writing them fails), rmdir removes it with them (failing
    with EBUSY the first ``busy`` times, as while its last process exits). Returns the rmdir calls."""
    real_mkdir = Path.mkdir
    calls: list[Path] = []

    def mkdir(self: Path, *args: Any, **kw: Any) -> None:
        real_mkdir(self, *args, **kw)
        for name in files:
            (self / name).write_text("")
        for name in dirs:
            real_mkdir(self / name)

    def rmdir(self: Path) -> None:
        calls.append(self)
        if len(calls) <= busy:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(self))
        shutil.rmtree(self)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(Path, "rmdir", rmdir)
    return calls


def test_v1_cgroup_limits_stats_enter_and_removal(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    parent = CgroupParent(1, tmp_path)
    rmdirs = _fake_kernel(monkeypatch, _V1_FILES, busy=2)
    cg = MemoryCgroup(160 * MiB, parent=parent, name="edgert-test")
    with cg:
        assert cg.path == tmp_path / "edgert-test"
        assert (cg.path / "memory.limit_in_bytes").read_text() == str(160 * MiB)
        assert (cg.path / "memory.memsw.limit_in_bytes").read_text() == str(160 * MiB)  # no swap
        cg.enter()  # the preexec_fn: this process's pid into cgroup.procs
        assert (cg.path / "cgroup.procs").read_text() == str(os.getpid())
        (cg.path / "memory.max_usage_in_bytes").write_text("167772160\n")
        (cg.path / "memory.failcnt").write_text("42\n")
        (cg.path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
        assert cg.stats() == CgroupStats(160 * MiB, 167772160, 42, 1)
    assert not cg.path.exists() and len(rmdirs) == 3  # retried while busy
    assert leftover(parent) == []


def test_a_cgroup_that_stays_busy_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_kernel(monkeypatch, _V1_FILES, busy=10**6)
    cg = MemoryCgroup(64 * MiB, parent=CgroupParent(1, tmp_path))
    cg.create()
    with pytest.raises(MemoryLimitError, match=re.escape(f"rmdir {cg.path}")):
        cg.remove(timeout=0.05)
    assert cg.path.is_dir()


def test_v2_cgroup_delegates_memory_and_reads_events(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cgroup.subtree_control").write_text("cpu\n")
    _fake_kernel(monkeypatch, _V2_FILES)
    with MemoryCgroup(128 * MiB, parent=CgroupParent(2, tmp_path)) as cg:
        assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory"
        assert (cg.path / "memory.max").read_text() == str(128 * MiB)
        assert (cg.path / "memory.swap.max").read_text() == "0"
        (cg.path / "memory.peak").write_text("134217728\n")
        (cg.path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
        assert cg.stats() == CgroupStats(128 * MiB, 134217728, 7, 1)
    assert list(tmp_path.iterdir()) == [tmp_path / "cgroup.subtree_control"]


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS])
def test_a_cgroup_root_that_is_not_writable_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    def refuse(self: Path, *args: Any, **kw: Any) -> None:
        raise OSError(err, os.strerror(err), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(MemoryLimitError) as info:
        MemoryCgroup(64 * MiB, parent=CgroupParent(1, tmp_path)).create()
    message = str(info.value)
    assert "--memory-limit needs root and a writable memory cgroup" in message
    assert os.strerror(err) in message and "run as root, or drop --memory-limit" in message


def test_v2_parent_with_processes_cannot_delegate(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    control = tmp_path / "cgroup.subtree_control"
    control.write_text("")
    real = Path.write_text

    def busy(self: Path, *args: Any, **kw: Any) -> int:
        if self == control:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        return real(self, *args, **kw)

    monkeypatch.setattr(Path, "write_text", busy)
    with pytest.raises(MemoryLimitError, match="Delegate=yes"):
        MemoryCgroup(64 * MiB, parent=CgroupParent(2, tmp_path)).create()
    assert list(tmp_path.iterdir()) == [control]  # nothing made


def test_a_limit_that_cannot_be_set_removes_the_new_cgroup(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_kernel(monkeypatch, ("cgroup.procs",), dirs=("memory.limit_in_bytes",))
    with pytest.raises(MemoryLimitError, match=r"could not write 67108864 to .*memory\.limit_in_bytes"):
        MemoryCgroup(64 * MiB, parent=CgroupParent(1, tmp_path)).create()
    assert list(tmp_path.iterdir()) == []


# -- benchmark rows --------------------------------------------------------------------------------
def _report(**extra: Any) -> str:
    data = {"backend": "neon", "strategy": "speculative-prefetch", "groups": [[0], [1]],
            "peak_rss_bytes": 100 * MiB, "baseline_rss_bytes": 60 * MiB,
            "decode_tokens_per_s": 50.0, "prefill_tokens_per_s": 200.0, "generated_tokens": 9,
            "generated_ids": [5, 6, 7], "prompt_ids": [1, 2, 3], "threads": 2,
            "decode_read_bytes": 8 * 4 * MiB, "read_bytes_per_token": 4.0 * MiB}
    data.update(extra)
    return json.dumps(data)


def test_parse_run_reads_the_new_keys() -> None:
    cfg = BenchConfig("speculative-prefetch", "32M")
    r = parse_run(cfg, 0, _report(), "", CgroupStats(160 * MiB, 150 * MiB, 3, 0))
    assert r.error is None and r.engine == "edge-rt" and r.threads == 2
    assert r.prompt_ids == [1, 2, 3]
    assert r.decode_read_bytes == 32 * MiB and r.read_bytes_per_token == 4.0 * MiB
    assert r.disk_mib_per_s == pytest.approx(4.0 * 50.0)  # bytes/token x tok/s
    assert (r.memory_limit_bytes, r.cgroup_peak_bytes, r.failcnt, r.oom_killed) == (
        160 * MiB, 150 * MiB, 3, False)
    row = r.as_dict()
    for key in ("memory_limit_bytes", "cgroup_peak_bytes", "failcnt", "oom_killed",
                "read_bytes_per_token", "disk_mib_per_s"):
        assert key in row and key in CSV_FIELDS
    header, line = to_csv([r]).splitlines()
    assert header.startswith("strategy,budget,budget_bytes")  # old columns first, as before
    assert dict(zip(header.split(","), line.split(","), strict=True))["cgroup_peak_bytes"] == str(150 * MiB)


def test_rows_get_the_disk_bound_of_their_reads() -> None:
    """A row's disk bound is the measured bandwidth over its OS-measured bytes read per token, and
    ``x bound`` its speed over that; a row that reads (almost) nothing from disk has none."""
    from edgert_core.benchmark import add_disk_bound

    cfg = BenchConfig("speculative-prefetch", "32M")
    disk = parse_run(cfg, 0, _report(), "", CgroupStats(160 * MiB, 150 * MiB, 3, 0))
    idle = parse_run(cfg, 0, _report(), "", None)
    idle.read_bytes_per_token = 1000.0
    add_disk_bound([disk, idle], 400.0 * MiB)
    assert disk.disk_bound_tokens_per_s == pytest.approx(100.0)  # 400 MiB/s over 4 MiB a token
    assert disk.of_disk_bound == pytest.approx(50.0 / 100.0)
    assert idle.disk_bound_tokens_per_s is None and idle.of_disk_bound is None
    assert idle.disk_read_bytes_per_s == 400.0 * MiB
    for key in ("disk_read_bytes_per_s", "disk_bound_tokens_per_s", "of_disk_bound"):
        assert key in disk.as_dict() and key in CSV_FIELDS


def test_an_old_report_without_read_bytes_still_parses() -> None:
    old = json.loads(_report())
    for key in ("decode_read_bytes", "read_bytes_per_token", "threads", "prompt_ids"):
        del old[key]
    r = parse_run(BenchConfig("sequential", "64M"), 0, json.dumps(old), "")
    assert r.error is None and r.read_bytes_per_token is None and r.disk_mib_per_s is None
    assert r.memory_limit_bytes is None and r.oom_killed is False


def test_an_oom_killed_run_is_a_row_not_a_crash() -> None:
    cfg = BenchConfig("auto", None)
    killed = parse_run(cfg, -signal.SIGKILL, "", "", CgroupStats(128 * MiB, 128 * MiB, 0, 1))
    assert killed.oom_killed is True
    assert killed.error == ("OOM-killed at the 128.0 MiB memory limit (the kernel's OOM killer ended "
                            "the process)")
    assert killed.cgroup_peak_bytes == 128 * MiB
    # a kernel without the oom_kill counter: a SIGKILL under the limit is taken for the OOM killer
    assert parse_run(cfg, -signal.SIGKILL, "", "", CgroupStats(128 * MiB, None, None, None)).oom_killed
    # without a cgroup a SIGKILL is only a failure
    plain = parse_run(cfg, -signal.SIGKILL, "", "")
    assert plain.oom_killed is False and plain.error == f"exit status {-signal.SIGKILL}"
    ok = parse_run(BenchConfig("sequential", "32M"), 0, _report(), "",
                   CgroupStats(128 * MiB, 120 * MiB, 0, 0))
    row = combine([killed])
    summary = summarize([row, ok])
    assert summary["oom_killed"] == ["auto @ no budget"]
    assert summary["memory_limit_bytes"] == 128 * MiB
    assert summary["failed"] and "OOM-killed" in summary["failed"][0]


def test_combine_keeps_the_highest_cgroup_peak() -> None:
    cfg = BenchConfig("sequential", "32M")
    runs = [parse_run(cfg, 0, _report(decode_tokens_per_s=t), "", CgroupStats(160 * MiB, p * MiB, f, 0))
            for t, p, f in ((10.0, 90, 0), (12.0, 150, 4), (11.0, 100, 1))]
    row = combine(runs)
    assert row.decode_tokens_per_s == 11.0
    assert row.cgroup_peak_bytes == 150 * MiB and row.failcnt == 4


def test_llama_cpp_row_is_not_the_baseline_and_is_compared() -> None:
    base = parse_run(BenchConfig("auto", None), 0, _report(strategy="resident"), "")
    llama = parse_run(LLAMA_CPP_CONFIG, 0, _report(strategy="llama.cpp", decode_tokens_per_s=100.0,
                                                   groups=[]), "")
    rows = [base, llama]
    benchmark._add_ratios(rows)
    assert base.speed_vs_baseline == 1.0 and llama.speed_vs_baseline == 2.0
    assert llama.engine == LLAMA_CPP and LLAMA_CPP_CONFIG.label == "llama.cpp (mmap)"
    summary = summarize(rows)
    assert summary["llama_cpp_same_tokens"] is True and summary["identical_outputs"] is True
    llama.generated_ids = [9]
    summary = summarize(rows)
    assert summary["llama_cpp_same_tokens"] is False
    assert summary["llama_cpp_common_prefix_tokens"] == 0
    llama.generated_ids = [5, 6, 9]
    assert summarize(rows)["llama_cpp_common_prefix_tokens"] == 2
    assert summary["identical_outputs"] is True  # llama.cpp's tokens are not edge-rt's outputs


def test_llama_cpp_args_run_the_child_by_path() -> None:
    settings = LlamaCppSettings(Path("/m/x.gguf"), "Hi", 8, 256)
    args = llama_cpp_args(settings, [1, 2, 3], 2, python="py")
    assert args[:3] == ["py", "-P", str(LLAMA_CPP_CHILD)] and LLAMA_CPP_CHILD.is_file()
    assert args[args.index("--prompt-ids") + 1] == "1,2,3"
    assert args[args.index("--threads") + 1] == "2" and args[args.index("--max-context") + 1] == "256"
    assert llama_cpp_args(settings, [], 2, python="py")[-2:] == ["--prompt", "Hi"]


def test_the_llama_cpp_child_imports_no_edgert_core() -> None:
    text = LLAMA_CPP_CHILD.read_text()
    assert "import edgert_core" not in text and "from edgert_core" not in text


def test_llama_cpp_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(EdgeRTError, match="pip install llama-cpp-python"):
        check_llama_cpp("gguf", Path("m.gguf"))
    code, _out, err = mh.run_cli(["benchmark", "--model", str(mh.fixture("tiny_llama")), "--llama-cpp"],
                                 monkeypatch, capsys)
    assert code == 2 and "pip install llama-cpp-python" in err and "Traceback" not in err


def test_llama_cpp_needs_a_gguf_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    with pytest.raises(EdgeRTError, match="GGUF"):
        check_llama_cpp("safetensors", Path("folder"))


def test_memory_limit_without_a_writable_cgroup_is_said_before_the_sweep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(self: Path, *args: Any, **kw: Any) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(benchmark, "own_parent", lambda: CgroupParent(1, tmp_path))
    monkeypatch.setattr(Path, "mkdir", refuse)
    code, out, err = mh.run_cli(["benchmark", "--model", str(mh.fixture("tiny_llama")),
                                 "--memory-limit", "64M"], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert "--memory-limit needs root and a writable memory cgroup" in err and "[1/" not in err
    code, _out, err = mh.run_cli(["benchmark", "--model", str(mh.fixture("tiny_llama")),
                                  "--memory-limit", "lots"], monkeypatch, capsys)
    assert code == 2 and "--memory-limit 'lots'" in err


# -- for real, where this process may make memory cgroups -----------------------------------------
def _cgroup_unavailable() -> str | None:
    """Why a real memory cgroup cannot be made here, or None."""
    if not sys.platform.startswith("linux"):
        return "memory cgroups are Linux-only"
    try:
        parent = own_parent()
        with MemoryCgroup(64 * MiB, parent=parent):
            pass
    except MemoryLimitError as exc:
        return str(exc)
    return None


def test_benchmark_under_a_real_memory_limit() -> None:
    """``edge-rt benchmark --memory-limit 256M`` on the synthetic SmolLM2 shape: the resident
    baseline (about 540 MB of fp32) is OOM-killed and is a row saying so; the streamed row runs
    within the limit and reports its cgroup peak and bytes read per token; no cgroup is left."""
    why = _cgroup_unavailable()
    if why is not None:
        pytest.skip(f"needs root and a writable memory cgroup: {why}")
    parent = own_parent()
    limit = 256 * MiB
    cmd = [sys.executable, "-m", "edgert_core", "benchmark", "--model", "synthetic-smollm2-135m",
           "--memory-limit", "256M", "--sweep-memory", "64M", "--strategies", "sequential",
           "--max-tokens", "2", "--max-context", "32", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    base, streamed = rows
    assert base["budget"] is None and base["memory_limit_bytes"] == limit
    if base["oom_killed"]:
        assert "OOM-killed at the 256.0 MiB memory limit" in base["error"]
    assert streamed["error"] is None and streamed["oom_killed"] is False
    assert streamed["memory_limit_bytes"] == limit
    assert 0 < streamed["cgroup_peak_bytes"] <= limit
    assert isinstance(streamed["read_bytes_per_token"], float)
    assert isinstance(streamed["disk_mib_per_s"], float)
    for row in rows:
        assert row["cgroup_peak_bytes"] is None or row["cgroup_peak_bytes"] <= limit
    assert [p for p in leftover(parent) if p.name.startswith(f"edgert-{proc.pid}-")] == []


def test_cgroup_module_prints_nothing() -> None:
    for module in (cgroup_module, benchmark):
        text = Path(str(module.__file__)).read_text()
        assert "print(" not in text and "typer" not in text


# -- --memory-budget auto --------------------------------------------------------------------------
def test_auto_budget_is_the_smaller_room_less_the_margin() -> None:
    from edgert_core.memory.auto_budget import AUTO_MARGIN_BYTES, resolve

    cg = resolve(70 * MiB, limit_bytes=160 * MiB, available_bytes=2000 * MiB, read_machine=False)
    assert cg.bytes == 90 * MiB - AUTO_MARGIN_BYTES
    assert cg.source.startswith("auto: cgroup limit 160.0 MiB - RSS 70.0 MiB") and "74.0 MiB" in cg.source
    used = resolve(70 * MiB, limit_bytes=160 * MiB, held_bytes=40 * MiB, available_bytes=None,
                   read_machine=False)  # what the cgroup holds beyond its droppable page cache
    assert used.bytes == 120 * MiB - AUTO_MARGIN_BYTES and "cgroup held 40.0 MiB" in used.source
    mem = resolve(70 * MiB, limit_bytes=None, available_bytes=50 * MiB, read_machine=False)
    assert mem.bytes == 50 * MiB - AUTO_MARGIN_BYTES and "MemAvailable 50.0 MiB" in mem.source
    with pytest.raises(EdgeRTError, match=r"no room \(cgroup limit 80.0 MiB - RSS 70.0 MiB = 10.0 MiB"):
        resolve(70 * MiB, limit_bytes=80 * MiB, available_bytes=None, read_machine=False)
    with pytest.raises(EdgeRTError, match="neither a cgroup memory limit nor MemAvailable"):
        resolve(70 * MiB, read_machine=False)


def test_mem_available_from_meminfo() -> None:
    from edgert_core.memory.auto_budget import mem_available

    text = "MemTotal:       24683520 kB\nMemFree:        1000 kB\nMemAvailable:   2048 kB\n"
    assert mem_available(text) == 2048 * 1024
    assert mem_available("MemTotal: 5 kB\n") is None


def test_load_model_with_an_auto_budget_says_where_it_came_from() -> None:
    from edgert_core.api import generation_report, load_model

    model = load_model("synthetic-smollm2-135m", memory_budget="auto", max_context=32, notify=None)
    try:
        assert model.context.budget_bytes is not None and model.context.budget_bytes > 0
        assert model.budget_source.startswith("auto: ")
        gen = model.generate([1, 2, 3], max_tokens=2)
        report = generation_report(model, gen.result())
        assert report["budget_source"] == model.budget_source
        assert report["budget_bytes"] == model.context.budget_bytes
    finally:
        model.close()


def test_auto_budget_and_read_mode_inside_a_real_memory_limit() -> None:
    """In a 200 MiB cgroup, ``--memory-budget auto`` is that limit less the run's RSS and the
    margin, ``run --json`` says so, and the run stays within the limit."""
    why = _cgroup_unavailable()
    if why is not None:
        pytest.skip(f"needs root and a writable memory cgroup: {why}")
    cmd = [sys.executable, "-m", "edgert_core", "run", "--model", "synthetic-smollm2-135m",
           "--prompt-ids", "1,2,3", "--max-tokens", "3", "--max-context", "32",
           "--memory-budget", "auto", "--json"]
    with MemoryCgroup(200 * MiB, parent=own_parent()) as cg:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              preexec_fn=cg.enter, check=False)
        stats = cg.stats()
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["budget_source"].startswith("auto: cgroup limit 200.0 MiB - cgroup held"), \
        report["budget_source"]
    assert 0 < report["budget_bytes"] < 200 * MiB - 16 * MiB
    assert report["read_mode"] == "cached"  # synthetic weights: nothing read from a file
    assert stats.oom_kills in (None, 0)


# -- what a cgroup holds, and the plan auto makes under a real limit ------------------------------
V1_STAT = """cache 95000000
rss 30000000
shmem 1000000
mapped_file 7000000
total_cache 90177536
total_rss 38076416
total_shmem 0
total_mapped_file 9330688
total_dirty 135168
total_writeback 0
total_inactive_file 81661952
total_active_file 5349376
"""
V2_STAT = """anon 38076416
file 90177536
file_mapped 9330688
file_dirty 135168
file_writeback 4096
shmem 0
active_file 5349376
inactive_file 81661952
"""


def test_reclaimable_page_cache_from_memory_stat() -> None:
    """Clean, unmapped file pages are room: the file LRU lists less mapped, dirty and writeback
    pages (v1: the hierarchical ``total_`` keys, as ``usage_in_bytes`` counts children)."""
    from edgert_core.memory.cgroup import MemoryCharge, reclaimable_bytes

    files = 81661952 + 5349376
    assert reclaimable_bytes(V1_STAT, 1) == files - 9330688 - 135168
    assert reclaimable_bytes(V2_STAT, 2) == files - 9330688 - 135168 - 4096
    assert reclaimable_bytes("", 1) == 0 and reclaimable_bytes("total_mapped_file 5\n", 1) == 0
    # the pool's anonymous shared mappings are shmem: counted as mapped, but on the anon lists, so
    # they take nothing off the file lists (measured in a cgroup: 97 MiB of pool, 67 MiB of clean
    # model-file pages, which the old rule called 0 reclaimable)
    pool = 97316864
    with_pool = V1_STAT.replace("total_shmem 0", f"total_shmem {pool}").replace(
        "total_mapped_file 9330688", f"total_mapped_file {9330688 + pool}")
    assert reclaimable_bytes(with_pool, 1) == files - 9330688 - 135168
    with_pool = V2_STAT.replace("shmem 0", f"shmem {pool}").replace(
        "file_mapped 9330688", f"file_mapped {9330688 + pool}")
    assert reclaimable_bytes(with_pool, 2) == files - 9330688 - 135168 - 4096
    charge = MemoryCharge(usage_bytes=125 * MiB, reclaimable_bytes=80 * MiB)
    assert charge.held_bytes == 45 * MiB
    assert MemoryCharge(usage_bytes=MiB, reclaimable_bytes=2 * MiB).held_bytes == 0


def test_auto_plans_for_the_disk_inside_a_real_memory_limit() -> None:
    """SmolLM2 in a 128 MiB cgroup with ``--memory-budget auto``: the budget counts what the cgroup
    holds, not the page cache it was charged for the libraries and the header (so it is far above
    what the cgroup's usage would leave); the plan and its streamed weights do not fit, so the run
    streams from disk from its first token (no watching) in the read mode the bandwidth measurement
    found faster (``drop`` or ``direct``), the bytes it reads from disk per
    decoded token are the ones the cost model predicted (``/proc/self/io``, within 25%), the disk
    bound is reported from a measured bandwidth, the greedy tokens are the unlimited run's, and
    nothing is OOM-killed."""
    why = _cgroup_unavailable()
    if why is not None:
        pytest.skip(f"needs root and a writable memory cgroup: {why}")
    from edgert_core.memory.io_stats import drop_page_cache
    from edgert_core.testing import smollm2_for_tests

    model = smollm2_for_tests()
    cmd = [sys.executable, "-m", "edgert_core", "run", "--model", str(model), "--backend", "neon",
           "--prompt", "The ship entered the port of", "--max-tokens", "12", "--temperature", "0",
           "--strategy", "speculative-prefetch", "--json"]
    free = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert free.returncode == 0, free.stderr
    expected = json.loads(free.stdout.strip().splitlines()[-1])["generated_ids"]
    drop_page_cache(model)
    with MemoryCgroup(128 * MiB, parent=own_parent()) as cg:
        proc = subprocess.run([*cmd, "--memory-budget", "auto"], capture_output=True, text=True,
                              timeout=300, preexec_fn=cg.enter, check=False)
        stats = cg.stats()
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats.oom_kills in (None, 0)
    assert report["generated_ids"] == expected
    assert "cgroup held" in report["budget_source"], report["budget_source"]
    assert report["budget_bytes"] > 128 * MiB - report["baseline_rss_bytes"] - 16 * MiB
    assert report["disk_read_mode"] in ("drop", "direct")  # whichever this disk serves faster
    assert report["read_mode"] == report["disk_read_mode"], report["read_mode_reason"]
    assert "exceed" in report["read_mode_reason"]
    predicted = report["predicted_disk_bytes_per_token"]
    assert predicted > 0
    assert report["read_bytes_per_token"] == pytest.approx(predicted, rel=0.25)
    assert report["disk_read_bytes_per_s"] > 0
    assert report["disk_bound_tokens_per_s"] == pytest.approx(
        report["disk_read_bytes_per_s"] / predicted)
