"""The AVX2 q8 activation quantizer gives the scalar one's blocks byte for byte (tests/x86/
quantize_harness.c, built with the extension's C sources and run natively; x86-64 with the
x86-avx2 path and a C compiler only)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from edgert_neon_kernels import kernels

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
SOURCES = ["dispatch.c", "ops.c", "kernels_portable.c", "kernels_neon.c", "kernels_avx2.c",
           "kernels_avx512.c"]


def test_avx2_quantizer_equals_scalar(tmp_path: Path) -> None:
    if platform.machine() not in {"x86_64", "AMD64"} or not kernels.paths().get("x86-avx2"):
        pytest.skip("needs an x86-64 CPU the x86-avx2 path runs on")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler")
    exe = tmp_path / "quantize_harness"
    cmd = [cc, "-O2", "-std=c11", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror",
           f"-I{CSRC}", str(ROOT / "tests" / "x86" / "quantize_harness.c"),
           *(str(CSRC / s) for s in SOURCES), "-lm", "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "bad=0", proc.stdout + proc.stderr
