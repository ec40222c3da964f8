"""Retrieval and data-recipe options have their documented effect, on hand-made fixtures whose expected output is
written out in full: the hybrid's ``rrf_k`` (fused score = sum of 1 / (k + rank)), ``hard_negatives``'
``min_positive_grade``, ``teacher_labels``' ``include_positives`` and ``query_synthesis``' ``negative_window``.

The BEIR fixture: documents d1-d8 (one sentence each); q1 judges d1 2, d2 1, d3 0; q2 judges d5 1 (``train``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rerank.config import from_dict
from rerank.data.io import write_jsonl, write_qrels, write_run
from rerank.retrieval.base import FirstStage, register_retriever, retrieve_args
from rerank.types import Query, Run

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
DOCS = {f"d{i}": f"The {w} document is about the {w} topic and nothing else." for i, w in enumerate(WORDS, 1)}


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("option-effects-beir")
    write_jsonl(({"_id": d, "title": "", "text": t} for d, t in DOCS.items()), root / "corpus.jsonl")
    write_jsonl([{"_id": "q1", "text": "first question"}, {"_id": "q2", "text": "second question"}],
                root / "queries.jsonl")
    (root / "qrels").mkdir()
    write_qrels({"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d5": 1}}, root / "qrels" / "train.tsv", beir=True)
    return root


def _run_file(folder: Path, run: Run) -> str:
    path = folder / "run.trec"
    write_run(run, path)
    return str(path)


def _cand(d: str, score: float | None = None) -> dict[str, Any]:
    return {"id": d, "text": DOCS[d], **({"score": score} if score is not None else {})}


# --- hybrid: rrf_k ----------------------------------------------------------------------------------------------------


class _FixedRun(FirstStage):
    """A first stage returning a fixed ranked list for every query."""

    name = "test-option-effects-fixed"

    def __init__(self, ranked: list[tuple[str, float]]) -> None:
        self.ranked = ranked

    @classmethod
    def from_dataset(cls, dataset: Any, **options: Any) -> _FixedRun:
        return cls([(f"d{i}", float(9 - i)) for i in range(1, 9)])  # d1 > d2 > ... > d8, scores 8 .. 1

    def retrieve(self, queries: Any, k: int) -> Run:
        queries, k = retrieve_args(queries, k)
        return {q: list(self.ranked[:k]) for q in queries}


register_retriever("test-option-effects-fixed", _FixedRun)


@pytest.mark.parametrize("k", [0, 60])
def test_hybrid_rrf_k(k: int) -> None:
    """Sparse ranks x, z, y; dense ranks w, v, y. RRF with rrf_k = k: x and w 1/(k+1), z and v 1/(k+2), y
    2/(k+3) — below x at k = 0, above it at k = 60 (ties by doc id descending, as trec_eval)."""
    from rerank.retrieval.hybrid import HybridConfig, HybridRetriever

    sparse = _FixedRun([("x", 3.0), ("z", 2.0), ("y", 1.0)])
    dense = _FixedRun([("w", 0.9), ("v", 0.8), ("y", 0.7)])
    cfg = from_dict(HybridConfig, {"rrf_k": k}, "retriever options")
    hybrid = HybridRetriever(sparse, dense, cfg)  # type: ignore[arg-type]
    fused = hybrid.retrieve({"q": Query("q", "text")}, 5)["q"]
    one, two, y = 1 / (k + 1), 1 / (k + 2), 1 / (k + 3) + 1 / (k + 3)
    expected = [("x", one), ("w", one), ("y", y), ("z", two), ("v", two)] if k == 0 else \
        [("y", y), ("x", one), ("w", one), ("z", two), ("v", two)]
    assert [d for d, _ in fused] == [d for d, _ in expected]
    assert [s for _, s in fused] == pytest.approx([s for _, s in expected], abs=1e-15)
    assert hybrid.describe()["rrf_k"] == k


# --- hard_negatives: min_positive_grade -------------------------------------------------------------------------------


def _hard_negatives(beir: Path, run: str, **over: Any) -> Any:
    from rerank.data_recipes.mining import HardNegativesConfig, HardNegativesRecipe

    spec = {"source": {"dataset": str(beir)}, "first_stage": {"run": run, "depth": 10}, "window": [1, 8],
            "num_negatives": 3, **over}
    return HardNegativesRecipe(from_dict(HardNegativesConfig, spec, "recipe hard_negatives"))


def test_hard_negatives_min_positive_grade(beir: Path, tmp_path: Path) -> None:
    """Positives are the documents judged >= min_positive_grade (first); negatives come from the window minus every
    judged positive (grade >= 1), so at 2 the grade-1 d2 is neither; a query with no such positive gives no row."""
    run = _run_file(tmp_path, {"q1": [("d2", 8.0), ("d4", 7.0), ("d1", 6.0), ("d5", 5.0), ("d3", 4.0), ("d6", 3.0)],
                               "q2": [("d5", 3.0), ("d6", 2.0), ("d7", 1.0)]})
    grade1 = _hard_negatives(beir, run)
    assert grade1.rows_for("q1") == [{"qid": "q1", "query": "first question", "labels": [2, 1, 0, 0, 0],
                                      "candidates": [_cand("d1", 6.0), _cand("d2", 8.0), _cand("d4", 7.0),
                                                     _cand("d5", 5.0), _cand("d3", 4.0)]}]
    assert grade1.rows_for("q2") == [{"qid": "q2", "query": "second question", "labels": [1, 0, 0],
                                      "candidates": [_cand("d5", 3.0), _cand("d6", 2.0), _cand("d7", 1.0)]}]
    grade2 = _hard_negatives(beir, run, min_positive_grade=2)
    assert grade2.rows_for("q1") == [{"qid": "q1", "query": "first question", "labels": [2, 0, 0, 0],
                                      "candidates": [_cand("d1", 6.0), _cand("d4", 7.0), _cand("d5", 5.0),
                                                     _cand("d3", 4.0)]}]
    assert grade2.rows_for("q2") == []
    assert _hard_negatives(beir, run, min_positive_grade=3).rows_for("q1") == []


# --- teacher_labels: include_positives --------------------------------------------------------------------------------


def _teacher_labels(beir: Path, run: str, **over: Any) -> Any:
    from rerank.data_recipes.mining import TeacherLabelsConfig, TeacherLabelsRecipe

    spec = {"source": {"dataset": str(beir)}, "first_stage": {"run": run, "depth": 10}, "mode": "first_stage",
            "candidates": 3, **over}
    return TeacherLabelsRecipe(from_dict(TeacherLabelsConfig, spec, "recipe teacher_labels"))


def test_teacher_labels_include_positives(beir: Path, tmp_path: Path) -> None:
    """include_positives (default) puts the judged positives the top-`candidates` missed in place of its lowest
    ranked (the list keeps its size; one the run never returned takes the list's lowest score as its teacher score);
    false keeps the first stage's top as it is."""
    run = _run_file(tmp_path, {"q1": [("d4", 9.0), ("d5", 8.0), ("d6", 7.0), ("d2", 6.0), ("d7", 5.0), ("d1", 4.0)],
                               "q2": [("d1", 3.0), ("d2", 2.0), ("d3", 1.0)]})
    with_pos = _teacher_labels(beir, run)
    assert with_pos.rows_for("q1") == [{"qid": "q1", "query": "first question", "labels": [0, 2, 1],
                                        "candidates": [_cand("d4", 9.0), _cand("d1", 4.0), _cand("d2", 6.0)],
                                        "teacher_scores": [9.0, 4.0, 6.0]}]
    assert with_pos.rows_for("q2") == [{"qid": "q2", "query": "second question", "labels": [0, 0, 1],
                                        "candidates": [_cand("d1", 3.0), _cand("d2", 2.0), _cand("d5")],
                                        "teacher_scores": [3.0, 2.0, 2.0]}]
    without = _teacher_labels(beir, run, include_positives=False)
    assert without.rows_for("q1") == [{"qid": "q1", "query": "first question", "labels": [0, 0, 0],
                                       "candidates": [_cand("d4", 9.0), _cand("d5", 8.0), _cand("d6", 7.0)],
                                       "teacher_scores": [9.0, 8.0, 7.0]}]
    assert without.rows_for("q2") == [{"qid": "q2", "query": "second question", "labels": [0, 0, 0],
                                       "candidates": [_cand("d1", 3.0), _cand("d2", 2.0), _cand("d3", 1.0)],
                                       "teacher_scores": [3.0, 2.0, 1.0]}]


# --- query_synthesis: negative_window ---------------------------------------------------------------------------------


def _synthesis_row(beir: Path, **over: Any) -> dict[str, Any]:
    from rerank.data_recipes.synthesis import QuerySynthesisConfig, QuerySynthesisRecipe

    spec = {"source": {"dataset": str(beir)}, "generator": {"kind": "sentence"},
            "first_stage": {"retriever": "test-option-effects-fixed", "depth": 10}, **over}
    rows = QuerySynthesisRecipe(from_dict(QuerySynthesisConfig, spec, "recipe query_synthesis")).rows_for("d3")
    assert len(rows) == 1
    return rows[0]


def test_query_synthesis_negative_window(beir: Path) -> None:
    """The synthetic query of d3 (its one sentence) gets d3 as its positive and negatives from the first stage's
    ranks negative_window (d1 > d2 > ... > d8 here), d3 itself left out, at most num_negatives."""
    default = _synthesis_row(beir)  # window [1, 30], 7 negatives
    assert default["qid"] == "synth-d3" and default["query"] == DOCS["d3"]
    assert default["candidates"] == [_cand("d3")] + [_cand(f"d{i}", 9.0 - i) for i in (1, 2, 4, 5, 6, 7, 8)]
    assert default["labels"] == [1] + [0] * 7
    ranks_2_4 = _synthesis_row(beir, negative_window=[2, 4])
    assert ranks_2_4["candidates"] == [_cand("d3"), _cand("d2", 7.0), _cand("d4", 5.0)]
    assert ranks_2_4["labels"] == [1, 0, 0]
    ranks_6_10 = _synthesis_row(beir, negative_window=[6, 10], num_negatives=2)  # the window ends at the depth 10
    assert ranks_6_10["candidates"] == [_cand("d3"), _cand("d6", 3.0), _cand("d7", 2.0)]
    assert ranks_6_10["labels"] == [1, 0, 0]

