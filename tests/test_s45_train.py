"""Resume keeps its promises (audit s45 trainconf): a finished run whose model selection kept only an earlier
checkpoint cannot be shortened; a resumed run logs at the ``logging_steps`` now asked for, trains its first resumed
step at the new schedule's learning rate, and transformers' own ``train_loss`` is this session's mean, not the run's
sum over this session's steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


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
