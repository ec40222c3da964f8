"""A damaged tokenizer file is a one-line error naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from rerank.errors import ConfigError

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
