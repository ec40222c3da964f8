"""Ranking rewards for GRPO: pure functions of a predicted ranking / scores and the gold labels.

Conventions (stated once, used everywhere):

* ``labels`` maps doc id -> graded relevance; a document is *relevant* when its grade >= ``rel_threshold`` (1).
* nDCG uses linear gains (grade) and log2(rank + 1) discounts, as trec_eval does; the ideal DCG is over all labelled
  documents of the example (the group / candidate list), so a perfect ordering scores 1.0. An example without any
  relevant document scores 0.0 on nDCG, recall and RR.
* ERank scores are on the 0–10 scale and divided by 10 inside its reward so that every term lies in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "RewardConfig",
    "erank_listwise_rewards",
    "format_validity",
    "grouprank_reward",
    "js_divergence",
    "ndcg_at_k",
    "permutation_reward",
    "ranking_from_scores",
    "rbo",
    "reasonrank_reward",
    "recall_at_k",
    "reciprocal_rank",
    "tie_aware_ndcg_at_k",
    "tie_aware_recall_at_k",
]


@dataclass
class RewardConfig:
    """Reward constants; defaults follow ANCHORS.md (GroupRank, ReasonRank, ERank)."""

    k: int = 10
    rel_threshold: int = 1
    recall_weight: float = 0.2
    js_weight: float = 0.1
    rbo_weight: float = 0.1
    rbo_p: float = 0.9
    invalid_json_penalty: float = -0.1
    bad_tags_penalty: float = -0.5
    wrong_count_reward: float = 0.0
    repair_incomplete: bool = False
    missing_penalty: float = 1.0
    bad_format_penalty: float = -1.0
    erank_negative_above_positive_penalty: float = -1.0
    erank_scale: float = 10.0


def ranking_from_scores(scores: Mapping[str, float]) -> list[str]:
    """Doc ids by score descending; ties keep the mapping's insertion order."""
    return sorted(scores, key=lambda d: -scores[d])


def _dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], labels: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k of ``ranking`` with linear gains; unlabelled docs have gain 0."""
    ideal = _dcg(sorted((g for g in labels.values() if g > 0), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    return _dcg([max(labels.get(d, 0.0), 0.0) for d in ranking[:k]]) / ideal


def tie_aware_ndcg_at_k(scores: Mapping[str, float], labels: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k of a score map, tie-aware (McSherry & Najork, 2008): the expectation over every order of tied docs, so
    the value never depends on the order in which tied documents were listed (an all-equal map scores as random)."""
    ideal = _dcg(sorted((g for g in labels.values() if g > 0), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    groups: dict[float, list[float]] = {}
    for d, s in scores.items():
        groups.setdefault(float(s), []).append(max(labels.get(d, 0.0), 0.0))
    dcg, start = 0.0, 0
    for s in sorted(groups, reverse=True):
        gains = groups[s]
        discount = sum(1 / math.log2(i + 2) for i in range(start, min(start + len(gains), k)))
        dcg += sum(gains) / len(gains) * discount
        start += len(gains)
    return dcg / ideal


def tie_aware_recall_at_k(scores: Mapping[str, float], labels: Mapping[str, float], k: int = 10,
                          rel_threshold: int = 1) -> float:
    """Expected Recall@k of a score map over every order of tied docs (a tied group cut by k counts pro rata)."""
    relevant = {d for d, g in labels.items() if g >= rel_threshold}
    if not relevant:
        return 0.0
    groups: dict[float, list[str]] = {}
    for d, s in scores.items():
        groups.setdefault(float(s), []).append(d)
    found, start = 0.0, 0
    for s in sorted(groups, reverse=True):
        docs = groups[s]
        inside = max(0, min(start + len(docs), k) - start)
        found += sum(d in relevant for d in docs) * inside / len(docs)
        start += len(docs)
    return found / len(relevant)


def recall_at_k(ranking: Sequence[str], labels: Mapping[str, float], k: int = 10, rel_threshold: int = 1) -> float:
    """Fraction of relevant docs found in the top-k."""
    relevant = {d for d, g in labels.items() if g >= rel_threshold}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def reciprocal_rank(ranking: Sequence[str], labels: Mapping[str, float], rel_threshold: int = 1) -> float:
    """1 / rank of the first relevant doc (0 if none is ranked)."""
    for i, d in enumerate(ranking, 1):
        if labels.get(d, 0) >= rel_threshold:
            return 1.0 / i
    return 0.0


def rbo(ranking: Sequence[str], teacher: Sequence[str], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap (Webber et al., 2010) of two rankings, evaluated to the shorter depth."""
    depth = min(len(ranking), len(teacher))
    if depth == 0:
        return 0.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    overlap = 0
    total = 0.0
    for d in range(1, depth + 1):
        a, b = ranking[d - 1], teacher[d - 1]
        if a == b:
            overlap += 1
        else:
            overlap += (a in seen_b) + (b in seen_a)
        seen_a.add(a)
        seen_b.add(b)
        total += overlap / d * p**d
    return overlap / depth * p**depth + (1 - p) / p * total


def format_validity(text: str, open_tag: str = "<answer>", close_tag: str = "</answer>") -> float:
    """1.0 when ``text`` holds exactly one well-ordered ``open_tag … close_tag`` pair, else 0.0."""
    if text.count(open_tag) != 1 or text.count(close_tag) != 1:
        return 0.0
    return 1.0 if text.index(open_tag) < text.index(close_tag) else 0.0


def js_divergence(p: Sequence[float], q: Sequence[float], eps: float = 1e-12) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) of two non-negative score vectors, each normalised to sum 1.

    An all-zero vector is treated as uniform.
    """
    if len(p) != len(q):
        raise ValueError("distributions must have the same length")

    def norm(v: Sequence[float]) -> list[float]:
        v = [max(float(x), 0.0) for x in v]
        s = sum(v)
        return [x / s for x in v] if s > 0 else [1.0 / len(v)] * len(v)

    pn, qn = norm(p), norm(q)
    m = [(a + b) / 2 for a, b in zip(pn, qn, strict=True)]

    def kl(a: list[float], b: list[float]) -> float:
        return sum(x * math.log2(x / max(y, eps)) for x, y in zip(a, b, strict=True) if x > 0)

    return 0.5 * kl(pn, m) + 0.5 * kl(qn, m)


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
