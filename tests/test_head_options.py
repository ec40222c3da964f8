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
    with pytest.raises(ConfigError, match="remote reranker uses the server's backend; remove backend='no-such'"):
        Reranker.load("remote", backend="no-such")
    with pytest.raises(ConfigError, match="batch_size=1 does nothing for the remote reranker"):
        Reranker.load("remote", batch_size=1)
    Reranker.load("remote", base_url="http://127.0.0.1:9", backend="transformers", max_concurrency=2).close()


@pytest.mark.parametrize("method", ["cross-encoder", "yes-no", "erank", "qwen3-reranker"])
@pytest.mark.parametrize("options", [{"passage_tokens": 150}, {"stride": 20}, {"passage_tokens": 150, "stride": 20}])
def test_passage_settings_need_a_passage_mode(method: str, options: dict[str, Any]) -> None:
    """``passage_tokens`` and ``stride`` did nothing with ``long_docs: truncate``."""
    from rerank.heads.registry import get_reranker_class

    cls = get_reranker_class(method).config_class
    with pytest.raises(ConfigError, match="only when documents are scored by passages: set long_docs to maxp"):
        from_dict(cls, options, where=f"{method} options")
    for mode in ("maxp", "firstp", "sump"):
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
