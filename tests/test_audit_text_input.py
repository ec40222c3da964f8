"""Text the API is given that used to fail deep inside a tokenizer or rank against nothing (audit s38, api #1/4/6/9/12).

Covers: a lone UTF-16 surrogate (what JSON's ``\\ud800`` escape reads into) in a query or document refused by the
reranker input checks and the dense / hybrid retrievers with a one-line error naming where it is; ``Query`` fields
type-checked; a reranked list evaluated in the order shown (``RankedResult.to_run``) despite tied scores; a blank
query retrieving nothing in every first stage; and ``progress=False`` reaching the hybrid's sparse side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rerank.data.datasets import Dataset
from rerank.eval.metrics import evaluate_run
from rerank.heads.base import Reranker
from rerank.retrieval import build_retriever
from rerank.types import Candidate, Document, Query, RankedResult, lone_surrogate

BAD = "bad \ud800 x"  # the lone surrogate is character 4


class _Flat(Reranker):
    """Scores every document 0: no model, so the base class's input checks and tie order are what is tested."""

    method = "flat"

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [0.0] * len(candidates)


# ---------------------------------------------------------------- lone surrogates


def test_lone_surrogate_finds_the_first_one_and_passes_valid_unicode() -> None:
    assert lone_surrogate(BAD) == "character 4 (\\ud800)"
    assert lone_surrogate("é\udfffa\ud800") == "character 1 (\\udfff)"
    for ok in ("", "plain ascii", "café naïve", "日本語 テキスト", "emoji 🦓 \U0001f600", "\u200f rtl \u202e"):
        assert lone_surrogate(ok) is None


DOC_CASES: list[tuple[Any, str]] = [
    (BAD, r"documents\[1\]: text has a lone UTF-16 surrogate at character 4 \(\\ud800\): text must be valid Unicode"),
    (Document("d", BAD), r"documents\[1\] \(id 'd'\): text has a lone UTF-16 surrogate at character 4"),
    (Document("d", "fine", title=BAD), r"documents\[1\] \(id 'd'\): title has a lone UTF-16 surrogate"),
    (Candidate(Document("d", BAD), 1.0), r"documents\[1\] \(id 'd'\): text has a lone UTF-16 surrogate"),
    ({"id": "d", "text": BAD}, r"documents\[1\] \(id 'd'\): text has a lone UTF-16 surrogate"),
    ({"_id": 7, "text": "fine", "title": BAD}, r"documents\[1\] \(id 7\): title has a lone UTF-16 surrogate"),
]


