"""Rank held-out training-schema examples with a trained folder through the inference head, and score nDCG@k.

This is the path ``rerank eval --reranker HEAD --model DIR`` takes (the registered head on the transformers
backend), so a figure from here is a figure of the shipped model, not of the trainer's own view of it.
"""

from __future__ import annotations

from typing import Any

from rerank.trainers.rewards import ndcg_at_k

__all__ = ["mean_ndcg", "per_query_ndcg"]


def per_query_ndcg(model_dir: str, head: str, examples: list[dict[str, Any]], k: int = 10,
                   **options: Any) -> list[float]:
    """nDCG@k of each of ``examples`` (in order) as head ``head`` loaded from ``model_dir`` ranks it; options fill the
    head's config. Per-query values let two models be compared by a paired test, not only by their means."""
    from rerank.heads.base import Reranker

    reranker = Reranker.load(head, model=model_dir, backend="transformers", **options)
    try:
        docs = [[{"id": c["id"], "text": c["text"], "title": c.get("title", "")} for c in e["candidates"]]
                for e in examples]
        results = reranker.rerank_batch([e["query"] for e in examples], docs)
    finally:
        reranker.close()
    values = []
    for e, r in zip(examples, results, strict=True):
        labels = {c["id"]: float(g) for c, g in zip(e["candidates"], e["labels"], strict=True)}
        values.append(ndcg_at_k(r.doc_ids, labels, k))
    return values


def mean_ndcg(model_dir: str, head: str, examples: list[dict[str, Any]], k: int = 10,
              **options: Any) -> float:
    """Mean nDCG@k over ``examples`` of head ``head`` loaded from ``model_dir`` (options fill the head's config)."""
    values = per_query_ndcg(model_dir, head, examples, k, **options)
    return sum(values) / len(values)
