"""The NEON kernels for real: cross-compiled for Cortex-A72 and run under qemu-aarch64 by
tests/arm/run_qemu.sh (needs gcc-aarch64-linux-gnu and qemu-user-static, which .ci/run installs).

Without the tools this test skips, unless EDGERT_REQUIRE_ARM=1 (then it fails)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "arm" / "run_qemu.sh"
TOOLS = ("aarch64-linux-gnu-gcc", "qemu-aarch64-static")


@pytest.mark.arm_cross
@pytest.mark.slow
def test_neon_kernels_under_qemu_cortex_a72() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        if os.environ.get("EDGERT_REQUIRE_ARM") == "1":
            pytest.fail(f"EDGERT_REQUIRE_ARM=1 but {', '.join(missing)} not installed")
        pytest.skip(f"needs {', '.join(missing)} (apt-get install gcc-aarch64-linux-gnu qemu-user-static)")
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dotprod=no, best path=neon\n" in proc.stdout  # cortex-a72: runtime check says no SDOT
    assert "ARM SUMMARY: PASS" in proc.stdout
