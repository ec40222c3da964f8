"""The Python API audit (pyapi, second round): run_eval with a loaded reranker, evaluate_run's inputs, the trainers'
config objects, build_retriever's dataset and the first stage's progress bars."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rerank.data.datasets import Dataset
from rerank.data.io import write_jsonl, write_qrels, write_run
from rerank.errors import ConfigError
from rerank.eval import pipeline
from rerank.eval.metrics import evaluate_run
from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.heads.base import Reranker, RerankerConfig
from rerank.retrieval.base import build_retriever
from rerank.types import Candidate, Query


@dataclasses.dataclass
class DescribedConfig(RerankerConfig):
    depth: int = 5


class DescribedReranker(Reranker):
    """Longest document first; describes itself with a model and a backend, as the LLM heads do."""

    method = "test-described"
    config_class = DescribedConfig

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [float(len(c.doc.text)) for c in candidates]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "backend": {"backend": "fake", "model": "own-model"}}


@pytest.fixture()
def mini(tmp_path: Path) -> Path:
    root = tmp_path / "mini"
    write_jsonl([{"_id": f"d{i}", "title": "", "text": "zebra " * (i + 1)} for i in range(6)], root / "corpus.jsonl")
    write_jsonl([{"_id": "q1", "text": "zebra"}, {"_id": "q2", "text": "zebra"}], root / "queries.jsonl")
    write_qrels({"q1": {"d5": 1}, "q2": {"d0": 1}}, root / "qrels" / "test.tsv", beir=True)
    write_run({q: [(f"d{i}", 10.0 - i) for i in range(6)] for q in ("q1", "q2")}, root / "run.trec")
    return root


def _cfg(mini: Path, **kw: Any) -> EvalConfig:
    return EvalConfig(dataset=str(mini), first_stage=str(mini / "run.trec"), top_k=4, **kw)


def test_a_given_reranker_is_recorded_by_its_own_model_and_backend(mini: Path, tmp_path: Path) -> None:
    metrics = run_eval(_cfg(mini, output=str(tmp_path / "out")), reranker=DescribedReranker(), progress=False)
    assert (metrics["reranker"]["model"], metrics["reranker"]["backend_name"]) == ("own-model", "fake")
    assert "- reranker: `test-described` model `own-model` backend `fake`" in (tmp_path / "out" / "report.md").read_text()
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["reranker"]["model"] == "own-model"


@pytest.mark.parametrize(("setting", "named"), [
    ({"reranker": "cross-encoder"}, "reranker 'cross-encoder'"),
    ({"model": "other-model"}, "model other-model"),
    ({"backend": "vllm"}, "backend 'vllm'"),
    ({"reranker_options": {"depth": 3}}, "reranker_options depth"),
    ({"reranker_options": {"nope": 1}}, "reranker_options nope"),
])
def test_settings_a_given_reranker_would_ignore_are_refused(mini: Path, setting: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=f"{named}.*recorded but unused"):
        run_eval(_cfg(mini, **setting), reranker=DescribedReranker(), progress=False)


def test_settings_that_agree_with_the_given_reranker_pass(mini: Path) -> None:
    """A suite or leaderboard passes the reranker it loaded from the config's own settings."""
    cfg = _cfg(mini, reranker="test-described", model="own-model", backend="fake", reranker_options={"depth": 5})
    metrics = run_eval(cfg, reranker=DescribedReranker(), progress=False)
    assert metrics["reranker"]["model"] == "own-model"


def test_interpolate_is_checked_where_the_reranker_is_known(mini: Path) -> None:
    cfg = _cfg(mini, interpolate=0.5)  # no reranker name: the loaded one comes with run_eval
    assert run_eval(cfg, reranker=DescribedReranker(), progress=False)["config"]["interpolate"] == 0.5
    with pytest.raises(ConfigError, match="interpolate weighs a reranker's scores"):
        run_eval(cfg, progress=False)


def test_a_reranker_name_in_place_of_a_reranker_is_a_type_error(mini: Path) -> None:
    with pytest.raises(TypeError, match="set cfg.reranker='test-described'"):
        run_eval(_cfg(mini), reranker="test-described", progress=False)  # type: ignore[arg-type]


