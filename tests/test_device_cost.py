"""The device cost model (``edgert_core.device_cost``), the ``auto`` ranking by bytes read from disk
(``edgert_core.planner``) and the measured read bandwidth kept in the cache
(``edgert_core.memory.bandwidth``). The run under a real memory limit is in test_memory_limit.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgert_core import LayerGroup, PlanningContext, load_registry, synthetic_layout
from edgert_core.device_cost import device_cost, disk_bound_tokens_per_s, seconds_per_token
from edgert_core.memory import bandwidth
from edgert_core.plan import make_plan
from edgert_core.planner import all_plans, choose_auto
from edgert_core.pull import cache_dir
from edgert_core.testing import handmade_layout

MiB = 2**20
LAYOUT = handmade_layout([100, 200, 300], 250)
CTX = PlanningContext(None, max_context=8, prefill_chunk=4)


def test_streamed_weights_stay_cached_only_where_plan_and_stream_fit_the_room() -> None:
    plan = make_plan("test", LAYOUT, CTX, [LayerGroup((0,), resident=True), LayerGroup((1, 2))],
                     head_resident=False)
    peak, streamed = plan.predicted_peak_bytes, plan.streamed_bytes_per_token(LAYOUT)
    assert streamed == 200 + 300 + 250
    fits = device_cost(plan, LAYOUT, peak + streamed)
    assert fits.read_mode == "cached" and fits.disk_bytes_per_token == 0 and "fit" in fits.reason
    short = device_cost(plan, LAYOUT, peak + streamed - 1)
    assert short.read_mode == "drop" and short.disk_bytes_per_token == streamed
    assert "exceed" in short.reason
    free = device_cost(plan, LAYOUT, None)
    assert free.read_mode == "cached" and free.disk_bytes_per_token == 0 and "no memory limit" in free.reason


def test_a_resident_plan_reads_nothing_whatever_the_room() -> None:
    plan = make_plan("resident", LAYOUT, CTX, [LayerGroup((0, 1, 2), resident=True)],
                     head_resident=True)
    cost = device_cost(plan, LAYOUT, 1)
    assert cost == device_cost(plan, LAYOUT, None)
    assert cost.read_mode == "cached" and cost.disk_bytes_per_token == 0


def test_disk_bound() -> None:
    assert disk_bound_tokens_per_s(50 * MiB, 1000 * MiB) == pytest.approx(20.0)
    assert disk_bound_tokens_per_s(0, 1000 * MiB) is None
    assert disk_bound_tokens_per_s(50 * MiB, None) is None
    assert disk_bound_tokens_per_s(None, 1e9) is None


def test_auto_under_a_tight_room_ranks_plans_by_their_time_at_the_disk_speed() -> None:
    """SmolLM2's shape at a 64 MiB budget with every installed strategy, where the room is the
    budget (a memory limit leaves no page cache for streamed weights): every plan reads all its
    streamed bytes from disk, no estimate beats its disk bound, ``auto`` picks the fastest estimate;
    on a slow disk that is the plan reading the fewest bytes. Where the room holds everything, the
    disk plays no part and the rank is the one without a device."""
    layout = synthetic_layout("smollm2-135m")
    registry = load_registry()
    budget = 64 * MiB
    for speed in (500e6, 1e6):
        tight = PlanningContext(budget, max_context=512, room_bytes=budget, disk_bytes_per_s=speed)
        plans = [o.plan for o in all_plans(registry, layout, tight) if o.plan is not None]
        assert len(plans) >= 2
        times = {}
        for p in plans:
            cost = device_cost(p, layout, budget)
            assert cost.read_mode == "drop"
            assert cost.disk_bytes_per_token == p.streamed_bytes_per_token(layout)
            times[p] = seconds_per_token(p, layout, cost, speed)
            assert times[p] >= cost.disk_bytes_per_token / speed
        chosen = choose_auto(registry, layout, tight)
        assert times[chosen] == min(times.values())
        if speed == 1e6:
            fewest = min(p.streamed_bytes_per_token(layout) for p in plans)
            assert {p.streamed_bytes_per_token(layout) for p in plans} != {fewest}  # the choice matters
            assert chosen.streamed_bytes_per_token(layout) == fewest
    roomy = PlanningContext(budget, max_context=512, room_bytes=2**40, disk_bytes_per_s=500e6)
    plain = PlanningContext(budget, max_context=512)
    assert choose_auto(registry, layout, roomy) == choose_auto(registry, layout, plain)


# -- the measured bandwidth ----------------------------------------------------------------------
def _file(tmp_path: Path, mib: int = 8) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(mib * MiB))
    os.sync()  # written back, so dropping its cached pages is possible
    return path


def test_bandwidth_is_measured_once_per_file_and_kept_in_the_cache(tmp_path: Path) -> None:
    """The figure is a positive bytes/s measured on the file; the second call takes it from
    ``$EDGERT_CACHE/device/read-bandwidth.json`` (a temporary folder in tests); a file whose
    modification time changed is measured again."""
    path = _file(tmp_path)
    first = bandwidth.read_bandwidth(path)
    assert first is not None and first.bytes_per_s > 0 and not first.cached
    assert first.how in ("direct", "drop")  # the read mode that reached it
    assert bandwidth.cache_file().is_file()
    assert bandwidth.cache_file().parent.parent == cache_dir()  # a temporary folder in tests
    again = bandwidth.read_bandwidth(path)
    assert again is not None and again.cached and again.bytes_per_s == pytest.approx(first.bytes_per_s)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = bandwidth.read_bandwidth(path)
    assert changed is not None and not changed.cached
    kept = json.loads(bandwidth.cache_file().read_text())
    assert len([k for k in kept if k.startswith(str(path.resolve()))]) == 2


def test_a_broken_cache_file_is_measured_again_and_rewritten(tmp_path: Path) -> None:
    path = _file(tmp_path, 1)
    bandwidth.cache_file().parent.mkdir(parents=True, exist_ok=True)
    bandwidth.cache_file().write_text("{not json")
    found = bandwidth.read_bandwidth(path)
    assert found is not None and not found.cached
    assert isinstance(json.loads(bandwidth.cache_file().read_text()), dict)


def test_a_file_that_cannot_be_read_has_no_bandwidth(tmp_path: Path) -> None:
    assert bandwidth.read_bandwidth(tmp_path / "missing.gguf") is None


def test_a_file_smaller_than_one_read_is_measured(tmp_path: Path) -> None:
    path = tmp_path / "small.bin"
    path.write_bytes(os.urandom(3 * 4096 + 17))
    found = bandwidth.measure(path)
    assert found.bytes_per_s > 0


def test_inspect_under_a_memory_limit_shows_what_each_plan_reads_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under a limit (faked: the budget is all the room) ``inspect`` plans with the device facts ``run`` uses:
    the room, the model file's measured bandwidth, and per plan the bytes it would read from disk
    each token (all it streams, since its pool fills the budget and no room is left for the page
    cache); without a limit there is no such column."""
    import model_helpers as mh

    import edgert_core.api as api
    from edgert_core.memory.auto_budget import AUTO_MARGIN_BYTES, DeviceRoom

    model = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "t.gguf", "Q8_0")
    args = ["inspect", "--model", str(model), "--backend", "numpy", "--max-context", "16",
            "--memory-budget", "2400K", "--json"]  # the minimum is 2315.5 KiB, all resident 2580.25
    code, out, err = mh.run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    free = json.loads(out)["planning"]
    assert free["room_bytes"] is None and {p["disk_bytes_per_token"] for p in free["plans"]} <= {0, None}
    monkeypatch.setattr(api.auto_budget, "room_under_limit",
                        lambda rss: DeviceRoom(2400 * 1024 + AUTO_MARGIN_BYTES, "faked", 128 * MiB, None))
    code, out, err = mh.run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    limited = json.loads(out)["planning"]
    assert limited["room_bytes"] == 2400 * 1024
    assert limited["disk_read_bytes_per_s"] > 0  # measured on the model file
    plans = [p for p in limited["plans"] if p["error"] is None]
    assert plans and all(p["disk_bytes_per_token"] == p["streamed_bytes_per_token"] > 0 for p in plans)
    code, text, err = mh.run_cli(args[:-1], monkeypatch, capsys)
    assert code == 0 and "disk/tok" in text and "under a memory limit" in text
