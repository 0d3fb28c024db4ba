"""Perplexity and KL divergence of a model against a reference, as llama.cpp's ``llama-perplexity``.

The conventions carried over from ``llama-perplexity`` (and its ``--kl-divergence``):

- the text is tokenized once, with the BOS the tokenizer adds; a file must give at least
  ``2 * ctx`` tokens, and ``len(tokens) // ctx`` windows of ``ctx`` tokens that do not overlap are
  evaluated (a tail shorter than a window is left out);
- each window runs from an empty KV cache; when the tokenizer adds a BOS, the window's first token
  is replaced by BOS (for the model's input only);
- only the second half of each window is scored: the logits of positions ``ctx//2 .. ctx-2``
  predict tokens ``ctx//2 + 1 .. ctx-1``, so each window scores ``ctx - 1 - ctx//2`` tokens and the
  model always has at least half a window of context;
- perplexity is ``exp`` of the mean negative log-likelihood over every scored token; its standard
  error is ``ppl * sqrt(var(nll) / (n - 1))``;
- per scored position, ``KL(reference || model) = sum_v p_ref(v) * (log p_ref(v) - log p(v))``
  (the reference's distribution first), computed here exactly in float64 over the whole vocabulary
  (llama.cpp stores the reference as 16-bit log-probabilities and drops those below -16);
- top-1 agreement is the share of scored positions where both argmaxes are the same token;
- percentiles interpolate linearly between the sorted values (``numpy.percentile``'s default).

Memory: the reference's logits are never held for the whole file. :func:`evaluate` runs the model
under test and the reference one after the other on each window, keeps one window's scored logits of
the model under test (``(ctx - 1 - ctx//2) * vocab * 4`` bytes: 48 MiB for SmolLM2 at ``ctx=512``,
148 MiB for a 152k-token vocabulary) while the reference runs, reduces both to a few float64 values
per position in blocks of :data:`BLOCK_ROWS` rows, and drops them. With ``one_at_a_time`` each model
gives its engine back (:meth:`Model.close`) after its pass, so only one model's weights are in memory
at any time; that is what a 4 GB device needs when the fp32 reference of a 0.5-3B model (2-12 GB)
must stream its weights under a budget while the quantized model would fill most of the rest.

This module does no I/O: the CLI reads the file and prints; the math takes arrays.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from edgert_core.errors import GenerationError

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

#: Rows of logits turned into float64 at a time (``BLOCK_ROWS * vocab * 8`` bytes per temporary).
BLOCK_ROWS = 16


# -- the math: pure functions on arrays ---------------------------------------------------------------

def log_softmax(logits: NDArray[np.floating]) -> F64:
    """``log softmax`` over the last axis, in float64: ``[..., vocab] -> [..., vocab]``."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)  # [..., V], max 0: exp cannot overflow
    out: F64 = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def nll(logprobs: F64, targets: NDArray[np.integer]) -> F64:
    """Negative log-likelihood of each row's target: ``[N, vocab], [N] -> [N]``."""
    rows = np.arange(logprobs.shape[0])
    out: F64 = -logprobs[rows, np.asarray(targets, dtype=np.int64)]
    return out


def kl_divergence(ref_logprobs: F64, logprobs: F64) -> F64:
    """``KL(ref || model)`` per row from log-probabilities: ``[N, vocab] x2 -> [N]`` float64,
    never below 0 (a value below 0 can only be rounding and is returned as 0)."""
    p = np.exp(ref_logprobs)  # [N, V]
    kl: F64 = np.maximum((p * (ref_logprobs - logprobs)).sum(axis=-1), 0.0)
    return kl


def top1_same(ref_logits: NDArray[np.floating], logits: NDArray[np.floating]) -> NDArray[np.bool_]:
    """Whether each row's most likely token is the same: ``[N, vocab] x2 -> [N]`` bool (on a tie,
    the lowest id counts as the argmax, for both)."""
    same: NDArray[np.bool_] = np.argmax(ref_logits, axis=-1) == np.argmax(logits, axis=-1)
    return same


def perplexity(nlls: NDArray[np.floating]) -> float:
    """``exp(mean(nll))`` of ``[N]`` negative log-likelihoods (N >= 1)."""
    values = np.asarray(nlls, dtype=np.float64)
    if values.size == 0:
        raise ValueError("perplexity of no tokens")
    return math.exp(float(values.mean()))


