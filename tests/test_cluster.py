"""A model's layers as a pipeline of stages on Dask workers (edgert_core.cluster, issue 16).

Every cluster here is on loopback: ``local:N`` (a LocalCluster of worker processes) or, where a
worker must die for good, a ``dask scheduler`` and ``dask worker --no-nanny`` processes started by
the test (a nanny would restart a killed worker). Each test's cluster is closed by the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgert_core.api import load_model, open_source
from edgert_core.cluster.pipeline import Settings, connect, part_minimum
from edgert_core.cluster.split import split_layers
from edgert_core.engine import Engine
from edgert_core.errors import ClusterError, GenerationError, WorkerLostError
from edgert_core.plan import PlanningContext
from edgert_core.plugins import load_registry
from tests.model_helpers import fixture, run_cli, smollm2_path

PROMPT = "The capital of France is"
DASK = Path(sys.executable).parent / "dask"


# -- the split (pure) ---------------------------------------------------------------------------
def test_split_follows_the_shares_and_gives_every_stage_a_layer() -> None:
    assert split_layers([10] * 6, 0, [1, 1, 1]) == [(0, 2), (2, 4), (4, 6)]
    assert split_layers([10] * 6, 0, [2, 1]) == [(0, 4), (4, 6)]
    # the head counts with the last stage: it gets fewer layers
    assert split_layers([10] * 6, 20, [1, 1]) == [(0, 4), (4, 6)]
    assert split_layers([10] * 3, 1000, [1, 1, 1]) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="at most one worker per layer"):
        split_layers([10] * 2, 0, [1, 1, 1])


def test_measured_speeds_weigh_the_shares_only_where_they_differ_clearly() -> None:
    from edgert_core.cluster.split import SPEED_SPREAD, stage_shares

    assert stage_shares([100, 300], [1e9, 1.2e9]) == [100, 300]  # alike: the budgets alone
    assert stage_shares([100, 300], [None, 3e9]) == [100, 300]  # not every speed measured
    fast = stage_shares([100, 100], [1e9, 3e9])  # three times as fast: three times the share
    assert fast[1] == pytest.approx(3 * fast[0])
    edge = stage_shares([1, 1], [1.0, SPEED_SPREAD])
    assert edge[1] > edge[0]


@settings(max_examples=200, deadline=None)
@given(layers=st.lists(st.integers(1, 10**6), min_size=1, max_size=40),
       head=st.integers(0, 10**7), shares=st.lists(st.integers(1, 10**9), min_size=1, max_size=8))
def test_split_is_contiguous_and_covers_every_layer(layers: list[int], head: int,
                                                    shares: list[int]) -> None:
    if len(shares) > len(layers):
        shares = shares[: len(layers)]
    cuts = split_layers(layers, head, shares)
    assert len(cuts) == len(shares)
    assert cuts[0][0] == 0 and cuts[-1][1] == len(layers)
    assert all(a < b for a, b in cuts)
    assert all(cuts[i][1] == cuts[i + 1][0] for i in range(len(cuts) - 1))


# -- parts of a model, without Dask ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_qwen3"])
@pytest.mark.parametrize("backend", ["numpy", "neon"])
def test_parts_chained_give_the_whole_models_logits_bit_for_bit(name: str, backend: str) -> None:
    reg = load_registry()
    whole = open_source(fixture(name)).validate()
    n = whole.config.dims.n_layers
    ctx = PlanningContext(budget_bytes=None, max_context=32)

    def ready(m):  # type: ignore[no-untyped-def]
        return Engine(m, reg.backend(backend)).plan(ctx, "auto", reg).prepare(
            weight_cache=False, notify=None)

    ids = [3, 7, 11, 2, 5]
    ref = ready(open_source(fixture(name)).validate())
    parts = [ready(whole.layers(a, b)) for a, b in ((0, 1), (1, n))]
    try:
        want = [ref.forward(ids, 0, all_logits=True), ref.forward([9], len(ids))]
        got = []
        for tokens, start, every in ((ids, 0, True), ([9], len(ids), False)):
            h = None
            for p in parts:
                h = p.run_part(tokens, h, start, all_logits=every)
            got.append(h)
        assert parts[0].part is not None and parts[0].part.has_head is False
        for w, g in zip(want, got, strict=True):
            assert g is not None and np.array_equal(w, g)
        assert parts[1].cached_ids == ref.cached_ids == [*ids, 9]
        with pytest.raises(ValueError, match="previous part's hidden states"):
            parts[1].run_part([1], None, 6)
    finally:
        for e in (ref, *parts):
            e.close()


def test_a_part_plans_without_the_head_and_with_its_own_kv_cache() -> None:
    whole = open_source(smollm2_path()).validate()
    first, last = whole.layers(0, 10), whole.layers(10, 30)
    assert first.layout().head == () and first.config.dims.n_layers == 10
    assert last.layout().head and last.config.dims.n_layers == 20
    assert [t.name for t in last.layout().layers[0].tensors] == \
        [t.name.replace("layers.10.", "layers.0.") for t in whole.layout().layers[10].tensors]
    with pytest.raises(ValueError, match="not a part"):
        whole.layers(5, 31)


# -- clusters ---------------------------------------------------------------------------------------
def reference_ids(model: Path, backend: str, n: int) -> list[int]:
    m = load_model(model, backend=backend, governor="none", notify=None)
    try:
        return m.generate(PROMPT, max_tokens=n).result().ids
    finally:
        m.close()


@pytest.mark.parametrize(("workers", "backend", "budget"), [
    ("local:2", "neon", None),        # every layer resident on its worker
    ("local:3", "neon", "40M"),       # the workers stream part of their layers
    ("local:2", "numpy", "300M"),
])
def test_local_cluster_gives_the_single_process_tokens(workers: str, backend: str,
                                                       budget: str | None) -> None:
    path = smollm2_path()
    want = reference_ids(path, backend, 12)
    m = load_model(path, backend=backend, cluster=workers, worker_budget=budget, notify=None)
    try:
        got = m.generate(PROMPT, max_tokens=12).result().ids
        report = m.engine_report()
    finally:
        m.close()
    assert got == want
    stages = report["workers"]
    assert len(stages) == int(workers.split(":")[1])
    assert stages[0]["layers"][0] == 0 and stages[-1]["layers"][-1] == 29
    assert sum(len(w["layers"]) for w in stages) == 30
    for w in stages:
        assert w["address"].startswith("tcp://127.0.0.1:")
        assert w["hop_ms"] is not None and w["hop_ms"] > 0
        if budget is not None:  # each worker's OS peak over its baseline stays in its budget
            assert w["budget_bytes"] == int(budget[:-1]) * 2**20
            assert w["peak_rss_bytes"] - w["baseline_rss_bytes"] <= w["budget_bytes"]
    if budget == "40M":
        assert not all(all(w["resident_groups"]) for w in stages)  # something streams


def test_run_json_reports_workers_and_only_loopback_ports_open(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from edgert_core.cluster import pipeline

    seen: dict[str, set[str]] = {}
    real = pipeline.ClusterPipeline.refresh_stats

    def listening(self: pipeline.ClusterPipeline) -> None:  # while the cluster is up
        real(self)
        pids = [os.getpid(), *(s["pid"] for s in self.last_stats)]
        for pid in pids:
            for c in psutil.Process(pid).net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    seen.setdefault(c.laddr.ip, set()).add(f"{pid}:{c.laddr.port}")

    monkeypatch.setattr(pipeline.ClusterPipeline, "refresh_stats", listening)
    code, out, err = run_cli(["run", "--model", str(smollm2_path()), "--cluster", "local:2",
                              "-p", PROMPT, "-n", "4", "--json"], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    assert len(report["workers"]) == 2
    for w in report["workers"]:
        assert set(w) >= {"address", "layers", "budget_bytes", "peak_rss_bytes",
                          "baseline_rss_bytes", "hop_ms"}
    assert seen and set(seen) == {"127.0.0.1"}, seen


def test_cluster_options_that_do_not_go_together_say_so() -> None:
    with pytest.raises(GenerationError, match="use --worker-budget"):
        load_model(fixture("tiny_llama"), cluster="local:2", memory_budget="64M", notify=None)
    with pytest.raises(GenerationError, match="add --cluster"):
        load_model(fixture("tiny_llama"), worker_budget="64M", notify=None)
    with pytest.raises(ClusterError, match="local:N with N from 1"):
        load_model(fixture("tiny_llama"), cluster="local:0", notify=None)
    with pytest.raises(ClusterError, match="synthetic model cannot run on a cluster"):
        load_model("synthetic-smollm2-135m", cluster="local:1", notify=None)


def test_without_dask_the_cluster_option_says_how_to_get_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ClusterError, match=r"pip install 'edgert-core\[cluster\]'"):
        load_model(fixture("tiny_llama"), cluster="local:2", notify=None)


def test_a_scheduler_that_does_not_answer_is_a_timeout_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=r"No Dask scheduler answered at tcp://127\.0\.0\.1:9"):
        connect("tcp://127.0.0.1:9", timeout_s=2)
    assert time.monotonic() - t0 < 30


# -- a cluster of processes the test owns (workers without a nanny stay dead) --------------------------
@contextlib.contextmanager
def loopback_dask(tmp_path: Path, n: int, worker_env: list[dict[str, str]] | None = None,
                  memory_limits: list[str] | None = None) -> Iterator[str]:
    """A scheduler and ``n`` worker processes on 127.0.0.1 (each with ``--memory-limit``, 2 GiB
    unless given); yields the scheduler's address."""
    file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        for i in range(n):
            env = {**os.environ, **((worker_env or [{}] * n)[i])}
            procs.append(subprocess.Popen(
                [str(DASK), "worker", "--scheduler-file", str(file), "--no-nanny", "--host",
                 "127.0.0.1", "--nthreads", "1", "--memory-limit",
                 (memory_limits or ["2GiB"] * n)[i], "--no-dashboard"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        import json

        address = json.loads(file.read_text())["address"]
        client, _ = connect(address, timeout_s=60)
        try:
            while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
                assert time.monotonic() < deadline, "the workers did not start"
                time.sleep(0.2)
        finally:
            client.close()
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _kill_after(gen, k: int, pid: int) -> list[int]:  # type: ignore[no-untyped-def]
    ids = []
    for token in gen:
        if token.id >= 0:
            ids.append(token.id)
        if len(ids) == k:
            os.kill(pid, signal.SIGKILL)
    return ids


def test_losing_a_worker_mid_generation_replans_and_gives_the_same_tokens(tmp_path: Path) -> None:
    path = smollm2_path()
    want = reference_ids(path, "neon", 16)
    with loopback_dask(tmp_path, 3) as address:
        m = load_model(path, backend="neon", cluster=address, worker_budget="200M", notify=None)
        try:
            victim = m.pipeline.plans[1]  # type: ignore[attr-defined]
            gen = m.generate(PROMPT, max_tokens=16)
            _kill_after(gen, 5, victim.pid)
            report = m.engine_report()
        finally:
            m.close()
    assert gen.ids == want
    assert gen.stats.stop_reason == "max_tokens"
    lost = report["cluster_events"]
    assert [e["kind"] for e in lost] == ["worker_lost"] and lost[0]["address"] == victim.address
    assert victim.address not in {w["address"] for w in report["workers"]}
    assert len(report["workers"]) == 2


def test_losing_a_worker_the_others_cannot_cover_stops_with_the_tokens_so_far(
        tmp_path: Path) -> None:
    path = smollm2_path()
    reg = load_registry()
    whole = open_source(path).validate()
    s = Settings(model=str(path), backend="neon")
    halves = split_layers(whole.layout().layer_bytes, whole.layout().head_bytes, [1, 1])
    two = max(part_minimum(whole, reg, s, a, b) for a, b in halves)
    one = part_minimum(whole, reg, s, 0, 30)
    assert two < one
    budget = (two + one) // 2  # two workers hold the model, one cannot
    with loopback_dask(tmp_path, 2) as address:
        m = load_model(path, backend="neon", cluster=address, worker_budget=budget, notify=None)
        try:
            victim = m.pipeline.plans[0]  # type: ignore[attr-defined]
            gen = m.generate(PROMPT, max_tokens=16)
            with pytest.raises(WorkerLostError) as err:
                _kill_after(gen, 4, victim.pid)
        finally:
            m.close()
    assert gen.stats.stop_reason == "worker_lost"
    assert len(gen.ids) == 4
    message = str(err.value)
    assert victim.address in message and "cannot hold the model" in message
    assert "at least" in message


def test_a_worker_without_the_model_is_named_before_any_work(tmp_path: Path) -> None:
    from edgert_core.pull import CACHE_ENV, known

    spec = known("smollm2")
    have = tmp_path / "have" / "models" / spec.name
    have.mkdir(parents=True)
    (have / spec.filename).symlink_to(smollm2_path())
    lacking = tmp_path / "lacking"
    lacking.mkdir()
    envs = [{CACHE_ENV: str(tmp_path / "have")}, {CACHE_ENV: str(lacking)}]
    with loopback_dask(tmp_path, 2, worker_env=envs) as address:
        mp = pytest.MonkeyPatch()
        mp.setenv(CACHE_ENV, str(tmp_path / "have"))
        try:
            with pytest.raises(ClusterError, match=r"Worker tcp://127\.0\.0\.1:\d+ cannot open "
                                                   r"the model: Model 'smollm2' is not downloaded"):
                load_model("smollm2", backend="neon", cluster=address, notify=None)
        finally:
            mp.undo()


def test_inspect_cluster_shows_the_split_and_each_workers_plan(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    code, out, err = run_cli(["inspect", "--model", str(smollm2_path()), "--cluster", "local:3",
                              "--worker-budget", "40M", "--json"], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out)
    rows = report["workers"]
    assert rows[0]["layers"][0] == 0 and rows[-1]["layers"][1] == 29
    assert [r["head"] for r in rows] == [False, False, True]
    assert all(r["speed_bytes_per_s"] > 1e8 for r in rows)  # measured on each worker
    for r in rows:
        assert r["budget_bytes"] == 40 * 2**20
        assert r["minimum_bytes"] <= r["predicted_peak_bytes"] <= r["budget_bytes"]
    assert any(not all(r["resident_groups"]) for r in rows)  # 40M makes a worker stream
    code, out, err = run_cli(["inspect", "--model", str(smollm2_path()), "--cluster", "local:2"],
                             monkeypatch, capsys)
    assert code == 0, err
    assert "on 2 worker(s) of local:2" in out and "+head" in out


def test_benchmark_runs_the_sweep_on_each_cluster_after_the_one_process_baseline(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    code, out, err = run_cli(["benchmark", "--model", str(smollm2_path()), "--cluster", "local:2",
                              "--sweep-memory", "40M", "--strategies", "sequential", "-n", "6",
                              "--json"], monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    rows = data["rows"]
    assert [(r["cluster"], r["budget"]) for r in rows] == [(None, None), ("local:2", None),
                                                          ("local:2", "40M")]
    assert all(r["error"] is None for r in rows)
    assert rows[0]["workers"] is None and [r["workers"] for r in rows[1:]] == [2, 2]
    assert all(r["hop_ms"] > 0 for r in rows[1:])
    assert rows[2]["within_budget"] is True
    assert data["summary"]["identical_outputs"] is True


def test_a_worker_that_does_not_answer_at_the_start_is_a_timeout_error(tmp_path: Path) -> None:
    with loopback_dask(tmp_path, 2) as address:
        client, _ = connect(address, timeout_s=30)
        pids = client.run(os.getpid)
        client.close()
        stuck_address, stuck = sorted(pids.items())[1]
        os.kill(stuck, signal.SIGSTOP)  # alive to the scheduler, silent to everyone
        try:
            t0 = time.monotonic()
            with pytest.raises(ClusterError, match=f"{stuck_address}.* did not answer within 3 s"):
                load_model(smollm2_path(), cluster=address, cluster_timeout_s=3, notify=None)
            assert time.monotonic() - t0 < 60
        finally:
            os.kill(stuck, signal.SIGCONT)


def test_chat_runs_on_a_cluster(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    import io

    code, out, err = run_cli(["chat", "--model", str(smollm2_path()), "--cluster", "local:2",
                              "-n", "12"], monkeypatch, capsys,
                             stdin=io.StringIO("What is the capital of France?\n"))
    assert code == 0, err
    assert "on 2 Dask worker(s)" in err
    m = load_model(smollm2_path(), backend="neon", governor="none", notify=None)
    try:
        want = m.chat().send("What is the capital of France?", max_tokens=12).result().text
    finally:
        m.close()
    assert want and want.strip() in out


def test_workers_with_different_memory_limits_get_shares_to_match(tmp_path: Path) -> None:
    """No --worker-budget: each budget is the worker's Dask limit less its RSS and the margin,
    and the worker with three times the limit gets about three times the weights."""
    path = smollm2_path()
    want = reference_ids(path, "neon", 8)
    with loopback_dask(tmp_path, 2, memory_limits=["300MiB", "900MiB"]) as address:
        m = load_model(path, backend="neon", cluster=address, notify=None)
        try:
            got = m.generate(PROMPT, max_tokens=8).result().ids
            plans = m.pipeline.plans  # type: ignore[attr-defined]
            report = m.engine_report()
        finally:
            m.close()
    assert got == want
    small, big = sorted(plans, key=lambda p: p.memory_limit)
    assert (small.first, big.stop) == (0, 30)  # the larger budget takes the stage with the head
    for p in plans:  # the limit less the RSS and a 10 % margin (at least 32 MiB)
        assert p.budget_bytes == p.memory_limit - p.rss_bytes - max(32 * 2**20,
                                                                   int(p.memory_limit * 0.10))
    layout = open_source(path).validate().layout()

    def weight(p):  # type: ignore[no-untyped-def]
        head = layout.head_bytes if p.stop == 30 else 0
        return sum(layout.layer_bytes[p.first:p.stop]) + head

    share = weight(big) / (weight(big) + weight(small))
    wanted = big.budget_bytes / (big.budget_bytes + small.budget_bytes)
    assert abs(share - wanted) < 0.05, (share, wanted)
    for w in report["workers"]:
        assert w["peak_rss_bytes"] - w["baseline_rss_bytes"] <= w["budget_bytes"]
