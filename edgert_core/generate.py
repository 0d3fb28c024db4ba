"""Token generation: prefill the prompt, then decode one token at a time with the KV cache.

:func:`generate_ids` is a generator of token ids; it fills a :class:`GenerationStats` as it goes
(prefill and decode speed, stop reason, resident memory, bytes read from disk while decoding).
Sampling is greedy at temperature 0, else temperature, top-k and top-p (nucleus) sampling from a
seeded generator.

Generation drives an engine through :class:`StepEngine`, the few members it uses; a
:class:`~edgert_core.engine.ReadyEngine` has them (an ``Engine`` or ``PlannedEngine`` does not, so
passing one is a type error). The engine does not import this module.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from edgert_core.engine.pipeline import EngineTimes
from edgert_core.errors import GenerationError
from edgert_core.memory.io_stats import read_bytes
from edgert_core.memory.rss import peak_rss_bytes


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is picked: ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1.0
    disable those filters; ``seed`` makes sampling repeatable."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise GenerationError(f"The temperature must be 0 or more, got {self.temperature}.")
        if self.top_k < 0:
            raise GenerationError(f"top-k must be 0 (off) or a positive number, got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top-p must be in (0, 1], got {self.top_p}.")


class Sampler:
    """Picks a token id from float32 ``[vocab]`` logits.

    The random draw is the standard library's (one uniform number per token, looked up in the
    cumulative probabilities): ``numpy.random`` would add about 4.4 MiB of extension modules to
    every run's baseline RSS for one number per token."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = random.Random(params.seed)

    def __call__(self, logits: NDArray[np.float32]) -> int:
        p = self.params
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / p.temperature  # [vocab]
        if 0 < p.top_k < len(scaled):
            kth = np.partition(scaled, -p.top_k)[-p.top_k]
            scaled[scaled < kth] = -np.inf
        scaled -= scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = int(np.searchsorted(cumulative, p.top_p)) + 1  # smallest set reaching top_p
            mask = np.zeros_like(probs, dtype=bool)
            mask[order[:keep]] = True
            probs[~mask] = 0.0
            probs /= probs.sum()
        cumulative = np.cumsum(probs)
        # the first index whose cumulative probability exceeds the draw: a token of probability 0
        # spans an empty interval and is never picked
        picked = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return min(picked, len(probs) - 1)


@dataclass
class GenerationStats:
    """Measurements of one generation. Speeds are ``None`` when a phase did not run."""

    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose K/V were already cached
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    stop_reason: str = ""  # "eos", "max_tokens", "max_context", or "stopped" (Generation.close)
    baseline_rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    decode_load_seconds: float = 0.0  # streamed weight loads during decode (any thread)
    decode_compute_seconds: float = 0.0  # main-thread compute during decode
    decode_wait_seconds: float = 0.0  # main-thread time blocked on loads during decode
    prefetch: bool = False
    pool_peak_bytes: int | None = None
    # bytes this process read from disk (/proc/self/io) from the first token to the end; None where
    # the OS does not say
    decode_read_bytes: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def hidden_load_fraction(self) -> float | None:
        """The part of decode's load time that ran behind compute (``None`` without prefetch)."""
        if not self.prefetch:
            return None
        return EngineTimes(self.decode_load_seconds, self.decode_wait_seconds).hidden_fraction()

    @property
    def prefill_tokens_per_s(self) -> float | None:
        n = self.prompt_tokens - self.reused_tokens
        return n / self.prefill_seconds if self.prefill_seconds > 0 and n > 0 else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else None

    @property
    def read_bytes_per_token(self) -> float | None:
        """Bytes read from disk per decoded token (``None`` without a decode step or a count)."""
        if self.decode_read_bytes is None or self.decode_steps == 0:
            return None
        return self.decode_read_bytes / self.decode_steps


def check_request(prompt_ids: Sequence[int], max_tokens: int, vocab: int, max_context: int) -> None:
    """Raise :class:`GenerationError` for a request that cannot run."""
    if len(prompt_ids) == 0:
        raise GenerationError("The prompt is empty; give a prompt with at least one token.")
    if max_tokens < 1:
        raise GenerationError(f"max_tokens must be at least 1, got {max_tokens}; ask for 1 or more.")
    bad = [i for i in prompt_ids if not 0 <= int(i) < vocab]
    if bad:
        raise GenerationError(
            f"Prompt token id {bad[0]} is outside the model's vocabulary of {vocab} ids."
        )
    if len(prompt_ids) >= max_context:
        raise GenerationError(
            f"The prompt has {len(prompt_ids)} tokens but the context holds {max_context}, which "
            "leaves no room to generate; shorten the prompt or raise --max-context."
        )