def perplexity_stderr(nlls: NDArray[np.floating]) -> float:
    """The standard error of :func:`perplexity` (``ppl * sqrt(var / (n - 1))``, as llama.cpp
    reports ``PPL = x +/- e``); 0 for fewer than two tokens."""
    values = np.asarray(nlls, dtype=np.float64)
    if values.size < 2:
        return 0.0
    var = float(values.var())
    return perplexity(values) * math.sqrt(var / (values.size - 1))


def percentile(values: NDArray[np.floating], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile of ``[N]`` values, linear between the sorted values."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size == 0:
        raise ValueError("percentile of no values")
    if fraction <= 0:
        return float(v[0])
    if fraction >= 1:
        return float(v[-1])
    pos = fraction * (v.size - 1)
    lo = int(pos)
    hi = min(lo + 1, v.size - 1)
    w = pos - lo
    return float((1 - w) * v[lo] + w * v[hi])


@dataclass(frozen=True)
class PositionScores:
    """What is kept of each scored position: all ``[N]``."""

    nll: F64  # the model under test's negative log-likelihood of the next token
    reference_nll: F64  # the reference's
    kl: F64  # KL(reference || model)
    same_top: NDArray[np.bool_]  # both argmaxes equal


def score_positions(logits: NDArray[np.floating], ref_logits: NDArray[np.floating],
                    targets: NDArray[np.integer], block_rows: int = BLOCK_ROWS) -> PositionScores:
    """Scores of ``N`` positions from the two models' logits ``[N, vocab]`` (float32 or float64)
    and the tokens that follow ``[N]``; float64 temporaries of ``block_rows`` rows at a time."""
    n = logits.shape[0]
    if ref_logits.shape != logits.shape or len(targets) != n:
        raise ValueError(f"shapes differ: {logits.shape}, {ref_logits.shape}, {len(targets)} targets")
    out = {k: np.empty(n, dtype=np.float64) for k in ("nll", "ref", "kl")}
    same = np.empty(n, dtype=np.bool_)
    tgt = np.asarray(targets, dtype=np.int64)
    for a in range(0, n, block_rows):
        b = min(a + block_rows, n)
        lp = log_softmax(logits[a:b])  # [B, V] float64
        lr = log_softmax(ref_logits[a:b])  # [B, V] float64
        out["nll"][a:b] = nll(lp, tgt[a:b])
        out["ref"][a:b] = nll(lr, tgt[a:b])
        out["kl"][a:b] = kl_divergence(lr, lp)
        same[a:b] = top1_same(ref_logits[a:b], logits[a:b])
    return PositionScores(out["nll"], out["ref"], out["kl"], same)


# -- windows -----------------------------------------------------------------------------------------

def scored_per_window(ctx: int) -> int:
    """Tokens scored in a window of ``ctx``: positions ``ctx//2 .. ctx-2`` predict the next one."""
    return ctx - 1 - ctx // 2


def window_count(n_tokens: int, ctx: int) -> int:
    """How many windows of ``ctx`` tokens a text of ``n_tokens`` gives; at least two windows'
    worth of tokens are required (as ``llama-perplexity`` does), else a :class:`GenerationError`
    with the figures."""
    if ctx < 4:
        raise GenerationError(f"--ctx must be at least 4 tokens, got {ctx}.")
    if n_tokens < 2 * ctx:
        raise GenerationError(
            f"The text has {n_tokens} tokens but a perplexity run with --ctx {ctx} needs at least "
            f"{2 * ctx} (two windows of {ctx}); give a longer text or a smaller --ctx "
            f"(at most {max(n_tokens // 2, 0)} for this text)."
        )
    return n_tokens // ctx


def window_input(ids: Sequence[int], index: int, ctx: int, bos: int | None) -> list[int]:
    """The model's input for window ``index``: tokens ``index*ctx .. index*ctx + ctx - 2`` (the last
    token of a window is only a target), the first replaced by ``bos`` when given."""
    start = index * ctx
    window = [int(i) for i in ids[start : start + ctx - 1]]
    if bos is not None:
        window[0] = bos
    return window


def window_targets(ids: Sequence[int], index: int, ctx: int) -> NDArray[np.int64]:
    """The scored tokens of window ``index``: ``[ctx - 1 - ctx//2]``."""
    start = index * ctx
    return np.asarray(ids[start + ctx // 2 + 1 : start + ctx], dtype=np.int64)


# -- the driver --------------------------------------------------------------------------------------

class LogitsModel(Protocol):
    """What :func:`evaluate` needs of a model (:class:`edgert_core.api.Model` has it)."""

    def logits(self, ids: Sequence[int], *, start: int = 0) -> F32: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class WindowResult:
    """One evaluated window: its scores and the seconds each model's pass took."""

    index: int
    windows: int  # of the run
    scores: PositionScores
    seconds: float  # the model under test's pass (its load too, when one_at_a_time)
    reference_seconds: float
    evaluated: int  # tokens each model ran in the window (ctx - 1)


def evaluate(
    model: LogitsModel,
    reference: LogitsModel,
    ids: Sequence[int],
    ctx: int,
    *,
    bos: int | None = None,
    max_windows: int | None = None,
    one_at_a_time: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[WindowResult]:
    """Yield the scores of each window of ``ctx`` tokens of ``ids`` (see the module docstring).

    ``bos``: the id that replaces each window's first token (``None``: the tokenizer adds none).
    ``max_windows``: stop after that many windows. ``one_at_a_time``: close each model after its
    pass, so that only one holds memory at a time (each pass then loads its model again)."""
    n = window_count(len(ids), ctx)
    if max_windows is not None:
        if max_windows < 1:
            raise GenerationError(f"--chunks must be at least 1, got {max_windows}.")
        n = min(n, max_windows)
    first = ctx // 2
    for w in range(n):
        inp = window_input(ids, w, ctx, bos)
        t0 = clock()
        logits = model.logits(inp, start=first)  # [S, V] float32
        if one_at_a_time:
            model.close()
        t1 = clock()
        ref = reference.logits(inp, start=first)  # [S, V] float32
        if one_at_a_time:
            reference.close()
        t2 = clock()
        scores = score_positions(logits, ref, window_targets(ids, w, ctx))
        del logits, ref
        yield WindowResult(w, n, scores, t1 - t0, t2 - t1, len(inp))


@dataclass
class Summary:
    """Running totals over windows; :meth:`add` each :class:`WindowResult`."""

    windows: int = 0
    evaluated: int = 0
    seconds: float = 0.0
    reference_seconds: float = 0.0
    _parts: list[PositionScores] = field(default_factory=list)

    def add(self, result: WindowResult) -> None:
        self.windows += 1
        self.evaluated += result.evaluated
        self.seconds += result.seconds
        self.reference_seconds += result.reference_seconds
        self._parts.append(result.scores)

    def running_ppl(self) -> float:
        """The perplexity over the windows added so far (cheap: for a progress display)."""
        n = sum(p.nll.size for p in self._parts)
        return math.exp(sum(float(p.nll.sum()) for p in self._parts) / n) if n else math.nan

    def scores(self) -> PositionScores:
        """Every scored position so far, in order."""
        if not self._parts:
            raise ValueError("no window evaluated")
        return PositionScores(
            np.concatenate([p.nll for p in self._parts]),
            np.concatenate([p.reference_nll for p in self._parts]),
            np.concatenate([p.kl for p in self._parts]),
            np.concatenate([p.same_top for p in self._parts]),
        )

    def figures(self) -> dict[str, float | int]:
        """The run's figures: ``tokens`` (scored), ``ppl``, ``ppl_stderr``, ``reference_ppl``,
        ``kl_mean``, ``kl_median``, ``kl_p99``, ``kl_max``, ``top1_agreement`` (0..1),
        ``tokens_per_s`` and ``reference_tokens_per_s`` (tokens run per second of each model's
        passes)."""
        s = self.scores()
        return {
            "tokens": int(s.nll.size),
            "ppl": perplexity(s.nll),
            "ppl_stderr": perplexity_stderr(s.nll),
            "reference_ppl": perplexity(s.reference_nll),
            "kl_mean": float(s.kl.mean()),
            "kl_median": percentile(s.kl, 0.5),
            "kl_p99": percentile(s.kl, 0.99),
            "kl_max": float(s.kl.max()),
            "top1_agreement": float(s.same_top.mean()),
            "tokens_per_s": self.evaluated / self.seconds if self.seconds > 0 else 0.0,
            "reference_tokens_per_s": (self.evaluated / self.reference_seconds
                                       if self.reference_seconds > 0 else 0.0),
        }
