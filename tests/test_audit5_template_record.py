"""A run's record keeps its prompt template in full and its hash with the formula's version (audit s42, review F
findings 2 and 3): a resume refused because the head's default changed names the rerank that started the run and
writes the run's own template, which ``--set template=…`` then resumes bit for bit; a hash written by the first,
unversioned formula is compared by that formula, not refused as a content change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from train_support import erank_workdir

import rerank.prompts as prompts
from rerank import __version__
from rerank.config import to_dict
from rerank.prompts import load_template
from rerank.trainers import sft
from rerank.trainers.base import build_train_config
from rerank.trainers.resume import (
    TEMPLATE_COPY_KEY,
    TEMPLATE_HASH_VERSION,
    TEMPLATE_HASH_VERSION_KEY,
    TEMPLATE_KEY,
    TEMPLATE_PIN,
    LossLedger,
    record_differences,
    run_template,
    template_record,
)
from rerank.trainers.sft_trainer import SFTTrainConfig


def _one_error_line(err: str) -> str:
    """The CLI's error: exactly one line on stderr starting ``error:`` (log lines aside), no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("rerank:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _sets(work: Path, max_steps: int, **more: Any) -> dict[str, Any]:
    """An erank SFT with ``template`` unset (the head's default) on the tiny workdir."""
    return {"model": str(work / "llm"), "head": "erank", "data.path": str(work / "train.jsonl"),
            "data.dev_fraction": 0.0, "max_doc_tokens": 16, "max_query_tokens": 8, "batch_size": 4,
            "max_steps": max_steps, "save_steps": 2, "learning_rate": 0.001, **more}


def _config(sets: dict[str, Any]) -> dict[str, Any]:
    cfg = {k: v for k, v in sets.items() if not k.startswith("data.")}
    return {**cfg, "data": {"path": sets["data.path"], "dev_fraction": sets["data.dev_fraction"]}}


