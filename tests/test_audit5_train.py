"""LLM training lifecycle and prompt-template files (audit s42, llmtrain findings 1, 2, 4, 5, 6 and files finding 1):
a template file is read as a config is; a template that leaves out what the head ranks by is refused at load; the
template is compared by content on ``--resume`` and ``--check``; a LoRA ``OUTPUT/adapter`` is refused as a model;
GRPO from another head's SFT says its prompt options are not used; ``base_model`` is never a local path."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from train_support import ERANK_TPL, erank_workdir

import rerank.methods as methods_pkg
import rerank.prompts as prompts
from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.methods import all_methods
from rerank.methods.record import record_payload
from rerank.prompts import head_template
from rerank.trainers import sft
from rerank.trainers.artifacts import write_model_artifacts
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from tests.method_support import add_method_package, forget_method_packages, kept_registries

YES_NO = Path(methods_pkg.__file__).parent / "yes_no" / "yes_no.yaml"
ERANK = Path(methods_pkg.__file__).parent / "erank" / "erank.yaml"
TEMPLATE_KEY = "template_sha256"  # rerank.trainers.resume.TEMPLATE_KEY


def _one_error_line(err: str) -> str:
    """The CLI's error: exactly one line on stderr starting ``error:`` (log lines aside), no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("rerank:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


# --- files#1: a template file is read by the config reader -----------------------------------------------------------


@pytest.mark.parametrize(("tail", "expected"), [
    (b'positive: "no"\nnegative: "yes"\n', r"dupkey\.yaml:\d+: invalid YAML: duplicate key 'positive' \(first at line"),
    (b"# caf\xe9\n", r"dupkey\.yaml: invalid YAML: .*(utf-8|continuation byte)"),
    (b'user: "unterminated\n', r"dupkey\.yaml:\d+: invalid YAML"),
])
def test_a_template_file_with_a_duplicate_key_bad_yaml_or_latin1_is_one_line(
        tail: bytes, expected: str, tmp_path: Path, tiny_llm_dir: Path, run_cli) -> None:
    """The duplicate key was read silently (the last value won: the yes/no answer swapped, the ranking reversed);
    invalid YAML was an 80-line traceback (exit 1), a Latin-1 byte a message naming no file."""
    bad = tmp_path / "dupkey.yaml"
    bad.write_bytes(YES_NO.read_bytes() + tail)
    (tmp_path / "in.jsonl").write_text(json.dumps({"query": "q", "docs": ["a", "b"]}) + "\n")
    rc, _, err = run_cli("rank", "--reranker", "yes-no", "--model", tiny_llm_dir, "--reranker-set",
                         f"template={bad}", "--input", tmp_path / "in.jsonl", "--output", tmp_path / "out.jsonl")
    assert rc == 2
    assert re.search(expected, _one_error_line(err)), err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_folder_as_template_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"t\.yaml is not a file"):
        head_template(str(tmp_path / "t.yaml"), "yes-no")


# --- llmtrain#1: a template must read what the head ranks by ---------------------------------------------------------


def _pyfmt(folder: Path) -> Path:
    """erank.yaml with the Python-style slip: ``{query}`` / ``{document}`` (Jinja2 keeps them as text)."""
    path = folder / "pyfmt.yaml"
    path.write_text(ERANK.read_text().replace("{{ query }}", "{query}").replace("{{ document }}", "{document}"))
    return path


def test_a_python_style_template_is_refused_with_the_jinja_spelling(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^erank: template .*pyfmt\.yaml never reads document, query, which the "
                                          r"erank head ranks by .*write \{\{ document \}\}, \{\{ query \}\}$"):
        head_template(str(_pyfmt(tmp_path)), "erank")


