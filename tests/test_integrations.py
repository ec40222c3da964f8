"""LangChain and LlamaIndex adapters keep the reranker's order, scores and top_n."""

from __future__ import annotations

import pytest

from rerank.heads.base import Reranker, RerankerConfig, sigmoid
from rerank.types import Candidate, Query


class OverlapReranker(Reranker):
    """Scores by the number of query words in the document (deterministic, order-changing)."""

    method = "test-overlap"
    config_class = RerankerConfig

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        words = set(query.text.lower().split())
        return [float(len(words & set(c.doc.text.lower().split()))) for c in candidates]


TEXTS = ["cats sleep a lot", "the bm25 ranking function", "bm25 ranking for search engines ranking", "paris"]


def test_langchain_compressor() -> None:
    pytest.importorskip("langchain_core", reason="langchain-core (extra 'langchain') not installed")
    from langchain_core.documents import Document as LCDocument

    from rerank.integrations.langchain import RerankCompressor

    docs = [LCDocument(page_content=t, metadata={"src": i}) for i, t in enumerate(TEXTS)]
    comp = RerankCompressor(reranker=OverlapReranker(), top_n=2)
    out = comp.compress_documents(docs, "bm25 ranking search")
    assert [d.metadata["src"] for d in out] == [2, 1]
    assert out[0].metadata["rerank_score"] == 3.0 and out[0].metadata["rerank_rank"] == 1
    assert out[0].metadata["relevance_score"] == pytest.approx(sigmoid(3.0))  # [0, 1], as langchain-cohere's
    assert comp.compress_documents([], "q") == []
    for bad in (0, -1):
        with pytest.raises(ValueError, match="top_n"):
            RerankCompressor(reranker=OverlapReranker(), top_n=bad)


def test_llamaindex_postprocessor() -> None:
    pytest.importorskip("llama_index.core", reason="llama-index-core (extra 'llamaindex') not installed")
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerank.integrations.llamaindex import RerankNodePostprocessor

    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0) for i, t in enumerate(TEXTS)]
    post = RerankNodePostprocessor(reranker=OverlapReranker(), top_n=3)
    out = post.postprocess_nodes(nodes, query_str="bm25 ranking search")
    assert [n.node.node_id for n in out] == ["n2", "n1", "n0"]
    assert [n.score for n in out] == pytest.approx([sigmoid(3.0), sigmoid(2.0), sigmoid(0.0)])
    with pytest.raises(ValueError, match="needs the query"):
        post.postprocess_nodes(nodes)
    with pytest.raises(ValueError, match="top_n"):
        RerankNodePostprocessor(reranker=OverlapReranker(), top_n=0)


class SlowOverlap(OverlapReranker):
    """OverlapReranker that records how many calls overlap in time and which path (sync / async) ran."""

    def __init__(self, serialise: bool = True) -> None:
        super().__init__()
        self.serialise_calls = serialise  # type: ignore[misc]
        self.active = 0
        self.most = 0
        self.async_calls = 0

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        import time

        self.active += 1
        self.most = max(self.most, self.active)
        time.sleep(0.05)
        self.active -= 1
        return super().score_candidates(query, candidates)

    async def arerank_batch(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.async_calls += 1
        return await super().arerank_batch(*args, **kwargs)


@pytest.mark.parametrize("serialise", [True, False])
def test_arerank_equals_rerank_and_serialises_one_model(serialise: bool) -> None:
    import asyncio

    rr = SlowOverlap(serialise)
    want = rr.rerank("bm25 ranking search", TEXTS, top_k=3)

    async def main() -> list:
        return await asyncio.gather(*(rr.arerank("bm25 ranking search", TEXTS, top_k=3) for _ in range(4)))

    got = asyncio.run(main())
    assert all([r.doc.id for r in g.results] == [r.doc.id for r in want.results] for g in got)
    assert all([r.score for r in g.results] == [r.score for r in want.results] for g in got)
    assert (rr.most == 1) if serialise else (rr.most > 1)  # an in-process model runs one call at a time


def test_async_adapters_use_arerank() -> None:
    import asyncio

    pytest.importorskip("langchain_core", reason="langchain-core (extra 'langchain') not installed")
    pytest.importorskip("llama_index.core", reason="llama-index-core (extra 'llamaindex') not installed")
    from langchain_core.documents import Document as LCDocument
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerank.integrations.langchain import RerankCompressor
    from rerank.integrations.llamaindex import RerankNodePostprocessor

    rr = SlowOverlap()
    docs = [LCDocument(page_content=t, metadata={"src": i}) for i, t in enumerate(TEXTS)]
    out = asyncio.run(RerankCompressor(reranker=rr, top_n=2).acompress_documents(docs, "bm25 ranking search"))
    assert [d.metadata["src"] for d in out] == [2, 1] and rr.async_calls == 1
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0) for i, t in enumerate(TEXTS)]
    post = RerankNodePostprocessor(reranker=rr, top_n=3)
    got = asyncio.run(post.apostprocess_nodes(nodes, query_bundle=QueryBundle("bm25 ranking search")))
    assert [n.node.node_id for n in got] == ["n2", "n1", "n0"] and rr.async_calls == 2
