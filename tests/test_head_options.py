"""Options of the heads, retrievers and data recipes that only apply in some settings are refused in the others (an
option either works or does not exist): each test names a combination that used to be accepted and ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rerank import Reranker
from rerank.config import from_dict
from rerank.errors import ConfigError


def test_remote_refuses_a_backend_and_a_batch_size() -> None:
    """The server's backend and batching are its own: the remote client dropped both silently."""
    with pytest.raises(ConfigError, match="remote reranker uses the server's backend; drop backend='no-such'"):
        Reranker.load("remote", backend="no-such")
    with pytest.raises(ConfigError, match="batch_size=1 is not read by the remote reranker"):
        Reranker.load("remote", batch_size=1)
    from rerank.client import RemoteRerankError

    with pytest.raises(RemoteRerankError, match="unreachable"):  # the options pass; the server check at load runs
        Reranker.load("remote", base_url="http://127.0.0.1:9", backend="transformers", max_concurrency=2)


@pytest.mark.parametrize("method", ["cross-encoder", "yes-no", "erank", "qwen3-reranker"])
@pytest.mark.parametrize("options", [{"passage_tokens": 150}, {"stride": 20}, {"passage_tokens": 150, "stride": 20}])
def test_passage_settings_need_a_passage_mode(method: str, options: dict[str, Any]) -> None:
    """``passage_tokens`` and ``stride`` did nothing with ``long_docs: truncate``."""
    from rerank.heads.registry import get_reranker_class

    cls = get_reranker_class(method).config_class
    with pytest.raises(ConfigError, match="only when documents are scored by passages: set long_docs to maxp"):
        from_dict(cls, options, where=f"{method} options")
    for mode in ("maxp", "firstp"):
        assert from_dict(cls, {**options, "long_docs": mode}, where="x").long_docs == mode


def test_two_label_score_needs_a_two_label_model(tiny_bert_dir: Path) -> None:
    """A one-label cross-encoder scores by its one logit: ``two_label_score`` was ignored."""
    with pytest.raises(ConfigError, match="two_label_score=softmax applies to a model with two labels"):
        Reranker.load("cross-encoder", model=str(tiny_bert_dir), two_label_score="softmax")
    assert Reranker.load("cross-encoder", model=str(tiny_bert_dir), two_label_score="diff").num_labels == 1


def test_erank_reasoning_budget_needs_reasoning() -> None:
    """``max_reasoning_tokens`` was ignored without ``reasoning: true`` (as ``constrained`` is refused there)."""
    from rerank.methods.erank.head import ERankConfig

    with pytest.raises(ConfigError, match="max_reasoning_tokens=16 applies to reasoning: true"):
        from_dict(ERankConfig, {"max_reasoning_tokens": 16}, where="erank options")
    assert from_dict(ERankConfig, {"max_reasoning_tokens": 16, "reasoning": True}, where="x").max_reasoning_tokens == 16


@pytest.mark.parametrize(("options", "match"), [
    ({"alpha": 0.3}, "alpha=0.3 applies to fusion: interpolate, not rrf"),
    ({"fusion": "interpolate", "rrf_k": 10}, "rrf_k=10 applies to fusion: rrf, not interpolate"),
])
def test_hybrid_refuses_the_other_fusions_parameter(options: dict[str, Any], match: str) -> None:
    """RRF ignored ``alpha``, interpolation ``rrf_k``."""
    from rerank.retrieval.hybrid import HybridConfig

    with pytest.raises(ConfigError, match=match):
        from_dict(HybridConfig, options, "retriever options")
    assert from_dict(HybridConfig, {"fusion": "interpolate", "alpha": 0.3}, "x").alpha == 0.3
    assert from_dict(HybridConfig, {"rrf_k": 10}, "x").rrf_k == 10


@pytest.mark.parametrize("cls_name", ["DenseConfig", "HybridConfig"])
def test_dense_index_refuses_encoding_options(cls_name: str) -> None:
    """A saved index is loaded as it is: ``cache`` and ``shard_size`` (of encoding the corpus) were ignored."""
    from rerank.retrieval.dense import DenseConfig
    from rerank.retrieval.hybrid import HybridConfig

    cls = {"DenseConfig": DenseConfig, "HybridConfig": HybridConfig}[cls_name]
    with pytest.raises(ConfigError, match="cache=False applies only when the corpus is encoded"):
        from_dict(cls, {"index": "idx", "cache": False}, "retriever options")
    with pytest.raises(ConfigError, match="shard_size=5 applies only when the corpus is encoded"):
        from_dict(cls, {"index": "idx", "shard_size": 5}, "retriever options")
    assert from_dict(cls, {"cache": False, "shard_size": 5}, "x").shard_size == 5


def _recipe_config(recipe: dict[str, Any]) -> Any:
    """The typed config of ``recipe`` (what ``rerank data build`` checks before any work)."""
    from rerank.data_recipes.base import _recipe_class

    spec = dict(recipe)
    kind = spec.pop("recipe")
    return from_dict(_recipe_class(kind).config_class, spec, where=f"recipe {kind}")


SYNTH = {"recipe": "query_synthesis", "source": {"dataset": "scifact"}, "generator": {"kind": "sentence"}}


@pytest.mark.parametrize("option", [{"model": "m"}, {"backend": "openai"}, {"backend_options": {"a": 1}},
                                    {"template": "t"}, {"max_new_tokens": 8}, {"temperature": 0.7},
                                    {"max_doc_tokens": 64}])
