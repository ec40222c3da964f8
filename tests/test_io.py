"""Readers and writers of rerank.data.io: good input in every form, and malformed input named by file and line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from rerank.data.io import (
    find_file,
    iter_corpus,
    iter_jsonl,
    read_corpus,
    read_qrels,
    read_queries,
    read_query_docs_jsonl,
    read_run,
    write_jsonl,
    write_qrels,
    write_run,
)
from rerank.errors import DataFormatError
from rerank.types import Document, Query


def _write(path: Path, text: str) -> Path:
    """Write ``text``; gzip it when the name ends in ``.gz``."""
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _jsonl(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def _raises_at(path: Path, line: int | None, match: str):  # noqa: ANN202 - pytest context manager
    """Expect a DataFormatError that names ``path`` and ``line``."""

    class _Check:
        def __enter__(self) -> None:
            self.ctx = pytest.raises(DataFormatError, match=match)
            self.info = self.ctx.__enter__()

        def __exit__(self, *exc: object) -> bool:
            handled = self.ctx.__exit__(*exc)
            err = self.info.value
            assert err.path == str(path)
            assert err.line == line
            where = f"{path}:{line}" if line is not None else str(path)
            assert str(err).startswith(where + ":")
            return bool(handled)

    return _Check()


# --- good input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_corpus_plain_and_gz(tmp_path: Path, name: str) -> None:
    path = _write(
        tmp_path / name,
        _jsonl({"_id": "d1", "title": "T", "text": "body"}, {"_id": 2, "text": "no title"})
        + "\n"
        + _jsonl({"id": "d3", "contents": "alt keys", "title": None}),
    )
    corpus = read_corpus(path)
    assert corpus == {
        "d1": Document("d1", "body", "T"),
        "2": Document("2", "no title", ""),
        "d3": Document("d3", "alt keys", ""),
    }
    assert [d.id for d in iter_corpus(path)] == ["d1", "2", "d3"]


def test_find_file_prefers_plain_then_gz(tmp_path: Path) -> None:
    gz = _write(tmp_path / "corpus.jsonl.gz", _jsonl({"_id": "a", "text": "x"}))
    assert find_file(tmp_path / "corpus.jsonl") == gz
    plain = _write(tmp_path / "corpus.jsonl", _jsonl({"_id": "a", "text": "x"}))
    assert find_file(tmp_path / "corpus.jsonl") == plain
    with pytest.raises(FileNotFoundError, match="queries.jsonl"):
        find_file(tmp_path / "queries.jsonl")


@pytest.mark.parametrize("name", ["queries.jsonl", "queries.jsonl.gz"])
def test_queries_jsonl(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, _jsonl({"_id": "q1", "text": "a b"}, {"qid": 7, "query": "c"}))
    assert read_queries(path) == {"q1": Query("q1", "a b"), "7": Query("7", "c")}


@pytest.mark.parametrize("name", ["topics.tsv", "topics.tsv.gz"])
def test_queries_tsv(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, "1\twhat is x\n\n2\ttab\tinside\n")
    assert read_queries(path) == {"1": Query("1", "what is x"), "2": Query("2", "tab\tinside")}


def test_records_whose_id_fields_disagree_are_refused(tmp_path: Path) -> None:
    """A table export's row number beside the real id ('id': 0, 'docid': '1215116') silently became the id."""
    corpus = _write(tmp_path / "corpus.jsonl", _jsonl({"_id": "5", "id": 5, "text": "x"},
                                                      {"id": 0, "docid": "1215116", "text": "y"}))
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: fields 'id' \(0\) and 'docid' \(\"1215116\"\) "
                                              "disagree: which is the document id"):
        read_corpus(corpus)
    queries = _write(tmp_path / "queries.jsonl", _jsonl({"_id": "a", "qid": "b", "text": "x"}))
    with pytest.raises(DataFormatError, match="queries.jsonl:1: fields '_id' .* and 'qid' .* disagree"):
        read_queries(queries)


def test_a_dataset_folder_may_hold_queries_tsv(tmp_path: Path) -> None:
    from rerank.data.datasets import Dataset

    root = tmp_path / "mine"
    root.mkdir()
    _write(root / "queries.tsv", "q1\twhat is x\n")
    assert Dataset(root).queries == {"q1": Query("q1", "what is x")}
    with pytest.raises(FileNotFoundError, match="holds no queries.jsonl or queries.tsv"):
        _ = Dataset(tmp_path / "other").queries


