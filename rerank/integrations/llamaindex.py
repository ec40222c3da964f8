"""LlamaIndex node postprocessor backed by any rerank :class:`Reranker` (extra ``llamaindex``: llama-index-core)."""

from __future__ import annotations

from typing import Any

try:
    from llama_index.core.bridge.pydantic import Field
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("rerank.integrations.llamaindex needs llama-index-core: pip install 'rerank[llamaindex]'") from e

from rerank.heads.base import Reranker
from rerank.types import Document

__all__ = ["RerankNodePostprocessor"]


class RerankNodePostprocessor(BaseNodePostprocessor):
    """Reorders retrieved nodes with a reranker; each node's score becomes the reranker's relevance in [0, 1] (as
    LlamaIndex's Cohere and sentence-transformers rerankers set it), so a score threshold means the same for any
    head."""

    reranker: Any = Field(description="a rerank.Reranker")
    top_n: int | None = Field(default=3, ge=1, description="keep this many nodes (None keeps all)")

    @classmethod
    def class_name(cls) -> str:
        return "RerankNodePostprocessor"

    @classmethod
    def load(cls, method: str, model: str | None = None, top_n: int | None = 3, **options: Any) -> RerankNodePostprocessor:
        """Build the reranker by registered method name, as ``Reranker.load`` does."""
        return cls(reranker=Reranker.load(method, model=model, **options), top_n=top_n)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        result = self.reranker.rerank(_query(query_bundle), _docs(nodes), top_k=self.top_n)
        return [NodeWithScore(node=nodes[int(r.doc.id)].node, score=r.relevance) for r in result.results]

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """:meth:`_postprocess_nodes` through the reranker's ``arerank`` (the event loop is not blocked)."""
        if not nodes:
            return []
        result = await self.reranker.arerank(_query(query_bundle), _docs(nodes), top_k=self.top_n)
        return [NodeWithScore(node=nodes[int(r.doc.id)].node, score=r.relevance) for r in result.results]


def _query(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None:
        raise ValueError("RerankNodePostprocessor needs the query (query_bundle or query_str)")
    return query_bundle.query_str


def _docs(nodes: list[NodeWithScore]) -> list[Document]:
    return [Document(str(i), n.node.get_content(metadata_mode=MetadataMode.EMBED)) for i, n in enumerate(nodes)]
