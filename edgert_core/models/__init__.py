"""Model math: Llama (GQA, RoPE, RMSNorm, SwiGLU) and GPT-2 (LayerNorm, GELU tanh, learned positions).

Pure computation over weights a caller hands in, through a kernel backend's ops; no I/O. The caller
walks layer groups: :meth:`Transformer.embed`, then :meth:`Transformer.run_layers` once per group with
that group's prepared weights, then :meth:`Transformer.head` with the output projection as row slices.
"""

from edgert_core.models.config import ModelConfig
from edgert_core.models.kv_cache import KVCache
from edgert_core.models.transformer import LayerWeights, Transformer

__all__ = ["KVCache", "LayerWeights", "ModelConfig", "Transformer"]