@pytest.mark.parametrize("gz", [False, True])
def test_qrels_beir_and_trec_are_detected(tmp_path: Path, gz: bool) -> None:
    suffix = ".gz" if gz else ""
    beir = _write(tmp_path / f"test.tsv{suffix}", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td1\t1.0\n")
    trec = _write(tmp_path / f"qrels.txt{suffix}", "q1 0 d1 2\nq1 0 d2 0\n\nq2 Q0 d1 1\n")
    beir_nohdr = _write(tmp_path / f"nohdr.tsv{suffix}", "q1\td1\t2\nq1\td2\t0\nq2\td1\t1\n")
    expected = {"q1": {"d1": 2, "d2": 0}, "q2": {"d1": 1}}
    assert read_qrels(beir) == expected
    assert read_qrels(trec) == expected
    assert read_qrels(beir_nohdr) == expected


def test_qrels_round_trip(tmp_path: Path) -> None:
    qrels = {"q1": {"d1": 2, "d2": 0}, "q2": {"d9": -1}}
    write_qrels(qrels, tmp_path / "a.txt")
    write_qrels(qrels, tmp_path / "b.tsv", beir=True)
    assert read_qrels(tmp_path / "a.txt") == qrels
    assert read_qrels(tmp_path / "b.tsv") == qrels
    assert (tmp_path / "b.tsv").read_text().startswith("query-id\tcorpus-id\tscore\n")


@pytest.mark.parametrize("name", ["run.trec", "run.trec.gz"])
def test_run_is_sorted_as_trec_eval(tmp_path: Path, name: str) -> None:
    # file order and rank column disagree with the scores; ties broken by doc id descending
    path = _write(tmp_path / name, "q1 Q0 a 1 1.0 t\nq1 Q0 c 2 2.5 t\nq1 Q0 b 3 1.0 t\nq2 Q0 x 1 -3 t\n")
    assert read_run(path) == {"q1": [("c", 2.5), ("b", 1.0), ("a", 1.0)], "q2": [("x", -3.0)]}


def test_run_round_trip_is_exact(tmp_path: Path) -> None:
    """Scores that differ below 1e-6 keep their order when written and read back (no rounding into ties)."""
    run = {"q1": [("d1", 15.780599594116211), ("d2", 15.780599117279053), ("d3", 1e-9), ("d4", 0.0)]}
    write_run(run, tmp_path / "run.trec", tag="x")
    assert read_run(tmp_path / "run.trec") == run
    line = (tmp_path / "run.trec").read_text().splitlines()[0].split()
    assert line[:4] == ["q1", "Q0", "d1", "1"] and line[5] == "x"


def test_query_docs_jsonl(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "in.jsonl",
        _jsonl(
            {"query": "plain query", "docs": ["first", "second"]},
            {"query": {"id": "Q", "text": "obj"}, "docs": [{"id": "x", "text": "t", "title": "T", "score": 3}]},
        ),
    )
    (q1, docs1), (q2, docs2) = read_query_docs_jsonl(path)
    assert q1 == Query("q1", "plain query")
    assert docs1 == [(Document("d0", "first"), None), (Document("d1", "second"), None)]
    assert q2 == Query("Q", "obj")
    assert docs2 == [(Document("x", "t", "T"), 3.0)]


def test_write_jsonl_round_trip(tmp_path: Path) -> None:
    recs = [{"a": 1, "b": "é"}, {"a": 2}]
    write_jsonl(recs, tmp_path / "x.jsonl")
    assert [o for _, o in iter_jsonl(tmp_path / "x.jsonl")] == recs


# --- malformed input: each error names the file and the line ------------------------------------------------------


def test_bad_json_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "corpus.jsonl", _jsonl({"_id": "a", "text": "x"}) + '{"_id": "b", "text": \n')
    with _raises_at(path, 2, "invalid JSON"):
        read_corpus(path)


def test_bad_json_in_gz_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "queries.jsonl.gz", "\n" + _jsonl({"_id": "a", "text": "x"}) + "[1, 2]\n")
    with _raises_at(path, 3, "expected a JSON object"):
        read_queries(path)


