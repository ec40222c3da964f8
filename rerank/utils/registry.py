"""One explicit name -> implementation registry, used for rerankers, backends, retrievers and trainers.

Entries are ``"module:Attr"`` strings (imported on first use, so importing a registry imports no model code) or
objects. Lookups are by exact name; an unknown name raises listing the known ones — never a silent default. A
built-in entry (the toolkit's own names: every method, ``remote``, ``sft``, ``grpo``) cannot be replaced: another
target under its name is a one-line :class:`ConfigError` naming both; registering the same target again is a no-op.
In an ``exclusive`` registry (rerankers, retrievers) a user's name holds one target: another one under it is refused
unless ``replace=True``. A registry with an entry-point ``group`` (e.g. ``rerank.rerankers``) also lists the installed
packages' entries of that group (``name = "module:Class"``), read on first use and imported when their name is looked
up; a registry with ``paths`` also takes a ``"module:Class"`` as a name, which imports that class (user code, as
naming a module does). A name read from a file (a model folder's ``rerank.json``) is looked up with ``paths=False``:
what code runs is the user's choice, never a downloaded folder's, so such a name is a registered name only.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from rerank.errors import ConfigError

__all__ = ["NAME_RULE", "Registry", "import_target", "named_class", "target_path", "valid_name"]

T = TypeVar("T")
#: held while a registry fills its built-in entries (re-entrant: a fill may look up another registry, or its own)
_FILL_LOCK = threading.RLock()
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
#: what a registered name may be (a method's name follows the same rule)
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"


def valid_name(name: Any) -> bool:
    """Whether ``name`` follows :data:`NAME_RULE`."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def target_path(target: Any) -> str:
    """A registry target as ``"module:Attr"``: a string as it is, an object by its module and qualified name."""
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"


def import_target(target: str, where: str) -> Any:
    """Import ``"module:Attr"`` (``Attr`` may be dotted: a nested class) and return the attribute. A module or
    attribute that does not exist is a one-line :class:`ConfigError` starting with ``where`` (what names the target); a
    module that exists but fails to import (e.g. a missing dependency of it) raises as it is."""
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise ConfigError(f"{where}: {target!r} cannot be imported: there is no module {e.name!r} (is its folder on "
                          f"PYTHONPATH? the `rerank` command does not add the current folder to it; `python -m "
                          f"rerank` does)") from None
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{where}: {target!r} cannot be imported: module {module!r} has no {attr!r}") from None
    return obj


def _same(a: Any, b: Any) -> bool:
    """Whether two targets are one: the same ``"module:Attr"``, or one class of one file seen under two module names
    (a module imported twice, e.g. as ``tests.x`` and ``x``)."""
    if target_path(a) == target_path(b):
        return True
    if isinstance(a, str) or isinstance(b, str) or getattr(a, "__qualname__", a) != getattr(b, "__qualname__", b):
        return False
    files = [getattr(sys.modules.get(getattr(t, "__module__", "")), "__file__", None) for t in (a, b)]
    return files[0] is not None and files[0] == files[1]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def named_class(registry: Registry[Any], name: str | None, cls: Any, base: type, base_name: str, attr: str) -> Any:
    """``cls`` when it is a ``base`` subclass whose ``attr`` (``method``, ``name``: the name its results record) is
    ``name``, or, for a ``"module:Class"`` name (``name`` None), a valid name that no other class of ``registry``
    holds (a built-in's included); otherwise a one-line :class:`ConfigError` (``base_name`` names ``base``)."""
    kind = registry.kind
    if not (isinstance(cls, type) and issubclass(cls, base)):
        what = "a class" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ConfigError(f"{kind} {target_path(cls)} is {what}, not a subclass of {base_name}")
    own = getattr(cls, attr, None)
    why = "it is the name its results record"
    if name is not None:
        if own != name:
            raise ConfigError(f"{kind} {target_path(cls)} has {attr} {own!r} but is registered as {name!r}: set "
                              f"{attr} = {name!r} in the class ({why})")
        return cls
    if not valid_name(own):
        raise ConfigError(f"{kind} {target_path(cls)} has {attr} {own!r}: set {attr} = 'a-name' in the class ({why}; "
                          f"a name is {NAME_RULE})")
    holder = registry.entry_path(own)
    if holder is not None and not registry.holds(own, cls):
        raise ConfigError(f"{kind} {target_path(cls)} has {attr} {own!r}, the name of {holder}: set a {attr} of its "
                          f"own in the class ({why})")
    return cls


