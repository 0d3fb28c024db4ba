"""Tokenizers: GGUF byte-level BPE ids equal transformers' on varied text; streaming decode."""

from __future__ import annotations

from pathlib import Path

import model_helpers as mh
import pytest
import tokenizers

from edgert_core.loaders import open_model
from edgert_core.tokenizer import ByteTokenizer, Tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces, trailing space ",
    "digits 0 12 345 6789 and 3.14",
    "def f(x):\n    return x * 2\n",
    "Über café naïve résumé 日本語 🙂",
    "<|im_start|>user\nhi<|im_end|>",
    "",
]


def smollm2_tokenizer() -> Tokenizer:
    tok = open_model(mh.smollm2_path()).validate().tokenizer()
    assert isinstance(tok, Tokenizer)
    return tok


def test_smollm2_ids_equal_transformers_recorded_ids() -> None:
    meta, _ = mh.reference("smollm2")
    tok = smollm2_tokenizer()
    assert tok.encode(meta["prompt"]) == meta["prompt_ids"]
    for case in meta["tokenizer_cases"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.decode(case["ids"]) == case["text"]
    assert tok.eos_token_ids == (2,) and tok.bos_token_id == 1
    assert tok.encode("<|im_end|>") == [2]  # control tokens stay whole


def test_gguf_tokenizer_rebuilt_from_metadata_matches_tokenizer_json(tmp_path: Path) -> None:
    """A GGUF written from a tokenizer.json (vocab, merges, control tokens) encodes identically."""
    path = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "t.gguf", "F32")
    ours = open_model(path).validate().tokenizer()
    assert ours is not None
    original = tokenizers.Tokenizer.from_file(str(mh.fixture("tokenizer") / "tokenizer.json"))
    for text in TEXTS:
        assert ours.encode(text) == original.encode(text).ids, text
        assert ours.decode(ours.encode(text)) == text


def test_hf_folder_tokenizer_and_none_without_one(tmp_path: Path) -> None:
    tok = open_model(mh.fixture("tiny_gpt2")).validate().tokenizer()
    assert tok is not None and tok.vocab_size == 384
    path = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "n.gguf", with_tokenizer=False)
    assert open_model(path).validate().tokenizer() is None


def test_stream_decoder_holds_back_partial_characters() -> None:
    tok = smollm2_tokenizer()
    text = "Emoji 🙂🚀 日本語 ok"
    ids = tok.encode(text)
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + stream.flush() == text


def test_byte_tokenizer() -> None:
    tok = ByteTokenizer(1000)
    ids = tok.encode("héllo")
    assert ids == list("héllo".encode())
    assert tok.decode([*ids, 700]) == "héllo"
    stream = tok.stream()
    assert "".join(stream.push(i) for i in ids) == "héllo"


@pytest.mark.reference
def test_smollm2_ids_equal_live_transformers() -> None:
    from transformers import AutoTokenizer

    path = mh.smollm2_path()
    ref = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok = smollm2_tokenizer()
    meta, _ = mh.reference("smollm2")
    texts = [c["text"] for c in meta["tokenizer_cases"]] + TEXTS + [
        "A  B   C    D", "x\u00a0y", "ALLCAPS and MiXeD case", "1,000,000.00 $ % ^ & *",
        "naïve façade coöperate", "\t\tindented\n\n\n", "它们 are 混合 text", "a" * 300,
    ]
    for text in texts:
        assert tok.encode(text) == ref(text).input_ids, text
