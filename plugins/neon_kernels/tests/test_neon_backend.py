"""The ``neon`` backend class and its plugin registration."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from edgert_neon_kernels import NeonBackend, kernels
from neon_testutil import dequantize, magnitude, q8_tolerance, random_blocks

from edgert_core.plugin_api import NumpyBackend, TensorInfo
from edgert_core.plugins import backend_statuses, load_registry


def info(dtype: str, rows: int, k: int) -> TensorInfo:
    nbytes = rows * k // 32 * {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[dtype]
    return TensorInfo(name=f"w.{dtype}", shape=(rows, k), dtype=dtype, nbytes=nbytes)


def test_status_names_the_active_path() -> None:
    status = NeonBackend().status()
    assert status.available, status.reason
    assert status.path == kernels.active_path()


@pytest.mark.parametrize("dtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_quantized_weights_are_held_as_blocks(dtype: str) -> None:
    be, ref = NeonBackend(threads=2), NumpyBackend()
    rng = np.random.default_rng(2)
    raw = random_blocks(dtype, 40, 96, rng)
    ti = info(dtype, 40, 96)
    assert be.weight_nbytes(ti) == ti.nbytes  # file bytes, not 4 * n_elements
    out = np.zeros(be.weight_nbytes(ti) + 7, dtype=np.uint8)  # a pool buffer may be larger
    w = be.prepare_weight(ti, raw.reshape(-1), out)
    assert w.data.dtype == np.uint8 and w.data.shape == raw.shape
    assert np.shares_memory(w.data, out)  # no copy besides the caller's buffer
    np.testing.assert_array_equal(w.data, raw)

    x = rng.standard_normal((3, 96)).astype(np.float32)
    y = be.linear(x, w)
    y_ref = ref.linear(x, ref.new_weight(ti, raw.reshape(-1)))
    wd = dequantize(dtype, raw, 96)
    tol = q8_tolerance(x, wd, magnitude(dtype, raw, 96)) + 1e-5 * np.abs(x) @ np.abs(wd).T
    assert (np.abs(y - y_ref) <= tol).all()
    # embedding lookups read rows of the blocks
    np.testing.assert_array_equal(be.rows(w, np.array([3, 0])), wd[[3, 0]].astype(np.float32))


def test_float_weights_fall_back_to_numpy() -> None:
    be = NeonBackend()
    ti = TensorInfo(name="norm", shape=(64,), dtype="F32", nbytes=256)
    raw = np.arange(64, dtype=np.float32).view(np.uint8)
    assert be.weight_nbytes(ti) == 256
    w = be.prepare_weight(ti, raw, np.empty(256, dtype=np.uint8))
    assert w.data.dtype == np.float32
    mat = TensorInfo(name="m", shape=(4, 64), dtype="F16", nbytes=512)
    assert be.weight_nbytes(mat) == 4 * 4 * 64  # F16 matrices are held as fp32 by the parent
    wm = be.new_weight(mat, np.ones(256, dtype=np.float16).view(np.uint8))
    np.testing.assert_allclose(be.linear(np.ones((1, 64), np.float32), wm), 64.0)


def test_registered_through_the_entry_point() -> None:
    registry = load_registry()
    assert "neon" in registry.names("backend")
    assert backend_statuses(registry)["neon"].path == kernels.active_path()
    assert registry.backends()[0].name == "neon"  # priority 10 beats numpy's 0


def test_missing_extension_is_reported_by_name() -> None:
    """Without the C extension the plugin still imports and registers; status says why."""
    code = (
        "import sys; sys.modules['edgert_neon_kernels._kernels'] = None\n"
        "from edgert_core.plugins import load_registry, backend_statuses\n"
        "s = backend_statuses(load_registry())['neon']\n"
        "print(s.available, s.path, s.reason, sep='|')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    available, path, reason = proc.stdout.strip().split("|")
    assert available == "False" and path == "none"
    assert "edgert_neon_kernels._kernels" in reason


def test_blocks_read_straight_into_the_weight_buffer_are_not_copied() -> None:
    """A loader that reads the file's bytes into ``out`` itself passes ``raw`` = ``out``."""
    be = NeonBackend()
    raw = random_blocks("Q4_1", 8, 64, np.random.default_rng(3))
    ti = info("Q4_1", 8, 64)
    out = np.zeros(ti.nbytes + 64, dtype=np.uint8)
    out[: ti.nbytes] = raw.reshape(-1)
    w = be.prepare_weight(ti, out[: ti.nbytes], out)
    np.testing.assert_array_equal(w.data, raw)
    assert w.data.ctypes.data == out.ctypes.data
