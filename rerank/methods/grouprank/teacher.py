"""GroupRank's teacher-label mode (``teacher_labels`` with ``mode: grouprank``): the candidates shuffled (seeded per
query) into groups of ``group_size``, each document's target fused from a pointwise and a listwise teacher's ranks as
in AQ-MedAI's GroupRank data recipe, ``v = -0.5·ln(pointwise rank) - 0.5·ln(listwise rank)``, then put on the 0-10
scale the GroupRank head answers on (what its SFT trains on): ``round(10 · (1 + v / ln n))`` over the query's ``n``
candidates. ``v`` lies in ``[-ln n, 0]``, so a document both teachers rank first gets 10, one both rank last gets 0,
and the order of ``v`` is kept (ties only where rounding meets)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rerank.data_recipes.base import unit_rng

if TYPE_CHECKING:
    from rerank.data_recipes.mining import TeacherLabelsRecipe
    from rerank.types import Document

__all__ = ["fused_targets", "label_rows"]


def fused_targets(pointwise_ranks: dict[str, int], listwise_ranks: dict[str, int]) -> dict[str, int]:
    """Each document's 0-10 target from its two 1-based teacher ranks over the query's ``n`` candidates (n >= 2):
    GroupRank's fused ``-0.5·ln(rank_p) - 0.5·ln(rank_l)`` mapped linearly from ``[-ln n, 0]`` onto 0-10."""
    log_n = math.log(len(pointwise_ranks))
    return {d: round(10 * (1 - 0.5 * (math.log(rp) + math.log(listwise_ranks[d])) / log_n))
            for d, rp in pointwise_ranks.items()}


def label_rows(recipe: TeacherLabelsRecipe, unit: str, docs: list[Document],
               row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per group of at least 2 documents (``qid`` ``UNIT#gN``) with its documents' 0-10 ``teacher_scores``."""
    from rerank.data_recipes.mining import rank_positions

    cfg = recipe.config
    ids = [d.id for d in docs]
    rp = rank_positions(ids, recipe.scores("pointwise_teacher", unit, docs))
    rl = rank_positions(ids, recipe.scores("listwise_teacher", unit, docs))
    value = fused_targets(rp, rl)
    order = list(range(len(docs)))
    unit_rng(cfg.seed, unit).shuffle(order)
    rows = []
    for g, start in enumerate(range(0, len(order), cfg.group_size)):
        idx = order[start : start + cfg.group_size]
        if len(idx) < 2:
            continue
        rows.append({**row, "qid": f"{unit}#g{g}", "candidates": [row["candidates"][j] for j in idx],
                     "labels": [row["labels"][j] for j in idx], "teacher_scores": [value[ids[j]] for j in idx]})
    return rows
