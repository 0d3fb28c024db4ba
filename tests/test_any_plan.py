"""Every plan the core's validator accepts runs: random valid plans (group boundaries, resident or
streamed groups in any order, the head resident or sliced, prefetch, any ``stage_bytes``) for the tiny
models give the logits of the unbudgeted run, keep the pool within the plan's predicted peak (the
pool's budget is set to exactly that peak) and leave the pool empty after close. Plus the reported
shape (a streamed first group, a resident last group) through a plugin strategy and generation."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import model_helpers as mh
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from safetensors.numpy import save_file

from edgert_core import ExecutionPlan, LayerGroup, ModelLayout, PlanningContext, load_registry
from edgert_core.api import load_model
from edgert_core.engine import Engine
from edgert_core.plugin_api import PartitionStrategy, hookimpl, make_plan, validate_plan

MAX_CONTEXT = 64
PREFILL_CHUNK = 4
PROMPT = [5, 6, 7, 8]
DECODE = [9, 10, 11]  # fed one at a time after the prompt: the stages wrap round between tokens


def deep_llama(folder: Path, n_layers: int = 5) -> Path:
    """A Llama folder like ``tiny_llama`` with ``n_layers`` layers (layer ``i`` is layer ``i % 2`` of
    the fixture, scaled), so plans have more group boundaries to choose from."""
    src = mh.fixture("tiny_llama")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] = n_layers
    (folder / "config.json").write_text(json.dumps(cfg))
    shutil.copyfile(src / "tokenizer.json", folder / "tokenizer.json")
    tensors = mh.load_tensors(src / "model.safetensors")
    out: dict[str, NDArray[np.float32]] = {}
    for name, arr in tensors.items():
        if not name.startswith("model.layers."):
            out[name] = arr.astype(np.float32)
    for i in range(n_layers):
        scale = np.float32(1.0 - 0.05 * i)
        for name, arr in tensors.items():
            prefix = f"model.layers.{i % 2}."
            if name.startswith(prefix):
                out[f"model.layers.{i}." + name[len(prefix):]] = (arr * scale).astype(np.float32)
    save_file(out, str(folder / "model.safetensors"))
    return folder


@dataclass(repr=False)
class Subject:
    """A model to plan for, with its layout and the logits of its unbudgeted run."""

    path: Path
    layout: ModelLayout
    expected: list[NDArray[np.float32]]

    def __repr__(self) -> str:
        return f"Subject({self.path.name})"


def steps(forward: Callable[[list[int], int], NDArray[np.float32]]) -> list[NDArray[np.float32]]:
    """The last-position logits of the prompt, then of each decode token in turn."""
    out = [forward(PROMPT, 0).copy()]
    for k, token in enumerate(DECODE):
        out.append(forward([token], len(PROMPT) + k).copy())
    return out


@pytest.fixture(scope="module")
def subjects(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Subject]]:
    """tiny_llama (fp32 safetensors), tiny_gpt2 (fp16, transposed weights, tied head) and a 5-layer
    Llama as Q8_0 GGUF; the prepared-weights cache in a temporary folder of this module."""
    root = tmp_path_factory.mktemp("any_plan")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGERT_CACHE", str(root / "cache"))
        q8 = mh.write_gguf(deep_llama(root / "deep"), root / "deep-q8.gguf", "Q8_0")
        out: dict[str, Subject] = {}
        for name, path in (("tiny_llama", mh.fixture("tiny_llama")),
                           ("tiny_gpt2", mh.fixture("tiny_gpt2")), ("deep_q8", q8)):
            model = load_model(path, backend="numpy", max_context=MAX_CONTEXT,
                               prefill_chunk=PREFILL_CHUNK, notify=None)
            expected = steps(model.engine.forward)
            out[name] = Subject(path, model.layout, expected)
            model.close()
        yield out


@st.composite
def plans(draw: st.DrawFn, layout: ModelLayout) -> ExecutionPlan:
    """A random plan built the way a plugin builds one (``make_plan``)."""
    n = len(layout.layers)
    cuts = draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1))
    bounds = [0, *(i + 1 for i, cut in enumerate(cuts) if cut), n]
    resident = draw(st.lists(st.booleans(), min_size=len(bounds) - 1, max_size=len(bounds) - 1))
    spans = zip(bounds[:-1], bounds[1:], resident, strict=True)
    groups = [LayerGroup(tuple(range(a, b)), r) for a, b, r in spans]
    largest = max(layout.layer_bytes)
    stage_bytes = draw(st.one_of(st.just(0), st.integers(1, 4096), st.integers(1, 2 * largest)))
    head_resident = draw(st.booleans())
    head_slice = draw(st.one_of(st.none(), st.integers(1, 2 * layout.head_bytes)))
    ctx = PlanningContext(None, max_context=MAX_CONTEXT, prefill_chunk=PREFILL_CHUNK)
    return make_plan("drawn", layout, ctx, groups, prefetch=draw(st.booleans()),
                     head_resident=head_resident, head_slice_bytes=head_slice,
                     stage_bytes=stage_bytes)


@settings(max_examples=200, deadline=10_000, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(["tiny_llama", "tiny_gpt2", "deep_q8"]))
def test_every_valid_plan_runs_and_matches_the_unbudgeted_logits(
    subjects: dict[str, Subject], data: st.DataObject, name: str
) -> None:
    subject = subjects[name]
    plan = data.draw(plans(subject.layout), label="plan")
    # the pool's budget is exactly the predicted peak: any byte over it raises
    ctx = PlanningContext(plan.predicted_peak_bytes, max_context=MAX_CONTEXT, prefill_chunk=PREFILL_CHUNK)
    validate_plan(plan, subject.layout, ctx)
    model = load_model(subject.path, backend="numpy", max_context=MAX_CONTEXT,
                       prefill_chunk=PREFILL_CHUNK, notify=None)
    ready = Engine(model.source, model.backend).plan(ctx, plan).prepare(notify=None)
    try:
        got = steps(ready.forward)
        peak = ready.pool.peak_bytes
    finally:
        ready.close()
    for step, (a, b) in enumerate(zip(got, subject.expected, strict=True)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=f"step {step} of {plan}")
    assert ready.pool.closed and ready.pool.held_bytes == 0
    assert peak <= plan.predicted_peak_bytes, (peak, plan)


class TailResident(PartitionStrategy):
    """The reported shape: the first layers streamed (in small stages), the last layer resident."""

    name = "tail-resident"

    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        n = len(layout.layers)
        groups = [LayerGroup(tuple(range(n - 1))), LayerGroup((n - 1,), resident=True)]
        return make_plan(self.name, layout, ctx, groups, stage_bytes=4096)


class TailResidentPlugin:
    @hookimpl
    def edgert_register_strategies(self, register: Callable[[type[PartitionStrategy]], None]) -> None:
        register(TailResident)


@pytest.mark.parametrize("source", ["tiny_llama", "tiny_gpt2"])
def test_a_streamed_first_group_and_a_resident_last_group_generate(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path / "cache"))
    path = mh.fixture(source)
    registry = load_registry(entry_points=False, extra=[("tail", TailResidentPlugin())])
    whole = load_model(path, backend="numpy", registry=registry, max_context=64, notify=None)
    expected = whole.generate([5, 6, 7], max_tokens=10).result().ids
    layout = whole.layout
    whole.close()
    budget = TailResident().plan(layout, PlanningContext(None, max_context=64)).predicted_peak_bytes
    model = load_model(path, backend="numpy", registry=registry, strategy="tail-resident",
                       memory_budget=budget, max_context=64, notify=None)
    assert [g.resident for g in model.plan.groups] == [False, True]
    ids = model.generate([5, 6, 7], max_tokens=10).result().ids
    engine = model.engine
    model.close()
    assert ids == expected
    assert engine.pool.held_bytes == 0 and engine.pool.peak_bytes <= budget
