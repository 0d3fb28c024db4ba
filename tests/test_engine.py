"""The engine under the memory pool: typestate (mypy and run time), identical greedy tokens with and
without a budget for every installed strategy and weight source, the pool empty after close, the
prefetch thread's errors and lifetime, the prepared-weights cache, and no RSS growth over a long run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import model_helpers as mh
import numpy as np
import pytest

from edgert_core import ExecutionPlan, LayerGroup, ModelLayout, PluginRegistry, weight_cache
from edgert_core.api import load_model
from edgert_core.backends.numpy_ref import NumpyBackend
from edgert_core.engine import Engine, EngineStateError, ReadyEngine
from edgert_core.errors import InfeasibleBudgetError, ModelError
from edgert_core.generate import generate_ids
from edgert_core.memory.auto_budget import AUTO_MARGIN_BYTES, DeviceRoom
from edgert_core.memory.malloc import give_back_freed_memory
from edgert_core.memory.rss import current_rss_bytes
from edgert_core.plan import PlanningContext, fixed_bytes, minimum_budget
from edgert_core.plugin_api import PartitionStrategy, group_stages, hookimpl, make_plan
from edgert_core.plugins import load_registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def q8_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mh.write_gguf(mh.fixture("tiny_llama"), tmp_path_factory.mktemp("m") / "t.gguf", "Q8_0")


def greedy(model_path: Path | str, budget: int | None, strategy: str, backend: str = "numpy",
           **kw: object) -> tuple[list[int], ReadyEngine]:
    kw.setdefault("notify", None)
    model = load_model(model_path, backend=backend, memory_budget=budget, strategy=strategy,
                       max_context=64, prefill_chunk=4, **kw)  # type: ignore[arg-type]
    ids = model.generate([5, 6, 7, 8, 9, 10, 11], max_tokens=12).result().ids
    engine = model.engine
    model.close()
    return ids, engine


def budgets_for(model_path: Path, backend: str) -> list[int]:
    model = load_model(model_path, backend=backend, max_context=64, prefill_chunk=4, notify=None)
    ctx = PlanningContext(None, max_context=64, prefill_chunk=4)
    low = minimum_budget(model.layout, ctx)
    fixed = fixed_bytes(model.layout, ctx)  # the weights' room is what grows
    return [low, fixed + (low - fixed) * 5 // 4, fixed + (low - fixed) * 2, fixed + (low - fixed) * 8]


def prefetch_budget(model_path: Path, max_context: int = 64) -> int:
    """A budget at which speculative-prefetch streams (and prefetches) most of the model."""
    from edgert_speculative import prefetch_minimum

    model = load_model(model_path, backend="numpy", max_context=max_context, notify=None)
    ctx = PlanningContext(None, max_context=max_context)
    minimum = prefetch_minimum(model.layout, ctx)
    # 10 % more room for weights than the minimum gives them (the fixed bytes are not room)
    return minimum + (minimum - fixed_bytes(model.layout, ctx)) // 10


@pytest.mark.parametrize("backend", ["numpy", "neon"])
@pytest.mark.parametrize("source", ["gguf", "hf-gpt2"])
def test_greedy_tokens_do_not_depend_on_budget_or_strategy(
    backend: str, source: str, q8_gguf: Path, cache_dir: Path
) -> None:
    path = q8_gguf if source == "gguf" else mh.fixture("tiny_gpt2")
    reference, _ = greedy(path, None, "auto", backend)
    ran = 0
    for strategy in load_registry().names("strategy"):
        for budget in budgets_for(path, backend):
            try:
                ids, engine = greedy(path, budget, strategy, backend)
            except InfeasibleBudgetError:
                continue
            ran += 1
            assert ids == reference, (strategy, budget, engine.weight_source)
            assert engine.pool.held_bytes == 0 and engine.pool.closed
            assert engine.pool.peak_bytes <= budget
    assert ran >= 9


def staged_registry(stage_bytes: int, prefetch: bool) -> PluginRegistry:
    """The installed plugins and a strategy ``staged`` that streams every layer as one group cut
    into stages of at most ``stage_bytes``."""

    class Staged(PartitionStrategy):
        name = "staged"

        def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
            group = LayerGroup(tuple(range(len(layout.layers))))
            return make_plan(self.name, layout, ctx, [group], prefetch=prefetch,
                             stage_bytes=stage_bytes)

    class Plugin:
        @hookimpl
        def edgert_register_strategies(
            self, register: Callable[[type[PartitionStrategy]], None]
        ) -> None:
            register(Staged)

    return load_registry(extra=[("staged", Plugin())])


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("source", ["gguf", "hf-gpt2"])
def test_stages_cut_anywhere_between_block_parts_give_the_same_logits(
    source: str, prefetch: bool, q8_gguf: Path, cache_dir: Path
) -> None:
    path = q8_gguf if source == "gguf" else mh.fixture("tiny_gpt2")
    prompt = [5, 6, 7, 8, 9, 10, 11]
    reference, _ = greedy(path, None, "auto")
    whole = load_model(path, backend="numpy", max_context=64, notify=None)
    reference_logits = whole.logits(prompt)
    layout = whole.layout
    whole.close()
    parts = [b for layer in layout.part_bytes for b in layer]
    sizes = {1, max(parts), sum(parts)} | {sum(parts[i : i + k]) for k in (2, 3, 4) for i in (0, 1, 2)}
    mid_layer = across_layers = False
    for stage_bytes in sorted(sizes):
        cuts = group_stages(layout, range(len(layout.layers)), stage_bytes)
        mid_layer |= any(cut[0][1] != 0 for cut in cuts)
        across_layers |= any(cut[0][0] != cut[-1][0] for cut in cuts)
        registry = staged_registry(stage_bytes, prefetch)
        ids, engine = greedy(path, None, "staged", registry=registry)
        assert ids == reference, (stage_bytes, cuts)
        assert engine.plan.stage_bytes == stage_bytes and engine.pool.held_bytes == 0
        staged = load_model(path, backend="numpy", strategy="staged", registry=registry,
                            max_context=64, notify=None)
        # the same arithmetic; buffers placed differently may round the last bit differently
        np.testing.assert_allclose(staged.logits(prompt), reference_logits, rtol=1e-5, atol=1e-5)
        staged.close()
    assert mid_layer and across_layers  # stages that start inside a layer and span two layers


def test_dequantize_on_load_and_prepared_cache_agree(q8_gguf: Path, cache_dir: Path) -> None:
    budget = budgets_for(q8_gguf, "numpy")[2]
    on_load, e1 = greedy(q8_gguf, budget, "sequential", weight_cache=False)
    assert e1.weight_source == "model-file" and not list(cache_dir.glob("prepared/*"))
    cached, e2 = greedy(q8_gguf, budget, "sequential")
    assert e2.weight_source == "prepared-cache" and e2.weight_cache_built
    again, e3 = greedy(q8_gguf, budget, "speculative-prefetch")
    assert e3.weight_source == "prepared-cache" and not e3.weight_cache_built
    assert on_load == cached == again
    files = list((cache_dir / "prepared").iterdir())
    assert len(files) == 1 and files[0].suffix == ".edgert-prepared"  # no temporary left


def test_weight_cache_can_be_turned_off_by_env(q8_gguf: Path, cache_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGERT_WEIGHT_CACHE", "0")
    _, engine = greedy(q8_gguf, budgets_for(q8_gguf, "numpy")[1], "sequential")
    assert engine.weight_source == "model-file"


def test_a_rebuilt_cache_removes_only_the_stale_ones(q8_gguf: Path, cache_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model_file = tmp_path / "model.gguf"
    shutil.copyfile(q8_gguf, model_file)
    budget = budgets_for(model_file, "numpy")[1]
    notes: list[str] = []
    _, engine = greedy(model_file, budget, "sequential", notify=notes.append)
    first = Path(str(engine.weight_cache_path))
    assert engine.weight_cache_built and first.exists()
    prepared = weight_cache.open_prepared(first)
    assert prepared is not None and prepared.source is not None
    assert prepared.source["files"] == [str(model_file)]
    backend_id = prepared.source["backend"]
    prepared.close()

    def plant(name: str, source: dict[str, object] | None, version: int) -> Path:
        path = first.parent / f"{name}.edgert-prepared"
        with monkeypatch.context() as m:
            m.setattr(weight_cache, "FORMAT_VERSION", version)
            with weight_cache.writing(path, source) as writer:
                writer.begin("w", 4, np.dtype(np.float32), (1,))
                writer.write(np.zeros(1, np.float32))
        return path

    prefix = first.stem.rsplit("-", 1)[0]
    older_format = plant(f"{prefix}-0000", None, 1)  # no source recorded: same name, older format
    other_model = plant("other-0000", {"backend": backend_id, "files": ["/else/x.gguf"]}, 2)
    other_backend = plant(f"{prefix}-1111", {"backend": "neon:x", "files": [str(model_file)]}, 2)
    other_unrecorded = plant("other-2222", None, 1)
    stat = model_file.stat()
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the model file changed
    notes.clear()
    _, engine = greedy(model_file, budget, "sequential", notify=notes.append)
    second = Path(str(engine.weight_cache_path))
    assert engine.weight_cache_built and second != first and second.exists()
    assert not first.exists() and not older_format.exists()
    assert other_model.exists() and other_backend.exists() and other_unrecorded.exists()
    assert any("removed 2 stale prepared-weights file(s)" in n for n in notes), notes
    assert model_file.read_bytes() == q8_gguf.read_bytes()  # the model itself is only read


def test_steps_out_of_order_fail_at_run_time(q8_gguf: Path) -> None:
    model = load_model(q8_gguf, backend="numpy", max_context=32, notify=None)
    idle = Engine(model.source, model.backend)
    ctx = PlanningContext(None, max_context=32)
    planned = idle.plan(ctx)
    with pytest.raises(EngineStateError, match=r"Engine\.plan"):
        idle.plan(ctx)
    ready = planned.prepare()
    with pytest.raises(EngineStateError, match="prepare"):
        planned.prepare()
    assert list(generate_ids(ready, [1, 2, 3], max_tokens=2))
    ready.close()
    with pytest.raises(EngineStateError, match="closed"):
        ready.forward([1], 0)
    with pytest.raises(EngineStateError, match="closed"):
        list(generate_ids(ready, [1, 2], max_tokens=1))
    assert ready.pool.held_bytes == 0


def test_steps_out_of_order_are_type_errors(tmp_path: Path) -> None:
    snippet = tmp_path / "out_of_order.py"
    snippet.write_text(textwrap.dedent("""
        from edgert_core.engine import Engine
        from edgert_core.generate import generate_ids
        from edgert_core.plan import PlanningContext

        def run(engine: Engine, ctx: PlanningContext) -> None:
            generate_ids(engine, [1, 2], max_tokens=3)
            planned = engine.plan(ctx)
            planned.forward([1], 0)
            generate_ids(planned, [1], max_tokens=1)
            planned.prepare().prepare()
            generate_ids(planned.prepare(), [1], max_tokens=1)
    """))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--follow-imports=silent",
         "--cache-dir", str(REPO / ".mypy_cache"), str(snippet)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    lines = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 1, result.stdout + result.stderr
    wrong_engine = 'Argument 1 to "generate_ids" has incompatible type "{}"; expected "StepEngine"'
    assert any(wrong_engine.format("Engine") in line for line in lines), lines
    assert any('"PlannedEngine" has no attribute "forward"' in line for line in lines), lines
    assert any(wrong_engine.format("PlannedEngine") in line for line in lines), lines
    assert any('"ReadyEngine" has no attribute "prepare"' in line for line in lines), lines
    assert len(lines) == 4, lines  # the last call, in order, type-checks


def test_a_prefetch_error_surfaces_and_the_thread_ends(q8_gguf: Path, cache_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    budget = prefetch_budget(q8_gguf)
    model = load_model(q8_gguf, backend="numpy", memory_budget=budget, strategy="speculative-prefetch",
                       max_context=64, notify=None)
    engine = model.engine
    assert engine.prefetch
    calls = {"n": 0}
    original = engine.reader.fill_stage
    loaders: set[threading.Thread] = set()

    def failing(stage, raw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if threading.current_thread().name.startswith("edgert-prefetch"):
            loaders.add(threading.current_thread())
        if calls["n"] == 4:
            assert threading.current_thread().name.startswith("edgert-prefetch")
            raise ModelError("disk on fire")
        return original(stage, raw)

    monkeypatch.setattr(engine.reader, "fill_stage", failing)
    with pytest.raises(ModelError, match="disk on fire"):
        list(generate_ids(engine, [5, 6, 7], max_tokens=8))
    model.close()
    assert engine.pool.held_bytes == 0
    # this engine's prefetch thread is joined (one an earlier test left to the garbage collector
    # is not this engine's)
    assert loaders and not [t for t in loaders if t.is_alive()]


def test_prefetch_hides_loads_and_reports_them(q8_gguf: Path, cache_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each load is slowed to LOAD s and the compute thread's every projection to COMPUTE s, so a
    stage computes for longer than the next one takes to load: with prefetch the main thread must
    wait for at most half of the load time; without it, it waits for all of it."""
    import time

    from edgert_core.api import Model

    load_s, compute_s = 0.01, 0.01
    loaders: set[threading.Thread] = set()

    def slowed(model: Model) -> dict[str, int]:
        engine, backend = model.engine, model.backend
        calls = {"loads": 0, "projections": 0}
        fill, linear = engine.reader.fill_stage, backend.linear

        def slow_fill(stage, raw):  # type: ignore[no-untyped-def]
            calls["loads"] += 1
            if threading.current_thread().name.startswith("edgert-prefetch"):
                loaders.add(threading.current_thread())
            time.sleep(load_s)
            return fill(stage, raw)

        def slow_linear(*args, **kwargs):  # type: ignore[no-untyped-def]
            if threading.current_thread() is threading.main_thread():
                calls["projections"] += 1
                time.sleep(compute_s)
            return linear(*args, **kwargs)

        monkeypatch.setattr(engine.reader, "fill_stage", slow_fill)
        monkeypatch.setattr(backend, "linear", slow_linear)
        return calls

    budget = prefetch_budget(q8_gguf)
    model = load_model(q8_gguf, backend="numpy", memory_budget=budget, strategy="speculative-prefetch",
                       max_context=64, notify=None)
    calls = slowed(model)
    s = model.generate([5, 6, 7], max_tokens=6).result().stats
    assert calls["loads"] > 0 and calls["projections"] > 0, calls
    assert s.prefetch and s.decode_compute_seconds > 0
    assert s.decode_load_seconds >= load_s * 5  # at least one streamed stage per decode step
    assert s.decode_wait_seconds < 0.5 * s.decode_load_seconds, (s.decode_wait_seconds,
                                                                 s.decode_load_seconds)
    assert s.hidden_load_fraction is not None and s.hidden_load_fraction > 0.5
    assert s.pool_peak_bytes is not None and s.pool_peak_bytes <= budget
    model.close()
    assert loaders and not [t for t in loaders if t.is_alive()]  # this engine's thread is joined
    seq = load_model(q8_gguf, backend="numpy", memory_budget=budget, strategy="sequential",
                     max_context=64, notify=None)
    calls = slowed(seq)
    s2 = seq.generate([5, 6, 7], max_tokens=6).result().stats
    assert calls["loads"] > 0
    assert not s2.prefetch and s2.hidden_load_fraction is None
    assert s2.decode_load_seconds >= load_s * 5
    assert s2.decode_wait_seconds >= s2.decode_load_seconds  # every load blocks the main thread
    seq.close()


