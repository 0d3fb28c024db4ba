"""Write an F32 copy of a GGUF model: every quantized tensor dequantized to float32, every metadata
field kept, for the benchmark rows that need an fp32 file (issue 17's F32 rows: SmolLM2 at 515 MB
under 384 MiB and 256 MiB memory limits on the numpy backend). No F32 SmolLM2 ships with
``edge-rt pull``; this makes one from the pulled Q4_1 file, with the same weights the numpy backend
computes with after its own dequantization (gguf-py's reference dequantizers).

    .venv/bin/python scripts/make_f32_gguf.py [--model smollm2] OUT.gguf

The output is a new file (an existing one is refused); the input is only read. It takes about 20 s
and writes about 515 MB for SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from edgert_core.api import open_source

#: Fields GGUFWriter writes itself (the header's counts and the architecture it is given).
_OWN_FIELDS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture"}
_FLOATS = {GGMLQuantizationType.F32, GGMLQuantizationType.F16}


def convert(src: Path, out: Path) -> int:
    """Write ``out`` from ``src``; returns the number of tensors dequantized."""
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(out, arch)
    for name, field in reader.fields.items():
        if name in _OWN_FIELDS or name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(name, field.contents(), vtype, sub)
    converted = 0
    for t in reader.tensors:
        qtype = GGMLQuantizationType(t.tensor_type)
        shape = [int(n) for n in reversed(t.shape)]  # GGUF lists ne0 first; numpy wants it last
        if qtype == GGMLQuantizationType.F32:
            data = np.asarray(t.data, dtype=np.float32).reshape(shape)
        elif qtype in _FLOATS:
            data = np.asarray(t.data).astype(np.float32).reshape(shape)
            converted += 1
        else:
            data = np.asarray(t.data)
            data = np.ascontiguousarray(
                _dequantize(data, qtype).astype(np.float32, copy=False).reshape(shape))
            converted += 1
        writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return converted


def _dequantize(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    from gguf.quants import dequantize

    return dequantize(data, qtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="smollm2", help="A GGUF file or a pulled model's name.")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} exists; give a new file name.", file=sys.stderr)
        return 2
    source = open_source(args.model)
    if source.format != "gguf":
        print(f"error: {args.model} is not a GGUF file.", file=sys.stderr)
        return 2
    src = Path(source.path)
    source.close()
    n = convert(src, args.out)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB, {n} tensors dequantized to F32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
