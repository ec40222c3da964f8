"""`rerank rank` output (audit s38 #7): the JSONL and the TREC run hold the same documents in the same order, with the
reranker's scores in both modes; an --input record's disagreeing id fields are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rerank.data.io import read_run, write_jsonl, write_qrels, write_run
from rerank.heads.registry import register_reranker
from tests.serve_support import LongestFirst

register_reranker(LongestFirst.method, LongestFirst)

TEXTS = {"a": "x", "b": "xx", "c": "xxx", "d": "xxxx", "e": "xxxxx"}  # first stage: a..e, shortest first


def _rank(run_cli: Any, *args: str | Path) -> None:
    rc, _, err = run_cli("rank", "--reranker", LongestFirst.method, "--top-k", "2", *args)
    assert rc == 0, err


def _both(run_cli: Any, tmp_path: Path, *source: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The one query's JSONL ranking and TREC run order of the same command."""
    _rank(run_cli, *source, "--output", tmp_path / "out.jsonl")
    _rank(run_cli, *source, "--output", tmp_path / "out.trec")
    (rec,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    (trec,) = read_run(tmp_path / "out.trec").values()
    return rec["ranking"], [d for d, _ in trec]


def _check(ranking: list[dict[str, Any]], trec: list[str]) -> None:
    """The top 2 (b, a) reranked longest first with the reranker's scores; c, d, e follow unscored, in input order;
    the TREC run holds the same documents in the same order."""
    assert [d["id"] for d in ranking] == trec == ["b", "a", "c", "d", "e"]
    assert [d["rank"] for d in ranking] == [1, 2, 3, 4, 5]
    assert [d["score"] for d in ranking] == [2.0, 1.0, None, None, None]
    assert [d["relevance"] is None for d in ranking] == [False, False, True, True, True]
    assert [d["text"] for d in ranking] == [TEXTS[d] for d in trec]


def test_input_jsonl_keeps_the_candidates_past_top_k_as_the_trec_run_does(tmp_path: Path, run_cli: Any) -> None:
    """With --input, the JSONL held only the --top-k reranked documents while the TREC run held all of them."""
    inp = tmp_path / "in.jsonl"
    write_jsonl([{"query": {"id": "q1", "text": "rain"}, "docs": [{"id": d, "text": t} for d, t in TEXTS.items()]}],
                inp)
    _check(*_both(run_cli, tmp_path, "--input", inp))


def test_first_stage_jsonl_has_the_reranker_scores(tmp_path: Path, run_cli: Any) -> None:
    """With --first-stage, the JSONL records held only id and rank: the reranker's scores were computed, then
    dropped."""
    ds = tmp_path / "ds"
    write_jsonl([{"_id": d, "title": "", "text": t} for d, t in TEXTS.items()], ds / "corpus.jsonl")
    write_jsonl([{"_id": "q1", "text": "rain"}], ds / "queries.jsonl")
    write_qrels({"q1": {"a": 1}}, ds / "qrels" / "test.tsv", beir=True)
    write_run({"q1": [(d, 10.0 - i) for i, d in enumerate(TEXTS)]}, tmp_path / "first.trec")
    _check(*_both(run_cli, tmp_path, "--first-stage", tmp_path / "first.trec", "--dataset", ds))


def test_first_stage_ids_missing_from_the_corpus_follow_the_reranked_ones(tmp_path: Path, run_cli: Any) -> None:
    """A run id the corpus lacks is not reranked: it follows the reranked ones, with no score and no text."""
    ds = tmp_path / "ds"
    write_jsonl([{"_id": d, "title": "", "text": t} for d, t in TEXTS.items()], ds / "corpus.jsonl")
    write_jsonl([{"_id": "q1", "text": "rain"}], ds / "queries.jsonl")
    write_qrels({"q1": {"a": 1}}, ds / "qrels" / "test.tsv", beir=True)
    write_run({"q1": [("ghost", 11.0), ("a", 10.0), ("b", 9.0), ("c", 8.0)]}, tmp_path / "first.trec")
    ranking, trec = _both(run_cli, tmp_path, "--first-stage", tmp_path / "first.trec", "--dataset", ds)
    assert [d["id"] for d in ranking] == trec == ["a", "ghost", "b", "c"]
    assert [(d["score"], d["text"]) for d in ranking] == [(1.0, "x"), (None, None), (None, "xx"), (None, "xxx")]


def test_output_help_says_what_the_candidates_past_top_k_carry(run_cli: Any) -> None:
    rc, out, _ = run_cli("rank", "--help")
    assert rc == 0
    assert "candidates past --top-k follow with score and relevance null" in " ".join(out.split())


@pytest.mark.parametrize("record", [
    {"query": {"id": "a", "_id": "b", "text": "rain"}, "docs": ["x"]},
    {"query": "rain", "docs": [{"id": "x1", "_id": "zz", "text": "x"}]},
])
def test_input_record_with_disagreeing_id_fields_is_refused(tmp_path: Path, run_cli: Any,
                                                            record: dict[str, Any]) -> None:
    """{"id": "a", "_id": "b"} silently became "a" in --input, while corpus records like it are refused."""
    inp = tmp_path / "in.jsonl"
    write_jsonl([{"query": "sun", "docs": ["y"]}, record], inp)
    rc, _, err = run_cli("rank", "--reranker", LongestFirst.method, "--input", inp, "--output", tmp_path / "o.trec")
    assert rc == 2, err
    (line,) = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert f"{inp}:2" in line and "disagree" in line
