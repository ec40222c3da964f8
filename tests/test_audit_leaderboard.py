"""Audit fixes: leaderboard significance settings, a row's top_k / interpolate shown and recorded (and in eval's
report.md), reranker settings without a reranker, what keeps a cached cell, and a suite's stale member folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.eval.leaderboard import LeaderboardConfig, load_config, randomization_test, render_markdown
from tests.test_suites import OverlapRetriever, _dl_folder  # noqa: F401 - registers the "test-overlap" first stage

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, **extra: Any) -> Path:
    cfg = {"name": "x", "columns": [{"label": "a", "dataset": "a"}], "rows": [{"name": "r", "retriever": "bm25"}],
           **extra}
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.mark.parametrize(("significance", "message"), [
    ({"p": 5}, r"significance\.p must be a number between 0 and 1"),
    ({"p": 0}, r"significance\.p must be"),
    ({"p": 1.0}, r"significance\.p must be"),
    ({"p": -0.05}, r"significance\.p must be"),
    ({"samples": -3}, r"significance\.samples must be an integer >= 1"),
    ({"samples": 0}, r"significance\.samples must be"),
    ({"samples": 2.5}, "expected an integer"),
])
def test_impossible_significance_settings_are_refused(tmp_path: Path, significance: dict, message: str) -> None:
    """``significance: {p: 5, samples: -3}`` marked identical rows significant and printed p = -0.5."""
    with pytest.raises(ConfigError, match=message) as e:
        load_config(_write(tmp_path, significance=significance))
    assert "\n" not in str(e.value)


def test_impossible_significance_is_a_one_line_cli_error(tmp_path: Path, run_cli) -> None:
    rc, _, err = run_cli("leaderboard", "--config", _write(tmp_path, significance={"p": 5, "samples": -3}),
                         "--results-dir", tmp_path / "res")
    assert rc == 2 and "significance.p" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res" / "leaderboard.json").exists()


def test_randomization_test_refuses_fewer_than_one_sample() -> None:
    for samples in (0, -3):
        with pytest.raises(ConfigError, match="samples must be an integer >= 1"):
            randomization_test([1.0, 0.0], [0.0, 0.0], samples=samples)
    assert randomization_test([1.0, 1.0], [1.0, 1.0], samples=1) == 1.0


@pytest.mark.parametrize(("row", "named"), [
    ({"top_k": 7}, "top_k needs a reranker"),
    ({"interpolate": 0.5}, "interpolate needs a reranker"),
    ({"model": "m"}, "model needs a reranker"),
    ({"backend": "vllm"}, "backend needs a reranker"),
    ({"top_k": 7, "reranker_options": {"x": 1}}, "reranker_options and top_k need a reranker"),
])
def test_reranker_settings_without_a_reranker_are_refused(tmp_path: Path, row: dict, named: str) -> None:
    """A row's ``top_k`` without a reranker was silently ignored (``model`` was refused, but only once its cell ran)."""
    path = _write(tmp_path, rows=[{"name": "r", "retriever": "bm25", **row}])
    with pytest.raises(ConfigError, match=f"row 'r': {named} and none is given: set reranker or drop"):
        load_config(path)


