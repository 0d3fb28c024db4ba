"""The client side of a pipeline across Dask workers: connecting (:func:`connect`), planning the
split (:func:`plan_split`), and :class:`ClusterPipeline`, the engine a generation drives (it has
what :class:`~edgert_core.generate.StepEngine` asks for) while the stages run on the workers.

The client holds the tokenizer (in :class:`~edgert_core.cluster.model.ClusterModel`), the sampler
and the list of tokens in the workers' KV caches; it reads the model's headers to split the layers
but never a weight.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgert_core.budget import format_bytes
from edgert_core.cluster.split import split_layers, stage_shares
from edgert_core.cluster.stage import (
    Settings,
    StageActor,
    StageSpec,
    layer_ranges,
    measure_speed,
    worker_facts,
)
from edgert_core.engine.pipeline import EngineTimes
from edgert_core.errors import ClusterError, EdgeRTError, InfeasibleBudgetError, WorkerLostError
from edgert_core.loaders.base import ValidatedModel
from edgert_core.plan import PlanningContext, minimum_budget
from edgert_core.plugins import PluginRegistry

F32 = NDArray[np.float32]

LOCAL_PREFIX = "local:"
MAX_LOCAL_WORKERS = 16
#: What a worker keeps beside its stage when its budget comes from its Dask memory limit: Dask's
#: comms and the activations in flight, and the distance to Dask's terminate threshold (95 %).
DASK_MARGIN_FRACTION = 0.10
DASK_MARGIN_MIN_BYTES = 32 * 2**20
DEFAULT_CONNECT_TIMEOUT_S = 30.0
#: How long one forward pass through the whole pipeline may take before it counts as a hang.
DEFAULT_CALL_TIMEOUT_S = 600.0
#: How long the client waits for the scheduler to see a worker gone after a failed call.
LOSS_WAIT_S = 10.0
#: How often the client checks that the stages' workers are alive while a pass runs.
LOSS_POLL_S = 1.0

INSTALL_HINT = "pip install 'edgert-core[cluster]'"


def require_dask() -> None:
    """A clear error where Dask ``distributed`` is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterError(f"--cluster needs Dask distributed, which is not installed; install it "
                           f"with: {INSTALL_HINT}") from None


def parse_local(spec: str) -> int | None:
    """The worker count of ``local:N`` (``None`` for a scheduler address)."""
    if not spec.startswith(LOCAL_PREFIX):
        return None
    text = spec.removeprefix(LOCAL_PREFIX)
    if not text.isdigit() or not 1 <= int(text) <= MAX_LOCAL_WORKERS:
        raise ClusterError(f"--cluster {spec!r}: give local:N with N from 1 to "
                           f"{MAX_LOCAL_WORKERS} worker processes, or a scheduler address such "
                           "as tcp://192.168.1.10:8786.")
    return int(text)


def connect(spec: str, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
            memory_limit: int | str = "auto") -> tuple[Any, Any]:
    """A Dask client and, for ``local:N``, the LocalCluster it started: N worker processes with
    one thread each, everything bound to loopback, no dashboard. A scheduler that does not answer,
    or has no worker, within ``timeout_s`` is a :class:`ClusterError`."""
    require_dask()
    import distributed

    # Dask's constructors carry no type hints: called through Any
    Client: Any = distributed.Client
    LocalCluster: Any = distributed.LocalCluster
    n = parse_local(spec)
    cluster = None
    try:
        if n is not None:
            # the scheduler's HTTP server (no dashboard) on a free loopback port, not 8787
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None,
                                   scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                   memory_limit=memory_limit, silence_logs=logging.ERROR)
            client = Client(cluster, timeout=timeout_s)
        else:
            client = Client(spec, timeout=timeout_s)
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise ClusterError(f"No Dask scheduler answered at {spec} within {timeout_s:g} s ({exc}); "
                           "start one with `dask scheduler` and workers with `dask worker "
                           "tcp://HOST:8786`, or use --cluster local:N.") from None
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except (OSError, TimeoutError):
        client.close()
        if cluster is not None:
            cluster.close()
        raise ClusterError(f"The Dask scheduler at {spec} has no worker after {timeout_s:g} s; "
                           "start one with `dask worker ADDRESS` on each device.") from None
    return client, cluster


def live_workers(client: Any) -> list[str]:
    """The addresses of the workers the scheduler lists now, sorted."""
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


