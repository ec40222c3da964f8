"""Units a recipe build turns into no row are never dropped silently: each is recorded with its reason (no positive
judgement, positive not in the corpus or without text, no negative in the window, every negative removed by the
false-negative filter, fewer than 2 candidates, a dropped synthetic query), one warning counts them by reason with
example ids, ``skipped.jsonl`` lists them and ``manifest.json`` counts them; a resumed build lists each once."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rerank.data_recipes.base import build
from rerank.heads.base import Reranker, RerankerConfig
from rerank.heads.registry import available_rerankers, register_reranker
from rerank.types import Candidate, Query

#: doc id -> text; "twin" documents are the ones the table filter scores above every positive
DOCS = {"d1": "alpha one", "d2": "beta two", "d3": "gamma three", "d5": "delta five", "d6": "epsilon six",
        "d7": "zeta seven", "d8": "eta eight", "d9": "theta nine", "t1": "twin one", "t2": "twin two", "dempty": ""}
#: qid -> (its judgements, its first-stage ranking best first); qids sort in this order
QUERIES: dict[str, tuple[dict[str, int], list[str]]] = {
    "q1": ({"d1": 1}, ["d1", "d7", "d8"]),
    "q2nopos": ({"d2": 0}, ["d2", "d7"]),
    "q3filt": ({"d3": 1}, ["d3", "t1", "t2"]),
    "q4missing": ({"dX": 1}, ["d7", "d8"]),
    "q5": ({"d5": 1}, ["d5", "d8", "d9"]),
    "q6win": ({"d6": 1}, ["d6"]),
    "q7empty": ({"dempty": 1}, ["d7", "d8"]),
}
SKIPPED = [("q2nopos", "no_judged_positive"), ("q3filt", "negatives_filtered"), ("q4missing", "positive_not_in_corpus"),
           ("q6win", "no_negative_in_window"), ("q7empty", "positive_without_text")]


@dataclass
class TableConfig(RerankerConfig):
    fail_after: int = -1


class TableFilter(Reranker):
    """A 'cross-encoder' for the false-negative filter: 9 for a "twin" document, 1 for others, 5 for the positives
    d1, d3, d5; raises KeyboardInterrupt on call ``fail_after + 1`` (a Ctrl-C mid-build)."""

    method = "test-skip-table"
    config_class = TableConfig
    calls = 0

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        TableFilter.calls += 1
        if 0 <= self.config.fail_after < TableFilter.calls:
            raise KeyboardInterrupt("simulated interruption")
        return [9.0 if "twin" in c.doc.text else 5.0 if c.doc.id in ("d1", "d3", "d5") else 1.0 for c in candidates]


if "test-skip-table" not in available_rerankers():
    register_reranker("test-skip-table", TableFilter)


def _beir(root: Path) -> Path:
    """The BEIR folder of :data:`DOCS` and :data:`QUERIES` (split train) and its TREC run file ``root/run.trec``."""
    (root / "beir" / "qrels").mkdir(parents=True)
    (root / "beir" / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                                                        for d, t in DOCS.items()))
    (root / "beir" / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"query {q}"}) + "\n"
                                                         for q in QUERIES))
    judged = "".join(f"{q}\t{d}\t{g}\n" for q, (j, _) in QUERIES.items() for d, g in j.items())
    (root / "beir" / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + judged)
    (root / "run.trec").write_text("".join(f"{q} Q0 {d} {r} {10 - r} t\n" for q, (_, ranked) in QUERIES.items()
                                           for r, d in enumerate(ranked, 1)))
    return root / "beir"


def _hn(root: Path, fail_after: int = -1, **over: Any) -> dict[str, Any]:
    return {"recipe": "hard_negatives", "source": {"dataset": str(root / "beir")},
            "first_stage": {"run": str(root / "run.trec"), "depth": 10}, "window": [1, 10], "num_negatives": 2,
            "false_negative_filter": {"reranker": "test-skip-table", "backend": "none",
                                      "options": {"fail_after": fail_after}}, **over}


def _skipped(out: Path) -> list[tuple[str, str]]:
    return [(x["unit"], x["reason"]) for x in map(json.loads, (out / "skipped.jsonl").read_text().splitlines())]


def _skip_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "gave no row" in r.getMessage()]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    TableFilter.calls = 0


def test_hard_negatives_records_each_query_without_a_row_and_why(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    _beir(tmp_path)
    out = tmp_path / "hn"
    with caplog.at_level(logging.WARNING):
        m = build(_hn(tmp_path), out, progress=False)
    assert [json.loads(x)["qid"] for x in (out / "data.jsonl").read_text().splitlines()] == ["q1", "q5"]
    assert _skipped(out) == SKIPPED
    assert m["skipped"] == "skipped.jsonl" and m["counts"]["units_without_rows"] == 5
    assert m["counts"]["skipped_by_reason"] == {reason: 1 for _, reason in SKIPPED}
    assert json.loads((out / "manifest.json").read_text())["counts"] == m["counts"]
    [warning] = _skip_warnings(caplog)
    assert warning.startswith(f"recipe hard_negatives: 5 of the 7 train queries of dataset beir gave no row and are "
                              f"skipped (each with its reason in {out / 'skipped.jsonl'}): ")
    for qid, reason in SKIPPED:
        assert f"({reason}: {qid})" in warning
    assert "have no positive judgement of grade >= 1 (no_judged_positive: q2nopos)" in warning
    assert "removed by the false_negative_filter (negatives_filtered: q3filt)" in warning


def test_the_recipe_and_the_trainer_say_the_same_of_a_positive_missing_from_the_corpus(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rerank.trainers.data import build_from_beir

    beir = _beir(tmp_path)
    said = "with a positive judgement have no positive left in the corpus"
    with caplog.at_level(logging.WARNING):
        build_from_beir(str(beir), split="train")
    assert any(said in r.getMessage() for r in caplog.records if r.name == "rerank.trainers.data")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build(_hn(tmp_path, false_negative_filter=None), tmp_path / "hn", progress=False)
    [warning] = _skip_warnings(caplog)
    assert f"1 {said}: the judged documents are not in it (positive_not_in_corpus: q4missing)" in warning
    assert f"1 {said}: the judged documents have no text (positive_without_text: q7empty)" in warning


def test_a_build_that_skips_nothing_writes_no_skipped_file_and_no_warning(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    _beir(tmp_path)
    out = tmp_path / "hn"
    with caplog.at_level(logging.WARNING):
        m = build(_hn(tmp_path, source={"dataset": str(tmp_path / "beir"), "max_queries": 1}), out, progress=False)
    assert m["counts"]["rows"] == 1 and m["counts"]["skipped_by_reason"] == {} and "skipped" not in m
    assert not (out / "skipped.jsonl").exists() and not _skip_warnings(caplog)
    assert sorted(p.name for p in out.iterdir()) == ["data.jsonl", "manifest.json"]


def test_a_resumed_build_lists_every_skipped_query_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _beir(tmp_path)
    whole = build(_hn(tmp_path), tmp_path / "whole", progress=False)
    TableFilter.calls = 0
    with pytest.raises(KeyboardInterrupt):  # the filter's third call is q5's: q1 to q4missing are done
        build(_hn(tmp_path, fail_after=2), tmp_path / "hn", progress=False)
    TableFilter.calls = -10**9
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        m = build(_hn(tmp_path, fail_after=2), tmp_path / "hn", resume=True, progress=False)
    assert m["resumed_units"] == 4 and m["counts"] == whole["counts"]
    assert _skipped(tmp_path / "hn") == _skipped(tmp_path / "whole") == SKIPPED
    assert (tmp_path / "hn" / "data.jsonl").read_bytes() == (tmp_path / "whole" / "data.jsonl").read_bytes()
    [warning] = _skip_warnings(caplog)
    assert warning.startswith("recipe hard_negatives: 5 of the 7 train queries")


def test_units_an_earlier_rerank_finished_without_a_reason_are_listed_as_not_recorded(tmp_path: Path) -> None:
    _beir(tmp_path)
    out = tmp_path / "hn"
    with pytest.raises(KeyboardInterrupt):
        build(_hn(tmp_path, fail_after=2), out, progress=False)
    lines = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]
    (out / "progress.jsonl").write_text("".join(json.dumps({k: v for k, v in x.items() if k != "skipped"}) + "\n"
                                                for x in lines))
    TableFilter.calls = -10**9
    m = build(_hn(tmp_path, fail_after=2), out, resume=True, progress=False)
    assert _skipped(out) == [(q, "not_recorded") for q in ("q2nopos", "q3filt", "q4missing")] + SKIPPED[3:]
    assert m["counts"]["skipped_by_reason"] == {"not_recorded": 3, "no_negative_in_window": 1,
                                                "positive_without_text": 1}


def test_teacher_labels_records_queries_with_fewer_than_two_candidates(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    _beir(tmp_path)
    spec = {"recipe": "teacher_labels", "source": {"dataset": str(tmp_path / "beir")},
            "first_stage": {"run": str(tmp_path / "run.trec"), "depth": 10}, "mode": "first_stage", "candidates": 2,
            "include_positives": False}
    with caplog.at_level(logging.WARNING):
        m = build(spec, tmp_path / "tl", progress=False)
    assert _skipped(tmp_path / "tl") == [("q6win", "fewer_than_2_candidates")]
    assert m["counts"]["skipped_by_reason"] == {"fewer_than_2_candidates": 1}
    [warning] = _skip_warnings(caplog)
    assert "1 have fewer than 2 candidates: their first-stage top 2 documents in the corpus with text " \
           "(fewer_than_2_candidates: q6win)" in warning


def test_query_synthesis_records_each_document_whose_query_was_dropped(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "corpus"
    (root / "qrels").mkdir(parents=True)
    texts = {"a": "Cats sleep most of the day.", "b": "Cats sleep most of the day.", "c": "Too short here",
             "d": "Dogs bark at the mail carrier."}
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in texts.items()))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "x", "text": "unused"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nx\ta\t1\n")
    spec = {"recipe": "query_synthesis", "source": {"dataset": str(root)}, "generator": {"kind": "sentence"},
            "max_docs": 4, "min_doc_chars": 10}
    with caplog.at_level(logging.WARNING):
        m = build(spec, tmp_path / "qs", progress=False)
    assert _skipped(tmp_path / "qs") == [("b", "duplicate"), ("c", "empty_or_short")]
    assert m["counts"]["skipped_by_reason"] == {"duplicate": 1, "empty_or_short": 1}
    assert m["source"]["dropped_queries"]["duplicate"] == 1
    [warning] = _skip_warnings(caplog)
    assert warning.startswith("recipe query_synthesis: 2 of the 4 documents sampled from dataset corpus gave no row")
    assert "1 gave a query already kept (after normalisation) (duplicate: b)" in warning


def test_a_unit_without_a_row_or_a_reason_is_listed_as_no_row(tmp_path: Path) -> None:
    from rerank.config import from_dict
    from rerank.data_recipes.mining import HardNegativesConfig, HardNegativesRecipe

    class Silent(HardNegativesRecipe):
        def rows_for(self, unit: str) -> list[dict[str, Any]]:
            return [] if unit == "q5" else super().rows_for(unit)

    _beir(tmp_path)
    spec = _hn(tmp_path, false_negative_filter=None)
    recipe = Silent(from_dict(HardNegativesConfig, {k: v for k, v in spec.items() if k != "recipe"}))
    build(spec, tmp_path / "hn", progress=False, recipe_obj=recipe)
    assert ("q5", "no_row") in _skipped(tmp_path / "hn")


def test_rerank_data_build_warns_once_on_the_command_line(tmp_path: Path, run_cli: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    _beir(tmp_path)
    (tmp_path / "r.yaml").write_text(json.dumps(_hn(tmp_path, false_negative_filter=None)))
    with caplog.at_level(logging.WARNING):
        rc, _, err = run_cli("data", "build", tmp_path / "r.yaml", "--output", tmp_path / "hn",
                             "--set", f"source.dataset={tmp_path / 'beir'}")
    assert rc == 0, err
    [warning] = _skip_warnings(caplog)
    assert "4 of the 7 train queries" in warning and str(tmp_path / "hn" / "skipped.jsonl") in warning
    assert len(_skipped(tmp_path / "hn")) == 4
