"""Errors a user can cause. Each carries one clear sentence that says what is wrong and what to do.

The CLI prints ``str(error)`` for any :class:`EdgeRTError` and exits with status 2; it never shows a
traceback for these.
"""

from __future__ import annotations


class EdgeRTError(Exception):
    """Base class of every error edge-rt raises for input a user can fix."""


class BudgetError(EdgeRTError):
    """A memory budget string could not be parsed or is not positive."""


class InfeasibleBudgetError(EdgeRTError):
    """No plan fits the budget; the message states the minimum budget."""

    def __init__(self, message: str, minimum_bytes: int) -> None:
        super().__init__(message)
        self.minimum_bytes = minimum_bytes


class PlanValidationError(EdgeRTError):
    """A strategy returned a plan that breaks the plan contract; the message names the strategy."""


class PluginError(EdgeRTError):
    """A plugin could not be loaded, or two plugins registered the same name."""


class UnknownNameError(EdgeRTError):
    """An unknown strategy, backend or monitor name; the message lists the installed ones."""


class ConfigError(EdgeRTError):
    """A TOML preset is invalid; the message names the file and the key."""


class ModelError(EdgeRTError):
    """A model file is missing, truncated, corrupt or unsupported; the message names file and tensor."""


class GenerationError(EdgeRTError):
    """Generation was asked for something impossible (empty prompt, prompt longer than the context)."""


class MemoryPoolError(EdgeRTError):
    """A request to the memory pool exceeds the budget."""


class MemoryLimitError(EdgeRTError):
    """A memory cgroup for a measured run (``benchmark --memory-limit``) could not be made, entered or
    removed; the message says what is missing and what to do."""


class RunStoppedError(EdgeRTError):
    """A generation stopped before its end for a reason the run could not get past; the tokens so
    far stand (``Generation.ids``), and ``stop_reason`` is what ``run --json`` reports."""

    stop_reason = "stopped"


class ClusterError(EdgeRTError):
    """A run across Dask workers cannot start or go on: no Dask installed, a scheduler that does not
    answer, a worker without the model file, workers that cannot hold the model, a lost worker whose
    layers the others cannot take; the message names the worker and says what to do."""


class WorkerLostError(RunStoppedError, ClusterError):
    """A worker was lost mid-run and the remaining workers cannot hold the model; the message names
    the lost worker and the memory its layers need."""

    stop_reason = "worker_lost"
