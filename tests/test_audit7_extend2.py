"""Extending rerank from a user's own package, second audit (extend2): the leaderboard keys a user head's and
retriever's code, the pointwise base has the config it reads, a user retriever's ``name`` is checked as a head's
``method`` is, and a retriever without a typed config refuses an unknown option in one line."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from plugin_support import USER_MODULE, write_length_beir

from rerank.errors import ConfigError
from rerank.eval import leaderboard
from rerank.eval.pipeline import EvalConfig
from rerank.heads import registry as heads_registry
from rerank.heads.base import Reranker
from rerank.heads.pointwise import PointwiseConfig, PointwiseLLMReranker
from rerank.retrieval import base as retrieval_base
from rerank.retrieval.base import FirstStage, build_retriever, register_retriever, retrieve_args

@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file of a user module ``e2user`` importable from ``sys.path``."""
    path = tmp_path / "pkgs" / "e2user.py"
    path.parent.mkdir()
    path.write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.delitem(sys.modules, "e2user", raising=False)
    return path


@pytest.fixture()
def beir(tmp_path: Path) -> Path:
    return write_length_beir(tmp_path / "mini", 6, 3)


# ---------------------------------------------------------------- 1. the leaderboard keys user code


def _cell(root: Path, reranker: str | None, retriever: str = "bm25") -> EvalConfig:
    return EvalConfig(dataset=str(root), split="test", retriever=retriever, reranker=reranker, top_k=5, depth=10)


def test_a_user_heads_or_retrievers_cells_rerun_after_its_code_changes(fresh: None, user_module: Path,
                                                                       beir: Path) -> None:
    head_cell = _cell(beir, "e2user:LongFirst")
    retriever_cell = _cell(beir, None, retriever="e2user:ShortFirstRetriever")
    before = leaderboard._cell_hash(head_cell, beir), leaderboard._cell_hash(retriever_cell, beir)
    assert before == (leaderboard._cell_hash(head_cell, beir), leaderboard._cell_hash(retriever_cell, beir))
    stamps = leaderboard._user_code_stamps(head_cell)
    assert stamps["reranker_code"]["class"] == "e2user:LongFirst"
    assert stamps["reranker_code"]["code"]["e2user"].startswith("sha256:")
    user_module.write_text(USER_MODULE.replace("float(len(c.doc.text))", "-float(len(c.doc.text))"))
    after = leaderboard._cell_hash(head_cell, beir), leaderboard._cell_hash(retriever_cell, beir)
    assert after[0] != before[0] and after[1] != before[1]


def test_a_registered_user_head_is_keyed_by_its_class(fresh: None, user_module: Path, beir: Path) -> None:
    import e2user

    heads_registry.register_reranker("test-a7-long", e2user.LongFirst)
    stamps = leaderboard._user_code_stamps(_cell(beir, "test-a7-long"))
    assert stamps["reranker_code"]["class"] == "e2user:LongFirst"  # the name alone does not say which package


