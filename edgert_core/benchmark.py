"""Benchmark sweeps: each (strategy, budget) configuration runs ``edge-rt run --json`` in a fresh
process, so that its peak memory, read from the OS, is its own.

The sweep always starts with a baseline row, the same backend with no budget, so that every other
row's speed is a ratio against a run made on the same machine by the same command. With
``repeat > 1`` the whole sweep runs that many rounds, configurations interleaved, so that a noisy
spell on a shared machine slows every configuration alike; each row is then the run with the median
decode speed, with the highest peak of its rounds (the budget must hold in every round). This module
runs subprocesses and turns their JSON into rows; it does no printing (the CLI does).

Every row reports the bytes its process read from disk per decoded token (``/proc/self/io``) and the
disk bandwidth that implies at its decode speed. With ``memory_limit`` every process runs as a device
would run it (see :mod:`edgert_core.memory.cgroup`): in a fresh memory cgroup of that limit, page
cache included and no swap, after the model files' cached pages were dropped; its row adds the
cgroup's peak, how often the limit was hit, and whether the kernel OOM-killed it (then the row is a
failure that says so, and the sweep goes on). With ``llama_cpp`` a llama.cpp row runs the same GGUF
file in its own process (:mod:`edgert_core.bench_llama_cpp`) with the same prompt tokens, greedy
decoding, tokens, context and threads.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgert_core.backends.base import usable_cpus
from edgert_core.budget import MemoryBudget, format_bytes
from edgert_core.device_cost import disk_bound_tokens_per_s
from edgert_core.errors import EdgeRTError, MemoryLimitError
from edgert_core.memory.auto_budget import AUTO as AUTO_BUDGET
from edgert_core.memory.auto_budget import is_auto
from edgert_core.memory.bandwidth import measure as measure_bandwidth
from edgert_core.memory.cgroup import WHAT_TO_DO, CgroupParent, CgroupStats, MemoryCgroup, own_parent
from edgert_core.memory.io_stats import cached_bytes, drop_page_cache

BASELINE = "none"
EDGE_RT = "edge-rt"
LLAMA_CPP = "llama.cpp"
LLAMA_CPP_HINT = "pip install llama-cpp-python"
LLAMA_CPP_CHILD = Path(__file__).with_name("bench_llama_cpp.py")


@dataclass(frozen=True)
class BenchConfig:
    """One configuration: a strategy under a budget (``budget=None``: no budget, strategy auto)."""

    strategy: str
    budget: str | None
    engine: str = EDGE_RT  # or LLAMA_CPP: a llama.cpp row (strategy "llama.cpp", no budget)
    #: run on Dask workers (``--cluster``; the budget is then each worker's, ``--worker-budget``)
    cluster: str | None = None

    @property
    def label(self) -> str:
        if self.engine == LLAMA_CPP:
            return "llama.cpp (mmap)"
        where = "" if self.cluster is None else f" on {self.cluster}"
        return f"{self.strategy} @ {self.budget or 'no budget'}{where}"


LLAMA_CPP_CONFIG = BenchConfig(LLAMA_CPP, None, LLAMA_CPP)


@dataclass(frozen=True)
class LlamaCppSettings:
    """What the llama.cpp row runs: the GGUF file and the sweep's prompt, tokens, context and threads
    (``threads=None``: the edge-rt baseline's, else every CPU this process may use)."""

    model_path: Path
    prompt: str
    max_tokens: int
    max_context: int
    threads: int | None = None


@dataclass
class BenchResult:
    """One row of the table; ``error`` is set when the configuration could not run."""

    strategy: str
    budget: str | None
    budget_bytes: int | None
    backend: str = ""
    groups: int | None = None
    peak_rss_bytes: int | None = None
    baseline_rss_bytes: int | None = None
    baseline_held_bytes: int | None = None  # what the cgroup held at the baseline (run --json)
    peak_over_baseline_bytes: int | None = None
    within_budget: bool | None = None
    ms_per_token: float | None = None
    compute_ms_per_token: float | None = None
    load_ms_per_token: float | None = None
    hidden_load_fraction: float | None = None
    decode_tokens_per_s: float | None = None
    prefill_tokens_per_s: float | None = None
    speed_vs_baseline: float | None = None
    generated_ids: list[int] = field(default_factory=list)
    error: str | None = None
    runs: int = 1
    decode_tokens_per_s_runs: list[float] = field(default_factory=list)
    outputs_agree: bool = True
    engine: str = EDGE_RT
    threads: int | None = None
    decode_read_bytes: int | None = None
    read_bytes_per_token: float | None = None
    read_mode: str | None = None  # how streamed weights were read (run --json read_mode)
    disk_mib_per_s: float | None = None  # read_bytes_per_token x decode tok/s, in MiB/s
    # the model file's disk read bandwidth measured before the sweep (memory/bandwidth.py), the tok/s
    # it allows for this row's bytes read from disk per token, and this row's speed as a fraction of it
    disk_read_bytes_per_s: float | None = None
    disk_bound_tokens_per_s: float | None = None
    of_disk_bound: float | None = None
    memory_limit_bytes: int | None = None
    cgroup_peak_bytes: int | None = None
    failcnt: int | None = None
    oom_killed: bool = False
    # bytes of the dropped files still in the page cache when the process started (mapped by another
    # process); None when nothing was dropped or the OS does not say
    cached_at_start_bytes: int | None = None
    prompt_ids: list[int] = field(default_factory=list)
    # the hottest thermal zone (°C) when the run's generation started and ended (None: no sensor),
    # and the governor's changes during it (run --json events)
    temperature_start_c: float | None = None
    temperature_end_c: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    # a run on Dask workers: the cluster, how many workers ran stages, and the median of their hop
    # times (run --json workers' hop_ms); the RSS figures are then the worker whose peak rose most
    # over its baseline, and within_budget holds for every worker
    cluster: str | None = None
    workers: int | None = None
    hop_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep_configs(budgets: Sequence[str], strategies: Sequence[str],
                  clusters: Sequence[str] = ()) -> list[BenchConfig]:
    """The baseline (no budget, one process) first, then every strategy at every budget, budgets
    ascending. With ``clusters`` (``--cluster`` specs), the rows after the baseline run on each
    cluster instead: first without a worker budget (each worker's from its memory limit), then
    every strategy at every budget as each worker's budget (``auto`` has no meaning there)."""
    fixed = [b for b in budgets if not is_auto(b)]
    parsed = sorted(fixed, key=lambda b: MemoryBudget.parse(b).bytes)  # also validates them
    configs = [BenchConfig("auto", None)]
    if clusters:
        for c in clusters:
            configs.append(BenchConfig("auto", None, cluster=c))
            configs += [BenchConfig(s, b, cluster=c) for b in parsed for s in strategies]
        return configs
    parsed += [AUTO_BUDGET] if len(fixed) < len(budgets) else []  # auto: resolved by each run
    configs += [BenchConfig(s, b) for b in parsed for s in strategies]
    return configs


def run_args(
    config: BenchConfig, model: str, run_options: Sequence[str], python: str = sys.executable
) -> list[str]:
    """The command line of one configuration's fresh process."""
    args = [python, "-m", "edgert_core", "run", "--model", model, "--json", "--strategy", config.strategy]
    if config.cluster is not None:
        args += ["--cluster", config.cluster]
    if config.budget is not None:
        args += ["--worker-budget" if config.cluster is not None else "--memory-budget", config.budget]
    return args + list(run_options)


def run_command_options(
    *,
    prompt: str,
    max_tokens: int,
    max_context: int,
    backend: str | None = None,
    threads: int | None = None,
    activations: str | None = None,
    kv_cache: str | None = None,
    governor: str | None = None,
    soft_temp_limit: float | None = None,
) -> list[str]:
    """The ``edge-rt run`` options every configuration shares (greedy decoding)."""
    options = ["--prompt", prompt, "--max-tokens", str(max_tokens), "--max-context", str(max_context),
               "--temperature", "0"]
    for flag, value in (("--backend", backend), ("--threads", threads), ("--activations", activations),
                        ("--kv-cache", kv_cache), ("--governor", governor),
                        ("--soft-temp-limit", soft_temp_limit)):
        if value:
            options += [flag, str(value)]
    return options


def llama_cpp_args(settings: LlamaCppSettings, prompt_ids: Sequence[int], threads: int,
                   python: str = sys.executable) -> list[str]:
    """The command line of the llama.cpp row's fresh process: the child file by path with ``-P``, so
    that no ``edgert_core`` import adds to its RSS (``-m`` where ``-P`` does not exist, before 3.11).
    The prompt as token ids when an edge-rt row has reported them, else as text."""
    if sys.version_info >= (3, 11):
        args = [python, "-P", str(LLAMA_CPP_CHILD)]
    else:  # pragma: no cover - Python 3.10
        args = [python, "-m", "edgert_core.bench_llama_cpp"]
    args += ["--model", str(settings.model_path), "--max-tokens", str(settings.max_tokens),
             "--max-context", str(settings.max_context), "--threads", str(threads)]
    if prompt_ids:
        return [*args, "--prompt-ids", ",".join(str(i) for i in prompt_ids)]
    return [*args, "--prompt", settings.prompt]


def check_llama_cpp(model_format: str, path: Path) -> None:
    """Raise :class:`EdgeRTError` when the llama.cpp row cannot run: llama-cpp-python is not installed
    (looked up, not imported), or the model is not a GGUF file."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise EdgeRTError(
            f"--llama-cpp needs llama-cpp-python, which is not installed: {LLAMA_CPP_HINT} (into the "
            "environment edge-rt runs in), or leave out --llama-cpp."
        )
    if model_format != "gguf":
        raise EdgeRTError(
            f"--llama-cpp runs llama.cpp on the model's GGUF file, but {path} is a {model_format or 'no'} "
            "model; benchmark a .gguf file, or leave out --llama-cpp."
        )


def check_memory_limit(limit_bytes: int) -> CgroupParent:
    """Make and remove one cgroup of the limit, so that a missing permission or controller is said
    before the sweep (:class:`MemoryLimitError`); the parent cgroup the sweep's cgroups go under."""
    parent = own_parent()
    with MemoryCgroup(limit_bytes, parent=parent):
        pass
    return parent


def parse_run(config: BenchConfig, returncode: int, stdout: str, stderr: str,
              cgroup: CgroupStats | None = None) -> BenchResult:
    """Turn one ``run --json`` (or llama.cpp child) process's output into a row; ``cgroup``: what
    its memory cgroup counted, when it ran in one."""
    result = _parse_report(config, returncode, stdout, stderr)
    if cgroup is not None:
        result.memory_limit_bytes = cgroup.limit_bytes
        result.cgroup_peak_bytes = cgroup.peak_bytes
        result.failcnt = cgroup.failcnt
        killed = -signal.SIGKILL
        # no oom_kill counter (before Linux 4.13): a SIGKILL under the limit is taken for the OOM killer
        result.oom_killed = bool(cgroup.oom_kills) or (cgroup.oom_kills is None and returncode == killed)
        if result.oom_killed and returncode != 0:
            result.error = (f"OOM-killed at the {format_bytes(cgroup.limit_bytes)} memory limit (the "
                            "kernel's OOM killer ended the process)")
    return result


def _parse_report(config: BenchConfig, returncode: int, stdout: str, stderr: str) -> BenchResult:
    budget_bytes = (None if config.budget is None or is_auto(config.budget)
                    else MemoryBudget.parse(config.budget).bytes)
    result = BenchResult(config.strategy, config.budget, budget_bytes, engine=config.engine,
                         cluster=config.cluster)
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        err = stderr.strip().splitlines()
        result.error = err[-1] if err else f"exit status {returncode}"
        return result
    try:
        data: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        result.error = "the run printed no JSON report"
        return result
    result.backend = str(data.get("backend", ""))
    result.strategy = str(data.get("strategy", config.strategy))
    result.groups = len(data.get("groups") or [])
    if config.budget is not None and is_auto(config.budget):  # what the run resolved it to
        budget_bytes = result.budget_bytes = data.get("budget_bytes")
    result.peak_rss_bytes = data.get("peak_rss_bytes")
    result.temperature_start_c = data.get("temperature_start_c")
    result.temperature_end_c = data.get("temperature_end_c")
    result.events = list(data.get("events") or [])
    result.baseline_rss_bytes = data.get("baseline_rss_bytes")
    result.baseline_held_bytes = data.get("baseline_held_bytes")
    workers = data.get("workers")
    if workers:  # the worker whose peak rose most over its baseline stands for the run
        result.workers = len(workers)
        hops = [w["hop_ms"] for w in workers if w.get("hop_ms") is not None]
        result.hop_ms = statistics.median(hops) if hops else None
        worst = max(workers, key=lambda w: w["peak_rss_bytes"] - w["baseline_rss_bytes"])
        result.peak_rss_bytes = worst["peak_rss_bytes"]
        result.baseline_rss_bytes = worst["baseline_rss_bytes"]
    if result.peak_rss_bytes is not None and result.baseline_rss_bytes is not None:
        result.peak_over_baseline_bytes = result.peak_rss_bytes - result.baseline_rss_bytes
        if budget_bytes is not None:
            result.within_budget = result.peak_over_baseline_bytes <= budget_bytes
    tps = data.get("decode_tokens_per_s")
    result.decode_tokens_per_s = tps
    result.prefill_tokens_per_s = data.get("prefill_tokens_per_s")
    result.ms_per_token = 1000.0 / tps if tps else None
    decoded = max(int(data.get("generated_tokens") or 0) - 1, 0)
    compute = data.get("decode_compute_seconds")
    load = data.get("decode_load_seconds")
    if compute is not None and decoded:
        result.compute_ms_per_token = 1000.0 * compute / decoded
    if load is not None and decoded:
        result.load_ms_per_token = 1000.0 * load / decoded
    result.hidden_load_fraction = data.get("hidden_load_fraction")
    result.generated_ids = list(data.get("generated_ids") or [])
    result.prompt_ids = list(data.get("prompt_ids") or [])
    threads = data.get("threads")
    result.threads = int(threads) if isinstance(threads, int) else None
    result.decode_read_bytes = data.get("decode_read_bytes")
    per_token = data.get("read_bytes_per_token")
    result.read_bytes_per_token = None if per_token is None else float(per_token)
    result.read_mode = data.get("read_mode")
    result.disk_mib_per_s = disk_mib_per_s(result.read_bytes_per_token, tps)
    return result


def disk_mib_per_s(read_bytes_per_token: float | None, tokens_per_s: float | None) -> float | None:
    """The disk bandwidth a run implies: bytes read per token x tokens per second, in MiB/s."""
    if read_bytes_per_token is None or not tokens_per_s:
        return None
    return read_bytes_per_token * tokens_per_s / (1024 * 1024)


def run_sweep(
    configs: Sequence[BenchConfig],
    model: str,
    run_options: Sequence[str],
    *,
    repeat: int = 1,
    on_progress: Callable[[int, int, BenchConfig, BenchResult | None], None] | None = None,
    timeout: float = 1800.0,
    memory_limit: int | None = None,
    drop_files: Sequence[Path] = (),
    llama_cpp: LlamaCppSettings | None = None,
) -> list[BenchResult]:
    """Run every configuration in its own process, ``repeat`` rounds of the whole sweep, and return
    one row per configuration (see :func:`combine`); ``on_progress(i, n, config, result)`` is called
    before (``result=None``) and after each process, ``i`` counting from 1 to ``n`` over all rounds.

    ``memory_limit``: bytes; each process runs in a fresh memory cgroup of that limit (raises
    :class:`MemoryLimitError` when none can be made). ``drop_files``: files whose cached pages are
    dropped before each process (the model's, under a limit). ``llama_cpp``: how to run the
    :data:`LLAMA_CPP_CONFIG` configuration, which needs it; put it after an edge-rt configuration, so
    that it gets the prompt token ids that edge-rt reported."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    if any(c.engine == LLAMA_CPP for c in configs) and llama_cpp is None:
        raise ValueError("a llama.cpp configuration needs llama_cpp settings")
    parent = own_parent() if memory_limit is not None else None
    runs: list[list[BenchResult]] = [[] for _ in configs]
    total = len(configs) * repeat
    i = 0
    for _ in range(repeat):
        for k, config in enumerate(configs):
            i += 1
            if on_progress:
                on_progress(i, total, config, None)
            if config.engine == LLAMA_CPP and llama_cpp is not None:
                done = [r for rs in runs for r in rs if r.engine == EDGE_RT and r.error is None]
                prompt_ids = next((r.prompt_ids for r in done if r.prompt_ids), [])
                threads = llama_cpp.threads or next((r.threads for r in done if r.threads), None)
                args = llama_cpp_args(llama_cpp, prompt_ids, threads or usable_cpus())
            else:
                args = run_args(config, model, run_options)
            cached = _drop(drop_files)
            result = _run_one(config, args, timeout, memory_limit, parent)
            result.cached_at_start_bytes = cached
            runs[k].append(result)
            if on_progress:
                on_progress(i, total, config, result)
    results = [combine(r) for r in runs]
    _add_ratios(results)
    if drop_files and memory_limit is not None:
        add_disk_bound(results, _bandwidth(drop_files[0]))
    return results


#: Rows reading less than this from disk per token are not disk-bound: no bound is given for them.
DISK_BOUND_MIN_BYTES = 2**20


def add_disk_bound(results: Sequence[BenchResult], read_bytes_per_s: float | None) -> None:
    """Give each row the disk bound of its OS-measured bytes read per token at the measured read
    bandwidth (:func:`edgert_core.device_cost.disk_bound_tokens_per_s`) and its speed as a fraction
    of that bound; rows reading under :data:`DISK_BOUND_MIN_BYTES` a token get none."""
    for r in results:
        r.disk_read_bytes_per_s = read_bytes_per_s
        if (r.read_bytes_per_token or 0) < DISK_BOUND_MIN_BYTES:
            continue
        r.disk_bound_tokens_per_s = disk_bound_tokens_per_s(r.read_bytes_per_token, read_bytes_per_s)
        if r.disk_bound_tokens_per_s and r.decode_tokens_per_s:
            r.of_disk_bound = r.decode_tokens_per_s / r.disk_bound_tokens_per_s


def _bandwidth(path: Path) -> float | None:
    """The file's disk read bandwidth measured now (not the cached figure: the table is about this
    run's device), ``None`` where it cannot be read."""
    try:
        return measure_bandwidth(path).bytes_per_s
    except OSError:
        return None


def _drop(files: Sequence[Path]) -> int | None:
    """Drop the files' cached pages; the bytes that stayed cached (``None``: no files, or unknown)."""
    left: int | None = None
    for path in files:
        drop_page_cache(path)
        n = cached_bytes(path)
        if n is not None:
            left = (left or 0) + n
    return left


def _run_one(config: BenchConfig, args: Sequence[str], timeout: float, memory_limit: int | None,
             parent: CgroupParent | None) -> BenchResult:
    """One process; under ``memory_limit`` in its own fresh cgroup, removed whatever happens."""
    if memory_limit is None:
        return _finish(config, _spawn(args, timeout, None), None, timeout)
    cgroup = MemoryCgroup(memory_limit, parent=parent)
    cgroup.create()
    left: str | None = None
    try:
        try:
            outcome = _spawn(args, timeout, cgroup.enter)
        except subprocess.SubprocessError as exc:  # the preexec_fn could not enter the cgroup
            raise MemoryLimitError(
                f"Could not move the run into the cgroup {cgroup.path} ({exc}); {WHAT_TO_DO}."
            ) from None
        stats = cgroup.stats()
    finally:
        try:
            cgroup.remove()
        except MemoryLimitError as exc:
            left = str(exc)
    result = _finish(config, outcome, stats, timeout)
    if left is not None:  # the measurement stands; the row says what was left behind
        result.error = left if result.error is None else f"{result.error}; {left}"
    return result


def _spawn(args: Sequence[str], timeout: float,
           preexec: Callable[[], None] | None) -> subprocess.CompletedProcess[str] | None:
    """The finished process, or ``None`` when it ran out of time (it is killed then)."""
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL, preexec_fn=preexec)
    except subprocess.TimeoutExpired:
        return None


