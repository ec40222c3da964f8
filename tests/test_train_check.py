"""``rerank train … --check``: the config, the inputs and the run already in --output checked as the run checks them,
nothing written; its verdict (``state: train|done|resume``) is what examples/train-stage.sh acts on. An input path
spelt another way (``./m`` and an absolute ``m``) is the same input for ``--check`` and for the real ``--resume``
(:func:`rerank.trainers.resume.run_differences`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from train_support import make_checkpoint, stand_in_model

from rerank.trainers.base import TrainContext, load_train_config, register_trainer, save_run_record


@dataclass
class CheckData:
    path: str = ""


@dataclass
class CheckConfig:
    model: str = ""
    data: CheckData = field(default_factory=CheckData)
    learning_rate: float = 1e-4
    max_steps: int = 4
    logging_steps: int = 10


class CheckTrainer:
    """Records that it ran: the run-folder and input rules come before any trainer."""

    config_class = CheckConfig

    def train(self, config: CheckConfig, ctx: TrainContext) -> dict[str, Any]:
        (ctx.output / "ran.json").write_text(json.dumps({"resume": ctx.resume}))
        return {}


register_trainer("test-check", CheckTrainer)
register_trainer("test-check-other", CheckTrainer)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the working folder, with a stand-in starting model ``m0`` and a data file ``d.jsonl``."""
    monkeypatch.chdir(tmp_path)
    stand_in_model(tmp_path / "m0")
    (tmp_path / "d.jsonl").write_text("{}\n")
    return tmp_path


def _finished(out: Path, *sets: str, model: bool = True) -> None:
    """A run of test-check in ``out`` as ``rerank train`` records it (``model=./m0``, ``data.path=d.jsonl``)."""
    cfg = load_train_config(CheckConfig, None, ["model=./m0", "data.path=d.jsonl", *sets])
    out.mkdir(parents=True, exist_ok=True)
    save_run_record(out, "test-check", cfg)
    if model:
        (out / "model").mkdir()


_PLAN = "plan: trainer test-check, model ./m0, data d.jsonl, max_steps 4, learning_rate 0.0001"  # what it trains


def _check(run_cli, out: Path | str, *more: str) -> tuple[int, str, str]:
    return run_cli("train", "test-check", "--set", "model=./m0", "--set", "data.path=d.jsonl", "--output", out,
                   "--check", *more)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_an_empty_output_is_trained_and_nothing_is_written(work: Path, run_cli) -> None:
    rc, out, err = _check(run_cli, work / "out")
    assert rc == 0, err
    assert out.splitlines() == [f"{work / 'out'}: no run there yet: training starts from the beginning",
                                _PLAN,
                                "state: train"]
    assert not (work / "out").exists()
    (work / "out" / "adapter").mkdir(parents=True)  # a run killed between its adapter and its model: refused
    rc, out, err = _check(run_cli, work / "out")
    assert rc == 2 and "already holds a training run (adapter/)" in err and "state:" not in out
    (work / "out" / "model").mkdir()  # a model without a run record is kept as it is
    rc, out, err = _check(run_cli, work / "out")
    assert rc == 0 and "no run record" in out and out.endswith("state: done\n"), err


def test_config_and_input_mistakes_are_one_line_and_exit_2(work: Path, run_cli) -> None:
    cases = ((("--set", "learning_rat=1"), "unknown key 'learning_rat'"),
             (("--set", "model=./nope"), "model ./nope does not exist"),
             (("--set", "data.path=gone.jsonl"), "data.path gone.jsonl does not exist"))
    for extra, needle in cases:
        rc, out, err = _check(run_cli, work / "out", *extra)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and "state:" not in out, (extra, err)
    # an earlier step of a chain makes the model and the data: the config is still checked
    rc, out, err = _check(run_cli, work / "out", "--set", "model=./nope", "--set", "data.path=gone.jsonl",
                          "--inputs-later")
    assert rc == 0 and out.endswith("state: train\n"), err
    rc, _, err = _check(run_cli, work / "out", "--set", "learning_rat=1", "--inputs-later")
    assert rc == 2 and "unknown key 'learning_rat'" in err
    rc, _, err = run_cli("train", "test-check", "--set", "model=./m0", "--output", work / "out", "--inputs-later")
    assert rc == 2 and "--inputs-later is an option of --check" in err
    # the real run checks the data file the same way, before the trainer starts
    rc, _, err = run_cli("train", "test-check", "--set", "model=./m0", "--set", "data.path=gone.jsonl",
                         "--output", work / "out")
    assert rc == 2 and "data.path gone.jsonl does not exist" in err and not (work / "out").exists()


