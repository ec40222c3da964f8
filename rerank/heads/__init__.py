"""Reranker heads behind one interface: :class:`Reranker`, constructed by registered method name."""

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
