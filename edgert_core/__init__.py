"""edge-rt core: run transformer language models on small devices under a strict memory budget.

This module is the public API. Plugins import only from here.
"""

from edgert_core.api import ChatSession, Generation, Model, Token, generation_report, load_model, open_source
from edgert_core.backends.base import BackendStatus, KernelBackend, Weight, usable_cpus
from edgert_core.backends.numpy_ref import NumpyBackend
from edgert_core.budget import MemoryBudget, format_bytes
from edgert_core.engine import Engine, EngineStateError, PlannedEngine, ReadyEngine
from edgert_core.errors import (
    BudgetError,
    ConfigError,
    EdgeRTError,
    GenerationError,
    InfeasibleBudgetError,
    MemoryPoolError,
    ModelError,
    PlanValidationError,
    PluginError,
    UnknownNameError,
)
from edgert_core.generate import GenerationStats, SamplingParams
from edgert_core.hookspecs import hookimpl
from edgert_core.layout import (
    BLOCK_PARTS,
    LayerInfo,
    ModelDims,
    ModelLayout,
    TensorInfo,
    layout_from_dims,
    synthetic_layout,
)
from edgert_core.loaders import ModelSource, ValidatedModel, open_model
from edgert_core.monitors.base import Reading, SystemMonitor
from edgert_core.plan import (
    DEFAULT_STAGE_BYTES,
    PREFETCH_DEPTH,
    ExecutionPlan,
    LayerGroup,
    PartitionStrategy,
    PlanningContext,
    check_feasible,
    default_head_slice,
    estimated_seconds_per_token,
    fixed_bytes,
    group_stages,
    largest_fitting,
    make_plan,
    minimum_budget,
    predict_peak,
    resident_prefix,
    streamed_stages,
    streaming_rank,
    validate_plan,
)
from edgert_core.planner import AUTO, all_plans, choose_auto, plan_with
from edgert_core.plugins import PluginInfo, PluginRegistry, load_registry
from edgert_core.pull import pull

__version__ = "0.1.0"

__all__ = [
    "AUTO",
    "BLOCK_PARTS",
    "DEFAULT_STAGE_BYTES",
    "PREFETCH_DEPTH",
    "BackendStatus",
    "BudgetError",
    "ChatSession",
    "ConfigError",
    "EdgeRTError",
    "Engine",
    "EngineStateError",
    "ExecutionPlan",
    "Generation",
    "GenerationError",
    "GenerationStats",
    "InfeasibleBudgetError",
    "KernelBackend",
    "LayerGroup",
    "LayerInfo",
    "MemoryBudget",
    "MemoryPoolError",
    "Model",
    "ModelDims",
    "ModelError",
    "ModelLayout",
    "ModelSource",
    "NumpyBackend",
    "PartitionStrategy",
    "PlanValidationError",
    "PlannedEngine",
    "PlanningContext",
    "PluginError",
    "PluginInfo",
    "PluginRegistry",
    "Reading",
    "ReadyEngine",
    "SamplingParams",
    "SystemMonitor",
    "TensorInfo",
    "Token",
    "UnknownNameError",
    "ValidatedModel",
    "Weight",
    "__version__",
    "all_plans",
    "check_feasible",
    "choose_auto",
    "default_head_slice",
    "estimated_seconds_per_token",
    "fixed_bytes",
    "format_bytes",
    "generation_report",
    "group_stages",
    "hookimpl",
    "largest_fitting",
    "layout_from_dims",
    "load_model",
    "load_registry",
    "make_plan",
    "minimum_budget",
    "open_model",
    "open_source",
    "plan_with",
    "predict_peak",
    "pull",
    "resident_prefix",
    "streamed_stages",
    "streaming_rank",
    "synthetic_layout",
    "usable_cpus",
    "validate_plan",
]
