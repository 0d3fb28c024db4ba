"""An example edge-rt kernel backend: float weights held as fp32, matrix products accumulated in
float64. It subclasses ``KernelBackend`` directly and implements only the six abstract methods; the
norms, activations, RoPE and attention are the base class's reference math."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from edgert_core.plugin_api import (
    BackendStatus,
    KernelBackend,
    ModelError,
    TensorForm,
    TensorInfo,
    Weight,
    hookimpl,
)

EDGERT_API = "1.1"  # the edgert_core.plugin_api version this plugin is written against (TensorForm: 1.1)

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]


class Float64Backend(KernelBackend):
    """F32, F16 and BF16 weights as fp32 ``[out, in]``; ``linear`` sums in float64."""

    name = "f64acc"
    description = "fp32 weights, matrix products accumulated in float64 (pure numpy, slow)"
    priority = -10  # never chosen by --backend auto over the numpy backend (priority 0)

    def status(self) -> BackendStatus:
        return BackendStatus(available=True, path="numpy-float64")

    def supported_dtypes(self) -> frozenset[str]:
        return frozenset({"F32", "F16", "BF16"})

    def prepared_form(self, info: TensorInfo) -> TensorForm:
        # fp32 of the logical shape, rows contiguous; an F32 tensor's prepared bytes are its file's
        return TensorForm.of(np.float32, info.shape, identical=info.dtype == "F32")

    def prepare_weight(self, info: TensorInfo, raw: U8, out: U8) -> Weight:
        data = out[: 4 * info.n_elements].view(np.float32).reshape(info.shape)  # the start of out
        flat = data.reshape(-1)
        if info.dtype == "F32":
            flat[:] = raw.view(np.float32)
        elif info.dtype == "F16":
            flat[:] = raw.view(np.float16)
        elif info.dtype == "BF16":  # the top half of an fp32
            flat[:] = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise ModelError(f"The f64acc backend cannot load {info.dtype} tensors; use F32, F16 or BF16.")
        return Weight(info, data)

    def to_float(self, w: Weight) -> F32:
        values: F32 = w.data.view(np.float32).reshape(w.info.shape)
        return values

    def linear(self, x: F32, w: Weight) -> F32:
        out: F32 = (x.astype(np.float64) @ self.to_float(w).T.astype(np.float64)).astype(np.float32)
        return out


@hookimpl
def edgert_register_backends(register: Callable[[type[KernelBackend]], None]) -> None:
    register(Float64Backend)
