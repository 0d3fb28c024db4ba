"""Runs a validated model on a kernel backend, walking the layer groups of an execution plan.

Resident groups (and a resident head) are read and prepared once, by :meth:`Engine.load`; every other
group is read, prepared, run and dropped in each forward pass, and a streamed head is read in row
slices of at most ``plan.head_slice_bytes``. Token embeddings are looked up by row: from the prepared
table when it is resident (a tied head), otherwise straight from the file.

Memory for streamed weights comes from plain numpy allocations here; a budget-enforcing pool replaces
:meth:`Engine._allocate` later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from edgert_core.backends.base import Weight
from edgert_core.backends.numpy_ref import NumpyBackend
from edgert_core.layout import ModelLayout, TensorInfo
from edgert_core.loaders.base import ValidatedModel, row_nbytes
from edgert_core.memory.rss import current_rss_bytes
from edgert_core.models.config import (
    final_norm_names,
    layer_prefix,
    output_name,
    position_embedding_name,
    token_embedding_name,
)
from edgert_core.models.kv_cache import KVCache
from edgert_core.models.transformer import FUSIONS, LayerWeights, Transformer
from edgert_core.plan import ExecutionPlan, LayerGroup

F32 = NDArray[np.float32]

ALIGN = 64


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Engine:
    """One model, one backend, one plan, one KV cache."""

    def __init__(
        self,
        model: ValidatedModel,
        backend: NumpyBackend,
        plan: ExecutionPlan,
        layout: ModelLayout,
        max_context: int,
    ) -> None:
        self.model = model
        self.backend = backend
        self.plan = plan
        self.layout = layout  # in-memory bytes of this backend
        self.config = model.config
        self.max_context = max_context
        self.transformer = Transformer(self.config, backend, max_context)
        self.cache: KVCache = self.transformer.new_cache()
        self.cached_ids: list[int] = []  # the tokens whose K/V are in the cache, in order
        self._resident: dict[int, LayerWeights] = {}
        self._head: tuple[dict[str, Weight], list[Weight]] | None = None
        self._scratch = np.empty(0, dtype=np.uint8)
        self.baseline_rss_bytes: int | None = None
        self.loaded = False
        self.on_stage: Callable[[str, int], None] | None = None  # hook for monitors: (kind, index)

    # -- weights -------------------------------------------------------------------------------
    def _allocate(self, nbytes: int) -> NDArray[np.uint8]:
        return np.empty(nbytes, dtype=np.uint8)

    def _raw(self, nbytes: int) -> NDArray[np.uint8]:
        """A reusable buffer for the file bytes of one tensor."""
        if len(self._scratch) < nbytes:
            self._scratch = np.empty(nbytes, dtype=np.uint8)
        return self._scratch[:nbytes]

    def _prepare(self, info: TensorInfo) -> Weight:
        raw = self.model.read_tensor(info.name, out=self._raw(info.nbytes))
        return self.backend.prepare_weight(info, raw, self._allocate(self.backend.weight_nbytes(info)))

    def _prepare_rows(self, name: str, start: int, stop: int) -> Weight:
        """Rows ``start..stop-1`` of a 2-D tensor as a weight of shape ``[stop-start, cols]``."""
        info = self.model.info(name)
        n = (stop - start) * row_nbytes(info)
        raw = self.model.read_rows(name, start, stop, out=self._raw(n))
        part = TensorInfo(f"{name}[{start}:{stop}]", (stop - start, info.shape[1]), info.dtype, n)
        return self.backend.prepare_weight(part, raw, self._allocate(self.backend.weight_nbytes(part)))

    def layer_weights(self, index: int) -> LayerWeights:
        """The prepared weights of block ``index`` (resident or freshly read), in one buffer with
        the weights of each fusion (:data:`FUSIONS`) back to back so the backend can stack them."""
        if index in self._resident:
            return self._resident[index]
        arch = self.config.architecture
        tensors = list(self.layout.layers[index].tensors)
        prefix = layer_prefix(arch, index)
        order = [prefix + n for parts in FUSIONS[arch].values() for n in parts]
        tensors.sort(key=lambda t: order.index(t.name) if t.name in order else len(order))
        sizes = [_aligned(self.backend.weight_nbytes(t)) for t in tensors]
        buf = self._allocate(sum(sizes))
        named: dict[str, Weight] = {}
        offset = 0
        for t, size in zip(tensors, sizes, strict=True):
            raw = self.model.read_tensor(t.name, out=self._raw(t.nbytes))
            named[t.name] = self.backend.prepare_weight(t, raw, buf[offset : offset + size])
            offset += size
        return LayerWeights.from_named(arch, index, named, self.backend.fuse_rows)

    def group_weights(self, group: LayerGroup) -> list[LayerWeights]:
        return [self.layer_weights(i) for i in group.layers]

    def head_weights(self) -> tuple[dict[str, Weight], list[Weight]]:
        """Final norm weights and the output projection as row slices."""
        if self._head is not None:
            return self._head
        arch = self.config.architecture
        norm = {n: self._prepare(self.model.info(n)) for n in final_norm_names(arch)}
        out_name = output_name(self.config)
        info = self.model.info(out_name)
        if self.plan.head_resident:
            return norm, [self._prepare(info)]
        rows = info.shape[0]
        row_mem = self.backend.weight_nbytes(
            TensorInfo(out_name, (1, info.shape[1]), info.dtype, row_nbytes(info))
        )
        per_slice = max(1, min(rows, self.plan.head_slice_bytes // max(row_mem, 1)))
        slices = [self._prepare_rows(out_name, r, min(rows, r + per_slice))
                  for r in range(0, rows, per_slice)]
        return norm, slices

    def load(self) -> None:
        """Read and prepare every resident weight; records the RSS just before the first read."""
        if self.loaded:
            return
        self.baseline_rss_bytes = current_rss_bytes()
        for group in self.plan.groups:
            if group.resident:
                for i in group.layers:
                    self._resident[i] = self.layer_weights(i)
        if self.plan.head_resident:
            self._head = self.head_weights()
        self.loaded = True

    # -- embeddings ----------------------------------------------------------------------------
    def _embedding_rows(self, ids: NDArray[np.int64]) -> F32:
        """Token embedding rows: float32 ``[T, hidden]``."""
        name = token_embedding_name(self.config.architecture)
        if self._head is not None and output_name(self.config) == name:
            return self.backend.rows(self._head[1][0], ids)
        raw = self.model.read_row_set(name, ids)  # [T, row_bytes]
        info = self.model.info(name)
        part = TensorInfo(f"{name}[ids]", (len(ids), info.shape[1]), info.dtype, raw.size)
        w = self.backend.prepare_weight(part, raw.reshape(-1),
                                        self._allocate(self.backend.weight_nbytes(part)))
        return self.backend.to_float(w)

    def _position_rows(self, start: int, stop: int) -> F32 | None:
        name = position_embedding_name(self.config.architecture)
        if name is None:
            return None
        return self.backend.to_float(self._prepare_rows(name, start, stop))

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, ids: Sequence[int], start: int, *, all_logits: bool = False) -> F32:
        """Run tokens ``ids`` at positions ``start..start+T-1`` (the cache must hold ``0..start-1``).

        Returns float32 ``[T, vocab]`` logits if ``all_logits`` else ``[1, vocab]`` for the last token.
        """
        self.load()
        arr = np.asarray(ids, dtype=np.int64)
        t = len(arr)
        x = self.transformer.embed(self._embedding_rows(arr), self._position_rows(start, start + t))
        for gi, group in enumerate(self.plan.groups):
            if self.on_stage is not None:
                self.on_stage("group", gi)
            x = self.transformer.run_layers(self.group_weights(group), x, self.cache, start)
        if self.on_stage is not None:
            self.on_stage("head", 0)
        norm, out = self.head_weights()
        logits = self.transformer.head(x if all_logits else x[-1:], norm, out)
        self.cache.length = start + t
        del self.cached_ids[start:]
        self.cached_ids.extend(int(i) for i in arr)
        return logits
