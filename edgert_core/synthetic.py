"""A seeded synthetic model with the shapes of SmolLM2-135M or GPT-2-small.

Weights are generated on demand, per tensor and per block of rows, from ``(seed, tensor name, row
block)``, so a tensor's bytes are the same whether it is read whole or row by row, and the model can be
streamed like a file. It goes through the same ``loaded -> validate() -> validated`` path as files, and
has a byte-level tokenizer, so every code path runs without downloading anything.
"""

from __future__ import annotations

import importlib
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edgert_core.errors import UnknownNameError
from edgert_core.layout import SYNTHETIC_SHAPES, ModelLayout, layout_from_dims
from edgert_core.loaders.base import ModelSource, TensorEntry
from edgert_core.models.config import ModelConfig
from edgert_core.tokenizer import ByteTokenizer

DEFAULT_SHAPE = "smollm2-135m"
DEFAULT_SEED = 0
#: Rows generated together; reads of any row range regenerate only the blocks they touch.
ROW_BLOCK = 256
WEIGHT_SCALE = 0.02


def synthetic_config(shape: str) -> ModelConfig:
    """The config of a synthetic model of a known shape."""
    if shape not in SYNTHETIC_SHAPES:
        known = ", ".join(sorted(SYNTHETIC_SHAPES))
        raise UnknownNameError(f"Unknown synthetic model shape {shape!r}; known shapes: {known}.")
    dims = SYNTHETIC_SHAPES[shape]
    if dims.architecture == "llama":
        return ModelConfig(dims=dims, norm_eps=1e-5, rope_theta=100000.0, tied_embeddings=True)
    return ModelConfig(dims=dims, norm_eps=1e-5, tied_embeddings=True)


class SyntheticModel(ModelSource):
    """A synthetic model in the ``loaded`` state (fp32 tensors, canonical names)."""

    format = "synthetic"

    def __init__(self, shape: str = DEFAULT_SHAPE, seed: int = DEFAULT_SEED) -> None:
        config = synthetic_config(shape)
        self.seed = seed
        self.shape_name = shape
        name = f"synthetic-{shape}"
        path = Path(f"<{name} seed {seed}>")
        base: ModelLayout = layout_from_dims(name, config.dims, tied_embeddings=True)
        infos = [t for layer in base.layers for t in layer.tensors]
        infos += [*base.embeddings, *base.head]
        entries = {t.name: TensorEntry(t, path, 0, t.name) for t in infos}
        super().__init__(path, name, config, entries)
        # the weights are drawn from numpy.random (about 4 MiB of extension modules): imported
        # now, with the model, so that it is in a run's baseline RSS like any library start-up
        importlib.import_module("numpy.random")

    def file_sizes(self) -> dict[Path, int]:
        return {self.path: 1 << 62}

    def tokenizer(self) -> ByteTokenizer:
        return ByteTokenizer(self.config.dims.vocab, self.config.eos_token_ids)

    def _block(self, name: str, shape: tuple[int, ...], block: int,
               out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
        """Rows ``block*ROW_BLOCK ...`` of tensor ``name`` as float32 ``[rows, cols]``, drawn into
        ``out`` when given (the block's whole shape: no temporary beside the destination)."""
        rows = shape[0] if len(shape) == 2 else 1
        cols = shape[-1]
        n = min(ROW_BLOCK, rows - block * ROW_BLOCK)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode()), block])
        values = rng.standard_normal((n, cols), dtype=np.float32, out=out)
        if len(shape) == 1 and name.endswith(".weight"):  # norm scales near 1
            values *= np.float32(0.1)
            values += np.float32(1.0)
        else:
            values *= np.float32(WEIGHT_SCALE)
        return values

    def read_into(self, entry: TensorEntry, out: NDArray[np.uint8], byte_start: int = 0) -> None:
        info = entry.info
        cols = info.shape[-1]
        row_bytes = cols * 4
        first = byte_start // row_bytes
        n_rows = len(out) // row_bytes
        if byte_start % row_bytes or len(out) % row_bytes:
            raise ValueError("synthetic tensors are read in whole rows")
        dest = out.view(np.float32).reshape(n_rows, cols)
        rows = info.shape[0] if len(info.shape) == 2 else 1
        row = first
        while row < first + n_rows:
            block = row // ROW_BLOCK
            lo = row - block * ROW_BLOCK
            whole = min(ROW_BLOCK, rows - block * ROW_BLOCK)
            if lo == 0 and row + whole <= first + n_rows:  # the whole block lands in ``out``
                self._block(info.name, info.shape, block, dest[row - first : row - first + whole])
                row += whole
                continue
            values = self._block(info.name, info.shape, block)
            take = min(len(values) - lo, first + n_rows - row)
            dest[row - first : row - first + take] = values[lo : lo + take]
            row += take
