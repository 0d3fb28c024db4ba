"""The first hour of a new user: what the commands print when something is missing or mistyped,
the units and wording of their summaries, and the README's examples.

Commands run in this process through ``edgert_core.cli.app.main`` (the console script), with
``EDGERT_CACHE`` pointing at a temporary folder; a tiny llama GGUF stands in for SmolLM2 where a
pulled model is needed.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import model_helpers as mh
import pytest
from table_helpers import parse_table

from edgert_core.backends.base import usable_cpus
from edgert_core.benchmark import BenchConfig, BenchResult, _add_ratios, parse_run, summarize
from edgert_core.budget import format_bytes
from edgert_core.errors import EdgeRTError
from edgert_core.generate import GenerationStats
from edgert_core.inspection import ALL_RESIDENT
from edgert_core.pull import model_path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MIB = 1 << 20
#: A memory figure as edge-rt prints it (see format_bytes): "512 B", "45.0 KiB", "1.0 GiB".
SIZE = re.compile(r"\b\d+(?:\.\d+)? ?(B|KiB|MiB|GiB|KB|MB|GB|kB)\b")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama fixture as a GGUF file with its tokenizer (about 0.5 MiB)."""
    return mh.write_gguf(mh.fixture("tiny_llama"), tmp_path_factory.mktemp("m") / "tiny.gguf")


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh EDGERT_CACHE in which nothing has been pulled."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("EDGERT_CACHE", str(cache))
    return cache


@pytest.fixture
def pulled_cache(empty_cache: Path, tiny_gguf: Path) -> Path:
    """An EDGERT_CACHE in which "smollm2" has been pulled (the tiny GGUF in its place)."""
    dest = model_path("smollm2")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(tiny_gguf.read_bytes())
    return empty_cache


class Tty(io.StringIO):
    """Standard input that says it is a terminal."""

    def isatty(self) -> bool:
        return True


cli = mh.run_cli


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# -- benchmark: optional dependencies first, results always ---------------------------------------


def _rows() -> list[BenchResult]:
    def report(tps: float, peak_mib: int, strategy: str) -> str:
        return json.dumps({"backend": "numpy", "strategy": strategy, "groups": [[0], [1]],
                           "peak_rss_bytes": peak_mib * MIB, "baseline_rss_bytes": 30 * MIB,
                           "decode_tokens_per_s": tps, "generated_tokens": 3,
                           "generated_ids": [1, 2, 3]})

    rows = [parse_run(BenchConfig("auto", None), 0, report(40.0, 330, "resident"), ""),
            parse_run(BenchConfig("sequential", "64M"), 0, report(10.0, 90, "sequential"), "")]
    _add_ratios(rows)
    return rows


@pytest.fixture
def swept(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The benchmark's sweep replaced by one that records its calls and returns :func:`_rows`."""
    import edgert_core.cli.benchmark_cmd as bench

    calls: list[object] = []

    def sweep(*args: object, **kwargs: object) -> list[BenchResult]:
        calls.append(args)
        return _rows()

    monkeypatch.setattr(bench, "run_sweep", sweep)
    return calls


def test_benchmark_plot_without_matplotlib_fails_before_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    swept: list[object],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" raises ImportError
    code, _out, err = cli(["benchmark", "--model", "synthetic-gpt2-small", "--sweep-memory", "64M",
                           "--strategies", "sequential", "--plot", str(tmp_path / "s.png")],
                          monkeypatch, capsys)
    assert code == 2
    assert swept == [], "the sweep ran although the plot could never be drawn"
    [line] = error_lines(err)
    assert "matplotlib" in line and "pip install 'edgert-core[plot]'" in line
    assert "Traceback" not in err and not (tmp_path / "s.png").exists()


def test_benchmark_prints_the_table_when_the_plot_fails_after_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import edgert_core.cli.benchmark_cmd as bench

    def broken_plot(results: list[BenchResult], path: str) -> None:
        raise EdgeRTError(f"Could not write the plot to {path}: disk full.")

    monkeypatch.setattr(bench, "run_sweep", lambda *a, **k: _rows())
    monkeypatch.setattr(bench, "check_plotting", lambda: None)
    monkeypatch.setattr(bench, "plot", broken_plot)
    code, out, err = cli(["benchmark", "--model", "synthetic-gpt2-small", "--sweep-memory", "64M",
                          "--strategies", "sequential", "--plot", str(tmp_path / "s.png")],
                         monkeypatch, capsys)
    assert code == 2
    assert "disk full" in error_lines(err)[0]
    [row] = [r for r in parse_table(out, "strategy") if r["strategy"] == "sequential"]  # made it out
    assert (row["budget"], row["groups"], row["tok/s"], row["x base"]) == ("64M", "2", "10.0", "0.25")
    assert "fastest: sequential @ 64M" in out


def test_benchmark_csv_folder_missing_fails_before_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    swept: list[object],
) -> None:
    code, _out, err = cli(["benchmark", "--csv", str(tmp_path / "nope" / "s.csv")], monkeypatch, capsys)
    assert code == 2 and swept == []
    assert "--csv" in error_lines(err)[0] and "does not exist" in err


