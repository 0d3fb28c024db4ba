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

from edgert_core.models.arch import ARCHITECTURES, arch_of, expected_shapes

#: An architecture's name, a key of :data:`edgert_core.models.arch.ARCHITECTURES`.
Architecture = str

FP32_BYTES = 4

#: A block's tensors in the order its forward pass uses them, in parts that run one after another
#: with only the hidden state (and, from ``mlp_in`` to ``mlp_out``, the MLP's inner activation) carried
#: between them, so a streamed layer can be loaded part by part. Names are without the layer prefix.
#: Derived from the architecture tables.
BLOCK_PARTS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    name: arch.block_parts() for name, arch in ARCHITECTURES.items()
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


def block_tensors(dims: ModelDims, i: int) -> tuple[TensorInfo, ...]:
    """fp32 tensor descriptions of block ``i`` (canonical names, from the architecture's table)."""
    arch = arch_of(dims.architecture)
    prefix = arch.layer_prefix(i)
    shapes = expected_shapes(arch, dims, tied=True)
    return tuple(_fp32(n, *s) for n, s in shapes.items() if n.startswith(prefix))


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
    """An fp32 layout for a model of the given dimensions (tensors from its architecture's table)."""
    arch = arch_of(dims.architecture)
    shapes = expected_shapes(arch, dims, tied=tied_embeddings)
    infos = {n: _fp32(n, *s) for n, s in shapes.items()}
    layers = tuple(
        LayerInfo(i, tuple(t for n, t in infos.items() if n.startswith(arch.layer_prefix(i))))
        for i in range(dims.n_layers)
    )
    emb_kinds = [k for k in ("token_embd", "position_embd") if arch.has(k)]
    embeddings = tuple(infos[arch.tensor_name(k)] for k in emb_kinds)
    out = "token_embd" if tied_embeddings else "output"
    norm = arch.kind("output_norm")
    head = (*(infos[norm.hf + s] for s in norm.suffixes()), infos[arch.tensor_name(out)])
    return ModelLayout(name=name, dims=dims, layers=layers, embeddings=embeddings, head=head)


def synthetic_layout(shape: str) -> ModelLayout:
    """The fp32 layout of a synthetic model of a known shape: ``smollm2-135m`` or ``gpt2-small``."""
    from edgert_core.errors import UnknownNameError

    if shape not in SYNTHETIC_SHAPES:
        known = ", ".join(sorted(SYNTHETIC_SHAPES))
        raise UnknownNameError(f"Unknown synthetic model shape {shape!r}; known shapes: {known}.")
    return layout_from_dims(f"synthetic-{shape}", SYNTHETIC_SHAPES[shape])