class Registry(Generic[T]):
    """Names of one ``kind`` (e.g. "reranker") mapped to lazily imported implementations."""

    def __init__(self, kind: str, fill: Callable[[Registry[T]], None] | None = None, *,
                 check: Callable[[str | None, Any], T] | None = None, group: str | None = None,
                 paths: bool = False, exclusive: bool = False) -> None:
        """``fill`` (optional) registers the built-in entries on first use, so importing the registry reads nothing
        (a method descriptor's error then surfaces where a command uses the table, as one line). ``check(name,
        obj)`` (optional) returns ``obj`` or raises a one-line :class:`ConfigError` (``name`` None for a
        ``"module:Class"`` looked up as a name); it runs on a registered object at registration and on an imported
        target. ``group`` is the entry-point group of installed plugins; ``paths`` lets a name be ``"module:Class"``;
        ``exclusive`` refuses another target under a user's name unless registered with ``replace=True``."""
        self.kind = kind
        self.group = group
        self.paths = paths
        self.exclusive = exclusive
        self._entries: dict[str, Any] = {}
        self._loaders: dict[str, Callable[[], T]] = {}
        self._resolved: dict[str, T] = {}
        self._builtin: set[str] = set()
        self._plugins: dict[str, str] = {}  # name -> the distribution whose entry point registered it
        self._refused: dict[str, tuple[str, bool]] = {}  # name -> (its one-line error, whether it is listed)
        self._by_path: dict[str, T] = {}
        self._check = check
        self._fill = fill
        self._ready = False
        self._filling = False

    def _filled(self) -> None:
        """Run ``fill`` and read the entry points once, before any lookup or registration. Under a lock and marked
        done only once it returns, so another thread waits for the built-in entries instead of finding a half-filled
        table; the filling thread's own lookups (a fill registers into the table) pass; a failed fill is run again on
        the next use."""
        if self._ready:
            return
        with _FILL_LOCK:
            if self._ready or self._filling:
                return
            self._filling = True
            try:
                if self._fill is not None:
                    self._fill(self)  # entries already in when it fails are registered again as no-ops next time
                    self._fill = None
                if self.group is not None:
                    self._read_plugins()
                self._ready = True
            finally:
                self._filling = False

    def _read_plugins(self) -> None:
        """List the entry points of ``group`` (imported when looked up). One that cannot take its name (a built-in's,
        another package's, or a name outside :data:`NAME_RULE`) is an error only where that name is looked up."""
        try:
            found = importlib.metadata.entry_points(group=self.group)
        except Exception:  # noqa: BLE001 - unreadable metadata of some distribution must not break every command
            return
        seen: dict[str, tuple[str, str]] = {}
        for ep in found:
            dist = ep.dist.name if ep.dist is not None else "?"
            if seen.get(ep.name) == (dist, ep.value):
                continue  # one distribution found twice on sys.path
            where = (f"{self.kind} {ep.name!r} of the installed package {dist!r} (entry point {ep.name} = "
                     f"{ep.value} in group {self.group})")
            if ep.name in self._builtin:
                if ep.value != target_path(self._entries[ep.name]):
                    self._refused[ep.name] = (f"{where} takes the name of the built-in "
                                              f"{target_path(self._entries[ep.name])}: rename it in {dist}'s entry "
                                              f"points, or uninstall {dist}", True)
                continue
            if not valid_name(ep.name):
                self._refused[ep.name] = (f"{where}: a {self.kind} name is {NAME_RULE}", False)
                continue
            if ep.name in seen:
                other, value = seen[ep.name]
                self._entries.pop(ep.name, None)
                self._loaders.pop(ep.name, None)
                self._refused[ep.name] = (f"two installed packages register {self.kind} {ep.name!r}: {other} "
                                          f"({value}) and {dist} ({ep.value}); uninstall one", True)
                continue
            seen[ep.name] = (dist, ep.value)
            self._entries[ep.name] = ep.value
            self._plugins[ep.name] = dist
            self._loaders[ep.name] = lambda ep=ep, where=where: self._load_plugin(ep, where)

    def _load_plugin(self, ep: importlib.metadata.EntryPoint, where: str) -> T:
        """An entry point's target imported and checked; any failure is one line naming its package."""
        if not _PATH.fullmatch(ep.value):
            raise ConfigError(f"{where}: the value must be 'module:Class'")
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - whatever a broken plugin raises, the user sees which package
            raise ConfigError(f"{where} cannot be loaded: {_first_line(e)}") from None
        try:
            return self._checked(ep.name, obj)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def _checked(self, name: str | None, obj: Any) -> T:
        return self._check(name, obj) if self._check is not None else obj

    def register(self, name: str, target: str | T, *, builtin: bool = False,
                 load: Callable[[], T] | None = None, replace: bool = False) -> None:
        """Register ``name`` -> ``"module:Attr"`` or an object; ``load`` (optional) imports a string target instead
        of a plain import (e.g. checking it). A name holds one target: another one under a built-in name raises
        naming both (the same target again is a no-op), under a user's name (in an ``exclusive`` registry) raises
        unless ``replace``. A name outside
        :data:`NAME_RULE`, a None target, or an object the registry's check refuses raises and registers nothing."""
        self._filled()
        if target is None:
            raise ConfigError(f"{self.kind} {name!r}: the target is None; give a class or 'module:Class'")
        if not builtin and not valid_name(name):
            raise ConfigError(f"{self.kind} name {name!r} is not valid: a name is {NAME_RULE}")
        if isinstance(target, str) and not _PATH.fullmatch(target):
            raise ConfigError(f"{self.kind} {name!r}: {target!r} is not 'module:Class'")
        if name in self._builtin:
            if target_path(target) == target_path(self._entries[name]):
                return
            raise ConfigError(f"{self.kind} name {name!r} is taken by the built-in {target_path(self._entries[name])}; "
                              f"{target_path(target)} cannot be registered under it: choose another name")
        if self.exclusive and name in self._entries and not replace and not _same(target, self._entries[name]):
            owner = f" by the installed package {self._plugins[name]!r}" if name in self._plugins else ""
            raise ConfigError(f"{self.kind} name {name!r} is registered{owner} to {target_path(self._entries[name])}; "
                              f"{target_path(target)} cannot replace it: choose another name, or pass replace=True")
        if not isinstance(target, str) and not builtin:
            target = self._checked(name, target)
        self._entries[name] = target
        self._resolved.pop(name, None)
        self._loaders.pop(name, None)
        self._refused.pop(name, None)
        self._plugins.pop(name, None)
        if load is not None:
            self._loaders[name] = load
        if builtin:
            self._builtin.add(name)

    def names(self) -> list[str]:
        """Registered names (an installed package's included), sorted."""
        self._filled()
        return sorted({*self._entries, *(n for n, (_, listed) in self._refused.items() if listed)})

    def builtin_names(self) -> list[str]:
        """The built-in names (which cannot be replaced), sorted."""
        self._filled()
        return sorted(self._builtin)

    def user_paths(self) -> dict[str, str]:
        """The names registered from user code (not built-in, not an installed package's), each as
        ``"module:Attr"`` (what a process that did not run the registration imports)."""
        return {name: target_path(target) for name, target in self._entries.items()
                if name not in self._builtin and name not in self._plugins}

    def get(self, name: str, *, paths: bool = True) -> T:
        """The implementation registered as ``name`` (or, where the registry takes them and ``paths``, named by a
        ``"module:Class"``), imported on first use. ``paths=False`` for a name read from a file (a model folder's
        ``rerank.json``): a registered name only, never an import. A user's string target that fails its check is
        taken out."""
        self._filled()
        if name in self._refused:
            raise ConfigError(self._refused[name][0])
        if name not in self._entries:
            if self.paths and paths and isinstance(name, str) and ":" in name:
                return self._path(name)
            known = ", ".join(self.names()) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        if name not in self._resolved:
            target = self._entries[name]
            try:
                if name in self._loaders:
                    target = self._loaders[name]()
                    if name not in self._plugins:
                        target = self._checked(name, target)
                elif isinstance(target, str):
                    target = self._checked(name, import_target(target, f"{self.kind} {name!r}"))
            except ConfigError as e:
                if name not in self._builtin and name not in self._plugins:  # a failed registration is not listed
                    for table in (self._entries, self._loaders):
                        table.pop(name, None)
                    self._refused[name] = (str(e), False)
                raise
            self._resolved[name] = target
        return self._resolved[name]

    def _path(self, path: str) -> T:
        """The class a ``"module:Class"`` name imports (user code, named explicitly), checked as a registration."""
        if path not in self._by_path:
            if not _PATH.fullmatch(path):
                raise ConfigError(f"{self.kind} {path!r} is neither a registered name nor 'module:Class'; known "
                                  f"{self.kind}s: {', '.join(self.names()) or '(none)'}")
            obj = import_target(path, f"{self.kind} {path!r}")
            self._by_path[path] = self._checked(None, obj)
        return self._by_path[path]

    def entry_path(self, name: str) -> str | None:
        """``name``'s target as ``"module:Attr"``, without importing it; None when ``name`` is not registered."""
        self._filled()
        return target_path(self._entries[name]) if name in self._entries else None

    def holds(self, name: str, obj: Any) -> bool:
        """Whether ``name`` is registered to ``obj``: the same ``"module:Attr"``, or an entry that imports to it (a
        package re-exporting a class from one of its modules); False for an unregistered name or a failing entry."""
        path = self.entry_path(name)
        if path is None:
            return False
        if path == target_path(obj):
            return True
        try:
            return self.get(name) is obj
        except (ConfigError, ImportError):
            return False