@pytest.mark.parametrize(
    ("reader", "obj", "field"),
    [
        (read_corpus, {"_id": "a"}, "'text'"),
        (read_corpus, {"text": "x"}, "'_id'"),
        (read_queries, {"_id": "q"}, "'text'"),
        (read_query_docs_jsonl, {"docs": []}, "'query'"),
        (read_query_docs_jsonl, {"query": "q"}, "'docs'"),
    ],
)
def test_missing_field_names_line(tmp_path: Path, reader, obj: dict, field: str) -> None:  # noqa: ANN001
    good = {read_corpus: {"_id": "z", "text": "t"}, read_queries: {"_id": "z", "text": "t"}}.get(
        reader, {"query": "q", "docs": ["d"]}
    )
    path = _write(tmp_path / "f.jsonl", _jsonl(good, obj))
    with _raises_at(path, 2, f"missing required field {field}"):
        reader(path)


def test_query_docs_bad_entries(tmp_path: Path) -> None:
    for i, (docs, match) in enumerate(
        [
            ("notalist", "'docs' must be a list"),
            ([{"id": "a"}], r"docs\[0\] has no 'text'"),
            ([1], r"docs\[0\] must be a string or an object"),
            ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "duplicate document ids"),
            ([{"text": "x", "score": "high"}], r"docs\[0\].score must be a finite number"),
            ([{"text": "x", "score": float("nan")}], r"docs\[0\].score must be a finite number"),
        ]
    ):
        path = _write(tmp_path / f"in{i}.jsonl", _jsonl({"query": "q", "docs": ["ok"]}, {"query": "q", "docs": docs}))
        with _raises_at(path, 2, match):
            read_query_docs_jsonl(path)


@pytest.mark.parametrize("grade", ["x", "1.5", "nan", ""])
def test_non_integer_grade_names_line(tmp_path: Path, grade: str) -> None:
    if grade == "":  # a missing grade column is a column-count error on that line
        path = _write(tmp_path / "q.txt", "q1 0 d1 1\nq1 0 d2\n")
        with _raises_at(path, 2, "expected 4 columns, found 3"):
            read_qrels(path)
        return
    path = _write(tmp_path / "q.tsv", f"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t{grade}\n")
    with _raises_at(path, 3, f"relevance grade {grade!r} is not an integer"):
        read_qrels(path)


def test_qrels_wrong_column_count(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.txt", "\nq1 d1\n")
    with _raises_at(path, 2, "qrels need 3 \\(BEIR\\) or 4 \\(TREC\\) columns, found 2"):
        read_qrels(path)


def test_run_duplicate_doc_names_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "run.trec", "q1 Q0 a 1 3 t\nq2 Q0 a 1 3 t\nq1 Q0 b 2 2 t\nq1 Q0 a 3 1 t\n")
    with _raises_at(path, 4, "duplicate document 'a' for query 'q1' \\(first at line 1\\)"):
        read_run(path)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("q1 Q0 a 1 3", "6 columns, found 5"),
        ("q1 Q0 a 1 high t", "score 'high' is not a number"),
        ("q1 Q0 a 1 nan t", "NaN"),
    ],
)
def test_run_malformed_line(tmp_path: Path, line: str, match: str) -> None:
    path = _write(tmp_path / "run.trec.gz", f"q0 Q0 z 1 1 t\n{line}\n")
    with _raises_at(path, 2, match):
        read_run(path)


@pytest.mark.parametrize(
    ("reader", "content", "match"),
    [
        (read_corpus, "", "empty corpus"),
        (read_corpus, "\n  \n", "empty corpus"),
        (read_queries, "", "no queries"),
        (read_qrels, "query-id\tcorpus-id\tscore\n", "no relevance judgements"),
        (read_run, "\n", "empty run"),
    ],
)
def test_empty_files_name_the_file(tmp_path: Path, reader, content: str, match: str) -> None:  # noqa: ANN001
    path = _write(tmp_path / "empty.jsonl", content)
    with _raises_at(path, None, match):
        reader(path)


def test_duplicate_corpus_id_names_line(tmp_path: Path) -> None:
    docs = [{"_id": "a", "text": "x"}, {"_id": "b", "text": "y"}, {"_id": "a", "text": "z"}]
    path = _write(tmp_path / "corpus.jsonl", _jsonl(*docs))
    with _raises_at(path, 3, "duplicate document id 'a'"):
        read_corpus(path)