def test_a_template_without_the_document_is_refused_at_check_and_load(tmp_path: Path, tiny_llm_dir: Path,
                                                                       run_cli) -> None:
    """--check said `state: train`, training ran, and the model gave every document the same score."""
    from rerank.heads.base import Reranker

    erank_workdir(tmp_path, data_seed=1)
    nodoc = tmp_path / "nodoc.yaml"
    nodoc.write_text(ERANK_TPL.replace("\\nD: {{ document }}", ""))
    rc, out, err = run_cli("train", "sft", "--set", f"model={tmp_path / 'llm'}", "--set", "head=erank",
                           "--set", f"data.path={tmp_path / 'train.jsonl'}", "--set", f"template={nodoc}",
                           "--output", tmp_path / "out", "--check")
    assert rc == 2 and "state:" not in out
    assert "never reads document" in _one_error_line(err) and "add {{ document }}" in err
    with pytest.raises(ConfigError, match="never reads document"):
        Reranker.load("erank", model=str(tiny_llm_dir), template=str(nodoc), device="cpu")
    listwise = {"name": "lw", "user": "Rank these for the query.\n{{ passages }}"}
    with pytest.raises(ConfigError, match=r"^listwise: template 'lw' \(inline\) never reads query"):
        head_template(listwise, "listwise")


def test_every_shipped_template_reads_what_its_head_ranks_by() -> None:
    needs = {}
    for m in all_methods().values():
        for t in m.templates:
            assert head_template(Path(t).stem, m.name).name == Path(t).stem
        if m.templates:
            needs[m.name] = prompts._method_needs(m.name)
    assert needs["erank"] == needs["yes-no"] == {"query", "document"}
    assert needs["listwise"] == needs["grouprank"] == {"query", "passages"}  # the count (num) is no ranked input
    assert needs["duot5"] == {"query", "document0", "document1"}


DOCJUDGE_YAML = 'name: docjudge\nuser: "Is this document well written?\\n{{ document }}"\npositive: "yes"\n' \
                'negative: "no"\n'