def test_a_finished_run_is_done_refused_or_resumed(work: Path, run_cli) -> None:
    out = work / "out"
    _finished(out)
    before = _files(out)
    # the same config, the inputs spelt another way, and an option that leaves the weights alone: done
    rc, stdout, err = run_cli("train", "test-check", "--set", f"model={work / 'm0'}", "--set",
                              f"data.path={work / 'd.jsonl'}", "--set", "logging_steps=3", "--output", "./out",
                              "--check")
    assert rc == 0 and stdout.splitlines() == ["out/model exists: training is done", "state: done"], err
    # a done run needs no inputs: its data may be gone
    (work / "d.jsonl").unlink()
    rc, stdout, err = _check(run_cli, out)
    assert rc == 0 and stdout.endswith("state: done\n"), err
    (work / "d.jsonl").write_text("{}\n")
    # other options: refused, naming them
    rc, stdout, err = _check(run_cli, out, "--set", "learning_rate=0.5")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "state:" not in stdout
    assert err.startswith(f"error: {out / 'model'} was trained with other options") and \
        "learning_rate: 0.0001 -> 0.5" in err
    rc, _, err = run_cli("train", "test-check-other", "--set", "model=./m0", "--set", "data.path=d.jsonl",
                         "--output", out, "--check")
    assert rc == 2 and "is a 'test-check' run, not 'test-check-other'" in err
    # a longer run: resumed from its last checkpoint; none to resume from: refused
    rc, _, err = _check(run_cli, out, "--set", "max_steps=8")
    assert rc == 2 and "keeps no checkpoint to continue from" in err
    make_checkpoint(out, 4)
    rc, stdout, err = _check(run_cli, out, "--set", "max_steps=8")
    assert rc == 0 and stdout.splitlines() == [f"{out}: --resume continues the run from checkpoint-4",
                                               _PLAN.replace("max_steps 4", "max_steps 8"), "state: resume"], err
    # resumed to that length (the record keeps the first run's max_steps): done
    ckpt = make_checkpoint(out, 8)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "max_steps": 8}))
    rc, stdout, err = _check(run_cli, out, "--set", "max_steps=8")
    assert rc == 0 and stdout.endswith("state: done\n"), err
    assert [f for f in _files(out) if not f.startswith("checkpoints")] == before  # --check wrote nothing


def test_an_interrupted_run_is_resumed_with_the_real_resume_checks(work: Path, run_cli) -> None:
    out = work / "out"
    _finished(out, model=False)
    make_checkpoint(out, 2)
    partial = make_checkpoint(out, 4)
    (partial / "optimizer.pt").unlink()
    rc, stdout, err = _check(run_cli, out)
    assert rc == 0 and stdout.splitlines() == [f"{out}: --resume continues the run from checkpoint-2",
                                               _PLAN, "state: resume"], err
    assert partial.is_dir()  # a real --resume removes it; --check removes nothing
    rc, stdout, err = _check(run_cli, out, "--resume")
    assert rc == 0 and stdout.endswith("state: resume\n") and partial.is_dir(), err
    # options that shape the weights: --resume's own refusal, with or without --resume
    for extra in ((), ("--resume",)):
        rc, _, err = _check(run_cli, out, "--set", "learning_rate=0.5", *extra)
        assert rc == 2 and err.startswith("error: --resume: the config differs from the run's") and \
            "learning_rate: 0.0001 -> 0.5" in err, err
    # no complete checkpoint: --resume would fail, so does --check
    (work / "out" / "checkpoints" / "checkpoint-2" / "scheduler.pt").unlink()
    rc, _, err = _check(run_cli, out)
    assert rc == 2 and "no checkpoint to resume from" in err and "none of checkpoint-4, checkpoint-2" in err


def test_the_real_resume_takes_an_input_path_spelt_another_way(work: Path, run_cli) -> None:
    """The record says ``model: ./m0``; resuming with the absolute path is the same run (it was refused)."""
    out = work / "out"
    _finished(out, model=False)
    make_checkpoint(out, 2)
    absolute = ("--set", f"model={work / 'm0'}", "--set", f"data.path={work / 'd.jsonl'}", "--output", out)
    rc, stdout, err = run_cli("train", "test-check", *absolute, "--check")
    assert rc == 0 and stdout.endswith("state: resume\n"), err
    rc, _, err = run_cli("train", "test-check", *absolute, "--resume")
    assert rc == 0, err
    assert json.loads((out / "ran.json").read_text()) == {"resume": True}
    assert json.loads((out / "rerank_train.json").read_text())["config"]["model"] == "./m0"  # the first record kept


