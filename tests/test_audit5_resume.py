"""The template a run trains on is what ``--resume`` and ``--check`` compare (audit s42, review A findings 1 and 3):
whatever gives it (the ``template`` option, the starting model's ``rerank.json``, the head's default) its content is
hashed into ``rerank_train.json``, so a starting model whose recorded prompt changed is a change of config, and a
byte-identical template under another file name is none."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from train_support import ERANK_TPL, erank_workdir

import rerank.prompts as prompts
from rerank.config import to_dict
from rerank.trainers import sft
from rerank.trainers.base import build_train_config
from rerank.trainers.resume import TEMPLATE_KEY, record_differences, template_record
from rerank.trainers.sft_trainer import SFTTrainConfig

UNNAMED_TPL = ERANK_TPL.replace("name: erank-tiny\n", "")  # its name is then its file's stem


def _one_error_line(err: str) -> str:
    """The CLI's error: exactly one line on stderr starting ``error:`` (log lines aside), no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("rerank:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _sets(model: Path | str, data: Path, template: Path | str = "", max_steps: int = 2) -> dict[str, Any]:
    return {"model": str(model), "head": "erank", "template": str(template), "data.path": str(data),
            "max_doc_tokens": 16, "max_query_tokens": 8, "batch_size": 4, "max_steps": max_steps, "save_steps": 2,
            "learning_rate": 0.001}


def _config(sets: dict[str, Any]) -> dict[str, Any]:
    cfg = {k: v for k, v in sets.items() if k != "data.path"}
    return {**cfg, "data": {"path": sets["data.path"]}}


def _args(sets: dict[str, Any], out: Path, *more: str) -> list[str]:
    return ["train", "sft", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")], "--output", str(out), *more]


def test_a_template_copied_to_another_file_name_is_no_change(tmp_path: Path, run_cli) -> None:
    """finding 3: the name a template without ``name:`` takes from its file was hashed, so the same bytes under
    another file name were refused as "its content differs"."""
    work = erank_workdir(tmp_path, data_seed=3)
    (work / "a").mkdir()
    (work / "b").mkdir()
    mine = work / "a" / "mine.yaml"
    mine.write_text(UNNAMED_TPL)
    sets = _sets(work / "llm", work / "train.jsonl", mine)
    out = work / "run"
    sft(_config(sets), out)
    assert len(json.loads((out / "rerank_train.json").read_text())[TEMPLATE_KEY]) == 64
    for copy in (work / "b" / "mine.yaml", work / "b" / "renamed.yaml"):
        shutil.copyfile(mine, copy)
        rc, stdout, err = run_cli(*_args({**sets, "template": copy}, out, "--check"))
        assert rc == 0 and stdout.endswith("state: done\n"), err
    edited = work / "b" / "edited.yaml"
    edited.write_text(UNNAMED_TPL.replace("Score 0-10:", "You are a pirate. Score 0-10:"))
    rc, stdout, err = run_cli(*_args({**sets, "template": edited}, out, "--check"))
    assert rc == 2 and "state:" not in stdout
    assert f"template: {edited} is not the template the run trained on (its content differs" in _one_error_line(err)


def test_a_template_inherited_from_the_starting_model_is_compared(tmp_path: Path, run_cli) -> None:
    """finding 1: with ``template`` unset the run trains on the starting model's recorded prompt, which was not
    hashed: after that prompt changed, --check said `state: done` and --resume trained on under the new prompt."""
    work = erank_workdir(tmp_path, data_seed=4)
    sft(_config(_sets(work / "llm", work / "train.jsonl", work / "erank.yaml")), work / "first")
    start = work / "start"
    shutil.copytree(work / "first" / "model", start)
    sets = _sets(start, work / "train.jsonl")  # template unset: the start model's own
    out = work / "run"
    sft(_config(sets), out)
    assert len(json.loads((out / "rerank_train.json").read_text())[TEMPLATE_KEY]) == 64
    rc, stdout, err = run_cli(*_args(sets, out, "--check"))
    assert rc == 0 and stdout.endswith("state: done\n"), err

    record = json.loads((start / "rerank.json").read_text())
    record["options"]["template"]["system"] = "You are a pirate. Ignore the document."
    (start / "rerank.json").write_text(json.dumps(record))
    rc, stdout, err = run_cli(*_args(sets, out, "--check"))
    assert rc == 2 and "state:" not in stdout
    line = _one_error_line(err)
    assert "was trained with other options" in line
    assert f"template: the template {start / 'rerank.json'} records is not the template the run trained on (its " \
        "content differs" in line
    (out / "model").rename(work / "model-aside")  # an interrupted run: checkpoints, no model
    for extra in (["--check", "--resume"], ["--resume"]):
        rc, stdout, err = run_cli(*_args({**sets, "max_steps": 4}, out, *extra))
        assert rc == 2 and "state:" not in stdout, err
        assert "--resume: the config differs" in _one_error_line(err) and "its content differs" in err
    assert not (out / "checkpoints" / "checkpoint-4").exists()


def _unset_config(tmp_path: Path) -> SFTTrainConfig:
    """An erank SFT config with ``template`` unset and a starting model without ``rerank.json``: the head's default."""
    (tmp_path / "llm").mkdir()
    return build_train_config(SFTTrainConfig, {"model": str(tmp_path / "llm"), "head": "erank",
                                               "data": {"path": str(tmp_path / "train.jsonl")}})


def test_the_heads_default_template_is_compared_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run with ``template`` unset records its head's default template: a default changed since (another rerank)
    is a change of config, naming it."""
    cfg = _unset_config(tmp_path)
    record = {"trainer": "sft", "config": to_dict(cfg), **template_record(cfg)}
    assert len(record[TEMPLATE_KEY]) == 64 and record_differences(record, cfg) == []
    shipped = prompts.shipped_templates()
    changed = tmp_path / "erank.yaml"
    changed.write_text(shipped["erank"].read_text().replace("relevance", "pirate relevance"))
    monkeypatch.setattr(prompts, "shipped_templates", lambda: {**shipped, "erank": changed})
    diffs = record_differences(record, cfg)
    assert len(diffs) == 1 and diffs[0].startswith("template: the erank head's default template 'erank' is not the "
                                                   "template the run trained on (its content differs")


def test_the_same_template_given_by_path_is_no_change_and_an_old_record_warns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The hash covers the template whatever gives it: naming a file that holds the default the run trained on is no
    change; a record without the hash (an older rerank) is compared by its options, with the warning."""
    cfg = _unset_config(tmp_path)
    record = {"trainer": "sft", "config": to_dict(cfg), **template_record(cfg)}
    same = tmp_path / "same.yaml"
    same.write_text(prompts.shipped_templates()["erank"].read_text())
    given = build_train_config(SFTTrainConfig, {**to_dict(cfg), "template": str(same)})
    assert record_differences(record, given) == []
    del record[TEMPLATE_KEY]
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.resume"):
        assert record_differences(record, cfg) == []
    assert "records no hash of the template the run trained on" in caplog.text
    assert "the erank head's default template 'erank' is not compared with it" in caplog.text
