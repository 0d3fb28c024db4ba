"""Entry point ``neon_kernels`` (group ``edgert``): registers the ``neon`` backend.

Registration never depends on the C extension: without it the backend reports itself unavailable
(``edge-rt plugins`` shows the reason) and the numpy backend is used.
"""

from __future__ import annotations

from collections.abc import Callable

from edgert_core.plugin_api import KernelBackend, hookimpl
from edgert_neon_kernels.backend import NeonBackend

EDGERT_API = "1.4"  # the edgert_core.plugin_api version this plugin is written against


@hookimpl
def edgert_register_backends(register: Callable[[type[KernelBackend]], None]) -> None:
    register(NeonBackend)
