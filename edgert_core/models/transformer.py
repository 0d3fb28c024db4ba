"""The forward pass, in the three pieces a caller walks: embed, layer groups, head.

::

    x = model.embed(token_rows, position_rows)          # [T, hidden]
    for group in plan.groups:
        x = model.run_layers(weights_of(group), x, cache, start)
        # or, part by part: state = model.run_parts([(weights, part), ...], state, cache, start)
    normed = model.final_norm(x[-1:], final_norm)       # [1, hidden]
    for output_slice, columns in slices:                # row slices of the output projection
        model.project(normed, output_slice, logits[:, columns])

The weights of one call are whatever the caller prepared for it, so a caller may load a group's
weights just before ``run_layers`` and free them right after, and may hand the output projection over
as row slices (each a :class:`Weight` of shape ``[rows, hidden]``) that fill the logits' columns.
Which tensors a block has (biases, per-head norms, fused matrices) comes from the architecture's
table in :mod:`edgert_core.models.arch`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from edgert_core.backends.base import KernelBackend, LlamaLayer, Weight
from edgert_core.layout import BLOCK_PARTS
from edgert_core.models.arch import ARCHITECTURES, arch_of
from edgert_core.models.config import ModelConfig, final_norm_names, layer_prefix
from edgert_core.models.kv_cache import KVCache
from edgert_core.models.rope import rope_tables

F32 = NDArray[np.float32]

#: Weights that may be stacked by rows into one matrix, so one ``linear`` call replaces several:
#: architecture -> fused name -> the block's tensor names, in row order (from the tables).
FUSIONS: dict[str, dict[str, tuple[str, ...]]] = {
    name: arch.fusions() for name, arch in ARCHITECTURES.items()
}


@dataclass(frozen=True)
class LayerWeights:
    """The prepared weights of block ``index``, keyed by name without the layer prefix
    (``self_attn.q_proj.weight``, ``attn.c_attn.bias`` ...). ``fused`` optionally holds stacked
    weights named as in :data:`FUSIONS` (views of the same memory, used when present). ``derived``
    keeps what a block works out once from these weights (a backend's prepared form of the block
    for its one-call path), so it lives and goes with them."""

    index: int
    tensors: Mapping[str, Weight]
    fused: Mapping[str, Weight] = field(default_factory=dict)
    derived: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    def __getitem__(self, key: str) -> Weight:
        return self.tensors[key]

    @classmethod
    def from_named(
        cls,
        architecture: str,
        index: int,
        named: Mapping[str, Weight],
        fuse: Callable[[Sequence[Weight]], Weight | None] | None = None,
    ) -> LayerWeights:
        """Build from canonical full names (``model.layers.3.mlp.up_proj.weight``); ``fuse`` (a
        backend's ``fuse_rows``) stacks the weights of :data:`FUSIONS` when it can."""
        prefix = layer_prefix(architecture, index)
        tensors = {k.removeprefix(prefix): w for k, w in named.items()}
        fused: dict[str, Weight] = {}
        if fuse is not None:
            for fused_name, parts in FUSIONS[architecture].items():
                if all(p in tensors for p in parts):
                    stacked = fuse([tensors[p] for p in parts])
                    if stacked is not None:
                        fused[fused_name] = stacked
        return cls(index, tensors, fused)


@dataclass(frozen=True)
class BlockState:
    """What is carried from one block part to the next: the hidden state float32 ``[T, hidden]``
    and, between ``mlp_in`` and ``mlp_out``, the MLP's inner activation float32 ``[T, inter]``."""

    hidden: F32
    inner: F32 | None = None


class LlamaBlock:
    """One block of the Llama family: RMSNorm -> GQA attention with RoPE -> residual; RMSNorm ->
    SwiGLU -> residual. The table's rows decide the variants: biases on q/k/v (Qwen2), RMSNorm on
    each head of q and k (Qwen3), q/k/v and gate/up stored fused (Phi-3)."""

    def __init__(self, backend: KernelBackend, config: ModelConfig, cos: F32, sin: F32) -> None:
        self.be = backend
        self.config = config
        self.cos = cos  # [C, D/2]
        self.sin = sin
        self.arch = arch_of(config.architecture)
        self.n = {t.kind: t.hf for t in self.arch.block}  # kind -> name stem
        self.q_bias = "attn_q" in self.n and self.arch.kind("attn_q").bias  # Qwen2
        self.head_norms = "attn_q_norm" in self.n  # Qwen3
        #: no biases on q/k/v and no head norms: the attention part the one-call paths compute
        self.plain = not (self.q_bias or self.head_norms)

    def _w(self, w: LayerWeights, kind: str, suffix: str = ".weight") -> Weight:
        return w[self.n[kind] + suffix]

    def _qkv(self, w: LayerWeights, h: F32) -> tuple[F32, F32, F32]:
        """The q, k, v projections of the normed ``h`` float32 ``[T, hidden]``: float32 ``[T, nq]``,
        ``[T, nkv]``, ``[T, nkv]`` (biases added when the architecture has them)."""
        be, d = self.be, self.config.dims
        nq, nkv = d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim
        stacked = self._stacked(w, "qkv", "attn_qkv")
        if stacked is not None:
            qkv = be.linear(h, stacked)  # [T, nq + 2*nkv]
            q_, k_, v_ = qkv[:, :nq], qkv[:, nq : nq + nkv], qkv[:, nq + nkv :]
        else:
            q_ = be.linear(h, self._w(w, "attn_q"))  # [T, nq]
            k_ = be.linear(h, self._w(w, "attn_k"))  # [T, nkv]
            v_ = be.linear(h, self._w(w, "attn_v"))
        if self.q_bias:
            q_ += be.to_float(self._w(w, "attn_q", ".bias"))
            k_ += be.to_float(self._w(w, "attn_k", ".bias"))
            v_ += be.to_float(self._w(w, "attn_v", ".bias"))
        return q_, k_, v_

    def _head_norm(self, w: LayerWeights, kind: str, x: F32) -> F32:
        """RMSNorm over each head: ``x`` float32 ``[T, H, D]`` -> float32 ``[T, H, D]``."""
        t, heads, dim = x.shape
        flat = np.ascontiguousarray(x).reshape(t * heads, dim)  # [T*H, D]
        return self.be.rmsnorm(flat, self._w(w, kind), self.config.norm_eps).reshape(t, heads, dim)

    def attention(self, w: LayerWeights, x: F32, cache: KVCache, start: int) -> F32:
        """RMSNorm -> GQA attention with RoPE -> residual: ``x`` float32 ``[T, hidden]`` at positions
        ``start..start+T-1`` -> float32 ``[T, hidden]`` (a new array)."""
        be, d, eps = self.be, self.config.dims, self.config.norm_eps
        t = x.shape[0]
        fused = self._attention_block(w, x, cache, start)
        if fused is not None:
            return fused
        h = be.rmsnorm(x, self._w(w, "attn_norm"), eps)  # [T, hidden]
        q_, k_, v_ = self._qkv(w, h)
        q = q_.reshape(t, d.n_heads, d.head_dim)
        k = k_.reshape(t, d.n_kv_heads, d.head_dim)
        v = v_.reshape(t, d.n_kv_heads, d.head_dim)
        if self.head_norms:
            q = self._head_norm(w, "attn_q_norm", q)
            k = self._head_norm(w, "attn_k_norm", k)
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]  # [T, D/2]
        q = be.rope(q, cos, sin, interleaved=self.config.rope_interleaved)
        k = be.rope(k, cos, sin, interleaved=self.config.rope_interleaved)
        keys, values = cache.write(w.index, start, k, v)  # [Hkv, start+T, D]
        a = be.attention(q, keys, values, start)  # [T, H*D]
        return be.linear_add(a, self._w(w, "attn_output"), x)  # [T, hidden], a new array

    def _stacked(self, w: LayerWeights, fused: str, kind: str) -> Weight | None:
        """The stacked weight of two or three projections: fused by the backend from adjacent
        tensors (``w.fused``), stored stacked in the file (``kind``), or ``None``."""
        stacked = w.fused.get(fused)
        if stacked is None and kind in self.n:
            stacked = self._w(w, kind)
        return stacked

    def _attention_block(self, w: LayerWeights, x: F32, cache: KVCache, start: int) -> F32 | None:
        """The backend's one-call attention part, where the block has no biases or head norms,
        q/k/v are stacked and the cache holds fp32 (else ``None``: the ops one by one)."""
        qkv = self._stacked(w, "qkv", "attn_qkv") if self.plain else None
        if qkv is None:
            return None
        arrays = cache.fp32_layer(w.index)
        if arrays is None:
            return None
        t = x.shape[0]
        return self.be.attention_block(
            x, self._w(w, "attn_norm"), self.config.norm_eps, qkv, self._w(w, "attn_output"),
            self.cos[start : start + t], self.sin[start : start + t], arrays[0], arrays[1], start,
            interleaved=self.config.rope_interleaved,
        )

    def _prepared(self, w: LayerWeights) -> object | None:
        """The backend's prepared form of block ``w`` for :meth:`KernelBackend.llama_blocks`, made
        on first use and kept in ``w.derived`` (with the backend it is for); ``None`` where the
        block has biases or head norms, q/k/v or gate/up are not stacked, or the backend has no
        such path."""
        kept = w.derived.get("llama_block")
        if isinstance(kept, tuple) and kept[0] is self.be:
            earlier: object | None = kept[1]
            return earlier
        prepared: object | None = None
        qkv = self._stacked(w, "qkv", "attn_qkv")
        gate_up = self._stacked(w, "gate_up", "ffn_gate_up")
        if qkv is not None and gate_up is not None and self.plain:
            prepared = self.be.prepare_llama_block(LlamaLayer(
                self._w(w, "attn_norm"), qkv, self._w(w, "attn_output"),
                self._w(w, "ffn_norm"), gate_up, self._w(w, "ffn_down")))
        w.derived["llama_block"] = (self.be, prepared)
        return prepared

    def run_blocks(self, layers: Sequence[LayerWeights], x: F32, cache: KVCache,
                   start: int) -> F32 | None:
        """Consecutive blocks in the backend's one call (:meth:`KernelBackend.llama_blocks`): the
        same result as calling the block on each in turn, or ``None`` where some block or the
        cache (not fp32) does not allow it, or the backend has no such path."""
        args: list[tuple[object, F32, F32]] = []
        for w in layers:
            prepared = self._prepared(w)
            arrays = cache.fp32_layer(w.index) if prepared is not None else None
            if arrays is None:
                return None
            args.append((prepared, arrays[0], arrays[1]))
        t = x.shape[0]
        return self.be.llama_blocks(x, self.config.norm_eps, args, self.cos[start : start + t],
                                    self.sin[start : start + t], start,
                                    interleaved=self.config.rope_interleaved)

    def mlp_in(self, w: LayerWeights, x: F32) -> F32:
        """RMSNorm -> SwiGLU's gate and up products: ``x`` float32 ``[T, hidden]`` -> the inner
        activation float32 ``[T, intermediate]``."""
        be, eps = self.be, self.config.norm_eps
        h = be.rmsnorm(x, self._w(w, "ffn_norm"), eps)
        stacked = self._stacked(w, "gate_up", "ffn_gate_up")
        if stacked is not None:
            gate = be.swiglu(be.linear(h, stacked))  # [T, 2*inter] (gate, then up) -> [T, inter]
        else:
            gate = be.silu(be.linear(h, self._w(w, "ffn_gate")))  # [T, inter]
            gate *= be.linear(h, self._w(w, "ffn_up"))
        return gate

    def mlp_out(self, w: LayerWeights, x: F32, inner: F32) -> F32:
        """The down product added to the residual: ``x`` float32 ``[T, hidden]`` (updated in place
        and returned), ``inner`` float32 ``[T, intermediate]`` from :meth:`mlp_in`."""
        return self.be.linear_add(inner, self._w(w, "ffn_down"), x, out=x)

    def __call__(self, w: LayerWeights, x: F32, cache: KVCache, start: int) -> F32:
        """``x`` float32 ``[T, hidden]`` at positions ``start..start+T-1`` -> float32 ``[T, hidden]``."""
        x = self.attention(w, x, cache, start)
        gate_up = self._stacked(w, "gate_up", "ffn_gate_up")
        if gate_up is not None:
            fused = self.be.mlp_block(x, self._w(w, "ffn_norm"), self.config.norm_eps, gate_up,
                                      self._w(w, "ffn_down"))
            if fused is not None:
                return fused
        return self.mlp_out(w, x, self.mlp_in(w, x))


