"""Audit fixes of the evaluation input: runs naming no known document, measure parameters below 1, summed count
measures, unranked and upside-down runs in ``rerank evaluate``, a queries TSV header, lone UTF-16 surrogates in
JSONL, and relevance-level warnings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ir_measures
import pytest

from rerank.data.datasets import resolve_dataset
from rerank.data.io import iter_jsonl, read_corpus, read_queries, read_query_docs_jsonl, read_run
from rerank.errors import ConfigError, DataFormatError
from rerank.eval.metrics import evaluate_run, parse_measures

DOCS = [f"{i:03d}" for i in range(12)]


def _dataset(root: Path, grades: tuple[int, ...] = (0, 1, 2)) -> Path:
    """A tiny unregistered BEIR folder: 12 documents, 3 queries, each judging 3 documents with ``grades``."""
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": f"text {d}"}) + "\n" for d in DOCS))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{q}", "text": f"query {q}"}) + "\n"
                                                for q in range(3)))
    (root / "qrels").mkdir()
    lines = [f"q{q}\t{DOCS[q * 3 + i]}\t{g}\n" for q in range(3) for i, g in enumerate(grades)]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(lines))
    return root


def _run(path: Path, prefix: str = "", distance: bool = False, same: bool = False) -> Path:
    """A 6-column run of every document for each query, ranks 1..12; scores fall with the rank, or rise
    (``distance``), or are all equal (``same``)."""
    lines = []
    for q in range(3):
        for rank, d in enumerate(DOCS, 1):
            score = 1.0 if same else (float(rank) if distance else float(20 - rank))
            lines.append(f"q{q} Q0 {prefix}{d} {rank} {score} t\n")
    path.write_text("".join(lines))
    return path


def _error_line(rc: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1, err
    return lines[0]


# 1. a run naming none of the judged / corpus documents


def test_evaluate_refuses_a_run_sharing_no_document_with_the_qrels(tmp_path: Path, run_cli) -> None:
    ds = _dataset(tmp_path / "ds")
    rc, out, err = run_cli("evaluate", "--run", _run(tmp_path / "p.trec", prefix="doc"), "--qrels",
                           ds / "qrels" / "test.tsv", "--rel-level", "1")
    line = _error_line(rc, err)
    assert "shares no document id" in line and "doc000" in line and "000" in line.replace("doc000", "") and not out


def test_evaluate_keeps_a_partial_document_overlap(tmp_path: Path, run_cli) -> None:
    ds = _dataset(tmp_path / "ds")
    run = tmp_path / "r.trec"  # one judged document of query q0 named as the qrels name it, the rest not
    run.write_text("".join(f"q{q} Q0 {'' if (q, d) == (0, '000') else 'x'}{d} {r} {20 - r} t\n"
                           for q in range(3) for r, d in enumerate(DOCS, 1)))
    rc, out, err = run_cli("evaluate", "--run", run, "--qrels", ds / "qrels" / "test.tsv", "--rel-level", "1")
    assert rc == 0 and "nDCG@10\tall" in out, err


def test_eval_first_stage_refuses_a_run_sharing_no_document_with_the_corpus(tmp_path: Path, run_cli) -> None:
    ds = _dataset(tmp_path / "ds")
    rc, _, err = run_cli("eval", "--dataset", ds, "--first-stage", _run(tmp_path / "p.trec", prefix="doc"),
                         "--output", tmp_path / "out")
    line = _error_line(rc, err)
    assert "--first-stage" in line and "corpus.jsonl" in line and "doc000" in line
    assert not (tmp_path / "out" / "metrics.json").exists()


# 2. cutoff or rel below 1 in a measure name


@pytest.mark.parametrize("name", ["nDCG@0", "P@0", "R@0", "ndcg_cut_0", "ndcg_cut.0,10", "Judged@0",
                                  "RR(rel=0)@10", "AP(rel=0)"])
def test_measure_cutoff_or_rel_below_one_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=r"measure '.*': (cutoff|relevance level \(rel\)) must be >= 1"):
        parse_measures([name])


def test_evaluate_refuses_rel_zero_in_a_measure_in_one_line(tmp_path: Path, run_cli) -> None:
    ds = _dataset(tmp_path / "ds")
    rc, _, err = run_cli("evaluate", "--run", _run(tmp_path / "r.trec"), "--qrels", ds / "qrels" / "test.tsv",
                         "-m", "RR(rel=0)@10")
    assert "RR(rel=0)@10" in _error_line(rc, err)


# 3. count measures are summed; one measure name as a string


def test_count_measures_are_summed_as_trec_eval_and_ir_measures_do() -> None:
    run = {"q1": [("a", 3.0), ("b", 2.0), ("c", 1.0)], "q2": [("a", 1.0), ("x", 0.5)]}
    qrels = {"q1": {"a": 1, "c": 2, "z": 0}, "q2": {"x": 1, "y": 1}}
    res = evaluate_run(run, qrels, ["NumRet", "NumRel", "num_rel_ret", "P@2"])
    ranked = {q: {d: s for d, s in lst} for q, lst in run.items()}
    want = ir_measures.calc_aggregate([ir_measures.NumRet, ir_measures.NumRel, ir_measures.NumRelRet], qrels, ranked)
    assert res.aggregate["NumRet"] == want[ir_measures.NumRet] == 5
    assert res.aggregate["NumRel"] == want[ir_measures.NumRel] == 4
    assert res.aggregate["NumRet(rel=1)"] == want[ir_measures.NumRelRet] == 3
    assert res.per_query["q1"]["NumRet"] == 3 and res.per_query["q2"]["NumRel"] == 2  # per query: the query's own
    assert res.aggregate["P@2"] == pytest.approx((0.5 + 0.5) / 2)  # the rest stay means


def test_evaluate_run_takes_one_measure_name_as_a_string() -> None:
    run, qrels = {"q": [("a", 2.0), ("b", 1.0)]}, {"q": {"b": 1}}
    assert evaluate_run(run, qrels, "nDCG@10").aggregate == evaluate_run(run, qrels, ["nDCG@10"]).aggregate
    assert list(evaluate_run(run, qrels, "RR@10").aggregate) == ["RR@10"]


# 4. rerank evaluate warns about runs that do not rank, or rank upside down


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_evaluate_warns_about_equal_scores_and_a_rank_column_against_the_scores(
    tmp_path: Path, run_cli, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _dataset(tmp_path / "ds")
    qrels = ds / "qrels" / "test.tsv"
    caplog.set_level(logging.WARNING, logger="rerank")
    for name, kw, needle in (("same", {"same": True}, "scores every document of a query the same"),
                             ("dist", {"distance": True}, "rank 1 has a lower score than the last rank")):
        caplog.clear()
        run = _run(tmp_path / f"{name}.trec", **kw)
        rc, _, err = run_cli("evaluate", "--run", run, "--qrels", qrels, "--rel-level", "1")
        warned = [w for w in _warnings(caplog) if needle in w]
        assert rc == 0 and len(warned) == 1 and str(run) in warned[0], (err, _warnings(caplog))
    caplog.clear()
    rc, _, _ = run_cli("evaluate", "--run", _run(tmp_path / "ok.trec"), "--qrels", qrels, "--rel-level", "1")
    assert rc == 0 and _warnings(caplog) == []


def test_rank_check_passes_msmarco_runs_and_most_agreeing_queries(tmp_path: Path) -> None:
    from rerank.data.io import check_rank_column

    msm = tmp_path / "m.tsv"
    msm.write_text("q1\ta\t1\nq1\tb\t2\n")
    assert check_rank_column(msm, "m")
    mixed = tmp_path / "mixed.trec"  # one query of three upside down: not most
    mixed.write_text("".join(f"q{q} Q0 d{r} {r} {(r if q == 0 else -r)} t\n" for q in range(3) for r in (1, 2, 3)))
    assert check_rank_column(mixed, "mixed")
    assert read_run(mixed)  # the reader is unchanged


# 5. a queries TSV header


@pytest.mark.parametrize("header", ["query-id\ttext", "qid\tquery", "_id\ttext", "id\ttext", "query_id\tquery_text"])
def test_queries_tsv_header_is_skipped(tmp_path: Path, header: str) -> None:
    path = tmp_path / "queries.tsv"
    path.write_text(f"{header}\n1\tfirst query\n2\tsecond\n")
    assert list(read_queries(path)) == ["1", "2"]


def test_queries_tsv_without_header_keeps_its_first_query(tmp_path: Path) -> None:
    path = tmp_path / "queries.tsv"
    path.write_text("id\twhat is an id\n2\tsecond\n")  # a query named id whose text is no header word
    assert list(read_queries(path)) == ["id", "2"]


# 6. a lone UTF-16 surrogate in JSONL


def test_lone_surrogate_in_corpus_queries_and_input_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "fine \\ud83d\\ude00 \\uD55C"}\n{"_id": "b", "text": "bad \\uD800 x"}\n')
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: .*surrogate in field 'text'"):
        read_corpus(corpus)
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q", "text": "\\udfff"}\n')
    with pytest.raises(DataFormatError, match=r"queries.jsonl:1: .*surrogate"):
        read_queries(queries)
    given = tmp_path / "in.jsonl"
    given.write_text('{"query": "q", "docs": ["ok", "bad \\ud800 x"]}\n')
    with pytest.raises(DataFormatError, match=r"in.jsonl:1: .*surrogate in field 'docs'\[1\]"):
        read_query_docs_jsonl(given)


def test_paired_surrogates_and_escaped_backslashes_pass(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a", "text": "\\ud83d\\ude00 and \\\\ud800 as text"}\n')
    assert [obj["text"] for _, obj in iter_jsonl(path)] == ["\U0001f600 and \\ud800 as text"]


# 7. relevance-level warnings


def test_eval_warns_once_when_grades_above_one_have_no_set_rel_level(
    tmp_path: Path, run_cli, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _dataset(tmp_path / "mydl19")
    run = _run(tmp_path / "r.trec")
    caplog.set_level(logging.WARNING, logger="rerank")
    rc, _, err = run_cli("eval", "--dataset", ds, "--first-stage", run, "--output", tmp_path / "o1")
    warned = [w for w in _warnings(caplog) if "grade >= 1 as relevant" in w and "--rel-level 2" in w]
    assert rc == 0 and len(warned) == 1, (err, _warnings(caplog))
    caplog.clear()
    rc, _, _ = run_cli("eval", "--dataset", ds, "--first-stage", run, "--output", tmp_path / "o2", "--rel-level", "2")
    assert rc == 0 and not [w for w in _warnings(caplog) if "relevance level" in w or "relevant" in w]


def test_evaluate_warns_about_graded_qrels_and_a_rel_level_above_every_grade(
    tmp_path: Path, run_cli, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _dataset(tmp_path / "ds")
    qrels, run = ds / "qrels" / "test.tsv", _run(tmp_path / "r.trec")
    caplog.set_level(logging.WARNING, logger="rerank")
    assert run_cli("evaluate", "--run", run, "--qrels", qrels)[0] == 0
    assert [w for w in _warnings(caplog) if "grade >= 1 as relevant" in w]
    caplog.clear()
    assert run_cli("evaluate", "--run", run, "--qrels", qrels, "--rel-level", "3")[0] == 0
    assert [w for w in _warnings(caplog) if "above every grade" in w and "largest is 2" in w]
    caplog.clear()
    assert run_cli("evaluate", "--run", run, "--qrels", qrels, "-m", "nDCG@10")[0] == 0  # nothing binary asked
    assert _warnings(caplog) == []
    caplog.clear()
    binary = _dataset(tmp_path / "binary", grades=(0, 1, 1))
    assert run_cli("evaluate", "--run", run, "--qrels", binary / "qrels" / "test.tsv")[0] == 0
    assert _warnings(caplog) == []


def test_registered_name_keeps_its_rel_level(tmp_path: Path) -> None:
    assert resolve_dataset(_dataset(tmp_path / "dl19-bm25-top100")).rel_level == 2
    assert resolve_dataset(_dataset(tmp_path / "mydl19")).rel_level == 1
