"""The core's backend conformance suite (``edgert_core.testing.check_backend``) on the neon backend:
every op against the numpy reference, every weight type it supports, on each compiled kernel path,
with fp32 and with q8 activations. Run with ``pytest -s`` to see the per-op lines.

Declared tolerances (the suite's error is ``max|got - ref| / max|ref|`` over a case's outputs):
  fp32 activations: the suite's defaults (1e-5 for the products, measured ~3e-7: fp32 sums in
  another order).
  q8 activations: ``linear`` and ``fuse_rows`` on Q4_0, Q4_1 and Q8_0 weights 2e-2. Each
  activation is rounded to a multiple of max|x_block| / 127 (error up to 1/254 of the block's
  largest activation); on the suite's random normal activations and weights that is ~1e-2 of the
  largest output (measured 1.1e-2). A wrong nibble order, scale or row is off by order 1.
These tests fail, never skip, when the C extension did not build."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from edgert_neon_kernels import NeonBackend, kernels

from edgert_core.testing import check_backend

#: Only products on quantized weights run the C kernels with q8 activations; fp32 weights go to the
#: numpy backend and keep the defaults.
Q8_TOLERANCES = {f"{op}:{dtype}": 2e-2 for op in ("linear", "fuse_rows")
                 for dtype in ("Q4_0", "Q4_1", "Q8_0")}


@pytest.fixture(params=[p for p, ok in kernels.paths().items() if ok])
def path(request: pytest.FixtureRequest, restore_path: None) -> Iterator[str]:
    kernels.set_path(request.param)
    yield request.param


def test_both_x86_paths_are_checked_here() -> None:
    """On this x86-64 build both kernel paths run (on aarch64: the NEON paths)."""
    assert kernels.load_error() == ""
    runnable = {p for p, ok in kernels.paths().items() if ok}
    assert len(runnable) >= 2, runnable


@pytest.mark.parametrize("act_q8", [False, True], ids=["f32", "q8"])
def test_neon_backend_conforms(path: str, act_q8: bool) -> None:
    backend = NeonBackend(threads=2, act_q8=act_q8)
    assert backend.status().available and backend.status().path == path
    results = check_backend(backend, tolerances=Q8_TOLERANCES if act_q8 else None,
                            label=f"neon/{path}/{'q8' if act_q8 else 'f32'}")
    assert {r.dtype for r in results if r.op == "linear"} == set(backend.supported_dtypes())
    quantized = [r for r in results if r.op in ("linear", "fuse_rows") and r.dtype.startswith("Q")]
    assert quantized and all(r.cases > 0 for r in quantized)  # the C kernels ran, fused too
    if act_q8:  # the tolerance is needed: activations were quantized
        assert max(r.max_error for r in quantized) > 1e-4


def test_q8_activations_fail_the_default_tolerance(path: str) -> None:
    """The suite's defaults are fp32's: q8 activations must declare their tolerance."""
    with pytest.raises(AssertionError, match="linear"):
        check_backend(NeonBackend(threads=2, act_q8=True), report=None)
