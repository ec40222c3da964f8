"""Explicit name -> implementation registry for rerankers (no routing by model-path substrings).

The names are the reranker methods of :mod:`rerank.methods` (each method's ``head``) plus ``remote`` (the client of a
``rerank serve`` endpoint): built-in names, which another class cannot take. Entries point at ``module:Class`` and
are registered on first use, so importing the registry reads no descriptor and imports no torch or head; a method's
head is imported through its descriptor (:meth:`rerank.methods.Method.resolve`), which checks that the class's
``method`` is the method's name.

:func:`register_reranker` adds a head class of user code under a new name, which ``Reranker.load(name, ...)`` (and
so the Python eval pipeline and suites) builds in that process; the class's ``method`` must be that name (what its
results record), another is a one-line error naming both. A head subclassing a method's head (e.g. ``YesNoReranker``,
``MonoT5Reranker``) reads that method's templates (its default when none is given, and refuses another method's);
one that subclasses no method's head needs ``template=`` (a file or mapping).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from rerank.errors import ConfigError
from rerank.methods import all_methods
from rerank.utils.registry import Registry, import_target, target_path

if TYPE_CHECKING:
    from rerank.heads.base import Reranker

__all__ = ["RERANKERS", "available_rerankers", "get_reranker_class", "register_reranker"]


def _builtins(registry: Registry[type[Reranker]]) -> None:
    """The client of a served reranker, then every reranker method's head (a method cannot take a built-in name)."""
    registry.register("remote", "rerank.client:RemoteReranker", builtin=True)
    for method in all_methods().values():
        if method.kind == "reranker":
            registry.register(method.name, method.head, builtin=True, load=partial(method.resolve, "head"))


RERANKERS: Registry[type[Reranker]] = Registry("reranker", fill=_builtins)


def _named(name: str, cls: Any) -> type[Reranker]:
    """``cls`` when its ``method`` is ``name`` (what ``describe()`` and so ``metrics.json`` record); otherwise a
    one-line :class:`ConfigError` naming both, as a method's descriptor refuses a head class naming another method."""
    method = getattr(cls, "method", None)
    if method != name:
        raise ConfigError(f"reranker {target_path(cls)} has method {method!r} but is registered as {name!r}: set "
                          f"method = {name!r} in the class (it is the name its results record)")
    return cls


def register_reranker(name: str, target: str | type) -> None:
    """Register ``name`` -> ``"module:Class"`` (or a class) whose ``method`` is ``name`` (another is refused: a class
    is checked now, a ``"module:Class"`` when it is first imported). Re-registering a name replaces it; a built-in name
    (a method, ``remote``) is refused unless it is the same class."""
    if name in RERANKERS.builtin_names():
        RERANKERS.register(name, target)  # the same target is a no-op, another one is refused naming both
        return
    if isinstance(target, str):
        RERANKERS.register(name, target, load=lambda: _named(name, import_target(target, f"reranker {name!r}")))
    else:
        RERANKERS.register(name, _named(name, target))


def available_rerankers() -> list[str]:
    """Registered method names, sorted."""
    return RERANKERS.names()


def get_reranker_class(name: str) -> type[Reranker]:
    """Resolve a registered method name; an unknown name raises, listing the known ones."""
    return RERANKERS.get(name)
