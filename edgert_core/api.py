"""The embedding API: load a model once, generate text from it, synchronously or with asyncio.

::

    import edgert_core as ert

    model = ert.load_model("smollm2", memory_budget="256M")
    for token in model.generate("The ship entered the port of", max_tokens=32):
        print(token.text, end="", flush=True)

    async for token in model.agenerate("Once upon a time", max_tokens=32):
        ...

``model.chat()`` keeps a conversation and applies the model's chat template; a conversation that
outgrows ``max_context`` drops its oldest turns (said once through ``notify``) instead of failing.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgert_core.adaptive import AdaptiveRun, hottest_zone_c
from edgert_core.backends.base import KernelBackend
from edgert_core.budget import MemoryBudget, format_bytes
from edgert_core.chat import Conversation, turns_to_drop
from edgert_core.device_cost import disk_bound_tokens_per_s
from edgert_core.engine import Engine, PlannedEngine, ReadyEngine
from edgert_core.errors import (
    BudgetError,
    EdgeRTError,
    GenerationError,
    InfeasibleBudgetError,
    ModelError,
    RunStoppedError,
    UnknownNameError,
)
from edgert_core.generate import (
    GenerationStats,
    SamplingParams,
    StepEngine,
    check_request,
    generate_ids,
)
from edgert_core.governor import DEFAULT_GOVERNOR, NO_GOVERNOR, Event, Governor
from edgert_core.layout import SYNTHETIC_SHAPES
from edgert_core.loaders import ModelSource, ValidatedModel, open_model
from edgert_core.memory import auto_budget, bandwidth
from edgert_core.memory.auto_budget import is_auto
from edgert_core.memory.malloc import give_back_freed_memory
from edgert_core.memory.rss import current_rss_bytes
from edgert_core.models.kv_quant import DEFAULT_KV_CACHE, check_kv_cache, check_mode
from edgert_core.plan import (
    DEFAULT_MAX_CONTEXT,
    DEFAULT_PREFILL_CHUNK,
    PlanningContext,
    minimum_budget,
)
from edgert_core.planner import AUTO
from edgert_core.plugins import PluginRegistry, load_registry
from edgert_core.pull import KNOWN_MODELS, resolve_known
from edgert_core.synthetic import DEFAULT_SHAPE, SyntheticModel
from edgert_core.tokenizer import BaseTokenizer

SYNTHETIC_PREFIX = "synthetic"
DEFAULT_MAX_TOKENS = 128


def open_source(model: str | Path | None) -> ModelSource:
    """The model a user named: ``None`` or ``synthetic[-SHAPE]`` gives a synthetic model, a known
    name (``smollm2``) its pulled file, anything else a path."""
    if model is None or str(model) == "":
        return SyntheticModel(DEFAULT_SHAPE)
    text = str(model)
    if text == SYNTHETIC_PREFIX or text.startswith(SYNTHETIC_PREFIX + "-"):
        shape = text.removeprefix(SYNTHETIC_PREFIX).removeprefix("-") or DEFAULT_SHAPE
        if shape not in SYNTHETIC_SHAPES:
            known = ", ".join(f"synthetic-{s}" for s in sorted(SYNTHETIC_SHAPES))
            raise UnknownNameError(f"Unknown synthetic model {text!r}; known: {known}.")
        return SyntheticModel(shape)
    if text in KNOWN_MODELS and not Path(text).exists():
        return open_model(resolve_known(text))
    return open_model(text)


def choose_backend(
    registry: PluginRegistry, dtypes: frozenset[str], name: str | None = None
) -> KernelBackend:
    """The named backend, or the available one of highest priority that supports ``dtypes``."""
    if name is not None and name != AUTO:
        backend = registry.backend(name)
        status = backend.status()
        if not status.available:
            raise EdgeRTError(f"Backend {name!r} cannot run here: {status.reason}")
        missing = sorted(dtypes - backend.supported_dtypes())
        if missing:
            raise ModelError(
                f"Backend {name!r} cannot load tensor type {missing[0]} used by this model; "
                "choose another --backend."
            )
        return backend
    for backend in registry.backends():
        if backend.status().available and dtypes <= backend.supported_dtypes():
            return backend
    raise ModelError(
        f"No installed backend supports this model's tensor types ({', '.join(sorted(dtypes))})."
    )


def choose_activations(backend: KernelBackend, mode: str | None) -> str:
    """The activation mode to run ``backend`` in: ``mode`` when the backend has it, its default
    (the first of its ``activation_modes``) for ``None``; anything else is an error listing them."""
    modes = backend.activation_modes
    if mode is None:
        return modes[0]
    if mode not in modes:
        raise UnknownNameError(
            f"Backend {backend.name!r} has no activation mode {mode!r}; it has: {', '.join(modes)}"
            " (f32 is exact; q8 quantizes activations to int8, faster and approximate)."
        )
    return mode


@dataclass(frozen=True)
class Token:
    """One generated token and the text it completes (may be empty mid-character). A last ``Token``
    with ``id == -1`` may carry text held back at the end (an incomplete character)."""

    id: int
    text: str


class Generation:
    """A running generation: iterate it for :class:`Token` objects; afterwards ``ids``, ``text``
    and ``stats`` hold the result."""

    def __init__(self, model: Model, prompt_ids: list[int], max_tokens: int,
                 sampling: SamplingParams) -> None:
        self.model = model
        self.prompt_ids = prompt_ids
        self.ids: list[int] = []
        self.stats = GenerationStats()
        self._pieces: list[str] = []
        tok = model.tokenizer
        self._stream = tok.stream() if tok is not None else None
        #: the governed run (``None`` with ``governor="none"``): its ``events``
        self.adaptive = model.adaptive_run(self.stats)
        #: the hottest thermal zone (°C) when the generation started and ended (``None``: no sensor)
        self.temperature_start_c = hottest_zone_c()
        self.temperature_end_c: float | None = None
        self._ids = generate_ids(
            self.adaptive if self.adaptive is not None else model.step_engine(),
            prompt_ids,
            max_tokens=max_tokens,
            sampling=sampling,
            stop_ids=model.stop_ids,
            prefill_chunk=model.prefill_chunk,
            stats=self.stats,
        )
        self._finished = False
        self.on_finish: Callable[[Generation], None] | None = None

    def __iter__(self) -> Iterator[Token]:
        try:
            for token_id in self._ids:
                self.ids.append(token_id)
                piece = self._stream.push(token_id) if self._stream is not None else ""
                self._pieces.append(piece)
                yield Token(token_id, piece)
        except RunStoppedError as exc:  # the tokens so far stand; the error says why it stopped
            self.stats.stop_reason = exc.stop_reason
            self._finish()
            raise
        if self._stream is not None and not self._finished:
            tail = self._stream.flush()
            if tail:
                self._pieces.append(tail)
                yield Token(-1, tail)
        self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.temperature_end_c = hottest_zone_c()
        if self.on_finish is not None:
            self.on_finish(self)

    @property
    def finished(self) -> bool:
        """True once the generation has ended (run to its end, or :meth:`close` d)."""
        return self._finished

    def close(self) -> None:
        """Stop early: ``ids`` and ``text`` keep the tokens so far, ``stats.stop_reason`` becomes
        ``"stopped"``, and the engine gives back a stage it loaded ahead. A no-op once finished."""
        if self._finished:
            return
        self._ids.close()  # runs generate_ids' clean-up (end_of_step, the stats)
        if not self.stats.stop_reason:
            self.stats.stop_reason = "stopped"
        self._finish()

    def result(self) -> Generation:
        """Run to the end (if not yet) and return self."""
        if not self._finished:
            for _ in self:
                pass
        return self

    @property
    def text(self) -> str | None:
        """The generated text (``None`` when the model has no tokenizer)."""
        return None if self._stream is None else "".join(self._pieces)

    @property
    def events(self) -> list[Event]:
        """The changes the governor made while this generation ran (budget, threads, pacing)."""
        return [] if self.adaptive is None else list(self.adaptive.events)


class Model:
    """A loaded model ready to generate: validated weights, a backend, a plan and, from the first
    generation on, a :class:`~edgert_core.engine.ReadyEngine` (pool, KV cache, resident weights).
    :meth:`close` gives its memory back; a closed model prepares a fresh engine when used again."""

    def __init__(
        self,
        planned: PlannedEngine,
        *,
        budgeted: bool,
        weight_cache: bool | None = None,
        notify: Callable[[str], None] | None = None,
        tune_process: bool = False,
        budget_source: str | None = None,
        strategy: str = AUTO,
        registry: PluginRegistry | None = None,
        governor: Governor | None = None,
        auto_budget: bool = False,
    ) -> None:
        self.source = planned.model
        self.backend = planned.backend
        self._adopt(planned)
        self._engine: ReadyEngine | None = None
        self.last_engine: ReadyEngine | None = None  # the engine closed last
        self._weight_cache = weight_cache
        self._notify = notify
        self.tune_process = tune_process
        self.tokenizer: BaseTokenizer | None = self.source.tokenizer()
        self.prefill_chunk = self.context.prefill_chunk if budgeted else None
        self.synthetic = isinstance(self.source.source, SyntheticModel)
        #: where the budget came from (``run --json`` ``budget_source``)
        self.budget_source = budget_source or (
            "none: every weight resident" if self.context.budget_bytes is None
            else f"given: {format_bytes(self.context.budget_bytes)}")
        self.strategy = strategy
        self._registry = registry
        #: the context asked for; ``context.max_context`` is what the KV cache holds, fewer
        #: positions after :meth:`fit_context`
        self.requested_max_context = self.context.max_context
        #: the policy that adapts a generation to the machine (``None``: adaptation off)
        self.governor = governor
        #: whether the budget was ``auto`` (taken from the machine: the governor re-reads it)
        self.auto_budget = auto_budget
        #: a ceiling set through :meth:`set_memory_limit` (``None``: none)
        self.memory_limit_bytes: int | None = None

    def _adopt(self, planned: PlannedEngine) -> None:
        """Take ``planned`` (not prepared yet) as this model's plan, with what follows from it:
        ``start_budget_bytes``, what the budget grows back to (the budget, or without one the peak
        of the plan: everything resident), and ``minimum_budget_bytes``, the smallest budget any
        plan meets for its context."""
        self._planned: PlannedEngine | None = planned
        self.plan, self.context, self.layout = planned.plan, planned.context, planned.layout
        self.start_budget_bytes = (self.context.budget_bytes if self.context.budget_bytes is not None
                                   else self.plan.predicted_peak_bytes)
        self.minimum_budget_bytes = minimum_budget(self.layout, self.context)

    @property
    def engine(self) -> ReadyEngine:
        """The ready engine, prepared on first use (that is when the baseline RSS is taken)."""
        if self._engine is None:
            planned = self._planned
            if planned is None:
                planned = Engine(self.source, self.backend).plan(self.context, self.plan)
            self._planned = None
            if self.governor is not None:  # its monitors' libraries (psutil) load before the baseline
                from edgert_core.monitors.sampler import machine_monitors

                machine_monitors()
            self._engine = planned.prepare(weight_cache=self._weight_cache, notify=self._notify,
                                           tune_process=self.tune_process)
        return self._engine

    def step_engine(self) -> StepEngine:
        """What a generation without a governor drives: the ready engine (a model run across
        devices drives its pipeline instead)."""
        return self.engine

    @property
    def prepared(self) -> bool:
        return self._engine is not None

    def set_memory_limit(self, nbytes: int | None) -> None:
        """A ceiling on the budget from the application (``None`` lifts it). A running generation
        re-plans for it before its next token (an event of kind ``limit``); one that cannot fit
        the context under it stops with the tokens so far. Needs a governor (not ``"none"``)."""
        if nbytes is not None and nbytes <= 0:
            raise GenerationError(f"A memory limit must be a positive number of bytes, got {nbytes}.")
        self.memory_limit_bytes = nbytes

    def adaptive_run(self, stats: GenerationStats) -> AdaptiveRun | None:
        """The governed engine for one generation (``None`` without a governor)."""
        if self.governor is None:
            return None
        from edgert_core.monitors.sampler import ReadingSampler, machine_monitors

        monitors = machine_monitors()
        registry = self._registry
        if registry is not None:  # and every plugin's monitor: a governor sees all readings
            from edgert_core.plugins import CORE_DISTRIBUTION

            monitors += [registry.monitor(n) for n in registry.monitor_names()
                         if registry.provider("monitor", n).distribution != CORE_DISTRIBUTION]
        sampler = ReadingSampler(monitors, self.governor.read_interval_s)
        return AdaptiveRun(self, self.governor, sampler, stats, notify=self._notify)

    def fit_context(self, positions: int) -> bool:
        """Size the KV cache for ``positions`` tokens instead of ``max_context`` where that is
        fewer and no engine is prepared yet: ``edge-rt run`` knows how far its one generation can
        go (the prompt and ``max_tokens``). Under a budget, the bytes a full-size cache would have
        taken for positions no token reaches go to weights instead (a plan with more of them
        resident, so fewer read from disk per token); without a budget the run holds the same (a
        cache's untouched pages are never resident). The cache does not grow again: a longer
        generation stops at the end of the context, as with a smaller ``max_context``. Returns
        whether it re-planned."""
        positions = max(2, positions)
        if self._engine is not None or self._planned is None or positions >= self.context.max_context:
            return False
        ctx = replace(self.context, max_context=positions)
        self._adopt(Engine(self.source, self.backend).plan(ctx, self.strategy, self._registry))
        return True

    def replan(self, budget_bytes: int) -> None:
        """Re-plan for ``budget_bytes`` with the same strategy (``auto`` where it has no plan for
        that budget) and switch to it, keeping the KV cache and the tokens in it: the old engine's
        memory goes back to the OS before the new one takes its own (the filled positions of the KV
        cache are copied out and back). Raises :class:`~edgert_core.errors.InfeasibleBudgetError`
        below the minimum, with the model as it was."""
        ctx = replace(self.context, budget_bytes=budget_bytes)
        try:
            planned = Engine(self.source, self.backend).plan(ctx, self.strategy, self._registry)
        except InfeasibleBudgetError:
            if self.strategy == AUTO:
                raise
            planned = Engine(self.source, self.backend).plan(ctx, AUTO, self._registry)
        kept: tuple[NDArray[np.generic], list[int]] | None = None
        if self._engine is not None:
            old = self._engine
            kept = old.cache.filled(), list(old.cached_ids)
            old.close()
            self.last_engine, self._engine = old, None
        self.context, self.plan, self.layout = ctx, planned.plan, planned.layout
        self.prefill_chunk = ctx.prefill_chunk
        self._planned = planned
        engine = self.engine
        if kept is not None:
            engine.cache.refill(kept[0])
            engine.cached_ids[:] = kept[1]
        self.budget_source = f"{self.budget_source.split(';')[0]}; re-planned for " \
                             f"{format_bytes(budget_bytes)}"

    def close(self) -> None:
        """Release the engine's pool memory, join its prefetch thread, close the model files."""
        if self._engine is not None:
            self._engine.close()
            self.last_engine = self._engine
            self._engine = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def activations(self) -> str:
        """The backend's activation mode in force (``"f32"``: exact; ``"q8"``: int8 activations)."""
        return self.backend.activations

    @property
    def kv_cache(self) -> str:
        """The KV cache precision in force: ``"f32"`` (exact), ``"f16"`` or ``"q8_0"``."""
        return self.context.kv_cache

    @property
    def config(self) -> Any:
        return self.source.config

    @property
    def stop_ids(self) -> tuple[int, ...]:
        if self.tokenizer is not None and self.tokenizer.eos_token_ids:
            return self.tokenizer.eos_token_ids
        return tuple(self.source.config.eos_token_ids)

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Prompt ids: a string through the tokenizer, a sequence of ids as they are."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise GenerationError(
                    f"Model {self.name} has no tokenizer, so it cannot read a text prompt; "
                    "pass token ids (--prompt-ids 1,2,3)."
                )
            if not prompt:
                raise GenerationError("The prompt is empty; give a prompt with at least one token.")
            return self.tokenizer.encode(prompt)
        return [int(i) for i in prompt]

    def decode(self, ids: Sequence[int]) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode(ids)

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Generation:
        """Start generating after ``prompt``; iterate the result for tokens as they come."""
        ids = self.encode(prompt)
        check_request(ids, max_tokens, self.source.config.dims.vocab, self.context.max_context)
        return Generation(self, ids, max_tokens, SamplingParams(temperature, top_k, top_p, seed))

    async def agenerate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> AsyncIterator[Token]:
        """Like :meth:`generate`, for asyncio: each step runs in a worker thread, so the event loop
        stays responsive while the model computes."""
        import asyncio  # here, not at module level: it adds ~6 MB of RSS to every run

        gen = self.generate(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed)
        it = iter(gen)
        done = object()
        while True:
            token = await asyncio.to_thread(next, it, done)
            if token is done:
                return
            assert isinstance(token, Token)
            yield token

    def logits(self, ids: Sequence[int], *, start: int = 0) -> NDArray[np.float32]:
        """Logits of positions ``start..T-1`` of ``ids`` from an empty cache: float32
        ``[T - start, vocab]`` (every position for ``start=0``). The first ``start`` tokens only fill
        the KV cache. Without a budget all runs in one pass. Under a budget the tokens go in passes
        of at most ``prefill_chunk``, and the positions asked for in passes of as many rows of
        logits as the pool has room for beside the plan (one row, the plan's own, at the least),
        so the budget holds; the array returned is the caller's, outside the pool."""
        check_request(ids, 1, self.source.config.dims.vocab, self.context.max_context)
        if not 0 <= start < len(ids):
            raise GenerationError(f"start must be in 0..{len(ids) - 1} for {len(ids)} ids, got {start}.")
        engine = self.engine
        engine.cached_ids.clear()
        n = len(ids)
        chunk = self.prefill_chunk or n
        for a in range(0, start, chunk):
            engine.forward(list(ids[a : min(a + chunk, start)]), a)
        step = min(chunk, self._logits_rows_that_fit())
        if start + step >= n:
            return engine.forward(list(ids[start:]), start, all_logits=True)
        out = np.empty((n - start, self.source.config.dims.vocab), dtype=np.float32)
        for a in range(start, n, step):
            b = min(a + step, n)
            out[a - start : b - start] = engine.forward(list(ids[a:b]), a, all_logits=True)
        return out

    def _logits_rows_that_fit(self) -> int:
        """Rows of logits one forward pass may return within the budget: the plan holds one; more
        take pool room (with a page of slack per row for rounding). Unbounded without a budget."""
        budget = self.context.budget_bytes
        if budget is None:
            return sys.maxsize
        free = budget - self.engine.pool.stats().in_use_bytes
        row = self.source.config.dims.vocab * 4 + 4096
        return max(1, free // row)

    def engine_report(self) -> dict[str, Any]:
        """Facts of the (last) engine for ``run --json``: where weights came from, the pool."""
        engine = self._engine if self._engine is not None else self.last_engine
        if engine is None:
            return {}
        pool = engine.pool.stats()
        return {
            "weight_source": engine.weight_source,
            "weight_cache_path": engine.weight_cache_path,
            "weight_cache_built": engine.weight_cache_built,
            "activation_reserve_bytes": engine.activation_reserve_bytes,
            "pool_held_bytes": pool.held_bytes,
            "pool_closed": engine.pool.closed,
            "pool_fresh_blocks": pool.fresh_blocks,
            "pool_reuses": pool.reuses,
            "peak_scope": engine.peak_scope,
            "read_mode": engine.read_mode,
            "read_mode_reason": engine.read_mode_reason,
            "room_bytes": engine.room_bytes,
            "baseline_held_bytes": engine.baseline_held_bytes,
            "predicted_disk_bytes_per_token": engine.disk_bytes_per_token,
            "disk_read_bytes_per_s": self.context.disk_bytes_per_s,
            "disk_read_mode": self.context.disk_read_mode,
            "disk_bound_tokens_per_s": disk_bound_tokens_per_s(engine.disk_bytes_per_token,
                                                               self.context.disk_bytes_per_s),
        }

    def notify(self, message: str) -> None:
        """Pass a one-line notice to where this model's notices go (``load_model(notify=...)``)."""
        if self._notify is not None:
            self._notify(message)

    def chat(self, system: str | None = None,
             history: Sequence[Mapping[str, str]] = ()) -> ChatSession:
        """A conversation with this model using its chat template, optionally continuing
        ``history`` (``{"role": "user" | "assistant", "content": ...}`` messages, oldest first)."""
        conversation = Conversation(system=system)
        for m in history:
            role, content = m.get("role"), m.get("content")
            if role not in ("user", "assistant") or not isinstance(content, str):
                raise GenerationError(
                    f"A chat history message must have role 'user' or 'assistant' and text "
                    f"content, got role {role!r}; pass the system message as system=."
                )
            conversation.add("user" if role == "user" else "assistant", content)
        return ChatSession(self, conversation)


class ChatSession:
    """A conversation: :meth:`send` a user message, iterate the reply; the reply joins the history.

    When the conversation no longer fits the model's ``max_context`` with room for a reply, the
    oldest turns are dropped (the system message and the new message always stay) and the kept
    conversation is prefilled again; :attr:`dropped_turns` counts them and the first time it
    happens the model's ``notify`` says so once. Only a system message and new message that leave
    no room for even one reply token raise :class:`GenerationError`."""

    TRIM_TARGET = 0.5
    """When turns must go, the prompt is cut to this part of the room the reply leaves, so the next
    turns reuse the cached conversation instead of each prefilling nearly all of it again."""

    def __init__(self, model: Model, conversation: Conversation) -> None:
        self.model = model
        self.conversation = conversation
        self.dropped_turns = 0  # turns dropped so far to stay within the context
        self.last_dropped_turns = 0  # of those, by the latest send
        self._told = False
        self._reply: Generation | None = None

    def _prompt_of(self, conversation: Conversation) -> str:
        tok = self.model.tokenizer
        bos = eos = ""
        if tok is not None and tok.bos_token_id is not None:
            bos = tok.decode([tok.bos_token_id])
        if tok is not None and tok.eos_token_ids:
            eos = tok.decode([tok.eos_token_ids[0]])
        return conversation.prompt(self.model.source.chat_template, bos_token=bos, eos_token=eos)

    def prompt_text(self) -> str:
        return self._prompt_of(self.conversation)

    def _fit(self, max_tokens: int) -> tuple[int, list[int]]:
        """How many oldest turns to drop, and the prompt ids that leaves (see :class:`ChatSession`).
        The reply is given room for ``max_tokens`` up to half the context."""
        context = self.model.context.max_context
        room = context - min(max(1, max_tokens), context // 2)
        prompts: dict[int, list[int]] = {}

        def prompt_ids(n: int) -> list[int]:
            if n not in prompts:
                kept = self.conversation.without_oldest_turns(n)
                prompts[n] = self.model.encode(self._prompt_of(kept))
            return prompts[n]

        droppable = len(self.conversation.turn_starts()) - 1
        n = turns_to_drop(droppable, lambda k: len(prompt_ids(k)), room,
                          int(room * self.TRIM_TARGET))
        ids = prompt_ids(n)
        if len(ids) >= context:
            what = "the system message and the message" if self.conversation.system else "the message"
            raise GenerationError(
                f"The chat prompt for {what} alone takes {len(ids)} tokens but the context holds "
                f"{context}, which leaves no room for a reply; raise --max-context or shorten "
                f"{what}."
            )
        return n, ids

    def send(
        self,
        message: str,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Generation:
        """Add a user message and start the assistant's reply (options as for
        :meth:`Model.generate`); the reply joins the history when it ends or is closed (a reply
        left unfinished is closed by the next :meth:`send`). K/V of the earlier turns stay
        cached, so only the new turn is prefilled, unless old turns had to be dropped. A reply
        that reaches the end of the context stops there (``stats.stop_reason == "max_context"``)
        and the next message makes room."""
        if not message.strip():
            raise GenerationError("The message is empty; type something to send.")
        if self._reply is not None:
            self._reply.close()
            self._reply = None
        conversation = self.conversation
        conversation.add("user", message)
        try:
            drop, ids = self._fit(max_tokens)
            gen = self.model.generate(ids, max_tokens=max_tokens, temperature=temperature,
                                      top_k=top_k, top_p=top_p, seed=seed)
        except EdgeRTError:
            conversation.messages.pop()
            raise
        self.last_dropped_turns = drop
        if drop:
            conversation.messages[:] = conversation.without_oldest_turns(drop).messages
            self.dropped_turns += drop
            if not self._told:
                self._told = True
                self.model.notify(
                    f"edge-rt: the conversation outgrew the context of "
                    f"{self.model.context.max_context} tokens, so its oldest turns are dropped "
                    "from now on (the system message stays; said once). Raise --max-context to "
                    "keep more."
                )
        gen.on_finish = lambda g: conversation.add("assistant", g.text or "")
        self._reply = gen
        return gen


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_model(
    model: str | Path | None = None,
    *,
    backend: str | None = None,
    memory_budget: str | int | None = None,
    strategy: str = AUTO,
    max_context: int = DEFAULT_MAX_CONTEXT,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    registry: PluginRegistry | None = None,
    threads: int | None = None,
    weight_cache: bool | None = None,
    notify: Callable[[str], None] | None = _to_stderr,
    tune_process: bool = False,
    activations: str | None = None,
    kv_cache: str = DEFAULT_KV_CACHE,
    governor: str = DEFAULT_GOVERNOR,
    soft_temp_c: float | None = None,
    cluster: str | None = None,
    worker_budget: str | int | None = None,
    cluster_timeout_s: float = 30.0,
) -> Model:
    """Open, validate and plan a model; weights are read on first use.

    ``model``: a ``.gguf`` path, a Hugging Face folder, a known name (``smollm2``, after
    ``edge-rt pull smollm2``), ``synthetic-smollm2-135m``/``synthetic-gpt2-small``, or ``None`` for
    the default synthetic model. ``memory_budget``: e.g. ``"256M"``; ``"auto"`` takes it from the
    machine (:mod:`edgert_core.memory.auto_budget`: the cgroup's limit and MemAvailable, less the
    RSS and a margin; ``budget_source`` in ``run --json`` says how); ``None`` keeps every weight
    resident. ``strategy``: a partition strategy name or ``auto``. ``threads``: kernel threads of
    backends that have them. ``weight_cache``: use the prepared-weights cache when streamed weights
    need converting (see :mod:`edgert_core.weight_cache`; default: on unless
    ``EDGERT_WEIGHT_CACHE=0``). ``notify``: where one-line notices go (stderr; ``None``: nowhere).
    ``activations``: the precision of the activations in the backend's products, one of its
    ``activation_modes`` (``"f32"``, exact, is every backend's default; the ``neon`` backend also has
    ``"q8"``, faster and approximate); ``None``: the backend's default.
    ``kv_cache``: the precision the KV cache stores keys and values in, ``"f32"`` (exact, the
    default), ``"f16"`` (half the bytes) or ``"q8_0"`` (GGUF Q8_0 blocks, 34/128 of the bytes; needs a
    head_dim that is a multiple of 32); the budget rule counts the setting's bytes (see
    :mod:`edgert_core.models.kv_quant`).
    ``tune_process``: let the engine change process-wide settings for speed and an RSS that follows
    the budget (glibc ``mallopt`` thresholds and the OS's peak-RSS counter, which stay changed; BLAS
    and kernel threads while prefetching, and the prefetch thread's priority, undone on
    :meth:`Model.close`); see :mod:`edgert_core.engine.tuning`. Off by default, so an application
    that embeds the core keeps its process as it was; the ``edge-rt`` CLI turns it on.
    ``governor``: the policy that adapts a generation to the machine while it runs (a registered
    governor's name; the built-in ``adaptive`` by default, see :mod:`edgert_core.builtin_governor`;
    ``"none"`` turns adaptation off); ``soft_temp_c``: its soft temperature limit (°C; default 80).
    ``cluster``: run the layers as a pipeline of stages on Dask workers (``local:N`` starts N
    worker processes on loopback; else a scheduler address such as ``tcp://HOST:8786``), each
    stage under its worker's budget (``worker_budget``, e.g. ``"1G"``; by default its Dask memory
    limit less what it holds and a margin): see :mod:`edgert_core.cluster`. Needs the ``cluster``
    extra; ``memory_budget`` and the governor do not apply there. A scheduler or worker that has
    not answered within ``cluster_timeout_s`` at the start is an error, not a hang.
    """
    if max_context < 2:
        raise GenerationError(f"max_context must be at least 2 tokens, got {max_context}.")
    if prefill_chunk < 1:
        raise GenerationError(f"prefill_chunk must be at least 1 token, got {prefill_chunk}.")
    check_mode(kv_cache)  # a mistyped setting is said before any file opens
    reg = registry if registry is not None else load_registry()
    if cluster is not None:
        from edgert_core.cluster.pipeline import require_dask

        require_dask()
        if memory_budget is not None:
            raise GenerationError("--memory-budget is one process's budget; with --cluster each "
                                  "worker has its own: use --worker-budget.")
    elif worker_budget is not None:
        raise GenerationError("--worker-budget is for runs on a cluster; add --cluster, or use "
                              "--memory-budget for this process.")
    validated = open_source(model).validate()
    if cluster is not None:
        from edgert_core.cluster.model import load_cluster_model
        from edgert_core.cluster.pipeline import worker_model_name

        return load_cluster_model(
            validated, reg, cluster, model=worker_model_name(str(model)), backend=backend, strategy=strategy,
            max_context=max_context, prefill_chunk=prefill_chunk, kv_cache=kv_cache,
            activations=activations, threads=threads, worker_budget=worker_budget, notify=notify,
            timeout_s=cluster_timeout_s)
    chosen = choose_backend(reg, validated.dtypes, backend)
    if threads is not None:
        if threads < 1:
            raise GenerationError(f"--threads must be at least 1, got {threads}.")
        if chosen.threads is not None:
            chosen.threads = threads
    chosen.activations = choose_activations(chosen, activations)
    check_kv_cache(kv_cache, validated.config.dims.head_dim)
    chosen_governor = choose_governor(reg, governor, soft_temp_c)
    auto = is_auto(memory_budget)
    found = _auto_budget(validated) if auto else None
    budget: int | None = None
    if found is not None:
        budget = found.bytes
    elif memory_budget is not None:
        budget = MemoryBudget.parse(memory_budget).bytes
    budget_source = None if found is None else found.source
    planned = _plan(validated, chosen, budget, None if found is None else found.limit_bytes, auto,
                    max_context, prefill_chunk, kv_cache, strategy, reg)
    if memory_budget is None:  # every weight resident, unless the machine cannot hold that
        try:
            found = _auto_budget(validated)
        except BudgetError:  # no figures to go by, or no room at all: as asked, then
            found = None
        resident = planned.plan.predicted_peak_bytes
        if found is not None and resident > found.bytes:
            auto = True
            try:
                planned = _plan(validated, chosen, found.bytes, found.limit_bytes, True,
                                max_context, prefill_chunk, kv_cache, strategy, reg)
            except InfeasibleBudgetError as exc:  # said for a run that gave no budget
                raise InfeasibleBudgetError(
                    f"{validated.name} needs {format_bytes(resident)} with every weight resident, "
                    f"and at least {format_bytes(exc.minimum_bytes)} streaming, with a context of "
                    f"{max_context} tokens; this machine leaves {format_bytes(found.bytes)} "
                    f"({found.source.removeprefix('auto: ')}). Free memory or raise the memory "
                    "limit, or lower --max-context or store the KV cache smaller (--kv-cache).",
                    minimum_bytes=exc.minimum_bytes) from None
            budget_source = (f"{found.source} (no budget given; every weight resident needs "
                             f"{format_bytes(resident)})")
            if notify is not None:
                notify(f"edge-rt: every weight resident needs {format_bytes(resident)}, more than "
                       f"this machine leaves ({found.source.removeprefix('auto: ')}), so the run "
                       "plans for that budget, as --memory-budget auto does.")
    return Model(planned, budgeted=planned.context.budget_bytes is not None,
                 weight_cache=weight_cache, notify=notify, tune_process=tune_process,
                 budget_source=budget_source, strategy=strategy, registry=reg,
                 governor=chosen_governor, auto_budget=auto)


def _auto_budget(validated: ValidatedModel) -> auto_budget.AutoBudget:
    """The budget the machine leaves this process (:func:`auto_budget.resolve`), the tokenizer
    built first (and kept): it is part of the baseline the budget is on."""
    validated.tokenizer()
    give_back_freed_memory()
    return auto_budget.resolve(current_rss_bytes())


def _plan(validated: ValidatedModel, backend: KernelBackend, budget: int | None,
          limit: int | None, auto: bool, max_context: int, prefill_chunk: int, kv_cache: str,
          strategy: str, registry: PluginRegistry) -> PlannedEngine:
    """The plan for ``budget`` (``None``: every weight resident) with the device facts ``auto``
    ranks plans by under a memory limit (:func:`device_facts`)."""
    room, disk = device_facts(validated.source, budget, limit, auto)
    ctx = PlanningContext(budget_bytes=budget, max_context=max_context, prefill_chunk=prefill_chunk,
                          kv_cache=kv_cache, room_bytes=room,
                          disk_bytes_per_s=None if disk is None else disk.bytes_per_s,
                          disk_read_mode=None if disk is None else disk.how)
    return Engine(validated, backend).plan(ctx, strategy, registry)


def choose_governor(registry: PluginRegistry, name: str | None,
                    soft_temp_c: float | None) -> Governor | None:
    """The named governor (``None`` for ``"none"``); an unknown name lists the installed ones."""
    chosen = (name or DEFAULT_GOVERNOR).strip().lower()
    if soft_temp_c is not None and not 0 < soft_temp_c < 150:
        raise GenerationError(f"The soft temperature limit must be between 0 and 150 °C, got "
                              f"{soft_temp_c:g}.")
    if chosen == NO_GOVERNOR:
        return None
    try:
        return registry.governor(chosen, soft_temp_c)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{exc} Or use none, which turns adaptation off.") from None


def device_facts(source: ModelSource, budget: int | None, limit: int | None,
                 auto: bool) -> tuple[int | None, bandwidth.Bandwidth | None]:
    """The device facts ``auto`` ranks plans by under a memory limit: the room for pool and page
    cache (for ``auto``, the budget itself) and the read bandwidth of the model's disk with the
    read mode that reaches it (measured once per file, :mod:`edgert_core.memory.bandwidth`);
    ``(None, None)`` without a limit or a budget."""
    if budget is None:
        return None, None
    if not auto:
        found = auto_budget.room_under_limit(current_rss_bytes())
        room = None if found is None else found.usable_bytes
    else:
        room = budget if limit is not None else None
    if room is None:
        return None, None
    files = sorted(source.file_sizes()) if source.format != "synthetic" else []
    return room, (bandwidth.read_bandwidth(files[0]) if files else None)


def generation_report(model: Model, gen: Generation) -> dict[str, Any]:
    """What ``edge-rt run --json`` prints about a finished generation."""
    s = gen.stats
    status = model.backend.status()
    return {
        "model": model.name,
        "model_format": model.source.format,
        "synthetic": model.synthetic,
        "backend": model.backend.name,
        "backend_path": status.path,
        "activations": model.backend.activations,
        "kv_cache": model.kv_cache,
        "strategy": model.plan.strategy,
        "budget_bytes": model.context.budget_bytes,
        "budget_source": model.budget_source,
        "max_context": model.requested_max_context,
        "kv_positions": model.context.max_context,
        "groups": [list(g.layers) for g in model.plan.groups],
        "resident_groups": [g.resident for g in model.plan.groups],
        "head_resident": model.plan.head_resident,
        "predicted_peak_bytes": model.plan.predicted_peak_bytes,
        "prompt_ids": gen.prompt_ids,
        "generated_ids": gen.ids,
        "text": gen.text,
        "stop_reason": s.stop_reason,
        "prompt_tokens": s.prompt_tokens,
        "generated_tokens": s.generated_tokens,
        "prefill_seconds": s.prefill_seconds,
        "decode_seconds": s.decode_seconds,
        "prefill_tokens_per_s": s.prefill_tokens_per_s,
        "decode_tokens_per_s": s.decode_tokens_per_s,
        "peak_rss_bytes": s.peak_rss_bytes,
        "baseline_rss_bytes": s.baseline_rss_bytes,
        "decode_load_seconds": s.decode_load_seconds,
        "decode_compute_seconds": s.decode_compute_seconds,
        "decode_wait_seconds": s.decode_wait_seconds,
        "hidden_load_fraction": s.hidden_load_fraction,
        "prefetch": s.prefetch,
        "pool_peak_bytes": s.pool_peak_bytes,
        "decode_read_bytes": s.decode_read_bytes,
        "read_bytes_per_token": s.read_bytes_per_token,
        "threads": getattr(model.backend, "threads", None),
        "governor": None if model.governor is None else model.governor.name,
        "events": [e.as_dict() for e in gen.events],
        # what watching the machine cost: seconds reading monitors and deciding, and monitor reads
        "governor_seconds": None if gen.adaptive is None else gen.adaptive.govern_seconds,
        "governor_steps": None if gen.adaptive is None else gen.adaptive.governs,
        "monitor_reads": None if gen.adaptive is None else gen.adaptive.sampler.reads,
        "temperature_start_c": gen.temperature_start_c,
        "temperature_end_c": gen.temperature_end_c,
        **model.engine_report(),
    }
