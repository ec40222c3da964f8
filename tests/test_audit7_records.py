"""Review CD of the plugin and template commits: a model folder's rerank.json never names code to import (finding 1),
a head declares the template keys it reads and a trained folder's recorded template loads as recorded (finding 2),
and a module that cannot be imported says how to make it importable (finding 5)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from rerank.errors import ConfigError
from rerank.heads import registry as heads_registry
from rerank.heads.base import Reranker
from rerank.methods.record import read_record, record_payload
from rerank.methods.yes_no.head import YesNoReranker
from rerank.prompts import load_template
from rerank.utils.registry import import_target

ROOT = Path(__file__).resolve().parents[1]

PAYLOAD = '''
import pathlib
pathlib.Path({marker!r}).write_text("code from the model folder ran")
from rerank.heads.base import Reranker, RerankerConfig


class H(Reranker):
    method = "test-a7-payload"
    config_class = RerankerConfig

    def score_candidates(self, query, candidates):
        return [0.0] * len(candidates)
'''



@pytest.fixture()
def downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A downloaded folder ``dl_model`` holding ``payload.py`` and a rerank.json naming ``dl_model.payload:H``, in the
    current folder, which is on ``sys.path`` (as for a script beside it, or ``python -m rerank``)."""
    folder = tmp_path / "dl_model"
    folder.mkdir()
    (folder / "payload.py").write_text(PAYLOAD.format(marker=str(tmp_path / "PWNED")))
    (folder / "config.json").write_text("{}")
    (folder / "rerank.json").write_text(json.dumps({"format": "rerank-model", "version": 1, "kind": "reranker",
                                                    "method": "dl_model.payload:H", "options": {}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("dl_model", "dl_model.payload"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return folder


def _not_run(folder: Path) -> None:
    assert not (folder.parent / "PWNED").exists() and "dl_model.payload" not in sys.modules


# ---------------------------------------------------------------- 1: a folder never chooses code to run


@pytest.mark.parametrize("how", ["folder as method", "model="])
def test_reranker_load_refuses_a_folder_naming_module_class(downloaded: Path, fresh: None, how: str) -> None:
    with pytest.raises(ConfigError) as e:
        Reranker.load("dl_model") if how == "folder as method" else Reranker.load(None, model="dl_model")
    message = str(e.value)
    assert "\n" not in message and "rerank.json" in message and "'dl_model.payload:H' is not a method name" in message
    _not_run(downloaded)


def test_rerank_eval_model_folder_naming_module_class_is_one_line(downloaded: Path, fresh: None, tiny_ds: Any,
                                                                    run_cli: Any) -> None:
    rc, out, err = run_cli("eval", "--dataset", tiny_ds.root, "--retriever", "bm25", "--model", "dl_model",
                           "--top-k", "3", "--output", downloaded.parent / "out")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not a method name" in err, err
    _not_run(downloaded)


def test_python_m_rerank_does_not_run_a_folders_module(downloaded: Path, tiny_ds: Any) -> None:
    done = subprocess.run([sys.executable, "-m", "rerank", "eval", "--dataset", str(tiny_ds.root), "--retriever",
                           "bm25", "--model", "dl_model", "--top-k", "3", "--output", "out"],
                          capture_output=True, text=True, timeout=120, cwd=downloaded.parent,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert "not a method name" in done.stderr
    assert not (downloaded.parent / "PWNED").exists()


@pytest.mark.parametrize("method", ["os:system", "../x", "a b", 5, ""])
def test_read_record_refuses_a_method_that_is_not_a_plain_name(tmp_path: Path, method: Any) -> None:
    (tmp_path / "rerank.json").write_text(json.dumps({"format": "rerank-model", "version": 1, "kind": "reranker",
                                                      "method": method, "options": {}}))
    with pytest.raises(ConfigError, match=r"rerank\.json: method .* is not a method name"):
        read_record(tmp_path)


def test_a_lookup_of_a_recorded_name_never_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   fresh: None) -> None:
    (tmp_path / "a7recmod.py").write_text(PAYLOAD.format(marker=str(tmp_path / "PWNED")))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "a7recmod", raising=False)
    with pytest.raises(ConfigError, match="unknown reranker 'a7recmod:H'"):
        heads_registry.get_reranker_class("a7recmod:H", paths=False)
    assert "a7recmod" not in sys.modules and not (tmp_path / "PWNED").exists()
    assert heads_registry.get_reranker_class("yes-no", paths=False) is YesNoReranker
    assert heads_registry.get_reranker_class("a7recmod:H").method == "test-a7-payload"  # the user's own choice


# ---------------------------------------------------------------- 2: template keys


class LangYesNo(YesNoReranker):
    method = "test-a7-lang-yes-no"
    template_keys: ClassVar[frozenset[str]] = frozenset({"answer_language"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lang = self.template.extra.get("answer_language", "en")


class UndeclaredYesNo(YesNoReranker):
    method = "test-a7-undeclared"


def _yes_no(**extra: Any) -> dict[str, Any]:
    out = {**load_template("yes_no").to_dict(), **extra}
    out.pop("path", None)
    return out


def test_a_subclass_head_declares_the_template_keys_it_reads(fresh: None, tiny_llm_dir: Path) -> None:
    heads_registry.register_reranker(LangYesNo.method, LangYesNo)
    heads_registry.register_reranker(UndeclaredYesNo.method, UndeclaredYesNo)
    template = _yes_no(name="mine", answer_language="fr")
    head = Reranker.load(LangYesNo.method, model=str(tiny_llm_dir), template=template)
    assert isinstance(head, LangYesNo) and head.lang == "fr"
    with pytest.raises(ConfigError) as e:
        Reranker.load(UndeclaredYesNo.method, model=str(tiny_llm_dir), template=template)
    message = str(e.value)
    assert message.startswith("test-a7-undeclared: ") and "the test-a7-undeclared head does not read" in message
    assert "'answer_language'" in message and "template_keys" in message and "\n" not in message


def test_a_trained_folders_recorded_stray_key_loads_with_one_warning_naming_rerank_json(
        tmp_path: Path, tiny_llm_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "trained"
    shutil.copytree(tiny_llm_dir, folder)
    recorded = _yes_no(description="yes/no prompt, v2 wording")
    (folder / "rerank.json").write_text(json.dumps(record_payload("yes-no", "reranker", {"template": recorded},
                                                                  "sft", "base")))
    with caplog.at_level(logging.WARNING):
        first = Reranker.load(str(folder))
        Reranker.load(str(folder))
    assert first.template.extra["description"] == "yes/no prompt, v2 wording"  # as the model was trained
    warned = [r.getMessage() for r in caplog.records if "description" in r.getMessage()]
    assert len(warned) == 1 and str(folder / "rerank.json") in warned[0] and "'description'" in warned[0], warned
    with pytest.raises(ConfigError, match="has key 'descripton', which the yes-no head does not read"):
        Reranker.load("yes-no", model=str(tiny_llm_dir), template=_yes_no(descripton="a typo of the user's"))


def test_a_recorded_template_the_head_cannot_render_names_rerank_json(tmp_path: Path, tiny_llm_dir: Path) -> None:
    folder = tmp_path / "trained"
    shutil.copytree(tiny_llm_dir, folder)
    broken = _yes_no(user="Is this relevant? {{ documnet }}")
    (folder / "rerank.json").write_text(json.dumps(record_payload("yes-no", "reranker", {"template": broken},
                                                                  "sft", "base")))
    with pytest.raises(ConfigError) as e:
        Reranker.load(str(folder))
    assert str(e.value).startswith(f"{folder / 'rerank.json'}: ") and "documnet" in str(e.value)


# ---------------------------------------------------------------- 5: how to make a module importable


def test_a_missing_module_says_the_console_script_does_not_add_the_current_folder() -> None:
    with pytest.raises(ConfigError) as e:
        import_target("a7_no_such_pkg.heads:Head", "reranker 'a7_no_such_pkg.heads:Head'")
    message = str(e.value)
    assert "there is no module 'a7_no_such_pkg'" in message and "PYTHONPATH" in message
    assert "`python -m rerank` does" in message and "\n" not in message


def test_a_worker_class_from_a_file_loaded_module_says_use_workers_1() -> None:
    from rerank.parallel import _import_in_worker

    with pytest.raises(ConfigError) as e:
        _import_in_worker("reranker", "from-file", "a7_fileplug:FromFile")
    message = str(e.value)
    assert "loaded from a file" in message and "use workers=1" in message and "\n" not in message
