"""Retriever trainers (contrastive, STAR, ADORE, PG-Rank) on a tiny model and a synthetic BEIR folder: they learn,
select on dev, resume exactly, run on two processes as on one, and write OUTPUT/model, a sentence-transformers
folder."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

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
    assert rec["doc_max_length"] == BiEncoder.load(tiny_st_dir).settings.doc_max_length
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
    from rerank.methods.contrastive.trainer import ContrastiveTrainer

    opts = {"max_steps": 7, "save_steps": 2, "learning_rate": 1e-3, "disable_dropout": False}
    full = tmp_path / "full"
    train("contrastive", tiny_st_dir, beir, full, **opts)

    killed = tmp_path / "killed"
    original = ContrastiveTrainer.loss

    def dying(self: Any, model: Any, batch: Any) -> Any:
        if batch.step == 5:
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(ContrastiveTrainer, "loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train("contrastive", tiny_st_dir, beir, killed, **opts)
    monkeypatch.setattr(ContrastiveTrainer, "loss", original)
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
            "--set", "progress=false", "--set", "learning_rate=0.001", "--set", "negatives_depth=20"]
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
    assert cfg.eval_steps == cfg.save_steps == 11 and cfg.warmup_ratio == 0.1 and cfg.learning_rate == 2e-5
