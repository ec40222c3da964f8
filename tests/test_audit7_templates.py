"""Audit 7 (extend findings 1, 2, 3, 7; snippets finding 1): a prompt template is stamped by its content where
results are reused or recorded (leaderboard cells, suite members, ``metrics.json``); a template key no own template of
the method has and no text reads is refused naming the closest key; a user head declares the variables it ranks by
(``Reranker.ranked_inputs``); a relative ``template:`` in ``--reranker-config`` is read beside that file; a document
mapping whose ``id`` and ``_id`` disagree is refused by the Python API as by the file readers."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import pytest

from rerank.data.datasets import Dataset
from rerank.errors import ConfigError
from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.heads.base import Reranker, as_candidates
from rerank.heads.pointwise import PointwiseConfig, PointwiseLLMReranker
from rerank.methods import all_methods
from rerank.prompts import head_template, load_template

YES_NO = "name: mine\nuser: \"Q: {{ query }} D: {{ document }} Relevant?\"\npositive: \"yes\"\nnegative: \"no\"\n"
SWAPPED = YES_NO.replace('positive: "yes"', 'positive: "no"').replace('negative: "no"', 'negative: "yes"')


# --- #1: the template's content is stamped -----------------------------------------------------------------------


def test_a_leaderboard_cell_key_follows_the_template_file_s_content(tmp_path: Path, tiny_ds: Dataset) -> None:
    from rerank.eval.leaderboard import _cell_hash

    template = tmp_path / "t.yaml"
    template.write_text(YES_NO)
    cfg = EvalConfig(dataset=str(tiny_ds.root), retriever="bm25", reranker="yes-no", model="some/hub-id",
                     reranker_options={"template": str(template)})
    before = _cell_hash(cfg, tiny_ds.root)
    assert _cell_hash(cfg, tiny_ds.root) == before
    template.write_text(SWAPPED)  # the same path, the answer words swapped
    assert _cell_hash(cfg, tiny_ds.root) != before
    shipped = dataclasses.replace(cfg, reranker_options={"template": "yes_no"})
    inline = dataclasses.replace(cfg, reranker_options={"template": load_template("yes_no").to_dict()})
    assert _cell_hash(shipped, tiny_ds.root) == _cell_hash(inline, tiny_ds.root)  # one content, one key
    assert load_template("yes_no").sha256() == load_template(load_template("yes_no").to_dict()).sha256()


def test_the_stamp_is_training_s_template_digest() -> None:
    from rerank.trainers.resume import template_digest

    for name in ("yes_no", "listwise", "erank_reasoning"):
        assert load_template(name).sha256() == template_digest(load_template(name))


def test_a_given_reranker_s_template_content_is_compared_with_the_member_s_record() -> None:
    from rerank.eval.pipeline import template_input
    from rerank.eval.suites import _template_difference

    class Holder:
        template = load_template({"name": "a", "user": "{{ query }} {{ document }}", "positive": "yes"})

    recorded = {"provenance": {"template_input": template_input(Holder.template)}}
    assert _template_difference(recorded, Holder()) == []  # type: ignore[arg-type]
    Holder.template = load_template({"name": "a", "user": "{{ query }} {{ document }}", "positive": "no"})
    diff = _template_difference(recorded, Holder())  # type: ignore[arg-type]
    assert len(diff) == 1 and diff[0].startswith("template: sha256:") and "content differs" in diff[0]


def test_metrics_json_records_the_template_s_fingerprint(tmp_path: Path, tiny_ds: Dataset,
                                                         tiny_llm_dir: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(YES_NO)
    cfg = EvalConfig(dataset=str(tiny_ds.root), retriever="bm25", reranker="yes-no", model=str(tiny_llm_dir),
                     reranker_options={"template": str(template)}, top_k=3)
    got = run_eval(cfg)["provenance"]["template_input"]
    assert got == {"name": "mine", "source": str(template),
                   "fingerprint": f"sha256:{load_template(template).sha256()}"}
    template.write_text(SWAPPED)
    assert run_eval(cfg)["provenance"]["template_input"]["fingerprint"] != got["fingerprint"]
    bm25 = run_eval(EvalConfig(dataset=str(tiny_ds.root), retriever="bm25"))
    assert "template_input" not in bm25["provenance"]


def test_rank_s_record_holds_the_template_s_fingerprint(tmp_path: Path, tiny_llm_dir: Path, run_cli: Any) -> None:
    import json

    from rerank.data.io import write_jsonl

    template = tmp_path / "t.yaml"
    template.write_text(YES_NO)
    inp, out = tmp_path / "in.jsonl", tmp_path / "ranked.jsonl"
    write_jsonl([{"query": "rain", "docs": [{"id": "a", "text": "wet"}, {"id": "b", "text": "dry"}]}], inp)
    rc, _, err = run_cli("rank", "--reranker", "yes-no", "--model", tiny_llm_dir, "--reranker-set",
                         f"template={template}", "--input", inp, "--output", out)
    assert rc == 0, err
    got = json.loads((tmp_path / "ranked.jsonl.meta.json").read_text())["provenance"]["template_input"]
    assert got["fingerprint"] == f"sha256:{load_template(template).sha256()}"


# --- #2: a misspelt key is refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "typo", "meant"), [
    ("yes-no", "positve", "positive"), ("listwise", "identifier", "identifiers"),
    ("first", "identifier", "identifiers"),
    ("setwise", "label", "labels"), ("erank", "answer_opne", "answer_open"), ("monot5", "negatve", "negative"),
])
def test_a_misspelt_template_key_is_refused_naming_the_closest(method: str, typo: str, meant: str) -> None:
    own = load_template(all_methods()[method].default_template).to_dict()
    value = own.pop(meant, "x")
    with pytest.raises(ConfigError, match=f"has key '{typo}'.*did you mean '{meant}'") as e:
        head_template({**own, typo: value}, method)
    assert "\n" not in str(e.value)


def test_a_key_the_texts_read_or_another_own_template_has_is_kept() -> None:
    t = head_template({"user": "{{ topic }}: {{ query }} {{ document }}", "topic": "medicine"}, "yes-no")
    assert t.extra["topic"] == "medicine"
    erank = load_template("erank").to_dict()
    assert head_template({**erank, "think_close": "</think>"}, "erank").extra["think_close"] == "</think>"


def test_every_shipped_method_template_still_loads() -> None:
    for name, method in all_methods().items():
        for file in method.templates:
            stem = Path(file).stem
            for spec in (stem, method.folder / file, load_template(stem).to_dict()):
                assert head_template(spec, name).user == load_template(stem).user


# --- #3: a user head's ranked variables -----------------------------------------------------------------------------


@dataclasses.dataclass
class _UserConfig(PointwiseConfig):
    pass


class _UserHead(PointwiseLLMReranker):
    """A head of no method that declares what it ranks by."""

    method = "audit7-user-head"
    config_class: ClassVar[Any] = _UserConfig
    ranked_inputs = frozenset({"query", "document"})

    def score_passages(self, queries: Any, candidate_lists: Any) -> Any:
        raise NotImplementedError


def test_a_user_head_refuses_a_template_without_a_variable_it_ranks_by() -> None:
    assert _UserHead.prompt_method() == ""
    with pytest.raises(ConfigError, match=r"never reads document, which the audit7-user-head head ranks by.*"
                                          r"\{\{ document \}\}"):
        _UserHead(_UserConfig(template={"name": "t", "user": "Q: {{ query }} P: {document}"}), model=None)
    with pytest.raises(ValueError, match="give a model"):  # the template passed; the head then wants its model
        _UserHead(_UserConfig(template={"name": "t", "user": "Q: {{ query }} P: {{ document }}"}), model=None)


def test_a_head_declaring_nothing_is_not_checked_and_has_no_template_until_set() -> None:
    class Plain(_UserHead):
        ranked_inputs = frozenset()

    with pytest.raises(ValueError, match="give a model"):
        Plain(_UserConfig(template={"name": "t", "user": "Q: {{ query }}"}), model=None)
    assert not hasattr(Reranker.__new__(Plain), "template")


# --- #4: --reranker-config template paths -------------------------------------------------------------------------


def _args(config: Path) -> argparse.Namespace:
    return argparse.Namespace(reranker_config=str(config), reranker_set=[], allow_new_head=False, base_url=None,
                              reranker="yes-no", backend="transformers")


def test_a_relative_template_in_a_reranker_config_is_read_beside_the_file(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.cli.common import reranker_options

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "beside.yaml").write_text(YES_NO)
    (tmp_path / "cfg" / "rr.yaml").write_text("template: beside.yaml\n")
    monkeypatch.chdir(tmp_path)
    opts = reranker_options(_args(Path("cfg/rr.yaml")))
    assert Path(opts["template"]) == Path("cfg/beside.yaml")
    assert head_template(opts["template"], "yes-no").name == "mine"
    (tmp_path / "cfg" / "rr.yaml").write_text("template: yes_no\n")  # a shipped name stays a name
    assert reranker_options(_args(Path("cfg/rr.yaml")))["template"] == "yes_no"
    (tmp_path / "beside.yaml").write_text(YES_NO)  # only beside the current folder
    (tmp_path / "cfg" / "beside.yaml").unlink()
    (tmp_path / "cfg" / "rr.yaml").write_text("template: beside.yaml\n")
    with pytest.raises(ConfigError, match=r"--reranker-config cfg/rr.yaml: template beside.yaml: cfg/beside.yaml is "
                                          r"not a file \(a relative template path in a config file is read against"):
        reranker_options(_args(Path("cfg/rr.yaml")))


# --- snippets #1: id and _id ----------------------------------------------------------------------------------------


def test_a_mapping_whose_id_and__id_disagree_is_refused_as_the_file_readers_do() -> None:
    with pytest.raises(ValueError, match=r"""documents\[1\]: fields 'id' \("8"\) and '_id' \("doc-b"\) disagree: """
                                         r"which is the document id\? keep one of them"):
        as_candidates([{"id": "7", "text": "a"}, {"id": "8", "_id": "doc-b", "text": "b"}])
    got = as_candidates([{"id": None, "_id": "doc-a", "text": "a"}, {"id": 3, "_id": "3", "text": "b"}])
    assert [c.doc.id for c in got] == ["doc-a", "3"]
    with pytest.raises(TypeError, match=r"documents\[0\]: id must be a string or an integer, got NoneType"):
        as_candidates([{"_id": None, "text": "a"}])
