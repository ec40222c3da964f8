"""ERank's GRPO reward: the listwise-derived reward over the pooled rollouts of one query (ERank, 2025)."""

from __future__ import annotations

from collections.abc import Sequence

from rerank.trainers.rewards import RewardConfig

__all__ = ["REWARD_FIELDS", "erank_listwise_rewards"]

#: the ``rewards`` options ERank's reward reads (a GRPO config setting another is refused)
REWARD_FIELDS = frozenset({"rel_threshold", "bad_format_penalty", "erank_negative_above_positive_penalty",
                           "erank_scale"})


def erank_listwise_rewards(
    scores: Sequence[float | None],
    labels: Sequence[float],
    reference: Sequence[float],
    config: RewardConfig | None = None,
) -> list[float]:
    """ERank's listwise-derived reward for the pooled N×G rollouts of one query.

    ``scores[i]`` is rollout i's parsed 0–10 score (``None`` if malformed), ``labels[i]`` its document's grade and
    ``reference[i]`` the SFT model's score for that document. All valid rollouts are ranked together by score
    (competition ranking: equal scores share the better rank). A relevant rollout earns 1/rank. An irrelevant
    rollout scoring at or above the lowest-scored relevant rollout gets the large penalty; one below every relevant
    rollout gets -((s - t) / scale)^2, pulling it toward the SFT reference. Malformed output gets the format penalty.
    """
    cfg = config or RewardConfig()
    n = len(scores)
    if not (len(labels) == n == len(reference)):
        raise ValueError("scores, labels and reference must have the same length")
    valid = [s for s in scores if s is not None]
    pos_scores = [s for s, g in zip(scores, labels, strict=True) if s is not None and g >= cfg.rel_threshold]
    lowest_pos = min(pos_scores) if pos_scores else None
    rewards = []
    for s, g, t in zip(scores, labels, reference, strict=True):
        if s is None:
            rewards.append(cfg.bad_format_penalty)
        elif g >= cfg.rel_threshold:
            rank = 1 + sum(1 for o in valid if o > s)
            rewards.append(1.0 / rank)
        elif lowest_pos is not None and s >= lowest_pos:
            rewards.append(cfg.erank_negative_above_positive_penalty)
        else:
            rewards.append(-(((s - t) / cfg.erank_scale) ** 2))
    return rewards
