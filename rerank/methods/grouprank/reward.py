"""GroupRank's GRPO reward: nDCG@k + 0.2·Recall@k + 0.1·(1 − JS) of a group's scores, penalties for bad output."""

from __future__ import annotations

from collections.abc import Mapping

from rerank.trainers.rewards import RewardConfig, js_divergence, tie_aware_ndcg_at_k, tie_aware_recall_at_k

__all__ = ["REWARD_FIELDS", "grouprank_reward"]

#: the ``rewards`` options GroupRank's reward reads (a GRPO config setting another is refused)
REWARD_FIELDS = frozenset({"k", "rel_threshold", "recall_weight", "js_weight", "bad_tags_penalty",
                           "invalid_json_penalty"})


def grouprank_reward(
    predicted: Mapping[str, float] | None,
    gold: Mapping[str, float],
    tags_ok: bool,
    config: RewardConfig | None = None,
) -> float:
    """GroupRank: nDCG@k + 0.2·Recall@k + 0.1·(1 − JS(P‖Q)) when tags and JSON are valid; −0.1 for invalid JSON
    (``predicted is None`` with good tags); −0.5 for bad tags. Docs missing from ``predicted`` score 0. nDCG and
    Recall are tie-aware (expected over the orders of tied scores), so equal scores earn a random order's value,
    not the luck of the order the group was listed in.
    """
    cfg = config or RewardConfig()
    if not tags_ok:
        return cfg.bad_tags_penalty
    if predicted is None:
        return cfg.invalid_json_penalty
    ids = list(gold)
    pred = {d: float(predicted.get(d, 0.0)) for d in ids}
    js = js_divergence([pred[d] for d in ids], [float(gold[d]) for d in ids])
    return (
        tie_aware_ndcg_at_k(pred, gold, cfg.k)
        + cfg.recall_weight * tie_aware_recall_at_k(pred, gold, cfg.k, cfg.rel_threshold)
        + cfg.js_weight * (1.0 - js)
    )
