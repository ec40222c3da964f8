"""One explicit name -> implementation registry, used for rerankers, backends, retrievers and trainers.

Entries are ``"module:Attr"`` strings (imported on first use, so importing a registry imports no model code) or
objects. Lookups are by exact name; an unknown name raises listing the known ones — never a silent default.
"""

from __future__ import annotations

import importlib
from typing import Any, Generic, TypeVar

from rerank.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one ``kind`` (e.g. "reranker") mapped to lazily imported implementations."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, target: str | T) -> None:
        """Register ``name`` -> ``"module:Attr"`` or an object; re-registering a name replaces it."""
        self._entries[name] = target

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The implementation registered as ``name``, imported on first use."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names()) or '(none)'}")
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._entries[name] = target
        return target
