"""Make the reference fixtures the test suite checks edge-rt against (needs torch + transformers).

Writes into ``tests/fixtures/``:

* ``tokenizer/tokenizer.json`` - a small byte-level BPE trained here on the text below.
* ``tiny_llama/`` (fp32, GQA 4/2 heads, untied), ``tiny_llama_bf16/`` (bf16, 4/1 heads, tied),
  ``tiny_gpt2/`` (fp16, tied): random-init transformers models saved with ``save_pretrained``.
* ``tiny_llama3/`` (Llama 3 RoPE scaling, tied), ``tiny_qwen2/`` (q/k/v biases, tied),
  ``tiny_qwen3/`` (per-head q/k RMSNorm, explicit head_dim 24, untied), ``tiny_phi3/`` (fused
  qkv_proj and gate_up_proj, untied): fp32, one per architecture added after the first two.
* ``reference/<model>.logits.npy`` (transformers' fp32 logits ``[T, vocab]`` of the prompt) and
  ``reference/<model>.json`` (prompt ids, 16 greedy ids from full forward passes).
* ``reference/smollm2.json`` - SmolLM2-135M-Instruct (the pulled GGUF, dequantized by transformers):
  prompt ids, 40 greedy ids, logits of every prompt position at a fixed set of vocabulary ids, and
  transformers' token ids for a set of varied texts.

Run: ``python scripts/make_reference_fixtures.py`` (SmolLM2 is fetched with ``edge-rt pull`` logic);
``python scripts/make_reference_fixtures.py tiny_qwen2 ...`` remakes only the named tiny models.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
REFERENCE = FIXTURES / "reference"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 384
PROMPT = "The quick brown fox jumps over the lazy dog, then 42 ships sail."
GREEDY_TOKENS = 16

CORPUS = """The quick brown fox jumps over the lazy dog. A ship entered the port of the city.
Numbers like 12, 345 and 6789 appear; code like def f(x): return x * 2 too.
Sailors said the sea was calm, the wind was low, and the harbour was quiet at night.
Über café naïve résumé - unicode text, emoji-free, with punctuation!? (yes) [no] {maybe}.
""" * 4

#: Texts whose token ids the SmolLM2 tokenizer must reproduce (spaces, digits, code, non-ASCII).
TOKENIZER_TEXTS = [
    "The ship entered the port of",
    "Hello, world!",
    "  leading spaces and  double  spaces",
    "trailing space ",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1e10",
    "def add(a, b):\n    return a + b  # sum\n",
    "for (int i = 0; i < n; ++i) { x[i] *= 2; }",
    "Punctuation... !? ;: -- 'quotes' \"double\" (parens) [brackets] {braces}",
    "Ünïcödé: café, naïve, Straße, São Paulo, Ελληνικά, русский, 日本語, 中文, 한국어",
    "Emoji 🙂🚀 and symbols © ® ™ € £ ¥",
    "tabs\tand\nnewlines\n\nparagraphs\r\nwindows",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure you'll see they've done it; we'd've known.",
    "https://example.com/path?query=1&x=y#frag",
    "",
]


def train_tokenizer() -> Tokenizer:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tk


def randomize_norms(model: Any) -> None:
    """Give norm weights and biases values other than 1 and 0 so they are exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith(("ln_f.weight", "ln_f.bias")):
                if name.endswith("bias"):
                    p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("_proj.bias"):  # q/k/v biases start at zero
                p.copy_(0.2 * torch.randn_like(p))


