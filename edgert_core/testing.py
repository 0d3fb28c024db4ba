"""Helpers for testing partition strategies and backends (ours and third parties'): layouts whose
layers weigh exactly what a test says, a small planning context, and the real SmolLM2 model file.
Import from tests only (:func:`smollm2_for_tests` imports pytest)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

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


@functools.cache
def smollm2_for_tests() -> Path:
    """The SmolLM2-135M-Instruct GGUF for a test: ``$EDGERT_SMOLLM2_GGUF`` (a copy the tests only
    read; this repo's conftest.py points it at one the user already pulled), else fetched once with
    ``edge-rt pull``'s logic into ``$EDGERT_CACHE`` (a temporary folder in this repo's test runs).
    When it cannot be had, the test is skipped with the reason, or fails where
    ``EDGERT_REQUIRE_SMOLLM2=1`` (as in .ci/run)."""
    import pytest

    from edgert_core.errors import ModelError
    from edgert_core.pull import pull

    env = os.environ.get("EDGERT_SMOLLM2_GGUF")
    if env:
        return Path(env)
    try:
        return pull("smollm2")
    except ModelError as exc:
        if os.environ.get("EDGERT_REQUIRE_SMOLLM2") == "1":
            pytest.fail(f"SmolLM2 is required (EDGERT_REQUIRE_SMOLLM2=1) but could not be fetched: {exc}")
        pytest.skip(f"SmolLM2 could not be fetched into the test cache: {exc}")
