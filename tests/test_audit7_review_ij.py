"""Review IJ of the template-probe commits: suite ``--resume`` keeps a user head whose template the probe cannot
tell (finding 1, and 5: a default read on a probe without ``__init__``), a ``module:Class`` reranker runs in a suite
and a leaderboard (finding 2), and only the template a trained folder's rerank.json records loads as recorded, not a
user's copy of it (finding 3)."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.eval.pipeline import EvalConfig
from rerank.heads import registry as heads_registry
from rerank.heads.base import Reranker
from rerank.methods.record import read_record, record_payload
from rerank.methods.yes_no.head import YesNoReranker
from rerank.prompts import head_template, load_template
from rerank.utils.registry import Registry
from tests.test_suites import _dl_folder

PACKAGE = "a7ij_heads"
HEADS = '''
from dataclasses import dataclass
from typing import Any

from rerank.heads.base import Reranker, RerankerConfig
from rerank.methods.yes_no.head import YesNoReranker
from rerank.prompts import PromptTemplate, load_template


class OwnPrompt(Reranker):
    """A head of no method that sets its own template in __init__ (its config takes none)."""
    method = "a7ij-own"
    config_class = RerankerConfig
    ranked_inputs = frozenset({"query", "document"})

    def __init__(self, config=None):
        super().__init__(config)
        self.template = PromptTemplate(name="own", user="Q: {{ query }} D: {{ document }}")

    def score_candidates(self, query, candidates):
        return [float(len(c.doc.text)) for c in candidates]


@dataclass
class TemplatedConfig(RerankerConfig):
    template: Any = ""


class Templated(OwnPrompt):
    """A head of no method whose template option the probe reads."""
    method = "a7ij-templated"
    config_class = TemplatedConfig

    def __init__(self, config=None):
        Reranker.__init__(self, config)
        self.template = load_template(self.config.template or {"name": "t", "user": "{{ query }} {{ document }}"})


class ModelDefault(YesNoReranker):
    """A yes-no head whose default template reads what only __init__ sets."""
    method = "a7ij-model-default"

    def default_template(self):
        return "yes_no" if self.model_name else super().default_template()
'''


@pytest.fixture()
def heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The importable package ``a7ij_heads`` (its module ``heads``), in an empty reranker registry."""
    (tmp_path / "pkg" / PACKAGE).mkdir(parents=True)
    (tmp_path / "pkg" / PACKAGE / "__init__.py").write_text("")
    (tmp_path / "pkg" / PACKAGE / "heads.py").write_text(HEADS)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    monkeypatch.setattr(heads_registry, "RERANKERS", Registry(
        "reranker", fill=heads_registry._builtins, check=heads_registry._check, group="rerank.rerankers", paths=True,
        exclusive=True))
    yield f"{PACKAGE}.heads"
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def _dl(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for name in ("dl19-bm25-top100", "dl20-bm25-top100"):
        _dl_folder(data, name)
    return data


# ---------------------------------------------------------------- 1 and 5: a template the probe cannot tell


def test_suite_resume_keeps_a_user_head_that_sets_its_own_template(heads: str, tmp_path: Path, run_cli,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    heads_registry.register_reranker("a7ij-own", f"{heads}:OwnPrompt")
    args = ("eval", "--suite", "dl", "--data-root", _dl(tmp_path), "--reranker", "a7ij-own", "--top-k", "3",
            "--output", tmp_path / "o")
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    recorded = json.loads((tmp_path / "o" / "dl19-bm25-top100" / "metrics.json").read_text())
    assert recorded["provenance"]["template_input"]["name"] == "own"  # recorded, though the probe cannot tell it
    with caplog.at_level("INFO", logger="rerank.eval.suites"):
        rc, _, err = run_cli(*args, "--resume")
    assert rc == 0 and "keeps 2 of 2 members" in caplog.text, err


def test_suite_resume_still_refuses_a_template_of_other_content(heads: str, tmp_path: Path, run_cli) -> None:
    heads_registry.register_reranker("a7ij-templated", f"{heads}:Templated")
    data = _dl(tmp_path)

    def run(user: str, *more: str) -> tuple[int, str]:
        (tmp_path / "rc.yaml").write_text(json.dumps({"template": {"name": "t", "user": user}}))
        rc, _, err = run_cli("eval", "--suite", "dl", "--data-root", data, "--reranker", "a7ij-templated",
                             "--reranker-config", tmp_path / "rc.yaml", "--top-k", "3", "--output", tmp_path / "o",
                             *more)
        return rc, err

    assert run("{{ query }} / {{ document }}")[0] == 0
    assert run("{{ query }} / {{ document }}", "--resume")[0] == 0
    rc, err = run("Query: {{ query }} / {{ document }}", "--resume")
    assert rc == 2 and "(its content differs)" in err, err


def test_configured_template_of_a_default_reading_init_state_is_cannot_tell(heads: str) -> None:
    from rerank.eval.suites import reranker_template

    heads_registry.register_reranker("a7ij-model-default", f"{heads}:ModelDefault")
    cls = heads_registry.get_reranker_class("a7ij-model-default")
    assert cls.configured_template(from_dict(cls.config_class, {})) is None
    assert reranker_template(EvalConfig(dataset="d", reranker="a7ij-model-default")) is None
    given = cls.configured_template(from_dict(cls.config_class, {"template": "yes_no"}))  # told by the option
    assert given is not None and given.sha256() == load_template("yes_no").sha256()


# ---------------------------------------------------------------- 2: a module:Class reranker in a suite, a leaderboard


def test_a_module_class_reranker_runs_in_a_suite(heads: str, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "o"
    rc, _, err = run_cli("eval", "--suite", "dl", "--data-root", _dl(tmp_path), "--reranker", f"{heads}:OwnPrompt",
                         "--top-k", "3", "--output", out)
    assert rc == 0, err
    for member in ("dl19-bm25-top100", "dl20-bm25-top100"):
        assert json.loads((out / member / "metrics.json").read_text())["reranker"]["method"] == "a7ij-own"


def test_a_module_class_reranker_runs_in_a_leaderboard(heads: str, tmp_path: Path, tiny_beir_dir: Path,
                                                       run_cli) -> None:
    shutil.copytree(tiny_beir_dir, tmp_path / "data" / "tiny")
    cfg = tmp_path / "lb.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "module class", "published": False, "significance": {"samples": 100},
        "columns": [{"label": "tiny", "dataset": "tiny", "max_queries": 4, "top_k": 5}],
        "rows": [{"name": "own", "retriever": "bm25", "reranker": f"{heads}:OwnPrompt"}]}), encoding="utf-8")
    res = tmp_path / "res"
    rc, out, err = run_cli("leaderboard", "--config", cfg, "--data-root", tmp_path / "data", "--results-dir", res,
                           "--output-md", res / "lb.md")
    assert rc == 0 and "1 cells run" in out, err + out
    assert json.loads((res / "own" / "tiny" / "metrics.json").read_text())["reranker"]["method"] == "a7ij-own"


