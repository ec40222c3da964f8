"""LlamaIndex node postprocessor backed by any rerank :class:`Reranker` (extra ``llamaindex``: llama-index-core)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

try:
    from llama_index.core.bridge.pydantic import ConfigDict, Field, field_serializer, field_validator, model_validator
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.callbacks.base import EventContext
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("rerank.integrations.llamaindex needs llama-index-core: pip install 'rerank[llamaindex]'") from e

from rerank.heads.base import Reranker, described_model
from rerank.integrations import check_reranker, load_reranker, refuse_unknown_arguments
from rerank.types import Document

__all__ = ["RerankNodePostprocessor"]

dispatcher = get_dispatcher(__name__)


class RerankNodePostprocessor(BaseNodePostprocessor):
    """Reorders retrieved nodes with a reranker; each node's score becomes the reranker's relevance in [0, 1] (as
    LlamaIndex's Cohere and sentence-transformers rerankers set it), so a score threshold means the same for any
    head. Each call reports a ``CBEventType.RERANKING`` event and ``ReRankStartEvent`` / ``ReRankEndEvent``, as
    LlamaIndex's own rerankers do; ``to_json`` writes the reranker's ``describe()``."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    reranker: Reranker = Field(description="a rerank.Reranker")
    top_n: int | None = Field(default=3, ge=1, description="keep this many nodes (None keeps all)")
    keep_retrieval_score: bool = Field(
        default=False, description="keep each node's retrieval score in metadata['retrieval_score']"
    )

    @model_validator(mode="before")
    @classmethod
    def _known_arguments(cls, data: Any) -> Any:
        return refuse_unknown_arguments(cls, data)

    @field_validator("reranker", mode="before")
    @classmethod
    def _is_reranker(cls, value: Any) -> Any:
        """Refuse anything but a rerank Reranker (a remote one included) when the postprocessor is built."""
        if isinstance(value, dict):
            raise TypeError(f"{cls.__name__}: reranker is a description (to_json output); pass the reranker "
                            f"itself: {cls.__name__}.from_json(text, reranker=Reranker.load(method, model=...))")
        return check_reranker(cls, value)

    @field_serializer("reranker")
    def _describe_reranker(self, reranker: Reranker) -> dict[str, Any]:
        return reranker.describe()

    @classmethod
    def class_name(cls) -> str:
        return "RerankNodePostprocessor"

    @classmethod
    def load(
        cls, method: str, model: str | None = None, top_n: int | None = 3, keep_retrieval_score: bool = False,
        **options: Any,
    ) -> RerankNodePostprocessor:
        """Build the reranker by registered method name, as ``Reranker.load`` does."""
        return cls(reranker=load_reranker(cls, method, model, options), top_n=top_n,
                   keep_retrieval_score=keep_retrieval_score)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        query = _query(query_bundle)
        with self._reranking(nodes, query_bundle) as event:
            out = self._ranked(nodes, self.reranker.rerank(query, _docs(nodes), top_k=self.top_n))
            event.on_end(payload={EventPayload.NODES: out})
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """:meth:`_postprocess_nodes` through the reranker's ``arerank`` (the event loop is not blocked)."""
        if not nodes:
            return []
        query = _query(query_bundle)
        with self._reranking(nodes, query_bundle) as event:
            out = self._ranked(nodes, await self.reranker.arerank(query, _docs(nodes), top_k=self.top_n))
            event.on_end(payload={EventPayload.NODES: out})
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out

    def _reranking(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> AbstractContextManager[EventContext]:
        """Dispatch ``ReRankStartEvent`` and open the ``CBEventType.RERANKING`` callback event."""
        model_name = _model_name(self.reranker)
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n or len(nodes),
                                          model_name=model_name))
        return self.callback_manager.event(CBEventType.RERANKING, payload={
            EventPayload.NODES: nodes, EventPayload.MODEL_NAME: model_name,
            EventPayload.QUERY_STR: query_bundle.query_str, EventPayload.TOP_K: self.top_n})

    def _ranked(self, nodes: list[NodeWithScore], result: Any) -> list[NodeWithScore]:
        out = []
        for r in result.results:
            src = nodes[int(r.doc.id)]
            node = src.node
            if self.keep_retrieval_score:  # on a copy: the input node is left as it was
                node = node.model_copy(update={"metadata": {**node.metadata, "retrieval_score": src.score}})
            out.append(NodeWithScore(node=node, score=r.relevance))
        return out


def _model_name(reranker: Reranker) -> str:
    """The model a reranker runs (its method name when it names none), for the rerank events."""
    desc = reranker.describe()
    return described_model(desc)[0] or str(desc.get("method") or type(reranker).__name__)


def _query(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None:
        raise ValueError("RerankNodePostprocessor needs the query (query_bundle or query_str)")
    return query_bundle.query_str


def _docs(nodes: list[NodeWithScore]) -> list[Document]:
    return [Document(str(i), n.node.get_content(metadata_mode=MetadataMode.EMBED)) for i, n in enumerate(nodes)]
