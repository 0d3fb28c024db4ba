"""Process tuning: the process-wide settings a run changes for speed and for an RSS that follows its
budget, all in one place and made only when asked (:class:`ProcessTuning`).

An application that embeds the core keeps its process as it was unless it asks for tuning
(``load_model(tune_process=True)`` or ``PlannedEngine.prepare(tune_process=True)``); the ``edge-rt``
CLI asks, since it owns its process. What tuning does, and what closing the engine undoes:

=====================================  ==================  =====================================
setting                                when                undone on ``ReadyEngine.close``
=====================================  ==================  =====================================
glibc ``mallopt`` thresholds           prepare             no: glibc cannot report the values it
(:mod:`edgert_core.memory.malloc`)                         had, so they stay for the process
OS peak-RSS counter reset (``VmHWM``)  prepare             no: the kernel keeps no earlier peak
BLAS threads (``threadpoolctl``),      prepare, with       yes: the earlier limits come back
one core fewer                         prefetch
the backend's kernel threads,          prepare, with       yes: the backend's ``threads`` comes
one core fewer                         prefetch            back
the prefetch thread's nice value       on that thread      the thread ends at close
=====================================  ==================  =====================================

Without tuning the peak RSS of a generation is the process's peak since it started (the engine's
``peak_scope`` is ``"process"``). Whatever the setting, :func:`_warm_up_libraries` runs before the
baseline RSS is taken: it changes no setting, it only does library start-up early.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from edgert_core.backends.base import KernelBackend, usable_cpus
from edgert_core.memory.malloc import release_freed_memory_promptly
from edgert_core.memory.rss import reset_peak_rss


class ProcessTuning:
    """The process-wide settings of one run, made only when ``enabled`` (see the module's table).

    :meth:`before_baseline` at prepare, :meth:`split_cores` when the run prefetches,
    :meth:`prefetch_thread_setup` on the prefetch thread, :meth:`restore` at close (undoes what can
    be undone; calling it twice is a no-op)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._restore: list[Callable[[], None]] = []

    def before_baseline(self) -> bool:
        """Run just before the baseline RSS is taken: tune ``malloc`` and reset the OS's peak RSS
        (when enabled), and warm the libraries up (always). True when the peak was reset (then the
        peak RSS counts from here, else from the process's start)."""
        if self.enabled:
            release_freed_memory_promptly()  # numpy temporaries go back to the OS when freed
        _warm_up_libraries()
        return self.enabled and reset_peak_rss()

    def split_cores(self, backend: KernelBackend) -> None:
        """Leave a core for the prefetch thread's loads: BLAS and ``backend``'s kernel threads use
        one core fewer than the process may run on, until :meth:`restore` (when enabled)."""
        if not self.enabled:
            return
        spare_one = max(1, usable_cpus() - 1)
        for restore in (_limit_blas_threads(spare_one), _limit_backend_threads(backend, spare_one)):
            if restore is not None:
                self._restore.append(restore)

    def prefetch_thread_setup(self) -> Callable[[], None] | None:
        """What the prefetch thread runs first: lower its own priority (when enabled)."""
        return _lower_thread_priority if self.enabled else None

    def restore(self) -> None:
        """Undo the settings that can be undone, the latest first."""
        while self._restore:
            self._restore.pop()()


PREFETCH_NICE = 10
"""The prefetch thread's nice value (Linux): below the compute thread's priority."""


def _lower_thread_priority() -> None:
    """Run the calling thread at nice :data:`PREFETCH_NICE` where the OS has per-thread priorities
    (Linux); elsewhere nothing changes.

    The token waits on the compute thread, while the prefetch thread runs up to
    :data:`~edgert_core.plan.PREFETCH_DEPTH` stages ahead and has slack. On a device with few cores,
    when both want the same core the scheduler should give it to the compute thread: on the
    reference 2-core machine this made streamed SmolLM2 decode about 1.2x faster at 128 MiB."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREFETCH_NICE)


def _limit_backend_threads(backend: KernelBackend, threads: int) -> Callable[[], None] | None:
    """Lower a backend's kernel threads (:attr:`KernelBackend.threads`) to at most ``threads`` until
    the returned function is called; ``None`` when it has no threads or already uses no more.

    The same reason as :func:`_limit_blas_threads`: with kernel threads on every core, the prefetch
    thread (at a lower priority) waits for a core and its loads stop hiding behind the compute. On
    the reference 2-core machine SmolLM2 on the ``neon`` backend's x86 path at a 32 MiB budget
    decoded about 21 tok/s with two kernel threads and 30 tok/s with one."""
    before = backend.threads
    if before is None or before <= threads:
        return None
    backend.threads = threads

    def restore() -> None:
        backend.threads = before

    return restore


def _limit_blas_threads(threads: int) -> Callable[[], None] | None:
    """Limit the BLAS library to ``threads`` threads until the returned function is called; ``None``
    when ``threadpoolctl`` is not installed (then nothing changes).

    With prefetch the loader thread copies weights while the main thread computes. Both are
    memory-bound, and on a device with few cores BLAS threads that spin-wait for a core held by the
    loader slow every matrix product down (on two cores the compute time about doubled): one core
    fewer for BLAS lets the copy run beside the compute instead of against it."""
    try:
        threadpoolctl: Any = importlib.import_module("threadpoolctl")
    except ImportError:
        return None
    limiter = threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    restore: Callable[[], None] = limiter.restore_original_limits
    return restore


def _warm_up_libraries() -> None:
    """Library start-up that a run would otherwise do after the baseline RSS is taken, done before
    it: that is start-up, like importing numpy, not memory of this run.

    One small matrix product and one matrix-vector product, so the BLAS library maps and touches
    its per-thread work buffers (about 1 MiB, once per process, whatever the model). (Sampling
    draws with the standard library's ``random``, so ``numpy.random`` is not needed at all.)"""
    a = np.ones((8, 64), dtype=np.float32)
    w = np.ones((256, 64), dtype=np.float32)
    _ = a @ w.T
    _ = w @ a[0]
