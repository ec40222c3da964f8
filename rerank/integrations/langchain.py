"""LangChain document compressor backed by any rerank :class:`Reranker` (extra ``langchain``: langchain-core)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor
    from langchain_core.documents import Document as LCDocument
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("rerank.integrations.langchain needs langchain-core: pip install 'rerank[langchain]'") from e

from pydantic import ConfigDict, Field, field_validator, model_validator

from rerank.heads.base import Reranker
from rerank.integrations import check_reranker, load_reranker, refuse_unknown_arguments
from rerank.types import Document

__all__ = ["RerankCompressor"]


class RerankCompressor(BaseDocumentCompressor):
    """Reorders retrieved documents with a reranker and keeps the best ``top_n``.

    Each returned document gets ``metadata["relevance_score"]`` (the reranker's relevance in [0, 1], as
    langchain-cohere's reranker gives it), ``metadata["rerank_score"]`` (the head's raw score) and
    ``metadata["rerank_rank"]``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    reranker: Reranker
    top_n: int | None = Field(default=3, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _known_arguments(cls, data: Any) -> Any:
        return refuse_unknown_arguments(cls, data)

    @field_validator("reranker", mode="before")
    @classmethod
    def _is_reranker(cls, value: Any) -> Any:
        """Refuse anything but a rerank Reranker (a remote one included) when the compressor is built."""
        return check_reranker(cls, value)

    @classmethod
    def load(cls, method: str, model: str | None = None, top_n: int | None = 3, **options: Any) -> RerankCompressor:
        """Build the reranker by registered method name, as ``Reranker.load`` does."""
        return cls(reranker=load_reranker(cls, method, model, options), top_n=top_n)

    def compress_documents(
        self, documents: Sequence[LCDocument], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[LCDocument]:
        if not documents:
            return []
        return _ranked(documents, self.reranker.rerank(query, _docs(documents), top_k=self.top_n))

    async def acompress_documents(
        self, documents: Sequence[LCDocument], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[LCDocument]:
        """:meth:`compress_documents` through the reranker's ``arerank`` (the event loop is not blocked)."""
        if not documents:
            return []
        return _ranked(documents, await self.reranker.arerank(query, _docs(documents), top_k=self.top_n))


def _docs(documents: Sequence[LCDocument]) -> list[Document]:
    return [Document(str(i), d.page_content) for i, d in enumerate(documents)]


def _ranked(documents: Sequence[LCDocument], result: Any) -> list[LCDocument]:
    out = []
    for r in result.results:
        src = documents[int(r.doc.id)]
        meta = {**src.metadata, "relevance_score": r.relevance, "rerank_score": r.score, "rerank_rank": r.rank}
        out.append(LCDocument(page_content=src.page_content, metadata=meta, id=src.id))
    return out
