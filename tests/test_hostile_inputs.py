"""A corpus of broken and hostile model inputs, generated from the valid tiny fixtures.

Every case goes through the library's load path (``load_model`` + a 4-token greedy generation) in a
worker thread and must finish within 5 s with a clean :class:`EdgeRTError` (one sentence, one line) or
a correct run (the same tokens as the unmodified file). A sample also goes through ``edge-rt run`` in a
subprocess: exit status 2, one ``error:`` line, no traceback.

Classes: GGUF truncated at every header field and inside tensor data, lying counts and sizes, huge
dims, unknown types, misaligned / overlapping / gapped / out-of-file offsets, every ``llama.*`` key
mutated (wrong type, zero, negative, huge), bad alignments, tokenizer metadata; safetensors truncated,
lying header lengths, non-JSON headers, unknown dtypes, shape/byte-range mismatches, overlaps, gaps,
trailing bytes, hostile shard indexes; every ``config.json`` field of the Llama and GPT-2 fixtures
mutated; NaN/Inf weights; FIFOs, devices, sockets, symlinks to devices, empty files, folders; pickles
whose unpickling would create a marker file (checked never to exist).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import model_helpers as mh
import numpy as np
import pytest

from edgert_core.api import load_model
from edgert_core.errors import EdgeRTError
from edgert_core.plugins import PluginRegistry, load_registry

PROMPT = [1, 5, 9, 20]
MAX_TOKENS = 4
CASE_SECONDS = 5.0

# -- a GGUF reader/writer of our own (independent of the loader under test) ------------------------

SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
          11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
U32, I32, F32T, BOOL, U64 = 4, 5, 6, 7, 10


@dataclass
class Field:
    label: str
    offset: int
    size: int


@dataclass
class Gguf:
    """A parsed GGUF: key/values with their types, tensors with their data, and where every header
    field lies (for byte-level mutations)."""

    kvs: list[tuple[str, int, Any, int]]  # key, vtype, value, array element type
    tensors: list[tuple[str, tuple[int, ...], int, bytes]]  # name, ne, type, data
    fields: list[Field]
    offsets: list[int]  # relative data offsets
    data_start: int


def parse_gguf(raw: bytes) -> Gguf:
    pos = 0
    fields: list[Field] = []

    def take(fmt: str, label: str) -> Any:
        nonlocal pos
        size = struct.calcsize(fmt)
        fields.append(Field(label, pos, size))
        (v,) = struct.unpack_from(fmt, raw, pos)
        pos += size
        return v

    def string(label: str) -> str:
        nonlocal pos
        n = take("<Q", label + ".len")
        fields.append(Field(label, pos, n))
        s = raw[pos : pos + n].decode()
        pos += n
        return s

    fields.append(Field("magic", 0, 4))
    pos = 4
    take("<I", "version")
    n_tensors = take("<Q", "n_tensors")
    n_kv = take("<Q", "n_kv")
    kvs: list[tuple[str, int, Any, int]] = []
    for _ in range(n_kv):
        key = string(f"kv[{len(kvs)}].key")
        vtype = take("<I", f"{key}.type")
        etype = -1
        if vtype == ARRAY:
            etype = take("<I", f"{key}.etype")
            count = take("<Q", f"{key}.count")
            start = pos
            value: Any
            if etype == STRING:
                value = []
                for _ in range(count):
                    (n,) = struct.unpack_from("<Q", raw, pos)
                    value.append(raw[pos + 8 : pos + 8 + n].decode())
                    pos += 8 + n
            else:
                size = struct.calcsize(SCALAR[etype])
                value = list(struct.unpack_from(f"<{count}{SCALAR[etype][1]}", raw, pos))
                pos += size * count
            fields.append(Field(f"{key}.elements", start, pos - start))
        elif vtype == STRING:
            value = string(f"{key}.value")
        else:
            value = take(SCALAR[vtype], f"{key}.value")
        kvs.append((key, vtype, value, etype))
    infos = []
    for i in range(n_tensors):
        name = string(f"tensor[{i}].name")
        n_dims = take("<I", f"{name}.n_dims")
        ne = tuple(take("<Q", f"{name}.ne[{d}]") for d in range(n_dims))
        ttype = take("<I", f"{name}.type")
        off = take("<Q", f"{name}.offset")
        infos.append((name, ne, ttype, off))
    alignment = int(dict((k, v) for k, _, v, _ in kvs).get("general.alignment", 32))
    data_start = -(-pos // alignment) * alignment
    tensors = []
    for name, ne, ttype, off in infos:
        tensors.append((name, ne, ttype, raw[data_start + off : data_start + off + nbytes(ne, ttype)]))
    return Gguf(kvs, tensors, fields, [t[3] for t in infos], data_start)


BLOCKS = {0: (1, 4), 1: (1, 2), 8: (32, 34), 2: (32, 18), 3: (32, 20), 6: (32, 22), 30: (1, 2)}


def nbytes(ne: tuple[int, ...], ttype: int) -> int:
    block, size = BLOCKS[ttype]
    return math.prod(ne) // block * size


def pack_value(vtype: int, value: Any, etype: int = -1) -> bytes:
    if vtype == STRING:
        b = value.encode() if isinstance(value, str) else value
        return struct.pack("<Q", len(b)) + b
    if vtype == ARRAY:
        out = struct.pack("<IQ", etype, len(value))
        return out + b"".join(pack_value(etype, v) for v in value)
    return struct.pack(SCALAR[vtype], value)


def build_gguf(
    kvs: list[tuple[str, int, Any, int]],
    tensors: list[tuple[str, tuple[int, ...], int, bytes]],
    *,
    alignment: int = 32,
    offsets: list[int] | None = None,
    version: int = 3,
) -> bytes:
    """GGUF bytes; data laid out contiguously with ``alignment`` unless ``offsets`` are given."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, vtype, value, etype in kvs:
        head += pack_value(STRING, key) + struct.pack("<I", vtype) + pack_value(vtype, value, etype)
    if offsets is None:
        offsets, pos = [], 0
        for _, _, _, data in tensors:
            offsets.append(pos)
            pos += -(-len(data) // alignment) * alignment
    for (name, ne, ttype, _), off in zip(tensors, offsets, strict=True):
        head += pack_value(STRING, name) + struct.pack("<I", len(ne))
        head += b"".join(struct.pack("<Q", x) for x in ne) + struct.pack("<IQ", ttype, off)
    start = -(-len(head) // alignment) * alignment
    end = max((o + len(d) for o, (_, _, _, d) in zip(offsets, tensors, strict=True)), default=0)
    out = bytearray(head.ljust(start, b"\0") + bytes(end))
    for off, (_, _, _, data) in zip(offsets, tensors, strict=True):
        out[start + off : start + off + len(data)] = data
    return bytes(out)


@cache
def base_gguf(matrix_type: str = "Q8_0") -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return mh.write_gguf(mh.fixture("tiny_llama"), Path(tmp) / "m.gguf", matrix_type).read_bytes()


@cache
def parsed(matrix_type: str = "Q8_0") -> Gguf:
    return parse_gguf(base_gguf(matrix_type))


# -- safetensors helpers ---------------------------------------------------------------------------


def split_safetensors(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join_safetensors(header: Any, data: bytes, *, header_bytes: bytes | None = None) -> bytes:
    hb = header_bytes if header_bytes is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(hb)) + hb + data


@cache
def fixture_bytes(folder: str, name: str) -> bytes:
    return (mh.fixture(folder) / name).read_bytes()


# -- cases -------------------------------------------------------------------------------------------

Maker = Callable[[Path], Path]


@dataclass(frozen=True)
class Case:
    id: str
    make: Maker  # builds the input under a fresh folder, returns what is passed as --model
    expect: str  # "error": must be refused; "ok": must run correctly; "any": either
    base: str = "gguf"  # whose tokens a correct run must reproduce: gguf, gguf_f32, llama, gpt2, bf16
    needle: str = ""  # the error message must contain this
    cli: bool = False  # also run through `edge-rt run`


def gguf_file(data: bytes, name: str = "model.gguf") -> Maker:
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(data)
        return p

    return make


def patched(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


def field(g: Gguf, label: str) -> Field:
    return next(f for f in g.fields if f.label == label)


def gguf_cases() -> list[Case]:
    raw, g = base_gguf(), parsed()
    cases = []
    # truncation at every header field (its first byte, and half-way through multi-byte fields)
    for f in g.fields:
        cuts = {f.offset} | ({f.offset + f.size // 2} if f.size > 1 else set())
        for cut in sorted(cuts):
            cases.append(Case(f"gguf-cut-{f.label}@{cut}", gguf_file(raw[:cut]), "error",
                              cli=f.label == "n_kv"))
    # truncation inside the data of tensors and by one byte
    for i in (0, 5, len(g.tensors) - 1):
        name = g.tensors[i][0]
        cut = g.data_start + g.offsets[i] + len(g.tensors[i][3]) // 2
        cases.append(Case(f"gguf-cut-data-{name}", gguf_file(raw[:cut]), "error", needle=name))
    cases.append(Case("gguf-cut-last-byte", gguf_file(raw[:-1]), "error", needle="truncated"))
    # magic and version
    for label, value in [("magic", b"GGUX"), ("version", struct.pack("<I", 1)),
                         ("version", struct.pack("<I", 4)), ("version", struct.pack(">I", 3))]:
        cases.append(Case(f"gguf-{label}-{value.hex()}", gguf_file(patched(raw, field(g, label).offset,
                                                                       value)), "error"))
    # lying counts
    n_t, n_kv = len(g.tensors), len(g.kvs)
    for label, values in [("n_tensors", [0, n_t - 1, n_t + 1, 1 << 32, (1 << 64) - 1]),
                          ("n_kv", [0, n_kv - 1, n_kv + 1, 1 << 40, (1 << 64) - 1])]:
        for v in values:
            cases.append(Case(f"gguf-{label}={v}", gguf_file(patched(
                raw, field(g, label).offset, struct.pack("<Q", v))), "error", cli=v == n_t + 1))
    # lying string lengths and array counts
    for label in ("kv[0].key.len", "kv[3].key.len", "general.architecture.value.len",
                  "tokenizer.ggml.tokens.count", "tokenizer.ggml.merges.count",
                  "tokenizer.ggml.token_type.count", "tensor[0].name.len", "tensor[20].name.len"):
        f = field(g, label)
        (cur,) = struct.unpack_from("<Q", raw, f.offset)
        for v in (cur + 1, cur - 1, 1 << 40, (1 << 64) - 1):
            cases.append(Case(f"gguf-{label}={v}", gguf_file(patched(raw, f.offset, struct.pack(
                "<Q", v))), "error"))
    # value types
    for label in ("llama.block_count.type", "tokenizer.ggml.tokens.etype", "kv[1].key.len"):
        f = field(g, label)
        for v in (9, 13, 1 << 31):
            if label.endswith(".len"):
                continue
            cases.append(Case(f"gguf-{label}={v}", gguf_file(patched(raw, f.offset, struct.pack(
                "<I", v))), "error"))
    # tensor dims, types and offsets
    for i in (0, 3, 11, 20):
        name, ne, ttype, _data = g.tensors[i]
        for v in (0, 1, 3, 5, 1 << 31):
            if v == len(ne):
                continue
            cases.append(Case(f"gguf-{name}.n_dims={v}", gguf_file(patched(
                raw, field(g, f"{name}.n_dims").offset, struct.pack("<I", v))), "error"))
        for d in range(len(ne)):
            for v in (0, ne[d] * 2, 33, 1 << 62, (1 << 64) - 1):
                cases.append(Case(f"gguf-{name}.ne[{d}]={v}", gguf_file(patched(
                    raw, field(g, f"{name}.ne[{d}]").offset, struct.pack("<Q", v))), "error"))
        for v in (99, 0, 1, 6, 1 << 31):
            if v == ttype:
                continue
            cases.append(Case(f"gguf-{name}.type={v}", gguf_file(patched(
                raw, field(g, f"{name}.type").offset, struct.pack("<I", v))), "error"))
        off = g.offsets[i]
        for delta, needle in [(1, "alignment"), (16, "alignment"), (32, ""), (-32, ""),
                              (1 << 40, ""), (-off, "")]:
            if off + delta < 0 or delta == 0 or (delta == -off and off == 0):
                continue
            cases.append(Case(f"gguf-{name}.offset{delta:+d}", gguf_file(patched(
                raw, field(g, f"{name}.offset").offset, struct.pack("<Q", off + delta))), "error",
                needle=needle or name, cli=delta == 1 and i == 3))
    cases += gguf_metadata_cases(g)
    cases += gguf_layout_cases(g)
    cases += nonfinite_gguf_cases()
    return cases


def with_kv(g: Gguf, key: str, vtype: int | None, value: Any = None, etype: int = -1) -> list[
        tuple[str, int, Any, int]]:
    """The key/values of ``g`` with ``key`` replaced (appended when new; removed when ``vtype`` is
    None)."""
    out = [kv for kv in g.kvs if kv[0] != key]
    if vtype is not None:
        out.append((key, vtype, value, etype))
    return out


def gguf_metadata_cases(g: Gguf) -> list[Case]:
    cases = []
    ints = [("string", STRING, "two", -1), ("bool", BOOL, True, -1), ("float", F32T, 2.5, -1),
            ("zero", I32, 0, -1), ("negative", I32, -1, -1), ("huge", U64, 1 << 40, -1),
            ("array", ARRAY, [4, 4], I32)]
    dims = ["block_count", "context_length", "embedding_length", "feed_forward_length",
            "attention.head_count", "attention.head_count_kv", "vocab_size"]
    for key in dims:
        for label, vtype, value, etype in ints:
            kvs = with_kv(g, f"llama.{key}", vtype, value, etype)
            cases.append(Case(f"gguf-llama.{key}={label}", gguf_file(build_gguf(kvs, g.tensors)),
                              "error", needle=f"llama.{key}", cli=label == "string" and key == dims[4]))
        cases.append(Case(f"gguf-llama.{key}=deleted", gguf_file(build_gguf(
            with_kv(g, f"llama.{key}", None), g.tensors)), "any"))
    for key, bad in [("attention.head_count", 3), ("attention.head_count_kv", 3),
                     ("attention.key_length", 15), ("attention.key_length", 8),
                     ("attention.value_length", 8), ("rope.dimension_count", 8),
                     ("embedding_length", 66)]:
        cases.append(Case(f"gguf-llama.{key}={bad}", gguf_file(build_gguf(
            with_kv(g, f"llama.{key}", U32, bad), g.tensors)), "error"))
    floats = [("string", STRING, "x"), ("zero", F32T, 0.0), ("negative", F32T, -1.0),
              ("nan", F32T, float("nan")), ("inf", F32T, float("inf")), ("bool", BOOL, True)]
    for key in ("attention.layer_norm_rms_epsilon", "rope.freq_base"):
        for label, vtype, value in floats:
            cases.append(Case(f"gguf-llama.{key}={label}", gguf_file(build_gguf(
                with_kv(g, f"llama.{key}", vtype, value), g.tensors)), "error", needle=key))
    others: list[tuple[str, int | None, Any, int, str]] = [
        ("general.alignment", U32, 0, -1, "error"), ("general.alignment", U32, 3, -1, "error"),
        ("general.alignment", U32, 48, -1, "error"), ("general.alignment", STRING, "32", -1, "error"),
        ("general.alignment", BOOL, True, -1, "error"), ("general.alignment", F32T, 32.0, -1, "error"),
        ("general.alignment", U64, 1 << 40, -1, "error"),
        ("general.architecture", STRING, "mamba", -1, "error"),
        ("general.architecture", U32, 5, -1, "error"), ("general.architecture", None, None, -1, "error"),
        ("llama.rope.scaling.type", STRING, "linear", -1, "error"),
        ("llama.rope.scaling.type", U32, 1, -1, "error"),
        ("llama.rope.scaling.type", STRING, "none", -1, "ok"),
        ("tokenizer.ggml.bos_token_id", U32, 1_000_000, -1, "error"),
        ("tokenizer.ggml.bos_token_id", I32, -1, -1, "error"),
        ("tokenizer.ggml.bos_token_id", STRING, "x", -1, "error"),
        ("tokenizer.ggml.eos_token_id", STRING, "x", -1, "error"),
        ("tokenizer.ggml.eos_token_id", U32, 384, -1, "error"),
        ("tokenizer.ggml.tokens", ARRAY, [1, 2, 3], I32, "error"),
        ("tokenizer.ggml.tokens", ARRAY, ["a"] * 400, STRING, "error"),
        ("tokenizer.ggml.merges", ARRAY, ["zz qq"], STRING, "error"),
        ("tokenizer.ggml.merges", ARRAY, [1], I32, "error"),
        ("tokenizer.ggml.token_type", ARRAY, ["x"], STRING, "error"),
        ("tokenizer.ggml.model", STRING, "llama", -1, "error"),
        ("tokenizer.ggml.add_bos_token", STRING, "yes", -1, "error"),
        ("tokenizer.chat_template", U32, 7, -1, "ok"),
        ("general.name", ARRAY, [[1]], ARRAY, "error"),
        ("general.unknown_extra_key", STRING, "hello", -1, "ok"),
    ]
    for key, otype, value, etype, expect in others:
        label = "deleted" if otype is None else f"{otype}:{str(value)[:12]}"
        try:
            data = build_gguf(with_kv(g, key, otype, value, etype), g.tensors,
                              alignment=value if key == "general.alignment" and value in (1, 64) else 32)
        except (struct.error, TypeError):
            # nested arrays: write the element type by hand
            kvs = with_kv(g, key, None)
            data = build_gguf(kvs, g.tensors)
            data = add_raw_kv(data, key, struct.pack("<IIQ", ARRAY, ARRAY, 1) + struct.pack(
                "<IQ", U32, 1) + struct.pack("<I", 1), len(kvs))
        cases.append(Case(f"gguf-{key}={label}", gguf_file(data), expect))
    for alignment in (1, 64, 256):
        kvs = with_kv(g, "general.alignment", U32, alignment)
        cases.append(Case(f"gguf-alignment-{alignment}-valid", gguf_file(build_gguf(
            kvs, g.tensors, alignment=alignment)), "ok"))
    # duplicate keys, unknown value type
    dup = [*g.kvs, g.kvs[2]]
    cases.append(Case("gguf-duplicate-key", gguf_file(build_gguf(dup, g.tensors)), "error",
                      needle="twice"))
    data = add_raw_kv(build_gguf(g.kvs, g.tensors), "x.unknown", struct.pack("<I", 13) + b"\0" * 8,
                      len(g.kvs))
    cases.append(Case("gguf-unknown-value-type", gguf_file(data), "error"))
    return cases


def add_raw_kv(data: bytes, key: str, typed_value: bytes, n_kv: int) -> bytes:
    """Insert one key (its type code and value given as bytes) after the existing ones; rebuilds
    the layout of a file whose header was written by :func:`build_gguf`."""
    g = parse_gguf(data)
    head_end = field(g, "tensor[0].name.len").offset
    extra = pack_value(STRING, key) + typed_value
    header = bytearray(data[:head_end] + extra + data[head_end : g.fields[-1].offset + 8])
    struct.pack_into("<Q", header, 16, n_kv + 1)
    start = -(-len(header) // 32) * 32
    return bytes(header.ljust(start, b"\0")) + data[g.data_start :]


def gguf_layout_cases(g: Gguf) -> list[Case]:
    t = g.tensors
    cases = []
    dup = [*t, t[4]]
    cases.append(Case("gguf-duplicate-tensor", gguf_file(build_gguf(g.kvs, dup)), "error",
                      needle="twice"))
    long = [*t[:-1], ("blk.0." + "x" * 70, t[-1][1], t[-1][2], t[-1][3])]
    cases.append(Case("gguf-long-name", gguf_file(build_gguf(g.kvs, long)), "error"))
    cases.append(Case("gguf-missing-tensor", gguf_file(build_gguf(g.kvs, t[:-1])), "error"))
    extra = [*t, ("blk.9.attn_q.weight", t[3][1], t[3][2], t[3][3])]
    cases.append(Case("gguf-extra-tensor", gguf_file(build_gguf(g.kvs, extra)), "error"))
    rope = [*t, ("rope_freqs.weight", (8,), 0, bytes(32))]
    cases.append(Case("gguf-rope-freqs", gguf_file(build_gguf(g.kvs, rope)), "error"))
    for i in (0, 3, 12):
        name, ne, ttype, data = t[i]
        if len(ne) == 2 and ne[0] != ne[1]:
            swapped = [*t[:i], (name, (ne[1], ne[0]), ttype, data), *t[i + 1 :]]
            cases.append(Case(f"gguf-{name}-transposed", gguf_file(build_gguf(g.kvs, swapped)),
                              "error"))
    # data order differs from directory order (a valid-looking but non-contiguous layout)
    offs, pos = [], 0
    for _, _, _, data in t:
        offs.append(pos)
        pos += -(-len(data) // 32) * 32
    swapped_offs = [offs[1], offs[0], *offs[2:]] if len(t[0][3]) == len(t[1][3]) else None
    if swapped_offs is None:
        swapped_offs = [*offs[:-2], offs[-1], offs[-2]]
    cases.append(Case("gguf-data-out-of-order", gguf_file(build_gguf(g.kvs, t, offsets=swapped_offs)),
                      "any", base="gguf"))
    two_same = [*offs[:5], offs[4], *offs[6:]]
    cases.append(Case("gguf-two-tensors-one-range", gguf_file(build_gguf(g.kvs, t, offsets=two_same)),
                      "error"))
    gap = [*offs[:6], *(o + 64 for o in offs[6:])]
    cases.append(Case("gguf-gap", gguf_file(build_gguf(g.kvs, t, offsets=gap)), "error",
                      needle=t[6][0]))
    cases.append(Case("gguf-valid-rebuild", gguf_file(build_gguf(g.kvs, t)), "ok"))
    q5 = [*t[:7], (t[7][0], t[7][1], 6, bytes(nbytes(t[7][1], 6))), *t[8:]]
    cases.append(Case("gguf-unsupported-q5_0", gguf_file(build_gguf(g.kvs, q5)), "error",
                      needle=t[7][0]))
    return cases


def with_value(data: bytes, dtype: str, index: int, value: float) -> bytes:
    arr = bytearray(data)
    if dtype == "F32":
        struct.pack_into("<f", arr, index * 4, value)
    elif dtype == "F16":
        arr[index * 2 : index * 2 + 2] = np.array([value], dtype=np.float16).tobytes()
    else:  # BF16: the high half of the float32
        arr[index * 2 : index * 2 + 2] = struct.pack("<f", value)[2:]
    return bytes(arr)


def nonfinite_gguf_cases() -> list[Case]:
    cases = []
    g = parsed("F32")
    for name, value, index in [("blk.0.attn_q.weight", math.nan, 7), ("output_norm.weight", math.inf, 0),
                               ("blk.1.ffn_down.weight", -math.inf, 1000), ("output.weight", math.nan, 5)]:
        t = [(n, ne, tt, with_value(d, "F32", index, value) if n == name else d)
             for n, ne, tt, d in g.tensors]
        cases.append(Case(f"gguf-f32-{name}-{value}", gguf_file(build_gguf(g.kvs, t)), "error",
                          needle=name, cli=name == "output_norm.weight"))
    # a NaN in an embedding row the prompt never uses: never read, so the run is correct
    t = [(n, ne, tt, with_value(d, "F32", 300 * 64 + 3, math.nan) if n == "token_embd.weight" else d)
         for n, ne, tt, d in g.tensors]
    cases.append(Case("gguf-f32-unused-embedding-row-nan", gguf_file(build_gguf(g.kvs, t)), "any",
                      base="gguf_f32"))
    q = parsed("Q8_0")
    for name, bits in [("blk.1.ffn_up.weight", 0x7E00), ("output.weight", 0x7C00),
                       ("blk.0.attn_k.weight", 0xFC00)]:
        t = []
        for n, ne, tt, d in q.tensors:
            if n == name:
                b = bytearray(d)
                struct.pack_into("<H", b, 34 * 3, bits)  # the scale of block 3
                d = bytes(b)
            t.append((n, ne, tt, d))
        cases.append(Case(f"gguf-q8-{name}-scale-{bits:x}", gguf_file(build_gguf(q.kvs, t)), "error",
                          needle=name))
    return cases


# -- safetensors and config.json ---------------------------------------------------------------------


def hf_folder(src: str, *, config: Any = None, config_raw: bytes | None = None,
              weights: bytes | None = None, drop: tuple[str, ...] = ()) -> Maker:
    def make(d: Path) -> Path:
        folder = d / src
        shutil.copytree(mh.fixture(src), folder)
        for name in drop:
            (folder / name).unlink()
        if config is not None:
            (folder / "config.json").write_text(json.dumps(config))
        if config_raw is not None:
            (folder / "config.json").write_bytes(config_raw)
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights)
        return folder

    return make


def safetensors_cases() -> list[Case]:
    cases = []
    raw = fixture_bytes("tiny_llama", "model.safetensors")
    header, data = split_safetensors(raw)
    (n,) = struct.unpack_from("<Q", raw)
    names = [k for k in header if k != "__metadata__"]
    order = sorted(names, key=lambda k: header[k]["data_offsets"][0])

    def st(weights: bytes, expect: str = "error", needle: str = "", cli: bool = False,
           label: str = "") -> None:
        cases.append(Case(f"st-{label}", hf_folder("tiny_llama", weights=weights), expect,
                          base="llama", needle=needle, cli=cli))

    for cut in (0, 4, 7, 8, 8 + n // 2, 8 + n - 1, 8 + n, len(raw) - 1):
        st(raw[:cut], label=f"cut@{cut}", cli=cut == 8 + n // 2)
    for k in (order[0], order[len(order) // 2], order[-1]):
        a, b = header[k]["data_offsets"]
        st(raw[: 8 + n + (a + b) // 2], needle="truncated", label=f"cut-in-{k}")
    for v in (0, n - 1, n + 1, len(raw), 1 << 40, (1 << 64) - 1):
        st(struct.pack("<Q", v) + raw[8:], label=f"header-len={v}")
    bad_headers = {
        "not-json": b"{not json" + b" " * 10,
        "list": b"[1, 2, 3]",
        "string": b'"hello"',
        "number": b"42",
        "bad-utf8": b'{"\xff\xfe": 1}',
        "deep-nesting": b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        "leading-space": b" " + json.dumps(header).encode(),
        "empty": b"",
    }
    for label, hb in bad_headers.items():
        st(join_safetensors(None, data, header_bytes=hb), label=f"header-{label}")
    dup_key = json.dumps(header).encode()
    first = json.dumps({order[0]: header[order[0]]})[1:-1].encode()
    st(join_safetensors(None, data, header_bytes=dup_key[:-1] + b", " + first + b"}"),
       needle="twice", label="duplicate-tensor-key")
    st(join_safetensors(None, data, header_bytes=json.dumps(header).encode() + b"    "), "ok",
       label="trailing-spaces-in-header")

    def mutate(k: str, key: str, value: Any) -> bytes:
        h = json.loads(json.dumps(header))
        h[k][key] = value
        return join_safetensors(h, data)

    for k in (order[0], order[len(order) // 2], order[-1]):
        spec = header[k]
        a, b = spec["data_offsets"]
        shape = spec["shape"]
        for dtype in ("F33", "F16", "I8", 5, None):
            st(mutate(k, "dtype", dtype), needle=k, label=f"{k}-dtype={dtype}")
        for sh in ([-1, *shape[1:]], [True, *shape[1:]], [float(shape[0]), *shape[1:]], "64",
                   [1, *shape], [shape[0] * 2, *shape[1:]], list(reversed(shape)), [],
                   [1] * 9):
            if sh != shape:
                st(mutate(k, "shape", sh), label=f"{k}-shape={str(sh)[:20]}")
        for offs in ([a - 4, b - 4], [a + 4, b + 4], [a, b + 4], [b, a], [a], [a, b, 0],
                     [str(a), str(b)], [a + (1 << 40), b + (1 << 40)], [float(a), float(b)], None):
            if offs == [b, a] and a == b:
                continue
            st(mutate(k, "data_offsets", offs), label=f"{k}-offsets={str(offs)[:24]}",
               cli=offs == [a - 4, b - 4] and k == order[-1])
        h = json.loads(json.dumps(header))
        h[k] = "x"
        st(join_safetensors(h, data), needle=k, label=f"{k}-not-object")
    # two tensors sharing one byte range (sizes equal): overlap, named both
    same = [(x, y) for x in order for y in order if x < y and header[x]["shape"] == header[y]["shape"]]
    x, y = same[0]
    h = json.loads(json.dumps(header))
    h[y]["data_offsets"] = h[x]["data_offsets"]
    st(join_safetensors(h, data), needle=x if order.index(x) < order.index(y) else y, label="shared-range")
    for meta, expect in [([1], "error"), ({"a": 1}, "error"), ({"format": "pt"}, "ok")]:
        h = json.loads(json.dumps(header))
        h["__metadata__"] = meta
        st(join_safetensors(h, data), expect, label=f"metadata={meta}")
    st(raw + bytes(16), needle="after its last tensor", label="trailing-bytes")
    h = {k: v for k, v in header.items() if k != order[-1]}
    st(join_safetensors(h, data[: header[order[-1]]["data_offsets"][0]]), label="missing-tensor")
    # NaN and infinities in weights of every float type
    for k, value in [("model.layers.0.self_attn.q_proj.weight", math.nan),
                     ("lm_head.weight", math.inf), ("model.norm.weight", -math.inf),
                     ("model.layers.1.mlp.down_proj.weight", math.nan)]:
        a, _ = header[k]["data_offsets"]
        d = bytearray(data)
        struct.pack_into("<f", d, a + 40, value)
        st(join_safetensors(header, bytes(d)), needle=k, label=f"{k}={value}")
    cases += nonfinite_hf("tiny_gpt2", "F16", ["transformer.h.0.attn.c_attn.weight", "transformer.wte.weight",
                                               "transformer.ln_f.bias"], "gpt2")
    cases += nonfinite_hf("tiny_llama_bf16", "BF16", ["model.layers.1.mlp.up_proj.weight"], "bf16")
    cases += shard_cases()
    return cases


def nonfinite_hf(src: str, dtype: str, tensors: list[str], base: str) -> list[Case]:
    raw = fixture_bytes(src, "model.safetensors")
    header, data = split_safetensors(raw)
    cases = []
    for k in tensors:
        a, _ = header[k]["data_offsets"]
        for value in (math.nan, math.inf):
            patched_data = data[:a] + with_value(data[a : a + 64], dtype, 3, value) + data[a + 64 :]
            cases.append(Case(f"st-{src}-{k}={value}", hf_folder(src, weights=join_safetensors(
                header, patched_data)), "error", base=base, needle=k))
    return cases


def shard_cases() -> list[Case]:
    raw = fixture_bytes("tiny_llama", "model.safetensors")
    header, data = split_safetensors(raw)
    names = sorted(k for k in header if k != "__metadata__")
    half = len(names) // 2

    def shard(part: list[str]) -> bytes:
        h, out, pos = {}, b"", 0
        for k in part:
            a, b = header[k]["data_offsets"]
            h[k] = {**header[k], "data_offsets": [pos, pos + b - a]}
            out += data[a:b]
            pos += b - a
        return join_safetensors(h, out)

    def make_sharded(weight_map: Any, parts: dict[str, list[str]], index_raw: bytes | None = None) -> Maker:
        def make(d: Path) -> Path:
            folder = d / "sharded"
            folder.mkdir()
            for extra in ("config.json", "tokenizer.json"):
                shutil.copy(mh.fixture("tiny_llama") / extra, folder / extra)
            for file, part in parts.items():
                (folder / file).write_bytes(shard(part))
            index = folder / "model.safetensors.index.json"
            index.write_bytes(index_raw if index_raw is not None else json.dumps(
                {"metadata": {}, "weight_map": weight_map}).encode())
            return folder

        return make

    a, b = "a.safetensors", "b.safetensors"
    parts = {a: names[:half], b: names[half:]}
    good = {n: f for f, part in parts.items() for n in part}
    cases = [Case("shard-valid", make_sharded(good, parts), "ok", base="llama")]
    first = names[0]
    for label, wm in [("traversal", {**good, first: "../" + a}),
                      ("absolute", {**good, first: "/etc/passwd"}),
                      ("subdir", {**good, first: "x/" + a}),
                      ("missing-shard", {**good, first: "c.safetensors"}),
                      ("wrong-shard", {**good, first: b}), ("not-a-map", [1, 2]),
                      ("non-string", {**good, first: 5})]:
        cases.append(Case(f"shard-{label}", make_sharded(wm, parts), "error", base="llama"))
    dup_parts = {a: names[:half], b: names[half - 1 :]}
    cases.append(Case("shard-duplicate-tensor", make_sharded(good, dup_parts), "error",
                      needle=names[half - 1]))
    cases.append(Case("shard-index-not-json", make_sharded(good, parts, b"{nope"), "error"))
    cases.append(Case("shard-index-list", make_sharded(good, parts, b"[]"), "error"))
    return cases


LLAMA_DIMS = ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
              "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings"]
GPT2_DIMS = ["n_embd", "n_head", "n_layer", "n_positions", "vocab_size", "n_inner"]
INVALID_INTS: list[Any] = ["two", True, 0, -1, 2.5, 1 << 40, [4], {"a": 1}]
INVALID_FLOATS: list[Any] = ["two", True, 0, -1, [4], math.nan, math.inf, 2.5]
INVALID_BOOLS: list[Any] = ["two", 1, 0, [4], {"a": 1}]
INVALID_STRS: list[Any] = ["two", True, 0, [4], {"a": 1}]
INVALID_IDS: list[Any] = ["two", True, 2.5, {"a": 1}, [1, "x"]]
# ids outside the vocabulary are left out (they can never be embedded or generated), as transformers
# keeps them; the tiny fixtures do not reach their end-of-text token in the tokens a case generates
OUTSIDE_IDS: list[Any] = [-1, 1 << 40, 384, [1, 384]]
RUNS_ANYWAY: list[Any] = ["two", True, 0, -1, 2.5, 1 << 40, [4], {"a": 1}, None, math.nan]


def config_cases() -> list[Case]:
    cases = []
    for src, base, dims, floats, bools, strs, ids, objs in [
        ("tiny_llama", "llama", LLAMA_DIMS, ["rms_norm_eps"],
         ["tie_word_embeddings", "attention_bias", "mlp_bias"], ["model_type", "hidden_act"],
         ["bos_token_id", "eos_token_id"], ["rope_parameters", "rope_scaling"]),
        ("tiny_gpt2", "gpt2", GPT2_DIMS, ["layer_norm_epsilon"],
         ["tie_word_embeddings", "scale_attn_weights", "scale_attn_by_inverse_layer_idx"],
         ["model_type", "activation_function"], ["bos_token_id", "eos_token_id"], []),
    ]:
        cfg = json.loads(fixture_bytes(src, "config.json"))

        def add(key: str, value: Any, expect: str, *, delete: bool = False, _cfg: Any = cfg,
                _src: str = src, _base: str = base, _cli_key: str = dims[2],
                needle: str | None = None) -> None:
            new = dict(_cfg)
            if delete:
                new.pop(key, None)
            else:
                new[key] = value
            label = "deleted" if delete else json.dumps(value)[:20]
            cases.append(Case(f"cfg-{_src}-{key}={label}", hf_folder(_src, config=new), expect,
                              base=_base, needle=needle if needle is not None else
                              "" if delete or expect != "error" else key,
                              cli=key == _cli_key and value == 0))

        for key in dims:
            for v in INVALID_INTS:
                add(key, v, "error")
            add(key, None, "any", delete=True)
        for key in floats:
            for v in INVALID_FLOATS:
                add(key, v, "error")
            add(key, None, "any", delete=True)
        for key in bools:
            for v in INVALID_BOOLS:
                add(key, v, "error")
            add(key, None, "ok")
        for key in strs:
            for v in INVALID_STRS:
                add(key, v, "error")
        for key in ids:
            for v in INVALID_IDS:
                add(key, v, "error")
            for v in OUTSIDE_IDS if key == "eos_token_id" else OUTSIDE_IDS[:3]:
                add(key, v, "ok")
        for key in objs:
            for v in ["two", [4], 5, {"rope_type": "linear"}, {"type": "yarn"}, {"rope_theta": "x"}]:
                add(key, v, "error")
        # divisibility
        if src == "tiny_llama":
            add("num_attention_heads", 3, "error")
            add("num_key_value_heads", 3, "error")
            add("head_dim", 15, "error")
            add("num_attention_heads", 8, "error", needle="q_proj")  # shapes disagree
        else:
            add("n_head", 3, "error")
            add("n_head", 5, "error")
        # fields edge-rt does not read: any value runs exactly as before
        read = {*dims, *floats, *bools, *strs, *ids, *objs, "rope_theta", "architectures",
                "num_key_value_heads", "n_inner", "model_type"}
        for key in sorted(set(cfg) - read):
            for v in RUNS_ANYWAY[:: 3 if src == "tiny_gpt2" else 2]:
                add(key, v, "ok")
        add("architectures", "two", "ok")
    for label, raw in [("empty", b""), ("not-json", b"{oops"), ("list", b"[1]"), ("null", b"null"),
                       ("deep", b"[" * 100_000 + b"]" * 100_000), ("bad-utf8", b'{"a": "\xff"}'),
                       ("nan-eps", fixture_bytes("tiny_llama", "config.json").replace(
                           b'"rms_norm_eps": 1e-06', b'"rms_norm_eps": NaN'))]:
        cases.append(Case(f"cfg-raw-{label}", hf_folder("tiny_llama", config_raw=raw), "error", base="llama",
                          cli=label == "deep"))
    return cases


# -- special files, folders, pickles -----------------------------------------------------------------

MARKER_DIR = Path(tempfile.gettempdir())


class Bomb:
    """Unpickling this creates the file at ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def marker_path(d: Path) -> Path:
    return d / "UNPICKLED-MARKER"


def special_cases() -> list[Case]:
    cases = []

    def fifo(name: str, folder_src: str | None = None) -> Maker:
        def make(d: Path) -> Path:
            if folder_src is None:
                p = d / name
                os.mkfifo(p)
                return p
            folder = hf_folder(folder_src)(d)
            (folder / name).unlink(missing_ok=True)
            os.mkfifo(folder / name)
            return folder

        return make

    def link(target: str, name: str = "model.gguf", folder_src: str | None = None) -> Maker:
        def make(d: Path) -> Path:
            if folder_src is None:
                (d / name).symlink_to(target)
                return d / name
            folder = hf_folder(folder_src)(d)
            (folder / name).unlink(missing_ok=True)
            (folder / name).symlink_to(target)
            return folder

        return make

    def sock(name: str) -> Maker:
        def make(d: Path) -> Path:
            # AF_UNIX paths are limited to 107 bytes: use the case folder when it is short enough
            short = d
            if len(str(d)) >= 90:
                short = Path(tempfile.mkdtemp(prefix="ert", dir="/tmp"))
                _SOCKET_DIRS.append(short)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            _SOCKETS.append(s)
            s.bind(str(short / name))
            return short / name

        return make

    def plain(name: str, data: bytes) -> Maker:
        def make(d: Path) -> Path:
            (d / name).write_bytes(data)
            return d / name

        return make

    def direct(target: str) -> Maker:
        return lambda d: Path(target)

    def folder_with(files: dict[str, bytes], name: str = "folder") -> Maker:
        def make(d: Path) -> Path:
            f = d / name
            f.mkdir()
            for file, data in files.items():
                (f / file).write_bytes(data)
            return f

        return make

    for name in ("model.gguf", "model.safetensors", "config.json", "weights"):
        cases.append(Case(f"fifo-{name}", fifo(name), "error", needle="FIFO", cli=name == "model.gguf"))
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        cases.append(Case(f"fifo-in-folder-{name}", fifo(name, "tiny_llama"), "error", needle="FIFO",
                          cli=name == "tokenizer.json"))
    for target in ("/dev/zero", "/dev/null", "/dev/urandom", "/dev/tty"):
        if os.path.exists(target):
            cases.append(Case(f"symlink-to-{target}", link(target), "error", needle="device",
                              cli=target == "/dev/zero"))
            cases.append(Case(f"folder-symlink-{target}-as-weights",
                              link(target, "model.safetensors", "tiny_llama"), "error", needle="device"))
            cases.append(Case(f"direct-{target}", direct(target), "error", needle="device"))
    cases.append(Case("symlink-to-config-device", link("/dev/zero", "config.json", "tiny_llama"), "error"))
    cases.append(Case("socket", sock("m.gguf"), "error", needle="socket", cli=True))
    cases.append(Case("broken-symlink", link("/nonexistent/x.gguf"), "error", needle="does not exist"))

    def loop(d: Path) -> Path:
        (d / "a.gguf").symlink_to(d / "b.gguf")
        (d / "b.gguf").symlink_to(d / "a.gguf")
        return d / "a.gguf"

    cases.append(Case("symlink-loop", loop, "error"))
    cases.append(Case("missing-path", lambda d: d / "nope.gguf", "error", needle="does not exist"))
    cases.append(Case("empty-gguf", plain("model.gguf", b""), "error", needle="empty", cli=True))
    cases.append(Case("empty-safetensors", hf_folder("tiny_llama", weights=b""), "error", needle="empty",
                      base="llama"))
    cases.append(Case("empty-config", hf_folder("tiny_llama", config_raw=b""), "error", base="llama"))
    cases.append(Case("empty-folder", folder_with({}), "error", needle="config.json"))
    cases.append(Case("folder-two-ggufs", folder_with({"a.gguf": base_gguf(), "b.gguf": base_gguf()}),
                      "error"))
    cases.append(Case("folder-one-gguf", folder_with({"a.gguf": base_gguf()}), "ok"))
    cases.append(Case("folder-named-gguf", folder_with({}, "m.gguf"), "error"))
    cases.append(Case("folder-without-weights", hf_folder("tiny_llama", drop=("model.safetensors",)),
                      "error", base="llama"))
    cases.append(Case("text-file", plain("notes.gguf", b"hello\n" * 20), "error"))
    cases.append(Case("safetensors-direct", lambda d: hf_folder("tiny_llama")(d) / "model.safetensors",
                      "error", needle="folder"))
    cases.append(Case("config-json-direct", lambda d: hf_folder("tiny_llama")(d) / "config.json", "ok",
                      base="llama"))

    def sparse_config(d: Path) -> Path:
        folder = hf_folder("tiny_llama")(d)
        with open(folder / "config.json", "r+b") as f:
            f.truncate(1 << 30)  # 1 GiB, sparse: refused by its size before it is read
        return folder

    cases.append(Case("huge-config", sparse_config, "error", base="llama"))
    # pickles: never unpickled
    for label, where in [("bin-direct", "pytorch_model.bin"), ("pt-direct", "model.pt"),
                         ("pickle-named-gguf", "model.gguf"), ("folder-with-bin", "folder"),
                         ("hf-folder-bin-only", "hf")]:
        cases.append(Case(f"pickle-{label}", pickle_maker(where), "error", needle="pickle",
                          cli=label == "hf-folder-bin-only"))
    return cases


_SOCKETS: list[socket.socket] = []
_SOCKET_DIRS: list[Path] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    """Close the sockets a case bound (and remove the short folders made for them) after each test."""
    yield
    while _SOCKETS:
        _SOCKETS.pop().close()
    while _SOCKET_DIRS:
        shutil.rmtree(_SOCKET_DIRS.pop(), ignore_errors=True)


def pickle_maker(where: str) -> Maker:
    def make(d: Path) -> Path:
        bomb = pickle.dumps(Bomb(str(marker_path(d))))
        if where == "folder":
            (d / "f").mkdir()
            (d / "f" / "pytorch_model.bin").write_bytes(bomb)
            return d / "f"
        if where == "hf":
            folder = hf_folder("tiny_llama", drop=("model.safetensors",))(d)
            (folder / "pytorch_model.bin").write_bytes(bomb)
            return folder
        (d / where).write_bytes(bomb)
        return d / where

    return make


ALL_CASES = [*gguf_cases(), *safetensors_cases(), *config_cases(), *special_cases()]
CLI_CASES = [c for c in ALL_CASES if c.cli]


def test_corpus_is_large_and_ids_are_unique() -> None:
    assert len(ALL_CASES) >= 200
    ids = [c.id for c in ALL_CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1][:5]
    assert len(CLI_CASES) >= 12


def test_the_pickle_bomb_would_fire(tmp_path: Path) -> None:
    """The marker check below means something: unpickling the bomb does create the file."""
    pickle.loads(pickle.dumps(Bomb(str(marker_path(tmp_path)))))
    assert marker_path(tmp_path).exists()


# -- running ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return load_registry()


def run_ids(model: Path, registry: PluginRegistry) -> list[int]:
    m = load_model(model, backend="numpy", max_context=32, weight_cache=False, notify=None,
                   registry=registry)
    try:
        return m.generate(PROMPT, max_tokens=MAX_TOKENS).result().ids
    finally:
        m.close()


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory, registry: PluginRegistry) -> dict[str, list[int]]:
    d = tmp_path_factory.mktemp("base")
    (d / "q8.gguf").write_bytes(base_gguf("Q8_0"))
    (d / "f32.gguf").write_bytes(base_gguf("F32"))
    return {
        "gguf": run_ids(d / "q8.gguf", registry),
        "gguf_f32": run_ids(d / "f32.gguf", registry),
        "llama": run_ids(mh.fixture("tiny_llama"), registry),
        "gpt2": run_ids(mh.fixture("tiny_gpt2"), registry),
        "bf16": run_ids(mh.fixture("tiny_llama_bf16"), registry),
    }


def outcome(model: Path, registry: PluginRegistry) -> tuple[list[int] | None, BaseException | None, float]:
    """(ids, None) for a run, (None, error) for an exception; fails when it takes over 5 s."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["ids"] = run_ids(model, registry)
        except BaseException as exc:
            result["error"] = exc

    start = time.perf_counter()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(CASE_SECONDS)
    took = time.perf_counter() - start
    assert not worker.is_alive(), f"{model} still loading after {CASE_SECONDS} s (a hang)"
    return result.get("ids"), result.get("error"), took


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_library_load_path(case: Case, tmp_path: Path, registry: PluginRegistry,
                           baselines: dict[str, list[int]]) -> None:
    model = case.make(tmp_path)
    ids, error, took = outcome(model, registry)
    assert took < CASE_SECONDS
    assert not marker_path(tmp_path).exists(), "a pickle was unpickled"
    if error is not None:
        assert isinstance(error, EdgeRTError), f"{type(error).__name__}: {error}"
        text = str(error)
        assert "\n" not in text and text.endswith("."), text
        assert case.expect != "ok", f"a valid input was refused: {text}"
        assert case.needle in text, (case.needle, text)
    else:
        assert case.expect != "error", f"accepted and ran: {ids}"
        assert ids == baselines[case.base], "a run gave other tokens than the unmodified file"


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_prints_one_error_line(case: Case, tmp_path: Path) -> None:
    model = case.make(tmp_path)
    env = {**os.environ, "EDGERT_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path / "home")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "edgert_core", "run", "--model", str(model), "--prompt-ids", "1,5,9",
         "--max-tokens", "2", "--backend", "numpy"],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )
    took = time.perf_counter() - start
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert case.needle in lines[0]
    assert not marker_path(tmp_path).exists()
    assert took < 30, f"edge-rt run took {took:.1f} s"


def test_special_files_are_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        registry: PluginRegistry) -> None:
    """A FIFO is refused from its stat alone: no open() of it happens (an open would block)."""
    fifo_path = tmp_path / "m.gguf"
    os.mkfifo(fifo_path)
    opened: list[str] = []
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    with pytest.raises(EdgeRTError, match="FIFO"):
        load_model(fifo_path, registry=registry, notify=None)
    assert str(fifo_path) not in opened
    assert stat.S_ISFIFO(os.stat(fifo_path).st_mode)
