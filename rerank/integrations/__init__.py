"""Adapters that put any :class:`~rerank.heads.base.Reranker` into RAG frameworks (extras ``langchain``, ``llamaindex``)."""

from __future__ import annotations

import dataclasses
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


def load_reranker(adapter: Any, method: str, model: str | None, options: dict[str, Any]) -> Reranker:
    """``Reranker.load(method, model=model, **options)`` for an adapter's ``.load``; ``top_k``, which the method's
    options lack (it is the adapters' ``top_n``), is refused with a one-line TypeError naming ``top_n``."""
    if "top_k" in options and not _takes_top_k(method, model):
        raise TypeError(f"{adapter.__name__}.load: top_k is not an option of {method}; the number of documents the "
                        f"adapter keeps is top_n, e.g. {adapter.__name__}.load({method!r}, ..., "
                        f"top_n={options['top_k']!r})")
    return Reranker.load(method, model=model, **options)


def _takes_top_k(method: str, model: str | None) -> bool:
    """Whether the reranker ``Reranker.load(method, model=model)`` builds has a ``top_k`` option (setwise, duot5 do);
    True when the method cannot be told here (``Reranker.load`` then says what is wrong)."""
    from rerank.heads.registry import available_rerankers, get_reranker_class
    from rerank.methods.record import read_record

    name: Any = method
    if method not in available_rerankers():
        record = read_record(model if model is not None else method)
        name = record.get("method") if record is not None else None
        if name not in available_rerankers():
            return True
    config = get_reranker_class(name).config_class
    return not dataclasses.is_dataclass(config) or any(f.name == "top_k" for f in dataclasses.fields(config))
