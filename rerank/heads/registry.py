"""Explicit name -> implementation registry for rerankers (no routing by model-path substrings).

The names are the reranker methods of :mod:`rerank.methods` (each method's ``head``) plus ``remote`` (the client of a
``rerank serve`` endpoint). Entries point at ``module:Class`` so importing the registry imports no torch or head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rerank.methods import all_methods
from rerank.utils.registry import Registry

if TYPE_CHECKING:
    from rerank.heads.base import Reranker

__all__ = ["RERANKERS", "available_rerankers", "get_reranker_class", "register_reranker"]

RERANKERS: Registry[type[Reranker]] = Registry("reranker")


def register_reranker(name: str, target: str | type) -> None:
    """Register ``name`` -> ``"module:Class"`` (or a class). Re-registering a name replaces it."""
    RERANKERS.register(name, target)


def available_rerankers() -> list[str]:
    """Registered method names, sorted."""
    return RERANKERS.names()


def get_reranker_class(name: str) -> type[Reranker]:
    """Resolve a registered method name; an unknown name raises, listing the known ones."""
    return RERANKERS.get(name)


# every reranker method's head, then the client of a served reranker
for _method in all_methods().values():
    if _method.head is not None:
        register_reranker(_method.name, _method.head)
register_reranker("remote", "rerank.client:RemoteReranker")
