"""Choosing a plan: a named strategy, or ``auto`` among the installed ones.

The ``auto`` rule: every installed strategy plans for the budget; among the valid plans, pick the one
with the lowest estimated time per token on this device (:func:`edgert_core.device_cost.seconds_per_token`:
every weight is computed once per token, and streamed weights are loaded once more, after the
compute or, with prefetch, behind it; the bytes that a memory limit leaves no page cache for come
from disk at its measured bandwidth, so under a limit the time is mostly the bytes read from disk),
then the one that reads the fewest bytes from disk, then the fewest streamed bytes, then the lowest
predicted peak, then the name. So when the whole model fits, ``auto`` keeps it resident; when it
does not, ``auto`` weighs keeping more layers resident against hiding the loads behind compute.

Without a budget there is nothing to plan for: ``auto`` then loads the whole model once (the plan
named ``resident``). A strategy named explicitly plans even without a budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgert_core.device_cost import device_cost, seconds_per_token
from edgert_core.errors import EdgeRTError, InfeasibleBudgetError, PluginError
from edgert_core.layout import ModelLayout
from edgert_core.plan import (
    ExecutionPlan,
    LayerGroup,
    PlanningContext,
    check_feasible,
    make_plan,
    validate_plan,
)
from edgert_core.plugins import PluginRegistry

AUTO = "auto"
RESIDENT = "resident"


def resident_plan(layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
    """The whole model loaded once: one resident group and a resident head."""
    group = LayerGroup(tuple(range(len(layout.layers))), resident=True)
    return make_plan(RESIDENT, layout, ctx, [group], head_resident=True)


def plan_with(
    registry: PluginRegistry, name: str, layout: ModelLayout, ctx: PlanningContext
) -> ExecutionPlan:
    """The validated plan of the strategy ``name`` (or ``auto``)."""
    if name == AUTO:
        return choose_auto(registry, layout, ctx)
    try:
        strategy = registry.strategy(name)  # an unknown name: an error listing the installed ones
        check_feasible(layout, ctx)
        plan = strategy.plan(layout, ctx)
    except EdgeRTError:
        raise
    except Exception as exc:  # a bug in the strategy plugin: name it, never a traceback
        plugin = registry.provider("strategy", name)
        raise PluginError(
            f"Strategy {name!r} (plugin {plugin.name!r}, distribution {plugin.distribution}) failed "
            f"while planning: {type(exc).__name__}: {exc}. Report this to the plugin's author; "
            f"meanwhile pick another strategy with --strategy, or block the plugin with "
            f"EDGERT_DISABLE_PLUGINS={plugin.name}."
        ) from exc
    validate_plan(plan, layout, ctx)
    return plan


def _rank(plan: ExecutionPlan, layout: ModelLayout,
          ctx: PlanningContext) -> tuple[float, int, int, int, str]:
    cost = device_cost(plan, layout, ctx.room_bytes)
    return (seconds_per_token(plan, layout, cost, ctx.disk_bytes_per_s), cost.disk_bytes_per_token,
            plan.streamed_bytes_per_token(layout), plan.predicted_peak_bytes, plan.strategy)


@dataclass(frozen=True)
class PlanOutcome:
    """One strategy's answer for ``inspect``: a plan or the error it gave."""

    strategy: str
    plan: ExecutionPlan | None
    error: str | None


def all_plans(
    registry: PluginRegistry, layout: ModelLayout, ctx: PlanningContext
) -> list[PlanOutcome]:
    """Every installed strategy's plan (or error) for the budget, by strategy name."""
    out = []
    for name in registry.names("strategy"):
        try:
            out.append(PlanOutcome(name, plan_with(registry, name, layout, ctx), None))
        except EdgeRTError as exc:
            out.append(PlanOutcome(name, None, str(exc)))
    return out


def choose_auto(
    registry: PluginRegistry, layout: ModelLayout, ctx: PlanningContext
) -> ExecutionPlan:
    """The plan ``auto`` picks (see the module docstring)."""
    if ctx.budget_bytes is None:
        return resident_plan(layout, ctx)
    check_feasible(layout, ctx)
    strategies = registry.strategies()
    plans: list[ExecutionPlan] = []
    errors: list[str] = []
    minimums: list[int] = []
    for name in strategies:
        try:
            plans.append(plan_with(registry, name, layout, ctx))
        except InfeasibleBudgetError as exc:
            errors.append(str(exc))
            minimums.append(exc.minimum_bytes)
        except EdgeRTError as exc:
            errors.append(str(exc))
    if not plans:
        raise InfeasibleBudgetError(
            "No installed strategy could plan for this budget: " + " ".join(errors),
            minimum_bytes=min(minimums, default=0),
        )
    return min(plans, key=lambda p: _rank(p, layout, ctx))