def greedy(model: Any, ids: list[int], n: int) -> list[int]:
    """Greedy continuation by full forward passes (no cache): the plainest reference."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([out])).logits[0, -1]
            out.append(int(torch.argmax(logits)))
    return out[len(ids):]


def save_model(name: str, model: Any, dtype: Any, tk: Tokenizer,
               prompt_ids: list[int]) -> None:
    folder = FIXTURES / name
    shutil.rmtree(folder, ignore_errors=True)
    model.to(dtype).save_pretrained(folder, safe_serialization=True)
    tk.save(str(folder / "tokenizer.json"))
    for extra in ("generation_config.json",):
        (folder / extra).unlink(missing_ok=True)
    # the reference runs the saved weights in fp32, as edge-rt does
    ref: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ref.eval()
    with torch.no_grad():
        logits = ref(torch.tensor([prompt_ids])).logits[0].numpy().astype(np.float32)
    np.save(REFERENCE / f"{name}.logits.npy", logits)
    meta = {
        "model": name,
        "dtype": str(dtype).removeprefix("torch."),
        "prompt": PROMPT,
        "prompt_ids": prompt_ids,
        "greedy_ids": greedy(ref, prompt_ids, GREEDY_TOKENS),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (REFERENCE / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")


def tiny_models(tk: Tokenizer) -> None:
    prompt_ids = tk.encode(PROMPT).ids
    torch.manual_seed(0)
    llama_cfg: dict[str, Any] = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.2,
        bos_token_id=1, eos_token_id=2,
    )
    llama: Any = LlamaForCausalLM(LlamaConfig(**llama_cfg))
    llama.eval()
    randomize_norms(llama)
    save_model("tiny_llama", llama, torch.float32, tk, prompt_ids)

    torch.manual_seed(1)
    bf16_cfg: dict[str, Any] = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, initializer_range=0.2,
        bos_token_id=1, eos_token_id=2,
    )
    llama_bf16: Any = LlamaForCausalLM(LlamaConfig(**bf16_cfg))
    llama_bf16.eval()
    randomize_norms(llama_bf16)
    save_model("tiny_llama_bf16", llama_bf16, torch.bfloat16, tk, prompt_ids)

    torch.manual_seed(2)
    gpt2_cfg: dict[str, Any] = dict(
        vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
        activation_function="gelu_new", initializer_range=0.2, bos_token_id=0, eos_token_id=0,
    )
    gpt2: Any = GPT2LMHeadModel(GPT2Config(**gpt2_cfg))
    gpt2.eval()
    randomize_norms(gpt2)
    save_model("tiny_gpt2", gpt2, torch.float16, tk, prompt_ids)


#: The Llama family's shape shared by the architecture fixtures (4 query heads over 2 KV heads).
FAMILY: dict[str, Any] = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
    initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=None,
)


def architecture_models(tk: Tokenizer, only: set[str] | None) -> None:
    """One tiny model per architecture added to the first two, with the feature it adds."""
    prompt_ids = tk.encode(PROMPT).ids
    makers: dict[str, Any] = {
        # orig. context 32 puts head_dim 16's frequencies in all three llama3 bands
        "tiny_llama3": lambda: LlamaForCausalLM(LlamaConfig(
            **FAMILY, tie_word_embeddings=True,
            rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                 low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=32))),
        "tiny_qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(
            **FAMILY, tie_word_embeddings=True, rope_parameters=dict(rope_theta=1000000.0))),
        "tiny_qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(
            **FAMILY, head_dim=24, tie_word_embeddings=False,
            rope_parameters=dict(rope_theta=1000000.0))),
        "tiny_phi3": lambda: Phi3ForCausalLM(Phi3Config(
            **{**FAMILY, "rms_norm_eps": 1e-5}, tie_word_embeddings=False)),
    }
    for seed, (name, make) in enumerate(makers.items(), start=10):
        if only is not None and name not in only:
            continue
        torch.manual_seed(seed)
        model = make()
        model.eval()
        randomize_norms(model)
        save_model(name, model, torch.float32, tk, prompt_ids)


def smollm2() -> None:
    from edgert_core.pull import pull

    path = pull("smollm2")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model: Any = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                      dtype=torch.float32)
    model.eval()
    prompt = "The ship entered the port of"
    ids = tok(prompt).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    top = {int(i) for row in logits for i in np.argsort(-row)[:16]}
    fixed = set(range(0, logits.shape[1], 997))
    indices = sorted(top | fixed)
    data: dict[str, Any] = {
        "model": "smollm2",
        "prompt": prompt,
        "prompt_ids": ids,
        "greedy_ids": greedy(model, ids, 40),
        "logit_indices": indices,
        "logits": logits[:, indices].astype(np.float32).tolist(),
        "tokenizer_cases": [{"text": t, "ids": tok(t).input_ids} for t in TOKENIZER_TEXTS],
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (REFERENCE / "smollm2.json").write_text(json.dumps(data) + "\n")


def main() -> None:
    torch.set_num_threads(2)
    REFERENCE.mkdir(parents=True, exist_ok=True)
    tk = train_tokenizer()
    only = set(sys.argv[1:]) or None
    if only is not None:
        architecture_models(tk, only)
        return
    (FIXTURES / "tokenizer").mkdir(parents=True, exist_ok=True)
    tk.save(str(FIXTURES / "tokenizer" / "tokenizer.json"))
    tiny_models(tk)
    architecture_models(tk, None)
    smollm2()
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    print(f"fixtures written to {FIXTURES} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
