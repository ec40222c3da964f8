"""Reranker heads behind one interface: :class:`Reranker`, constructed by registered method name.

:func:`register_reranker` adds a head class of user code under a new name, its ``method`` (a built-in name is
refused), which :meth:`Reranker.load` then builds; a head subclassing a method's head reads that method's prompt
templates (see :mod:`rerank.heads.registry`)."""

from rerank.heads.base import Reranker, RerankerConfig, RerankStats
from rerank.heads.registry import available_rerankers, get_reranker_class, register_reranker

__all__ = [
    "RerankStats",
    "Reranker",
    "RerankerConfig",
    "available_rerankers",
    "get_reranker_class",
    "register_reranker",
]