def test_a_given_reranker_matches_the_module_class_naming_its_class_only(heads: str) -> None:
    from rerank.eval.pipeline import _given_differs

    reranker = Reranker.load(f"{heads}:OwnPrompt")
    assert _given_differs(EvalConfig(dataset="d", reranker=f"{heads}:OwnPrompt"), reranker) == []
    assert _given_differs(EvalConfig(dataset="d", reranker=f"{heads}:Templated"), reranker)  # another class
    assert _given_differs(EvalConfig(dataset="d", reranker="test-shortest"), reranker)


# ---------------------------------------------------------------- 3: only the recorded template loads as recorded


def _yes_no(**extra: str) -> dict[str, str]:
    return {**load_template("yes_no").to_dict(), **extra}


@pytest.fixture()
def stray_folder(tmp_path: Path) -> Path:
    """A trained yes-no folder whose rerank.json records the yes_no template with a stray key ``description``."""
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "rerank.json").write_text(json.dumps(record_payload(
        "yes-no", "reranker", {"template": _yes_no(description="v2 wording")}, "sft", "base")))
    return folder


def test_a_users_copy_of_a_recorded_template_is_refused_after_the_folder_was_read(
        stray_folder: Path, tiny_llm_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    options = read_record(stray_folder)["options"]
    cfg = from_dict(YesNoReranker.config_class, options)  # the config's copy keeps the mark
    with caplog.at_level("WARNING"):
        probed = YesNoReranker.configured_template(cfg)
    assert probed is not None and probed.extra["description"] == "v2 wording"
    assert any(str(stray_folder / "rerank.json") in r.getMessage() for r in caplog.records)
    again = pickle.loads(pickle.dumps(cfg))  # as a worker gets it
    assert head_template(again.template, "yes-no", YesNoReranker).extra["description"] == "v2 wording"
    assert yaml.safe_load(yaml.safe_dump(dict(options["template"]))) == _yes_no(description="v2 wording")
    with pytest.raises(ConfigError, match="has key 'description', which the yes-no head does not read"):
        Reranker.load("yes-no", model=str(tiny_llm_dir), template=_yes_no(description="v2 wording"))
    changed = dict(options["template"])
    changed["user"] = changed["user"] + " "
    with pytest.raises(ConfigError, match="has key 'description'"):  # a recorded mapping changed is the user's own
        head_template(changed, "yes-no", YesNoReranker)


def test_a_refusal_of_a_users_template_names_no_unrelated_rerank_json(stray_folder: Path) -> None:
    read_record(stray_folder)
    with pytest.raises(ConfigError) as e:
        head_template(_yes_no(description="v2 wording"), "grouprank")
    assert "rerank.json" not in str(e.value) and str(e.value).startswith("grouprank: ")
