"""`rerank train` conventions: registry by name, strict configs, --set overrides, the run record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from train_support import make_checkpoint

from rerank.cli import main
from rerank.errors import ConfigError
from rerank.trainers.base import TrainContext, load_train_config, register_trainer


@dataclass
class EchoConfig:
    model: str = ""
    lr: float = 1e-4
    steps: int = 3


class EchoTrainer:
    """Writes what it was given, so the CLI plumbing can be checked without a model."""

    config_class = EchoConfig

    def train(self, config: EchoConfig, ctx: TrainContext) -> dict[str, Any]:
        (ctx.output / "echo.json").write_text(json.dumps({"lr": config.lr, "steps": config.steps,
                                                          "resume": ctx.resume, "data_root": ctx.data_root}))
        return {"steps": config.steps}


register_trainer("test-echo", EchoTrainer)


def test_train_cli_overrides_and_record(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m0\nlr: 0.5\n")
    out = tmp_path / "out"
    make_checkpoint(out, 2)  # --resume needs a complete checkpoint (tests/test_train_restarts.py)
    rc = main(["train", "test-echo", "--config", str(cfg), "--output", str(out), "--set", "steps=7",
               "--set", "model=m1", "--data-root", "/d", "--resume"])
    assert rc == 0
    echo = json.loads((out / "echo.json").read_text())
    assert echo == {"lr": 0.5, "steps": 7, "resume": True, "data_root": "/d"}
    record = json.loads((out / "rerank_train.json").read_text())
    assert record["trainer"] == "test-echo" and record["config"]["model"] == "m1"
    assert "git_hash" in record


def test_unknown_key_and_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m0\nlearning_rate: 0.5\n")
    assert main(["train", "test-echo", "--config", str(cfg), "--output", str(tmp_path / "o")]) == 2
    assert "unknown key 'learning_rate'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="starting model is required"):
        load_train_config(EchoConfig, None, ["steps=2"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_train_config(EchoConfig, None, ["model=x", "steps=abc"])
    # YAML 1.1 reads "1e-4" (no dot) as a string; a float field still takes it, and still refuses words
    assert load_train_config(EchoConfig, None, ["model=x", "lr=1e-4"]).lr == 1e-4
    cfg.write_text("model: m0\nlr: 3E-5\n")
    assert load_train_config(EchoConfig, cfg, []).lr == 3e-5
    with pytest.raises(ConfigError, match="expected a number, got 'fast'"):
        load_train_config(EchoConfig, None, ["model=x", "lr=fast"])
    assert main(["train", "no-such", "--output", str(tmp_path / "o")]) == 2
    assert "unknown trainer 'no-such'" in capsys.readouterr().err
