"""Real inputs: a query with no readable character (zero-width spaces, NUL, a byte-order mark) is refused by the Python
API and the file readers as the server refuses it, and a document key the rank file reader does not read is an error
naming the line, as the Python API's is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank.data.io import read_query_docs_jsonl, read_queries
from rerank.errors import DataFormatError
from rerank.heads.base import Reranker


class _Length(Reranker):
    method = "test-s45-length"

    def score_candidates(self, query, candidates):
        return [float(len(c.doc.text)) for c in candidates]


UNREADABLE = ["\u200b", "\x00", "\ufeff\u00ad", "\u200b \u200c"]


@pytest.mark.parametrize("query", UNREADABLE)
def test_the_python_api_refuses_a_query_nothing_reads(query: str) -> None:
    head = _Length()
    for call in (lambda: head.rerank(query, ["a", ""]), lambda: head.rerank_batch([query], [["a"]]),
                 lambda: head.rank(query, ["a"]), lambda: head.predict([(query, "a")])):
        with pytest.raises(ValueError, match=r"has only characters no model reads \(U\+"):
            call()
    assert [r.doc.text for r in head.rerank("\u200bq", ["a", "abc"]).results] == ["abc", "a"]  # readable: ranked


def test_the_file_readers_refuse_a_query_nothing_reads(tmp_path: Path) -> None:
    rank_input = tmp_path / "in.jsonl"
    rank_input.write_text(json.dumps({"query": "ok", "docs": ["a"]}) + "\n"
                          + json.dumps({"query": "\u200b\u200b", "docs": ["a"]}) + "\n")
    with pytest.raises(DataFormatError, match=r"in\.jsonl:2: query 'q2' has only characters no model reads"):
        read_query_docs_jsonl(rank_input)
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "1", "text": "\ufeff"}) + "\n")
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:1: query '1' has only characters no model reads"):
        read_queries(queries)


@pytest.mark.parametrize("key", ["titel", "metadata"])
def test_the_rank_reader_refuses_a_document_key_it_does_not_read(tmp_path: Path, key: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"query": "q", "docs": [{"id": "a", "text": "x", key: "BM25"}]}) + "\n")
    with pytest.raises(DataFormatError, match=rf"in\.jsonl:1: docs\[0\]: unknown key\(s\) '{key}'; the keys read"):
        read_query_docs_jsonl(path)
    path.write_text(json.dumps({"query": "q", "docs": [{"docid": "a", "contents": "x", "title": "t", "score": 1}]}))
    [(query, docs)] = read_query_docs_jsonl(path)
    assert docs[0][0].id == "a" and docs[0][0].title == "t" and docs[0][1] == 1.0


@pytest.mark.usefixtures("fresh")
def test_a_cli_rank_of_an_unreadable_query_is_one_line_and_exit_2(tmp_path: Path, run_cli) -> None:
    from rerank.heads.registry import register_reranker

    register_reranker("test-s45-length", _Length)
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"query": "\x00", "docs": ["a", "b"]}) + "\n")
    rc, out, err = run_cli("rank", "--reranker", "test-s45-length", "--input", str(path), "--output",
                           str(tmp_path / "out.jsonl"))
    assert rc == 2 and "has only characters no model reads (U+0000)" in err and len(err.strip().splitlines()) == 1
