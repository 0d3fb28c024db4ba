"""Fake distributions and entry points for plugin tests: ``importlib.metadata`` patched so the
registry discovers exactly the plugins a test gives it, with nothing installed.

Import from tests as ``import plugin_helpers``."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from edgert_core import hookspecs


@dataclass
class FakeDistribution:
    name: str
    version: str = "0.1"

    @property
    def metadata(self) -> dict[str, str]:
        return {"Name": self.name}


@dataclass
class FakeEntryPoint:
    """What the core reads of an entry point: name, value, dist and load()."""

    name: str
    value: str
    dist: FakeDistribution | None
    loader: Callable[[], object]
    group: str = hookspecs.ENTRY_POINT_GROUP

    def load(self) -> object:
        return self.loader()


def entry_point(name: str, plugin: object, dist: str, version: str = "1.0",
                value: str | None = None) -> FakeEntryPoint:
    """An entry point ``name`` of distribution ``dist`` that loads ``plugin``."""
    return FakeEntryPoint(name, value or f"{dist.replace('-', '_')}.plugin",
                          FakeDistribution(dist, version), lambda: plugin)


def failing_entry_point(name: str, exc: BaseException, dist: str) -> FakeEntryPoint:
    """An entry point whose import raises ``exc``."""

    def load() -> object:
        raise exc

    return FakeEntryPoint(name, f"{dist.replace('-', '_')}.plugin", FakeDistribution(dist), load)


def install(monkeypatch: pytest.MonkeyPatch, *eps: FakeEntryPoint) -> None:
    """Make ``importlib.metadata.entry_points`` return these entry points only."""

    def entry_points(*, group: str) -> list[FakeEntryPoint]:
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
