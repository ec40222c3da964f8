"""One explicit name -> implementation registry, used for rerankers, backends, retrievers and trainers.

Entries are ``"module:Attr"`` strings (imported on first use, so importing a registry imports no model code) or
objects. Lookups are by exact name; an unknown name raises listing the known ones — never a silent default. A
built-in entry (the toolkit's own names: every method, ``remote``, ``sft``, ``grpo``) cannot be replaced: another
target under its name is a one-line :class:`ConfigError` naming both; registering the same target again is a no-op.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from rerank.errors import ConfigError

__all__ = ["Registry", "import_target", "target_path"]

T = TypeVar("T")
#: held while a registry fills its built-in entries (re-entrant: a fill may look up another registry, or its own)
_FILL_LOCK = threading.RLock()


def target_path(target: Any) -> str:
    """A registry target as ``"module:Attr"``: a string as it is, an object by its module and qualified name."""
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"


def import_target(target: str, where: str) -> Any:
    """Import ``"module:Attr"`` and return the attribute. A module or attribute that does not exist is a one-line
    :class:`ConfigError` starting with ``where`` (what names the target); a module that exists but fails to import
    (e.g. a missing dependency of it) raises as it is."""
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise ConfigError(f"{where}: {target!r} cannot be imported: there is no module {e.name!r}") from None
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise ConfigError(f"{where}: {target!r} cannot be imported: module {module!r} has no {attr!r}") from None


class Registry(Generic[T]):
    """Names of one ``kind`` (e.g. "reranker") mapped to lazily imported implementations."""

    def __init__(self, kind: str, fill: Callable[[Registry[T]], None] | None = None) -> None:
        """``fill`` (optional) registers the built-in entries on first use, so importing the registry reads nothing
        (a method descriptor's error then surfaces where a command uses the table, as one line)."""
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._loaders: dict[str, Callable[[], T]] = {}
        self._resolved: dict[str, T] = {}
        self._builtin: set[str] = set()
        self._fill = fill
        self._filling = False

    def _filled(self) -> None:
        """Run ``fill`` once, before any lookup or registration. Under a lock and marked done only once it returns,
        so another thread waits for the built-in entries instead of finding a half-filled table; the filling thread's
        own lookups (a fill registers into the table) pass; a failed fill is run again on the next use."""
        if self._fill is None:
            return
        with _FILL_LOCK:
            if self._fill is None or self._filling:
                return
            self._filling = True
            try:
                self._fill(self)  # entries already in when it fails are registered again as no-ops next time
                self._fill = None
            finally:
                self._filling = False

    def register(self, name: str, target: str | T, *, builtin: bool = False,
                 load: Callable[[], T] | None = None) -> None:
        """Register ``name`` -> ``"module:Attr"`` or an object; ``load`` (optional) imports a string target instead
        of a plain import (e.g. checking it). Re-registering a name replaces it, except a ``builtin`` one: another
        target under its name raises naming both, the same target again is a no-op."""
        self._filled()
        if name in self._builtin:
            if target_path(target) == target_path(self._entries[name]):
                return
            raise ConfigError(f"{self.kind} name {name!r} is taken by the built-in {target_path(self._entries[name])}; "
                              f"{target_path(target)} cannot be registered under it: choose another name")
        self._entries[name] = target
        self._resolved.pop(name, None)
        self._loaders.pop(name, None)
        if load is not None:
            self._loaders[name] = load
        if builtin:
            self._builtin.add(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._filled()
        return sorted(self._entries)

    def builtin_names(self) -> list[str]:
        """The built-in names (which cannot be replaced), sorted."""
        self._filled()
        return sorted(self._builtin)

    def get(self, name: str) -> T:
        """The implementation registered as ``name``, imported on first use."""
        self._filled()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names()) or '(none)'}")
        if name not in self._resolved:
            target = self._entries[name]
            if name in self._loaders:
                target = self._loaders[name]()
            elif isinstance(target, str):
                target = import_target(target, f"{self.kind} {name!r}")
            self._resolved[name] = target
        return self._resolved[name]
