"""Fixes from the second round of user-journey audits that touch ``rerank eval``'s own pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DOCS = [f"d{i}" for i in range(6)]


def _dataset(root: Path) -> Path:
    """A 6-document BEIR folder with two queries, each judging one document."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": f"text {d}"}) + "\n" for d in DOCS))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{q}", "text": f"query {q}"}) + "\n"
                                                for q in range(2)))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\n")
    return root


@pytest.mark.parametrize("name", ["run.trec", "first_stage.trec"])
def test_eval_refuses_an_output_folder_holding_its_first_stage_run(tmp_path: Path, run_cli, name: str) -> None:
    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "out"
    out.mkdir()
    run = out / name
    text = "".join(f"q{q} Q0 {d} {r} {10 - r} bm25\n" for q in range(2) for r, d in enumerate(DOCS, 1))
    run.write_text(text)
    rc, _, err = run_cli("eval", "--dataset", ds, "--first-stage", run, "--output", out)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "would replace the --first-stage run" in lines[0], err
    assert run.read_text() == text and not (out / "metrics.json").exists()
    rc, _, err = run_cli("eval", "--dataset", ds, "--first-stage", run, "--output", tmp_path / "elsewhere")
    assert rc == 0 and run.read_text() == text, err


def test_a_damaged_config_json_is_one_line_naming_the_file(tmp_path: Path, tiny_bert_dir: Path, run_cli) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    (model / "config.json").write_text('{"architectures": ["BertForSequenceClassification"],\n  "hidden_size": }\n')
    ds = _dataset(tmp_path / "ds")
    rc, _, err = run_cli("eval", "--dataset", ds, "--retriever", "bm25", "--reranker", "cross-encoder", "--model",
                         model, "--top-k", "3", "--output", tmp_path / "out")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "config.json: not valid JSON" in lines[0] and "line 2" in lines[0], err
    assert "Traceback" not in err


def test_metrics_record_the_dataset_folder_read(tmp_path: Path, run_cli) -> None:
    ds = _dataset(tmp_path / "ds")
    rc, _, err = run_cli("eval", "--dataset", ds, "--retriever", "bm25", "--output", tmp_path / "out")
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["dataset_root"] == str(ds.resolve())


def test_passages_cut_without_a_fitted_prompt_are_still_reported() -> None:
    from rerank.cli.rank_cmd import _stats_note
    from rerank.eval.report import render_report
    from rerank.heads.base import RerankStats

    stats = RerankStats(shortened_passages=3)
    assert "3 passages shortened" in _stats_note(stats)
    metrics = {"dataset": "d", "split": "test", "first_stage": {"name": "bm25"}, "reranker": {"method": "yes-no"},
               "metrics": {"nDCG@10": 0.5}, "num_queries": 1, "missing_queries": [], "rel_level": 1,
               "timing_s": {"total_s": 1.0}, "config": {}, "parse": stats.as_dict()}
    assert "3 passages cut" in render_report(metrics)
