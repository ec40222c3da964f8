"""evaluate_run against pytrec_eval called directly, `rerank evaluate`, and `rerank eval --first-stage` on DL19."""

from __future__ import annotations

import json
import math
import random
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from rerank.cli import main
from rerank.data.io import read_qrels, read_run, write_qrels, write_run
from rerank.eval.metrics import EVAL_GRADE_MAX, evaluate_run
from rerank.types import Qrels, Run

# our name -> (pytrec_eval measure, its result key, rank cut-off applied to the run first)
PYTREC = {
    "nDCG@10": ("ndcg_cut.10", "ndcg_cut_10", None),
    "nDCG@5": ("ndcg_cut.5", "ndcg_cut_5", None),
    "nDCG": ("ndcg", "ndcg", None),
    "AP": ("map", "map", None),
    "P@10": ("P.10", "P_10", None),
    "R@20": ("recall.20", "recall_20", None),
    "RR": ("recip_rank", "recip_rank", None),
    "RR@10": ("recip_rank", "recip_rank", 10),
}
GRADED = {"nDCG@10", "nDCG@5", "nDCG"}


def _trec_order(docs: dict[str, float]) -> list[str]:
    """trec_eval's ranking: score descending, ties by doc id descending."""
    return [d for d, _ in sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def _random_case(seed: int) -> tuple[Run, Qrels]:
    """Random graded qrels and a run with many tied scores, missing queries and run-only queries."""
    rng = random.Random(seed)
    pool = [f"d{i:02d}" for i in range(40)]
    qrels: Qrels = {}
    for q in range(25):
        judged = rng.sample(pool, rng.randint(1, 15))
        qrels[f"q{q}"] = {d: rng.choice([0, 0, 1, 2, 3]) for d in judged}
    run: Run = {}
    for q in list(qrels)[3:] + ["extra1", "extra2"]:  # q0-q2 missing from the run; two queries with no judgements
        docs = rng.sample(pool, rng.randint(5, 30))
        run[q] = [(d, float(rng.randint(0, 4)) + rng.choice([0.0, 0.5])) for d in docs]  # heavy ties
    return run, qrels


def _pytrec(run: Run, qrels: Qrels, name: str, rel_level: int) -> dict[str, float]:
    """Per-query values of ``name`` from pytrec_eval, for queries in both run and qrels."""
    measure, key, cut = PYTREC[name]
    as_dict = {q: dict(lst) for q, lst in run.items()}
    if cut is not None:
        as_dict = {q: {d: docs[d] for d in _trec_order(docs)[:cut]} for q, docs in as_dict.items()}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {measure}, relevance_level=rel_level)
    return {q: vals[key] for q, vals in ev.evaluate(as_dict).items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rel_level", [1, 2])
def test_equals_pytrec_eval(seed: int, rel_level: int) -> None:
    run, qrels = _random_case(seed)
    names = list(PYTREC)
    ours = evaluate_run(run, qrels, names, rel_level=rel_level)
    assert ours.num_queries == len(qrels)
    assert sorted(ours.per_query) == sorted(qrels)
    assert ours.missing_queries == ["q0", "q1", "q2"]
    for name in names:
        # binary measures at rel >= rel_level (named e.g. "AP(rel=2)"); nDCG always on graded judgements
        key = name
        if rel_level == 2 and name not in GRADED:
            key = name.replace("@", "(rel=2)@", 1) if "@" in name else f"{name}(rel=2)"
        level = 1 if name in GRADED else rel_level
        ref = _pytrec(run, qrels, name, level)
        for q in qrels:
            assert ours.per_query[q][key] == pytest.approx(ref.get(q, 0.0), abs=1e-9), (name, q)
        mean = sum(ref.get(q, 0.0) for q in qrels) / len(qrels)  # missing queries count as 0
        assert ours.aggregate[key] == pytest.approx(mean, abs=1e-9), name
    for q in ours.missing_queries:
        assert all(v == 0.0 for v in ours.per_query[q].values())


def test_rel_level_changes_binary_measures_only() -> None:
    run, qrels = _random_case(5)
    one = evaluate_run(run, qrels, ["nDCG@10", "AP"], rel_level=1).aggregate
    two = evaluate_run(run, qrels, ["nDCG@10", "AP"], rel_level=2).aggregate
    assert set(two) == {"nDCG@10", "AP(rel=2)"}
    assert one["nDCG@10"] == two["nDCG@10"]
    assert one["AP"] != two["AP(rel=2)"]


def test_ties_broken_by_doc_id_descending() -> None:
    """Every measure sees trec_eval's order, including those ir-measures computes outside pytrec_eval."""
    qrels = {"q": {"a": 1}}
    run = {"q": [("a", 1.0), ("b", 1.0), ("c", 1.0)]}  # trec_eval ranks c, b, a
    res = evaluate_run(run, qrels, ["RR", "P@1", "RR@2", "RR@3", "Judged@1", "Judged@3"])
    expected = {"RR": 1 / 3, "P@1": 0.0, "RR@2": 0.0, "RR@3": 1 / 3, "Judged@1": 0.0, "Judged@3": 1 / 3}
    assert res.aggregate == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_judged_at_k_follows_trec_order(seed: int) -> None:
    run, qrels = _random_case(seed)
    res = evaluate_run(run, qrels, ["Judged@5"])
    for q in qrels:
        top = _trec_order(dict(run[q]))[:5] if q in run else []
        expected = sum(d in qrels[q] for d in top) / 5 if top else 0.0
        assert res.per_query[q]["Judged@5"] == pytest.approx(expected, abs=1e-9), q


def test_run_only_queries_are_ignored_and_missing_count_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    base = evaluate_run({"q1": [("a", 1.0)]}, qrels, ["nDCG@10"])
    assert base.aggregate["nDCG@10"] == pytest.approx(0.5)  # q2 absent -> 0
    assert base.missing_queries == ["q2"]
    extra = evaluate_run({"q1": [("a", 1.0)], "zz": [("a", 1.0)], "q2": []}, qrels, ["nDCG@10"])
    assert extra.aggregate == base.aggregate
    assert sorted(extra.per_query) == ["q1", "q2"]
    assert extra.missing_queries == ["q2"]
    empty = evaluate_run({}, qrels, ["nDCG@10", "AP"])
    assert empty.aggregate == {"nDCG@10": 0.0, "AP": 0.0}


MEASURES = ["nDCG@10", "AP", "RR@10", "Judged@10", "P@1"]


@pytest.mark.parametrize(
    ("run", "qrels", "match"),
    [
        ({"q": [("a", 2.0), ("b", math.nan), ("c", 1.0)]}, {"q": {"a": 1}}, "query 'q', document 'b': score is NaN"),
        ({"q": [("a", 2.0), ("b", 1.0), ("a", 0.5)]}, {"q": {"a": 1}}, "query 'q': document 'a' is listed twice"),
        ({"q": [("a", 1.0)]}, {"q": {"a": 1, "b": 0.5}}, "query 'q', document 'b': relevance grade 0.5 is not an int"),
        ({"q": [("a", 1.0)]}, {"q": {"a": np.float64(1.5)}}, "document 'a': relevance grade 1.5 is not an integer"),
        ({"q": [("a", 1.0)]}, {"q": {"a": math.nan}}, "document 'a': relevance grade nan is not an integer"),
        ({"q": [("a", 1.0)]}, {"q": {"a": "1"}}, "document 'a': relevance grade '1' is not an integer"),
        ({"q": [("a", 1.0)]}, {"q": {"a": 1, "b": 4294967295}}, "document 'b': relevance grade 4294967295 is outside"),
        ({"q": [("a", 1.0)]}, {"q": {"a": 2**31}}, "relevance grade 2147483648 is outside the signed 32-bit range"),
        ({"q": [("a", 1.0)]}, {"q": {"a": 2**63}}, "relevance grade 9223372036854775808 is outside"),
        ({"q": [("a", 1.0)]}, {"q": {"a": np.int64(-(2**40))}}, "relevance grade -1099511627776 is outside"),
        ({"q": [("a", 1.0)]}, {"q": {"a": 2**31 - 1}}, "relevance grade 2147483647 is above 1,000,000: trec_eval"),
        ({"q": [("a", 1.0)]}, {"q": {"a": np.int32(1_000_001)}}, "relevance grade 1000001 is above 1,000,000"),
    ],
)
def test_invalid_input_is_a_value_error_naming_query_and_document(run: Run, qrels: Qrels, match: str) -> None:
    """Input pytrec_eval would misread (a NaN ranked anywhere, 0.5 cut to 0, a grade wrapped around) is refused."""
    with pytest.raises(ValueError, match=match):
        evaluate_run(run, qrels, MEASURES)


@pytest.mark.parametrize(
    ("run", "qrels", "match"),
    [
        ({1: [("a", 1.0)]}, {1: {"a": 1}}, "qrels: query id 1 is int, not a string"),
        ({1: [("a", 1.0)]}, {"1": {"a": 1}}, "run: query id 1 is int, not a string"),  # would never match "1"
        ({"q": [(7, 1.0)]}, {"q": {7: 1}}, "query 'q': document id 7 is int, not a string"),
        ({"q": [("a", 2.0), ("b", "high")]}, {"q": {"a": 1}}, "query 'q', document 'b': score 'high' is not a number"),
    ],
)
def test_wrong_types_are_a_type_error_naming_query_and_document(run: Run, qrels: Qrels, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        evaluate_run(run, qrels, MEASURES)


def test_other_number_types_give_the_same_numbers() -> None:
    """Integral float and numpy grades, numpy and Decimal scores, the lowest signed 32-bit int and the largest grade
    evaluated are read as they are."""
    run, qrels = _random_case(4)
    want = evaluate_run(run, qrels, MEASURES).per_query
    as_numpy = {q: [(d, np.float32(s)) for d, s in lst] for q, lst in run.items()}
    floats = {q: {d: float(g) for d, g in j.items()} for q, j in qrels.items()}
    numpy_ints = {q: {d: np.int64(g) for d, g in j.items()} for q, j in qrels.items()}
    assert evaluate_run(as_numpy, floats, MEASURES).per_query == want
    as_decimal = {q: [(d, Decimal(repr(s))) for d, s in lst] for q, lst in run.items()}  # does not add to a float
    assert evaluate_run(as_decimal, qrels, MEASURES).per_query == want
    assert evaluate_run(run, numpy_ints, MEASURES).per_query == want
    top = {"q": {"a": EVAL_GRADE_MAX, "b": -(2**31), "c": 0}}  # 2**31 - 1 made trec_eval allocate 16 GB
    assert evaluate_run({"q": [("a", 1.0), ("b", 2.0)]}, top, ["P@1", "RR"]).aggregate == {"P@1": 0.0, "RR": 0.5}


def test_infinite_scores_rank_first_and_last() -> None:
    qrels = {"q": {"a": 1, "b": 1}}
    run = {"q": [("z", math.inf), ("a", 5.0), ("b", -math.inf), ("c", 1.0)]}
    res = evaluate_run(run, qrels, ["RR", "P@1", "AP", "Judged@2"]).aggregate
    assert res == pytest.approx({"RR": 0.5, "P@1": 0.0, "AP": (1 / 2 + 2 / 4) / 2, "Judged@2": 0.5})


# --- `rerank evaluate` ------------------------------------------------------------------------------------------------


def test_evaluate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, qrels = _random_case(3)
    write_run(run, tmp_path / "run.trec")
    write_qrels(qrels, tmp_path / "qrels.tsv", beir=True)
    expected = evaluate_run(run, qrels, ["nDCG@10", "AP"], rel_level=2)

    assert main(["evaluate", "--run", str(tmp_path / "run.trec"), "--qrels", str(tmp_path / "qrels.tsv"),
                 "-m", "nDCG@10", "-m", "AP", "--rel-level", "2", "--json", "--per-query"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["num_queries"] == 25 and out["missing_queries"] == ["q0", "q1", "q2"]
    assert out["metrics"] == pytest.approx(expected.aggregate, abs=1e-12)
    assert out["per_query"] == expected.per_query

    assert main(["evaluate", "--run", str(tmp_path / "run.trec"), "--qrels", str(tmp_path / "qrels.tsv"),
                 "-m", "nDCG@10", "--per-query"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    nd = evaluate_run(run, qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    assert f"nDCG@10\tall\t{nd:.4f}" in lines
    assert "num_q\tall\t25" in lines
    assert sum(1 for ln in lines if ln.startswith("nDCG@10\tq")) == 25
    assert any("3 judged queries absent from the run were counted as 0" in ln for ln in lines)


def test_evaluate_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run.trec").write_text("q1 Q0 a 1 1 t\nq1 Q0 a 2 0.5 t\n")
    (tmp_path / "qrels.txt").write_text("q1 0 a 1\n")
    assert main(["evaluate", "--run", str(tmp_path / "run.trec"), "--qrels", str(tmp_path / "qrels.txt")]) == 2
    assert f"{tmp_path / 'run.trec'}:2: duplicate document 'a'" in capsys.readouterr().err
    (tmp_path / "run.trec").write_text("q1 Q0 a 1 1 t\n")
    args = ["evaluate", "--run", str(tmp_path / "run.trec"), "--qrels", str(tmp_path / "qrels.txt")]
    assert main([*args, "-m", "nDCG@x"]) == 2
    assert "unknown measure 'nDCG@x'" in capsys.readouterr().err


# --- `rerank eval --first-stage` on TREC DL 2019 (../shared/data) --------------------------------------------------


@pytest.mark.shared_data
def test_eval_first_stage_dl19(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dl19 = shared_data / "dl19-bm25-top100"
    out = tmp_path / "out"
    # by registered name under --data-root: the dataset inherits the TREC DL convention (binary measures at rel >= 2)
    assert main(["eval", "--dataset", "dl19-bm25-top100", "--data-root", str(shared_data),
                 "--first-stage", str(dl19 / "bm25_top100.trec"), "--output", str(out)]) == 0  # fmt: skip
    assert "nDCG@10=0.5058" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert round(metrics["metrics"]["nDCG@10"], 4) == 0.5058  # Anserini's published BM25 DL19 figure
    assert metrics["num_queries"] == 43 and len(metrics["per_query"]) == 43
    assert metrics["rel_level"] == 2 and "AP(rel=2)" in metrics["metrics"]
    assert metrics["missing_queries"] == [] and metrics["unknown_doc_ids"]["count"] == 0
    assert {"dataset", "split", "first_stage", "reranker", "timing_s", "config"} <= set(metrics)
    report = (out / "report.md").read_text()
    assert f"| nDCG@10 | {metrics['metrics']['nDCG@10']:.4f} |" in report and "queries: 43" in report
    # run.trec re-scored from disk reproduces every per-query value exactly
    qrels = read_qrels(dl19 / "qrels" / "test.tsv")
    rescored = evaluate_run(read_run(out / "run.trec"), qrels, list(metrics["metrics"]))  # names carry rel=2
    assert rescored.aggregate == metrics["metrics"]
    assert rescored.per_query == metrics["per_query"]
    assert read_run(out / "run.trec") == read_run(dl19 / "bm25_top100.trec")


@pytest.mark.shared_data
def test_eval_max_queries_dl19(shared_data: Path, tmp_path: Path) -> None:
    dl19 = shared_data / "dl19-bm25-top100"
    out = tmp_path / "out"
    assert main(["eval", "--dataset", str(dl19), "--first-stage", str(dl19 / "bm25_top100.trec"),
                 "--max-queries", "5", "-m", "nDCG@10", "-m", "AP", "--output", str(out)]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    qrels = read_qrels(dl19 / "qrels" / "test.tsv")
    first5 = sorted(qrels)[:5]
    assert metrics["num_queries"] == 5
    assert sorted(metrics["per_query"]) == first5
    sub = {q: qrels[q] for q in first5}
    expected = evaluate_run(read_run(dl19 / "bm25_top100.trec"), sub, ["nDCG@10", "AP"], rel_level=2)
    assert metrics["metrics"] == pytest.approx(expected.aggregate, abs=1e-12)
    mean = sum(metrics["per_query"][q]["nDCG@10"] for q in first5) / 5
    assert metrics["metrics"]["nDCG@10"] == pytest.approx(mean, abs=1e-12)
    assert sorted(read_run(out / "run.trec")) == first5
