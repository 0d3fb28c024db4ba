"""Fixtures of the edgert-neon-kernels tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from edgert_neon_kernels import kernels


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "arm_cross: needs gcc-aarch64-linux-gnu and qemu-user-static (installed by .ci/run)",
    )


@pytest.fixture
def restore_path() -> Iterator[None]:
    """Put the kernel path back after a test that switches it."""
    if kernels.load_error():
        yield
        return
    before = kernels.active_path()
    yield
    kernels.set_path(before)
