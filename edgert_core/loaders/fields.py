"""Typed reads of the fields a loader takes from ``config.json`` or GGUF metadata.

Every value a loader uses goes through :class:`Fields`, so a wrong type (a layer count written as a
word, ``true`` where a count belongs, a list where a number belongs) or an impossible value (zero
heads, a negative size, a dimension beyond :data:`~edgert_core.models.config.DIM_LIMITS`) is one
:class:`~edgert_core.errors.ModelError` naming the file and the field, never a Python exception.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgert_core.errors import ModelError

_MISSING = object()


def show(value: Any, limit: int = 40) -> str:
    """A short ``repr`` of a value for a message (one line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Fields:
    """The fields of one config (``values``) read from ``path``; ``prefix`` is prepended to each
    name looked up (``llama.`` for GGUF metadata); ``label`` (default: ``prefix``) is prepended to
    names in messages (``rope_parameters.`` for a nested object)."""

    def __init__(self, values: Mapping[str, Any], path: Path, prefix: str = "",
                 label: str | None = None) -> None:
        self.values = values
        self.path = path
        self.prefix = prefix
        self.label = prefix if label is None else label

    def error(self, name: str, problem: str) -> ModelError:
        return ModelError(
            f"{self.path}: {self.label}{name} {problem}; the model config is corrupt or not "
            "supported."
        )

    def raw(self, *names: str) -> tuple[str, Any]:
        """The first of ``names`` present with a value other than ``None``: ``(name, value)``
        (``(names[0], _MISSING)`` when none is)."""
        for name in names:
            value = self.values.get(self.prefix + name)
            if value is not None:
                return name, value
        return names[0], _MISSING

    def has(self, *names: str) -> bool:
        return self.raw(*names)[1] is not _MISSING

    def whole(self, *names: str, default: int | None = None, minimum: int = 1,
            maximum: int = 1 << 62) -> int:
        """A whole number in ``[minimum, maximum]`` (``bool`` and floats are refused)."""
        name, value = self.raw(*names)
        if value is _MISSING:
            if default is not None:
                return default
            raise ModelError(
                f"{self.path} lacks {self.label}{name}; the model config is incomplete."
            )
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be a whole number, got {show(value)}")
        if not minimum <= value <= maximum:
            raise self.error(name, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0, maximum: float = math.inf,
              exclusive_min: bool = True) -> float:
        """A finite number in ``(minimum, maximum]`` (``[minimum, ...`` unless ``exclusive_min``)."""
        _, value = self.raw(name)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number, got {show(value)}")
        number = float(value)
        low_ok = number > minimum if exclusive_min else number >= minimum
        if not math.isfinite(number) or not low_ok or number > maximum:
            low = f"above {minimum}" if exclusive_min else f"at least {minimum}"
            high = "" if maximum == math.inf else f" and at most {maximum}"
            raise self.error(name, f"must be a finite number {low}{high}, got {show(value)}")
        return number

    def flag(self, name: str, default: bool) -> bool:
        _, value = self.raw(name)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {show(value)}")
        return value

    def text(self, name: str, default: str | None = None) -> str | None:
        _, value = self.raw(name)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {show(value)}")
        return value

    def obj(self, name: str) -> dict[str, Any]:
        """A JSON object (``{}`` when absent)."""
        _, value = self.raw(name)
        if value is _MISSING:
            return {}
        if not isinstance(value, dict):
            raise self.error(name, f"must be an object, got {show(value)}")
        return value

    def token_ids(self, name: str, vocab: int, *, drop_outside: bool = False) -> tuple[int, ...]:
        """One token id or a list of them, each in ``[0, vocab)`` (``()`` when absent). An id
        outside the vocabulary is an error, or with ``drop_outside`` left out: such an id can never
        be embedded or generated (transformers keeps a GPT-2 config's default 50256 whatever the
        vocabulary, and only warns)."""
        _, value = self.raw(name)
        if value is _MISSING:
            return ()
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                raise self.error(name, f"must be a token id or a list of them, got {show(value)}")
            if not 0 <= item < vocab and not drop_outside:
                raise self.error(name, f"is {item}, outside the vocabulary of {vocab} tokens")
        return tuple(dict.fromkeys(i for i in items if 0 <= i < vocab))


def check_divisible(fields: Fields, name: str, value: int, by_name: str, by: int) -> None:
    """Refuse ``value`` (field ``name``) unless ``by`` (field ``by_name``) divides it."""
    if value % by:
        raise fields.error(name, f"({value}) must be a multiple of {fields.label}{by_name} ({by})")
