"""Adapters that put any :class:`~rerank.heads.base.Reranker` into RAG frameworks (extras ``langchain``, ``llamaindex``)."""

from __future__ import annotations

from typing import Any

from rerank.heads.base import Reranker


def refuse_unknown_arguments(adapter: Any, data: Any) -> Any:
    """An adapter's constructor arguments ``data``, refused with a one-line TypeError when one is not a field of
    ``adapter`` (``top_k`` for ``top_n``), as the frameworks' own rerankers refuse it, instead of being ignored."""
    unknown = [k for k in data if k not in adapter.model_fields] if isinstance(data, dict) else []
    if unknown:
        raise TypeError(f"{adapter.__name__} got unknown argument(s) {', '.join(map(repr, unknown))}; it takes "
                        f"{', '.join(adapter.model_fields)}")
    return data


def check_reranker(adapter: Any, value: Any) -> Reranker:
    """``value`` when it is a rerank Reranker (a remote one included), else a one-line TypeError saying what to pass,
    when the adapter is built rather than at its first query."""
    if not isinstance(value, Reranker):
        raise TypeError(f"{adapter.__name__}: reranker must be a rerank.Reranker, e.g. Reranker.load(method, "
                        f"model=...) or Reranker.load('remote', base_url=...), got {type(value).__name__}; "
                        f"or build both with {adapter.__name__}.load(method, model=...)")
    return value
