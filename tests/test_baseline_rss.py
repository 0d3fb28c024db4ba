"""The baseline RSS of ``edge-rt run`` (the process's VmRSS just before the first weight is read, as
``run --json`` reports it) and what the GGUF loader keeps once the tokenizer is built.

The baseline is an OS figure of a fresh ``edge-rt`` process, so it is a test and not a benchmark: a
memory figure does not depend on how busy the machine is. Issue 17 asks for at most 45 MiB on
SmolLM2; that target is not met (see ``REACHED_BYTES``), so what is reached today is checked as a
bound that catches a regression (the vocabulary kept as Python strings again is +9 MiB).
"""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import model_helpers as mh
import pytest

from edgert_core.loaders import open_model
from edgert_core.loaders.gguf_loader import (
    _TOKENIZER_ARRAYS,
    GGML_TYPE_CODES,
    GGUFModel,
    StringArray,
    ggml_type,
    read_header,
)
from edgert_core.memory.malloc import give_back_freed_memory
from edgert_core.testing import smollm2_for_tests

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
#: What this tree reaches, with room for what is not ours: 58.1-58.2 MiB measured in a checkout used
#: for a while (70.4 before typer was kept below 0.29, whose option parsing imports pydantic, +8.1 MiB;
#: sampling drew with numpy.random, +4.4; psutil was imported at start-up; 79.5-80.4 before the
#: vocabulary stayed bytes): the interpreter with numpy 25.4 MiB, importlib.metadata (entry points)
#: 3.2, the tokenizers library and SmolLM2's tokenizer ~13, the core, typer, the plugins, the rest. A
#: fresh clone with a fresh venv reads more: the shared libraries' file-backed pages (numpy's,
#: tokenizers', OpenBLAS's .so files, just written and hot in the page cache) are mapped in bigger
#: fault-around runs (63.7 MiB: +5.5 of RssFile, the same RssAnon), and `scripts/quickstart.sh`'s first
#: run in a fresh clone read 65.5. So the bound is 70 MiB: it catches the vocabulary kept as Python
#: strings again (+9 MiB) on a warm checkout; the modules a run must not import (pydantic,
#: numpy.random, gguf, rich) are checked by name below, which does not depend on page-cache state.
REACHED_BYTES = 70 * MIB


