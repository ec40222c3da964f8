"""Audit s41: the numbers and words of `rerank leaderboard`, `rerank eval` / `evaluate` and report.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from rerank.eval.leaderboard import randomization_test
from tests.test_leaderboard import ShortestFirst  # noqa: F401 - registers the "test-shortest" reranker
from tests.test_suites import OverlapRetriever  # noqa: F401 - registers the "test-overlap" first stage


def _dl19_board(tmp_path: Path, tiny_beir_dir: Path, measure: str) -> tuple[Path, Path, Path]:
    """A leaderboard over a tiny graded BEIR folder named as DL19 (so binary measures count grade >= 2), in the
    average, with two rows; returns (config, data root, results folder)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_beir_dir, data / "dl19-bm25-top100")
    cfg = {"name": "rel2", "measure": measure, "published": False,
           "columns": [{"label": "dl19", "dataset": "dl19-bm25-top100", "top_k": 10}],
           "rows": [{"name": "overlap", "retriever": "test-overlap"},
                    {"name": "overlap > shortest", "retriever": "test-overlap", "reranker": "test-shortest",
                     "backend": "none"}],
           "significance": {"samples": 500}}
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path, data, tmp_path / "res"


@pytest.mark.parametrize("measure", ["AP", "RR@10"])
def test_leaderboard_reads_a_binary_measure_at_the_datasets_relevance_level(
        tmp_path: Path, tiny_beir_dir: Path, run_cli, measure: str) -> None:
    """The cells, the average and the p-value of a DL19 column use the metrics' ``AP(rel=2)``, not missing zeros."""
    path, data, res = _dl19_board(tmp_path, tiny_beir_dir, measure)
    rc, _, err = run_cli("leaderboard", "--config", path, "--data-root", data, "--results-dir", res)
    assert rc == 0, err
    key = measure.replace("@", "(rel=2)@") if "@" in measure else f"{measure}(rel=2)"
    board = json.loads((res / "leaderboard.json").read_text())
    per_query, shown = {}, []
    for row, folder in (("overlap", "overlap"), ("overlap > shortest", "overlap_shortest")):
        m = json.loads((res / folder / "dl19" / "metrics.json").read_text())
        assert m["rel_level"] == 2
        per_query[row] = [m["per_query"][q][key] for q in sorted(m["per_query"])]
        got = next(r for r in board["rows"] if r["name"] == row)
        assert got["columns"]["dl19"]["value"] == pytest.approx(m["metrics"][key])
        assert got["average"] == pytest.approx(m["metrics"][key])
        shown.append(f"{m['metrics'][key]:.4f}")
    assert per_query["overlap"] != per_query["overlap > shortest"]
    (pair,) = board["pairwise"]["dl19"]
    assert pair["p"] == randomization_test(per_query["overlap"], per_query["overlap > shortest"], 500, 0) < 1.0
    text = (res / "leaderboard.md").read_text()
    assert f"{measure} is scored as `{key}`" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert [line.split(" | ")[6].removesuffix(" ▲").removesuffix(" ▼") for line in rows] == shown


def test_leaderboard_refuses_a_cell_whose_metrics_lack_the_measure(tmp_path: Path, tiny_beir_dir: Path,
                                                                    run_cli) -> None:
    """A cached cell's metrics.json without the measure is a one-line error naming the cell, not zeros."""
    path, data, res = _dl19_board(tmp_path, tiny_beir_dir, "AP")
    assert run_cli("leaderboard", "--config", path, "--data-root", data, "--results-dir", res)[0] == 0
    file = res / "overlap" / "dl19" / "metrics.json"
    m = json.loads(file.read_text())
    del m["metrics"]["AP(rel=2)"]
    file.write_text(json.dumps(m))
    rc, _, err = run_cli("leaderboard", "--config", path, "--data-root", data, "--results-dir", res, "--only-cached")
    assert rc == 2 and "Traceback" not in err
    assert "'overlap' x 'dl19'" in err and "'AP(rel=2)'" in err


@pytest.mark.parametrize(("measure", "named"), [("nDCG(rel=2)@10", "nDCG does not take rel (nDCG always uses the graded"),
                                                ("Judged(rel=2)@10", "Judged does not take rel; its parameters: cutoff"),
                                                ("RR(foo=1)@10", "RR does not take foo; its parameters: cutoff, rel")])
def test_a_parameter_the_measure_does_not_take_is_a_one_line_error(tmp_path: Path, tiny_beir_dir: Path, run_cli,
                                                                    measure: str, named: str) -> None:
    """`rerank evaluate` and `rerank eval` refuse it naming the measure and what it takes (was a KeyError)."""
    from rerank.errors import ConfigError
    from rerank.eval.metrics import parse_measures

    with pytest.raises(ConfigError, match=r"measure '.*': ") as e:
        parse_measures(measure, 2)
    assert named in str(e.value) and repr(measure) in str(e.value)
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 1.0 x\n", encoding="utf-8")
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\t0\td1\t2\n", encoding="utf-8")
    for args in (("evaluate", "--run", run, "--qrels", qrels, "-m", measure),
                 ("eval", "--dataset", tiny_beir_dir, "--retriever", "test-overlap", "-m", measure,
                  "--output", tmp_path / "out")):
        rc, _, err = run_cli(*args)
        assert rc == 2 and "Traceback" not in err and named in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_report_says_when_max_queries_kept_only_the_first_queries(tmp_path: Path, tiny_beir_dir: Path,
                                                                   run_cli) -> None:
    """report.md states that --max-queries kept the first N judged queries, not 'all judged queries'."""
    from rerank.data.datasets import Dataset

    judged = len(Dataset(tiny_beir_dir).qrels("test"))
    assert judged > 3
    for cap, words in ((3, "the first 3 judged queries of the split, by query id (--max-queries 3)"),
                       (judged + 5, f"all judged queries: the split has fewer than --max-queries {judged + 5}"),
                       (None, "(mean over all judged queries;")):
        out = tmp_path / f"out{cap}"
        rc, _, err = run_cli("eval", "--dataset", tiny_beir_dir, "--retriever", "test-overlap", "--output", out,
                             *(("--max-queries", cap) if cap else ()))
        assert rc == 0, err
        text = (out / "report.md").read_text()
        assert words in text, text
        assert ("all judged queries" in text) == (cap != 3)


def test_a_p_value_printed_never_disagrees_with_the_significance_mark() -> None:
    """p = 100/2001 = 0.049975 (†, p < 0.05, 99 hits in 2000 flips) is printed 0.04998, not 0.0500; other p-values keep 4 decimals."""
    from rerank.eval.leaderboard import render_markdown

    pairs = [{"a": "A", "b": "B", "queries": 15, "p": p} for p in (100 / 2001, 0.05, 0.0500004, 0.3571, 0.0004998)]
    report = {"name": "p", "measure": "nDCG@10", "columns": [], "average_over": [], "rows": [], "cells": {},
              "pairwise": {"c": pairs}, "significance": {"p": 0.05, "samples": 2000, "seed": 0}, "published": [],
              "notes": [], "generated": "now", "machine": "here"}
    text = render_markdown(report, "lb.yaml", None)
    shown = [line.split(" | ")[-1].rstrip(" |") for line in text.splitlines() if line.startswith("| c |")]
    assert shown == ["0.04998", "0.0500", "0.0500", "0.3571", "0.0005"]
