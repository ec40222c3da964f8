"""Review CD findings 3 and 4: a leaderboard cell of an LLM head is keyed by the content of the template the head
renders (the one named, else the head's default), so a reworded default reruns its cells and naming the default is
the same key; ``rerank eval --suite ... --resume`` compares the recorded template fingerprint with that content (not a
template file's modification time) and names a template file it cannot find."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

import rerank.prompts
from rerank.data.datasets import Dataset
from rerank.eval.pipeline import EvalConfig
from rerank.prompts import load_template, shipped_templates
from tests.test_suites import _dl_folder


@pytest.fixture()
def reworded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``reworded(name)``: the shipped template ``name`` read from a copy whose user text says more, as a rerank
    whose default was reworded in a new release reads it."""

    def reword(name: str) -> None:
        copy = tmp_path / "pkg" / f"{name}.yaml"
        copy.parent.mkdir(exist_ok=True)
        data = load_template(name).to_dict()
        data["user"] = "Answer carefully.\n" + data["user"]
        copy.write_text(json.dumps(data))  # JSON is YAML
        files = {**shipped_templates(), name: copy}
        monkeypatch.setattr(rerank.prompts, "shipped_templates", lambda: files)

    return reword


# --- #3: a cell is keyed by the template its head renders ---------------------------------------------------------


@pytest.mark.parametrize("method", ["first", "yes-no"])
def test_a_default_template_row_is_keyed_by_the_default_s_content(tiny_ds: Dataset, reworded: Any,
                                                                  method: str) -> None:
    from rerank.eval.leaderboard import _cell_hash
    from rerank.methods import get_method

    default = get_method(method).default_template
    cfg = EvalConfig(dataset=str(tiny_ds.root), retriever="bm25", reranker=method, model="some/hub-id")
    named = dataclasses.replace(cfg, reranker_options={"template": default})
    inline = dataclasses.replace(cfg, reranker_options={"template": load_template(default).to_dict()})
    before = _cell_hash(cfg, tiny_ds.root)
    assert _cell_hash(named, tiny_ds.root) == before  # the same prompt, named or left to the default
    assert _cell_hash(inline, tiny_ds.root) == before
    reworded(default)
    assert _cell_hash(cfg, tiny_ds.root) != before
    assert _cell_hash(named, tiny_ds.root) == _cell_hash(cfg, tiny_ds.root)


def test_the_default_follows_the_options_and_template_texts_are_applied(tiny_ds: Dataset) -> None:
    from rerank.eval.leaderboard import _cell_hash
    from rerank.eval.suites import reranker_template

    cfg = EvalConfig(dataset=str(tiny_ds.root), retriever="bm25", reranker="listwise", model="some/hub-id")
    letters = dataclasses.replace(cfg, reranker_options={"identifiers": "letters"})
    assert reranker_template(letters).sha256() == load_template("listwise-letters").sha256()
    assert reranker_template(cfg).sha256() == load_template("listwise").sha256()
    qwen = dataclasses.replace(cfg, reranker="qwen3-reranker", reranker_options={"instruction": "Find code."})
    assert reranker_template(qwen).extra["instruction"] == "Find code."
    assert reranker_template(dataclasses.replace(cfg, reranker="cross-encoder")) is None  # no prompt: no stamp
    assert reranker_template(dataclasses.replace(cfg, reranker=None)) is None
    same = dataclasses.replace(cfg, reranker="cross-encoder")
    assert _cell_hash(same, tiny_ds.root) == _cell_hash(same, tiny_ds.root)


def test_a_trained_folder_s_recorded_template_is_the_one_stamped(tiny_ds: Dataset, tmp_path: Path) -> None:
    from rerank.eval.suites import reranker_template

    mine = {"name": "mine", "user": "Q: {{ query }} D: {{ document }} Relevant?", "positive": "yes",
            "negative": "no"}
    model = tmp_path / "trained"
    model.mkdir()
    (model / "rerank.json").write_text(json.dumps({"format": "rerank-model", "kind": "reranker",
                                                   "method": "yes-no", "options": {"template": mine}}))
    cfg = EvalConfig(dataset=str(tiny_ds.root), retriever="bm25", reranker="yes-no", model=str(model))
    assert reranker_template(cfg).sha256() == load_template(mine).sha256()


# --- #3 and #4: suite --resume compares the template's content ------------------------------------------------------


@pytest.fixture()
def dl_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    for name in ("dl19-bm25-top100", "dl20-bm25-top100"):
        _dl_folder(tmp_path / "data", name)
    return tmp_path / "data"


def _stamps(out: Path) -> dict[Path, int]:
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")}
    assert len(stamps) == 2
    return stamps


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_resume_compares_the_default_template_s_content(dl_data: Path, tiny_llm_dir: Path, tmp_path: Path,
                                                            run_cli: Any, reworded: Any) -> None:
    out = tmp_path / "out"
    args = ["eval", "--suite", "dl", "--data-root", dl_data, "--reranker", "yes-no", "--model", tiny_llm_dir,
            "--top-k", "3", "--output", out]
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    stamps = _stamps(out)
    rc, _, err = run_cli(*args, "--resume", "--reranker-set", "template=yes_no")  # the default, named
    assert rc == 0, err
    assert _stamps(out) == stamps
    reworded("yes_no")
    rc, _, err = run_cli(*args, "--resume")
    line = _error_line(err)
    assert rc == 2 and "template: sha256:" in line and "content differs" in line
    assert _stamps(out) == stamps


def test_cli_resume_keeps_a_template_file_touched_and_names_a_missing_one(dl_data: Path, tiny_llm_dir: Path,
                                                                          tmp_path: Path, run_cli: Any) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(json.dumps(load_template("yes_no").to_dict()))  # the default's content
    out = tmp_path / "out"
    args = ["eval", "--suite", "dl", "--data-root", dl_data, "--reranker", "yes-no", "--model", tiny_llm_dir,
            "--top-k", "3", "--output", out]
    rc, _, err = run_cli(*args, "--reranker-set", f"template={template}")
    assert rc == 0, err
    stamps = _stamps(out)
    later = time.time() + 60
    os.utime(template, (later, later))  # written again with the same bytes (a reinstall, a checkout)
    rc, _, err = run_cli(*args, "--resume", "--reranker-set", f"template={template}")
    assert rc == 0, err
    rc, _, err = run_cli(*args, "--resume")  # the file's content is the shipped default's
    assert rc == 0, err
    assert _stamps(out) == stamps
    rc, _, err = run_cli(*args, "--resume", "--reranker-set", f"template={tmp_path / 'gone.yaml'}")
    line = _error_line(err)
    assert rc == 2 and "gone.yaml" in line and "does not exist" in line


def test_a_record_without_a_template_fingerprint_is_not_kept_for_a_prompted_head() -> None:
    from rerank.eval.suites import _template_difference

    diff = _template_difference({"provenance": {}}, load_template("yes_no"))
    assert len(diff) == 1 and diff[0].startswith("template: not recorded -> sha256:")
    assert _template_difference({"provenance": {}}, None) == []