def gather_facts(client: Any, model: str, addresses: Sequence[str], *, configure: bool,
                 timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Every worker's :func:`~edgert_core.cluster.stage.worker_facts` (``configure``: also set its
    Dask memory thresholds for a run), each a task pinned to its worker; a worker that has not
    answered within ``timeout_s`` is a :class:`ClusterError` naming it (slow, stopped or cut off:
    the scheduler may still list it)."""
    import distributed

    wait: Any = distributed.wait  # untyped in Dask
    futures = {a: client.submit(worker_facts, model, configure, workers=[a],
                                allow_other_workers=False, pure=False,
                                key=f"edgert-facts-{a}-{time.monotonic_ns()}")
               for a in addresses}
    try:
        wait(list(futures.values()), timeout=timeout_s)
    except TimeoutError:
        silent = ", ".join(a for a, f in futures.items() if not f.done())
        client.cancel(list(futures.values()))
        raise ClusterError(f"Worker {silent} did not answer within {timeout_s:g} s: it is slow, "
                           "stopped or unreachable; restart it or leave it out of the "
                           "cluster.") from None
    facts = {a: f.result() for a, f in futures.items()}
    client.cancel(list(futures.values()))
    for a in addresses:  # one worker at a time, so that they do not slow each other down
        speed = client.submit(measure_speed, workers=[a], allow_other_workers=False, pure=False,
                              key=f"edgert-speed-{a}-{time.monotonic_ns()}")
        try:
            facts[a]["speed_bytes_per_s"] = speed.result(timeout=timeout_s)
        except TimeoutError:
            raise ClusterError(f"Worker {a} did not answer within {timeout_s:g} s: it is slow, "
                               "stopped or unreachable.") from None
        finally:
            client.cancel([speed])
    return facts


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share: its address, layers ``first..stop-1`` and budget, and what the worker
    said before any work (memory limit, RSS, model size)."""

    address: str
    first: int
    stop: int
    budget_bytes: int | None
    memory_limit: int | None
    rss_bytes: int
    minimum_bytes: int
    pid: int | None = None
    speed_bytes_per_s: float | None = None

    @property
    def layers(self) -> str:
        return f"{self.first}-{self.stop - 1}"


def worker_budget(limit: int | None, rss: int, given: int | None) -> int | None:
    """A worker's budget: ``given`` (``--worker-budget``), else its Dask memory limit less its
    RSS now and a margin for Dask (:data:`DASK_MARGIN_FRACTION`, at least
    :data:`DASK_MARGIN_MIN_BYTES`); ``None`` (every weight resident) for a worker without a limit."""
    if given is not None:
        return given
    if not limit:
        return None
    margin = max(DASK_MARGIN_MIN_BYTES, int(limit * DASK_MARGIN_FRACTION))
    return max(0, limit - rss - margin)


def part_minimum(whole: ValidatedModel, registry: PluginRegistry, settings: Settings,
                 first: int, stop: int) -> int:
    """The smallest budget layers ``first..stop-1`` run in (the client's backend sizes them)."""
    from edgert_core.api import choose_backend

    part = whole.layers(first, stop)
    backend = choose_backend(registry, part.dtypes, settings.backend)
    layout = part.layout().with_memory_bytes(backend.weight_nbytes)
    ctx = PlanningContext(budget_bytes=None, max_context=settings.max_context,
                          prefill_chunk=settings.prefill_chunk, kv_cache=settings.kv_cache)
    return minimum_budget(layout, ctx)


