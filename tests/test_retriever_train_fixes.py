"""Retriever-training fixes: ADORE refuses an index built with other document-encoder settings, dev selection says
when no checkpoint beats the starting model (and a resume does not evaluate its step twice), ``--set`` errors name
the override, and contrastive distillation options are checked before any data work."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank.config import apply_overrides, from_dict
from rerank.errors import ConfigError, RerankError
from rerank.retrieval.dense import BiEncoder
from rerank.trainers.api import run_trainer
from rerank.trainers.base import get_trainer, load_train_config


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 train + 20 test queries over 200 documents (grades 0-2)."""
    from rerank.testing import make_tiny_beir

    return make_tiny_beir(tmp_path_factory.mktemp("rtf-beir") / "beir", num_queries=40, splits=("train", "test"))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path_factory.getbasetemp() / "rtf-cache"))


def train(name: str, model: Path, data: Path, out: Path, resume: bool = False, **opts: Any) -> dict[str, Any]:
    """``run_trainer`` (the path of ``rerank train``) with tiny-run defaults."""
    base = {"batch_size": 4, "max_steps": 4, "dev_fraction": 0.0, "progress": False, "disable_dropout": True,
            "logging_steps": 1, "model": str(model), "dataset": str(data)}
    base.update(opts)
    return run_trainer(name, base, out, resume=resume)


def query_weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in BiEncoder.load(path, device="cpu").query_model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- 1. ADORE's index
def test_adore_refuses_an_index_built_with_other_encoder_settings(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                                                   run_cli) -> None:
    idx = tmp_path / "idx-cls"
    rc, _, err = run_cli("index", "--model", tiny_st_dir, "--dataset", beir, "--output", idx, "--no-progress",
                         "--pooling", "cls", "--normalize")
    assert rc == 0, err
    with pytest.raises(RerankError) as e:
        train("adore", tiny_st_dir, beir, tmp_path / "a", max_steps=1, index=str(idx), top_k=20)
    msg = str(e.value)
    assert "\n" not in msg
    assert "pooling='cls' (the model: 'mean')" in msg and "normalize=True (the model: False)" in msg
    assert "rerank index --model" in msg and "--pooling mean --no-normalize" in msg
    assert not (tmp_path / "a" / "model").exists()


def test_dense_index_load_compares_encoder_settings(tiny_st_dir: Path, beir: Path, tmp_path: Path) -> None:
    from rerank.data.datasets import resolve_dataset
    from rerank.retrieval.index import DenseIndex, IndexConfig, doc_encoder_settings, encode_corpus_cached

    enc = BiEncoder.load(tiny_st_dir, device="cpu")
    emb = encode_corpus_cached(enc, resolve_dataset(str(beir)), progress=False)
    path = DenseIndex.build(emb, enc, IndexConfig("flat")).save(tmp_path / "idx", emb.path)
    settings = doc_encoder_settings(enc)
    assert DenseIndex.load(path, encoder=settings).manifest["encoder"]["pooling"] == settings["pooling"]
    enc.settings = dataclasses.replace(enc.settings, doc_max_length=17, doc_prefix="passage: ")
    with pytest.raises(RerankError, match=r"doc_prefix='' \(the model: 'passage: '\), doc_max_length=\d+ \(the model: "
                                          r"17\).*--doc-prefix 'passage: ' --doc-max-length 17`"):
        DenseIndex.load(path, encoder=doc_encoder_settings(enc))