def _finish(config: BenchConfig, proc: subprocess.CompletedProcess[str] | None,
            cgroup: CgroupStats | None, timeout: float) -> BenchResult:
    if proc is not None:
        return parse_run(config, proc.returncode, proc.stdout, proc.stderr, cgroup)
    result = parse_run(config, 0, "", "", cgroup)
    result.error = f"timed out after {timeout}s"
    if cgroup is not None:
        result.error += f" under the {format_bytes(cgroup.limit_bytes)} memory limit"
    return result


def combine(runs: Sequence[BenchResult]) -> BenchResult:
    """One row from a configuration's rounds: the run with the median decode speed (the lower of
    the middle two for an even count), with the highest peak RSS of all rounds, ``within_budget``
    only if every round stayed within it, every round's speed, whether all rounds generated the
    same tokens, and the temperature at the first round's start and the last round's end. A failed
    round makes the row a failure (its error)."""
    if not runs:
        raise ValueError("combine needs at least one run")
    failed = next((r for r in runs if r.error is not None), None)
    if failed is not None:
        row = replace(failed)
    else:
        ordered = sorted(runs, key=lambda r: r.decode_tokens_per_s or 0.0)
        row = replace(ordered[(len(ordered) - 1) // 2])
        worst = max(runs, key=lambda r: r.peak_over_baseline_bytes or 0)
        row.peak_rss_bytes = worst.peak_rss_bytes
        row.baseline_rss_bytes = worst.baseline_rss_bytes
        row.peak_over_baseline_bytes = worst.peak_over_baseline_bytes
        peaks = [r.cgroup_peak_bytes for r in runs if r.cgroup_peak_bytes is not None]
        row.cgroup_peak_bytes = max(peaks) if peaks else None
        counts = [r.failcnt for r in runs if r.failcnt is not None]
        row.failcnt = max(counts) if counts else None
        cached = [r.cached_at_start_bytes for r in runs if r.cached_at_start_bytes is not None]
        row.cached_at_start_bytes = max(cached) if cached else None
        if row.budget_bytes is not None:
            row.within_budget = all(r.within_budget for r in runs)
    row.runs = len(runs)
    # the configuration's first round started at this temperature and its last ended at that one
    row.temperature_start_c = runs[0].temperature_start_c
    row.temperature_end_c = runs[-1].temperature_end_c
    row.oom_killed = any(r.oom_killed for r in runs)
    row.decode_tokens_per_s_runs = [r.decode_tokens_per_s or 0.0 for r in runs if r.error is None]
    row.outputs_agree = len({tuple(r.generated_ids) for r in runs if r.error is None}) <= 1
    return row


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _add_ratios(results: list[BenchResult]) -> None:
    base = next((r for r in results if r.engine == EDGE_RT and r.budget is None and r.decode_tokens_per_s),
                None)
    if base is None or not base.decode_tokens_per_s:
        return
    for r in results:
        if r.decode_tokens_per_s:
            r.speed_vs_baseline = r.decode_tokens_per_s / base.decode_tokens_per_s


def summarize(results: Sequence[BenchResult]) -> dict[str, Any]:
    """Fastest and most memory-efficient configurations, the prefetch-vs-sequential ratio at each
    budget (of the rows' median speeds, and round by round when there are several rounds), whether
    every run stayed within its budget, whether all edge-rt outputs agree (and whether llama.cpp's
    agree with them), and the rows the OOM killer ended."""
    ok = [r for r in results if r.error is None and r.budget is not None and r.engine == EDGE_RT]
    fastest = max(ok, key=lambda r: r.decode_tokens_per_s or 0.0, default=None)
    leanest = min(ok, key=lambda r: r.peak_over_baseline_bytes or 2**62, default=None)
    prefetch_gain: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}
    one_process = [r for r in ok if r.cluster is None]  # a cluster's budget is another thing
    for budget in dict.fromkeys(r.budget for r in one_process):
        by = {r.strategy: r for r in one_process if r.budget == budget}
        spec, seq = by.get("speculative-prefetch"), by.get("sequential")
        if spec and seq and spec.decode_tokens_per_s and seq.decode_tokens_per_s:
            prefetch_gain[str(budget)] = spec.decode_tokens_per_s / seq.decode_tokens_per_s
            spec_runs, seq_runs = spec.decode_tokens_per_s_runs, seq.decode_tokens_per_s_runs
            if spec.runs > 1 and len(spec_runs) == len(seq_runs):
                per_round[str(budget)] = [a / b for a, b in zip(spec_runs, seq_runs, strict=True) if b > 0]
    ours = [r for r in results if r.engine == EDGE_RT]
    outputs = {tuple(r.generated_ids) for r in ours if r.error is None}
    agree = all(r.outputs_agree for r in ours)
    llama = [r for r in results if r.engine == LLAMA_CPP and r.error is None]
    llama_same = None if not llama or len(outputs) != 1 else all(
        tuple(r.generated_ids) in outputs for r in llama)
    prefix = None
    if llama and len(outputs) == 1:
        (ours_ids,) = outputs
        prefix = min(_common_prefix(ours_ids, r.generated_ids) for r in llama)
    def label(r: BenchResult) -> str:
        return f"{r.strategy} @ {r.budget}" + ("" if r.cluster is None else f" on {r.cluster}")

    return {
        "fastest": None if fastest is None else label(fastest),
        "most_memory_efficient": None if leanest is None else label(leanest),
        "speculative_vs_sequential": prefetch_gain,
        "speculative_vs_sequential_by_round": per_round,
        "all_within_budget": all(r.within_budget for r in ok) if ok else None,
        "identical_outputs": len(outputs) <= 1 and agree,
        "rounds": max((r.runs for r in results), default=0),
        "failed": [f"{r.strategy} @ {r.budget}: {r.error}" for r in results if r.error],
        "memory_limit_bytes": next((r.memory_limit_bytes for r in results if r.memory_limit_bytes), None),
        "oom_killed": [f"{r.strategy} @ {r.budget or 'no budget'}" for r in results if r.oom_killed],
        "llama_cpp_same_tokens": llama_same,
        "llama_cpp_common_prefix_tokens": prefix,
        "cached_at_start_bytes": max((r.cached_at_start_bytes or 0 for r in results), default=0),
    }


CSV_FIELDS = [
    "strategy",
    "budget",
    "budget_bytes",
    "backend",
    "groups",
    "peak_rss_bytes",
    "baseline_rss_bytes",
    "peak_over_baseline_bytes",
    "within_budget",
    "ms_per_token",
    "compute_ms_per_token",
    "load_ms_per_token",
    "hidden_load_fraction",
    "decode_tokens_per_s",
    "prefill_tokens_per_s",
    "speed_vs_baseline",
    "runs",
    "error",
    "engine",
    "threads",
    "decode_read_bytes",
    "read_bytes_per_token",
    "read_mode",
    "disk_mib_per_s",
    "disk_read_bytes_per_s",
    "baseline_held_bytes",
    "disk_bound_tokens_per_s",
    "of_disk_bound",
    "memory_limit_bytes",
    "cgroup_peak_bytes",
    "failcnt",
    "oom_killed",
    "cached_at_start_bytes",
    "temperature_start_c",
    "temperature_end_c",
    "cluster",
    "workers",
    "hop_ms",
]


def to_csv(results: Sequence[BenchResult]) -> str:
    """The table as CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in results:
        writer.writerow(r.as_dict())
    return buf.getvalue()


PLOT_EXTRA_HINT = "pip install 'edgert-core[plot]'"


def check_plotting() -> None:
    """Raise :class:`EdgeRTError` naming the extra to install when matplotlib cannot be imported, so
    that ``benchmark --plot`` can say so before the sweep rather than after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EdgeRTError(
            f"--plot needs matplotlib, which is not installed: {PLOT_EXTRA_HINT} "
            "(or pip install matplotlib), or leave out --plot."
        ) from None


def plot(results: Sequence[BenchResult], path: str) -> None:
    """Decode tok/s against budget, one line per strategy, written to ``path`` (PNG)."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    strategies = dict.fromkeys(r.strategy for r in results if r.budget is not None)
    for strategy in strategies:
        pts = sorted(
            (r.budget_bytes / 2**20, r.decode_tokens_per_s)
            for r in results
            if r.strategy == strategy and r.budget_bytes and r.decode_tokens_per_s
        )
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=strategy)
    base = next((r for r in results if r.budget is None and r.decode_tokens_per_s), None)
    if base is not None and base.decode_tokens_per_s:
        ax.axhline(base.decode_tokens_per_s, linestyle="--", color="grey", label="no budget")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory budget (MiB)")
    ax.set_ylabel("decode tokens/s")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise EdgeRTError(f"Could not write the plot to {path}: {exc.strerror or exc}.") from None
    finally:
        plt.close(fig)
