"""Test-session isolation for every test of the repo (tests/ and plugins/*/tests/).

The suite must never write under the user's home: before any test is collected, ``HOME``,
``EDGERT_CACHE`` and the other cache variables point into one temporary folder for the session, and
subprocesses inherit them. A SmolLM2 file that the user has already pulled is reused read-only through
``EDGERT_SMOLLM2_GGUF`` (the tests only read it); otherwise the tests that need it fetch it into the
session's cache. At the end, the user's edge-rt cache is compared with its state at the start and the
session fails if a test changed it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_ISOLATED = ("HOME", "EDGERT_CACHE", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "HF_HOME",
             "MPLCONFIGDIR", "PIP_CACHE_DIR")
_SMOLLM2_MEMBER = Path("models") / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

_state: dict[str, object] = {}


def _user_cache() -> Path:
    env = os.environ.get("EDGERT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-rt"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (nanoseconds)."""
    if not root.is_dir():
        return {}
    out: dict[str, tuple[int, int]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def pytest_configure(config: pytest.Config) -> None:
    if "saved_env" in _state:  # pytester runs nest sessions in this process
        return
    user_cache = _user_cache()
    session_dir = Path(tempfile.mkdtemp(prefix="edgert-tests-"))
    _state.update(saved_env={k: os.environ.get(k) for k in (*_ISOLATED, "EDGERT_SMOLLM2_GGUF")},
                  session_dir=session_dir, user_cache=user_cache, before=_snapshot(user_cache))
    pulled = user_cache / _SMOLLM2_MEMBER
    if "EDGERT_SMOLLM2_GGUF" not in os.environ and pulled.is_file():
        os.environ["EDGERT_SMOLLM2_GGUF"] = str(pulled)  # read-only reuse of the user's copy
    for key in _ISOLATED:
        folder = session_dir / key.lower()
        folder.mkdir()
        os.environ[key] = str(folder)


def pytest_unconfigure(config: pytest.Config) -> None:
    if "saved_env" not in _state:
        return
    saved = _state.pop("saved_env")
    assert isinstance(saved, dict)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(str(_state.pop("session_dir")), ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    user_cache = _state.get("user_cache")
    if not isinstance(user_cache, Path):
        return
    before = _state.get("before")
    after = _snapshot(user_cache)
    if after != before:
        assert isinstance(before, dict)
        changed = sorted({*before, *after} - {k for k in before if before[k] == after.get(k)})
        print(f"\nerror: the test session changed the user's edge-rt cache {user_cache}: {changed[:10]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def pi4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable copy of the Raspberry Pi 4 tree shipped in ``tests/fixtures/pi4``, with the
    monitors' environment roots (``EDGERT_PROCFS_ROOT``, ``EDGERT_SYSFS_ROOT``) pointing into it: a
    test rewrites its files (never the shipped ones) to simulate pressure and heat."""
    from edgert_core.monitors import builtin

    tree = tmp_path / "pi4"
    shutil.copytree(Path(__file__).parent / "tests" / "fixtures" / "pi4", tree)
    monkeypatch.setenv("EDGERT_PROCFS_ROOT", str(tree / "proc"))
    monkeypatch.setenv("EDGERT_SYSFS_ROOT", str(tree / "sys"))
    monkeypatch.setattr(builtin, "ROOT", None)  # the roots, even if a test set a root before
    return tree