def test_prefetch_leaves_a_core_for_the_loads(q8_gguf: Path, cache_dir: Path) -> None:
    class Threaded(NumpyBackend):
        name = "threaded"

    backend = Threaded()
    backend.threads = 64
    source = load_model(q8_gguf, backend="numpy", max_context=64, notify=None).source
    ctx = PlanningContext(prefetch_budget(q8_gguf), max_context=64)
    ready = Engine(source, backend).plan(ctx, "speculative-prefetch").prepare(tune_process=True)
    assert ready.prefetch
    assert backend.threads == max(1, len(os.sched_getaffinity(0)) - 1)  # for this run only
    ready.close()
    assert backend.threads == 64
    ready = Engine(source, backend).plan(ctx, "sequential").prepare(tune_process=True)
    assert not ready.prefetch and backend.threads == 64  # no prefetch thread: every core computes
    ready.close()


def test_no_rss_growth_over_a_long_run(q8_gguf: Path, cache_dir: Path) -> None:
    budget = prefetch_budget(q8_gguf, 600)
    model = load_model(q8_gguf, backend="numpy", memory_budget=budget, strategy="speculative-prefetch",
                       max_context=600, notify=None, tune_process=True)  # as the CLI runs
    rss: list[int] = []
    mapped: list[int] = []
    engine = model.engine
    kv_growth = engine.cache.nbytes * 450 // 600  # cache pages touched by the later tokens
    try:
        for i, _ in enumerate(generate_ids(engine, [5, 6, 7], max_tokens=500)):  # no stop ids
            if i in (50, 499):
                # freed blocks kept by glibc heaps that earlier tests' threads left are given back
                # first (they are not this run's memory); memory still in use stays counted
                give_back_freed_memory()
                rss.append(current_rss_bytes())
                mapped.append(engine.pool.stats().fresh_blocks)
    finally:
        model.close()  # also on failure: a prefetch thread left running would fail later tests
    assert len(rss) == 2
    assert mapped[0] == mapped[1], "decode mapped new pool blocks instead of reusing its own"
    assert rss[1] - rss[0] <= kv_growth + 512 * 1024, (rss, kv_growth)
    assert engine.pool.held_bytes == 0


