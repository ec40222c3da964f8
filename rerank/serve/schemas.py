"""Request bodies of the rerank endpoints: Cohere v1/v2 (``/v1/rerank``, ``/v2/rerank``), and at ``/rerank`` TEI's
(``texts``) or Infinity's, which is Cohere's (``documents``).

Every field those APIs document is accepted (Cohere rerank v1 and v2, TEI ``/rerank``), plus the ones real clients
send beyond them (``model`` and ``top_n`` from the ``rerankers`` TEI provider; ``raw_scores`` on Cohere bodies, this
server's way to return the head's own score too). ``null`` means "not given" for every optional field, since the
Cohere SDK sends ``null`` for arguments left unset. Unknown fields are rejected (422 naming the field), so a typo such
as ``topn`` is not silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rerank.utils.text import has_readable_text, unread_characters

__all__ = ["CohereRerankRequest", "TeiRerankRequest", "RerankOptions"]

# Cohere documents: a string, or an object whose fields are strings (``text`` ranked unless ``rank_fields`` says
# which fields to rank); other JSON values in an object are ranked as their JSON text.
CohereDocument = Union[str, dict[str, Any]]

_EMPTY_QUERY = "query must not be empty: there is nothing to rank the documents against"


class RerankOptions(BaseModel):
    """Fields of both API families: the served model's name (accepted, not checked) and how many results to return."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Union[str, None] = None
    top_n: Union[int, None] = Field(default=None, ge=1)

    @field_validator("query", check_fields=False)
    @classmethod
    def _query_has_text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(_EMPTY_QUERY)
        if not has_readable_text(v):
            shown = unread_characters(v)
            raise ValueError(f"query must not be empty: it has only characters the model does not read ({shown}: "
                             "control or invisible format characters), so there is nothing to rank the documents "
                             "against")
        return v


class CohereRerankRequest(RerankOptions):
    """Cohere rerank v1 and v2. ``max_tokens_per_doc`` cuts each document to that many tokens (v2);
    ``max_chunks_per_doc`` scores up to that many passages of a document and keeps the best (v1); ``rank_fields``
    names the fields of object documents to rank, in order (v1); ``priority`` orders a busy queue, lower first (v2)."""

    query: str
    documents: list[CohereDocument]
    return_documents: Union[bool, None] = None
    rank_fields: Union[list[str], None] = None
    max_chunks_per_doc: Union[int, None] = Field(default=None, ge=1)
    max_tokens_per_doc: Union[int, None] = Field(default=None, ge=1)
    priority: Union[int, None] = Field(default=None, ge=0)
    raw_scores: Union[bool, None] = None

    @field_validator("rank_fields")
    @classmethod
    def _nonempty_fields(cls, v: Union[list[str], None]) -> Union[list[str], None]:
        if v is not None and (not v or any(not f for f in v)):
            raise ValueError("rank_fields must be a non-empty list of field names")
        return v


class TeiRerankRequest(RerankOptions):
    """Text-Embeddings-Inference ``/rerank``. ``truncate`` (default true here, as TEI's ``--auto-truncate``): false
    answers 413 for a text longer than the head reads; ``truncation_direction`` Left keeps a long text's end."""

    query: str
    texts: list[str]
    raw_scores: Union[bool, None] = None
    return_text: Union[bool, None] = None
    truncate: Union[bool, None] = None
    truncation_direction: Union[Literal["Left", "Right", "left", "right"], None] = None
