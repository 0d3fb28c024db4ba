"""Model loaders: GGUF files and Hugging Face folders, header-only until validated.

:func:`open_model` recognises a path and returns its :class:`ModelSource` (the ``loaded`` state);
``source.validate()`` returns the :class:`ValidatedModel` that reads weights.
"""

from __future__ import annotations

from pathlib import Path

from edgert_core.errors import ModelError
from edgert_core.loaders.base import ModelSource, TensorEntry, ValidatedModel
from edgert_core.loaders.gguf_loader import GGUFModel, is_gguf
from edgert_core.loaders.hf_loader import HFModel, is_hf_folder


def open_model(path: str | Path) -> ModelSource:
    """Parse the headers of the model at ``path``: a ``.gguf`` file or a Hugging Face folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(
            f"Model {p} does not exist; pass a .gguf file, a Hugging Face model folder, or a known "
            "name such as smollm2 (fetch it with: edge-rt pull smollm2)."
        )
    if p.is_dir():
        if is_hf_folder(p):
            return HFModel(p)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return GGUFModel(ggufs[0])
        raise ModelError(
            f"{p} is a folder without config.json; a Hugging Face model folder needs config.json "
            "and model.safetensors."
        )
    if is_gguf(p):
        return GGUFModel(p)
    if p.name == "config.json":
        return HFModel(p.parent)
    raise ModelError(
        f"{p} is not a model edge-rt can read: expected a GGUF file (starting with 'GGUF') or a "
        "Hugging Face folder with config.json and model.safetensors."
    )


__all__ = [
    "GGUFModel",
    "HFModel",
    "ModelSource",
    "TensorEntry",
    "ValidatedModel",
    "open_model",
]