@pytest.fixture
def docjudge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A contributed method (the yes-no pieces) whose own template reads the document and no query."""
    root = tmp_path / "extra_methods"
    (root / "docjudge").mkdir(parents=True)
    monkeypatch.setattr(methods_pkg, "__path__", [*methods_pkg.__path__, str(root)])
    (root / "docjudge" / "__init__.py").write_text(
        "from rerank.methods.base import Method\n"
        "METHOD = Method(name='docjudge', kind='reranker', package=__name__, summary='judge',\n"
        "                head='rerank.methods.docjudge.head:Judge', templates=('docjudge.yaml',))\n")
    (root / "docjudge" / "head.py").write_text("from rerank.methods.yes_no.head import YesNoReranker\n"
                                               "class Judge(YesNoReranker):\n    method = 'docjudge'\n")
    (root / "docjudge" / "docjudge.yaml").write_text(DOCJUDGE_YAML)
    added: list[str] = []
    with kept_registries():
        add_method_package(monkeypatch, added, "docjudge")
        yield "docjudge"
    forget_method_packages(added)
    prompts._method_needs.cache_clear()
    prompts._method_variables.cache_clear()


def test_a_head_whose_own_templates_read_no_query_needs_none(docjudge: str, tmp_path: Path) -> None:
    """What a head needs is what its own templates all read: no name of a method in the shared check."""
    mine = {"name": "mine", "user": "Rate the writing: {{ document }}", "positive": "yes", "negative": "no"}
    assert prompts._method_needs(docjudge) == {"document"}
    assert head_template(mine, docjudge).name == "mine"
    with pytest.raises(ConfigError, match="never reads query"):
        head_template(mine, "yes-no")
    with pytest.raises(ConfigError, match="never reads document"):
        head_template({**mine, "user": "Rate it."}, docjudge)


# --- llmtrain#2: the template is compared by content -----------------------------------------------------------------


def _sft_config(work: Path, template: Path | str, max_steps: int = 2) -> dict[str, Any]:
    return {"model": str(work / "llm"), "head": "erank", "template": str(template),
            "data": {"path": str(work / "train.jsonl")}, "max_doc_tokens": 16, "max_query_tokens": 8,
            "batch_size": 4, "max_steps": max_steps, "save_steps": 2, "learning_rate": 1e-3}


def _train_args(cfg: dict[str, Any], out: Path, *more: str) -> list[str]:
    sets = [f"model={cfg['model']}", "head=erank", f"template={cfg['template']}",
            f"data.path={cfg['data']['path']}", "max_doc_tokens=16", "max_query_tokens=8", "batch_size=4",
            f"max_steps={cfg['max_steps']}", "save_steps=2", "learning_rate=0.001"]
    return ["train", "sft", *[a for s in sets for a in ("--set", s)], "--output", str(out), *more]


def test_an_edited_template_is_a_config_change_for_resume_and_check(tmp_path: Path, run_cli,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Steps 1-10 trained on one prompt and 11-30 on another, and --check said `state: done` after an edit."""
    work = erank_workdir(tmp_path, data_seed=2)
    tpl = work / "erank.yaml"
    cfg = _sft_config(work, tpl)
    out = work / "run"
    sft(cfg, out)
    record = json.loads((out / "rerank_train.json").read_text())
    assert len(record[TEMPLATE_KEY]) == 64
    rc, stdout, err = run_cli(*_train_args(cfg, out, "--check"))
    assert rc == 0 and stdout.endswith("state: done\n"), err
    moved = work / "same.yaml"  # the same template under another path is no change
    moved.write_text(tpl.read_text())
    rc, stdout, err = run_cli(*_train_args({**cfg, "template": str(moved)}, out, "--check"))
    assert rc == 0 and stdout.endswith("state: done\n"), err

    tpl.write_text(tpl.read_text().replace("Score 0-10:", "You are a pirate. Score 0-10:"))
    rc, stdout, err = run_cli(*_train_args(cfg, out, "--check"))
    assert rc == 2 and "state:" not in stdout
    line = _one_error_line(err)
    assert "was trained with other options" in line and f"template: {tpl} is not the template the run trained " \
        "on (its content differs" in line
    (out / "model").rename(work / "model-aside")  # an interrupted run: checkpoints, no model
    for extra in (["--check", "--resume"], ["--resume"]):
        rc, stdout, err = run_cli(*_train_args({**cfg, "max_steps": 4}, out, *extra))
        assert rc == 2 and "state:" not in stdout, err
        assert "--resume: the config differs" in _one_error_line(err) and "its content differs" in err
    assert not (out / "checkpoints" / "checkpoint-4").exists()

    del record[TEMPLATE_KEY]  # a run recorded before the hash: compared by path as then, saying so
    (out / "rerank_train.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.resume"):
        rc, stdout, err = run_cli(*_train_args({**cfg, "max_steps": 4}, out, "--check", "--resume"))
    assert rc == 0 and stdout.endswith("state: resume\n"), err
    assert "records no hash of the template" in caplog.text and "compared by its path only" in caplog.text


# --- llmtrain#4: OUTPUT/adapter is not a model -----------------------------------------------------------------------


def _lora_output(out: Path) -> Path:
    """A LoRA run's output as rerank train leaves it: model/ (merged, tokenizer) and adapter/ (the adapter alone)."""
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA",
                                                                     "base_model_name_or_path": "/abs/llm"}))
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    return out / "adapter"


def test_a_lora_adapter_folder_is_refused_pointing_at_the_merged_model(tmp_path: Path, run_cli) -> None:
    """--check said `state: train`; training then failed on a tokenizer library the folder never needed."""
    adapter = _lora_output(tmp_path / "lora-sft")
    erank_workdir(tmp_path, data_seed=3)
    rc, out, err = run_cli("train", "grpo", "--set", f"model={adapter}", "--set", "head=erank", "--set",
                           f"data.path={tmp_path / 'train.jsonl'}", "--set", "batch_size=20",
                           "--output", tmp_path / "grpo", "--check")
    assert rc == 2 and "state:" not in out
    line = _one_error_line(err)
    assert f"model {adapter} is a LoRA adapter" in line and f"give the merged model {tmp_path / 'lora-sft' / 'model'}" \
        in line
    (tmp_path / "in.jsonl").write_text(json.dumps({"query": "q", "docs": ["a", "b"]}) + "\n")
    rc, _, err = run_cli("rank", "--reranker", "erank", "--model", adapter, "--input", tmp_path / "in.jsonl",
                         "--output", tmp_path / "ranked.jsonl")
    assert rc == 2 and "is a LoRA adapter" in _one_error_line(err)


