"""The kernel-backend contract.

A backend decides how weights are held in memory (``weight_nbytes``, ``prepare_weight``) and computes
the math the model modules call. The numpy reference backend (``edgert_core.backends.numpy_ref``)
implements every operation; another backend may subclass it and override only what it speeds up
(typically ``weight_nbytes``, ``prepare_weight`` and ``linear`` for quantized weights).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from edgert_core.layout import TensorInfo


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here; ``path`` names the active code path (``numpy``, ``neon``,
    ``portable``, ``x86-avx2`` ...); ``reason`` says why it is unavailable."""

    available: bool
    path: str
    reason: str = ""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one), at least 1: the
    default for a backend's kernel threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Weight:
    """A weight prepared by a backend. ``data`` is backend-specific: the numpy backend holds fp32
    ``[out, in]`` (or ``[n]`` for vectors); a quantized backend may hold the file's raw blocks as
    ``uint8 [out, row_bytes]``. ``info`` describes the tensor (its ``shape`` is the logical shape)."""

    info: TensorInfo
    data: NDArray[np.generic]


class KernelBackend(ABC):
    """Base class of kernel backends, registered through ``edgert_register_backends``.

    ``priority`` orders backends when the user does not choose one: the available backend with the
    highest priority that supports the model wins (the numpy reference has priority 0).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    threads: int | None = None
    """Kernel threads, for a backend that runs its own (``None``: it has none). ``load_model``'s
    ``threads`` sets it; while a prefetching engine with process tuning on runs (``load_model(...,
    tune_process=True)``, as the CLI does), the engine lowers it to one fewer than the CPUs so the
    prefetch thread has a core, and puts it back on close."""

    @abstractmethod
    def status(self) -> BackendStatus:
        """Whether this backend can run on this machine, and which path it takes."""

    @abstractmethod
    def supported_dtypes(self) -> frozenset[str]:
        """File tensor types this backend can load (``F32``, ``F16``, ``BF16``, ``Q8_0`` ...)."""

    @abstractmethod
    def weight_nbytes(self, info: TensorInfo) -> int:
        """Bytes this backend holds in memory for ``info`` once prepared."""

    @abstractmethod
    def prepare_weight(
        self, info: TensorInfo, raw: NDArray[np.uint8], out: NDArray[np.uint8]
    ) -> Weight:
        """Turn the file's bytes of one tensor (``raw``, ``uint8 [info.nbytes]``) into a weight held in
        ``out`` (``uint8 [weight_nbytes(info)]``, memory the caller owns, e.g. a pool buffer)."""
