"""What a partition strategy sees of a model: its layers in order with their weight bytes, the
non-layer parts, and the per-token KV-cache and activation bytes.

A :class:`ModelLayout` is built from a header-only pass over real model files, or from a synthetic
description (:func:`synthetic_layout`) with the shapes of GPT-2-small or SmolLM2-135M. Byte counts are
the bytes a run holds *in memory* for each tensor (``mem_bytes``), which depends on the kernel backend:
the numpy backend holds fp32, a quantized backend holds the file's blocks. ``nbytes`` is the size in
the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

Architecture = Literal["llama", "gpt2"]

FP32_BYTES = 4

#: A block's tensors in the order its forward pass uses them, in parts that run one after another
#: with only the hidden state (and, from ``mlp_in`` to ``mlp_out``, the MLP's inner activation) carried
#: between them, so a streamed layer can be loaded part by part. Names are without the layer prefix.
BLOCK_PARTS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "llama": (
        ("attention", ("input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                       "self_attn.v_proj.weight", "self_attn.o_proj.weight")),
        ("mlp_in", ("post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight")),
        ("mlp_out", ("mlp.down_proj.weight",)),
    ),
    "gpt2": (
        ("attention", ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                       "attn.c_proj.weight", "attn.c_proj.bias")),
        ("mlp_in", ("ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias")),
        ("mlp_out", ("mlp.c_proj.weight", "mlp.c_proj.bias")),
    ),
}


def block_part(architecture: str, name: str) -> int:
    """The index in :data:`BLOCK_PARTS` of the part that uses tensor ``name`` (a full name); a tensor
    no part names goes with the first part."""
    for index, (_, suffixes) in enumerate(BLOCK_PARTS[architecture]):
        if any(name == s or name.endswith("." + s) for s in suffixes):
            return index
    return 0


@dataclass(frozen=True)
class TensorInfo:
    """One weight tensor: logical shape (row-major, ``[out, in]`` for linear weights), file dtype
    (``F32``, ``F16``, ``BF16``, ``Q8_0``, ``Q4_0``, ``Q4_1``), bytes in the file and bytes in memory."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    mem_bytes: int = -1

    def __post_init__(self) -> None:
        if self.mem_bytes < 0:
            object.__setattr__(self, "mem_bytes", self.nbytes)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class LayerInfo:
    """One transformer block and its tensors."""

    index: int
    tensors: tuple[TensorInfo, ...]

    @property
    def weight_bytes(self) -> int:
        """Bytes in memory of all this layer's weights."""
        return sum(t.mem_bytes for t in self.tensors)

    def part_bytes(self, architecture: str) -> tuple[int, ...]:
        """Bytes in memory of each of the block's :data:`BLOCK_PARTS`, in order."""
        sizes = [0] * len(BLOCK_PARTS[architecture])
        for t in self.tensors:
            sizes[block_part(architecture, t.name)] += t.mem_bytes
        return tuple(sizes)


@dataclass(frozen=True)
class ModelDims:
    """The dimensions that decide KV-cache and activation sizes."""

    architecture: Architecture
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_position: int


@dataclass(frozen=True)
class ModelLayout:
    """A model as the planner sees it.

    ``embeddings`` are looked up by row (token and position embeddings) and never need to be whole
    in memory; ``head`` holds what runs after the last layer (final norm, output projection; with
    tied embeddings the output projection is the token embedding matrix, listed here again).
    """

    name: str
    dims: ModelDims
    layers: tuple[LayerInfo, ...]
    embeddings: tuple[TensorInfo, ...]
    head: tuple[TensorInfo, ...]

    @property
    def kv_bytes_per_token(self) -> int:
        """fp32 K and V for every layer, for one token."""
        d = self.dims
        return 2 * d.n_layers * d.n_kv_heads * d.head_dim * FP32_BYTES

    @property
    def activation_bytes_per_token(self) -> int:
        """fp32 working activations of one layer for one token (residual, norms, q/k/v, MLP)."""
        d = self.dims
        qkv = (d.n_heads + 2 * d.n_kv_heads) * d.head_dim
        return (3 * d.hidden + qkv + 2 * d.intermediate) * FP32_BYTES

    @cached_property
    def layer_bytes(self) -> tuple[int, ...]:
        return tuple(layer.weight_bytes for layer in self.layers)

    @cached_property
    def part_bytes(self) -> tuple[tuple[int, ...], ...]:
        """Bytes in memory of each layer's :data:`BLOCK_PARTS`, layer by layer."""
        return tuple(layer.part_bytes(self.dims.architecture) for layer in self.layers)

    @property
    def head_bytes(self) -> int:
        return sum(t.mem_bytes for t in self.head)

    @property
    def embedding_bytes(self) -> int:
        return sum(t.mem_bytes for t in self.embeddings)

    @property
    def total_weight_bytes(self) -> int:
        """Every distinct weight in memory (a tied output projection counted once)."""
        seen: dict[str, int] = {}
        for t in (*self.embeddings, *self.head):
            seen[t.name] = t.mem_bytes
        return sum(self.layer_bytes) + sum(seen.values())

    def with_memory_bytes(self, mem_bytes: Callable[[TensorInfo], int]) -> ModelLayout:
        """The same layout with every tensor's in-memory size given by ``mem_bytes`` (a backend's
        ``weight_nbytes``)."""

        def conv(ts: tuple[TensorInfo, ...]) -> tuple[TensorInfo, ...]:
            return tuple(replace(t, mem_bytes=mem_bytes(t)) for t in ts)

        return replace(
            self,
            layers=tuple(replace(layer, tensors=conv(layer.tensors)) for layer in self.layers),
            embeddings=conv(self.embeddings),
            head=conv(self.head),
        )


