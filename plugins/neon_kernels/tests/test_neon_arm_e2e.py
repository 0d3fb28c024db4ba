"""ARM end to end: the real ``edge-rt run`` on an arm64 CPython under ``qemu-aarch64-static -cpu
cortex-a72`` (the Raspberry Pi 4's core, no dot-product), with this plugin's C extension
cross-compiled for aarch64, gives the same greedy tokens as the same command on this machine.

The arm64 CPython, numpy and edgert-core's other runtime dependencies come from the sysroot that
``scripts/arm_sysroot.sh`` builds (Debian's arm64 packages and PyPI's aarch64 wheels, cached; a
second run only checks a stamp). The repo's code is used from the source tree through PYTHONPATH;
this plugin's package is copied beside the cross-built extension into a temporary folder (the x86
build in the source tree is left alone), and each of the repo's distributions gets a ``.dist-info``
with its entry points from its pyproject.toml, so plugins are found as installed ones are.

Model: SmolLM2-135M-Instruct Q4_1 (its Q4_1 matrices and its Q8_0 output head run the NEON
kernels), greedy, fp32 activations (exact mode). Emulated, a token takes about 1.5 to 2.5 s on
the 2-core development machine, so the run is short: 24 tokens, 45 to 85 s (x86: 2 s).

Without the cross tools this test skips, unless EDGERT_REQUIRE_ARM=1 (as in .ci/run): then it fails.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from edgert_core.testing import smollm2_for_tests

PLUGIN = Path(__file__).resolve().parents[1]
REPO = PLUGIN.parents[1]
SYSROOT_SCRIPT = REPO / "scripts" / "arm_sysroot.sh"
CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64-static"
TOOLS = (CC, QEMU, "apt-get", "dpkg-deb")
CPU = "cortex-a72"
PYTHON = "usr/bin/python3.11"
EXT_SUFFIX = ".cpython-311-aarch64-linux-gnu.so"  # Debian arm64 CPython 3.11's EXT_SUFFIX

PROMPT = "The capital of France is"
N_TOKENS = 24
#: The same command on both machines: exact mode, greedy, no prepared-weights cache.
RUN_ARGS = ["run", "--prompt", PROMPT, "-n", str(N_TOKENS), "--temperature", "0", "--backend",
            "neon", "--activations", "f32", "--threads", "2", "--no-weight-cache", "--json"]

pytestmark = [pytest.mark.arm_cross, pytest.mark.slow]


def unavailable(reason: str) -> None:
    """Skip, or fail where EDGERT_REQUIRE_ARM=1."""
    if os.environ.get("EDGERT_REQUIRE_ARM") == "1":
        pytest.fail(f"EDGERT_REQUIRE_ARM=1 but {reason}")
    pytest.skip(reason)


def build_sysroot() -> Path:
    """The arm64 sysroot (built by scripts/arm_sysroot.sh, or found up to date)."""
    proc = subprocess.run(["bash", str(SYSROOT_SCRIPT)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        unavailable(f"scripts/arm_sysroot.sh failed ({proc.returncode}): {proc.stderr[-2000:]}")
    root = Path(proc.stdout.strip().splitlines()[-1])
    assert (root / PYTHON).is_file(), proc.stdout + proc.stderr
    return root


def extension_sources() -> list[str]:
    """The C sources setup.py builds the extension from (its ``SOURCES`` list)."""
    tree = ast.parse((PLUGIN / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "SOURCES" for t in node.targets
        ):
            sources: list[str] = ast.literal_eval(node.value)
            return sources
    raise AssertionError("setup.py has no SOURCES list")


def cross_build_package(sysroot: Path, out: Path) -> Path:
    """A copy of the ``edgert_neon_kernels`` package in ``out`` with the extension built for aarch64
    (Cortex-A72, so the NEON path without dot-product is the baseline) against the arm64 headers."""
    pkg = out / "edgert_neon_kernels"
    shutil.copytree(PLUGIN / "edgert_neon_kernels", pkg, ignore=shutil.ignore_patterns(
        "*.so", "__pycache__"))
    cmd = [CC, f"-mcpu={CPU}", "-O3", "-std=c11", "-pthread", "-Wall", "-Wextra",
           "-Wno-unused-parameter", *os.environ.get("EDGERT_CFLAGS", "").split(), "-fPIC", "-shared",
           "-I", str(PLUGIN / "csrc"), "-I", str(sysroot / "usr/include/python3.11"),
           "-I", str(sysroot / "usr/include"),
           *(str(PLUGIN / s) for s in extension_sources()),
           "-lm", "-o", str(pkg / f"_kernels{EXT_SUFFIX}")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, " ".join(cmd) + "\n" + proc.stderr
    return pkg


def write_dist_infos(out: Path) -> list[Path]:
    """A ``.dist-info`` (METADATA and entry_points.txt from pyproject.toml) in ``out`` for each of
    the repo's distributions; returns the folders holding their packages, for PYTHONPATH."""
    roots = [REPO, *sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))]
    for root in roots:
        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        name, version = project["name"], project["version"]
        info = out / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        groups = dict(project.get("entry-points", {}))
        if "scripts" in project:
            groups["console_scripts"] = project["scripts"]
        (info / "entry_points.txt").write_text("".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
            for group, eps in groups.items()))
    return [r for r in roots if r != PLUGIN]  # the neon plugin's package is the copy in ``out``


def run_json(cmd: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """Run ``cmd``, return its ``--json`` object (the last stdout line) and the wall time."""
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env,
                          stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    report: dict[str, Any] = json.loads(lines[-1])
    return report, seconds


def test_edge_rt_run_on_arm64_matches_x86(tmp_path: Path) -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (apt-get install gcc-aarch64-linux-gnu "
                    "libc6-dev-arm64-cross qemu-user-static)")
    model = smollm2_for_tests()
    sysroot = build_sysroot()
    overlay = tmp_path / "arm-site"
    overlay.mkdir()
    cross_build_package(sysroot, overlay)
    code = write_dist_infos(overlay)

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD")}
    env |= {"PYTHONNOUSERSITE": "1", "EDGERT_WEIGHT_CACHE": "0"}
    arm_env = env | {"PYTHONPATH": os.pathsep.join(str(p) for p in (overlay, *code))}
    args = [*RUN_ARGS, "--model", str(model)]

    arm_cmd = [QEMU, "-cpu", CPU, "-L", str(sysroot), str(sysroot / PYTHON), "-m", "edgert_core",
               *args]
    arm, arm_s = run_json(arm_cmd, arm_env)
    x86, x86_s = run_json([sys.executable, "-m", "edgert_core", *args], env)
    print(f"\nARM ({arm_s:.1f} s): {' '.join(arm_cmd)}\n{json.dumps(arm)}\n"
          f"x86 ({x86_s:.1f} s): {json.dumps(x86)}")

    # the run really was the NEON path of the cross-built extension, in exact mode
    assert arm["backend"] == "neon" and arm["backend_path"] == "neon", arm
    assert arm["activations"] == "f32" and x86["activations"] == "f32"
    assert x86["backend"] == "neon" and x86["backend_path"] != "neon", x86
    assert arm["generated_tokens"] == N_TOKENS and arm["stop_reason"] == "max_tokens", arm
    # the same tokens, one by one, on both machines
    assert arm["prompt_ids"] == x86["prompt_ids"]
    assert arm["generated_ids"] == x86["generated_ids"], (arm["text"], x86["text"])
    assert arm["text"] == x86["text"]
