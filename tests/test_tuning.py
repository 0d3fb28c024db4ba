"""Process tuning is explicit: an application that embeds the core and loads, runs and closes a model
keeps its process as it was (BLAS thread limits, thread priorities, malloc settings, the OS's peak-RSS
counter, its backend's threads); with ``tune_process=True`` (what the CLI passes) the engine tunes,
and closing undoes what can be undone."""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import model_helpers as mh
import pytest
import threadpoolctl  # type: ignore[import-untyped]

import edgert_core.engine.tuning as tuning
from edgert_core.api import Model, load_model
from edgert_core.backends.base import usable_cpus
from edgert_core.engine import PREFETCH_NICE
from edgert_core.layout import ModelLayout
from edgert_core.memory.malloc import release_freed_memory_promptly
from edgert_core.memory.rss import reset_peak_rss
from edgert_core.plan import PlanningContext, fixed_bytes

MAX_CONTEXT = 64


@pytest.fixture(scope="module")
def q8_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mh.write_gguf(mh.fixture("tiny_llama"), tmp_path_factory.mktemp("m") / "t.gguf", "Q8_0")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def blas_threads() -> list[int]:
    return [int(lib["num_threads"]) for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas"]


def nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@dataclass
class Seen:
    """What the process-wide setters were asked, and what the threads saw while the model ran."""

    mallopt_calls: int = 0
    peak_resets: int = 0
    setpriority_calls: list[tuple[int, int, int]] = field(default_factory=list)
    prefetch_nice: set[int] = field(default_factory=set)
    blas_during: list[int] = field(default_factory=list)
    backend_threads_during: int | None = None


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Seen]:
    """Record calls of the setters (each still does its work, so a tuned run is a real one)."""
    record = Seen()
    real_mallopt = release_freed_memory_promptly
    real_reset = reset_peak_rss
    real_setpriority = os.setpriority

    def mallopt() -> bool:
        record.mallopt_calls += 1
        return real_mallopt()

    def reset() -> bool:
        record.peak_resets += 1
        return real_reset()

    def setpriority(which: int, who: int, prio: int) -> None:
        record.setpriority_calls.append((which, who, prio))
        real_setpriority(which, who, prio)

    monkeypatch.setattr(tuning, "release_freed_memory_promptly", mallopt)
    monkeypatch.setattr(tuning, "reset_peak_rss", reset)
    monkeypatch.setattr(os, "setpriority", setpriority)
    yield record


def prefetching_model(path: Path, **kw: object) -> Model:
    """A budget at which speculative-prefetch streams and prefetches (as tests/test_engine.py)."""
    prefetch_minimum: Callable[[ModelLayout, PlanningContext], int] = importlib.import_module(
        "edgert_speculative").prefetch_minimum
    probe = load_model(path, backend="numpy", max_context=MAX_CONTEXT, notify=None)
    ctx = PlanningContext(None, max_context=MAX_CONTEXT)
    minimum = prefetch_minimum(probe.layout, ctx)
    budget = minimum + (minimum - fixed_bytes(probe.layout, ctx)) // 10  # 10 % more room for weights
    return load_model(path, backend="numpy", memory_budget=budget, strategy="speculative-prefetch",
                      max_context=MAX_CONTEXT, notify=None, weight_cache=False, **kw)  # type: ignore[arg-type]


def run_and_close(model: Model, seen: Seen, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Prepare the engine, watch the prefetch thread while a generation runs, close the model."""
    monkeypatch.setattr(model.backend, "threads", 64)  # a backend with kernel threads of its own
    engine = model.engine
    assert engine.prefetch
    seen.blas_during = blas_threads()
    seen.backend_threads_during = model.backend.threads
    fill: Callable[..., None] = engine.reader.fill_stage
    loaders: set[threading.Thread] = set()

    def watched(stage, raw):  # type: ignore[no-untyped-def]
        if threading.current_thread().name.startswith("edgert-prefetch"):
            seen.prefetch_nice.add(nice_of_this_thread())
            loaders.add(threading.current_thread())
        fill(stage, raw)

    monkeypatch.setattr(engine.reader, "fill_stage", watched)
    ids = model.generate([5, 6, 7], max_tokens=6).result().ids
    model.close()
    assert engine.pool.held_bytes == 0
    # this engine's prefetch thread is joined (an engine an earlier test left to the garbage
    # collector may still have its own: those are not this model's)
    assert loaders and not [t for t in loaders if t.is_alive()]
    return ids


def test_an_embedding_application_sees_no_change(q8_gguf: Path, seen: Seen,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    blas_before, nice_before = blas_threads(), nice_of_this_thread()
    assert blas_before, "numpy's BLAS is not visible to threadpoolctl"
    model = prefetching_model(q8_gguf)  # load_model's default: no tuning
    run_and_close(model, seen, monkeypatch)
    assert seen.mallopt_calls == 0 and seen.peak_resets == 0
    assert seen.setpriority_calls == []
    assert seen.prefetch_nice == {nice_before}  # the prefetch thread ran (and at the same nice)
    assert seen.blas_during == blas_before and blas_threads() == blas_before
    assert seen.backend_threads_during == 64 and model.backend.threads == 64
    assert nice_of_this_thread() == nice_before
    assert model.last_engine is not None and model.last_engine.peak_scope == "process"


def test_tuning_on_tunes_and_close_undoes_what_it_can(q8_gguf: Path, seen: Seen,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    blas_before, nice_before = blas_threads(), nice_of_this_thread()
    spare_one = max(1, usable_cpus() - 1)
    untuned = run_and_close(prefetching_model(q8_gguf), Seen(), monkeypatch)
    model = prefetching_model(q8_gguf, tune_process=True)
    assert run_and_close(model, seen, monkeypatch) == untuned  # tuning changes no token
    assert seen.mallopt_calls == 1 and seen.peak_resets == 1  # the two that stay (module doc)
    assert seen.blas_during == [min(n, spare_one) for n in blas_before]
    assert seen.backend_threads_during == spare_one
    assert [prio for _, _, prio in seen.setpriority_calls] == [PREFETCH_NICE]
    # a thread cannot raise its priority back without privileges, so a test run at a nice above
    # PREFETCH_NICE keeps its own
    assert seen.prefetch_nice == {max(nice_before, PREFETCH_NICE)}
    # undone on close: the BLAS limits and the backend's threads; the prefetch thread has ended
    assert blas_threads() == blas_before
    assert model.backend.threads == 64
    assert nice_of_this_thread() == nice_before
    assert model.last_engine is not None and model.last_engine.tuning.enabled


def test_the_cli_tunes_its_process(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[bool] = []
    real = Model.__init__

    def init(self: Model, *args: object, **kw: object) -> None:
        asked.append(bool(kw.get("tune_process")))
        real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Model, "__init__", init)
    code, _, _ = mh.run_cli(["run", "--model", "synthetic-smollm2-135m", "--prompt-ids", "1,2",
                          "-n", "1", "--max-context", "16"], monkeypatch, capsys)
    assert code == 0 and asked == [True]