def _fp32(name: str, *shape: int) -> TensorInfo:
    n = 1
    for d in shape:
        n *= d
    return TensorInfo(name=name, shape=tuple(shape), dtype="F32", nbytes=n * FP32_BYTES)


def llama_tensors(dims: ModelDims, i: int) -> tuple[TensorInfo, ...]:
    """fp32 tensor descriptions of Llama block ``i`` (names as in Hugging Face checkpoints)."""
    h, hd, f = dims.hidden, dims.head_dim, dims.intermediate
    p = f"model.layers.{i}."
    return (
        _fp32(p + "input_layernorm.weight", h),
        _fp32(p + "self_attn.q_proj.weight", dims.n_heads * hd, h),
        _fp32(p + "self_attn.k_proj.weight", dims.n_kv_heads * hd, h),
        _fp32(p + "self_attn.v_proj.weight", dims.n_kv_heads * hd, h),
        _fp32(p + "self_attn.o_proj.weight", h, dims.n_heads * hd),
        _fp32(p + "post_attention_layernorm.weight", h),
        _fp32(p + "mlp.gate_proj.weight", f, h),
        _fp32(p + "mlp.up_proj.weight", f, h),
        _fp32(p + "mlp.down_proj.weight", h, f),
    )


def gpt2_tensors(dims: ModelDims, i: int) -> tuple[TensorInfo, ...]:
    """fp32 tensor descriptions of GPT-2 block ``i`` (Conv1D names, logical ``[out, in]`` shapes)."""
    h, f = dims.hidden, dims.intermediate
    p = f"h.{i}."
    return (
        _fp32(p + "ln_1.weight", h),
        _fp32(p + "ln_1.bias", h),
        _fp32(p + "attn.c_attn.weight", 3 * h, h),
        _fp32(p + "attn.c_attn.bias", 3 * h),
        _fp32(p + "attn.c_proj.weight", h, h),
        _fp32(p + "attn.c_proj.bias", h),
        _fp32(p + "ln_2.weight", h),
        _fp32(p + "ln_2.bias", h),
        _fp32(p + "mlp.c_fc.weight", f, h),
        _fp32(p + "mlp.c_fc.bias", f),
        _fp32(p + "mlp.c_proj.weight", h, f),
        _fp32(p + "mlp.c_proj.bias", h),
    )


SMOLLM2_135M = ModelDims(
    architecture="llama",
    n_layers=30,
    hidden=576,
    n_heads=9,
    n_kv_heads=3,
    head_dim=64,
    intermediate=1536,
    vocab=49152,
    max_position=8192,
)

GPT2_SMALL = ModelDims(
    architecture="gpt2",
    n_layers=12,
    hidden=768,
    n_heads=12,
    n_kv_heads=12,
    head_dim=64,
    intermediate=3072,
    vocab=50257,
    max_position=1024,
)

SYNTHETIC_SHAPES: dict[str, ModelDims] = {"smollm2-135m": SMOLLM2_135M, "gpt2-small": GPT2_SMALL}


def layout_from_dims(name: str, dims: ModelDims, *, tied_embeddings: bool = True) -> ModelLayout:
    """An fp32 layout for a model of the given dimensions (Llama or GPT-2 tensor sets)."""
    h, v = dims.hidden, dims.vocab
    if dims.architecture == "llama":
        layers = tuple(LayerInfo(i, llama_tensors(dims, i)) for i in range(dims.n_layers))
        embed = _fp32("model.embed_tokens.weight", v, h)
        embeddings: tuple[TensorInfo, ...] = (embed,)
        out = embed if tied_embeddings else _fp32("lm_head.weight", v, h)
        head: tuple[TensorInfo, ...] = (_fp32("model.norm.weight", h), out)
    else:
        layers = tuple(LayerInfo(i, gpt2_tensors(dims, i)) for i in range(dims.n_layers))
        wte = _fp32("wte.weight", v, h)
        embeddings = (wte, _fp32("wpe.weight", dims.max_position, h))
        head = (_fp32("ln_f.weight", h), _fp32("ln_f.bias", h), wte)
    return ModelLayout(name=name, dims=dims, layers=layers, embeddings=embeddings, head=head)


def synthetic_layout(shape: str) -> ModelLayout:
    """The fp32 layout of a synthetic model of a known shape: ``smollm2-135m`` or ``gpt2-small``."""
    from edgert_core.errors import UnknownNameError

    if shape not in SYNTHETIC_SHAPES:
        known = ", ".join(sorted(SYNTHETIC_SHAPES))
        raise UnknownNameError(f"Unknown synthetic model shape {shape!r}; known shapes: {known}.")
    return layout_from_dims(f"synthetic-{shape}", SYNTHETIC_SHAPES[shape])
