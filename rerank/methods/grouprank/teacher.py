"""GroupRank's teacher-label mode (``teacher_labels`` with ``mode: grouprank``): the candidates shuffled (seeded per
query) into groups of ``group_size``, each document's target ``-0.5·ln(pointwise rank) - 0.5·ln(listwise rank)`` from a
pointwise and a listwise teacher (AQ-MedAI's GroupRank data recipe)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rerank.data_recipes.base import unit_rng

if TYPE_CHECKING:
    from rerank.data_recipes.mining import TeacherLabelsRecipe
    from rerank.types import Document

__all__ = ["label_rows"]


def label_rows(recipe: TeacherLabelsRecipe, unit: str, docs: list[Document],
               row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per group of at least 2 documents (``qid`` ``UNIT#gN``) with its documents' ``teacher_scores``."""
    from rerank.data_recipes.mining import rank_positions

    cfg = recipe.config
    ids = [d.id for d in docs]
    rp = rank_positions(ids, recipe.scores("pointwise_teacher", unit, docs))
    rl = rank_positions(ids, recipe.scores("listwise_teacher", unit, docs))
    value = {d: -0.5 * math.log(rp[d]) - 0.5 * math.log(rl[d]) for d in ids}
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
