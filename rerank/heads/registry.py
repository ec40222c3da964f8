"""Explicit name -> implementation registry for rerankers (no routing by model-path substrings).

The names are the reranker methods of :mod:`rerank.methods` (each method's ``head``) plus ``remote`` (the client of a
``rerank serve`` endpoint): built-in names, which another class cannot take. Entries point at ``module:Class`` and
are registered on first use, so importing the registry reads no descriptor and imports no torch or head; a method's
head is imported through its descriptor (:meth:`rerank.methods.Method.resolve`), which checks that the class's
``method`` is the method's name.

:func:`register_reranker` adds a head class of user code under a new name, which ``Reranker.load(name, ...)`` (and
so the Python eval pipeline and suites) builds in that process (and in its eval workers, which import it by its
``module:Class``); the class's ``method`` must be that name (what its results record), another is a one-line error
naming both. A head subclassing a method's head (e.g. ``YesNoReranker``, ``MonoT5Reranker``) reads that method's
templates (its default when none is given, and refuses another method's); one that subclasses no method's head needs
``template=`` (a file or mapping).

Installed packages add heads through the entry-point group ``rerank.rerankers`` (``name = "module:Class"``), and a
``"module:Class"`` given as the reranker name (``--reranker mypkg.heads:MyHead``) imports that class: user code, run
as naming a module runs it. Both are checked as a registration is. A method a model folder's ``rerank.json`` names is
looked up as a registered name only (``get_reranker_class(name, paths=False)``): a folder never chooses code to run.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from rerank.errors import ConfigError
from rerank.methods import all_methods
from rerank.utils.registry import Registry, named_class

if TYPE_CHECKING:
    from rerank.heads.base import Reranker

__all__ = ["RERANKERS", "available_rerankers", "get_reranker_class", "recorded_reranker_class", "register_reranker"]


def _builtins(registry: Registry[type[Reranker]]) -> None:
    """The client of a served reranker, then every reranker method's head (a method cannot take a built-in name)."""
    registry.register("remote", "rerank.client:RemoteReranker", builtin=True)
    for method in all_methods().values():
        if method.kind == "reranker":
            registry.register(method.name, method.head, builtin=True, load=partial(method.resolve, "head"))


def _check(name: str | None, cls: Any) -> type[Reranker]:
    """``cls`` when it is a :class:`Reranker` subclass whose ``method`` is ``name`` (what ``describe()`` and so
    ``metrics.json`` record), or, for a ``"module:Class"`` name (``name`` None), a valid name that no other registered
    class holds; otherwise a one-line :class:`ConfigError` (:func:`~rerank.utils.registry.named_class`)."""
    from rerank.heads.base import Reranker

    return named_class(RERANKERS, name, cls, Reranker, "rerank.Reranker", "method")


RERANKERS: Registry[type[Reranker]] = Registry("reranker", fill=_builtins, check=_check, group="rerank.rerankers",
                                               paths=True, exclusive=True)


def register_reranker(name: str, target: str | type, *, replace: bool = False) -> None:
    """Register ``name`` -> ``"module:Class"`` (or a class): a :class:`Reranker` subclass whose ``method`` is ``name``
    (a class is checked now, a ``"module:Class"`` when it is first imported). Another target under a name taken
    from user code raises unless ``replace``; a built-in name (a method, ``remote``) is refused unless it is the same
    class."""
    RERANKERS.register(name, target, replace=replace)


def available_rerankers() -> list[str]:
    """Registered method names, sorted."""
    return RERANKERS.names()


def get_reranker_class(name: str, *, paths: bool = True) -> type[Reranker]:
    """Resolve a registered method name (or a ``"module:Class"``, unless ``paths=False``: a name read from a model
    folder's ``rerank.json``, which never names code to import); an unknown name raises, listing the known ones."""
    return RERANKERS.get(name, paths=paths)


def recorded_reranker_class(name: str, folder: Any) -> type[Reranker]:
    """The class a trained ``folder``'s ``rerank.json`` names: a registered name only, never an import. A name not
    registered here (a plugin package not installed, a class registered from code not yet run) is a one-line error
    naming that file and what to do."""
    if RERANKERS.entry_path(name) is None and name not in RERANKERS.names():
        raise ConfigError(f"{folder}/rerank.json names the reranker {name!r}, which is not registered here: install "
                          f"the package that provides it (its 'rerank.rerankers' entry point) or call "
                          f"rerank.heads.register_reranker({name!r}, ...) before loading; known rerankers: "
                          f"{', '.join(available_rerankers())}")
    return RERANKERS.get(name, paths=False)