@pytest.mark.parametrize(("doc", "match"), DOC_CASES)
def test_a_lone_surrogate_in_a_document_names_the_document_and_field(doc: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _Flat().rerank("q", ["ok", doc])


def test_a_lone_surrogate_in_a_query_names_the_query() -> None:
    with pytest.raises(ValueError, match=r"query 0 has a lone UTF-16 surrogate at character 4 \(\\ud800\)"):
        _Flat().rerank(BAD, ["ok"])
    with pytest.raises(ValueError, match=r"query 1 \(id 'q7'\) has a lone UTF-16 surrogate at character 4"):
        _Flat().rerank_batch(["fine", Query("q7", BAD)], [["a"], ["b"]])


def test_valid_unicode_and_surrogate_pairs_are_ranked() -> None:
    docs = ["café", Document("e", "🦓 \U0001f600", title="日本"), {"id": "m", "text": "naïve", "title": "ü"}]
    res = _Flat().rerank("zèbre 🦓", docs)
    assert [r.doc.id for r in res.results] == ["0", "e", "m"]


def test_cross_encoder_refuses_a_lone_surrogate_before_tokenising(tiny_bert_dir: Path) -> None:
    """The tokenizer's own error (``TypeError: TextEncodeInput must be Union[...]``) named neither document nor field."""
    rr = Reranker.load("cross-encoder", model=str(tiny_bert_dir))
    with pytest.raises(ValueError, match=r"documents\[1\]: text has a lone UTF-16 surrogate"):
        rr.rerank("q", ["ok", BAD])
    assert len(rr.rerank("q", ["ok", "café 🦓"]).results) == 2


def test_rank_cli_gives_one_line_for_a_lone_surrogate(tiny_bert_dir: Path, tmp_path: Path, run_cli: Any) -> None:
    """The file reader or the reranker may catch it first; either way one line and exit 2, not a traceback."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"query": "q", "docs": ["ok", "bad \\ud800 x"]}\n')
    rc, _out, err = run_cli("rank", "--reranker", "cross-encoder", "--model", tiny_bert_dir, "--input", src,
                            "--output", tmp_path / "out.jsonl")
    assert rc == 2, err
    assert "surrogate" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- Query fields


@pytest.mark.parametrize(("args", "match"), [
    (("q", 5), "Query 'q': text must be a string, got int"),
    (("q", None), "Query 'q': text must be a string, got NoneType"),
    ((None, "x"), r"Query id must be a string, got NoneType \(None\)"),
    ((1, "x"), r"Query id must be a string, got int \(1\)"),
])
def test_query_fields_are_type_checked(args: tuple[Any, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Query(*args)


# ---------------------------------------------------------------- ties: evaluate the order shown


def test_to_run_scores_the_shown_order_when_scores_tie() -> None:
    """Tied scores keep input order ("a" first); evaluated on raw scores trec_eval would put "b" first."""
    res = _Flat().rerank("what is bm25?", [Document("a", "BM25."), Document("b", "BM25."), Document("c", "x")])
    assert [r.doc.id for r in res.results] == ["a", "b", "c"]
    qrels = {"0": {"a": 1}}
    raw = evaluate_run({"0": [(r.doc.id, r.score) for r in res.results]}, qrels, ["P@1"]).aggregate
    assert raw["P@1"] == 0.0  # why to_run exists
    assert res.to_run() == {"0": [("a", 3.0), ("b", 2.0), ("c", 1.0)]}
    assert evaluate_run(res.to_run(), qrels, ["P@1", "RR@10"]).aggregate == {"P@1": 1.0, "RR@10": 1.0}
    assert RankedResult(Query("q", "x"), []).to_run() == {"q": []}


def test_docstrings_no_longer_claim_every_run_is_in_trec_eval_order() -> None:
    from rerank.types import sort_ranking

    assert "RankedResult" in (sort_ranking.__doc__ or "") and "to_run" in (RankedResult.__doc__ or "")
    assert "to_run" in (Reranker.rerank.__doc__ or "")


# ---------------------------------------------------------------- blank queries and progress in first stages

BLANK = {"empty": "", "blank": " \t\n ", "q": "zebra"}


def test_every_first_stage_returns_nothing_for_a_blank_query(tiny_ds: Dataset, tiny_st_dir: Path) -> None:
    stages = [build_retriever("bm25", tiny_ds, show_progress=False),
              build_retriever("dense", tiny_ds, model=str(tiny_st_dir), progress=False),
              build_retriever("hybrid", tiny_ds, model=str(tiny_st_dir), progress=False),
              build_retriever("hybrid", tiny_ds, model=str(tiny_st_dir), progress=False, fusion="interpolate")]
    for stage in stages:
        run = stage.retrieve(BLANK, 2)
        assert set(run) == set(BLANK), stage.name
        assert list(run["empty"]) == [] and list(run["blank"]) == [], stage.name
        assert len(run["q"]) == 2, stage.name
    assert stages[1].retrieve({"empty": ""}, 2) == {"empty": []}


def test_dense_and_hybrid_refuse_a_lone_surrogate_naming_the_query(tiny_ds: Dataset, tiny_st_dir: Path) -> None:
    for name in ("dense", "hybrid"):
        stage = build_retriever(name, tiny_ds, model=str(tiny_st_dir), progress=False)
        with pytest.raises(ValueError, match=r"queries\['s'\]: text has a lone UTF-16 surrogate at character 4"):
            stage.retrieve({"q": "zebra", "s": BAD}, 2)


def test_hybrid_progress_false_silences_the_sparse_side(tiny_ds: Dataset, tiny_st_dir: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    quiet = build_retriever("hybrid", tiny_ds, model=str(tiny_st_dir), progress=False)
    quiet.retrieve({"q": "zebra"}, 2)
    err = capfd.readouterr().err
    assert quiet.sparse.config.show_progress is False
    assert "BM25S" not in err and "Split strings" not in err, err
    loud = build_retriever("hybrid", tiny_ds, model=str(tiny_st_dir), progress=False,
                           sparse_options={"show_progress": True})
    assert loud.sparse.config.show_progress is True  # an explicit sparse option wins
    assert build_retriever("hybrid", tiny_ds, model=str(tiny_st_dir)).sparse.config.show_progress is True
