"""OS-reported RSS figures: current, peak, peak reset, and the meter behind run --json."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgert_core.memory import (
    RssMeter,
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
    assert peak_rss_bytes() >= current_rss_bytes() > 0


@linux_only
def test_reset_brings_the_peak_back_to_the_current_rss() -> None:
    touch(100 * MiB)
    assert peak_rss_bytes() - current_rss_bytes() > 90 * MiB  # the freed 100 MiB is in the peak
    assert reset_peak_rss()
    assert peak_rss_bytes() - current_rss_bytes() < 10 * MiB


@linux_only
def test_meter_reports_the_window_peak_over_baseline() -> None:
    touch(120 * MiB)  # a high peak before the window that must not count
    with RssMeter() as meter:
        touch(50 * MiB)
    report = meter.report
    assert report is not None and report.peak_scope == "window"
    assert 45 * MiB < report.peak_over_baseline_bytes < 80 * MiB
    assert report.end_rss_bytes < report.peak_rss_bytes


def test_without_reset_the_peak_is_marked_process_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rss_module, "reset_peak_rss", lambda: False)
    meter = RssMeter()
    meter.start()
    report = meter.stop()
    assert report.peak_scope == "process"
    assert report.peak_rss_bytes >= report.baseline_rss_bytes


def test_fallback_peak_uses_getrusage_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rss_module, "_status_kib", lambda field: None)
    assert not reset_peak_rss()
    # ru_maxrss never resets, so it is at least the current RSS
    assert peak_rss_bytes() >= current_rss_bytes() - MiB


def test_stop_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        RssMeter().stop()
