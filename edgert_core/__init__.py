"""edge-rt core: run transformer language models on small devices under a strict memory budget.

This module is the library's API for applications: load a model and generate, build a plugin
registry and choose plans with it, and the errors. Plugins import from
:mod:`edgert_core.plugin_api`, the versioned plugin API, instead.

The names that need the model-file and tokenizer libraries (``load_model``, ``Model``, the engine,
the loaders) are imported on first use, so ``import edgert_core.plugin_api`` (which runs this file)
does not load them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edgert_core.budget import MemoryBudget, format_bytes
from edgert_core.errors import (
    BudgetError,
    ConfigError,
    EdgeRTError,
    GenerationError,
    InfeasibleBudgetError,
    MemoryLimitError,
    MemoryPoolError,
    ModelError,
    PlanValidationError,
    PluginError,
    UnknownNameError,
)
from edgert_core.hookspecs import API_VERSION
from edgert_core.layout import (
    LayerInfo,
    ModelDims,
    ModelLayout,
    TensorInfo,
    layout_from_dims,
    synthetic_layout,
)
from edgert_core.plan import ExecutionPlan, LayerGroup, PlanningContext
from edgert_core.planner import AUTO, all_plans, choose_auto, plan_with
from edgert_core.plugins import PluginInfo, PluginRegistry, load_registry
from edgert_core.pull import pull

if TYPE_CHECKING:
    from edgert_core.api import (
        ChatSession,
        Generation,
        Model,
        Token,
        generation_report,
        load_model,
        open_source,
    )
    from edgert_core.engine import Engine, EngineStateError, PlannedEngine, ReadyEngine
    from edgert_core.generate import GenerationStats, SamplingParams
    from edgert_core.loaders import ModelSource, ValidatedModel, open_model
    from edgert_core.serve import create_app

__version__ = "0.1.0"

#: Names imported on first use (they load numpy-heavy model code, gguf, tokenizers), by module.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ("ChatSession", "Generation", "Model", "Token", "generation_report", "load_model", "open_source"),
        "edgert_core.api",
    ),
    **dict.fromkeys(("Engine", "EngineStateError", "PlannedEngine", "ReadyEngine"), "edgert_core.engine"),
    **dict.fromkeys(("GenerationStats", "SamplingParams"), "edgert_core.generate"),
    **dict.fromkeys(("ModelSource", "ValidatedModel", "open_model"), "edgert_core.loaders"),
    "create_app": "edgert_core.serve",  # the OpenAI-compatible ASGI app (the serve extra)
}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all attribute

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'edgert_core' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "API_VERSION",
    "AUTO",
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
    "LayerGroup",
    "LayerInfo",
    "MemoryBudget",
    "MemoryLimitError",
    "MemoryPoolError",
    "Model",
    "ModelDims",
    "ModelError",
    "ModelLayout",
    "ModelSource",
    "PlanValidationError",
    "PlannedEngine",
    "PlanningContext",
    "PluginError",
    "PluginInfo",
    "PluginRegistry",
    "ReadyEngine",
    "SamplingParams",
    "TensorInfo",
    "Token",
    "UnknownNameError",
    "ValidatedModel",
    "__version__",
    "all_plans",
    "choose_auto",
    "create_app",
    "format_bytes",
    "generation_report",
    "layout_from_dims",
    "load_model",
    "load_registry",
    "open_model",
    "open_source",
    "plan_with",
    "pull",
    "synthetic_layout",
]
