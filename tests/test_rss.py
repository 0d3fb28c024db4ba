"""OS-reported RSS figures: current, peak and peak reset."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgert_core.memory import (
    current_rss_bytes,
    peak_rss_bytes,
    reset_peak_rss,
)
from edgert_core.memory import rss as rss_module

MiB = 1024 * 1024
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux-only")


def touch(nbytes: int) -> None:
    a = np.ones(nbytes, dtype=np.uint8)
    assert int(a[::4096].sum()) == len(a[::4096])


def test_current_rss_follows_an_allocation() -> None:
    before = current_rss_bytes()
    a = np.ones(64 * MiB, dtype=np.uint8)
    during = current_rss_bytes()
    del a
    assert during - before > 56 * MiB
    assert current_rss_bytes() < during - 56 * MiB


def test_peak_is_at_least_current() -> None:
    current = current_rss_bytes()  # first: the peak read after it covers it even if RSS grew between
    assert peak_rss_bytes() >= current > 0


@linux_only
def test_reset_brings_the_peak_back_to_the_current_rss() -> None:
    touch(100 * MiB)
    assert peak_rss_bytes() - current_rss_bytes() > 90 * MiB  # the freed 100 MiB is in the peak
    assert reset_peak_rss()
    assert peak_rss_bytes() - current_rss_bytes() < 10 * MiB


def test_fallback_peak_uses_getrusage_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rss_module, "_status_kib", lambda field: None)
    assert not reset_peak_rss()
    # ru_maxrss never resets, so it is at least the current RSS
    assert peak_rss_bytes() >= current_rss_bytes() - MiB