def plan_split(whole: ValidatedModel, registry: PluginRegistry, settings: Settings,
               facts: dict[str, dict[str, Any]]) -> list[WorkerPlan]:
    """Cut the layers across the workers of ``facts`` (address -> :func:`worker_facts`) in
    proportion to their budgets; a worker without the model is an error naming it, and so is a
    stage its worker's budget cannot run.

    The stages go to the workers in order of budget, the largest last: the last stage holds the
    head (with tied embeddings the largest tensor), so there a share is easiest to meet. A worker
    without a limit counts as the largest. Workers beyond one per layer (the smallest) sit out.
    Where the measured speeds differ clearly, a faster worker's share grows
    (:func:`~edgert_core.cluster.split.stage_shares`) unless a stage would then not fit its
    worker's budget; then the budgets alone decide."""
    for address, f in sorted(facts.items()):
        if f["error"] is not None:
            raise ClusterError(f"Worker {address} cannot open the model: {f['error']}")
    budgets = {a: worker_budget(f["memory_limit"], f["rss_bytes"], settings.worker_budget)
               for a, f in facts.items()}
    known = [b for b in budgets.values() if b is not None]
    big = max(known) if known else 1
    share = {a: float(big if b is None else b) for a, b in budgets.items()}
    addresses = sorted(facts, key=lambda a: (share[a], a))[-whole.config.dims.n_layers:]
    layout = whole.layout()
    shares = [share[a] for a in addresses]
    if any(s <= 0 for s in shares):
        poor = next(a for a in addresses if share[a] <= 0)
        raise ClusterError(f"Worker {poor} has no room for a stage: its memory limit "
                           f"{format_bytes(facts[poor]['memory_limit'] or 0)} is taken by its RSS "
                           f"of {format_bytes(facts[poor]['rss_bytes'])}; give it a larger "
                           "--memory-limit or pass --worker-budget.")
    speeds = [facts[a].get("speed_bytes_per_s") for a in addresses]
    weighted = stage_shares(shares, speeds)
    tries = [weighted, shares] if weighted != shares else [shares]
    for k, attempt in enumerate(tries):
        cuts = split_layers(layout.layer_bytes, layout.head_bytes, attempt)
        plans = []
        for address, (first, stop) in zip(addresses, cuts, strict=True):
            need = part_minimum(whole, registry, settings, first, stop)
            budget = budgets[address]
            if budget is not None and budget < need:
                if k + 1 < len(tries):  # the speeds asked too much of a budget: budgets alone
                    break
                raise InfeasibleBudgetError(
                    f"Worker {address} cannot run layers {first}-{stop - 1} (split "
                    f"{layer_ranges(cuts)} over {len(cuts)} workers): they need at least "
                    f"{format_bytes(need)} and its budget is {format_bytes(budget)}; add workers "
                    "or raise --worker-budget.", need)
            f = facts[address]
            plans.append(WorkerPlan(address, first, stop, budget, f["memory_limit"],
                                    f["rss_bytes"], need, f["pid"], f.get("speed_bytes_per_s")))
        else:
            return plans
    raise AssertionError("unreachable: the last try returns or raises")


class _StageLost(Exception):
    """A stage's worker left the cluster during a call."""


@dataclass
class HopTimes:
    """The client's calls into the first stage: seconds beyond the pipeline's own work."""

    seconds: float = 0.0
    calls: int = 0

    @property
    def ms(self) -> float | None:
        return 1000 * self.seconds / self.calls if self.calls else None


@dataclass
class ClusterEvent:
    """Something the pipeline did mid-run: a lost worker and the re-plan that followed."""

    kind: str
    position: int
    address: str
    reason: str
    workers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "position": self.position, "address": self.address,
                "reason": self.reason, "workers": self.workers}