def test_kv_cache_is_not_advised_for_huge_pages(q8_gguf: Path, cache_dir: Path) -> None:
    """The KV cache is written a position at a time: its mapping carries no huge-page advice, so its
    RSS grows with the tokens cached (with it, a kernel granting huge pages would make the whole
    cache resident at the first token)."""
    from edgert_core.memory.pool import HUGEPAGE_MIN_BYTES

    model = load_model(q8_gguf, backend="numpy", memory_budget=64 * 2**20, strategy="sequential",
                       max_context=16384, notify=None)
    engine = model.engine
    assert engine.cache.nbytes >= 2 * HUGEPAGE_MIN_BYTES  # large enough to have been advised
    assert "hg" not in mh.vm_flags(engine.cache.k.ctypes.data)
    model.close()


def test_run_json_reports_the_engine(q8_gguf: Path, cache_dir: Path) -> None:
    budget = prefetch_budget(q8_gguf, max_context=7)  # the context of 3 + 4 tokens, no more
    env = {**os.environ, "EDGERT_CACHE": str(cache_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "edgert_core", "run", "--model", str(q8_gguf), "--backend", "numpy",
         "--prompt-ids", "5,6,7", "-n", "4", "--max-context", "7", "--json", "--memory-budget",
         str(budget), "--strategy", "speculative-prefetch", "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("decode_load_seconds", "decode_compute_seconds", "hidden_load_fraction",
                "pool_peak_bytes", "weight_source", "peak_rss_bytes", "baseline_rss_bytes"):
        assert key in report, key
    assert report["weight_source"] == "prepared-cache" and "prepared weights" in out.stderr
    assert report["pool_held_bytes"] == 0 and report["pool_closed"]
    assert 0 <= report["hidden_load_fraction"] <= 1
    assert report["pool_peak_bytes"] <= budget  # OS figures: tests/test_budget_run.py, real sizes


# -- how streamed weights are read under a memory limit ------------------------------------------
def test_the_disk_rule() -> None:
    from edgert_core.engine.weights import reads_say_drop

    assert reads_say_drop(6 * 2**20, 10 * 2**20)  # most of a token's streamed bytes from disk
    assert not reads_say_drop(4 * 2**20, 10 * 2**20)
    assert not reads_say_drop(0, 10 * 2**20) and not reads_say_drop(5, 0)


@pytest.mark.parametrize(("disk_fraction", "expected"), [(0.9, "drop"), (0.1, "cached")])
def test_under_a_limit_a_run_drops_its_reads_when_tokens_read_from_disk(
    q8_gguf: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, disk_fraction: float,
    expected: str,
) -> None:
    """Under a memory limit whose room holds the plan and its streamed weights, the engine starts
    cached and watches the first decoded tokens' disk reads (/proc/self/io, faked here at a
    fraction of the streamed bytes each token): most of the streamed weights read from disk again
    -> it switches to drop and says why; otherwise it stays cached. The greedy tokens do not depend
    on it."""
    import edgert_core.engine.states as states

    monkeypatch.delenv("EDGERT_READ_MODE", raising=False)
    budget = prefetch_budget(q8_gguf)
    reference, _ = greedy(q8_gguf, budget, "speculative-prefetch")
    monkeypatch.setattr(states, "room_under_limit",
                        lambda rss: DeviceRoom(256 * 2**20 + AUTO_MARGIN_BYTES, "faked", 2**30, None))
    counter = {"bytes": 0}
    model = load_model(q8_gguf, backend="numpy", memory_budget=budget, strategy="speculative-prefetch",
                       max_context=64, notify=None)
    try:
        engine = model.engine
        streamed = engine.plan.streamed_bytes_per_token(engine.layout)
        assert streamed > 0 and engine.read_mode == "cached" and "fit the 256.0 MiB room" in \
            engine.read_mode_reason

        def fake_read_bytes() -> int:
            counter["bytes"] += int(streamed * disk_fraction)
            return counter["bytes"]

        monkeypatch.setattr(states, "read_bytes", fake_read_bytes)
        ids = model.generate([5, 6, 7, 8, 9, 10, 11], max_tokens=12).result().ids
        assert engine.read_mode == expected
        assert engine.reader.read_mode() == expected  # the model file's reader itself
        if expected == "drop":
            assert "from disk" in engine.read_mode_reason
        assert ids == reference
    finally:
        model.close()


def test_under_a_limit_too_small_for_the_streamed_weights_a_run_drops_from_the_start(
    q8_gguf: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the room the limit leaves is smaller than the plan's peak plus its streamed weights,
    the cost model says every streamed byte comes from disk: ``drop`` from the first token, no
    watching, and the predicted disk bytes per token are the streamed bytes."""
    import edgert_core.engine.states as states

    monkeypatch.delenv("EDGERT_READ_MODE", raising=False)
    budget = prefetch_budget(q8_gguf)
    reference, _ = greedy(q8_gguf, budget, "speculative-prefetch")
    room = budget  # the plan fills it, so its streamed weights cannot stay cached beside it
    monkeypatch.setattr(states, "room_under_limit",
                        lambda rss: DeviceRoom(room + AUTO_MARGIN_BYTES, "faked", 2**30, None))
    model = load_model(q8_gguf, backend="numpy", memory_budget=budget, strategy="speculative-prefetch",
                       max_context=64, notify=None)
    try:
        engine = model.engine
        streamed = engine.plan.streamed_bytes_per_token(engine.layout)
        assert engine.read_mode == "drop" and "exceed" in engine.read_mode_reason
        assert engine.reader.read_mode() == "drop"
        assert engine.disk_bytes_per_token == streamed > 0
        assert model.generate([5, 6, 7, 8, 9, 10, 11], max_tokens=12).result().ids == reference
        assert engine.read_mode == "drop"
    finally:
        model.close()
