"""Retriever trainers (contrastive, STAR, ADORE, PG-Rank) on a tiny model and a synthetic BEIR folder: they learn,
select on dev (and say when nothing beat the starting model), resume exactly, run on two processes as on one, and
write OUTPUT/model, a sentence-transformers folder; ADORE refuses an index built with other document-encoder settings,
``--set`` errors name the override, and distillation options are checked before any data work."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
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

    return make_tiny_beir(tmp_path_factory.mktemp("rt-beir") / "beir", num_queries=40, splits=("train", "test"))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path_factory.getbasetemp() / "rt-cache"
    monkeypatch.setenv("RERANK_CACHE", str(root))


def train(name: str, model: Path, data: Path, out: Path, resume: bool = False, **opts: Any) -> dict[str, Any]:
    """``rerank.trainers`` ``run_trainer`` (the path of ``rerank train``) with tiny-run defaults, logging every step."""
    base = {"batch_size": 4, "max_steps": 4, "dev_fraction": 0.0, "progress": False, "disable_dropout": True,
            "logging_steps": 1, "model": str(model), "dataset": str(data)}
    base.update(opts)
    return run_trainer(name, base, out, resume=resume)


def log_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def weights(path: Path, side: str = "query") -> dict[str, torch.Tensor]:
    enc = BiEncoder.load(path, device="cpu")
    model = enc.query_model if side == "query" else enc.doc_model
    return {k: v.clone() for k, v in model.state_dict().items()}


def train_until_killed(step: int, monkeypatch: pytest.MonkeyPatch, *args: Any, **opts: Any) -> None:
    """:func:`train` interrupted as by Ctrl-C when the contrastive loss reaches ``step`` (the checkpoints before it
    stay)."""
    from rerank.methods.contrastive.trainer import ContrastiveTrainer

    original = ContrastiveTrainer.loss

    def dying(self: Any, model: Any, batch: Any) -> Any:
        if batch.step == step:
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(ContrastiveTrainer, "loss", dying)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(*args, **opts)
    finally:
        monkeypatch.setattr(ContrastiveTrainer, "loss", original)


def first_last(values: list[float], n: int = 4) -> tuple[float, float]:
    return float(np.mean(values[:n])), float(np.mean(values[-n:]))


def test_contrastive_learns_selects_on_dev_and_evaluates(tiny_st_dir: Path, beir: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "c"
    res = train("contrastive", tiny_st_dir, beir, out, max_steps=16, learning_rate=5e-4, dev_fraction=0.2,
                eval_steps=8, save_steps=8, hard_negatives=2, scale=1.0)
    losses = [h["loss"] for h in log_of(out)]
    assert [h["step"] for h in log_of(out)] == list(range(1, 17))
    first, last = first_last(losses)
    assert last < first, losses
    summary = json.loads((out / "train_summary.json").read_text())
    assert [d["step"] for d in summary["dev_history"]] == [0, 8, 16]  # the start, then every eval_steps
    best = max((d for d in summary["dev_history"] if d["step"] > 0), key=lambda d: d["ndcg@10"])
    assert res["best"]["ndcg@10"] == best["ndcg@10"] and res["selected_by"] == "dev nDCG@10"
    # OUTPUT/model is the best dev checkpoint, keeps the start model's settings and is evaluable
    chosen = weights(out / "checkpoints" / f"checkpoint-{best['step']}")
    assert all(torch.equal(v, chosen[k]) for k, v in weights(out / "model").items())
    rec = json.loads((out / "model" / "rerank_biencoder.json").read_text())
    assert rec["max_doc_tokens"] == BiEncoder.load(tiny_st_dir).settings.max_doc_tokens
    rc, _, err = run_cli("eval", "--dataset", beir, "--retriever", "dense", "--model", out / "model",
                         "--output", tmp_path / "ev", "--retriever-set", "progress=false")
    assert rc == 0, err
    assert "nDCG@10" in json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]


def test_contrastive_marginmse_and_frozen_docs(tiny_st_dir: Path, tiny_bert_dir: Path, beir: Path, tmp_path: Path) -> None:
    """The asymmetric model (the scifact-contrastive example's default) is one folder that SentenceTransformer loads,
    a Router whose query and document sides give our embeddings."""
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "d"
    train("contrastive", tiny_st_dir, beir, out, max_steps=2, distill_model=str(tiny_bert_dir),
          train_doc_encoder=False)
    log = log_of(out)
    assert all(np.isfinite(h["margin_mse"]) and h["margin_mse"] > 0 for h in log)
    assert all(abs(h["loss"] - h["infonce"] - h["margin_mse"]) < 1e-4 for h in log)
    start = weights(tiny_st_dir)
    trained_q, trained_d = weights(out / "model", "query"), weights(out / "model", "doc")
    assert set(json.loads((out / "model" / "router_config.json").read_text())["structure"]) == {"query", "document"}
    assert all(torch.equal(start[k], trained_d[k]) for k in start)
    assert any(not torch.equal(start[k], trained_q[k]) for k in start)
    ours = BiEncoder.load(out / "model", device="cpu")
    st = SentenceTransformer(str(out / "model"), device="cpu")
    texts = ["a query about proteins", "cancer risk of a drug dose in a long sentence " * 6]
    np.testing.assert_allclose(st.encode_query(texts), ours.encode_queries(texts), atol=1e-5)
    np.testing.assert_allclose(st.encode_document(texts), ours.encode_docs(texts), atol=1e-5)
    assert not np.allclose(st.encode_query(texts), st.encode_document(texts), atol=1e-3)


def test_star_mines_once_reuses_file_and_checks_corpus(tiny_st_dir: Path, beir: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    train("star", tiny_st_dir, beir, out, max_steps=12, learning_rate=5e-4, negatives_depth=20)
    neg = json.loads((out / "negatives.json").read_text())
    qrels = {}
    for line in (beir / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        qrels.setdefault(q, {})[d] = int(g)
    assert set(neg["negatives"]) == set(qrels)
    for q, docs in neg["negatives"].items():
        assert 0 < len(docs) <= 20 and not {d for d in docs if qrels[q].get(d, 0) >= 1}
    first, last = first_last([h["loss"] for h in log_of(out)])
    assert last < first
    record = json.loads((out / "rerank_train.json").read_text())
    assert record["trainer"] == "star" and "git_hash" in record and record["config"]["negatives_depth"] == 20
    # ADORE+STAR: ADORE starts from the STAR output
    train("adore", out / "model", beir, tmp_path / "adore-star", max_steps=1, top_k=20)
    assert not BiEncoder.load(tmp_path / "adore-star" / "model").tied
    # the negatives file is reusable; one mined for another corpus is refused
    out2 = tmp_path / "s2"
    train("star", tiny_st_dir, beir, out2, max_steps=1, negatives_file=str(out / "negatives.json"))
    assert not (out2 / "negatives.json").exists()
    bad = dict(neg, corpus_sha256="0" * 64)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(RerankError, match="mined for a corpus"):
        train("star", tiny_st_dir, beir, tmp_path / "s3", max_steps=1, negatives_file=str(tmp_path / "bad.json"))


def _sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_adore_fixed_index_retrieves_every_step(tiny_st_dir: Path, beir: Path, tmp_path: Path, run_cli) -> None:
    idx = tmp_path / "idx"
    rc, _, err = run_cli("index", "--model", tiny_st_dir, "--dataset", beir, "--output", idx, "--no-progress")
    assert rc == 0, err
    before = _sha(idx)
    out = tmp_path / "a"
    train("adore", tiny_st_dir, beir, out, max_steps=12, learning_rate=2e-3, index=str(idx), top_k=50, metric_cut=50)
    assert _sha(idx) == before
    log = log_of(out)
    assert [h["retrieved_queries"] for h in log] == [4.0] * 12  # every step retrieves its batch from the index
    first, last = first_last([h["mrr@10"] for h in log])  # MRR@10 of the batch's own retrieval
    assert last > first, [h["mrr@10"] for h in log]
    start = weights(tiny_st_dir)
    assert all(torch.equal(start[k], v) for k, v in weights(out / "model", "doc").items())
    assert not BiEncoder.load(out / "model").tied


def test_adore_index_mismatch_errors(tiny_st_dir: Path, beir: Path, tmp_path: Path, run_cli) -> None:
    from rerank.testing import make_tiny_beir, tiny_sentence_transformer

    other_model = tiny_sentence_transformer(tmp_path / "m1", seed=1)
    idx = tmp_path / "idx-m1"
    assert run_cli("index", "--model", other_model, "--dataset", beir, "--output", idx, "--no-progress")[0] == 0
    with pytest.raises(RerankError, match="built with model"):
        train("adore", tiny_st_dir, beir, tmp_path / "a1", max_steps=1, index=str(idx))
    other_data = make_tiny_beir(tmp_path / "b1", seed=1)
    idx2 = tmp_path / "idx-b1"
    assert run_cli("index", "--model", tiny_st_dir, "--dataset", other_data, "--output", idx2, "--no-progress")[0] == 0
    with pytest.raises(RerankError, match="built for a corpus"):
        train("adore", tiny_st_dir, beir, tmp_path / "a2", max_steps=1, index=str(idx2))


def test_pgrank_trainer_raises_sampled_ndcg(tiny_st_dir: Path, beir: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    train("pgrank", tiny_st_dir, beir, out, max_steps=15, learning_rate=2e-3, num_candidates=16, num_samples=8,
          scale=20.0)
    util = [h["utility"] for h in log_of(out)]
    first, last = first_last(util, 4)
    assert last > first, util
    dense = tmp_path / "pd"
    train("pgrank", tiny_st_dir, beir, dense, max_steps=1, num_candidates=8, negatives_from="dense",
          train_doc_encoder=False)
    assert len(log_of(dense)) == 1 and 0.0 <= log_of(dense)[0]["utility"] <= 1.0


def test_resume_after_kill_matches_uninterrupted(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints at OUTPUT/checkpoints/checkpoint-N (transformers' Trainer); a run killed after step 5 and resumed
    from checkpoint-4 logs the same per-step losses and ends with the same weights as an uninterrupted one."""
    opts = {"max_steps": 7, "save_steps": 2, "learning_rate": 1e-3, "disable_dropout": False}
    full = tmp_path / "full"
    train("contrastive", tiny_st_dir, beir, full, **opts)

    killed = tmp_path / "killed"
    train_until_killed(5, monkeypatch, "contrastive", tiny_st_dir, beir, killed, **opts)
    with pytest.raises(ConfigError, match="pass --resume"):
        train("contrastive", tiny_st_dir, beir, killed, **opts)
    res = train("contrastive", tiny_st_dir, beir, killed, resume=True, **opts)
    assert res["global_step"] == 7 and res["steps_this_run"] == 3
    assert sorted(p.name for p in (killed / "checkpoints").glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-7"]
    a, b = log_of(full), log_of(killed)
    assert [h["step"] for h in a] == [h["step"] for h in b] == list(range(1, 8))
    np.testing.assert_allclose([h["loss"] for h in a], [h["loss"] for h in b], rtol=1e-5)
    wa, wb = weights(full / "model"), weights(killed / "model")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train("contrastive", tiny_st_dir, beir, tmp_path / "fresh", resume=True, **opts)


def test_old_schedule_keys_name_the_new_ones(tiny_st_dir: Path, beir: Path, tmp_path: Path) -> None:
    """One vocabulary: the retrievers' former keys are errors that name the key to use, in YAML/--set and in Python."""
    from rerank.trainers.common import RENAMED_KEYS

    cls = get_trainer("star").config_class
    for old, new in RENAMED_KEYS.items():
        with pytest.raises(ConfigError, match=f"key '{old}' is now '{new.split(' ')[0]}"):
            load_train_config(cls, None, [f"model={tiny_st_dir}", f"dataset={beir}", f"{old}=1"])
    with pytest.raises(ConfigError, match="key 'lr' is now 'learning_rate'"):
        train("contrastive", tiny_st_dir, beir, tmp_path / "o", lr=1e-3)
    assert not (tmp_path / "o").exists()


def test_queries_without_positive_are_reported_and_skipped(tiny_st_dir: Path, beir: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "beir"
    shutil.copytree(beir, data)
    lines = (data / "qrels" / "train.tsv").read_text().splitlines()
    victim = lines[1].split("\t")[0]
    lines = [lines[0]] + [ln if ln.split("\t")[0] != victim else "\t".join(ln.split("\t")[:2] + ["0"]) for ln in lines[1:]]
    (data / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    res = train("star", tiny_st_dir, data, out, max_steps=5)
    assert res["skipped_no_positive"] == 1
    queries = json.loads((out / "queries.json").read_text())
    assert queries["skipped_no_positive"] == [victim] and victim not in queries["train"] + queries["dev"]
    empty = tmp_path / "empty"
    shutil.copytree(data, empty)
    rows = (empty / "qrels" / "train.tsv").read_text().splitlines()
    (empty / "qrels" / "train.tsv").write_text(
        "\n".join([rows[0]] + ["\t".join(r.split("\t")[:2] + ["0"]) for r in rows[1:]]) + "\n")
    with pytest.raises(RerankError, match="no query has a positive"):
        train("contrastive", tiny_st_dir, empty, tmp_path / "o2", max_steps=1)


def test_star_two_processes_match_one(tiny_st_dir: Path, beir: Path, tmp_path: Path, repo_root: Path) -> None:
    """torchrun --nproc_per_node 2 (gloo), batch 2 a process: gathered in-batch negatives and transformers' DDP give
    the per-step losses and weights of one process with batch 4."""
    sets = ["--set", f"model={tiny_st_dir}", "--set", f"dataset={beir}", "--set", "batch_size=2", "--set", "max_steps=3",
            "--set", "dev_fraction=0.0", "--set", "disable_dropout=true", "--set", "logging_steps=1",
            "--set", "progress=false", "--set", "learning_rate=0.001"]  # negatives: the first run's file (depth 20)
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1", "RERANK_CACHE": str(tmp_path / "cache"),
           "CUDA_VISIBLE_DEVICES": ""}
    one = tmp_path / "one"
    train("star", tiny_st_dir, beir, one, max_steps=3, learning_rate=1e-3, negatives_depth=20)
    two = tmp_path / "two"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(port),
                        "-m", "rerank", "train", "star", "--output", str(two), *sets,
                        "--set", f"negatives_file={one / 'negatives.json'}"],
                       check=False, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = log_of(one), log_of(two)
    assert json.loads((two / "train_summary.json").read_text())["world_size"] == 2
    assert [h["step"] for h in a] == [h["step"] for h in b] == [1, 2, 3]
    np.testing.assert_allclose([h["loss"] for h in a], [h["loss"] for h in b], rtol=1e-4)
    wa, wb = weights(one / "model"), weights(two / "model")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


@pytest.mark.parametrize("name", ["contrastive", "star", "adore", "pgrank"])
def test_example_configs_use_the_one_vocabulary(repo_root: Path, name: str) -> None:
    cfg = load_train_config(get_trainer(name).config_class, repo_root / "configs" / "examples" / f"scifact-{name}.yaml")
    assert cfg.eval_steps == cfg.save_steps == 23 and cfg.epochs == 10 and cfg.warmup_ratio == 0.1
    assert cfg.learning_rate == 2e-5


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
    enc.settings = dataclasses.replace(enc.settings, max_doc_tokens=17, doc_prefix="passage: ")
    with pytest.raises(RerankError, match=r"doc_prefix='' \(the model: 'passage: '\), max_doc_tokens=\d+ \(the model: "
                                          r"17\).*`rerank index --model .* --dataset DATASET --output .*idx .*"
                                          r"--doc-prefix 'passage: ' --max-query-tokens \d+ --max-doc-tokens 17 "
                                          r"--dtype float32`"):
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
    chosen = weights(out / "checkpoints" / "checkpoint-2")
    assert all(torch.equal(v, chosen[k]) for k, v in weights(out / "model").items())
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
    _scripted_dev(monkeypatch, [0.5, 0.6, 0.7])
    opts = {"dev_fraction": 0.2, "eval_steps": 2, "save_steps": 2, "train_doc_encoder": False}
    out = tmp_path / "r"
    train_until_killed(3, monkeypatch, "contrastive", tiny_st_dir, beir, out, **opts)
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