def _run_baseline(model: Path) -> int:
    done = subprocess.run(
        [*mh.edge_rt_command(), "run", "--model", str(model), "--backend", "neon", "--max-tokens", "1",
         "--prompt", "Hello", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "neon" and report["model_format"] == "gguf"
    baseline = report["baseline_rss_bytes"]
    assert isinstance(baseline, int) and baseline > 20 * MIB  # python and numpy alone take ~26
    assert report["peak_rss_bytes"] >= baseline
    return baseline


@pytest.fixture(scope="module")
def smollm2_baseline() -> int:
    pytest.importorskip("edgert_neon_kernels")
    return _run_baseline(smollm2_for_tests())


@pytest.mark.slow
def test_run_baseline_rss_stays_below_what_is_reached(smollm2_baseline: int) -> None:
    assert smollm2_baseline <= REACHED_BYTES, (
        f"baseline RSS {smollm2_baseline / MIB:.1f} MiB, more than {REACHED_BYTES / MIB:.0f} MiB"
    )


# -- freed heap memory goes back to the OS ---------------------------------------------------------


def _rss_anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status (not Linux)")


def test_freed_heap_pages_go_back_to_the_os() -> None:
    """Small blocks freed between blocks still in use stay in the process's RSS until
    ``give_back_freed_memory``; it returns them and leaves the blocks in use alone."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc: no malloc_trim")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n, size = 200_000, 100  # ~22 MiB of heap in small blocks
    blocks = [libc.malloc(size) for _ in range(n)]
    assert all(blocks)
    for b in blocks:
        ctypes.memset(b, 7, size)
    kept = blocks[::512]  # one block in use every ~56 KiB: no page run is free at the heap's top
    for i, b in enumerate(blocks):
        if i % 512:
            libc.free(b)
    before = _rss_anon_bytes()
    assert give_back_freed_memory()
    after = _rss_anon_bytes()
    assert before - after > 8 * MIB, f"{(before - after) / MIB:.1f} MiB given back"
    assert all(ctypes.string_at(b, size) == b"\x07" * size for b in kept)  # in use: untouched
    for b in kept:
        libc.free(b)


# -- the loader after the tokenizer is built ------------------------------------------------------


def _reachable(root: object, limit: int = 200_000) -> Iterator[object]:
    """Objects reachable from ``root`` through references, except modules and classes (bounded)."""
    seen = {id(root)}
    todo = [root]
    while todo and len(seen) < limit:
        obj = todo.pop()
        yield obj
        for ref in gc.get_referents(obj):
            if id(ref) in seen or isinstance(ref, type) or type(ref).__name__ == "module":
                continue
            seen.add(id(ref))
            todo.append(ref)


def _big_arrays(root: object, n: int) -> list[str]:
    return [f"{type(o).__name__} of {len(o)}" for o in _reachable(root)
            if isinstance(o, (list, tuple, dict, set, StringArray)) and len(o) >= n]


def test_the_loader_holds_no_vocabulary_once_the_tokenizer_is_built() -> None:
    source = open_model(smollm2_for_tests())
    assert isinstance(source, GGUFModel)
    md = source.header.metadata
    tokens = md["tokenizer.ggml.tokens"]
    merges = md["tokenizer.ggml.merges"]
    # before: the vocabulary is the file's bytes, not ~100k Python strings
    assert isinstance(tokens, StringArray) and len(tokens) == 49152
    assert isinstance(merges, StringArray) and len(merges) > 40_000
    assert tokens.nbytes + merges.nbytes < 3 * MIB
    assert tokens[0] == "<|endoftext|>" and tokens[-1] == list(tokens)[-1]
    before = _big_arrays(source, 10_000)
    assert f"StringArray of {len(tokens)}" in before and f"StringArray of {len(merges)}" in before
    assert not [o for o in _reachable(source) if isinstance(o, list) and len(o) >= 10_000
                and isinstance(o[0], str)]  # no list of strings (the token types: a list of ints)
    tok = source.tokenizer()
    assert tok is not None and tok.vocab_size == 49152
    assert tok.decode(tok.encode("The ship entered the port")) == "The ship entered the port"
    # after: the arrays are gone from the metadata and nothing the source holds is vocabulary-sized
    assert not set(_TOKENIZER_ARRAYS) & set(md)
    assert _big_arrays(source, 10_000) == []
    assert source.tokenizer() is tok  # built once
    source.close()


def test_string_arrays_read_as_the_gguf_package_reads_them(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "t.gguf", "F32")
    ours = read_header(path).metadata
    reader = gguf.GGUFReader(str(path))
    checked = 0
    for key, fld in reader.fields.items():
        if fld.types[:1] != [gguf.GGUFValueType.ARRAY] or fld.types[-1] != gguf.GGUFValueType.STRING:
            continue
        theirs = [bytes(fld.parts[i]).decode("utf-8", errors="replace") for i in fld.data]
        arr = ours[key]
        assert isinstance(arr, StringArray)
        assert list(arr) == theirs and arr == theirs and len(arr) == len(theirs)
        assert [arr[i] for i in range(-len(theirs), len(theirs))] == theirs * 2
        assert arr[1:4] == theirs[1:4]
        checked += 1
    assert checked >= 2  # tokens and merges at least
    with pytest.raises(IndexError):
        ours["tokenizer.ggml.tokens"][len(ours["tokenizer.ggml.tokens"])]


def test_the_loadable_type_table_agrees_with_the_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    for name, code in GGML_TYPE_CODES.items():
        qtype = gguf.GGMLQuantizationType(code)
        assert qtype.name == name
        assert ggml_type(code) == (name, *gguf.GGML_QUANT_SIZES[qtype])
    q6k = gguf.GGMLQuantizationType.Q6_K  # a type edge-rt does not load: looked up in gguf
    assert ggml_type(int(q6k)) == ("Q6_K", *gguf.GGML_QUANT_SIZES[q6k])
    assert ggml_type(9999) is None


def test_opening_a_gguf_file_from_the_cli_imports_neither_gguf_nor_rich(tmp_path: Path) -> None:
    path = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "t.gguf", "Q8_0")
    code = (
        "import json, sys\n"
        "import edgert_core.cli\n"
        "from edgert_core.loaders import open_model\n"
        f"open_model({str(path)!r}).validate().tokenizer()\n"
        "print(json.dumps([m for m in ('gguf', 'rich') if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    # the same probe sees them when they are imported, so an empty list means something
    done = subprocess.run([sys.executable, "-c", "import gguf, rich.table\n" + code],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["gguf", "rich"]


#: what ``edge-rt run`` has no use for, and what each cost a run's baseline when it was imported
NOT_FOR_A_RUN = ("gguf", "rich", "pydantic", "numpy.random")  # ~5, ~5, +8.1, +4.4 MiB


def test_a_whole_cli_run_imports_no_module_it_does_not_use(tmp_path: Path) -> None:
    """``edge-rt run`` with sampling (temperature 1, a seed) on a GGUF file, through the console
    script's ``main`` in a fresh interpreter: typer's pydantic (typer 0.29), numpy.random (sampling
    draws with the standard library), gguf and rich stay out of the process."""
    path = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "t.gguf", "Q8_0")
    code = (
        "import json, sys\n"
        "import edgert_core.cli\n"
        f"sys.argv = ['edge-rt', 'run', '--model', {str(path)!r}, '--backend', 'numpy',\n"
        "            '--prompt-ids', '5,6,7', '--max-tokens', '4', '--temperature', '1',\n"
        "            '--seed', '3', '--json']\n"
        "try:\n"
        "    edgert_core.cli.main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        f"print(json.dumps([m for m in {NOT_FOR_A_RUN!r} if m in sys.modules]))\n"
    )
    for preload, expected in (("", []), (f"import {', '.join(NOT_FOR_A_RUN)}\n", list(NOT_FOR_A_RUN))):
        done = subprocess.run([sys.executable, "-c", preload + code], capture_output=True,
                              text=True, cwd=ROOT, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        report, listed = done.stdout.strip().splitlines()[-2:]
        assert len(json.loads(report)["generated_ids"]) == 4
        # the probe sees the modules when they are imported, so an empty list means something
        assert json.loads(listed) == expected


def test_the_benchmark_table_shows_each_row_s_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    from table_helpers import parse_table

    from edgert_core.benchmark import BenchResult, summarize
    from edgert_core.budget import format_bytes
    from edgert_core.cli.benchmark_cmd import _print_table

    rows = [
        BenchResult("resident", None, None, groups=1, peak_rss_bytes=170 * MIB,
                    baseline_rss_bytes=68 * MIB + 300 * 1024, peak_over_baseline_bytes=101 * MIB,
                    decode_tokens_per_s=190.0),
        BenchResult("sequential", "32M", 32 * MIB, groups=30, peak_rss_bytes=99 * MIB,
                    baseline_rss_bytes=69 * MIB, peak_over_baseline_bytes=30 * MIB,
                    decode_tokens_per_s=30.0),
        BenchResult("sequential", "16M", 16 * MIB, error="budget too small"),
    ]
    _print_table(rows, summarize(rows))
    table = parse_table(capsys.readouterr().out, "strategy")
    assert [r["base RSS"] for r in table] == [format_bytes(68 * MIB + 300 * 1024),
                                              format_bytes(69 * MIB), "-"]