def _args(sets: dict[str, Any], out: Path, *more: str) -> list[str]:
    return ["train", "sft", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")], "--output", str(out), *more]


def _weights(folder: Path) -> dict[str, Any]:
    return {str(f.relative_to(folder)): load_file(str(f)) for f in sorted(folder.rglob("*.safetensors"))}


def test_a_changed_default_names_the_version_and_its_pinned_template_resumes_bit_exactly(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """finding 2: after the head's shipped default changed (a rerank upgrade), --resume said "resume with the run's
    config", which the user already gave, and nothing kept the old template; now the record holds it, the refusal
    names the version that started the run and writes the template, and that --set resumes to the uninterrupted
    run's weights."""
    work = erank_workdir(tmp_path, data_seed=3)
    sft(_config(_sets(work, 4)), work / "full")
    out = work / "run"

    def stop_after_two(self: LossLedger, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 2:
            raise KeyboardInterrupt  # an interrupted run: checkpoint-2 written, no model

    with monkeypatch.context() as m:
        m.setattr(LossLedger, "on_save", stop_after_two, raising=False)
        with pytest.raises(KeyboardInterrupt):
            sft(_config(_sets(work, 4)), out)
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "model").exists()
    record = json.loads((out / "rerank_train.json").read_text())
    started = load_template("erank").to_dict()
    assert record[TEMPLATE_COPY_KEY] == started and record[TEMPLATE_HASH_VERSION_KEY] == TEMPLATE_HASH_VERSION
    (out / "rerank_train.json").write_text(json.dumps({**record, "rerank_version": "0.0.9"}))

    shipped = prompts.shipped_templates()  # the upgrade: the shipped default's wording changes
    changed = tmp_path / "erank.yaml"
    changed.write_text(shipped["erank"].read_text().replace("relevance", "careful relevance"))
    monkeypatch.setattr(prompts, "shipped_templates", lambda: {**shipped, "erank": changed})
    pin = out / TEMPLATE_PIN
    rc, stdout, err = run_cli(*_args(_sets(work, 4), out, "--check"))
    line = _one_error_line(err)
    assert rc == 2 and "state:" not in stdout and not pin.exists()  # a check writes nothing
    assert f"a --resume without --check writes it to {pin}" in line

    rc, _, err = run_cli(*_args(_sets(work, 4), out, "--resume"))
    line = _one_error_line(err)
    assert rc == 2 and not (out / "checkpoints" / "checkpoint-4").exists()
    assert "template: the erank head's default template 'erank' is not the template the run trained on" in line
    assert f"the head's default template changed since rerank 0.0.9 started the run; this is {__version__})" in line
    assert f"resume with the run's config and --set template={pin} (the template the run started with, just " \
        "written there from its record), or start again with --overwrite" in line
    assert load_template(str(pin)).to_dict() == started
    assert not list(out.glob(f".{TEMPLATE_PIN}.*"))  # written atomically: no staging file left

    rc, stdout, err = run_cli(*_args(_sets(work, 4), out, "--check", "--resume"))
    assert rc == 2 and f"and --set template={pin} (the template the run started with, there from its record)" in err

    pinned = _sets(work, 4, template=str(pin))
    rc, stdout, err = run_cli(*_args(pinned, out, "--check"))
    assert rc == 0 and stdout.endswith("state: resume\n"), err
    rc, _, err = run_cli(*_args(pinned, out, "--resume"))
    assert rc == 0, err
    full, resumed = _weights(work / "full" / "model"), _weights(out / "model")
    assert full and full.keys() == resumed.keys()
    for name, tensors in full.items():
        assert tensors.keys() == resumed[name].keys()
        assert all(tensors[k].equal(resumed[name][k]) for k in tensors), name
    assert json.loads((out / "model" / "rerank.json").read_text())["options"]["template"]["system"] == \
        started["system"]

    rc, stdout, err = run_cli(*_args(_sets(work, 4), out, "--check"))  # the finished run, default still changed
    assert rc == 2 and "was trained with other options" in _one_error_line(err) and f"--set template={pin}" in err
    rc, stdout, err = run_cli(*_args(pinned, out, "--check"))
    assert rc == 0 and stdout.endswith("state: done\n"), err


def _v1(template: Any) -> str:
    """The first, unversioned formula (541e718 to 6bfb9e1): the template's ``to_dict`` with its name."""
    text = json.dumps(template.to_dict(), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _config_with(tmp_path: Path, template: str = "") -> SFTTrainConfig:
    (tmp_path / "llm").mkdir(exist_ok=True)
    return build_train_config(SFTTrainConfig, {"model": str(tmp_path / "llm"), "head": "erank", "template": template,
                                               "data": {"path": str(tmp_path / "train.jsonl")}})


def test_the_hash_names_its_formula_and_an_unversioned_one_is_compared_by_the_first(tmp_path: Path) -> None:
    """finding 3: the formula changed (the name left out) with no mark, so a record of the first formula was refused
    as "its content differs" for the same, untouched template file."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(prompts.shipped_templates()["erank"].read_text().replace("name: erank", "name: mine"))
    cfg = _config_with(tmp_path, str(mine))
    record = {"trainer": "sft", "config": to_dict(cfg), **template_record(cfg)}
    assert record[TEMPLATE_HASH_VERSION_KEY] == TEMPLATE_HASH_VERSION == 2
    assert record[TEMPLATE_COPY_KEY] == load_template(str(mine)).to_dict()

    old = {k: v for k, v in record.items() if k not in (TEMPLATE_HASH_VERSION_KEY, TEMPLATE_COPY_KEY)}
    old[TEMPLATE_KEY] = _v1(load_template(str(mine)))  # 541e718: the option's template, name included
    assert record_differences(old, cfg) == []
    unset = _config_with(tmp_path)  # e29852e: the template trained on (here the head's default), name included
    old_unset = {"trainer": "sft", "config": to_dict(unset), TEMPLATE_KEY: _v1(run_template(unset)[0])}
    assert record_differences(old_unset, unset) == []

    mine.write_text(mine.read_text().replace("relevance", "pirate relevance"))
    diffs = record_differences(old, cfg)
    assert len(diffs) == 1 and f"template: {mine} is not the template the run trained on (its content differs" \
        in diffs[0] and "by the hash formula of the rerank that started the run" in diffs[0]


def test_a_hash_of_an_unknown_formula_compares_the_recorded_template(tmp_path: Path) -> None:
    """A record from a later rerank whose formula this one does not know is compared by the template it holds in
    full; without that copy it is refused, naming the formula and the rerank that started it."""
    cfg = _config_with(tmp_path)
    record = {"trainer": "sft", "config": to_dict(cfg), **template_record(cfg), TEMPLATE_HASH_VERSION_KEY: 3,
              TEMPLATE_KEY: "f" * 64, "rerank_version": "9.0"}
    assert record_differences(record, cfg) == []
    other = {**record, TEMPLATE_COPY_KEY: {**record[TEMPLATE_COPY_KEY], "system": "You are a pirate."}}
    diffs = record_differences(other, cfg)
    assert len(diffs) == 1 and "is not the template the run trained on (its content differs" in diffs[0]
    del record[TEMPLATE_COPY_KEY]
    assert record_differences(record, cfg) == [
        f"template: the run's record hashes its template by formula 3, which rerank {__version__} does not know: "
        "check or resume it with the rerank that started it (9.0)"]