# ---------------------------------------------------------------------------------------------- 2. dev selection
def _scripted_dev(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> list[int]:
    """Make dev evaluation return ``scores`` in call order (then the last one); returns the list of calls made."""
    from rerank.trainers.retriever import RetrieverTrainer

    calls: list[int] = []

    def dev_metrics(self: Any, enc: Any) -> dict[str, float]:
        calls.append(len(calls))
        return {"ndcg@10": scores[min(len(calls) - 1, len(scores) - 1)], "recall@100": 1.0}

    monkeypatch.setattr(RetrieverTrainer, "dev_metrics", dev_metrics)
    return calls


def test_no_checkpoint_beating_the_start_is_warned_and_recorded(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    _scripted_dev(monkeypatch, [0.7, 0.6, 0.5])  # step 0 (the starting model), 2, 4
    out = tmp_path / "w"
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.retriever"):
        res = train("contrastive", tiny_st_dir, beir, out, dev_fraction=0.2, eval_steps=2, save_steps=2,
                    train_doc_encoder=False, learning_rate=1e-3)
    assert "did not improve on the starting model" in caplog.text
    assert res["start"]["step"] == 0 and res["start"]["ndcg@10"] == 0.7
    assert res["best"]["step"] == 2 and res["improved_on_start"] is False
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["improved_on_start"] is False and summary["start"]["ndcg@10"] == 0.7
    # the documented rule: the best dev checkpoint is the model
    chosen = query_weights(out / "checkpoints" / "checkpoint-2")
    assert all(torch.equal(v, chosen[k]) for k, v in query_weights(out / "model").items())
    card = (out / "model" / "README.md").read_text()
    assert "starting model dev nDCG@10: 0.7000" in card


def test_improving_run_records_it(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _scripted_dev(monkeypatch, [0.5, 0.6, 0.55])
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.retriever"):
        res = train("contrastive", tiny_st_dir, beir, tmp_path / "i", dev_fraction=0.2, eval_steps=2, save_steps=2,
                    train_doc_encoder=False)
    assert res["improved_on_start"] is True and res["best"]["step"] == 2
    assert "did not improve" not in caplog.text


def test_resume_does_not_evaluate_its_step_twice(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.methods.contrastive.trainer import ContrastiveTrainer

    _scripted_dev(monkeypatch, [0.5, 0.6, 0.7])
    opts = {"dev_fraction": 0.2, "eval_steps": 2, "save_steps": 2, "train_doc_encoder": False}
    out = tmp_path / "r"
    original = ContrastiveTrainer.loss

    def dying(self: Any, model: Any, batch: Any) -> Any:
        if batch.step == 3:
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(ContrastiveTrainer, "loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train("contrastive", tiny_st_dir, beir, out, **opts)
    monkeypatch.setattr(ContrastiveTrainer, "loss", original)
    calls = _scripted_dev(monkeypatch, [0.8])
    res = train("contrastive", tiny_st_dir, beir, out, resume=True, **opts)
    summary = json.loads((out / "train_summary.json").read_text())
    assert [d["step"] for d in summary["dev_history"]] == [0, 2, 4]
    assert len(calls) == 1  # step 4 only: the resume step's score comes from the checkpoint
    assert res["start"]["ndcg@10"] == 0.5 and res["best"]["step"] == 4 and res["improved_on_start"] is True


def test_dev_history_keeps_one_evaluation_per_step() -> None:
    from rerank.trainers.retriever import _dev_history

    logs = [{"step": 0, "eval_ndcg@10": 0.5, "eval_recall@100": 1.0}, {"step": 2, "loss": 1.0},
            {"step": 2, "eval_ndcg@10": 0.6, "eval_recall@100": 1.0},
            {"step": 2, "eval_ndcg@10": 0.61, "eval_recall@100": 1.0}]
    assert [(d["step"], d["ndcg@10"]) for d in _dev_history(logs)] == [(0, 0.5), (2, 0.6)]


# ---------------------------------------------------------------------------------------------- 4. --set errors
def test_set_errors_name_the_override(tmp_path: Path) -> None:
    for name, key, value in [("pgrank", "temperature", "0"), ("pgrank", "ndcg_k", "0"),
                             ("adore", "train_doc_encoder", "true")]:
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text("model: m\ndataset: d\n")
        with pytest.raises(ConfigError, match=rf"^--set {key}={value}: {key} must be"):
            load_train_config(get_trainer(name).config_class, cfg, [f"{key}={value}"])
    cfg = tmp_path / "p2.yaml"
    cfg.write_text("model: m\ntemperature: 0\n")
    with pytest.raises(ConfigError, match=r"^.*p2\.yaml: temperature must be > 0"):
        load_train_config(get_trainer("pgrank").config_class, cfg, ["ndcg_k=3"])


@dataclasses.dataclass
class _Pair:
    low: int = 0
    high: int = 1

    def __post_init__(self) -> None:
        if self.low >= self.high:
            raise ValueError("the range needs low < high")


def test_from_dict_blames_an_override_named_inside_the_message() -> None:
    data = apply_overrides({"low": 0}, ["high=0"])
    with pytest.raises(ConfigError, match=r"^--set high=0: the range needs"):
        from_dict(_Pair, data, "file.yaml")
    with pytest.raises(ConfigError, match=r"^file\.yaml: the range needs"):
        from_dict(_Pair, apply_overrides({"low": 5, "high": 1}, []), "file.yaml")


# ---------------------------------------------------------------------------------------------- 5. distillation
def test_distill_options_without_a_teacher_are_refused(tiny_st_dir: Path, beir: Path) -> None:
    cls = get_trainer("contrastive").config_class
    base = [f"model={tiny_st_dir}", f"dataset={beir}"]
    for opt in ("distill_weight=2.0", "distill_batch_size=8"):
        with pytest.raises(ConfigError, match=rf"^--set {opt}: {opt.split('=')[0]} is set but distill_model is not"):
            load_train_config(cls, None, [*base, opt])
    cfg = load_train_config(cls, None, base)
    assert cfg.distill_weight is None and cfg.distill_batch_size is None
    cfg = load_train_config(cls, None, [*base, "distill_model=x"])
    assert cfg.distill_weight == 1.0 and cfg.distill_batch_size == 32


def test_bad_distill_model_fails_before_data_work(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.testing import tiny_bert
    from rerank.trainers import retriever

    def no_data(*a: Any, **k: Any) -> Any:
        raise AssertionError("the data was read before distill_model was checked")

    monkeypatch.setattr(retriever, "load_train_data", no_data)
    headless = tiny_bert(tmp_path / "headless")
    conf = json.loads((headless / "config.json").read_text())
    (headless / "config.json").write_text(json.dumps({**conf, "architectures": ["BertForSequenceClassification"]}))
    cases = [(tmp_path / "missing", r"^distill_model .*missing does not exist"),
             (tiny_st_dir, r"^distill_model .* is not a cross-encoder"),
             (headless, r"^distill_model: .*would start random")]
    for i, (model, pattern) in enumerate(cases):
        out = tmp_path / f"o{i}"
        with pytest.raises(ConfigError, match=pattern) as e:
            train("contrastive", tiny_st_dir, beir, out, max_steps=1, distill_model=str(model))
        assert "allow-new-head" not in str(e.value) and "allow_new_head" not in str(e.value)
        assert not (out / "queries.json").exists()