def test_check_with_overwrite_checks_what_it_would_remove(work: Path, run_cli) -> None:
    out = work / "out"
    _finished(out)
    make_checkpoint(out, 2)
    before = _files(out)
    rc, stdout, err = _check(run_cli, out, "--overwrite")
    assert rc == 0 and stdout.splitlines() == [
        f"{out}: --overwrite replaces the run there (model, checkpoints, rerank_train.json) and trains from the start",
        _PLAN, "state: train"], err
    assert _files(out) == before
    stand_in_model(out / "model" / "start")  # the run would start from a model --overwrite removes
    rc, _, err = run_cli("train", "test-check", "--set", f"model={out / 'model' / 'start'}", "--set",
                         "data.path=d.jsonl", "--output", out, "--check", "--overwrite")
    assert rc == 2 and "--overwrite would remove" in err and len(err.strip().splitlines()) == 1
    assert (out / "model" / "start").is_dir()


def test_train_stage_acts_on_the_check(repo_root: Path, work: Path) -> None:
    """The script checks only the config before a chain builds its data, and resumes an interrupted run; ``rerank``
    is one that records its arguments, except that ``--check`` runs the real one."""
    bin_dir = work / "bin"
    bin_dir.mkdir()
    real = Path(sys.executable).parent / "rerank"
    (bin_dir / "rerank").write_text(f'#!/bin/sh\ncase " $* " in *" --check "*) exec "{real}" "$@" ;; esac\n'
                                    f'echo "$@" > "{work}/args.txt"\n')
    (bin_dir / "rerank").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "RERANK_DATA": str(work),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cfg = work / "c.yaml"
    cfg.write_text("model: ./m0\nhead: cross-encoder\ndata: {path: d.jsonl}\nmax_steps: 4\n")
    stage = repo_root / "examples" / "train-stage.sh"
    assert "python" not in stage.read_text()  # the checks are the CLI's

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(stage), *args], check=False, cwd=work, env=env, capture_output=True,
                              text=True, timeout=120)

    # before the data is built: the config only (a typo fails, a missing data file does not)
    r = run("--check", "sft", str(cfg), "out", "--set", "data.path=later.jsonl", "--set", "max_step=2")
    assert r.returncode == 2 and "unknown key 'max_step'" in r.stderr
    r = run("--check", "sft", str(cfg), "out", "--set", "data.path=later.jsonl")
    assert r.returncode == 0 and r.stdout == "" and not (work / "out").exists(), r.stderr
    # an interrupted run of this config: resumed
    from rerank.trainers.base import get_trainer

    (work / "out").mkdir()
    save_run_record(work / "out", "sft", load_train_config(get_trainer("sft").config_class, cfg))
    make_checkpoint(work / "out", 2)
    r = run("sft", str(cfg), "out")
    assert r.returncode == 0, r.stderr
    assert (work / "args.txt").read_text().split() == ["train", "sft", "--config", str(cfg), "--data-root",
                                                       str(work), "--output", "out", "--resume"]


def test_a_run_already_trained_past_the_asked_length_is_refused(work: Path, run_cli) -> None:
    """A finished 4-step run checked (or resumed) with max_steps 2: resuming would train nothing and keep the 4-step
    model as the 2-step one; both --check and --resume refuse, naming both lengths."""
    out = work / "out"
    _finished(out)  # max_steps 4
    make_checkpoint(out, 4)
    rc, _, err = _check(run_cli, out, "--set", "max_steps=2")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert ("already trained 4 steps (checkpoint-4, then finished), more than the max_steps 2 asked: a run cannot be "
            "shortened") in err
    rc, _, err = run_cli("train", "test-check", "--set", "model=./m0", "--set", "data.path=d.jsonl", "--set",
                         "max_steps=2", "--output", out, "--resume")
    assert rc == 2 and "--resume: " in err and "more than the max_steps 2 asked" in err, err
    assert not (out / "ran.json").exists()
    rc, so, err = _check(run_cli, out, "--set", "max_steps=4")
    assert rc == 0 and so.splitlines()[-1] == "state: done", err
