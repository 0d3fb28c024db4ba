"""A model's hyperparameters and the canonical names of its tensors.

Loaders translate every file format to these names (Hugging Face checkpoint names without the
``transformer.`` prefix of GPT-2), so the math in :mod:`edgert_core.models` never sees a file format.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgert_core.layout import ModelDims
from edgert_core.models.arch import arch_of
from edgert_core.models.rope import Llama3Scaling

#: Upper bounds of the dimensions a model file may declare (far above any model edge-rt can run on a
#: small device; they keep a corrupt or hostile header from sizing anything absurd). Loaders check
#: every field against these and name the field when one is out of range.
DIM_LIMITS: dict[str, int] = {
    "n_layers": 4096,
    "hidden": 1 << 20,
    "n_heads": 1 << 14,
    "head_dim": 1 << 14,
    "intermediate": 1 << 22,
    "vocab": 1 << 24,
    "max_position": 1 << 26,
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything the forward pass needs besides weights.

    ``rope_interleaved``: RoPE rotates adjacent pairs ``(2i, 2i+1)``; true for GGUF files, whose
    converter permutes the Q/K rows of each head from Hugging Face's half-split layout into that one.
    Attention scores are identical either way, so the file's rows are used as they are.
    ``rope_llama3``: Llama 3's RoPE scaling as a Hugging Face config gives it;
    ``rope_freq_factors``: the same as llama.cpp's converter stores it (the ``rope_freqs`` tensor,
    float32 ``[head_dim/2]``, each frequency divided by its factor).
    """

    dims: ModelDims
    norm_eps: float
    rope_theta: float = 10000.0
    rope_interleaved: bool = False
    rope_llama3: Llama3Scaling | None = None
    rope_freq_factors: tuple[float, ...] | None = None
    tied_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def architecture(self) -> str:
        return self.dims.architecture


def layer_prefix(architecture: str, index: int) -> str:
    """Canonical name prefix of block ``index``."""
    return arch_of(architecture).layer_prefix(index)


def token_embedding_name(architecture: str) -> str:
    return arch_of(architecture).tensor_name("token_embd")


def position_embedding_name(architecture: str) -> str | None:
    arch = arch_of(architecture)
    return arch.tensor_name("position_embd") if arch.has("position_embd") else None


def output_name(config: ModelConfig) -> str:
    """The output projection ``[vocab, hidden]``: the token embedding when tied."""
    return arch_of(config.architecture).tensor_name("token_embd" if config.tied_embeddings else "output")


def final_norm_names(architecture: str) -> tuple[str, ...]:
    norm = arch_of(architecture).kind("output_norm")
    return tuple(norm.hf + s for s in norm.suffixes())
