"""Audit fixes made by the lead: a reranker that ranks nothing is reported, and a mistyped --model folder is named."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.heads.base import Reranker
from rerank.types import Candidate, Query


class _Constant(Reranker):
    """Scores every candidate 0, or (``spread``) reverses the first stage's order with distinct scores."""

    method = "constant"

    def __init__(self, spread: bool = False) -> None:
        super().__init__()
        self.spread = spread

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [float(i) if self.spread else 0.0 for i in range(len(candidates))]


def test_a_reranker_scoring_every_candidate_the_same_is_warned_and_reported(
        tiny_beir_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = EvalConfig(dataset=str(tiny_beir_dir), retriever="bm25", top_k=5, output=str(tmp_path / "flat"))
    with caplog.at_level(logging.WARNING, logger="rerank"):
        metrics = run_eval(cfg, reranker=_Constant())
    tied = metrics["unranked_queries"]
    assert tied["count"] == tied["of"] == metrics["num_queries"] > 0
    assert "scored every candidate the same in" in caplog.text
    report = (tmp_path / "flat" / "report.md").read_text()
    assert f"scored every candidate the same in {tied['count']} of {tied['of']} queries" in report
    assert json.loads((tmp_path / "flat" / "metrics.json").read_text())["unranked_queries"]["count"] == tied["count"]


def test_a_reranker_that_separates_candidates_is_not_warned(
        tiny_beir_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = EvalConfig(dataset=str(tiny_beir_dir), retriever="bm25", top_k=50, output=str(tmp_path / "lead"))
    with caplog.at_level(logging.WARNING, logger="rerank"):
        metrics = run_eval(cfg, reranker=_Constant(spread=True))
    assert metrics["unranked_queries"]["count"] == 0
    assert "scored every candidate the same" not in caplog.text
    assert "scored every candidate the same" not in (tmp_path / "lead" / "report.md").read_text()


@pytest.mark.parametrize("command", [
    ("rank", "--input", "IN", "--output", "OUT.jsonl"),
    ("eval", "--dataset", "DATA", "--retriever", "bm25", "--output", "OUT"),
    ("serve",),
])
def test_a_missing_model_folder_is_named(command: tuple[str, ...], tiny_beir_dir: Path, tmp_path: Path,
                                         run_cli: Any) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"query": "q", "docs": ["a", "b"]}) + "\n")
    subst = {"IN": str(src), "DATA": str(tiny_beir_dir), "OUT.jsonl": str(tmp_path / "o.jsonl"),
             "OUT": str(tmp_path / "o")}
    missing = tmp_path / "runs" / "ce-typo" / "model"
    rc, _, err = run_cli(*[subst.get(a, a) for a in command], "--model", str(missing))
    assert rc == 2
    assert f"--model {missing} does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_a_backend_option_given_as_a_head_option_names_its_command_line_route(tmp_path: Path, run_cli: Any,
                                                                               tiny_llm_dir: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"query": "q", "docs": ["a", "b"]}) + "\n")
    args = ("rank", "--reranker", "yes-no", "--model", str(tiny_llm_dir), "--input", str(src), "--output",
            str(tmp_path / "o.jsonl"))
    rc, _, err = run_cli(*args, "--reranker-set", "trust_remote_code=false")
    assert rc == 2
    assert "trust_remote_code is an option of the transformers backend" in err
    assert "--reranker-set backend_options.KEY=VALUE" in err
    rc, _, err = run_cli(*args, "--reranker-set", "backend_options.trust_remote_code=false")
    assert rc == 0, err


def test_a_built_file_with_integer_qids_labels_as_source_queries(tmp_path: Path) -> None:
    from rerank.data_recipes.mining import _rows_queries

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"qid": 7, "query": "rain", "candidates": [{"id": 1, "text": "a"}, {"id": "b", "text": "c"}],
                                "labels": [1, 0]}) + "\n")
    queries, qrels = _rows_queries(str(path), None)
    assert list(queries) == ["7"] and queries["7"].id == "7" and queries["7"].text == "rain"
    assert qrels == {"7": {"1": 1}}


@pytest.mark.parametrize(("raw", "value"), [
    ("query: ", "query: "), ("passage: x", "passage: x"), ("{beir: d}", {"beir": "d"}), ("[1, 2]", [1, 2]), ("3", 3)])
def test_an_override_value_with_a_colon_is_text_unless_written_as_a_flow_mapping(raw: str, value: Any) -> None:
    from rerank.config import apply_overrides

    assert apply_overrides({}, [f"retriever_options.query_prefix={raw}"])["retriever_options"]["query_prefix"] == value


@pytest.mark.parametrize("level", [0, -1, True, 1.5, "2"])
def test_evaluate_run_refuses_a_relevance_level_below_1_in_one_line(level: Any) -> None:
    from rerank.errors import ConfigError
    from rerank.eval.metrics import evaluate_run

    with pytest.raises(ConfigError, match="rel_level must be an integer >= 1"):
        evaluate_run({"q": [("d", 1.0)]}, {"q": {"d": 1}}, ["AP"], rel_level=level)


def test_the_remote_reranker_nan_hint_points_at_the_server() -> None:
    from rerank.client import RemoteReranker, RemoteRerankerConfig

    hint = RemoteReranker(RemoteRerankerConfig(base_url="http://127.0.0.1:9")).nan_hint()
    assert "server" in hint and "try dtype=float32 (--reranker-set dtype=float32)" not in hint
