"""Audit 3, integrations: the LangChain / LlamaIndex adapters refuse unknown arguments and non-rerankers when built,
the LlamaIndex one reports its rerank step (callback event, instrumentation events), keeps the retrieval score on
request and serialises."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from rerank.client import RemoteReranker
from rerank.heads.base import sigmoid
from tests.test_integrations import TEXTS, OverlapReranker

QUERY = "bm25 ranking search"


def _langchain() -> Any:
    pytest.importorskip("langchain_core", reason="langchain-core (extra 'langchain') not installed")
    from rerank.integrations import langchain

    return langchain


def _llamaindex() -> Any:
    pytest.importorskip("llama_index.core", reason="llama-index-core (extra 'llamaindex') not installed")
    from rerank.integrations import llamaindex

    return llamaindex


def _nodes() -> list[Any]:
    from llama_index.core.schema import NodeWithScore, TextNode

    return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata={"src": i}), score=0.1 * (i + 1))
            for i, t in enumerate(TEXTS)]


def _adapter(name: str) -> Any:
    return _langchain().RerankCompressor if name == "langchain" else _llamaindex().RerankNodePostprocessor


@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
@pytest.mark.parametrize("arg", [{"top_k": 8}, {"topn": 1}, {"top_n": 2, "keep_retrieval_scores": True}])
def test_unknown_argument_is_refused(adapter: str, arg: dict[str, Any]) -> None:
    cls = _adapter(adapter)
    with pytest.raises(TypeError) as e:
        cls(reranker=OverlapReranker(), **arg)
    unknown = next(k for k in arg if k != "top_n")
    assert f"unknown argument(s) {unknown!r}" in str(e.value) and "top_n" in str(e.value)
    assert "\n" not in str(e.value)


def test_langchain_refuses_keep_retrieval_score() -> None:
    with pytest.raises(TypeError, match="unknown argument.*'keep_retrieval_score'"):
        _langchain().RerankCompressor(reranker=OverlapReranker(), keep_retrieval_score=True)


@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
@pytest.mark.parametrize("bad", ["cross-encoder", object(), None])
def test_reranker_must_be_a_reranker(adapter: str, bad: Any) -> None:
    cls = _adapter(adapter)
    with pytest.raises(TypeError, match=r"reranker must be a rerank\.Reranker.*got") as e:
        cls(reranker=bad)
    assert "\n" not in str(e.value) and f"{cls.__name__}.load(method, model=...)" in str(e.value)


@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
def test_remote_reranker_is_accepted(adapter: str) -> None:
    rr = RemoteReranker()  # no request is made until the first query
    try:
        assert _adapter(adapter)(reranker=rr).reranker is rr
    finally:
        rr.close()


def test_keep_retrieval_score() -> None:
    post_cls = _llamaindex().RerankNodePostprocessor
    nodes = _nodes()
    out = post_cls(reranker=OverlapReranker(), top_n=3, keep_retrieval_score=True).postprocess_nodes(
        nodes, query_str=QUERY)
    assert [n.node.node_id for n in out] == ["n2", "n1", "n0"]
    assert [n.node.metadata for n in out] == [{"src": 2, "retrieval_score": pytest.approx(0.3)},
                                             {"src": 1, "retrieval_score": pytest.approx(0.2)},
                                             {"src": 0, "retrieval_score": pytest.approx(0.1)}]
    assert [n.score for n in out] == pytest.approx([sigmoid(3.0), sigmoid(2.0), sigmoid(0.0)])
    assert [n.node.metadata for n in nodes] == [{"src": i} for i in range(4)]  # the input is left as it was
    assert [n.score for n in nodes] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    again = post_cls(reranker=OverlapReranker(), top_n=3).postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.metadata for n in again] == [{"src": 2}, {"src": 1}, {"src": 0}]


@pytest.fixture
def instrumentation_events() -> Iterator[list[Any]]:
    """Events reaching LlamaIndex's root instrumentation dispatcher while the test runs."""
    pytest.importorskip("llama_index.core", reason="llama-index-core (extra 'llamaindex') not installed")
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    seen: list[Any] = []

    class Collect(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            seen.append(event)

    root = get_dispatcher()
    handler = Collect()
    root.add_event_handler(handler)
    try:
        yield seen
    finally:
        root.event_handlers = [h for h in root.event_handlers if h is not handler]


@pytest.mark.parametrize("path", ["sync", "async"])
def test_llamaindex_reports_the_rerank_step(path: str, instrumentation_events: list[Any]) -> None:
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.schema import QueryBundle

    debug = LlamaDebugHandler()
    post = _llamaindex().RerankNodePostprocessor(reranker=OverlapReranker(), top_n=2,
                                                 callback_manager=CallbackManager([debug]))
    nodes = _nodes()
    if path == "sync":
        out = post.postprocess_nodes(nodes, query_str=QUERY)
    else:
        out = asyncio.run(post.apostprocess_nodes(nodes, query_bundle=QueryBundle(QUERY)))
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    start, end = pairs[0]
    assert start.payload[EventPayload.QUERY_STR] == QUERY and start.payload[EventPayload.TOP_K] == 2
    assert start.payload[EventPayload.NODES] is nodes and start.payload[EventPayload.MODEL_NAME] == "test-overlap"
    assert end.payload[EventPayload.NODES] == out
    rerank_events = [e for e in instrumentation_events if isinstance(e, ReRankStartEvent | ReRankEndEvent)]
    assert [type(e) for e in rerank_events] == [ReRankStartEvent, ReRankEndEvent]
    assert rerank_events[0].query.query_str == QUERY and rerank_events[0].top_n == 2
    assert rerank_events[0].model_name == "test-overlap"
    assert [n.node.node_id for n in rerank_events[1].nodes] == ["n2", "n1"]


def test_llamaindex_top_n_none_event(instrumentation_events: list[Any]) -> None:
    from llama_index.core.instrumentation.events.rerank import ReRankStartEvent

    post = _llamaindex().RerankNodePostprocessor(reranker=OverlapReranker(), top_n=None)
    assert len(post.postprocess_nodes(_nodes(), query_str=QUERY)) == 4
    assert [e.top_n for e in instrumentation_events if isinstance(e, ReRankStartEvent)] == [4]


def test_llamaindex_serialises() -> None:
    post_cls = _llamaindex().RerankNodePostprocessor
    rr = OverlapReranker()
    post = post_cls(reranker=rr, top_n=2, keep_retrieval_score=True)
    text = post.to_json()
    data = json.loads(text)
    assert data == {"reranker": rr.describe(), "top_n": 2, "keep_retrieval_score": True,
                    "class_name": "RerankNodePostprocessor"}
    assert post.reranker is rr  # serialising leaves the adapter working
    assert [n.node.node_id for n in post.postprocess_nodes(_nodes(), query_str=QUERY)] == ["n2", "n1"]
    back = post_cls.from_json(text, reranker=rr)
    assert back.reranker is rr and back.top_n == 2 and back.keep_retrieval_score is True
    with pytest.raises(TypeError, match=r"reranker is a description.*from_json\(text, reranker="):
        post_cls.from_json(text)


def test_llamaindex_load_takes_keep_retrieval_score(monkeypatch: pytest.MonkeyPatch) -> None:
    li = _llamaindex()
    monkeypatch.setattr(li.Reranker, "load", staticmethod(lambda method, model=None, **options: OverlapReranker()))
    post = li.RerankNodePostprocessor.load("test-overlap", top_n=1, keep_retrieval_score=True)
    out = post.postprocess_nodes(_nodes(), query_str=QUERY)
    assert [(n.node.node_id, n.node.metadata["retrieval_score"]) for n in out] == [("n2", pytest.approx(0.3))]
