"""The suite runs in a sandbox of its own: the repo's conftest.py points HOME and the caches at a
temporary folder before any test runs, so nothing a test (or a subprocess it starts) writes lands
under the user's home."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgert_core.pull import cache_dir
from edgert_core.weight_cache import cache_path


def test_home_and_caches_are_temporary() -> None:
    tmp = Path(tempfile.gettempdir()).resolve()
    for key in ("HOME", "EDGERT_CACHE", "XDG_CACHE_HOME", "HF_HOME", "PIP_CACHE_DIR"):
        assert tmp in Path(os.environ[key]).resolve().parents, key
    assert tmp in cache_dir().resolve().parents
    assert tmp in cache_path("m", (), "numpy").resolve().parents


def test_subprocesses_inherit_the_sandbox() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path; from edgert_core.pull import cache_dir;"
         "print(Path.home()); print(cache_dir())"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    home, cache = (Path(line) for line in out.stdout.split())
    assert home == Path(os.environ["HOME"]) and cache == Path(os.environ["EDGERT_CACHE"])
