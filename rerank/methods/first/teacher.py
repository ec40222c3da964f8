"""FIRST's teacher-label mode (``teacher_labels`` with ``mode: first``): a listwise teacher's permutation of the
candidates (``teacher_ranking``, best first), with its raw scores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rerank.data_recipes.mining import TeacherLabelsRecipe
    from rerank.types import Document

__all__ = ["label_rows"]


def label_rows(recipe: TeacherLabelsRecipe, unit: str, docs: list[Document],
               row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row: ``teacher_ranking`` (ids by teacher score, ties in input order) and ``teacher_scores``."""
    scores = recipe.scores("teacher", unit, docs)
    ranking = [docs[j].id for j in sorted(range(len(docs)), key=lambda j: -scores[j])]
    return [{**row, "teacher_ranking": ranking, "teacher_scores": scores}]
