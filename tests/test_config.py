"""TOML presets: the shipped ones load, bad ones fail naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgert_core.config import SCHEMA, load_preset
from edgert_core.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_three_presets_ship() -> None:
    names = {p.name for p in CONFIGS}
    assert {"rpi4_default.toml", "constrained_2gb.toml", "performance.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_presets_are_valid(path: Path) -> None:
    preset = load_preset(path)
    assert preset, f"{path} is empty"
    assert set(preset) <= set(SCHEMA)


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('memory_budgett = "1G"\n')
    with pytest.raises(ConfigError) as err:
        load_preset(f)
    assert "memory_budgett" in str(err.value)
    assert str(f) in str(err.value)


def test_wrong_type_names_key_and_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('max_context = "lots"\n')
    with pytest.raises(ConfigError) as err:
        load_preset(f)
    assert "max_context" in str(err.value) and str(f) in str(err.value)
    assert "integer" in str(err.value)


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("max_tokens = true\n")
    with pytest.raises(ConfigError, match="max_tokens"):
        load_preset(f)


def test_invalid_toml_is_one_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text("memory_budget = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_preset(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset(tmp_path / "nope.toml")


def test_list_of_non_strings_rejected(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("sweep_memory = [64, 128]\n")
    with pytest.raises(ConfigError, match="list of strings"):
        load_preset(f)


def test_threads_warning_only_above_the_cores() -> None:
    from edgert_core.config import threads_warning

    assert threads_warning(2, 2, "--threads") is None
    assert threads_warning(1, 4, "--threads") is None
    message = threads_warning(4, 2, "threads in configs/rpi4_default.toml")
    assert message is not None
    assert message.startswith("threads in configs/rpi4_default.toml asks for 4 threads")
    assert "2 cores" in message and "at most 2" in message
    assert "1 core;" in (threads_warning(3, 1, "--threads") or "")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_presets_ask_for_the_pi4_cores(path: Path) -> None:
    """The presets are for a Raspberry Pi 4 (4 cores); elsewhere the CLI warns about ``threads``."""
    assert load_preset(path).get("threads", 4) <= 4