# --- llmtrain#5: GRPO from another head's SFT ------------------------------------------------------------------------


def test_grpo_from_another_heads_model_warns_once_naming_both(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    sft_model = tmp_path / "first-sft" / "model"
    sft_model.mkdir(parents=True)
    (sft_model / "rerank.json").write_text(json.dumps(record_payload(
        "first", "reranker", {"window": 6, "template": {"name": "t", "user": "{{ query }} {{ passages }}"}},
        "sft", "Qwen/Qwen3-0.6B")))
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.grpo_trainer"):
        for _ in range(2):  # a run builds its config more than once
            cfg = from_dict(GRPOTrainConfig, {"model": str(sft_model), "head": "listwise", "batch_size": 8,
                                              "data": {"path": "t.jsonl"}})
    warned = [r.getMessage() for r in caplog.records if "trained as head" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "'first'" in warned[0] and "'listwise'" in warned[0] and "are not used" in warned[0]
    assert cfg.window == 10  # listwise's own default, not the recorded 6


# --- llmtrain#6: base_model is a hub id, never a path of the training machine ---------------------------------------


@dataclass
class _Data:
    path: str = "train.jsonl"


@dataclass
class _Config:
    model: str = ""
    data: _Data = field(default_factory=_Data)


def _artifacts(folder: Path, model: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    folder.mkdir(parents=True)
    write_model_artifacts(folder, method="erank", trainer="sft", config=_Config(model=model),
                          options={"max_doc_tokens": 16})
    text = (folder / "README.md").read_text()
    meta_text, body = text[4:].split("\n---\n", 1)
    return json.loads((folder / "rerank.json").read_text())["trained_with"], yaml.safe_load(meta_text), body


def test_base_model_records_a_hub_id_and_never_a_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`model=/abs/runs/tiny-llm` under the working folder was recorded as base_model `runs/tiny-llm`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tiny-llm").mkdir(parents=True)
    (tmp_path / "runs" / "tiny-llm" / "config.json").write_text("{}")
    trained, meta, body = _artifacts(tmp_path / "a", str(tmp_path / "runs" / "tiny-llm"))
    assert "base_model" not in trained and trained["base_model_local"] == "tiny-llm"
    assert "base_model" not in meta and "runs/tiny-llm" not in json.dumps(trained)
    assert "A local model folder, `tiny-llm`" in body.split("## Data")[0]

    trained, meta, _ = _artifacts(tmp_path / "b", "Qwen/Qwen3-0.6B")  # a hub id, as given
    assert trained["base_model"] == meta["base_model"] == "Qwen/Qwen3-0.6B"

    trained, meta, _ = _artifacts(tmp_path / "c", "b")  # a folder rerank trained: the base model it records
    assert trained["base_model"] == meta["base_model"] == "Qwen/Qwen3-0.6B" and "base_model_local" not in trained

    trained, meta, _ = _artifacts(tmp_path / "d", str(tmp_path / "a"))  # its local base model is named alike
    assert "base_model" not in meta and trained["base_model_local"] == "tiny-llm"
    trained, meta, _ = _artifacts(tmp_path / "e", str(tmp_path / "runs" / "tiny-llm" / "."))
    assert trained["base_model_local"] == "tiny-llm"

    snapshot = tmp_path / "hub" / "models--Qwen--Qwen3-0.6B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    trained, meta, _ = _artifacts(tmp_path / "f", str(snapshot))  # the hub cache: its hub id
    assert trained["base_model"] == meta["base_model"] == "Qwen/Qwen3-0.6B"
