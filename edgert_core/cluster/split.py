"""Cutting a model's layers into contiguous stages across workers (pure: no I/O, no Dask).

A worker's share of the weights follows its budget and, where the workers' measured speeds differ
clearly, its speed (:func:`stage_shares`); the cut after layer ``k`` goes where the weights up to
it come closest to the workers' shares so far (the head counts with the last stage, which runs
it). Every stage gets at least one layer, so at most ``n_layers`` workers take part.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def split_layers(layer_bytes: Sequence[int], head_bytes: int,
                 shares: Sequence[float]) -> list[tuple[int, int]]:
    """Contiguous ``(first, stop)`` layer ranges, one per share, in order, covering every layer.

    ``shares``: what each worker may use (bytes, or any positive weights); ``head_bytes``: the
    bytes the last stage holds beside its layers. Each range is non-empty; a worker beyond the
    number of layers is an error (the caller uses fewer workers)."""
    n = len(layer_bytes)
    if not shares or any(s <= 0 for s in shares):
        raise ValueError("every worker needs a positive share")
    if len(shares) > n:
        raise ValueError(f"{len(shares)} workers for {n} layers: at most one worker per layer")
    total = sum(layer_bytes) + head_bytes
    share_total = float(sum(shares))
    cumulative = [0]
    for b in layer_bytes:
        cumulative.append(cumulative[-1] + b)
    cuts = [0]
    wanted = 0.0
    for k, share in enumerate(shares[:-1]):
        wanted += total * share / share_total
        low = cuts[-1] + 1  # this stage has one layer at least
        high = n - (len(shares) - 1 - k)  # and leaves one for each stage after it
        cut = min(range(low, high + 1), key=lambda c: (abs(cumulative[c] - wanted), c))
        cuts.append(cut)
    cuts.append(n)
    return list(itertools.pairwise(cuts))


#: Measured speeds closer than this ratio count as equal: on a shared or busy machine two alike
#: workers measure up to some tens of percent apart, and the split should not follow that noise.
SPEED_SPREAD = 1.5


def stage_shares(budgets: Sequence[float], speeds: Sequence[float | None]) -> list[float]:
    """Each worker's share of the weights: its budget, times its speed over the mean speed where
    every speed is measured and the fastest is at least :data:`SPEED_SPREAD` times the slowest (a
    faster worker takes more layers, within what its budget may hold: the caller checks each
    stage's minimum and falls back to the budgets alone)."""
    known = [v for v in speeds if v is not None and v > 0]
    if len(known) != len(speeds) or not known or max(known) < SPEED_SPREAD * min(known):
        return [float(b) for b in budgets]
    mean = sum(known) / len(known)
    return [float(b) * float(v) / mean for b, v in zip(budgets, known, strict=True)]
