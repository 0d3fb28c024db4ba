"""Helpers for testing partition strategies (ours and third parties'): layouts whose layers weigh
exactly what a test says, and a small planning context. Import from tests only."""

from __future__ import annotations

from collections.abc import Sequence

from edgert_core.layout import LayerInfo, ModelDims, ModelLayout, TensorInfo
from edgert_core.plan import PlanningContext


def handmade_layout(layer_bytes: Sequence[int], head_bytes: int, name: str = "handmade") -> ModelLayout:
    """A tiny Llama-shaped model whose layers and head weigh exactly the given bytes (one tensor
    each); its KV-cache and activation bytes are small and fixed."""
    dims = ModelDims(
        "llama",
        len(layer_bytes),
        hidden=8,
        n_heads=2,
        n_kv_heads=1,
        head_dim=4,
        intermediate=16,
        vocab=32,
        max_position=64,
    )
    layers = tuple(
        LayerInfo(i, (TensorInfo(f"layers.{i}.w", (n,), "F32", n),)) for i, n in enumerate(layer_bytes)
    )
    head = (TensorInfo("head.w", (head_bytes,), "F32", head_bytes),) if head_bytes else ()
    return ModelLayout(name, dims, layers, (), head)


def small_context(budget: int | None) -> PlanningContext:
    """A planning context of 8 tokens (prefill chunks of 4), so fixed bytes stay tiny."""
    return PlanningContext(budget, max_context=8, prefill_chunk=4)
