"""An example governor plugin (docs/plugins.md shows this file): ``early-cooling`` paces tokens
from 10 °C under the soft limit, instead of waiting for the limit, and stops pacing 5 °C lower."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from edgert_core.plugin_api import Action, Governor, GovernorState, Reading, hookimpl, reading_value

EDGERT_API = "1.4"  # the edgert_core.plugin_api version this plugin is written against (Governor: 1.4)


class EarlyCooling(Governor):
    name = "early-cooling"
    description = "paces tokens from 10 °C under the soft limit"

    def step(self, readings: Mapping[str, Reading], state: GovernorState) -> Action | None:
        temp = reading_value(readings, "thermal.max")  # None: no sensor
        if temp is None:
            return None
        if temp >= self.soft_temp_c - 10 and state.pause_s == 0:
            return Action("pace", f"{temp:.1f} °C is within 10 °C of the limit", pause_s=0.1)
        if temp < self.soft_temp_c - 15 and state.pause_s > 0:
            return Action("pace", f"{temp:.1f} °C: cool again", pause_s=0.0)
        return None


@hookimpl
def edgert_register_governors(register: Callable[[type[Governor]], None]) -> None:
    register(EarlyCooling)
