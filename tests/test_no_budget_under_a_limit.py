"""A run given no budget on a machine that cannot hold every weight resident (a cgroup's memory
limit, or MemAvailable) plans for what the machine leaves, as ``--memory-budget auto`` does, and
says so once, instead of being killed by the kernel's OOM killer while it loads (issue 17: "no OOM
kill in any row")."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import model_helpers as mh
import pytest

from edgert_core.api import load_model
from edgert_core.budget import format_bytes
from edgert_core.errors import InfeasibleBudgetError
from edgert_core.memory.auto_budget import AUTO_MARGIN_BYTES
from edgert_core.testing import smollm2_for_tests

MIB = 1 << 20
PROMPT = [5, 6, 7, 8]


def test_no_budget_the_machine_cannot_hold_plans_for_what_it_leaves(
        pi4: Path, tmp_path: Path) -> None:
    gguf = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "t.gguf", "Q8_0")
    roomy = load_model(gguf, backend="numpy", max_context=96, notify=None)  # the fake Pi: 3 GB free
    assert roomy.context.budget_bytes is None and all(g.resident for g in roomy.plan.groups)
    expected = roomy.generate(PROMPT, max_tokens=6).result().ids
    resident, minimum = roomy.plan.predicted_peak_bytes, roomy.minimum_budget_bytes
    roomy.close()

    left = (resident + minimum) // 2 // 1024 * 1024  # MemAvailable is in kB
    mh.set_mem_available(pi4, left + AUTO_MARGIN_BYTES)
    notes: list[str] = []
    m = load_model(gguf, backend="numpy", max_context=96, notify=notes.append)
    assert m.context.budget_bytes == left and m.auto_budget
    assert not all(g.resident for g in m.plan.groups)
    assert "no budget given; every weight resident needs" in m.budget_source
    assert len(notes) == 1 and "as --memory-budget auto does" in notes[0], notes
    assert m.generate(PROMPT, max_tokens=6).result().ids == expected
    m.close()

    # a budget the user gives is theirs, whatever the machine leaves
    given = load_model(gguf, backend="numpy", max_context=96, memory_budget=resident, notify=None)
    assert given.context.budget_bytes == resident and not given.auto_budget


def test_no_budget_in_a_cgroup_too_small_for_the_model_runs_instead_of_being_killed() -> None:
    """``edge-rt run`` on SmolLM2 with no budget in a real 128 MiB memory cgroup (where this process
    may make one): every weight resident needs more, so it plans for the limit, is not killed, and
    gives the tokens of the unlimited run."""
    model = smollm2_for_tests()
    cmd = [*mh.edge_rt_command(), "run", "--model", str(model), "--backend", "neon",
           "--prompt", "The ship entered the port of", "--max-tokens", "12", "--json"]
    free = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert free.returncode == 0, free.stderr
    unlimited = json.loads(free.stdout.strip().splitlines()[-1])
    assert unlimited["budget_bytes"] is None
    cgroup = mh.real_memory_cgroup(128 * MIB)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                              preexec_fn=cgroup.enter)
        stats = cgroup.stats()
    finally:
        cgroup.remove()
    assert done.returncode == 0, done.stderr
    assert stats.oom_kills in (0, None)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["generated_ids"] == unlimited["generated_ids"]
    assert report["budget_bytes"] is not None and report["budget_bytes"] < 128 * MIB
    assert "no budget given" in report["budget_source"]
    assert "as --memory-budget auto does" in done.stderr


def test_a_machine_too_small_even_to_stream_is_one_clear_error(pi4: Path, tmp_path: Path) -> None:
    gguf = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "t.gguf", "Q8_0")
    roomy = load_model(gguf, backend="numpy", max_context=96, notify=None)
    minimum = roomy.minimum_budget_bytes
    mh.set_mem_available(pi4, AUTO_MARGIN_BYTES + minimum // 2)
    with pytest.raises(InfeasibleBudgetError) as err:
        load_model(gguf, backend="numpy", max_context=96, notify=None)
    message = str(err.value)
    assert err.value.minimum_bytes == minimum
    assert "with every weight resident" in message and "this machine leaves" in message
    assert format_bytes(minimum) in message and "--memory-budget" not in message  # none was given