def test_a_built_in_rows_key_is_unchanged(fresh: None, beir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cell = _cell(beir, "yes-no")
    assert leaderboard._user_code_stamps(cell) == {}
    new = leaderboard._cell_hash(cell, beir)
    monkeypatch.setattr(leaderboard, "_user_code_stamps", lambda cfg: {})  # the key as it was computed before
    assert leaderboard._cell_hash(cell, beir) == new


# ---------------------------------------------------------------- 2. the pointwise base's config


class _PromptLength(PointwiseLLMReranker):
    """A pointwise head of no method built as research.md says: ``score_passages`` only."""

    method = "test-e2-prompt-length"
    ranked_inputs = frozenset({"query", "document"})

    def score_passages(self, queries, candidate_lists):  # type: ignore[no-untyped-def]
        flat = [float(len(ids)) for _, ids in self.flat_inputs(queries, candidate_lists)]
        return self.split(flat, candidate_lists)


def test_a_head_on_the_pointwise_base_reranks(fresh: None, tiny_llm_dir: Path) -> None:
    assert PointwiseLLMReranker.config_class is PointwiseConfig
    heads_registry.register_reranker(_PromptLength.method, _PromptLength)
    template = {"name": "e2-plain", "system": "Judge.", "user": "Query: {{ query }}\nPassage: {{ document }}",
                "assistant_prefix": ""}
    head = Reranker.load(_PromptLength.method, model=str(tiny_llm_dir), template=template)
    ranked = head.rerank("q", ["a", "a b c d e f", "a b"]).results
    assert [r.doc.text for r in ranked] == ["a b c d e f", "a b", "a"]


# ---------------------------------------------------------------- 3. a user retriever's name


class _Named(FirstStage):
    name = "test-e2-named"

    @classmethod
    def from_dataset(cls, dataset, **options):  # type: ignore[no-untyped-def]
        return cls()

    def retrieve(self, queries, k):  # type: ignore[no-untyped-def]
        queries, k = retrieve_args(queries, k)
        return {q: [] for q in queries}


def test_a_user_retrievers_name_is_the_one_it_is_registered_and_no_built_ins(
        fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"has name 'test-e2-named' but is registered as 'test-e2-other'"):
        register_retriever("test-e2-other", _Named)
    assert "test-e2-other" not in retrieval_base.available_retrievers()
    register_retriever("test-e2-named", _Named)
    (tmp_path / "e2fake.py").write_text(textwrap.dedent('''
        from rerank.retrieval.base import FirstStage


        class FakeBM25(FirstStage):
            name = "bm25"


        class Nameless(FirstStage):
            pass
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "e2fake", raising=False)
    with pytest.raises(ConfigError, match=r"FakeBM25 has name 'bm25', the name of rerank\.retrieval\.bm25"):
        retrieval_base.RETRIEVERS.get("e2fake:FakeBM25")
    with pytest.raises(ConfigError, match=r"Nameless has name '': set name = 'a-name'"):
        retrieval_base.RETRIEVERS.get("e2fake:Nameless")


# ---------------------------------------------------------------- 4. options of a retriever without a typed config


class _NoAnnotation(FirstStage):
    name = "test-e2-noann"

    def __init__(self, docs, bias=0.0, *, scale=1.0):  # type: ignore[no-untyped-def]
        self.docs, self.bias = docs, bias

    @classmethod
    def from_dataset(cls, dataset, **options):  # type: ignore[no-untyped-def]
        return cls([d.id for d in dataset.iter_corpus()], **options)

    def retrieve(self, queries, k):  # type: ignore[no-untyped-def]
        queries, k = retrieve_args(queries, k)
        return {q: [(d, self.bias) for d in self.docs[:k]] for q in queries}


def test_an_unknown_option_of_a_retriever_without_a_typed_config_is_one_line(fresh: None, beir: Path) -> None:
    register_retriever(_NoAnnotation.name, _NoAnnotation)
    assert build_retriever(_NoAnnotation.name, str(beir), bias=1.0).bias == 1.0
    with pytest.raises(ConfigError, match=r"retriever 'test-e2-noann': unknown option 'bais' .*its options: bias, "
                                          r"scale$"):
        build_retriever(_NoAnnotation.name, str(beir), bais=1.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_json_names_a_user_heads_and_retrievers_class(fresh: None, user_module: Path, beir: Path,
                                                               workers: int) -> None:
    from rerank.eval.pipeline import run_eval

    got = run_eval(EvalConfig(dataset=str(beir), retriever="e2user:ShortFirstRetriever", reranker="e2user:LongFirst",
                              workers=workers), progress=False)
    assert got["reranker"]["class"] == "e2user:LongFirst"
    assert got["first_stage"]["class"] == "e2user:ShortFirstRetriever"
    built_in = run_eval(EvalConfig(dataset=str(beir), retriever="bm25"), progress=False)
    assert "class" not in built_in["first_stage"]