def _report(rows: list[dict[str, Any]], cells: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    from rerank.eval.leaderboard import _assemble

    cfg = from_dict(LeaderboardConfig, {
        "name": "t", "published": False, "significance": {"samples": 10},
        "columns": [{"label": "a", "dataset": "a", "top_k": 10}, {"label": "b", "dataset": "b", "top_k": 100}],
        "rows": rows})
    return _assemble(cfg, cells, [])


def _cell(value: float) -> dict[str, Any]:
    return {"value": value, "per_query": {"q1": value, "q2": value}, "num_queries": 2, "seconds": 1.0,
            "queries_per_s": 2.0, "parse": None, "reused": True, "dir": "d", "load_avg_1min": None, "workers": 1}


def test_a_rows_top_k_and_interpolation_are_shown_and_recorded() -> None:
    """Two rows of one model, one reranking the top 100 interpolated 0.2, read the same under "rerank top-10"."""
    ce = {"retriever": "bm25", "reranker": "cross-encoder", "model": "m"}
    report = _report(
        [{"name": "BM25", "retriever": "bm25"}, {"name": "CE", **ce}, {"name": "CE'", **ce, "top_k": 100,
                                                                         "interpolate": 0.2},
         {"name": "CE100", **ce, "top_k": 100, "columns": ["b"]}],
        {"BM25": {"a": _cell(0.5), "b": _cell(0.5)}, "CE": {"a": _cell(0.4), "b": _cell(0.4)},
         "CE'": {"a": _cell(0.8), "b": _cell(0.8)}, "CE100": {"b": _cell(0.6)}})
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["CE'"]["top_k"] == 100 and rows["CE'"]["interpolate"] == 0.2
    assert rows["CE"]["top_k"] is None and rows["CE"]["interpolate"] is None
    assert rows["CE"]["columns"]["a"]["top_k"] == 10 and rows["CE'"]["columns"]["a"]["top_k"] == 100
    assert rows["BM25"]["columns"]["a"]["top_k"] is None
    json.dumps(report)  # as leaderboard.json is written
    md = render_markdown(report, "lb.yaml", None)
    assert "| 2 | CE | bm25 | cross-encoder | transformers |" in md
    assert "| 3 | CE' | bm25 | cross-encoder (top-100, α=0.2) | transformers |" in md
    assert "| 4 | CE100 | bm25 | cross-encoder | transformers |" in md  # its top_k is its only column's
    assert "rerank top-10 (rows marked top-N: their N)" in md and "rerank top-100\n" in md + "\n"
    assert "reranker (top-N): it reranks the first stage's top N" in md and "α=A: the reranked top-k" in md


def test_eval_report_names_top_k_and_interpolation() -> None:
    from rerank.eval.report import render_report

    metrics = {"dataset": "d", "split": "test", "first_stage": {"name": "bm25"}, "num_queries": 2,
               "missing_queries": [], "rel_level": 1, "metrics": {"nDCG@10": 0.5}, "timing_s": {"total_s": 1.0},
               "reranker": {"method": "cross-encoder", "model": "m", "backend_name": "transformers"},
               "config": {"top_k": 20, "interpolate": 0.5}}
    text = render_report(metrics)
    assert "first-stage top 20 (`--top-k`)" in text
    assert "0.5 × the reranker's scores + 0.5 × the first stage's" in text and "`--interpolate 0.5`" in text
    metrics["config"]["interpolate"] = None
    assert "- order: the reranker's scores alone" in render_report(metrics)
    metrics["reranker"] = None
    assert "top 20" not in render_report(metrics)


def test_docs_say_what_keeps_a_cached_cell(tmp_path: Path, tiny_beir_dir: Path) -> None:
    """The docs said "a dataset copied again keeps its cells" and ``_stamp`` "a model moved keeps its cells": the
    paths are in the key, so both rerun; any file of the dataset folder reruns it. Docs and code now say so."""
    from rerank.eval.leaderboard import _cell_hash, _stamp
    from rerank.eval.pipeline import EvalConfig

    data, copy = tmp_path / "tiny", tmp_path / "copy"
    shutil.copytree(tiny_beir_dir, data)
    shutil.copytree(tiny_beir_dir, copy)
    before = _cell_hash(EvalConfig(dataset=str(data), retriever="bm25"), data)
    assert _cell_hash(EvalConfig(dataset=str(copy), retriever="bm25"), copy) != before
    (data / "notes.txt").write_text("unread by the cell")
    assert _cell_hash(EvalConfig(dataset=str(data), retriever="bm25"), data) != before
    doc = " ".join((REPO / "docs" / "suites-leaderboard-recipes.md").read_text(encoding="utf-8").split())
    assert "a dataset copied again keeps its cells" not in doc
    assert "The same files at another path (a dataset copied elsewhere, a model folder moved or renamed) rerun" in doc
    assert "whether the cell reads it or not" in doc
    assert "a model moved" not in (_stamp.__doc__ or "") and "moved model reruns" in " ".join(_stamp.__doc__.split())


def _suite(run_cli, data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli("eval", "--suite", "dl", "--data-root", data, "--output", out, *extra)


def test_a_suite_rerun_over_fewer_members_removes_the_others_results(tmp_path: Path, run_cli,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A rerun with fewer --datasets left the old member's complete-looking metrics.json (another first stage)."""
    data, out = tmp_path / "data", tmp_path / "o"
    _dl_folder(data, "dl19-bm25-top100")
    _dl_folder(data, "dl20-bm25-top100")
    rc, _, err = _suite(run_cli, data, out)
    assert rc == 0, err
    (out / "dl20-bm25-top100" / "mine.txt").write_text("a user's file")
    (out / "notes.txt").write_text("kept")
    rc, _, err = _suite(run_cli, data, out, "--datasets", "dl19-bm25-top100", "--retriever", "test-overlap")
    assert rc == 0, err
    assert "removed the results of dl20-bm25-top100" in caplog.text
    assert sorted(p.name for p in (out / "dl20-bm25-top100").iterdir()) == ["mine.txt"]
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/metrics.json")) == [
        "dl19-bm25-top100/metrics.json"]
    assert list(json.loads((out / "summary.json").read_text())["datasets"]) == ["dl19-bm25-top100"]
    assert (out / "notes.txt").read_text() == "kept"
    (out / "dl20-bm25-top100" / "mine.txt").unlink()
    rc, _, err = _suite(run_cli, data, out, "--datasets", "dl20-bm25-top100")
    assert rc == 0, err  # an empty member folder is gone, the other member's results too
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["dl20-bm25-top100"]


def test_member_results_without_a_suite_summary_are_refused(tmp_path: Path, run_cli) -> None:
    """Results of a member this run leaves out, in a folder that is no earlier suite run's, are not removed: a one-line
    error before any work."""
    data, out = tmp_path / "data", tmp_path / "o"
    _dl_folder(data, "dl19-bm25-top100")
    dl20 = _dl_folder(data, "dl20-bm25-top100")
    rc, _, err = run_cli("eval", "--dataset", dl20, "--output", out / "dl20-bm25-top100")
    assert rc == 0, err
    rc, _, err = _suite(run_cli, data, out, "--datasets", "dl19-bm25-top100")
    assert rc == 2 and "holds results of dl20-bm25-top100" in err and len(err.strip().splitlines()) == 1
    assert (out / "dl20-bm25-top100" / "metrics.json").is_file() and not (out / "dl19-bm25-top100").exists()
    rc, _, err = _suite(run_cli, data, out)  # a run that includes the member writes over it, as rerank eval does
    assert rc == 0, err
