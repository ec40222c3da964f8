"""Explicit name -> implementation registry for rerankers (no routing by model-path substrings).

Entries point at ``module:Class`` so that importing the registry does not import torch or any head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rerank.utils.registry import Registry

if TYPE_CHECKING:
    from rerank.heads.base import Reranker

__all__ = ["register_reranker", "get_reranker_class", "available_rerankers", "RERANKERS"]

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


# built-in heads
register_reranker("cross-encoder", "rerank.heads.cross_encoder:CrossEncoderReranker")
register_reranker("yes-no", "rerank.heads.yes_no:YesNoReranker")
register_reranker("erank", "rerank.heads.erank:ERankReranker")
register_reranker("listwise", "rerank.heads.listwise:ListwiseReranker")
register_reranker("first", "rerank.heads.first:FirstReranker")
register_reranker("grouprank", "rerank.heads.grouprank:GroupRankReranker")
register_reranker("remote", "rerank.client:RemoteReranker")
