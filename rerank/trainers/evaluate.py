"""Rank held-out training-schema examples with a trained folder through the inference head, and score nDCG@k.

This is the path ``rerank eval --reranker HEAD --model DIR`` takes (the registered head on the transformers
backend), so a figure from here is a figure of the shipped model, not of the trainer's own view of it.
"""

from __future__ import annotations

from typing import Any

from rerank.trainers.rewards import ndcg_at_k

__all__ = ["mean_ndcg", "per_query_ndcg", "per_query_reward"]


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


def per_query_reward(model_dir: str, config: dict[str, Any], examples: list[dict[str, Any]], samples: int = 8,
                     seed: int = 0, reference_model: str | None = None) -> list[float]:
    """The mean of the method's own GRPO reward (``task.rewards``; a config's ``extra_rewards`` are left out and not
    imported) over each example's rollouts under ``model_dir``, measured on held-out examples. ``config`` is a
    ``grpo`` config (head, template, rewards, temperature, rollout, ...); each prompt gets ``samples`` rollouts
    drawn as training draws them (generated text, or FIRST's Plackett-Luce rankings), from a generator seeded by
    (seed, query id) so two models are compared on common random numbers (the task's
    :meth:`~rerank.trainers.task.Task.sample_completions`). Row state that needs a starting model (ERank's reference
    scores) comes from ``reference_model`` (default: ``model_dir``), so a trained model and its start are scored
    against the same references."""
    import torch

    from rerank.config import from_dict
    from rerank.trainers.grpo_trainer import GRPOTrainConfig
    from rerank.trainers.sft_trainer import load_causal_lm
    from rerank.trainers.task import build_task

    own = {k: v for k, v in config.items() if k != "extra_rewards"}
    cfg = from_dict(GRPOTrainConfig, {**own, "model": model_dir}, where="per_query_reward config")
    model, tok = load_causal_lm(model_dir, cpu=True)
    tok.padding_side = "left"
    task = build_task(cfg.head, tok, cfg)
    rows = [task.grpo_rows(e) for e in examples]
    ref = load_causal_lm(reference_model, cpu=True)[0] if reference_model not in (None, model_dir) else model
    task.prepare_grpo_rows(ref, [r for rs in rows for r in rs])
    model.eval()
    out = []
    for e, rs in zip(examples, rows, strict=True):
        gen = torch.Generator().manual_seed(hash_seed(seed, str(e["qid"])))
        completions: list[str] = []
        for r in rs:
            with torch.no_grad():
                completions += task.sample_completions(model, r, samples, gen)
        rewards = task.rewards(completions, [r for r in rs for _ in range(samples)])
        out.append(sum(rewards) / len(rewards))
    return out


def hash_seed(seed: int, key: str) -> int:
    """A 62-bit seed from (seed, key), stable across processes (unlike ``hash``)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "big") >> 2
