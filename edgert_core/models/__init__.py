"""Model math: the Llama family (GQA, RoPE, RMSNorm, SwiGLU; Qwen2/Qwen3/Phi-3 variants) and GPT-2
(LayerNorm, GELU tanh, learned positions), described by the tables of :mod:`edgert_core.models.arch`.

Pure computation over weights a caller hands in, through a kernel backend's ops; no I/O. The caller
walks layer groups: :meth:`Transformer.embed`, then :meth:`Transformer.run_layers` once per group with
that group's prepared weights, then :meth:`Transformer.final_norm` and :meth:`Transformer.project`.

Names are imported lazily so that :mod:`edgert_core.layout` can read the architecture tables without
loading the math.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgert_core.models.config import ModelConfig
    from edgert_core.models.kv_cache import KVCache
    from edgert_core.models.transformer import LayerWeights, Transformer

__all__ = ["KVCache", "LayerWeights", "ModelConfig", "Transformer"]

_HOMES = {
    "ModelConfig": "edgert_core.models.config",
    "KVCache": "edgert_core.models.kv_cache",
    "LayerWeights": "edgert_core.models.transformer",
    "Transformer": "edgert_core.models.transformer",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
