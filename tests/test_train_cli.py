"""`rerank train` conventions: registry by name, strict configs, --set overrides, the run record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from train_support import make_checkpoint, stand_in_model

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
    cfg.write_text(f"model: {stand_in_model(tmp_path / 'm0')}\nlr: 0.5\n")
    m1 = stand_in_model(tmp_path / "m1")
    out = tmp_path / "out"
    make_checkpoint(out, 2)  # --resume needs a complete checkpoint (tests/test_train_restarts.py)
    root = tmp_path / "d"  # --data-root must exist
    root.mkdir()
    rc = main(["train", "test-echo", "--config", str(cfg), "--output", str(out), "--set", "steps=7",
               "--set", f"model={m1}", "--data-root", str(root), "--resume"])
    assert rc == 0
    echo = json.loads((out / "echo.json").read_text())
    assert echo == {"lr": 0.5, "steps": 7, "resume": True, "data_root": str(root)}
    record = json.loads((out / "rerank_train.json").read_text())
    assert record["trainer"] == "test-echo" and record["config"]["model"] == str(m1)
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


def test_the_starting_model_is_checked_before_any_data_work(tmp_path: Path, run_cli,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`--set model=/nonexist/m` was found after BM25 negative mining over 809 queries, named as `--model` (which
    train does not have), and left rerank_train.json in --output."""

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("training started before the model was checked")

    monkeypatch.setattr("rerank.trainers.api.run_trainer", boom)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: all-MiniLM-L6-v2\nhead: cross-encoder\ndata: {beir: scifact}\n")
    out = tmp_path / "out"
    for model, needle in ((tmp_path / "nonexist" / "m", "does not exist"),
                          (tmp_path, "is a folder without a model in it")):
        rc, _, err = run_cli("train", "sft", "--config", cfg, "--output", out, "--set", f"model={model}")
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"error: model {model} {needle}") and "--model" not in err, err
        assert not out.exists()


def test_set_mistakes_name_the_override_not_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m0\nlr: 0.5\n")
    out = str(tmp_path / "o")
    for item, message in (("foo=1", "--set foo=1: unknown key 'foo' for EchoConfig"),
                          ("lr=abc", "--set lr=abc: expected a number, got 'abc'"),
                          ("steps=2.5", "--set steps=2.5: expected an integer")):
        assert main(["train", "test-echo", "--config", str(cfg), "--output", out, "--set", item]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and str(cfg) not in err and len(err.strip().splitlines()) == 1
    cfg.write_text("model: m0\nfoo: 1\n")  # what the file holds is still blamed on the file
    assert main(["train", "test-echo", "--config", str(cfg), "--output", out, "--set", "lr=0.1"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {cfg}: unknown key 'foo'")


def test_set_mistakes_in_nested_and_renamed_keys_and_checks() -> None:
    from rerank.trainers.sft_trainer import SFTTrainConfig

    with pytest.raises(ConfigError, match=r"^--set data\.foo=1: unknown key 'foo' for DataConfig"):
        load_train_config(SFTTrainConfig, None, ["model=m", "data.path=x", "data.foo=1"])
    with pytest.raises(ConfigError, match=r"^--set lr=1: key 'lr' is now 'learning_rate'"):
        load_train_config(SFTTrainConfig, None, ["model=m", "data.path=x", "lr=1"])
    with pytest.raises(ConfigError, match=r"^--set learning_rate=-1: learning_rate must be > 0"):
        load_train_config(SFTTrainConfig, None, ["model=m", "data.path=x", "learning_rate=-1"])
    with pytest.raises(ConfigError, match=r"^--set data\.path=\[1: invalid YAML value"):
        load_train_config(SFTTrainConfig, None, ["model=m", "data.path=[1"])
    for item in ("api_key=sk-secret", "data.api_key=sk-secret", "api_key=[sk-secret"):  # the override is quoted:
        with pytest.raises(ConfigError, match=r"^--set (data\.)?api_key=<redacted>: ") as err:  # never its secret
            load_train_config(SFTTrainConfig, None, ["model=m", "data.path=x", item])
        assert "sk-secret" not in str(err.value)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e400"])
def test_non_finite_numbers_are_refused(tmp_path: Path, value: str) -> None:
    """NaN passes every range check (``learning_rate <= 0`` is false for it): every float option refuses it."""
    from rerank.trainers.common import TrainSchedule
    from rerank.trainers.sft_trainer import SFTTrainConfig

    for key in ("learning_rate", "warmup_ratio", "epochs", "max_grad_norm", "data.dev_fraction"):
        with pytest.raises(ConfigError, match=rf"^--set {key}={value}: expected a finite number"):
            load_train_config(SFTTrainConfig, None, ["model=m", "data.path=x", f"{key}={value}"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: m\ndata: {{path: x}}\nlearning_rate: {value}\n")
    with pytest.raises(ConfigError, match=rf"^{cfg}\.learning_rate: expected a finite number"):
        load_train_config(SFTTrainConfig, cfg)
    number = float(value.replace(".nan", "nan").replace(".inf", "inf"))
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        TrainSchedule(learning_rate=number)


def test_schedule_reporting_and_window_options_are_checked_with_the_config() -> None:
    """Mistakes the trainer met only after the data and the model were loaded are refused when the config is read:
    eval_steps other than save_steps, a report_to integration whose package is absent, and window options given to
    a head that trains on no windows (they changed nothing)."""
    import importlib.util

    from rerank.config import from_dict
    from rerank.trainers.sft_trainer import SFTTrainConfig

    base = {"model": "m", "head": "erank", "data": {"path": "d.jsonl"}}
    with pytest.raises(ConfigError, match=r"eval_steps \(5\) must equal save_steps \(10\)"):
        from_dict(SFTTrainConfig, {**base, "eval_steps": 5, "save_steps": 10})
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="report_to 'wandb' needs the package 'wandb'"):
            from_dict(SFTTrainConfig, {**base, "report_to": ["wandb"]})
    for key, value in (("window", 4), ("window_order", "first_stage")):
        with pytest.raises(ConfigError, match=f"{key} is an option of the heads that train on windows .*first.*, "
                                              "not 'erank'"):
            from_dict(SFTTrainConfig, {**base, key: value})
        assert getattr(from_dict(SFTTrainConfig, {**base, "head": "first", key: value}), key) == value
    with pytest.raises(ConfigError, match="unknown key 'merge'"):
        from_dict(SFTTrainConfig, {**base, "lora": {"enabled": True, "merge": False}})
    for lora, match in (({"r": 0}, r"lora.r must be >= 1"), ({"alpha": 0}, r"lora.alpha must be > 0"),
                        ({"dropout": 1.0}, r"lora.dropout must be in \[0, 1\)"),
                        ({"target_modules": []}, "lora.target_modules must be a non-empty list")):
        with pytest.raises(ConfigError, match=match):  # peft refused these only after the model loaded, or never
            from_dict(SFTTrainConfig, {**base, "lora": {"enabled": True, **lora}})