@pytest.mark.parametrize("grade", ["4294967295", "2147483648", "-2147483649", str(2**63), "1e10", "99999999999"])
def test_grade_outside_32_bits_names_line(tmp_path: Path, grade: str) -> None:
    """pytrec_eval reads grades as a C int: beyond it a query silently scores 0 (4294967295) or it crashes."""
    for name, text in (("q.tsv", f"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t{grade}\n"),
                       ("q.txt", f"q1 0 d1 1\nq1 0 d2 {grade}\n")):
        path = _write(tmp_path / name, text)
        line = 3 if name == "q.tsv" else 2
        with _raises_at(path, line, f"relevance grade '{grade}' is outside the signed 32-bit range"):
            read_qrels(path)


def test_grade_range_limits_are_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.txt", "q1 0 d1 2147483647\nq1 0 d2 -2147483648\nq1 0 d3 999999999\nq1 0 d4 1e3\n")
    assert read_qrels(path) == {"q1": {"d1": 2**31 - 1, "d2": -(2**31), "d3": 999999999, "d4": 1000}}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("name", "first", "second", "reader"),
    [
        ("run.trec", "q1 Q0 a 1 3 t\nq1 Q0 b 2 2 t\n", "q2 Q0 a 1 3 t\n", read_run),
        ("qrels.txt", "q1 0 a 1\nq1 0 b 0\n", "q2 0 a 1\n", read_qrels),
        ("qrels.tsv", "query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\tb\t0\n", "q2\ta\t1\n", read_qrels),
        ("topics.tsv", "q1\tfirst query\nq3\tthird\n", "q2\tsecond query\n", read_queries),
    ],
)
def test_byte_order_mark_inside_a_file_names_line(tmp_path: Path, gz: bool, name: str, first: str, second: str,
                                                  reader: Callable[[Path], dict]) -> None:
    """Two files each saved with a BOM and joined with ``cat``: the second BOM would start a query id."""
    path = _write(tmp_path / (name + (".gz" if gz else "")), "\ufeff" + first + "\ufeff" + second)
    with _raises_at(path, first.count("\n") + 1, "byte-order mark"):
        reader(path)
    ok = _write(tmp_path / ("ok-" + name), "\ufeff" + first + second)  # at the very start it is dropped
    assert "q2" in reader(ok)


def test_a_zero_width_no_break_space_inside_a_line_is_text(tmp_path: Path) -> None:
    """U+FEFF inside a query's text (web text has it) is not a joined file: only one starting a line is."""
    path = _write(tmp_path / "topics.tsv", "1\tzero\ufeffwidth query\n2\tplain\n")
    assert read_queries(path)["1"].text == "zero\ufeffwidth query"


def test_byte_order_mark_inside_a_jsonl_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "queries.jsonl", "\ufeff" + _jsonl({"_id": "1", "text": "a"}) + "\ufeff"
                  + _jsonl({"_id": "2", "text": "b"}))
    with _raises_at(path, 2, "BOM"):
        read_queries(path)


@pytest.mark.parametrize("text", ["", " ", "\t ", "\u3000"])
def test_query_without_text_names_line(tmp_path: Path, text: str) -> None:
    jsonl = _write(tmp_path / "queries.jsonl", _jsonl({"_id": "1", "text": "ok"}, {"_id": "2", "text": text}))
    with _raises_at(jsonl, 2, "query '2' has no text"):
        read_queries(jsonl)
    tsv = _write(tmp_path / "topics.tsv", f"1\tok\n2\t{text}\n")
    with _raises_at(tsv, 2, "query '2' has no text"):
        read_queries(tsv)
    for i, query in enumerate([text, {"id": "q9", "text": text}]):
        path = _write(tmp_path / f"in{i}.jsonl", _jsonl({"query": "ok", "docs": ["d"]}, {"query": query, "docs": ["d"]}))
        with _raises_at(path, 2, "has no text"):
            read_query_docs_jsonl(path)
    # a document's text may be empty (a title-only document)
    corpus = _write(tmp_path / "corpus.jsonl", _jsonl({"_id": "d1", "title": "T", "text": text}))
    assert read_corpus(corpus)["d1"].text == text
