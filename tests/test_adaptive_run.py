"""The runtime adapting while it generates (issue 15), driven through a fake Raspberry Pi 4 tree
(``tests/fixtures/pi4``, copied to a temporary folder and pointed at with ``EDGERT_PROCFS_ROOT`` /
``EDGERT_SYSFS_ROOT``) whose files the tests rewrite between two tokens:

- MemAvailable falls mid-generation: the engine re-plans for a smaller budget before the next token,
  the OS-measured RSS drops, and the greedy tokens are those of an undisturbed run; when memory comes
  back it grows back;
- a limit set through the API below the minimum stops the run cleanly with the tokens so far;
- the temperature crosses the soft limit: threads go down, then tokens are paced, then both come
  back once it cools;
- ``--governor none`` reads nothing and changes nothing; a plugin's governor is picked by name.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import model_helpers as mh
import pytest

from edgert_core.adaptive import MemoryPressureError
from edgert_core.api import Generation, Model, load_model
from edgert_core.builtin_governor import AdaptiveGovernor
from edgert_core.errors import UnknownNameError
from edgert_core.governor import Action, Governor, GovernorState
from edgert_core.memory.rss import current_rss_bytes
from edgert_core.monitors.base import Reading
from edgert_core.plugin_api import hookimpl
from edgert_core.plugins import load_registry
from edgert_core.testing import smollm2_for_tests

MIB = 1 << 20
PROMPT = "The ship entered the port of"
N_TOKENS = 24


@pytest.fixture
def pi(pi4: Path) -> Path:
    """The fake Pi 4 (the ``pi4`` fixture of conftest.py)."""
    return pi4


def set_temperature(root: Path, celsius: float) -> None:
    (root / "sys" / "class" / "thermal" / "thermal_zone0" / "temp").write_text(
        f"{int(celsius * 1000)}\n")


def fast(model: Model, **rules: float) -> AdaptiveGovernor:
    """The built-in governor with rules a test can wait for, reading the monitors every token."""
    gov = AdaptiveGovernor(**rules)
    gov.read_interval_s = 0.0  # type: ignore[misc]
    model.governor = gov
    return gov


@pytest.fixture(scope="module")
def undisturbed() -> list[int]:
    with load_model(smollm2_for_tests(), backend="neon", max_context=256, governor="none",
                    notify=None) as model:
        return model.generate(PROMPT, max_tokens=N_TOKENS).result().ids


def run_with(model: Model, at: dict[int, Callable[[], None]]) -> tuple[Generation, dict[int, int]]:
    """Generate, calling ``at[i]`` right after token ``i`` (counting from 1) arrived; the
    generation and the OS-measured RSS after each token."""
    gen = model.generate(PROMPT, max_tokens=N_TOKENS)
    rss: dict[int, int] = {}
    for token in gen:
        if token.id < 0:
            continue
        n = len(gen.ids)
        rss[n] = current_rss_bytes()
        if n in at:
            at[n]()
    return gen, rss


def test_memavailable_falling_mid_generation_shrinks_the_plan_and_the_rss(
        pi: Path, undisturbed: list[int]) -> None:
    notes: list[str] = []
    model = load_model(smollm2_for_tests(), backend="neon", max_context=256, notify=notes.append)
    fast(model, settle_s=0.0, calm_s=0.05)
    try:
        gen, rss = run_with(model, {
            6: lambda: mh.set_mem_available(pi, 100 * MIB),  # a browser opens
            14: lambda: mh.set_mem_available(pi, 3000 * MIB),  # it closes
        })
    finally:
        model.close()
    assert gen.ids == undisturbed  # the KV cache and the conversation were kept
    events = gen.events
    kinds = [(e.kind, e.token_index) for e in events]
    assert kinds[0] == ("shrink", 6), kinds
    assert events[0].budget_bytes == model.minimum_budget_bytes
    assert "MemAvailable 100.0 MiB is under the" in events[0].reason
    # the RSS the OS reports drops by what the smaller plan does not keep, within a token
    assert rss[7] < rss[6] - 40 * MIB, (rss[6], rss[7])
    # memory came back: after the calm spell the budget grows back to everything resident
    grows = [e for e in events if e.kind == "grow"]
    assert grows and grows[-1].budget_bytes == model.start_budget_bytes, kinds
    after = [rss[k] for k in rss if k > grows[-1].token_index + 1]
    assert after and max(after) > rss[7] + 40 * MIB
    assert any(n.startswith("edge-rt: shrink before token 7:") for n in notes), notes


def test_a_limit_below_the_minimum_stops_with_the_tokens_so_far(pi: Path,
                                                                undisturbed: list[int]) -> None:
    model = load_model(smollm2_for_tests(), backend="neon", max_context=256, notify=None)
    fast(model)
    gen = model.generate(PROMPT, max_tokens=N_TOKENS)
    got: list[int] = []
    with pytest.raises(MemoryPressureError) as caught:
        for token in gen:
            got.append(token.id)
            if len(got) == 4:
                model.set_memory_limit(1 * MIB)
    model.close()
    assert got == undisturbed[:4] == gen.ids
    assert gen.stats.stop_reason == "memory_pressure"
    message = str(caught.value)
    assert message.startswith("Stopped after 4 tokens: the memory limit set through the API is 1.0 MiB")
    assert "below the" in message and "the smallest plan needs for a context of 256 tokens" in message


def test_a_lower_limit_through_the_api_replans_and_keeps_the_tokens(
        pi: Path, undisturbed: list[int]) -> None:
    model = load_model(smollm2_for_tests(), backend="neon", max_context=256, notify=None)
    fast(model)
    limit = model.minimum_budget_bytes + 8 * MIB
    gen, _ = run_with(model, {3: lambda: model.set_memory_limit(limit)})
    model.close()
    assert gen.ids == undisturbed
    assert [(e.kind, e.token_index, e.budget_bytes) for e in gen.events] == [("limit", 3, limit)]
    assert model.context.budget_bytes == limit and model.plan.predicted_peak_bytes <= limit


def test_heat_lowers_threads_then_paces_and_cooling_restores_both(
        pi: Path, undisturbed: list[int]) -> None:
    model = load_model(smollm2_for_tests(), backend="neon", max_context=256, threads=2,
                       notify=None)
    fast(model, heat_step_s=0.0, pace_step_s=0.02)
    set_temperature(pi, 52.6)
    gen, _ = run_with(model, {
        4: lambda: set_temperature(pi, 85.0),
        10: lambda: set_temperature(pi, 60.0),
    })
    events = gen.events
    model.close()
    assert gen.ids == undisturbed
    got = [(e.kind, e.token_index, e.threads) for e in events]
    assert got[:2] == [("threads", 4, 1), ("pace", 5, 1)], got
    assert ("pace", 10, 1) in got and got[-1] == ("threads", got[-1][1], 2), got
    assert "85.0 °C is over the 80 °C soft limit" in events[0].reason
    assert model.backend.threads == 2  # type: ignore[attr-defined]


def test_governor_none_reads_nothing(pi: Path, monkeypatch: pytest.MonkeyPatch,
                                     undisturbed: list[int]) -> None:
    import edgert_core.monitors.sampler as sampler

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("a monitor was read with --governor none")

    monkeypatch.setattr(sampler.ReadingSampler, "readings", refuse)
    mh.set_mem_available(pi, 10 * MIB)
    with load_model(smollm2_for_tests(), backend="neon", max_context=256, governor="none",
                    notify=None) as model:
        gen = model.generate(PROMPT, max_tokens=N_TOKENS)
        assert gen.result().ids == undisturbed and gen.events == [] and gen.adaptive is None


class EveryOther(Governor):
    """A plugin's governor: one kernel thread from the third token on."""

    name = "one-thread"
    description = "one kernel thread after two tokens"

    def step(self, readings: dict[str, Reading], state: GovernorState) -> Action | None:  # type: ignore[override]
        assert "memory.available" in readings  # it sees the monitors' readings
        if state.token_index == 2 and state.threads != 1:
            return Action("threads", "the plugin says so", threads=1)
        return None


