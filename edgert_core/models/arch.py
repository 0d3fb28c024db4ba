"""One table per architecture: every tensor's names, shape rule, block part and fusion group.

Each architecture is an :class:`Arch`: a list of :class:`TensorKind` rows plus the few facts that are
not about tensors (norm kind, activation, RoPE layout, the names the two file formats use). Everything
else is derived from these rows: the canonical tensor names and shapes a model must have
(:func:`expected_shapes`), the block parts a streamed layer is loaded in, the weights that may be
stacked into one matrix, the GGUF <-> canonical name mapping and the Hugging Face names. Adding an
architecture is a new row here plus only the math that is truly new.

Canonical names are the Hugging Face checkpoint names (without GPT-2's ``transformer.`` prefix); a
block tensor's name is its block prefix (``model.layers.{bid}.``) followed by its row's ``hf`` stem
and ``.weight`` / ``.bias``. GGUF names follow llama.cpp (``gguf-py/gguf/constants.py``): the
``blk.{bid}.`` prefix and the row's ``gguf`` stem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # layout derives its block parts from this table; no import cycle at run time
    from edgert_core.layout import ModelDims

#: The sizes a shape rule may name, from a model's dimensions.
SIZES: dict[str, Callable[[ModelDims], int]] = {
    "hidden": lambda d: d.hidden,
    "vocab": lambda d: d.vocab,
    "positions": lambda d: d.max_position,
    "head_dim": lambda d: d.head_dim,
    "rope_pairs": lambda d: d.head_dim // 2,
    "q": lambda d: d.n_heads * d.head_dim,
    "kv": lambda d: d.n_kv_heads * d.head_dim,
    "qkv": lambda d: (d.n_heads + 2 * d.n_kv_heads) * d.head_dim,
    "inter": lambda d: d.intermediate,
    "gate_up": lambda d: 2 * d.intermediate,
}

#: A block's parts in execution order: between them only the hidden state (and, from ``mlp_in`` to
#: ``mlp_out``, the MLP's inner activation) is carried, so a streamed layer can be loaded part by part.
PARTS = ("attention", "mlp_in", "mlp_out")

Part = Literal["attention", "mlp_in", "mlp_out"]


@dataclass(frozen=True)
class TensorKind:
    """One module's weight (and bias) in every format.

    ``kind``: what the math calls it (llama.cpp's tensor kind, ``attn_q``); ``hf`` and ``gguf``: the
    name stems in each format (block tensors without their block prefix); ``shape``: the weight's
    logical shape as :data:`SIZES` names (``[out, in]`` for a linear weight); ``part``: the block
    part that uses it (``None``: not a block tensor); ``fusion``: the group of weights that may be
    stacked by rows into one matrix (members in table order); ``bias``: a bias ``[shape[0]]`` goes
    with the weight; ``hf_transposed``: Hugging Face stores the weight ``[in, out]`` (GPT-2's Conv1D);
    ``optional``: present only in some models (the output projection: when not tied)."""

    kind: str
    hf: str
    gguf: str
    shape: tuple[str, ...]
    part: Part | None = None
    fusion: str | None = None
    bias: bool = False
    hf_transposed: bool = False
    optional: bool = False

    def suffixes(self) -> tuple[str, ...]:
        return (".weight", ".bias") if self.bias else (".weight",)


@dataclass(frozen=True)
class Arch:
    """An architecture: its tensor rows and the facts of its math and its file formats.

    ``name``: edge-rt's name (``ModelDims.architecture``); ``hf_model_type`` / ``hf_class``: the
    ``model_type`` and class of its Hugging Face ``config.json``; ``gguf_arch``: the GGUF
    ``general.architecture`` (``None``: edge-rt reads no GGUF of it); ``hf_block`` / ``hf_strip``: the
    canonical block prefix and the prefix Hugging Face files add to every name; ``norm``: ``rms`` or
    ``layer`` (with bias); ``activation``: the MLP's; ``rope``: ``half`` (Hugging Face's
    ``rotate_half`` pairs ``(i, i + D/2)``) or ``none`` (learned positions);
    ``gguf_qk_permuted``: llama.cpp's converter permutes the Q/K rows of each head into adjacent
    pairs, so GGUF files rotate interleaved pairs (Qwen and Phi-3 files keep Hugging Face's order).
    A RoPE *scaling* (Llama 3's) is a fact of one model, not of its architecture: it lives in the
    model's config (:class:`~edgert_core.models.config.ModelConfig`)."""

    name: str
    hf_model_type: str
    hf_class: str
    gguf_arch: str | None
    hf_block: str
    tensors: tuple[TensorKind, ...]
    norm: Literal["rms", "layer"]
    activation: Literal["silu", "gelu_tanh"]
    rope: Literal["half", "none"]
    gguf_qk_permuted: bool = False
    hf_strip: str = ""

    # -- derived facts ---------------------------------------------------------------------------
    @property
    def block(self) -> tuple[TensorKind, ...]:
        return tuple(t for t in self.tensors if t.part is not None)

    @property
    def globals(self) -> tuple[TensorKind, ...]:
        return tuple(t for t in self.tensors if t.part is None)

    def kind(self, kind: str) -> TensorKind:
        return next(t for t in self.tensors if t.kind == kind)

    def has(self, kind: str) -> bool:
        return any(t.kind == kind for t in self.tensors)

    def layer_prefix(self, index: int) -> str:
        return self.hf_block.format(bid=index)

    def tensor_name(self, kind: str, suffix: str = ".weight") -> str:
        """A tensor's name without block prefix: ``tensor_name("attn_q")`` -> ``self_attn.q_proj.weight``."""
        return self.kind(kind).hf + suffix

    def block_parts(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Each block part's name and its tensors' names (without block prefix), in forward order."""
        return tuple(
            (part, tuple(t.hf + s for t in self.block if t.part == part for s in t.suffixes()))
            for part in PARTS
        )

    def fusions(self) -> dict[str, tuple[str, ...]]:
        """Fusion group -> the names (without block prefix) of the weights stacked, in row order."""
        out: dict[str, list[str]] = {}
        for t in self.block:
            if t.fusion is not None:
                out.setdefault(t.fusion, []).append(t.hf + ".weight")
        return {k: tuple(v) for k, v in out.items()}

    def gguf_names(self) -> tuple[dict[str, str], dict[str, str]]:
        """GGUF name -> canonical name: ``(global names, block names without prefixes)``."""
        glob = {t.gguf + s: t.hf + s for t in self.globals for s in t.suffixes()}
        block = {t.gguf + s: t.hf + s for t in self.block for s in t.suffixes()}
        return glob, block

    def canonical_from_gguf(self, name: str) -> str | None:
        """GGUF tensor name -> canonical name (``None``: not a tensor of this architecture)."""
        glob, block = self.gguf_names()
        if name in glob:
            return glob[name]
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in block:
            return self.layer_prefix(int(parts[1])) + block[parts[2]]
        return None

    def gguf_from_canonical(self, name: str) -> str | None:
        """Canonical name -> GGUF tensor name (``None``: not a tensor of this architecture)."""
        glob, block = self.gguf_names()
        for g, c in glob.items():
            if name == c:
                return g
        head, _, rest = self.hf_block.partition("{bid}")
        if name.startswith(head):
            index, _, stem = name[len(head):].partition(rest)
            for g, c in block.items():
                if index.isdigit() and stem == c:
                    return f"blk.{index}.{g}"
        return None

    def hf_transposed(self, name: str) -> bool:
        """Whether the Hugging Face file stores canonical tensor ``name`` as ``[in, out]``."""
        return any(t.hf_transposed and name.endswith("." + t.hf + ".weight") for t in self.block)


def _shape(rule: tuple[str, ...], dims: ModelDims) -> tuple[int, ...]:
    return tuple(SIZES[s](dims) for s in rule)


def _t(kind: str, hf: str, gguf: str, *shape: str, part: Part | None = None,
       fusion: str | None = None, bias: bool = False, hf_transposed: bool = False,
       optional: bool = False) -> TensorKind:
    return TensorKind(kind, hf, gguf, shape, part, fusion, bias, hf_transposed, optional)


# The Llama family's rows (Hugging Face names shared by Llama, Qwen2, Qwen3 and Phi-3).
TOKEN_EMBD = _t("token_embd", "model.embed_tokens", "token_embd", "vocab", "hidden")
ATTN_NORM = _t("attn_norm", "input_layernorm", "attn_norm", "hidden", part="attention")
ATTN_Q = _t("attn_q", "self_attn.q_proj", "attn_q", "q", "hidden", part="attention", fusion="qkv")
ATTN_K = _t("attn_k", "self_attn.k_proj", "attn_k", "kv", "hidden", part="attention", fusion="qkv")
ATTN_V = _t("attn_v", "self_attn.v_proj", "attn_v", "kv", "hidden", part="attention", fusion="qkv")
ATTN_QKV = _t("attn_qkv", "self_attn.qkv_proj", "attn_qkv", "qkv", "hidden", part="attention")
ATTN_Q_NORM = _t("attn_q_norm", "self_attn.q_norm", "attn_q_norm", "head_dim", part="attention")
ATTN_K_NORM = _t("attn_k_norm", "self_attn.k_norm", "attn_k_norm", "head_dim", part="attention")
ATTN_OUT = _t("attn_output", "self_attn.o_proj", "attn_output", "hidden", "q", part="attention")
FFN_NORM = _t("ffn_norm", "post_attention_layernorm", "ffn_norm", "hidden", part="mlp_in")
FFN_GATE = _t("ffn_gate", "mlp.gate_proj", "ffn_gate", "inter", "hidden", part="mlp_in",
              fusion="gate_up")
FFN_UP = _t("ffn_up", "mlp.up_proj", "ffn_up", "inter", "hidden", part="mlp_in", fusion="gate_up")
#: Phi-3's gate and up products in one matrix (gate rows first); llama.cpp keeps it whole as ffn_up.
FFN_GATE_UP = _t("ffn_gate_up", "mlp.gate_up_proj", "ffn_up", "gate_up", "hidden", part="mlp_in")
FFN_DOWN = _t("ffn_down", "mlp.down_proj", "ffn_down", "hidden", "inter", part="mlp_out")
OUTPUT_NORM = _t("output_norm", "model.norm", "output_norm", "hidden")
OUTPUT = _t("output", "lm_head", "output", "vocab", "hidden", optional=True)


def _with_bias(row: TensorKind) -> TensorKind:
    return replace(row, bias=True)


LLAMA = Arch(
    name="llama", hf_model_type="llama", hf_class="LlamaForCausalLM", gguf_arch="llama",
    hf_block="model.layers.{bid}.", norm="rms", activation="silu", rope="half",
    gguf_qk_permuted=True,
    tensors=(
        TOKEN_EMBD,
        ATTN_NORM, ATTN_Q, ATTN_K, ATTN_V, ATTN_OUT,
        FFN_NORM, FFN_GATE, FFN_UP,
        FFN_DOWN,
        OUTPUT_NORM, OUTPUT,
    ),
)

QWEN2 = Arch(
    name="qwen2", hf_model_type="qwen2", hf_class="Qwen2ForCausalLM", gguf_arch="qwen2",
    hf_block="model.layers.{bid}.", norm="rms", activation="silu", rope="half",
    tensors=(
        TOKEN_EMBD,
        ATTN_NORM, _with_bias(ATTN_Q), _with_bias(ATTN_K), _with_bias(ATTN_V), ATTN_OUT,
        FFN_NORM, FFN_GATE, FFN_UP,
        FFN_DOWN,
        OUTPUT_NORM, OUTPUT,
    ),
)

QWEN3 = Arch(
    name="qwen3", hf_model_type="qwen3", hf_class="Qwen3ForCausalLM", gguf_arch="qwen3",
    hf_block="model.layers.{bid}.", norm="rms", activation="silu", rope="half",
    tensors=(
        TOKEN_EMBD,
        ATTN_NORM, ATTN_Q, ATTN_K, ATTN_V, ATTN_Q_NORM, ATTN_K_NORM, ATTN_OUT,
        FFN_NORM, FFN_GATE, FFN_UP,
        FFN_DOWN,
        OUTPUT_NORM, OUTPUT,
    ),
)

PHI3 = Arch(
    name="phi3", hf_model_type="phi3", hf_class="Phi3ForCausalLM", gguf_arch="phi3",
    hf_block="model.layers.{bid}.", norm="rms", activation="silu", rope="half",
    tensors=(
        TOKEN_EMBD,
        ATTN_NORM, ATTN_QKV, ATTN_OUT,
        FFN_NORM, FFN_GATE_UP,
        FFN_DOWN,
        OUTPUT_NORM, OUTPUT,
    ),
)

GPT2 = Arch(
    name="gpt2", hf_model_type="gpt2", hf_class="GPT2LMHeadModel", gguf_arch=None,
    hf_block="h.{bid}.", hf_strip="transformer.",
    tensors=(
        _t("token_embd", "wte", "token_embd", "vocab", "hidden"),
        _t("position_embd", "wpe", "position_embd", "positions", "hidden"),
        _t("attn_norm", "ln_1", "attn_norm", "hidden", part="attention", bias=True),
        _t("attn_qkv", "attn.c_attn", "attn_qkv", "qkv", "hidden", part="attention", bias=True,
           hf_transposed=True),
        _t("attn_output", "attn.c_proj", "attn_output", "hidden", "q", part="attention",
           bias=True, hf_transposed=True),
        _t("ffn_norm", "ln_2", "ffn_norm", "hidden", part="mlp_in", bias=True),
        _t("ffn_up", "mlp.c_fc", "ffn_up", "inter", "hidden", part="mlp_in", bias=True,
           hf_transposed=True),
        _t("ffn_down", "mlp.c_proj", "ffn_down", "hidden", "inter", part="mlp_out", bias=True,
           hf_transposed=True),
        _t("output_norm", "ln_f", "output_norm", "hidden", bias=True),
        _t("output", "lm_head", "output", "vocab", "hidden", optional=True),
    ),
    norm="layer", activation="gelu_tanh", rope="none",
)

#: Every architecture edge-rt runs, by name.
ARCHITECTURES: dict[str, Arch] = {a.name: a for a in (LLAMA, QWEN2, QWEN3, PHI3, GPT2)}


def arch_of(name: str) -> Arch:
    return ARCHITECTURES[name]


def by_hf_model_type() -> Mapping[str, Arch]:
    return {a.hf_model_type: a for a in ARCHITECTURES.values()}


def by_gguf_arch() -> Mapping[str, Arch]:
    return {a.gguf_arch: a for a in ARCHITECTURES.values() if a.gguf_arch is not None}


def supported_line() -> str:
    """The supported architectures in both formats, for error messages."""
    hf = ", ".join(a.hf_class for a in ARCHITECTURES.values())
    gg = ", ".join(a for a in by_gguf_arch())
    return f"Hugging Face {hf}; GGUF {gg}"


def expected_shapes(arch: Arch, dims: ModelDims, *, tied: bool) -> dict[str, tuple[int, ...]]:
    """Canonical name -> logical shape of every tensor a model of ``dims`` must have, in table
    order (embeddings, then block by block, then the head); the output projection only when the
    head is not ``tied`` to the token embedding."""
    out: dict[str, tuple[int, ...]] = {}

    def add(prefix: str, t: TensorKind) -> None:
        shape = _shape(t.shape, dims)
        out[prefix + t.hf + ".weight"] = shape
        if t.bias:
            out[prefix + t.hf + ".bias"] = shape[:1]

    def wanted(t: TensorKind) -> bool:
        return not tied if t.kind == "output" else True

    heads = ("output_norm", "output")
    for t in arch.globals:
        if t.kind not in heads and wanted(t):
            add("", t)
    for i in range(dims.n_layers):
        for t in arch.block:
            if wanted(t):
                add(arch.layer_prefix(i), t)
    for t in arch.globals:
        if t.kind in heads and wanted(t):
            add("", t)
    return out
