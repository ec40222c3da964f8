"""LangChain and LlamaIndex adapters keep the reranker's order, scores and top_n."""

from __future__ import annotations

import pytest

from rerank.heads.base import Reranker, RerankerConfig
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
    assert out[0].metadata["relevance_score"] == 3.0 and out[0].metadata["rerank_rank"] == 1
    assert comp.compress_documents([], "q") == []


def test_llamaindex_postprocessor() -> None:
    pytest.importorskip("llama_index.core", reason="llama-index-core (extra 'llamaindex') not installed")
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerank.integrations.llamaindex import RerankNodePostprocessor

    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0) for i, t in enumerate(TEXTS)]
    post = RerankNodePostprocessor(reranker=OverlapReranker(), top_n=3)
    out = post.postprocess_nodes(nodes, query_str="bm25 ranking search")
    assert [n.node.node_id for n in out] == ["n2", "n1", "n0"]
    assert [n.score for n in out] == [3.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="needs the query"):
        post.postprocess_nodes(nodes)
