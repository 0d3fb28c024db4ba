"""The stage model: how the backend holds a tensor (:class:`TensorForm`, as the backend declares
it), a tensor or row slice of one as an array of a stage (:class:`Piece`), what is loaded together
into one pool buffer (:class:`Stage`), a stage's weights in pool memory (:class:`LoadedStage`), and
the cutting of a plan into stages (:func:`make_stages`), in the order of the prepared-weights file
(:func:`tensor_order`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgert_core.backends.base import TensorForm, Weight
from edgert_core.layout import BLOCK_PARTS, ModelLayout, block_part
from edgert_core.memory.pool import block_bytes, pack_offsets
from edgert_core.models.config import (
    ModelConfig,
    final_norm_names,
    layer_prefix,
    output_name,
)
from edgert_core.models.transformer import FUSIONS, LayerWeights
from edgert_core.plan import ExecutionPlan, group_stages, head_slices


@dataclass(frozen=True)
class Piece:
    """A tensor, or rows ``rows[0]..rows[1]-1`` of a 2-D tensor, as one array of a stage."""

    name: str
    form: TensorForm
    rows: tuple[int, int] | None = None

    @property
    def nbytes(self) -> int:
        if self.rows is None:
            return self.form.nbytes
        return (self.rows[1] - self.rows[0]) * self.form.row_nbytes

    @property
    def shape(self) -> tuple[int, ...]:
        if self.rows is None:
            return self.form.shape
        return (self.rows[1] - self.rows[0], *self.form.shape[1:])


@dataclass(frozen=True)
class Stage:
    """What is loaded together into one pool buffer: block parts of a group's layers (``parts``:
    ``(layer, part)`` pairs, an index into :data:`~edgert_core.layout.BLOCK_PARTS`), or a slice of
    the head (the first slice also holds the final norm). ``group`` is the index of the plan group
    the stage belongs to (``None`` for the head)."""

    label: str
    layers: tuple[int, ...]
    pieces: tuple[Piece, ...]
    head: bool = False
    parts: tuple[tuple[int, int], ...] = ()
    group: int | None = None

    @functools.cached_property
    def specs(self) -> tuple[tuple[int, type[np.uint8]], ...]:
        """The pool specs of the stage's buffer: one byte array per piece (computed once)."""
        return tuple((p.nbytes, np.uint8) for p in self.pieces)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Each piece's byte offset in the stage's buffer."""
        return tuple(pack_offsets(self.specs)[0])

    @functools.cached_property
    def nbytes(self) -> int:
        return pack_offsets(self.specs)[1]

    @property
    def block_bytes(self) -> int:
        return block_bytes(self.nbytes)


class LoadedStage:
    """A stage's weights in pool memory: ``weights`` by name, and ``parts`` (each block part's
    layer weights and part index) for :meth:`Transformer.run_parts`. :meth:`release` drops the
    views and gives the memory back (a resident stage's buffer, or a streamed stage's slot)."""

    def __init__(self, stage: Stage, weights: dict[str, Weight],
                 parts: list[tuple[LayerWeights, int]], release: Callable[[], None]) -> None:
        self.stage = stage
        self.weights = weights
        self.parts = parts
        self._release: Callable[[], None] | None = release

    @property
    def layers(self) -> list[LayerWeights]:
        """The stage's whole layers (a resident stage holds every part of its layers)."""
        seen: dict[int, LayerWeights] = {}
        for w, _ in self.parts:
            seen.setdefault(w.index, w)
        return list(seen.values())

    def release(self) -> None:
        self.weights = {}
        self.parts = []
        release, self._release = self._release, None
        if release is not None:
            release()


# -- a plan cut into stages ------------------------------------------------------------------------


def tensor_order(config: ModelConfig, layout: ModelLayout) -> list[str]:
    """Every tensor in load order: layer by layer (fused weights back to back), then the head,
    then embeddings that are not the head's."""
    names: list[str] = []
    for i in range(len(layout.layers)):
        names += layer_tensors(config, layout, i)
    if layout.head:  # a part of a model that ends before the last layer has none
        names += [*final_norm_names(config.architecture), output_name(config)]
    for info in layout.embeddings:
        if info.name not in names:
            names.append(info.name)
    return names


def layer_tensors(config: ModelConfig, layout: ModelLayout, index: int) -> list[str]:
    """Layer ``index``'s tensors part by part (:data:`BLOCK_PARTS` order), fused weights back to
    back at the start of their part: the order of the prepared-weights file, so that a stage of
    consecutive parts is one contiguous read."""
    return [n for p in range(len(BLOCK_PARTS[config.architecture]))
            for n in part_tensors(config, layout, index, p)]


def part_tensors(config: ModelConfig, layout: ModelLayout, index: int, part: int) -> list[str]:
    arch = config.architecture
    prefix = layer_prefix(arch, index)
    order = [prefix + n for parts in FUSIONS[arch].values() for n in parts]
    names = [t.name for t in layout.layers[index].tensors
             if block_part(arch, t.name) == part]
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    return names


def make_stages(config: ModelConfig, layout: ModelLayout, plan: ExecutionPlan,
                forms: dict[str, TensorForm]) -> list[tuple[Stage, bool]]:
    """Every stage of a forward pass in order, with whether it is resident: a resident group is
    one stage; a streamed group is cut into stages by the plan's ``stage_bytes``."""
    stages: list[tuple[Stage, bool]] = []
    n_parts = len(BLOCK_PARTS[config.architecture])
    for gi, group in enumerate(plan.groups):
        label = f"group {gi} (layers {group.layers[0]}-{group.layers[-1]})"
        if group.resident:
            cuts = [[(i, p) for i in group.layers for p in range(n_parts)]]
        else:
            cuts = group_stages(layout, group.layers, plan.stage_bytes)
        for k, cut in enumerate(cuts):
            pieces = tuple(Piece(n, forms[n]) for i, p in cut
                           for n in part_tensors(config, layout, i, p))
            layers = tuple(dict.fromkeys(i for i, _ in cut))
            name = label if len(cuts) == 1 else f"{label} stage {k + 1}/{len(cuts)}"
            stages.append((Stage(name, layers, pieces, parts=tuple(cut), group=gi),
                           group.resident))
    if not layout.head:  # a part of a model that ends before the last layer
        return stages
    norms = tuple(Piece(n, forms[n]) for n in final_norm_names(config.architecture))
    out = output_name(config)
    form = forms[out]
    if plan.head_resident or form.row_nbytes == 0:
        stages.append((Stage("head", (), (*norms, Piece(out, form)), head=True),
                       plan.head_resident))
        return stages
    rows = form.shape[0]
    n = len(head_slices(layout.head_bytes, plan.head_slice_bytes, rows))
    start = 0
    for k in range(n):
        count = rows // n + (1 if k < rows % n else 0)
        piece = Piece(out, form, (start, start + count))
        stages.append((Stage(f"head slice {k + 1}/{n}", (), (*(norms if k == 0 else ()), piece),
                             head=True), False))
        start += count
    return stages


def count_group_stages(plan: ExecutionPlan, stages: list[tuple[Stage, bool]]) -> list[int]:
    """How many stages each plan group has (resident groups one)."""
    counts = [0] * len(plan.groups)
    for stage, _ in stages:
        if stage.group is not None:
            counts[stage.group] += 1
    return counts