class StepEngine(Protocol):
    """What generation needs of an engine: ``forward`` passes over a KV cache that holds
    ``cached_ids``, its timings, and a few facts for :class:`GenerationStats`."""

    @property
    def vocab(self) -> int: ...
    @property
    def max_context(self) -> int: ...
    @property
    def cached_ids(self) -> list[int]:
        """The tokens whose K/V are in the cache, in order."""
    @property
    def times(self) -> EngineTimes:
        """Where the engine's time went so far (a running total)."""
    @property
    def baseline_rss_bytes(self) -> int: ...
    @property
    def prefetch(self) -> bool: ...
    @property
    def pool_peak_bytes(self) -> int: ...

    def forward(self, ids: Sequence[int], start: int, *,
                all_logits: bool = False) -> NDArray[np.float32]:
        """Logits of tokens ``ids`` at positions ``start...`` (the last row, or every row)."""

    def end_of_step(self) -> None:
        """The generation ended: give back anything loaded ahead for it."""


def generate_ids(
    engine: StepEngine,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int,
    sampling: SamplingParams | None = None,
    stop_ids: Sequence[int] = (),
    prefill_chunk: int | None = None,
    stats: GenerationStats | None = None,
) -> Generator[int, None, None]:
    """Yield up to ``max_tokens`` new token ids after ``prompt_ids``.

    Stops after a token in ``stop_ids`` (not yielded), after ``max_tokens``, or when the context is
    full. The prompt is prefilled in chunks of ``prefill_chunk`` tokens (all at once when ``None``);
    K/V already cached for a common prefix of the prompt (a previous turn) are reused.
    """
    stats = stats if stats is not None else GenerationStats()
    check_request(prompt_ids, max_tokens, engine.vocab, engine.max_context)
    sampler = Sampler(sampling or SamplingParams())
    stops = set(stop_ids)
    ids = [int(i) for i in prompt_ids]
    stats.prompt_tokens = len(ids)

    stats.baseline_rss_bytes = engine.baseline_rss_bytes
    stats.prefetch = engine.prefetch
    reuse = 0
    # the last prompt token always runs again, for its logits
    for a, b in zip(engine.cached_ids, ids[:-1], strict=False):
        if a != b:
            break
        reuse += 1
    stats.reused_tokens = reuse

    before = replace(engine.times)
    read_before: int | None = None
    try:
        t0 = time.perf_counter()
        chunk = prefill_chunk or len(ids)
        start = reuse
        logits = np.empty(0, dtype=np.float32)
        while start < len(ids):
            piece = ids[start : start + chunk]
            logits = engine.forward(piece, start)[-1]
            start += len(piece)
        token = sampler(logits)
        stats.prefill_seconds = time.perf_counter() - t0
        position = len(ids)
        before = replace(engine.times)
        read_before = read_bytes()
        while True:
            if token in stops:
                stats.stop_reason = "eos"
                return
            stats.generated_tokens += 1
            yield token
            if stats.generated_tokens >= max_tokens:
                stats.stop_reason = "max_tokens"
                return
            if position >= engine.max_context:
                stats.stop_reason = "max_context"
                return
            t = time.perf_counter()
            logits = engine.forward([token], position)[-1]
            token = sampler(logits)
            stats.decode_seconds += time.perf_counter() - t
            stats.decode_steps += 1
            position += 1
    finally:
        engine.end_of_step()
        spent = engine.times.minus(before)
        stats.decode_load_seconds = spent.load
        stats.decode_wait_seconds = spent.wait
        stats.decode_compute_seconds = spent.compute
        stats.pool_peak_bytes = engine.pool_peak_bytes
        stats.peak_rss_bytes = peak_rss_bytes()
        read_after = read_bytes() if read_before is not None else None
        if read_before is not None and read_after is not None:
            stats.decode_read_bytes = read_after - read_before
