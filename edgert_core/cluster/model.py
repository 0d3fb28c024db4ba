"""A model whose layers run on Dask workers (``load_model(..., cluster=...)``): the client holds
the tokenizer and the sampler, the workers the stages (:mod:`edgert_core.cluster.pipeline`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgert_core.api import Model, choose_backend
from edgert_core.budget import MemoryBudget, format_bytes
from edgert_core.cluster.pipeline import (
    DEFAULT_CONNECT_TIMEOUT_S,
    ClusterPipeline,
    connect,
    settings_from,
)
from edgert_core.engine import Engine, ReadyEngine
from edgert_core.errors import ClusterError
from edgert_core.generate import StepEngine
from edgert_core.loaders.base import ValidatedModel
from edgert_core.plan import PlanningContext
from edgert_core.plugins import PluginRegistry


class ClusterModel(Model):
    """A :class:`~edgert_core.api.Model` run as a pipeline of stages on Dask workers. It has no
    engine of its own (``engine``, ``logits`` and ``replan`` are errors); a generation drives the
    pipeline. The governor is off: each worker runs its stage under its own budget."""

    def __init__(self, validated: ValidatedModel, registry: PluginRegistry,
                 pipeline: ClusterPipeline, spec: str,
                 notify: Callable[[str], None] | None) -> None:
        backend = choose_backend(registry, validated.dtypes, pipeline.settings.backend)
        ctx = PlanningContext(budget_bytes=None, max_context=pipeline.settings.max_context,
                              prefill_chunk=pipeline.settings.prefill_chunk,
                              kv_cache=pipeline.settings.kv_cache)
        # the whole model's plan without a budget is only a description (nothing is prepared here)
        planned = Engine(validated, backend).plan(ctx, "auto", registry)
        super().__init__(planned, budgeted=True, notify=notify, registry=registry)
        self.pipeline = pipeline
        self.cluster_spec = spec
        self.budget_source = "per worker: " + ", ".join(
            f"{p.address} {'none' if p.budget_bytes is None else format_bytes(p.budget_bytes)}"
            for p in pipeline.plans)

    def step_engine(self) -> StepEngine:
        return self.pipeline

    @property
    def engine(self) -> ReadyEngine:
        raise ClusterError("A model run on a cluster has no local engine; its stages run on the "
                           "workers (use generate or chat).")

    def replan(self, budget_bytes: int) -> None:
        raise ClusterError("A model run on a cluster is re-planned by its workers' budgets "
                           "(--worker-budget), not by one budget.")

    def fit_context(self, positions: int) -> bool:
        """The workers' KV caches are sized when their stages are made: nothing to re-plan here."""
        return False

    def engine_report(self) -> dict[str, Any]:
        p = self.pipeline
        workers = p.workers_report()
        return {
            "cluster": self.cluster_spec,
            "backend": ",".join(sorted({w["backend"] for w in workers})) or self.backend.name,
            "strategy": ",".join(sorted({w["strategy"] for w in workers})),
            "budget_bytes": None,
            "groups": [g for w in workers for g in w["groups"]],
            "resident_groups": [r for w in workers for r in w["resident_groups"]],
            "head_resident": workers[-1]["head_resident"] if workers else None,
            "predicted_peak_bytes": sum(w["predicted_peak_bytes"] for w in workers),
            "workers": workers,
            "cluster_events": [e.as_dict() for e in p.events],
        }

    def close(self) -> None:
        self.pipeline.close()


def load_cluster_model(validated: ValidatedModel, registry: PluginRegistry, spec: str, *,
                       model: str, backend: str | None, strategy: str, max_context: int,
                       prefill_chunk: int, kv_cache: str, activations: str | None,
                       threads: int | None, worker_budget: str | int | None,
                       notify: Callable[[str], None] | None,
                       timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> ClusterModel:
    """Connect to ``spec`` (``local:N`` or a scheduler address), split the layers across its
    workers and prepare every stage (see :func:`edgert_core.api.load_model`)."""
    if validated.format == "synthetic":
        raise ClusterError("A synthetic model cannot run on a cluster (its weights exist only in "
                           "this process); give a .gguf file or a pulled name.")
    budget = None if worker_budget is None else MemoryBudget.parse(worker_budget).bytes
    settings = settings_from(model, backend=backend, strategy=strategy, max_context=max_context,
                             prefill_chunk=prefill_chunk, kv_cache=kv_cache,
                             activations=activations, threads=threads, worker_budget=budget)
    client, cluster = connect(spec, timeout_s)
    try:
        pipeline = ClusterPipeline(client, cluster, validated, registry, settings,
                                   timeout_s=timeout_s, notify=notify)
    except BaseException:
        client.close()
        if cluster is not None:
            cluster.close()
        raise
    return ClusterModel(validated, registry, pipeline, spec, notify)
