"""Request bodies of the rerank endpoints: Cohere v1/v2 (``/v1/rerank``, ``/v2/rerank``) and TEI (``/rerank``).

Unknown fields are rejected (422 naming the field) rather than silently ignored.
"""

from __future__ import annotations

from typing import Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DocumentObject", "CohereRerankRequest", "TeiRerankRequest"]


class DocumentObject(BaseModel):
    """A document given as an object: ``text`` is ranked, ``title`` (optional) is prepended; other fields echo back."""

    model_config = ConfigDict(extra="allow", strict=True)

    text: str
    title: Union[str, None] = None


class CohereRerankRequest(BaseModel):
    """Cohere's rerank request; ``model`` is accepted for client compatibility (this server serves one model)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str
    documents: list[Union[str, DocumentObject]]
    top_n: Union[int, None] = Field(default=None, ge=1)
    return_documents: bool = False
    model: Union[str, None] = None


class TeiRerankRequest(BaseModel):
    """Text-Embeddings-Inference's rerank request; ``raw_scores=false`` maps scores through a sigmoid as TEI does."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