class ClusterPipeline:
    """The stages on the workers, driven as one engine: :meth:`forward` sends tokens down the
    chain and gets the last position's logits back. A worker lost mid-run is survived when the
    remaining workers can hold the model (re-plan, re-prefill the tokens so far, go on); otherwise
    :class:`WorkerLostError` names it."""

    def __init__(self, client: Any, cluster: Any, whole: ValidatedModel,
                 registry: PluginRegistry, settings: Settings, *,
                 timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 notify: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.cluster = cluster
        self.whole = whole
        self.registry = registry
        self.settings = settings
        self.timeout_s = timeout_s
        self.call_timeout_s = call_timeout_s
        self.notify = notify
        self.cached_ids: list[int] = []
        self.times = EngineTimes()
        self.hops = HopTimes()
        self.events: list[ClusterEvent] = []
        self.plans: list[WorkerPlan] = []
        self.last_stats: list[dict[str, Any]] = []
        self._actors: list[Any] = []
        self._closed = False
        self._start(live_workers(self.client))

    # -- what generation reads -----------------------------------------------------------------
    @property
    def vocab(self) -> int:
        return self.whole.config.dims.vocab

    @property
    def max_context(self) -> int:
        return self.settings.max_context

    @property
    def baseline_rss_bytes(self) -> int:
        from edgert_core.memory.rss import current_rss_bytes

        return current_rss_bytes()

    @property
    def prefetch(self) -> bool:
        return False

    @property
    def pool_peak_bytes(self) -> int:
        return sum(s.get("pool_peak_bytes", 0) for s in self.last_stats)

    def end_of_step(self) -> None:
        """Refresh the workers' figures at the end of a generation (a lost one keeps its last)."""
        self.refresh_stats()

    # -- workers -------------------------------------------------------------------------------
    def _gone(self) -> list[WorkerPlan]:
        """The stages whose workers the scheduler no longer lists."""
        live = set(live_workers(self.client))
        return [p for p in self.plans if p.address not in live]

    def _start(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise ClusterError("The Dask cluster has no worker left; start workers with "
                               "`dask worker ADDRESS`.")
        facts = gather_facts(self.client, self.settings.model, addresses, configure=True,
                             timeout_s=self.timeout_s)
        self.plans = plan_split(self.whole, self.registry, self.settings, facts)
        futures = [
            self.client.submit(
                StageActor, StageSpec(self.settings, p.first, p.stop, p.budget_bytes),
                actor=True, workers=[p.address], allow_other_workers=False, pure=False,
                key=f"edgert-stage-{p.first}-{p.stop}-{time.monotonic_ns()}",
            )
            for p in self.plans
        ]
        try:
            self._actors = [f.result(timeout=self.timeout_s) for f in futures]
            for a, b in zip(self._actors, [*self._actors[1:], None], strict=True):
                a.link(b).result(timeout=self.timeout_s)
        except EdgeRTError:
            self._drop_actors()
            raise
        except TimeoutError:
            self._drop_actors()
            ranges = layer_ranges([(p.first, p.stop) for p in self.plans])
            raise ClusterError(f"The workers did not prepare their stages ({ranges}) within "
                               f"{self.timeout_s:g} s; a worker is slow or unreachable.") from None
        self.refresh_stats()

    def refresh_stats(self) -> None:
        """Ask every stage for its figures (:meth:`StageActor.stats`)."""
        try:
            self.last_stats = [a.stats().result(timeout=self.timeout_s) for a in self._actors]
        except Exception:  # a lost worker: its last figures stand
            return

    def _drop_actors(self) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):  # a lost worker's actor is gone already
                actor.close().result(timeout=5)
        self._actors = []

    def _lost_workers(self) -> list[WorkerPlan]:
        deadline = time.monotonic() + LOSS_WAIT_S
        while True:
            lost = self._gone()
            if lost or time.monotonic() > deadline:
                return lost
            time.sleep(0.2)

    # -- the forward pass ------------------------------------------------------------------------
    def _call(self, ids: list[int], start: int, all_logits: bool) -> F32:
        """One pass down the chain. While it runs, the client checks every
        :data:`LOSS_POLL_S` that the stages' workers are alive: a lost worker's call could
        otherwise wait on the scheduler for a worker that will not come back."""
        t0 = time.perf_counter()
        future = self._actors[0].forward(ids, None, start, all_logits)
        while True:
            try:
                logits, inner = future.result(timeout=LOSS_POLL_S)
                break
            except TimeoutError:
                if self._gone():
                    raise _StageLost from None
                if time.perf_counter() - t0 > self.call_timeout_s:
                    raise ClusterError(f"A forward pass took more than {self.call_timeout_s:g} s; "
                                       "a worker is stuck.") from None
        self.hops.seconds += time.perf_counter() - t0 - inner
        self.hops.calls += 1
        self.times.compute += inner
        out: F32 = logits
        return out

    def forward(self, ids: Sequence[int], start: int, *, all_logits: bool = False) -> F32:
        """Logits of tokens ``ids`` at positions ``start...`` (the last row, or every row) from the
        stages' KV caches, which hold ``cached_ids[:start]``."""
        if self._closed:
            raise ClusterError("This cluster run is closed; load the model again.")
        batch = [int(i) for i in ids]
        lost: list[WorkerPlan] = []
        while True:
            try:
                if lost:  # another loss while prefilling again comes back here too
                    self._recover(lost, start)
                    lost = []
                logits = self._call(batch, start, all_logits)
                break
            except EdgeRTError:
                raise
            except Exception as exc:  # a comm error or a lost actor: did a worker go?
                lost = self._lost_workers()
                if not lost:
                    raise ClusterError(f"The pipeline failed without losing a worker: {exc!r}") \
                        from None
        del self.cached_ids[start:]
        self.cached_ids.extend(batch)
        return logits

    def _recover(self, lost: list[WorkerPlan], start: int) -> None:
        """Re-plan onto the live workers and re-prefill the tokens before ``start``."""
        gone = ", ".join(f"{p.address} (layers {p.layers})" for p in lost)
        self._drop_actors()
        live = live_workers(self.client)
        for p in lost:
            self.events.append(ClusterEvent("worker_lost", start, p.address,
                                            f"worker {p.address} (layers {p.layers}) was lost",
                                            live))
        if self.notify is not None:
            self.notify(f"edge-rt: worker {gone} lost at position {start}; re-planning onto "
                        f"{len(live)} worker(s) and prefilling the {start} tokens so far again")
        try:
            self._start(live)
        except (InfeasibleBudgetError, ClusterError) as exc:
            need = max(p.minimum_bytes for p in lost)
            raise WorkerLostError(
                f"Lost worker {gone}, which ran its layers in at least {format_bytes(need)}; the "
                f"{len(live)} remaining worker(s) cannot hold the model: {exc}") from None
        chunk = self.settings.prefill_chunk
        for a in range(0, start, chunk):
            self._call(self.cached_ids[a : min(a + chunk, start)], a, False)

    # -- reports and closing -----------------------------------------------------------------------
    def workers_report(self) -> list[dict[str, Any]]:
        """``run --json``'s ``workers``: each stage's address, layers, budget, OS peak RSS over
        its baseline, and ``hop_ms``, the mean time a call into it took beyond its own work
        (from the client for the first stage, from the stage before for the others: sending the
        activations there and the result back); ``speed_bytes_per_s``, what the split measured."""
        out = []
        hops = [self.hops.ms, *(s.get("next_hop_ms") for s in self.last_stats[:-1])]
        speeds = {p.address: p.speed_bytes_per_s for p in self.plans}
        for s, hop in zip(self.last_stats, hops, strict=True):
            out.append({**s, "layers": list(range(s["layers"][0], s["layers"][1] + 1)),
                        "hop_ms": hop, "speed_bytes_per_s": speeds.get(s["address"])})
        return out

    def close(self) -> None:
        """Give every stage's memory back and close the client (and a local cluster)."""
        if self._closed:
            return
        self.refresh_stats()
        self._closed = True
        self._drop_actors()
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def describe_split(spec: str, whole: ValidatedModel, registry: PluginRegistry, settings: Settings,
                   timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> list[dict[str, Any]]:
    """What a run on ``spec`` would do, without preparing anything (``inspect --cluster``): the
    split and each worker's plan for its stage, as this machine's backend sizes the weights (a
    worker with another best backend plans with its own sizes when it runs)."""
    from edgert_core.api import choose_backend
    from edgert_core.engine import Engine

    client, cluster = connect(spec, timeout_s)
    try:
        facts = gather_facts(client, settings.model, live_workers(client), configure=False,
                             timeout_s=timeout_s)
        rows = []
        for p in plan_split(whole, registry, settings, facts):
            part = whole.layers(p.first, p.stop)
            backend = choose_backend(registry, part.dtypes, settings.backend)
            ctx = PlanningContext(budget_bytes=p.budget_bytes, max_context=settings.max_context,
                                  prefill_chunk=settings.prefill_chunk, kv_cache=settings.kv_cache)
            planned = Engine(part, backend).plan(ctx, settings.strategy, registry)
            plan, layout = planned.plan, planned.layout
            rows.append({
                "address": p.address, "layers": [p.first, p.stop - 1],
                "budget_bytes": p.budget_bytes, "memory_limit": p.memory_limit,
                "rss_bytes": p.rss_bytes, "minimum_bytes": p.minimum_bytes,
                "speed_bytes_per_s": p.speed_bytes_per_s,
                "backend": backend.name, "strategy": plan.strategy,
                "groups": [[g.layers[0] + p.first, g.layers[-1] + p.first] for g in plan.groups],
                "resident_groups": [g.resident for g in plan.groups],
                "head": bool(layout.head),
                "resident_bytes": plan.resident_bytes(layout),
                "streamed_bytes_per_token": plan.streamed_bytes_per_token(layout),
                "predicted_peak_bytes": plan.predicted_peak_bytes,
            })
        return rows
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def worker_model_name(model: str | Path) -> str:
    """How workers are told the model: a file here by its absolute path (each worker opens the
    same path on its own disk), anything else (a pulled name) as given."""
    local = Path(str(model))
    return str(local.resolve()) if local.exists() else str(model)


def settings_from(model: str, **kwargs: Any) -> Settings:
    """:class:`Settings` for ``model`` with the keyword arguments that are set."""
    return replace(Settings(model=model), **{k: v for k, v in kwargs.items() if v is not None})


__all__ = ["ClusterPipeline", "Settings", "WorkerPlan", "connect", "describe_split",
           "gather_facts", "live_workers", "plan_split", "require_dask", "settings_from",
           "worker_model_name"]
