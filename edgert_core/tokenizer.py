"""Tokenizers: text <-> token ids, built with the ``tokenizers`` library.

* Hugging Face folders: ``tokenizer.json`` as saved.
* GGUF files: a byte-level BPE rebuilt from ``tokenizer.ggml.tokens``/``merges``/``token_type`` and
  the pre-tokenizer named by ``tokenizer.ggml.pre``; tokens the file marks as control become special
  tokens and user-defined ones plain added tokens, so both stay whole in text. The ids equal
  ``transformers.AutoTokenizer.from_pretrained(dir, gguf_file=...)`` on the same file.
* Synthetic models: :class:`ByteTokenizer`, one id per UTF-8 byte.

:class:`StreamDecoder` turns ids into text as they are generated, holding back bytes of a character
that is not complete yet.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeGuard

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from edgert_core.errors import ModelError
from edgert_core.models.config import ModelConfig

# GGUF token types
CONTROL, USER_DEFINED = 3, 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Pre-tokenizers with their own split regex (applied before the byte-level mapping).
REGEX_PRE: dict[str, str] = {name: _LLAMA3_SPLIT for name in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe")}


class BaseTokenizer(ABC):
    """What generation needs of a tokenizer."""

    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (with BOS when the model wants it)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens included as written)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""

    def stream(self) -> StreamDecoder:
        """A decoder that yields text as ids arrive."""
        return StreamDecoder(self)


class Tokenizer(BaseTokenizer):
    """A ``tokenizers.Tokenizer`` plus the model's BOS/EOS conventions."""

    def __init__(
        self,
        tk: tokenizers.Tokenizer,
        *,
        bos_token_id: int | None = None,
        eos_token_ids: tuple[int, ...] = (),
        add_bos: bool = False,
    ) -> None:
        self.tk = tk
        self.bos_token_id = bos_token_id
        self.eos_token_ids = eos_token_ids
        self.add_bos = add_bos and bos_token_id is not None

    @classmethod
    def from_file(cls, path: Path, config: ModelConfig | None = None) -> Tokenizer:
        """A saved ``tokenizer.json`` (its post-processor adds BOS where the model wants one)."""
        try:
            tk = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises plain Exception on bad files
            raise ModelError(f"{path} is not a valid tokenizer.json ({exc}).") from None
        bos = None if config is None else config.bos_token_id
        eos = () if config is None else config.eos_token_ids
        return cls(tk, bos_token_id=bos, eos_token_ids=eos)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tk.encode(text, add_special_tokens=True).ids
        if self.add_bos and (not ids or ids[0] != self.bos_token_id):
            assert self.bos_token_id is not None
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self.tk.decode(list(ids), skip_special_tokens=False)
        return text

    def token_to_id(self, token: str) -> int | None:
        result: int | None = self.tk.token_to_id(token)
        return result

    @property
    def vocab_size(self) -> int:
        n: int = self.tk.get_vocab_size(with_added_tokens=True)
        return n


class ByteTokenizer(BaseTokenizer):
    """One id per UTF-8 byte (ids 0..255); larger ids decode to nothing. For synthetic models."""

    def __init__(self, vocab: int, eos_token_ids: tuple[int, ...] = ()) -> None:
        self._vocab = vocab
        self.eos_token_ids = eos_token_ids

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return self._vocab


class StreamDecoder:
    """Incremental detokenization: :meth:`push` an id, get the text it completes (maybe ``""``)."""

    def __init__(self, tokenizer: BaseTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # ids before this are settled and never decoded again
        self._read = 0  # ids before this have been emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self._prefix : self._read])
        after = self.tokenizer.decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the end)."""
        before = self.tokenizer.decode(self.ids[self._prefix : self._read])
        after = self.tokenizer.decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return after[len(before) :]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _is_array(value: object) -> TypeGuard[Sequence[Any]]:
    """Whether a metadata value is an array (a list, or the GGUF loader's array of strings)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def tokenizer_from_gguf_metadata(md: dict[str, Any], path: Path) -> Tokenizer | None:
    """The tokenizer a GGUF file describes, or ``None`` when it has no ``tokenizer.ggml.tokens``.

    Arrays are lists or sequences of strings decoded as they are read (the GGUF loader's
    ``StringArray``); the Python objects made from them here (a vocabulary dict, the merge pairs)
    live only while the ``tokenizers`` object is built."""
    tokens = md.get("tokenizer.ggml.tokens")
    if not _is_array(tokens):
        return None
    kind = md.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelError(
            f"{path} uses a {kind!r} tokenizer; edge-rt builds only byte-level BPE (gpt2) "
            "tokenizers from GGUF files. Pass token ids with --prompt-ids instead."
        )
    merges = md.get("tokenizer.ggml.merges")
    if not _is_array(merges):
        raise ModelError(f"{path} has a BPE vocabulary without tokenizer.ggml.merges; it is incomplete.")
    types = md.get("tokenizer.ggml.token_type") or []
    pre = str(md.get("tokenizer.ggml.pre", "default"))
    for key, values, kind in (("tokens", tokens, str), ("merges", merges, str),
                              ("token_type", types, int)):
        # a list is checked item by item; another sequence (the loader's array of strings, decoded
        # as read) holds one type by construction, so its first item tells
        sample = values if isinstance(values, list) else values[:1] if _is_array(values) else None
        if sample is None or not all(isinstance(v, kind) for v in sample):
            raise ModelError(
                f"{path}: tokenizer.ggml.{key} must be a list of "
                f"{'strings' if kind is str else 'integers'}; the file is corrupt."
            )
    try:
        return _gguf_bpe(md, tokens, merges, types, pre)
    except Exception as exc:  # the tokenizers library raises plain Exception on bad vocabularies
        reason = " ".join(str(exc).split())[:80]
        raise ModelError(
            f"{path} has a tokenizer vocabulary the tokenizers library refuses ({reason}); the "
            "file is corrupt."
        ) from None


def _gguf_bpe(
    md: dict[str, Any], tokens: Sequence[str], merges: Sequence[str], types: Sequence[int], pre: str
) -> Tokenizer:

    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    n_types = len(types)
    vocab: dict[str, int] = {}
    control: list[str] = []
    user: list[str] = []
    for index, token in enumerate(tokens):  # one pass: the loader's arrays decode as they are read
        kind = types[index] if index < n_types else None
        if kind == USER_DEFINED:
            user.append(token)
        if set(token) <= alphabet:
            if kind == CONTROL:
                control.append(token)
        else:
            token = "".join(spelling[b] for b in token.encode("utf-8"))
        vocab.setdefault(token, index)
    user = [t for t in user if t in vocab]
    pairs = [p for p in (tuple(m.split(" ", 1)) for m in merges) if len(p) == 2]
    bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False)
    # the library holds its own copies: the Python ones go before anything that stays is made, so
    # the memory they took is free in one piece
    del vocab, pairs
    tk = tokenizers.Tokenizer(bpe)
    if pre in REGEX_PRE:
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(REGEX_PRE[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:  # GPT-2's split; also the fallback for names this table does not know
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    if control:
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    if user:
        tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])

    def opt_id(key: str) -> int | None:
        value = md.get(f"tokenizer.ggml.{key}")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    eos = tuple(i for i in (opt_id("eos_token_id"), opt_id("eot_token_id")) if i is not None)
    return Tokenizer(
        tk,
        bos_token_id=opt_id("bos_token_id"),
        eos_token_ids=tuple(dict.fromkeys(eos)),
        add_bos=bool(md.get("tokenizer.ggml.add_bos_token", False)),
    )
