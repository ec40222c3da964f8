"""ERank's teacher-label mode (``rerank data build``, ``teacher_labels`` with ``mode: erank``): a pointwise teacher's
score per candidate as the integer 0-10 SFT target (``teacher_scores``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rerank.errors import ConfigError

if TYPE_CHECKING:
    from rerank.data_recipes.mining import TeacherLabelsRecipe
    from rerank.types import Document

__all__ = ["label_rows", "to_0_10"]


def to_0_10(s: float, all_scores: list[float], score_map: str, unit: str) -> int:
    """The ERank target: an integer 0-10 (``round`` for 0-10 teachers, ``minmax`` rescales per query)."""
    if score_map == "minmax":
        lo, hi = min(all_scores), max(all_scores)
        return round(10 * (s - lo) / (hi - lo)) if hi > lo else 5
    if not -0.5 <= s <= 10.5:
        raise ConfigError(f"erank labels: teacher score {s} for query {unit} is outside 0-10; "
                          f"use score_map: minmax for teachers on another scale")
    return int(min(10, max(0, round(s))))


def label_rows(recipe: TeacherLabelsRecipe, unit: str, docs: list[Document],
               row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row: ``teacher_scores`` = the teacher's score of each candidate mapped to 0-10."""
    scores = recipe.scores("teacher", unit, docs)
    return [{**row, "teacher_scores": [to_0_10(s, scores, recipe.config.score_map, unit) for s in scores]}]
