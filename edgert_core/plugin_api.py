"""The plugin API of edge-rt: everything a strategy, backend or monitor plugin imports, and its version.

A plugin imports only from this module (``from edgert_core.plugin_api import ...``) and declares the
API version it was written against in the module its entry point names::

    EDGERT_API = "1.4"

The registry loads a plugin when the declared major version equals :data:`API_VERSION`'s and the
declared minor version is at most the core's (a plugin written for ``1.0`` runs on a core with API
``1.4``, not the other way round); any other declaration is an error that skips that plugin. A
plugin that declares nothing is loaded as if it declared ``1.0``, with an ``unversioned`` warning.
The major version changes when a name here is removed or changes meaning, the minor version when a
name is added. See ``docs/plugins.md``.

- the version and the hooks: ``API_VERSION``, ``API_ATTRIBUTE``, ``ENTRY_POINT_GROUP``,
  ``HOOK_NAMES``, ``hookimpl``;
- strategies: ``PartitionStrategy``, what ``plan()`` receives (``ModelLayout``, ``LayerInfo``,
  ``ModelDims``, ``PlanningContext``) and returns (``ExecutionPlan`` of ``LayerGroup``s, built with
  ``make_plan``), and the core's memory rule (``predict_peak``, ``fixed_bytes``, ``minimum_budget``,
  ``group_stages``, ``streamed_stages``, ``resident_prefix``, ``streaming_rank``,
  ``largest_fitting``, ``validate_plan``, ``BLOCK_PARTS``, ``DEFAULT_STAGE_BYTES``,
  ``PREFETCH_DEPTH``);
- backends: ``KernelBackend``, ``NumpyBackend`` (the reference, which a backend may subclass),
  ``Weight``, ``TensorForm`` (how a backend holds a prepared tensor, added in 1.1),
  ``KernelBackend.activation_modes`` and ``.activations`` (the precision of activations in
  ``linear``, added in 1.2), ``KernelBackend.attention_block`` and ``.mlp_block`` (optional
  one-call block parts, added in 1.3), ``LlamaLayer`` with ``KernelBackend.prepare_llama_block``
  and ``.llama_blocks`` (optional: consecutive blocks in one call, added in 1.4),
  ``BackendStatus``, ``TensorInfo``, ``usable_cpus``;
- monitors: ``SystemMonitor``, ``Reading``;
- governors (added in 1.4): ``Governor``, what ``step()`` receives (``GovernorState``, the readings)
  and returns (``Action``), ``Event``, ``reading_value``, ``DEFAULT_SOFT_TEMP_C``;
- errors a plugin raises: ``EdgeRTError``, ``InfeasibleBudgetError``, ``ModelError``,
  ``ConfigError``, ``PluginError``; and ``format_bytes`` for their messages.

Importing this module loads numpy and pluggy, never the model-file, tokenizer or template libraries
(``gguf``, ``safetensors``, ``tokenizers``, ``jinja2``).
"""

from __future__ import annotations

from edgert_core.backends.base import (
    BackendStatus,
    KernelBackend,
    LlamaLayer,
    TensorForm,
    Weight,
    usable_cpus,
)
from edgert_core.backends.numpy_ref import NumpyBackend
from edgert_core.budget import format_bytes
from edgert_core.errors import (
    ConfigError,
    EdgeRTError,
    InfeasibleBudgetError,
    ModelError,
    PluginError,
)
from edgert_core.governor import (
    DEFAULT_SOFT_TEMP_C,
    Action,
    Event,
    Governor,
    GovernorState,
    reading_value,
)
from edgert_core.hookspecs import (
    API_ATTRIBUTE,
    API_VERSION,
    ENTRY_POINT_GROUP,
    HOOK_NAMES,
    hookimpl,
)
from edgert_core.layout import BLOCK_PARTS, LayerInfo, ModelDims, ModelLayout, TensorInfo
from edgert_core.monitors.base import Reading, SystemMonitor
from edgert_core.plan import (
    DEFAULT_STAGE_BYTES,
    PREFETCH_DEPTH,
    ExecutionPlan,
    LayerGroup,
    PartitionStrategy,
    PlanningContext,
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

__all__ = [
    "API_ATTRIBUTE",
    "API_VERSION",
    "BLOCK_PARTS",
    "DEFAULT_SOFT_TEMP_C",
    "DEFAULT_STAGE_BYTES",
    "ENTRY_POINT_GROUP",
    "HOOK_NAMES",
    "PREFETCH_DEPTH",
    "Action",
    "BackendStatus",
    "ConfigError",
    "EdgeRTError",
    "Event",
    "ExecutionPlan",
    "Governor",
    "GovernorState",
    "InfeasibleBudgetError",
    "KernelBackend",
    "LayerGroup",
    "LayerInfo",
    "LlamaLayer",
    "ModelDims",
    "ModelError",
    "ModelLayout",
    "NumpyBackend",
    "PartitionStrategy",
    "PlanningContext",
    "PluginError",
    "Reading",
    "SystemMonitor",
    "TensorForm",
    "TensorInfo",
    "Weight",
    "fixed_bytes",
    "format_bytes",
    "group_stages",
    "hookimpl",
    "largest_fitting",
    "make_plan",
    "minimum_budget",
    "predict_peak",
    "reading_value",
    "resident_prefix",
    "streamed_stages",
    "streaming_rank",
    "usable_cpus",
    "validate_plan",
]