def test_sentence_generator_refuses_llm_options(option: dict[str, Any]) -> None:
    """``generator.kind: sentence`` loads no model: the LLM generator's options were ignored."""
    (name,) = option
    with pytest.raises(ConfigError, match=rf"generator: {name} applies to kind: llm; kind: sentence uses no model"):
        _recipe_config({**SYNTH, "generator": {"kind": "sentence", **option}})
    assert _recipe_config({**SYNTH, "generator": {"kind": "llm", **option}}).generator.kind == "llm"


@pytest.mark.parametrize("option", [{"negative_window": [2, 5]}, {"num_negatives": 3}])
def test_query_synthesis_negatives_need_a_first_stage(option: dict[str, Any]) -> None:
    """Negatives come from the first stage's ranking: without one ``negative_window`` and ``num_negatives`` were
    ignored (as ``consistency_k`` is refused there)."""
    with pytest.raises(ConfigError, match="needs a first_stage retriever"):
        _recipe_config({**SYNTH, **option})
    fs = {"retriever": "bm25", "depth": 10}
    assert _recipe_config({**SYNTH, **option, "first_stage": fs}).first_stage.depth == 10


TEACHER = {"recipe": "teacher_labels", "source": {"dataset": "scifact"}, "first_stage": {"retriever": "bm25"}}
T = {"reranker": "cross-encoder", "model": "m"}


@pytest.mark.parametrize(("mode", "extra", "match"), [
    ("first_stage", {"score_map": "minmax"}, r"score_map is not read by mode first_stage \(score_map only by mode erank"),
    ("first", {"teacher": T, "score_map": "minmax"}, "score_map is not read by mode first"),
    ("erank", {"teacher": T, "group_size": 4}, r"group_size is not read by mode erank \(group_size only by mode grou"),
    ("scores", {"teacher": T, "seed": 3}, "seed is not read by mode scores"),
    ("erank", {"teacher": T, "listwise_teacher": {"reranker": "listwise", "model": "m"}},
     r"listwise_teacher is not used by mode erank \(it uses teacher\)"),
    ("first_stage", {"teacher": T}, r"teacher is not used by mode first_stage \(it uses no teacher\)"),
    ("grouprank", {"pointwise_teacher": T, "listwise_teacher": T, "teacher": T}, "teacher is not used by mode grou"),
])
def test_teacher_labels_refuses_what_the_mode_does_not_read(mode: str, extra: dict[str, Any], match: str) -> None:
    """Options and teachers of other modes were accepted and ignored."""
    with pytest.raises(ConfigError, match=match):
        _recipe_config({**TEACHER, "mode": mode, **extra})


def test_teacher_labels_accepts_each_modes_own_options() -> None:
    assert _recipe_config({**TEACHER, "mode": "erank", "teacher": T, "score_map": "minmax"}).score_map == "minmax"
    grouprank = _recipe_config({**TEACHER, "mode": "grouprank", "pointwise_teacher": T, "listwise_teacher": T,
                                "group_size": 4, "seed": 3})
    assert (grouprank.group_size, grouprank.seed) == (4, 3)


@pytest.mark.parametrize("kind", ["teacher_labels", "hard_negatives"])
def test_first_stage_run_refuses_retriever_options(kind: str) -> None:
    """A run file is read as it is: ``first_stage.options`` beside it were ignored."""
    recipe = {"recipe": kind, "source": {"dataset": "scifact"}, "first_stage": {"run": "r.trec", "options": {"k1": 1}}}
    if kind == "teacher_labels":
        recipe["mode"] = "first_stage"
    with pytest.raises(ConfigError, match=r"first_stage: options apply to a first_stage retriever.*\(k1\)"):
        _recipe_config(recipe)


HARD = {"recipe": "hard_negatives", "source": {"dataset": "scifact"}, "first_stage": {"retriever": "bm25"}}


@pytest.mark.parametrize("option", [{"reranker": "yes-no"}, {"backend": "no-such-backend"},
                                    {"options": {"bogus": 1}}])
def test_bi_encoder_filter_refuses_reranker_options(option: dict[str, Any]) -> None:
    """The bi-encoder filter loads ``model`` with sentence-transformers: the reranker scorer's options were ignored."""
    (name,) = option
    f = {"scorer": "bi-encoder", "model": "m", **option}
    with pytest.raises(ConfigError, match=rf"false_negative_filter: {name} applies to scorer: reranker"):
        _recipe_config({**HARD, "false_negative_filter": f})
    assert _recipe_config({**HARD, "false_negative_filter": {**f, "scorer": "reranker"}}).false_negative_filter


def test_hard_negatives_seed_needs_random_sampling() -> None:
    """``sampling: top`` draws nothing: ``seed`` was ignored."""
    with pytest.raises(ConfigError, match="seed=5 applies to sampling: random"):
        _recipe_config({**HARD, "seed": 5})
    assert _recipe_config({**HARD, "seed": 5, "sampling": "random"}).seed == 5


def test_source_queries_refuse_a_split(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """With ``source.queries`` no split is read: ``split`` was ignored, yet written to the manifest as the source."""
    from rerank.data_recipes.base import build

    queries = {"dataset": "scifact", "queries": "q.jsonl"}
    with pytest.raises(ConfigError, match="source: split 'test' is not read with 'queries'"):
        _recipe_config({**HARD, "source": {**queries, "split": "test"}})
    build({**SYNTH, "source": {"dataset": str(tiny_beir_dir)}, "max_docs": 4, "min_doc_chars": 10}, tmp_path / "q",
          progress=False)
    source = {"dataset": str(tiny_beir_dir), "queries": str(tmp_path / "q" / "data.jsonl")}
    m = build({**HARD, "source": source, "first_stage": {"retriever": "bm25", "depth": 10}, "num_negatives": 2},
              tmp_path / "hn", progress=False)
    assert "split" not in m["source"] and m["source"]["queries_from"] == source["queries"]