def test_a_plugins_governor_is_picked_by_name_and_unknown_names_are_listed(
        pi: Path, undisturbed: list[int]) -> None:
    plugin = types.ModuleType("one_thread_plugin")

    @hookimpl
    def edgert_register_governors(register: Callable[[type[Governor]], None]) -> None:
        register(EveryOther)

    plugin.edgert_register_governors = edgert_register_governors  # type: ignore[attr-defined]
    registry = load_registry(extra=[("one-thread", plugin)])
    assert registry.governor_names() == ["adaptive", "one-thread"]
    with load_model(smollm2_for_tests(), backend="neon", max_context=256, threads=2,
                    registry=registry, governor="one-thread", notify=None) as model:
        gen = model.generate(PROMPT, max_tokens=8)
        ids = gen.result().ids
        assert [(e.kind, e.token_index, e.threads) for e in gen.events] == [("threads", 2, 1)]
    assert ids == undisturbed[:8]
    with pytest.raises(UnknownNameError, match="installed governors: adaptive, one-thread"):
        load_model(mh.fixture("tiny_llama"), registry=registry, governor="nope", notify=None)


def test_run_json_reports_the_events(pi: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """With MemAvailable low from the start, an unbudgeted run re-plans before its first token."""
    import json

    mh.set_mem_available(pi, 50 * MIB)
    code, out, err = mh.run_cli(["run", "--model", str(smollm2_for_tests()), "--backend", "neon",
                                 "--max-context", "256", "-n", "6", "--prompt", PROMPT, "--json"],
                                monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["governor"] == "adaptive"
    assert [e["kind"] for e in report["events"]] == ["shrink"]
    event = report["events"][0]
    assert set(event) == {"token_index", "kind", "reason", "budget_bytes", "threads"}
    assert event["token_index"] == 0 and event["budget_bytes"] == report["budget_bytes"]
    assert "edge-rt: shrink before token 1: MemAvailable 50.0 MiB is under the" in err


def test_benchmark_rows_record_the_temperature_and_the_governors_changes(pi: Path) -> None:
    """On the fake Pi at 85 °C every run of ``edge-rt benchmark`` (a child process, which inherits
    the roots) starts and ends at that temperature and paces its tokens (the numpy backend has no
    threads to take away); the rows say both, and the table grows the columns."""
    import json
    import subprocess
    import sys

    set_temperature(pi, 85.0)
    cmd = [sys.executable, "-m", "edgert_core", "benchmark", "--model", str(mh.fixture("tiny_llama")),
           "--backend", "numpy", "--sweep-memory", "8M", "--strategies", "sequential",
           "--max-tokens", "3", "--max-context", "32", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    assert len(rows) == 2
    for row in rows:
        assert row["error"] is None
        assert row["temperature_start_c"] == row["temperature_end_c"] == 85.0
        assert [e["kind"] for e in row["events"]][:1] == ["pace"], row["events"]


def test_the_benchmark_table_shows_temperatures_and_events_only_where_there_are(
        capsys: pytest.CaptureFixture[str]) -> None:
    from edgert_core.benchmark import BenchResult, summarize
    from edgert_core.cli.benchmark_cmd import _print_table

    plain = BenchResult("sequential", "8M", 8 * MIB, decode_tokens_per_s=10.0)
    _print_table([plain], summarize([plain]))
    out = capsys.readouterr().out
    assert "°C start" not in out and "events" not in out
    hot = BenchResult("sequential", "8M", 8 * MIB, decode_tokens_per_s=10.0,
                      temperature_start_c=52.6, temperature_end_c=81.3,
                      events=[{"kind": "threads", "token_index": 40}, {"kind": "pace",
                                                                         "token_index": 52}])
    _print_table([hot], summarize([hot]))
    out = capsys.readouterr().out
    assert "°C start" in out and "52.6" in out and "81.3" in out
    assert "threads@40, pace@52" in out


CHILD = """
import json, sys
from edgert_core.api import load_model
from edgert_core.builtin_governor import AdaptiveGovernor
model = load_model(sys.argv[1], backend="neon", max_context=256, memory_budget="auto", notify=None)
gov = AdaptiveGovernor(settle_s=0.0)
gov.read_interval_s = 0.0
model.governor = gov
start = model.context.budget_bytes
gen = model.generate(sys.argv[2], max_tokens=int(sys.argv[3]))
for token in gen:
    if len(gen.ids) == 4 and token.id >= 0:
        print("READY", flush=True)
        sys.stdin.readline()
model.close()
print(json.dumps({"ids": gen.ids, "start_budget": start, "events": [e.as_dict() for e in gen.events]}))
"""


def test_a_real_cgroup_limit_lowered_mid_generation_shrinks_an_auto_budget(
        undisturbed: list[int]) -> None:
    """A real memory cgroup (where this process may make one): the run starts with ``auto`` under
    600 MiB; after its fourth token the limit drops to 250 MiB; the budget follows before the next
    token (the room the cgroup leaves), the run stays inside the limit, and the tokens do not
    change."""
    import json
    import subprocess
    import sys

    cgroup = mh.real_memory_cgroup(600 * MIB)
    try:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(smollm2_for_tests()), PROMPT,
                                 str(N_TOKENS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=cgroup.enter)
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line.strip() == "READY", (line, proc.stderr.read() if proc.stderr else "")
        cgroup.set_limit(250 * MIB)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=300)
        stats = cgroup.stats()
    finally:
        cgroup.remove()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["ids"] == undisturbed
    shrinks = [e for e in report["events"] if e["kind"] == "shrink"]
    assert [e["kind"] for e in report["events"]] == ["shrink"] * len(shrinks), report["events"]
    first = shrinks[0]  # more may follow while the kernel settles what the cgroup holds
    assert first["token_index"] == 4 and "the machine leaves the pool" in first["reason"]
    for event in shrinks:
        assert event["budget_bytes"] < min(report["start_budget"], 250 * MIB - 16 * MIB)
    assert stats.oom_kills in (0, None)


@pytest.mark.parametrize(("args", "message"), [
    (["--governor", "calm"], "error: Unknown governor 'calm'; installed governors: adaptive. Or use "
                             "none, which turns adaptation off."),
    (["--soft-temp-limit", "-5"], "error: The soft temperature limit must be between 0 and 150 °C, "
                                  "got -5."),
])
def test_bad_governor_options_are_one_clear_error(args: list[str], message: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = mh.run_cli(["run", "--model", str(mh.fixture("tiny_llama")), "-n", "2",
                                  "--prompt-ids", "1,2", *args], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines()[-1] == message and "Traceback" not in err


def test_a_preset_sets_the_governor_and_the_soft_limit(tmp_path: Path, pi: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``soft_temp_limit = 50`` in a preset: the fake Pi's 52.6 °C is over it, so the run is paced
    (the numpy backend has no threads to lower); ``governor = "none"`` in another turns that off."""
    import json

    hot = tmp_path / "hot.toml"
    hot.write_text('soft_temp_limit = 50\ngovernor = "adaptive"\n')
    off = tmp_path / "off.toml"
    off.write_text('soft_temp_limit = 50\ngovernor = "none"\n')
    reports = []
    for preset in (hot, off):
        code, out, err = mh.run_cli(["run", "--model", str(mh.fixture("tiny_llama")), "-n", "2",
                                     "--backend", "numpy", "--prompt-ids", "1,2", "--json",
                                     "-c", str(preset)], monkeypatch, capsys)
        assert code == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [e["kind"] for e in reports[0]["events"]] == ["pace"]
    assert "52.6 °C is over the 50 °C soft limit" in reports[0]["events"][0]["reason"]
    assert reports[0]["temperature_start_c"] == 52.6
    assert reports[1]["governor"] is None and reports[1]["events"] == []
