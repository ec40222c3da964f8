"""Resume keeps its promises (audit s45 trainconf): a finished run whose model selection kept only an earlier
checkpoint cannot be shortened; a resumed run logs at the ``logging_steps`` now asked for, trains its first resumed
step at the new schedule's learning rate, and transformers' own ``train_loss`` is this session's mean, not the run's
sum over this session's steps. ``--check`` refuses a ``data.beir`` that training would refuse and prints a plan line
that says what decides the run; transformers' / TRL's key names and another trainer's options name rerank's key; a
resume may switch ``gradient_checkpointing`` (and ``use_cpu`` where the device stays); ``--set seed=010`` is refused
(YAML 1.1 reads it as 8)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from train_support import stand_in_model

from rerank.errors import ConfigError
from rerank.trainers.base import TrainContext, get_trainer, load_train_config, register_trainer, save_run_record


def _args(model: Path, beir: Path, out: Path, *sets: str) -> list[str]:
    base = {"head": "cross-encoder", "model": str(model), "data.beir": str(beir), "batch_size": 2, "save_steps": 2,
            "logging_steps": 1}
    return ["train", "sft", *[a for k, v in base.items() for a in ("--set", f"{k}={v}")],
            *[a for s in sets for a in ("--set", s)], "--output", str(out)]


def _logs(out: Path) -> list[dict]:
    """The log history of the run's newest checkpoint (the steps of every session)."""
    newest = max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((newest / "trainer_state.json").read_text())["log_history"]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_a_finished_run_that_kept_an_earlier_checkpoint_cannot_be_shortened(tiny_bert_dir: Path, tiny_beir_dir: Path,
                                                                            tmp_path: Path, run_cli) -> None:
    out = tmp_path / "sel"
    selected = ("eval_steps=2", "save_total_limit=1", "data.dev_fraction=0.3")
    rc, _, err = run_cli(*_args(tiny_bert_dir, tiny_beir_dir, out, "max_steps=8", *selected))
    assert rc == 0, err
    kept = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    before = (out / "model" / "model.safetensors").read_bytes()
    for more in (("--check",), ("--resume",)):
        rc, stdout, err = run_cli(*_args(tiny_bert_dir, tiny_beir_dir, out, "max_steps=6", *selected), *more)
        assert rc == 2 and "already trained 8 steps" in err and "cannot be shortened" in err, (kept, stdout, err)
    assert (out / "model" / "model.safetensors").read_bytes() == before


def test_a_lengthened_resume_follows_the_new_schedule_and_logging_steps(tiny_bert_dir: Path, tiny_beir_dir: Path,
                                                                       tmp_path: Path, run_cli, caplog) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    rc, _, err = run_cli(*_args(tiny_bert_dir, tiny_beir_dir, whole, "max_steps=12"))
    assert rc == 0, err
    rc, _, err = run_cli(*_args(tiny_bert_dir, tiny_beir_dir, resumed, "max_steps=6"))
    assert rc == 0, err
    rc, stdout, err = run_cli(*_args(tiny_bert_dir, tiny_beir_dir, resumed, "max_steps=12", "logging_steps=3"),
                              "--resume")
    assert rc == 0, err
    rates = {r["step"]: r["learning_rate"] for r in _logs(whole) if "learning_rate" in r}
    after = {r["step"]: r for r in _logs(resumed) if "learning_rate" in r and r["step"] > 6}
    # steps 9 and 12 by logging_steps 3, 8 / 10 / 12 as checkpoint steps; not every step as the checkpoint's 1 said
    assert sorted(after) == [8, 9, 10, 12], sorted(after)
    assert all(after[s]["learning_rate"] == pytest.approx(rates[s]) for s in after), (after, rates)
    line = json.loads(stdout.strip().splitlines()[-1])
    shown = [float(x) for x in re.findall(r"'train_loss': '([0-9.]+)'", stdout + err)]
    assert shown and all(x < 2 * line["train_loss"] for x in shown), (shown, line)  # not the run's sum over 6 steps


def test_the_first_resumed_step_trains_at_the_new_schedules_rate(tiny_bert_dir: Path, tiny_beir_dir: Path,
                                                                 tmp_path: Path, run_cli) -> None:
    out = tmp_path / "run"
    rc, _, err = run_cli(*_args(tiny_bert_dir, tiny_beir_dir, out, "max_steps=4"))
    assert rc == 0, err
    rc, _, err = run_cli(*_args(tiny_bert_dir, tiny_beir_dir, out, "max_steps=8"), "--resume")
    assert rc == 0, err
    step5 = next(r for r in _logs(out) if r.get("step") == 5 and "learning_rate" in r)
    assert step5["learning_rate"] > 0  # was the finished 4-step schedule's last rate, 0


def _check_sft(run_cli, model: Path, out: Path, *sets: str) -> tuple[int, str, str]:
    base = ("head=cross-encoder", f"model={model}", "batch_size=2", "max_steps=4")
    return run_cli("train", "sft", *[a for x in (*base, *sets) for a in ("--set", x)], "--output", str(out), "--check")


def test_check_refuses_a_data_beir_training_would_refuse(tiny_bert_dir: Path, tiny_beir_dir: Path, tmp_path: Path,
                                                          run_cli) -> None:
    cases = ((f"data.beir={tmp_path / 'nope'}", f"data.beir: dataset folder {tmp_path / 'nope'} does not exist"),
             ("data.beir=nosuchname", "data.beir: dataset 'nosuchname' not found"),
             (f"data={{beir: {tiny_beir_dir}, split: nosuch}}", "no qrels for split 'nosuch'"))
    for given, needle in cases:
        rc, out, err = _check_sft(run_cli, tiny_bert_dir, tmp_path / "out", given)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and "state:" not in out, (given, err)
    rc, out, err = _check_sft(run_cli, tiny_bert_dir, tmp_path / "out", f"data.beir={tiny_beir_dir}")
    assert rc == 0 and out.endswith("state: train\n"), err
    rc, out, err = run_cli("train", "sft", "--set", "head=cross-encoder", "--set", f"model={tiny_bert_dir}", "--set",
                           f"data.beir={tmp_path / 'nope'}", "--output", str(tmp_path / "out"), "--check",
                           "--inputs-later")  # an earlier step builds the data
    assert rc == 0 and out.endswith("state: train\n"), err


