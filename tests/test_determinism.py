"""The same run twice on one machine gives the same result: trainers, a data recipe and an evaluation, with the seed
threaded through each (and a different seed giving a different model, so the seed is really used). The tests run
under ``torch.use_deterministic_algorithms(True)`` (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from train_support import erank_workdir

from rerank.data.io import write_jsonl
from rerank.testing import synthetic_ranking_examples
from rerank.trainers import grpo, sft



def test_deterministic_algorithms_are_on() -> None:
    import torch

    assert torch.are_deterministic_algorithms_enabled()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return erank_workdir(tmp_path_factory.mktemp("det"), data_seed=5)


def _weights(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = [p for p in out.rglob("model.safetensors") if "checkpoints" not in p.relative_to(out).parts]
    assert len(files) == 1, f"one final model expected under {out}, found {files}"
    return load_file(str(files[0]))


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def _erank(work: Path, seed: int, **over: Any) -> dict[str, Any]:
    cfg = {"model": str(work / "llm"), "head": "erank", "template": str(work / "erank.yaml"), "max_doc_tokens": 24,
           "data": {"path": str(work / "train.jsonl"), "dev_fraction": 0.0}, "batch_size": 4, "max_steps": 4,
           "save_steps": 100, "logging_steps": 1, "learning_rate": 1e-3, "seed": seed}
    cfg.update(over)
    return cfg


def test_sft_twice_is_identical_and_the_seed_matters(work: Path) -> None:
    runs = {name: sft(_erank(work, seed), work / f"sft-{name}") for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    assert runs["a"]["logged_losses"] == runs["b"]["logged_losses"]
    assert _same(_weights(work / "sft-a"), _weights(work / "sft-b"))
    assert not _same(_weights(work / "sft-a"), _weights(work / "sft-c"))


def test_grpo_twice_is_identical(work: Path) -> None:
    over = {"batch_size": 20, "num_generations": 5, "max_steps": 2, "learning_rate": 1e-3, "temperature": 1.0}
    a = grpo(_erank(work, 0, **over), work / "grpo-a")
    b = grpo(_erank(work, 0, **over), work / "grpo-b")
    assert a["logged_rewards"] == b["logged_rewards"]
    assert _same(_weights(work / "grpo-a"), _weights(work / "grpo-b"))


def test_cross_encoder_sft_twice_is_identical(tmp_path: Path) -> None:
    from rerank.testing import tiny_bert

    model = tiny_bert(tmp_path / "bert", num_labels=1, seed=0)
    write_jsonl(synthetic_ranking_examples(10, num_candidates=4, seed=4), tmp_path / "t.jsonl")
    for name in ("a", "b"):
        sft({"model": str(model), "head": "cross-encoder", "loss": "listnet", "max_length": 64, "batch_size": 4,
             "max_steps": 3, "save_steps": 100, "learning_rate": 1e-4,
             "data": {"path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.0}}, tmp_path / f"ce-{name}")
    assert _same(_weights(tmp_path / "ce-a"), _weights(tmp_path / "ce-b"))


def test_data_recipe_and_eval_twice_are_identical(tiny_beir_dir: Path, tiny_bert_dir: Path, tmp_path: Path,
                                                  run_cli) -> None:
    from rerank.data_recipes.base import build

    recipe = {"recipe": "hard_negatives", "source": {"dataset": str(tiny_beir_dir), "split": "train"},
              "first_stage": {"retriever": "bm25", "depth": 20}, "window": [1, 20], "num_negatives": 3,
              "sampling": "random"}
    for name in ("a", "b"):
        build(recipe, tmp_path / f"data-{name}", progress=False)
        rc, _, err = run_cli("eval", "--dataset", str(tiny_beir_dir), "--retriever", "bm25", "--reranker",
                              "cross-encoder", "--model", str(tiny_bert_dir), "--top-k", "5",
                              "--output", str(tmp_path / f"eval-{name}"))
        assert rc == 0, err
    assert (tmp_path / "data-a" / "data.jsonl").read_bytes() == (tmp_path / "data-b" / "data.jsonl").read_bytes()
    for f in ("run.trec", "scores.jsonl"):
        assert (tmp_path / "eval-a" / f).read_bytes() == (tmp_path / "eval-b" / f).read_bytes()
    ma, mb = (json.loads((tmp_path / f"eval-{n}" / "metrics.json").read_text())["metrics"] for n in ("a", "b"))
    assert ma == mb
