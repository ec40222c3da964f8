"""Explicit name -> implementation registry for rerankers (no routing by model-path substrings).

Entries point at ``module:Class`` so that importing the registry does not import torch or any head.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rerank.errors import ConfigError

if TYPE_CHECKING:
    from rerank.heads.base import Reranker

__all__ = ["register_reranker", "get_reranker_class", "available_rerankers"]

_REGISTRY: dict[str, str | type] = {}


def register_reranker(name: str, target: str | type) -> None:
    """Register ``name`` -> ``"module:Class"`` (or a class). Re-registering a name replaces it."""
    _REGISTRY[name] = target


def available_rerankers() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def get_reranker_class(name: str) -> type[Reranker]:
    """Resolve a registered method name; an unknown name raises, listing the known ones."""
    if name not in _REGISTRY:
        known = ", ".join(available_rerankers()) or "(none)"
        raise ConfigError(f"unknown reranker {name!r}; known rerankers: {known}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = target
    return target  # type: ignore[return-value]


# built-in heads
register_reranker("cross-encoder", "rerank.heads.cross_encoder:CrossEncoderReranker")
register_reranker("yes-no", "rerank.heads.yes_no:YesNoReranker")
register_reranker("erank", "rerank.heads.erank:ERankReranker")
register_reranker("listwise", "rerank.heads.listwise:ListwiseReranker")
register_reranker("first", "rerank.heads.first:FirstReranker")
register_reranker("grouprank", "rerank.heads.grouprank:GroupRankReranker")