def test_progress_false_silences_the_first_stage(mini: Path, capfd: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    capfd.readouterr()
    run_eval(EvalConfig(dataset=str(mini), retriever="bm25", depth=5), progress=False)
    assert "Split strings" not in capfd.readouterr().err
    from rerank.retrieval.base import progress_options

    assert progress_options("bm25", {"show_progress": True}, False) == {"show_progress": True}  # the user's stands
    assert progress_options("dense", {}, False) == {"progress": False}
    assert progress_options("dense", {}, True) == {}


def test_build_retriever_takes_a_dataset_folder(mini: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    run = build_retriever("bm25", str(mini), show_progress=False).retrieve({"q1": "zebra"}, 3)
    assert len(run["q1"]) == 3
    assert build_retriever("bm25", Dataset(mini), show_progress=False).retrieve({"q1": "zebra"}, 3) == run
    with pytest.raises(TypeError, match="dataset must be a Dataset"):
        build_retriever("bm25", 5)  # type: ignore[arg-type]


# ------------------------------------------------------------------ evaluate_run


@pytest.mark.skipif(shutil.which("perl") is None, reason="gdeval (ERR) needs perl")
def test_err_is_computed_for_string_query_ids() -> None:
    named = evaluate_run({"q1": [("d2", 2.0), ("d1", 1.0)], "q2": [("a", 1.0)]},
                         {"q1": {"d1": 1, "d2": 0}, "q2": {"a": 2}}, ["ERR@10"])
    numbered = evaluate_run({"1": [("d2", 2.0), ("d1", 1.0)], "2": [("a", 1.0)]},
                            {"1": {"d1": 1, "d2": 0}, "2": {"a": 2}}, ["ERR@10"])
    assert named.per_query == {"q1": numbered.per_query["1"], "q2": numbered.per_query["2"]}
    assert named.aggregate == numbered.aggregate and named.aggregate["ERR@10"] > 0


def test_a_failing_measure_provider_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> Any:
        raise subprocess.CalledProcessError(25, ["perl", "gdeval.pl"])

    monkeypatch.setattr("rerank.eval.metrics.ir_measures.iter_calc", fail)
    with pytest.raises(ConfigError, match=r"measure ERR@10: ir-measures could not compute it \(perl exited"):
        evaluate_run({"q1": [("d1", 1.0)]}, {"q1": {"d1": 1}}, ["ERR@10"])


@pytest.mark.parametrize(("run", "qrels", "error", "message"), [
    ([("q1", "d1", 1.0)], {"q1": {"d1": 1}}, TypeError, "run must be a mapping"),
    ({"q1": [("d1", 1.0)]}, [("q1", "d1", 1)], TypeError, "qrels must be a mapping"),
    ({"q1": [("d1", 1.0)]}, {"q1": ["d1"]}, TypeError, "expected a mapping {doc id: grade}"),
    ({"q1": ["d1", "d2"]}, {"q1": {"d1": 1}}, TypeError, "pairs, got the string 'd1'"),
    ({"q1": ["a1", "b2"]}, {"q1": {"a1": 1}}, TypeError, "pairs, got the string 'a1'"),
    ({"q1": ["abc"]}, {"q1": {"abc": 1}}, TypeError, "pairs, got the string 'abc'"),
    ({"q1": [("d1", 1.0)]}, {}, ValueError, "no judged queries"),
])
def test_evaluate_run_names_wrong_input(run: Any, qrels: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("{", r"\{").replace("}", r"\}")):
        evaluate_run(run, qrels, ["nDCG@10"])


# ------------------------------------------------------------------ trainer config objects


def _sft(**kw: Any) -> Any:
    from rerank.trainers.data import DataConfig
    from rerank.trainers.sft_trainer import SFTTrainConfig

    return SFTTrainConfig(**{"model": "m", "head": "erank", "data": DataConfig(path="x"), **kw})


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_steps", 2.5, "max_steps must be an integer, got 2.5"),
    ("max_steps", "4", "max_steps must be an integer, got '4'"),
    ("batch_size", True, "batch_size must be an integer, got True"),
    ("learning_rate", "3e-3", "learning_rate must be a number, got '3e-3'"),
])
def test_a_config_object_checks_its_field_types(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _sft(**{field: value})


def test_a_config_object_is_checked_as_a_dict_is_before_any_work(tmp_path: Path) -> None:
    from rerank.trainers.api import run_trainer

    out = tmp_path / "out"
    changed = _sft(max_steps=4)
    changed.max_steps = 2.5  # set after the checks of construction
    with pytest.raises(ConfigError, match="max_steps: expected an integer, got 2.5"):
        run_trainer("sft", changed, out)
    with pytest.raises(ConfigError, match="the starting model is required"):
        run_trainer("sft", _sft(model=""), out)
    for bad in (None, ["a"]):
        with pytest.raises(TypeError, match="config must be a SFTTrainConfig, a dict or a YAML path"):
            run_trainer("sft", bad, out)
    with pytest.raises(TypeError, match="trainer grpo takes a GRPOTrainConfig"):
        run_trainer("grpo", _sft(), out)
    assert not out.exists()


def test_a_data_block_given_as_a_mapping_is_read_as_one() -> None:
    from rerank.trainers.data import DataConfig

    assert _sft(data={"path": "x"}).data.path == "x"
    with pytest.raises(ConfigError, match="unknown"):
        _sft(data={"pth": "x"})
    with pytest.raises(TypeError, match="data must be a DataConfig or a mapping"):
        _sft(data=["x"])
    assert isinstance(_sft(data={"beir": "scifact"}).data, DataConfig)


def test_building_a_config_leaves_the_callers_data_config_alone() -> None:
    from rerank.trainers.data import DataConfig

    data = DataConfig(beir="scifact")
    first = _sft(data=data, max_steps=4, save_steps=2, eval_steps=2)
    assert data.dev_fraction is None and first.data.dev_fraction == 0.1
    assert _sft(data=data, max_steps=4).data.dev_fraction == 0.0  # the same DataConfig, reused
    assert dataclasses.replace(first, eval_steps=0).data.dev_fraction == 0.0
    with pytest.raises(ConfigError, match="data.dev_fraction 0.2 holds queries out"):
        _sft(data=DataConfig(beir="scifact", dev_fraction=0.2), max_steps=4)  # one the user set is still checked


def test_pipeline_module_exports_the_description_reader() -> None:
    assert pipeline.described_model({"method": "x", "model": "a"}) == ("a", None)
    assert pipeline.described_model({"backend": {"backend": "vllm", "model": "b"}}) == ("b", "vllm")
