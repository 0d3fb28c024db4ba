"""Generation: KV-cache decode equals full forward passes, chunked prefill, group walking with a
streamed head, sampling, stop conditions, stats, the async API, chat, and ``edge-rt run --json``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import model_helpers as mh
import numpy as np
import pytest
from numpy.typing import NDArray

from edgert_core.api import Model, load_model
from edgert_core.engine import Engine, EngineTimes, ReadyEngine
from edgert_core.generate import GenerationStats, Sampler, SamplingParams, generate_ids
from edgert_core.layout import ModelLayout
from edgert_core.plan import LayerGroup, PlanningContext, make_plan


def tiny(name: str = "tiny_llama", **kw: object) -> Model:
    return load_model(mh.fixture(name), backend="numpy", max_context=64, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", mh.TINY_MODELS)
def test_kv_cache_decode_equals_full_forward(name: str) -> None:
    model = tiny(name)
    meta, _ = mh.reference(name)
    ids = meta["prompt_ids"][:12]
    full = model.logits(ids)
    assert full.dtype == np.float32
    engine = model.engine
    engine.cached_ids.clear()
    step = [engine.forward(ids[:5], 0, all_logits=True)]
    for pos in range(5, len(ids)):
        step.append(engine.forward([ids[pos]], pos))
    np.testing.assert_allclose(np.concatenate(step), full, rtol=0, atol=1e-5)


def streamed_engine(model: Model, groups: list[LayerGroup], slice_bytes: int) -> ReadyEngine:
    layout: ModelLayout = model.layout
    ctx = PlanningContext(budget_bytes=None, max_context=64)
    plan = make_plan("test", layout, ctx, groups, head_resident=False, head_slice_bytes=slice_bytes)
    return Engine(model.source, model.backend).plan(ctx, plan).prepare()


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_walking_streamed_groups_and_a_sliced_head_gives_the_same_logits(name: str) -> None:
    model = tiny(name)
    meta, ref = mh.reference(name)
    assert ref is not None
    engine = streamed_engine(model, [LayerGroup((0,)), LayerGroup((1,), resident=True)], 64 * 4 * 50)
    seen: list[tuple[str, int]] = []
    engine.on_stage = lambda kind, i: seen.append((kind, i))
    logits = engine.forward(meta["prompt_ids"], 0, all_logits=True)
    np.testing.assert_allclose(logits, ref, rtol=0, atol=1e-4)
    assert seen == [("group", 0), ("group", 1), ("head", 0)]
    slices = [s for s, resident in engine._stages if s.head and not resident]
    rows = [p.rows for s in slices for p in s.pieces if p.rows is not None]
    assert len(slices) == 8 and sum(b - a for a, b in rows) == 384  # 48 rows per slice
    assert all(s.nbytes <= 64 * 4 * 50 for s in slices)
    assert 0 not in engine._resident and 1 in engine._resident
    engine.close()
    assert engine.pool.held_bytes == 0


def test_chunked_prefill_equals_one_batch() -> None:
    model = tiny()
    meta, _ = mh.reference("tiny_llama")
    one = list(generate_ids(model.engine, meta["prompt_ids"], max_tokens=8))
    model.engine.cached_ids.clear()
    chunked = list(generate_ids(model.engine, meta["prompt_ids"], max_tokens=8, prefill_chunk=5))
    assert one == chunked == meta["greedy_ids"][:8]


def test_sampler() -> None:
    logits = np.array([0.0, 3.0, 1.0, 2.9], dtype=np.float32)
    assert Sampler(SamplingParams())(logits) == 1
    assert Sampler(SamplingParams(temperature=1.0, top_k=1, seed=0))(logits) == 1
    assert Sampler(SamplingParams(temperature=1.0, top_p=0.01, seed=0))(logits) == 1
    a = [Sampler(SamplingParams(temperature=1.0, seed=7))(logits) for _ in range(5)]
    s = Sampler(SamplingParams(temperature=1.0, seed=7))
    b = [s(logits) for _ in range(200)]
    assert a == [b[0]] * 5
    assert set(b) == {0, 1, 2, 3}
    top2 = Sampler(SamplingParams(temperature=5.0, top_k=2, seed=1))
    assert {top2(logits) for _ in range(100)} == {1, 3}


def test_sampling_is_repeatable_with_a_seed() -> None:
    model = tiny()
    opts = {"max_tokens": 10, "temperature": 1.0, "top_k": 50, "top_p": 0.9, "seed": 11}
    first = model.generate([5, 6, 7], **opts).result().ids  # type: ignore[arg-type]
    again = model.generate([5, 6, 7], **opts).result().ids  # type: ignore[arg-type]
    assert first == again and len(first) >= 1


def test_stops_at_eos_and_at_a_full_context() -> None:
    model = tiny()
    meta, _ = mh.reference("tiny_llama")
    greedy = meta["greedy_ids"]
    stats = GenerationStats()
    out = list(generate_ids(model.engine, meta["prompt_ids"], max_tokens=16,
                            stop_ids=[greedy[3]], stats=stats))
    assert out == greedy[: greedy.index(greedy[3])] and stats.stop_reason == "eos"
    small = load_model(mh.fixture("tiny_llama"), backend="numpy", max_context=32)
    stats = GenerationStats()
    out = list(generate_ids(small.engine, meta["prompt_ids"], max_tokens=16, stats=stats))
    assert stats.stop_reason == "max_context" and len(meta["prompt_ids"]) + len(out) == 33


def test_stats_and_text() -> None:
    model = tiny()
    gen = model.generate("The quick brown fox", max_tokens=6).result()
    s = gen.stats
    assert s.prompt_tokens == len(model.encode("The quick brown fox"))
    assert s.generated_tokens == len(gen.ids) and s.stop_reason in ("max_tokens", "eos")
    assert s.prefill_tokens_per_s and s.prefill_tokens_per_s > 0
    assert s.peak_rss_bytes and s.baseline_rss_bytes and s.peak_rss_bytes >= s.baseline_rss_bytes
    assert gen.text == model.decode(gen.ids)


def test_async_generation_matches_sync() -> None:
    model = tiny()

    async def collect() -> list[int]:
        return [t.id async for t in model.agenerate([5, 6, 7], max_tokens=8) if t.id >= 0]

    ids = asyncio.run(collect())
    assert ids == model.generate([5, 6, 7], max_tokens=8).result().ids


def test_chat_reuses_the_cached_conversation(tmp_path: object) -> None:
    path = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "c.gguf")  # type: ignore[operator]
    model = load_model(path, backend="numpy", max_context=128)
    session = model.chat(system="Be brief.")
    first = session.send("Hi there", max_tokens=4)
    list(first)
    assert first.stats.reused_tokens == 0
    second = session.send("And again?", max_tokens=4)
    list(second)
    assert second.stats.reused_tokens >= first.stats.prompt_tokens
    roles = [m["role"] for m in session.conversation.all_messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert session.prompt_text().startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_synthetic_model_runs_every_path() -> None:
    model = load_model(None, max_context=16)
    assert model.synthetic and model.name == "synthetic-smollm2-135m"
    gen = model.generate("hi", max_tokens=2).result()
    assert len(gen.ids) == 2 and gen.text is not None


def test_run_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    meta, _ = mh.reference("tiny_llama")
    code, out, err = mh.run_cli(
        ["run", "--model", str(mh.fixture("tiny_llama")), "--prompt-ids",
         ",".join(map(str, meta["prompt_ids"])), "--max-tokens", "8", "--backend", "numpy",
         "--json"], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    for key in ("model", "backend", "strategy", "budget_bytes", "prompt_ids", "generated_ids",
                "text", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_bytes",
                "baseline_rss_bytes", "groups"):
        assert key in report
    assert report["generated_ids"] == meta["greedy_ids"][:8]
    assert report["backend"] == "numpy" and report["budget_bytes"] is None
    assert report["groups"] == [[0, 1]] and report["strategy"] == "resident"
    assert isinstance(report["text"], str)


def test_run_synthetic_says_so(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = mh.run_cli(["run", "--model", "synthetic-gpt2-small", "--prompt", "hi",
                              "--max-tokens", "1", "--max-context", "8"], monkeypatch, capsys)
    assert code == 0, err
    assert "synthetic" in err


def test_logits_at_many_lengths_leave_the_pool_as_it_was() -> None:
    model = load_model(mh.fixture("tiny_llama"), backend="numpy", max_context=256)
    standing = model.engine.pool.stats()
    for n in range(2, 200, 7):  # each length's logits are counted by a pool block of their size
        model.logits(list(range(1, n + 1)))
    after = model.engine.pool.stats()
    assert after.held_bytes == standing.held_bytes and after.in_use_bytes == standing.in_use_bytes
    assert after.free_list_bytes == 0


def test_closing_a_generation_early_keeps_its_tokens() -> None:
    model = tiny()
    gen = model.generate([5, 6, 7], max_tokens=10)
    it = iter(gen)
    first = [next(it).id for _ in range(3)]
    gen.close()
    assert gen.finished and gen.ids == first and gen.stats.stop_reason == "stopped"
    assert list(it) == []
    assert model.generate([5, 6, 7], max_tokens=3).result().ids == first


class CountingEngine:
    """A stand-in engine with only what :class:`~edgert_core.generate.StepEngine` asks for: its
    greedy next token is always the last token + 1 (mod vocab), and it records its forward passes."""

    vocab = 11
    max_context = 12
    baseline_rss_bytes = 1
    prefetch = False
    pool_peak_bytes = 0

    def __init__(self) -> None:
        self.cached_ids: list[int] = []
        self.times = EngineTimes()
        self.passes: list[tuple[list[int], int]] = []
        self.ended = 0

    def forward(self, ids: Sequence[int], start: int, *, all_logits: bool = False) -> NDArray[np.float32]:
        self.passes.append((list(ids), start))
        del self.cached_ids[start:]
        self.cached_ids.extend(ids)
        self.times.compute += 1.0
        logits = np.zeros((len(ids), self.vocab), dtype=np.float32)
        logits[np.arange(len(ids)), (np.asarray(ids) + 1) % self.vocab] = 1.0
        return logits if all_logits else logits[-1:]

    def end_of_step(self) -> None:
        self.ended += 1


def test_generation_drives_any_engine_with_the_small_interface() -> None:
    engine = CountingEngine()
    stats = GenerationStats()
    assert list(generate_ids(engine, [3, 4], max_tokens=3, stats=stats)) == [5, 6, 7]
    assert engine.passes == [([3, 4], 0), ([5], 2), ([6], 3)]
    assert stats.stop_reason == "max_tokens" and engine.ended == 1
    assert stats.decode_compute_seconds == 2.0  # the engine's times over the two decode steps
    # a second request that shares the cached prefix runs only what is new
    engine.passes.clear()
    out = list(generate_ids(engine, [3, 4, 5, 9], max_tokens=10, stop_ids=[2], stats=stats))
    assert engine.passes[0] == ([9], 3) and stats.reused_tokens == 3
    assert out == [10, 0, 1] and stats.stop_reason == "eos"  # 2 stops it
    engine.cached_ids.clear()
    out = list(generate_ids(engine, list(range(1, 11)), max_tokens=10, stats=stats))
    assert out == [0, 1, 2] and stats.stop_reason == "max_context"  # 10 + 2 = 12 positions