@pytest.mark.slow
def test_benchmark_real_sweep_prints_table_then_reports_the_csv_failure(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """A real sweep (two fresh processes) whose CSV cannot be written (the path is a folder): the
    table is printed, then one error line, exit 2."""
    folder = tmp_path / "taken.csv"
    folder.mkdir()
    code, out, err = cli(["benchmark", "--model", str(tiny_gguf), "--backend", "numpy",
                          "--sweep-memory", "2.5M", "--strategies", "sequential", "--max-tokens", "2",
                          "--max-context", "32", "--csv", str(folder)], monkeypatch, capsys)
    assert code == 2, err
    assert "[2/2]" in err  # both processes ran
    [row] = [r for r in parse_table(out, "strategy") if r["strategy"] == "sequential"]
    assert row["budget"] == "2.5M" and int(row["groups"]) >= 1 and float(row["tok/s"]) > 0, row
    assert SIZE.fullmatch(row["peak RSS"]), row
    [line] = error_lines(err)
    assert "Could not write the CSV" in line and str(folder) in line


# -- one unit: MiB (powers of 1024) everywhere -----------------------------------------------------


def test_benchmark_table_uses_the_shared_formatter(capsys: pytest.CaptureFixture[str]) -> None:
    from edgert_core.cli.benchmark_cmd import _print_table

    rows = _rows()
    _print_table(rows, summarize(rows))
    out = capsys.readouterr().out
    seq = rows[1]
    assert seq.peak_rss_bytes is not None and seq.peak_over_baseline_bytes is not None
    [row] = [r for r in parse_table(out, "strategy") if r["strategy"] == "sequential"]
    assert row["peak RSS"] == format_bytes(seq.peak_rss_bytes)  # 90.0 MiB
    assert row["over base"] == format_bytes(seq.peak_over_baseline_bytes)  # 60.0 MiB
    units = {m.group(1) for m in SIZE.finditer(out)}
    assert units and units <= {"B", "KiB", "MiB", "GiB"}, units
    assert " MB" not in out


def test_inspect_prints_every_size_in_powers_of_1024(
    tiny_gguf: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["inspect", "--model", str(tiny_gguf), "--backend", "numpy", "-b", "600K",
                          "--max-context", "64"], monkeypatch, capsys)
    assert code == 0, err
    units = {m.group(1) for m in SIZE.finditer(out)}
    assert units <= {"B", "KiB", "MiB", "GiB"}, units
    assert "bytes/token" not in out
    _, js, _ = cli(["inspect", "--model", str(tiny_gguf), "--backend", "numpy", "--json"],
                   monkeypatch, capsys)
    kv = json.loads(js.strip().splitlines()[-1])["model"]["kv_bytes_per_token"]
    assert f"KV cache {format_bytes(kv)}/token" in out


# -- run's summaries: the figure the budget bounds, and plans that keep everything ----------------


def _parse_size(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}[unit]


def test_memory_summary_puts_the_peak_over_baseline_next_to_the_budget() -> None:
    from edgert_core.cli.run_cmd import _memory_summary

    stats = GenerationStats(peak_rss_bytes=int(179.5 * MIB), baseline_rss_bytes=int(84.5 * MIB))
    line = _memory_summary(stats, 128 * MIB)
    assert line.startswith("peak over baseline 95.0 MiB (budget 128.0 MiB)"), line
    assert "peak RSS 179.5 MiB" in line
    assert _memory_summary(stats, None).startswith("peak RSS 179.5 MiB (95.0 MiB over")


def test_budgeted_run_summary_shows_the_bounded_figure(
    tiny_gguf: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = cli(["run", "--model", str(tiny_gguf), "--backend", "numpy", "-b", "2.5M",
                           "--strategy", "sequential", "--prompt-ids", "1,2,3", "-n", "2",
                           "--max-context", "32"], monkeypatch, capsys)
    assert code == 0, err
    size = r"([\d.]+ (?:B|KiB|MiB|GiB))"
    match = re.search(rf"peak over baseline {size} \(budget 2\.5 MiB\); process peak RSS "
                      rf"{size}, baseline {size}", err)
    assert match, err
    over, peak, base = (_parse_size(match.group(i)) for i in (1, 2, 3))
    assert over == pytest.approx(peak - base, abs=0.1 * MIB)  # the figure the budget bounds


@pytest.mark.parametrize(("budget", "resident"), [("1G", True), ("2.5M", False)])
def test_roomy_budget_says_all_resident_in_run_and_inspect(
    budget: str, resident: bool, tiny_gguf: Path, empty_cache: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # 2 + 30 tokens fill the context, so run plans for it as inspect does (it would size the KV
    # cache for a shorter run)
    code, _out, err = cli(["run", "--model", str(tiny_gguf), "--backend", "numpy", "-b", budget,
                           "--strategy", "speculative-prefetch", "--prompt-ids", "1,2", "-n", "30",
                           "--max-context", "32"], monkeypatch, capsys)
    assert code == 0, err
    assert (f"speculative-prefetch: {ALL_RESIDENT}" in err) is resident, err
    code, out, err = cli(["inspect", "--model", str(tiny_gguf), "--backend", "numpy", "-b", budget,
                          "--max-context", "32"], monkeypatch, capsys)
    assert code == 0, err
    note = next((x for x in out.splitlines() if x.endswith(ALL_RESIDENT)), "")
    assert ("speculative-prefetch" in note) is resident, out


# -- run and chat without --model / --prompt -------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--prompt-ids", "1,2,3"], ["--prompt", "Hello"]])
def test_run_without_model_and_nothing_pulled_says_how_to_get_it(
    extra: list[str], empty_cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["run", *extra, "-n", "2"], monkeypatch, capsys)
    assert code == 2
    assert out == ""  # nothing ran: no synthetic model in its place
    assert err.count("\n") == 1, err
    assert err.startswith("error:") and "edge-rt pull smollm2" in err
    assert "synthetic" in err  # and how to ask for the test model by name


def test_run_without_model_uses_the_pulled_smollm2(
    pulled_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["run", "--backend", "numpy", "--prompt-ids", "1,2,3", "-n", "2",
                          "--max-context", "32", "--json"], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["synthetic"] is False and report["model_format"] == "gguf"
    assert f"using the pulled smollm2 ({model_path('smollm2')})" in err


def test_chat_without_model_and_nothing_pulled_is_one_error(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = cli(["chat"], monkeypatch, capsys, stdin=io.StringIO("hi\n"))
    assert code == 2 and len(error_lines(err)) == 1 and "edge-rt pull smollm2" in err


def test_synthetic_model_runs_only_when_named(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = cli(["run", "--model", "synthetic-gpt2-small", "--prompt-ids", "1,2", "-n", "1",
                           "--max-context", "8"], monkeypatch, capsys)
    assert code == 0, err
    assert "running the synthetic model synthetic-gpt2-small" in err


def test_run_without_prompt_says_which_prompt(
    pulled_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgert_core.cli.run_cmd import DEFAULT_PROMPT

    code, _out, err = cli(["run", "--backend", "numpy", "-n", "2", "--max-context", "64"],
                          monkeypatch, capsys)
    assert code == 0, err
    assert f"no --prompt given: using the prompt {DEFAULT_PROMPT!r}" in err
    code, _out, err = cli(["run", "--backend", "numpy", "-n", "2", "--max-context", "64", "-p", "Hi"],
                          monkeypatch, capsys)
    assert code == 0 and "no --prompt given" not in err


# -- chat: prompts only on a terminal ---------------------------------------------------------------


def test_piped_chat_prints_no_prompts_and_skips_blank_lines(
    pulled_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["chat", "--backend", "numpy", "-n", "3", "--max-context", "256"]
    code, out, err = cli(args, monkeypatch, capsys, stdin=io.StringIO("first\n\nsecond\nthird\n"))
    assert code == 0, err
    assert ">" not in err and "type a message" not in err
    assert out.count("\n") == 3  # one reply per non-empty line; the blank line did not end it
    code, out, err = cli(args, monkeypatch, capsys, stdin=Tty("first\nsecond\n\nthird\n"))
    assert code == 0, err
    assert err.count("> ") == 3 and "type a message" in err  # a person: prompt, empty line ends
    assert out.count("\n") == 2


# -- messages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--bogus"], "No such option: --bogus"),
    (["run", "--max-tokens", "many"], "'--max-tokens'"),
    (["nocommand"], "No such command"),
    (["pull"], "Missing argument"),
])
def test_usage_errors_are_lowercase_error_lines(
    args: list[str], needle: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = cli(args, monkeypatch, capsys)
    assert code == 2
    [line] = error_lines(err)
    assert needle in line
    assert "Error" not in err and "Traceback" not in err and "╭" not in err
    assert "--help" in err  # where to look next


def test_error_prefix_is_lowercase_in_every_module() -> None:
    """No user-facing string in the package starts a message with ``Error:``."""
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "edgert_core").rglob("*.py")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"""["']Error: """, line)]
    assert hits == []


@pytest.mark.parametrize(("args", "option"), [
    (["--max-tokens", "0"], "--max-tokens must be at least 1, got 0"),
    (["--max-context", "1"], "--max-context must be at least 2, got 1"),
    (["--prefill-chunk", "0"], "--prefill-chunk must be at least 1, got 0"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--temperature", "-1"], "--temperature must be 0 (greedy) or more, got -1.0"),
    (["--top-k", "-2"], "--top-k must be 0 (off) or more, got -2"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
])
def test_cli_errors_name_the_option_the_user_typed(
    args: list[str], option: str, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = cli(["run", "--model", str(tiny_gguf), "--prompt-ids", "1", *args],
                          monkeypatch, capsys)
    assert code == 2
    [line] = error_lines(err)
    assert option in line and "max_tokens" not in line


def test_option_from_a_preset_is_named_as_the_preset_key(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text("max_tokens = 0\n")
    code, _out, err = cli(["run", "-c", str(preset), "--model", str(tiny_gguf), "--prompt-ids", "1"],
                          monkeypatch, capsys)
    assert code == 2
    assert f"max_tokens in {preset} must be at least 1" in error_lines(err)[0]
    code, _out, err = cli(["benchmark", "-c", str(preset)], monkeypatch, capsys)
    assert code == 2 and f"max_tokens in {preset} must be at least 1" in err


def test_unknown_strategy_mentions_auto(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgert_core.plan import PlanningContext
    from edgert_core.planner import plan_with
    from edgert_core.plugins import load_registry
    from edgert_core.synthetic import SyntheticModel

    code, _out, err = cli(["run", "--model", str(tiny_gguf), "--strategy", "fastest",
                           "--prompt-ids", "1"], monkeypatch, capsys)
    assert code == 2
    [line] = error_lines(err)
    with pytest.raises(EdgeRTError) as info:  # the library says the same
        plan_with(load_registry(), "fastest", SyntheticModel("gpt2-small").layout(),
                  PlanningContext(None))
    for message in (line, str(info.value)):
        assert "Unknown strategy 'fastest'" in message
        assert "sequential" in message and "auto" in message


def test_preset_threads_above_the_cores_warns(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    cores = usable_cpus()
    preset = tmp_path / "p.toml"
    preset.write_text(f"threads = {cores + 2}\n")
    args = ["run", "-c", str(preset), "--model", str(tiny_gguf), "--backend", "numpy",
            "--prompt-ids", "1,2", "-n", "1", "--max-context", "16"]
    code, _out, err = cli(args, monkeypatch, capsys)
    assert code == 0, err
    [warning] = [x for x in err.splitlines() if "warning" in x]
    assert f"threads in {preset} asks for {cores + 2} threads" in warning
    assert f"{cores} core" in warning
    preset.write_text(f"threads = {cores}\n")
    code, _out, err = cli(args, monkeypatch, capsys)
    assert code == 0 and "warning" not in err


def test_shipped_presets_warn_only_when_the_machine_is_smaller(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """configs/*.toml ask for 4 threads (a Pi 4): on a 2-core machine that is said, on a 4-core one
    it is not (the core count is patched; the preset's value is read from the shipped file)."""
    app_mod = importlib.import_module("edgert_core.cli.app")  # (the package's `app` is the Typer)

    preset = ROOT / "configs" / "constrained_2gb.toml"
    args = ["benchmark", "-c", str(preset), "--csv", "/nonexistent-folder/x.csv"]  # stops early
    for cores, warned in ((2, True), (4, False)):
        monkeypatch.setattr(app_mod, "usable_cpus", lambda n=cores: n)
        code, _out, err = cli(args, monkeypatch, capsys)
        assert code == 2  # the CSV folder, after the warning
        assert ("warning: threads in" in err) is warned, err


# -- README --------------------------------------------------------------------------------------


def test_readme_hi_example_uses_the_chat_template() -> None:
    text = README.read_text(encoding="utf-8")
    greetings = ('--prompt "Hi"', '--prompt "Hello"')  # chat turns, not text to continue
    lines = [x for x in text.splitlines()
             if x.startswith("edge-rt run") and any(g in x for g in greetings)]
    assert lines and all("--chat" in x for x in lines), lines


def test_readme_states_how_long_the_tests_take() -> None:
    text = README.read_text(encoding="utf-8")
    assert re.search(r"scripts/test\.sh.*about \S+ minutes", text), "test duration not stated"


def _readme_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    blocks: list[str] = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "load_model(" in b and "agenerate" in b)


@pytest.mark.slow
def test_readme_embedding_snippet_outputs_are_separate_lines(pulled_cache: Path) -> None:
    """The README's embedding snippet, run as written against the "pulled" model (the tiny GGUF):
    the chat answer ends up on a line of its own, not glued to the streamed haiku."""
    from edgert_core import load_model

    snippet = _readme_snippet()
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    model = load_model("smollm2", notify=None)
    chat = model.chat(system="You are concise.")
    answer = "".join(t.text for t in chat.send("What is the capital of France?", max_tokens=20))
    model.close()
    assert answer.strip(), "the tiny model gave an empty answer: the check below would be vacuous"
    assert proc.stdout.endswith("\n" + answer + "\n"), proc.stdout[-200:]


def test_run_chat_flag_applies_the_chat_template(
    tiny_gguf: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """``run --chat --prompt "Hi"`` (the README's example) sends the model's chat template with the
    user's turn and the assistant's cue; without ``--chat`` the prompt is the bare text."""
    from edgert_core import load_model

    def prompt_ids(*extra: str) -> list[int]:
        code, out, err = cli(["run", "--model", str(tiny_gguf), "--backend", "numpy", "-p", "Hi",
                              "-n", "1", "--json", *extra], monkeypatch, capsys)
        assert code == 0, err
        ids: list[int] = json.loads(out.strip().splitlines()[-1])["prompt_ids"]
        return ids

    model = load_model(tiny_gguf, backend="numpy", notify=None)
    assert model.tokenizer is not None
    expected = model.tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    model.close()
    assert prompt_ids("--chat") == expected
    assert prompt_ids() == model.tokenizer.encode("Hi")


def test_benchmark_of_a_model_not_pulled_fails_before_the_sweep(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    swept: list[object],
) -> None:
    code, _out, err = cli(["benchmark", "--sweep-memory", "64M"], monkeypatch, capsys)  # smollm2
    assert code == 2 and swept == []
    [line] = error_lines(err)
    assert "edge-rt pull smollm2" in line
