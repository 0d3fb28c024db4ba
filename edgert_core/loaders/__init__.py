"""Model loaders: GGUF files and Hugging Face folders, header-only until validated.

:func:`open_model` recognises a path and returns its :class:`ModelSource` (the ``loaded`` state);
``source.validate()`` returns the :class:`ValidatedModel` that reads weights.
"""

from __future__ import annotations

import stat
from pathlib import Path

from edgert_core.errors import ModelError
from edgert_core.loaders.base import ModelSource, TensorEntry, ValidatedModel
from edgert_core.loaders.files import (
    PICKLE_SUFFIXES,
    check_regular,
    looks_like_pickle,
    pickle_refusal,
    read_prefix,
    stat_path,
)
from edgert_core.loaders.gguf_loader import MAGIC, GGUFModel
from edgert_core.loaders.hf_loader import HFModel, is_hf_folder


def open_model(path: str | Path) -> ModelSource:
    """Parse the headers of the model at ``path``: a ``.gguf`` file or a Hugging Face folder.

    Only regular files are opened (after resolving symlinks): FIFOs, devices, sockets and empty
    files are refused first, as are PyTorch pickles (never unpickled); see ``docs/model-files.md``."""
    p = Path(path).expanduser()
    st = stat_path(p)
    if stat.S_ISDIR(st.st_mode):
        return _open_folder(p)
    check_regular(p)
    head = read_prefix(p, 8)
    if head[:4] == MAGIC:
        return GGUFModel(p)
    if p.name == "config.json":
        return HFModel(p.parent)
    if looks_like_pickle(p, head):
        raise pickle_refusal(p)
    if p.suffix == ".safetensors":
        raise ModelError(
            f"{p} is a safetensors file; pass the Hugging Face folder that holds it together with "
            "config.json."
        )
    raise ModelError(
        f"{p} is not a model edge-rt can read: expected a GGUF file (starting with 'GGUF') or a "
        "Hugging Face folder with config.json and model.safetensors."
    )


def _open_folder(p: Path) -> ModelSource:
    if is_hf_folder(p):
        return HFModel(p)
    try:
        names = sorted(child.name for child in p.iterdir())
    except OSError as err:
        raise ModelError(f"Cannot list the model folder {p}: {err.strerror}.") from None
    ggufs = [n for n in names if n.endswith(".gguf")]
    if len(ggufs) == 1:
        return GGUFModel(p / ggufs[0])
    if ggufs:
        raise ModelError(
            f"{p} holds {len(ggufs)} .gguf files ({', '.join(ggufs[:3])}...); pass one of them."
        )
    pickles = [n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise pickle_refusal(p / pickles[0])
    raise ModelError(
        f"{p} is a folder without config.json; a Hugging Face model folder needs config.json "
        "and model.safetensors."
    )


__all__ = [
    "GGUFModel",
    "HFModel",
    "ModelSource",
    "TensorEntry",
    "ValidatedModel",
    "open_model",
]