def test_the_plan_line_says_what_decides_the_run(tiny_bert_dir: Path, tiny_beir_dir: Path, tmp_path: Path,
                                                 run_cli) -> None:
    rc, out, err = _check_sft(run_cli, tiny_bert_dir, tmp_path / "out", f"data.beir={tiny_beir_dir}",
                              "epochs=3", "warmup_ratio=0.1", "seed=7", "save_steps=2", "eval_steps=2",
                              "data.dev_fraction=0.3", "max_length=128", "bf16=true")
    assert rc == 0, err
    plan, state = out.splitlines()[-2:]
    assert state == "state: train" and plan.startswith("plan: trainer sft, method cross-encoder, model "), plan
    assert "template" not in plan and "epochs" not in plan and "max_steps 4" in plan, plan  # no prompt; max_steps wins
    for part in ("warmup_ratio 0.1", "seed 7", "save_steps 2", "save_total_limit 2",
                 "eval_steps 2 (the best dev checkpoint is kept, dev_fraction 0.3)", "max_length 128", "bf16 true",
                 "loss bce"):
        assert part in plan, (part, plan)
    assert "max_doc_tokens" not in plan  # the cross-encoder reads none


@pytest.mark.parametrize(("trainer", "given", "needle"), [
    ("sft", "num_train_epochs=2", "did you mean 'epochs'? (rerank's name for transformers' num_train_epochs)"),
    ("sft", "per_device_train_batch_size=4", "did you mean 'batch_size'?"),
    ("grpo", "gradient_accumulation_steps=2", "did you mean 'grad_accum'?"),
    ("sft", "max_seq_length=128", "did you mean 'max_length'?"),
    ("contrastive", "max_seq_length=128", "did you mean 'max_doc_tokens'?"),
    ("sft", "fp16=true", "did you mean 'bf16'?"),
    ("sft", "lr_scheduler_type=cosine", "(transformers' lr_scheduler_type): the learning rate always decays "
                                        "linearly"),
    ("star", "optim=adamw_torch", "the optimiser is always AdamW"),
    ("sft", "beta=0.1", "beta is an option of rerank train grpo, not of this trainer"),
    ("grpo", "ranking_weight=1", "ranking_weight is an option of rerank train sft, not of this trainer"),
])
def test_transformers_names_and_other_trainers_options_name_reranks_key(trainer: str, given: str,
                                                                        needle: str) -> None:
    base = ["model=m", "head=cross-encoder" if trainer == "sft" else "head=erank", "data.path=d.jsonl"]
    if trainer not in ("sft", "grpo"):
        base = ["model=m", "dataset=d"]
    with pytest.raises(ConfigError) as info:
        load_train_config(get_trainer(trainer).config_class, None, [*base, given], trainer=trainer)
    message = str(info.value)
    assert message.startswith(f"--set {given}: unknown key '{given.split('=')[0]}'") and needle in message, message
    assert "known keys" not in message and "\n" not in message


def test_a_leading_zero_integer_in_set_is_refused() -> None:
    cls = get_trainer("contrastive").config_class
    with pytest.raises(ConfigError, match=r"^--set seed=010: YAML reads 010 as the octal number 8: write the number "
                                          r"without its leading zero"):
        load_train_config(cls, None, ["model=m", "dataset=d", "seed=010"])
    assert load_train_config(cls, None, ["model=m", "dataset=d", "seed=10"]).seed == 10


@dataclass
class _Data:
    path: str = ""


@dataclass
class _Config:
    model: str = ""
    data: _Data = field(default_factory=_Data)
    max_steps: int = 4
    gradient_checkpointing: bool = False
    use_cpu: bool | None = None


class _Trainer:
    config_class = _Config

    def train(self, config: _Config, ctx: TrainContext) -> dict[str, Any]:
        return {}


register_trainer("test-s45-memory", _Trainer)


def test_a_finished_run_may_change_how_much_memory_a_step_takes(tmp_path: Path, run_cli,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    stand_in_model(tmp_path / "m0")
    (tmp_path / "d.jsonl").write_text("{}\n")
    out = tmp_path / "out"
    out.mkdir()
    save_run_record(out, "test-s45-memory", load_train_config(_Config, None, ["model=./m0", "data.path=d.jsonl"]))
    (out / "model").mkdir()
    args = ("train", "test-s45-memory", "--set", "model=./m0", "--set", "data.path=d.jsonl", "--output", str(out),
            "--check")
    rc, stdout, err = run_cli(*args, "--set", "gradient_checkpointing=true")
    assert rc == 0 and stdout.endswith("state: done\n"), err
    rc, stdout, err = run_cli(*args, "--set", "use_cpu=true")
    if torch.cuda.is_available() or torch.backends.mps.is_available():  # the run trained on the GPU: another device
        assert rc == 2 and "use_cpu: null -> true" in err, err
    else:  # null meant the CPU here already
        assert rc == 0 and stdout.endswith("state: done\n"), err
    rc, _, err = run_cli(*args, "--set", "model=./other", "--set", "gradient_checkpointing=true")
    assert rc == 2 and "model: " in err and "other" in err and "gradient_checkpointing" not in err, err
