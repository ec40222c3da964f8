"""Training restarts (issue 18): a run folder holding a run is continued, replaced or refused before anything is
written; ``--resume`` takes the newest complete checkpoint and skips a partial one with a warning; a run killed with
SIGKILL (inside a checkpoint save, halfway through writing the weights, inside a seeded step) and resumed ends with
the weights of an uninterrupted run, bit for bit, and reports the same ``train_loss`` over all steps."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from train_support import erank_workdir, make_checkpoint, stand_in_model

from rerank.data.io import write_jsonl
from rerank.errors import ConfigError
from rerank.testing import synthetic_ranking_examples
from rerank.trainers.api import run_trainer
from rerank.trainers.base import TrainContext, register_trainer
from rerank.trainers.resume import checkpoint_problems, last_checkpoint, prepare_output, resume_arg

SUPPORT = Path(__file__).with_name("train_support.py")


# ---------------------------------------------------------------------------------------------- complete checkpoints
def _truncate(path: Path, size: int | None = None) -> None:
    os.truncate(path, path.stat().st_size // 2 if size is None else size)


def _shard(ckpt: Path) -> None:
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))


def _nested_weights_cut(ckpt: Path) -> None:
    """A sentence-transformers layout: weights below the checkpoint folder, the second route's cut short."""
    for route in ("query_0_Transformer", "document_0_Transformer"):
        (ckpt / route).mkdir()
        (ckpt / route / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    _truncate(ckpt / "document_0_Transformer" / "model.safetensors")


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "no state": (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
    "state cut": (lambda c: _truncate(c / "trainer_state.json", 9), "trainer_state.json does not parse"),
    "state of another step": (lambda c: (c / "trainer_state.json").write_text('{"global_step": 3}'),
                              "trainer_state.json records step 3"),
    "weights cut": (lambda c: _truncate(c / "model.safetensors"), "model.safetensors has"),
    "weights header cut": (lambda c: _truncate(c / "model.safetensors", 12), "model.safetensors is cut short"),
    "no weights": (lambda c: (c / "model.safetensors").unlink(), "no weights"),
    "shard missing": (_shard, "no shard model-00002-of-00002.safetensors"),
    "nested weights cut": (_nested_weights_cut, "model.safetensors has"),
    "optimizer cut": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt is not a whole archive"),
    "no scheduler": (lambda c: (c / "scheduler.pt").unlink(), "no scheduler.pt"),
    "rng cut": (lambda c: _truncate(c / "rng_state.pth"), "rng_state.pth is not a whole archive"),
    "no rng": (lambda c: (c / "rng_state.pth").unlink(), "no RNG state"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_skips_a_partial_checkpoint(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    make_checkpoint(tmp_path, 2)
    newest = make_checkpoint(tmp_path, 4)
    assert checkpoint_problems(newest) == []
    assert last_checkpoint(tmp_path) == str(newest)
    hurt, named = DAMAGE[damage]
    hurt(newest)
    assert any(named in p for p in checkpoint_problems(newest)), checkpoint_problems(newest)
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.resume"):
        assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "checkpoint-2")
    assert "checkpoint-4 is incomplete" in caplog.text and named in caplog.text
    assert newest.is_dir()  # looking is not resuming: nothing removed
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        resume_arg(tmp_path, resume=False)
    assert resume_arg(tmp_path, resume=True).endswith("checkpoint-2")
    assert not newest.exists()  # resuming removes it: the resumed run writes checkpoint-4 again


def test_resume_without_a_complete_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint to resume from .*none found"):
        resume_arg(tmp_path, resume=True)
    (make_checkpoint(tmp_path, 2) / "optimizer.pt").unlink()
    with pytest.raises(ConfigError, match="none of checkpoint-2 is complete"):
        prepare_output(tmp_path, resume=True, overwrite=False)
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir()  # nothing to resume from: the partial one stays


# ---------------------------------------------------------------------------------------------- the run folder
@dataclass
class NoteConfig:
    model: str = ""


class NoteTrainer:
    """Records that it ran and what it was given (no model: the run-folder rules come before any trainer)."""

    config_class = NoteConfig

    def train(self, config: NoteConfig, ctx: TrainContext) -> dict[str, Any]:
        (ctx.output / "ran.json").write_text(json.dumps({"resume": ctx.resume}))
        return {}


register_trainer("test-restart-note", NoteTrainer)


def _finished_run(out: Path) -> None:
    (out / "model").mkdir(parents=True)
    (out / "model" / "model.safetensors").write_text("weights")
    (out / "adapter").mkdir()
    make_checkpoint(out, 4)
    (out / ".model.k2j3x").mkdir()  # a staged model folder a killed save left behind
    for name in ("rerank_train.json", "train_log.jsonl", "train_summary.json", "queries.json", "negatives.json"):
        (out / name).write_text("{}")
    (out / "notes.txt").write_text("mine")


def test_a_finished_run_is_refused_replaced_or_resumed(tmp_path: Path, run_cli) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {stand_in_model(tmp_path / 'm0')}\n")
    out = tmp_path / "out"
    _finished_run(out)
    before = sorted(p.name for p in out.iterdir())

    rc, _, err = run_cli("train", "test-restart-note", "--config", cfg, "--output", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "already holds a training run (model/, adapter/, checkpoints/checkpoint-4)" in err
    assert "--resume" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == before and (out / "rerank_train.json").read_text() == "{}"
    with pytest.raises(ConfigError, match="already holds a training run"):
        run_trainer("test-restart-note", {"model": "m0"}, out)

    rc, _, err = run_cli("train", "test-restart-note", "--config", cfg, "--output", out, "--resume", "--overwrite")
    assert rc == 2 and "not allowed with" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="exclude each other"):
        run_trainer("test-restart-note", {"model": "m0"}, out, resume=True, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before

    rc, _, err = run_cli("train", "test-restart-note", "--config", cfg, "--output", out, "--resume")
    assert rc == 0, err
    assert json.loads((out / "ran.json").read_text()) == {"resume": True}
    assert not (out / ".model.k2j3x").exists()  # a killed save's staged folder is cleared by the resume
    assert json.loads((out / "rerank_train.json").read_text())["trainer"] == "test-restart-note"

    rc, _, err = run_cli("train", "test-restart-note", "--config", cfg, "--output", out, "--overwrite")
    assert rc == 0, err
    # the run's own files are gone (the record is the new run's), everything else is kept
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "ran.json", "rerank_train.json"]
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_into_a_folder_without_a_complete_checkpoint_writes_nothing(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "out"
    (make_checkpoint(out, 2) / "trainer_state.json").unlink()
    rc, _, err = run_cli("train", "test-restart-note", "--set", f"model={stand_in_model(tmp_path / 'm0')}",
                         "--output", out, "--resume")
    assert rc == 2 and "none of checkpoint-2 is complete" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # no run record written


# ---------------------------------------------------------------------------------------------- kill -9 and resume
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return erank_workdir(tmp_path_factory.mktemp("restarts"), data_seed=3)


def _killed(point: str, args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``rerank ARGS`` in a process that SIGKILLs itself at ``point``; it must die of that signal."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(SUPPORT), point, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    return done


def _state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "trainer_state.json").read_text())


def _step_losses(out: Path) -> dict[int, float]:
    ckpt = Path(last_checkpoint(out) or "")
    return {h["step"]: h["loss"] for h in _state(ckpt)["log_history"] if "loss" in h}


def _same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.safetensors"))
    for f in files:
        wa, wb = load_file(str(a / f)), load_file(str(b / f))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f


def test_sft_killed_in_a_save_and_in_a_step_resumes_to_the_uninterrupted_run(
        work: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """LLM SFT (ERank, 8 steps, a checkpoint every 2): killed inside the save of checkpoint-4, resumed and killed
    again inside a seeded step, resumed to the end: the weights equal the uninterrupted run's bit for bit, and so do
    the per-step losses and the train_loss over all 8 steps."""
    cfg = {"model": str(work / "llm"), "head": "erank", "template": str(work / "erank.yaml"), "max_doc_tokens": 24,
           "data": {"path": str(work / "train.jsonl"), "dev_fraction": 0.0}, "batch_size": 4, "max_steps": 8,
           "save_steps": 2, "logging_steps": 3, "learning_rate": 1e-3}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    full = run_trainer("sft", cfg, tmp_path / "full")
    assert full["global_step"] == 8

    out = tmp_path / "killed"
    train = ["train", "sft", "--config", tmp_path / "sft.yaml", "--output", out]
    _killed("save:4", train, tmp_path)
    partial = out / "checkpoints" / "checkpoint-4"
    assert checkpoint_problems(partial) == ["no trainer_state.json"]  # weights, optimizer, scheduler, RNG written

    step = random.Random(18).randint(5, 8)  # a seeded point: inside a step after checkpoint-4
    again = _killed(f"step:{step}", [*train, "--resume"], tmp_path)
    assert "checkpoint-4 is incomplete (no trainer_state.json): removed, resuming from checkpoint-2" in again.stderr
    newest = Path(last_checkpoint(out) or "")
    assert newest.name == f"checkpoint-{(step - 1) // 2 * 2}" and not checkpoint_problems(newest)

    with caplog.at_level(logging.WARNING, logger="rerank.trainers.resume"):
        resumed = run_trainer("sft", cfg, out, resume=True)
    assert "incomplete" not in caplog.text
    assert resumed["global_step"] == 8
    assert resumed["train_loss"] == full["train_loss"]  # over all 8 steps, not the resumed ones
    a, b = _step_losses(tmp_path / "full"), _step_losses(out)
    assert sorted(a) == sorted(b) == [2, 3, 4, 6, 8]  # every 3 steps, and at each checkpoint
    assert a == b
    assert sum(a[s] * (s - p) for s, p in zip(sorted(a), [0, *sorted(a)][:-1], strict=True)) / 8 == pytest.approx(
        full["train_loss"], rel=1e-6)
    _same_weights(tmp_path / "full" / "model", out / "model")


def test_retriever_killed_while_writing_weights_resumes_to_the_uninterrupted_run(
        tiny_st_dir: Path, tiny_beir_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Contrastive (a sentence-transformers folder: weights one level down) killed halfway through writing
    checkpoint-4's weights; the resume names the cut file, goes back to checkpoint-2 and ends as the uninterrupted
    run: same weights bit for bit, same train_loss."""
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    cfg = {"model": str(tiny_st_dir), "dataset": str(tiny_beir_dir), "batch_size": 4, "max_steps": 6,
           "save_steps": 2, "dev_fraction": 0.0, "progress": False, "logging_steps": 1, "learning_rate": 1e-3}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    full = run_trainer("contrastive", cfg, tmp_path / "full")

    out = tmp_path / "killed"
    _killed("weights:4", ["train", "contrastive", "--config", tmp_path / "c.yaml", "--output", out], tmp_path)
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.resume"):
        resumed = run_trainer("contrastive", cfg, out, resume=True)
    assert "checkpoint-4 is incomplete (" in caplog.text and "model.safetensors has" in caplog.text
    assert resumed["global_step"] == 6 and resumed["steps_this_run"] == 4
    assert resumed["train_loss"] == full["train_loss"]
    _same_weights(tmp_path / "full" / "model", out / "model")


def test_cross_encoder_resume_reports_the_loss_over_all_steps(tmp_path: Path, tiny_bert_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The cross-encoder SFT (sentence-transformers' trainer) goes through the same restarts: a run stopped after
    step 3 resumes from checkpoint-2 to the uninterrupted run's weights and train_loss."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    write_jsonl(synthetic_ranking_examples(10, num_candidates=4, seed=4), tmp_path / "t.jsonl")
    cfg = {"model": str(tiny_bert_dir), "head": "cross-encoder", "loss": "bce", "max_length": 64, "batch_size": 4,
           "max_steps": 5, "save_steps": 2, "logging_steps": 1, "learning_rate": 1e-4,
           "data": {"path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.0}}
    full = run_trainer("sft", cfg, tmp_path / "full")
    original = CrossEncoderTrainer.training_step

    def stops_in_step_4(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.state.global_step == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CrossEncoderTrainer, "training_step", stops_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_trainer("sft", cfg, tmp_path / "stopped")
    monkeypatch.setattr(CrossEncoderTrainer, "training_step", original)
    resumed = run_trainer("sft", cfg, tmp_path / "stopped", resume=True)
    assert resumed["global_step"] == 5 and resumed["train_loss"] == full["train_loss"]
    _same_weights(tmp_path / "full" / "model", tmp_path / "stopped" / "model")


def test_resume_from_the_last_step_trains_no_step_past_it(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """A run killed while writing its final model leaves a checkpoint at max_steps: --resume loads it and writes the
    model (transformers alone would train a step past the end when max_steps falls inside an epoch)."""
    write_jsonl(synthetic_ranking_examples(10, num_candidates=4, seed=4), tmp_path / "t.jsonl")
    cfg = {"model": str(tiny_bert_dir), "head": "cross-encoder", "loss": "bce", "max_length": 64, "batch_size": 4,
           "max_steps": 4, "save_steps": 2, "logging_steps": 1, "learning_rate": 1e-4,
           "data": {"path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.0}}
    full = run_trainer("sft", cfg, tmp_path / "full")
    assert full["global_step"] == 4 and (tmp_path / "full" / "checkpoints" / "checkpoint-4").is_dir()
    import shutil

    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "model")  # killed while the final model was written
    resumed = run_trainer("sft", cfg, tmp_path / "cut", resume=True)
    assert resumed["global_step"] == 4 and resumed["train_loss"] == full["train_loss"]
    _same_weights(tmp_path / "full" / "model", tmp_path / "cut" / "model")
    record = json.loads((tmp_path / "cut" / "rerank_train.json").read_text())
    assert record["config"]["max_steps"] == 4 and len(record["resumed"]) == 1  # the run's record, and the resume

    shutil.rmtree(tmp_path / "cut" / "model")
    for change, named in (({"learning_rate": 1e-3}, "learning_rate: 0.0001 -> 0.001"),
                          ({"loss": "listnet"}, 'loss: "bce" -> "listnet"')):
        with pytest.raises(ConfigError, match=f"--resume: the config differs from the run's .*{re.escape(named)}"):
            run_trainer("sft", {**cfg, **change}, tmp_path / "cut", resume=True)
    with pytest.raises(ConfigError, match="holds a 'sft' run, not 'contrastive'"):
        run_trainer("contrastive", {"model": str(tiny_bert_dir), "dataset": "x"}, tmp_path / "cut", resume=True)

    # a record from an older rerank: an option removed since (lora.merge) and one added since, at its default (seed)
    path = tmp_path / "cut" / "rerank_train.json"
    old = json.loads(path.read_text())
    old["config"]["lora"]["merge"] = True
    del old["config"]["seed"]
    path.write_text(json.dumps(old))
    longer = run_trainer("sft", {**cfg, "max_steps": 6}, tmp_path / "cut", resume=True)  # how long may change
    assert longer["global_step"] == 6 and len(json.loads(path.read_text())["resumed"]) == 2