class GPT2Block:
    """One GPT-2 block: LayerNorm -> attention (fused QKV) -> residual; LayerNorm -> GELU MLP -> residual."""

    def __init__(self, backend: KernelBackend, config: ModelConfig) -> None:
        self.be = backend
        self.config = config

    def _affine(self, x: F32, w: Weight, b: Weight) -> F32:
        y = self.be.linear(x, w)
        y += self.be.to_float(b)
        return y

    def attention(self, w: LayerWeights, x: F32, cache: KVCache, start: int) -> F32:
        """LayerNorm -> attention (fused QKV) -> residual: ``x`` float32 ``[T, hidden]`` at positions
        ``start..start+T-1`` -> float32 ``[T, hidden]`` (a new array)."""
        be, d, eps = self.be, self.config.dims, self.config.norm_eps
        t, hidden = x.shape
        h = be.layernorm(x, w["ln_1.weight"], w["ln_1.bias"], eps)
        qkv = self._affine(h, w["attn.c_attn.weight"], w["attn.c_attn.bias"])  # [T, 3*hidden]
        q = qkv[:, :hidden].reshape(t, d.n_heads, d.head_dim)
        k = qkv[:, hidden : 2 * hidden].reshape(t, d.n_kv_heads, d.head_dim)
        v = qkv[:, 2 * hidden :].reshape(t, d.n_kv_heads, d.head_dim)
        keys, values = cache.write(w.index, start, k, v)
        a = be.attention(q, keys, values, start)  # [T, hidden]
        return x + self._affine(a, w["attn.c_proj.weight"], w["attn.c_proj.bias"])

    def mlp_in(self, w: LayerWeights, x: F32) -> F32:
        """LayerNorm -> the GELU MLP's first product: ``x`` float32 ``[T, hidden]`` -> float32
        ``[T, intermediate]``."""
        h = self.be.layernorm(x, w["ln_2.weight"], w["ln_2.bias"], self.config.norm_eps)
        return self.be.gelu_tanh(self._affine(h, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"]))

    def mlp_out(self, w: LayerWeights, x: F32, inner: F32) -> F32:
        """The MLP's second product added to the residual (``x`` updated in place and returned)."""
        x += self._affine(inner, w["mlp.c_proj.weight"], w["mlp.c_proj.bias"])
        return x

    def __call__(self, w: LayerWeights, x: F32, cache: KVCache, start: int) -> F32:
        """``x`` float32 ``[T, hidden]`` at positions ``start..start+T-1`` -> float32 ``[T, hidden]``."""
        x = self.attention(w, x, cache, start)
        return self.mlp_out(w, x, self.mlp_in(w, x))


class Transformer:
    """The forward pass of one model on one backend; RoPE tables sized for ``max_context``."""

    def __init__(self, config: ModelConfig, backend: KernelBackend, max_context: int) -> None:
        self.config = config
        self.backend = backend
        self.max_context = max_context
        self.block: LlamaBlock | GPT2Block
        if arch_of(config.architecture).rope != "none":
            cos, sin = rope_tables(config.dims.head_dim, max_context, config.rope_theta,
                                   llama3=config.rope_llama3,
                                   freq_factors=config.rope_freq_factors)
            self.block = LlamaBlock(backend, config, cos, sin)
        else:
            self.block = GPT2Block(backend, config)

    def embed(self, token_rows: F32, position_rows: F32 | None = None) -> F32:
        """Hidden states from embedding rows: ``token_rows`` float32 ``[T, hidden]`` (rows of the
        token table for the input ids), ``position_rows`` float32 ``[T, hidden]`` (GPT-2's learned
        positions, ``None`` for Llama) -> float32 ``[T, hidden]`` (a new array)."""
        x = np.array(token_rows, dtype=np.float32, copy=True)
        if position_rows is not None:
            x += position_rows
        return x

    def run_layers(
        self, layers: Sequence[LayerWeights], hidden: F32, cache: KVCache, start: int
    ) -> F32:
        """Run consecutive blocks: ``hidden`` float32 ``[T, hidden]`` for positions
        ``start..start+T-1`` -> float32 ``[T, hidden]``; writes those positions of the KV cache.
        Llama blocks go to the backend in one call where it can take them (the same result)."""
        if layers and isinstance(self.block, LlamaBlock):
            together = self.block.run_blocks(layers, hidden, cache, start)
            if together is not None:
                return together
        for w in layers:
            hidden = self.block(w, hidden, cache, start)
        return hidden

    def run_parts(
        self, parts: Sequence[tuple[LayerWeights, int]], state: BlockState, cache: KVCache,
        start: int,
    ) -> BlockState:
        """Run consecutive block parts (a layer's weights and the index of one of its
        :data:`~edgert_core.layout.BLOCK_PARTS`), carrying ``state`` from part to part: the same
        arithmetic as :meth:`run_layers` over whole blocks, so a layer may be split across calls."""
        x, inner = state.hidden, state.inner
        block = self.block
        names = BLOCK_PARTS[self.config.architecture]
        for w, part in parts:
            name = names[part][0]
            if name == "attention":
                x = block.attention(w, x, cache, start)
            elif name == "mlp_in":
                inner = block.mlp_in(w, x)
            else:
                if inner is None:
                    raise ValueError(f"block {w.index}: mlp_out needs the inner activation of mlp_in")
                x, inner = block.mlp_out(w, x, inner), None
        return BlockState(x, inner)

    def final_norm(self, hidden: F32, final_norm: Mapping[str, Weight]) -> F32:
        """The final norm: ``hidden`` float32 ``[T, hidden]`` -> float32 ``[T, hidden]``."""
        be, eps = self.backend, self.config.norm_eps
        names = final_norm_names(self.config.architecture)
        if arch_of(self.config.architecture).norm == "rms":
            return be.rmsnorm(hidden, final_norm[names[0]], eps)
        return be.layernorm(hidden, final_norm[names[0]], final_norm[names[1]], eps)

    def project(self, normed: F32, output_slice: Weight, out: F32) -> None:
        """One row slice of the output projection: ``normed`` float32 ``[T, hidden]`` (from
        :meth:`final_norm`), ``output_slice`` ``[rows, hidden]`` -> written into ``out`` float32
        ``[T, rows]`` (the slice's columns of the logits)."""
        out[...] = self.backend.linear(normed, output_slice)
