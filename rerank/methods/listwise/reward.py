"""The listwise permutation reward (ReasonRank-style), shared by listwise and FIRST's GRPO."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rerank.trainers.rewards import RewardConfig, ndcg_at_k, rbo, recall_at_k

__all__ = ["REWARD_FIELDS", "permutation_reward", "reasonrank_reward"]

#: the ``rewards`` options the permutation reward reads (listwise and FIRST; a GRPO config setting another is refused)
REWARD_FIELDS = frozenset({"k", "rel_threshold", "recall_weight", "rbo_weight", "rbo_p", "wrong_count_reward",
                           "repair_incomplete", "missing_penalty", "bad_format_penalty"})


def reasonrank_reward(
    ranking: Sequence[str] | None,
    labels: Mapping[str, float],
    teacher: Sequence[str],
    expected_count: int,
    config: RewardConfig | None = None,
) -> float:
    """ReasonRank-style: nDCG@k + 0.2·Recall@k + 0.1·RBO(vs teacher); 0 when the id count is wrong; −1 for a bad
    format (``ranking is None``).
    """
    cfg = config or RewardConfig()
    if ranking is None:
        return cfg.bad_format_penalty
    if len(ranking) != expected_count or len(set(ranking)) != len(ranking):
        return cfg.wrong_count_reward
    return (
        ndcg_at_k(ranking, labels, cfg.k)
        + cfg.recall_weight * recall_at_k(ranking, labels, cfg.k, cfg.rel_threshold)
        + cfg.rbo_weight * rbo(ranking, teacher, cfg.rbo_p)
    )


def permutation_reward(
    written: Sequence[str] | None,
    ids: Sequence[str],
    labels: Mapping[str, float],
    teacher: Sequence[str],
    config: RewardConfig | None = None,
) -> float:
    """Reward of a generated permutation of the window ``ids`` (``written``: the distinct ids the model wrote, in its
    order; ``None`` when it wrote none). Complete: :func:`reasonrank_reward`. Incomplete (ids missing or repeated):
    ``wrong_count_reward`` (ReasonRank's 0), or with ``repair_incomplete`` the reward of the ranking the inference
    heads would use (missing ids appended in window order) minus ``missing_penalty`` × the missing fraction, which
    still credits a good top of the list (the part FIRST reads).
    """
    cfg = config or RewardConfig()
    if written is None:
        return cfg.bad_format_penalty
    n = len(ids)
    if len(written) == n or not cfg.repair_incomplete:
        return reasonrank_reward(list(written), labels, teacher, n, cfg)
    repaired = list(written) + [d for d in ids if d not in set(written)]
    return reasonrank_reward(repaired, labels, teacher, n, cfg) - cfg.missing_penalty * (n - len(written)) / n
