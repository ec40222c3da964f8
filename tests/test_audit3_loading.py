"""A damaged tokenizer file is a one-line error naming it; training configs derive head-dependent defaults again in a
``dataclasses.replace`` copy."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from rerank.config import from_dict, to_dict
from rerank.errors import ConfigError
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from rerank.trainers.sft_trainer import SFTTrainConfig

# --- a damaged tokenizer file ----------------------------------------------------------------------------------------

_HEADS = [("cross-encoder", "tiny_bert_dir"), ("yes-no", "tiny_llm_dir")]


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _damaged(source: Path, folder: Path, name: str, damage: str | None = None) -> Path:
    """A copy of model folder ``source`` whose tokenizer file ``name`` is cut in half, or holds ``damage``."""
    shutil.copytree(source, folder)
    if damage is None:
        _truncate(folder / name)
    else:
        (folder / name).write_text(damage)
    return folder


def _rank(run_cli: Any, tmp_path: Path, method: str, model: Path) -> tuple[int, list[str]]:
    docs = tmp_path / "in.jsonl"
    docs.write_text(json.dumps({"query": "q", "docs": ["a b", "c d"]}) + "\n")
    rc, _, err = run_cli("rank", "--reranker", method, "--model", model, "--input", docs,
                         "--output", tmp_path / "out.jsonl")
    return rc, [ln for ln in err.splitlines() if ln.strip()]


@pytest.mark.parametrize(("method", "fixture"), _HEADS)
@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_a_truncated_tokenizer_file_is_one_line_naming_it(method: str, fixture: str, name: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest, run_cli: Any) -> None:
    model = _damaged(request.getfixturevalue(fixture), tmp_path / "model", name)
    rc, lines = _rank(run_cli, tmp_path, method, model)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {model / name}: not valid JSON (") and "line " in lines[0], lines
    assert "tokenizer is damaged" in lines[0]
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(("name", "damage", "problem"), [
    ("special_tokens_map.json", '{"pad_token": "[PA', "not valid JSON (Unterminated string"),
    ("tokenizer.json", "\udcff\udcfe", "not valid JSON ("),  # not UTF-8
    ("tokenizer.json", "{}", "no key 'model'"),
    ("tokenizer.json", '{"model": 3, "added_tokens": []}', "'model' holds a JSON int, not an object"),
    ("tokenizer_config.json", "[]", "holds a JSON list, not an object"),
])
def test_a_damaged_tokenizer_file_is_one_line_naming_it(name: str, damage: str, problem: str, tmp_path: Path,
                                                        tiny_bert_dir: Path, run_cli: Any) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    (model / name).write_bytes(damage.encode("utf-8", "surrogateescape"))
    rc, lines = _rank(run_cli, tmp_path, "cross-encoder", model)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {model / name}: {problem}"), lines


@pytest.mark.parametrize("command", ["eval", "serve"])
def test_eval_and_serve_name_the_damaged_tokenizer_file(command: str, tmp_path: Path, tiny_llm_dir: Path,
                                                        tiny_beir_dir: Path, run_cli: Any) -> None:
    model = _damaged(tiny_llm_dir, tmp_path / "model", "tokenizer.json")
    where = (["--dataset", tiny_beir_dir, "--retriever", "bm25", "--top-k", "3", "--output", tmp_path / "out"]
             if command == "eval" else ["--port", "0"])
    rc, _, err = run_cli(command, "--reranker", "yes-no", "--model", model, *where)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and f"{model / 'tokenizer.json'}: not valid JSON" in lines[0], lines


def test_the_python_api_names_the_damaged_file(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from rerank import Reranker

    model = _damaged(tiny_bert_dir, tmp_path / "model", "tokenizer.json")
    with pytest.raises(ConfigError, match="tokenizer.json: not valid JSON"):
        Reranker.load("cross-encoder", model=str(model))


def test_an_intact_folder_is_parsed_once(tmp_path: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """A folder checked twice (the CLI's check, then the loader's) parses its tokenizer once; a file written since
    is parsed again."""
    from rerank import models

    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    parsed: list[int] = []
    loads = json.loads
    monkeypatch.setattr(models.json, "loads", lambda data: parsed.append(len(data)) or loads(data))
    models.check_model_path(model)
    models.check_model_path(model)
    assert len(parsed) == 2  # tokenizer.json and tokenizer_config.json, once each
    _truncate(model / "tokenizer.json")
    with pytest.raises(ConfigError, match="tokenizer.json: not valid JSON"):
        models.check_model_path(model)


# --- dataclasses.replace of a training config ------------------------------------------------------------------------


def _sft(**kw: Any) -> SFTTrainConfig:
    return SFTTrainConfig(**{"model": "m", "head": "erank", "data": {"path": "t.jsonl"}, **kw})


def _grpo(**kw: Any) -> GRPOTrainConfig:
    return GRPOTrainConfig(**{"model": "m", "head": "erank", "data": {"path": "t.jsonl"}, "batch_size": 40, **kw})


@pytest.mark.parametrize(("first", "then"), [
    ({"head": "yes-no"}, {"head": "first"}),  # loss lm -> lm+ranknet
    ({"head": "first"}, {"head": "yes-no"}),  # lm+ranknet was refused for yes-no
    ({"head": "cross-encoder"}, {"head": "erank"}),  # loss bce, max_length 0, the head's max_query_tokens
    ({"head": "erank"}, {"head": "cross-encoder"}),
    ({"head": "cross-encoder", "loss": "mnrl", "data": {"beir": "scifact"}}, {"loss": "bce"}),  # in_batch_negatives 4
    ({"head": "cross-encoder", "loss": "listwise-kl"}, {"loss": "bce"}),  # group_size, distill_temperature, ...
])
def test_sft_replace_derives_the_new_heads_defaults(first: dict[str, Any], then: dict[str, Any]) -> None:
    built = _sft(**first)
    copied = dataclasses.replace(built, **then)
    assert copied == _sft(**{**first, **then}), (to_dict(copied), to_dict(_sft(**{**first, **then})))


@pytest.mark.parametrize(("first", "then"), [
    ("erank", "grouprank"),  # num_generations 5 -> 8, learning_rate 1e-6 -> 1e-5
    ("grouprank", "erank"),
])
def test_grpo_replace_derives_the_new_heads_defaults(first: str, then: str) -> None:
    copied = dataclasses.replace(_grpo(head=first), head=then)
    assert copied == _grpo(head=then)
    assert (copied.num_generations, copied.learning_rate) == (_grpo(head=then).num_generations,
                                                             _grpo(head=then).learning_rate)


def test_grpo_replace_of_the_model_takes_the_new_models_prompt_options(tmp_path: Path) -> None:
    trained = tmp_path / "sft"
    trained.mkdir()
    (trained / "rerank.json").write_text(json.dumps({"format": "rerank-model", "kind": "reranker", "method": "first",
                                                     "options": {"max_doc_tokens": 100, "window": 20}}))
    inherited = _grpo(head="first", model=str(trained))
    assert (inherited.max_doc_tokens, inherited.window) == (100, 20)
    assert dataclasses.replace(inherited, model="m") == _grpo(head="first")
    assert dataclasses.replace(_grpo(head="first"), model=str(trained)) == inherited
    # the window FIRST's model gave is no option of yes-no (nor is the record, of another head, read)
    assert dataclasses.replace(inherited, head="yes-no") == _grpo(head="yes-no", model=str(trained))


def test_replace_keeps_the_values_the_user_gave() -> None:
    given = _sft(head="first", loss="lm", max_length=512, max_query_tokens=16)
    kept = dataclasses.replace(given, max_steps=3)
    assert (kept.loss, kept.max_length, kept.max_query_tokens) == ("lm", 512, 16)
    with pytest.raises(ConfigError, match="loss for yes-no must be one of"):
        dataclasses.replace(_sft(head="first", loss="lm+listnet"), head="yes-no")
    assert dataclasses.replace(_sft(head="yes-no"), head="first", loss="lm+listnet").loss == "lm+listnet"
    grpo = dataclasses.replace(_grpo(head="erank", num_generations=4, learning_rate=3e-6), head="grouprank")
    assert (grpo.num_generations, grpo.learning_rate) == (4, 3e-6)
    listwise = dataclasses.replace(_sft(head="cross-encoder", loss="listwise-kl", group_size=4), max_steps=3)
    assert (listwise.group_size, listwise.distill_temperature) == (4, 1.0)


def test_the_derived_record_is_no_option(tmp_path: Path) -> None:
    """The run record is as before (the options only, each resolved), so a record written by an earlier version
    resumes, and a config file cannot set the private record."""
    from rerank.trainers.resume import check_same_run, config_differences

    for cls, build, head in ((SFTTrainConfig, _sft, "yes-no"), (GRPOTrainConfig, _grpo, "erank")):
        cfg = build(head=head)
        saved = json.loads(json.dumps(to_dict(cfg)))
        assert set(saved) == {f.name for f in dataclasses.fields(cls)}
        record = {"trainer": "sft" if cls is SFTTrainConfig else "grpo", "config": saved}
        (tmp_path / "rerank_train.json").write_text(json.dumps(record))
        assert check_same_run(tmp_path, record["trainer"], build(head=head)) == record
        loaded = from_dict(cls, saved)  # every option explicit, as a resumed run's record reads
        assert loaded == cfg and config_differences(saved, json.loads(json.dumps(to_dict(loaded))), loaded) == []
        with pytest.raises(ConfigError, match="_derived"):
            from_dict(cls, {**saved, "_derived": {}})
    first = _sft(head="first")
    copied = dataclasses.replace(_sft(head="yes-no"), head="first")
    saved = json.loads(json.dumps(to_dict(first)))
    assert config_differences(saved, json.loads(json.dumps(to_dict(copied))), copied) == []
