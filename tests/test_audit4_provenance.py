"""``rerank eval`` records when, where and with what a result was computed, and the retriever's depth and k1/b."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.eval.report import render_report


def test_metrics_and_report_state_provenance_depth_and_bm25_options(tiny_beir_dir: Path, tiny_llm_dir: Path,
                                                                     tmp_path: Path) -> None:
    import torch
    import transformers

    from rerank import __version__

    out = tmp_path / "out"
    run_eval(EvalConfig(dataset=str(tiny_beir_dir), retriever="bm25", retriever_options={"k1": 1.2, "b": 0.6},
                        reranker="yes-no", model=str(tiny_llm_dir), top_k=3, depth=2, rel_level=1,
                        output=str(out)), progress=False)
    m = json.loads((out / "metrics.json").read_text())
    p = m["provenance"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["date"])
    assert "CPU(s)" in p["machine"] and p["python"].count(".") == 2
    assert (p["rerank"], p["torch"], p["transformers"]) == (__version__, torch.__version__, transformers.__version__)
    assert p["resolved_dtype"] == "torch.float32" and m["config"]["reranker_options"] == {}  # the dtype asked: auto
    assert m["first_stage"]["retrieval_depth"] == 3  # --depth 2 under --top-k 3 retrieves 3
    assert m["first_stage"]["config"]["k1"] == 1.2 and m["config"]["depth"] == 2  # existing keys unchanged
    report = (out / "report.md").read_text()
    assert "- first stage: `bm25` (top 3 per query; k1 1.2, b 0.6)" in report
    assert f"- computed: {p['date']} on {p['machine']}; Python {p['python']}, rerank {__version__}, " in report
    assert "; dtype torch.float32" in report


def test_retriever_without_reranker_has_depth_but_no_dtype(tiny_beir_dir: Path, tmp_path: Path) -> None:
    m = run_eval(EvalConfig(dataset=str(tiny_beir_dir), retriever="bm25", depth=7, rel_level=1), progress=False)
    assert m["first_stage"]["retrieval_depth"] == 7 and "resolved_dtype" not in m["provenance"]
    assert "(top 7 per query; k1 0.9, b 0.4)" in render_report(m)


def test_report_without_provenance_renders_as_before() -> None:
    metrics = {"dataset": "d", "split": "test", "first_stage": {"name": "run", "path": "r.trec"}, "reranker": None,
               "metrics": {"nDCG@10": 0.5}, "num_queries": 1, "missing_queries": [], "rel_level": 1,
               "timing_s": {"total_s": 1.0}, "config": {}}
    text = render_report(metrics)
    assert "- first stage: `run` (r.trec)\n" in text and "computed:" not in text
