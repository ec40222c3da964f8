"""From a request's documents to what the head scores, and back: per-request token budgets, passages, parts.

A request's documents become *passages*: each document cut to ``max_tokens`` tokens (Cohere ``max_tokens_per_doc``),
cut from the left to what the head reads (TEI ``truncation_direction: Left``), or split into at most ``max_chunks``
windows of what the head reads (Cohere ``max_chunks_per_doc``; the document scores as its best passage, as Cohere
does). The head reads a document's title (put before each of its passages) and then the passage, so the title's tokens
come off each window and every token of the text is read by some passage. Tokens are the head's own tokenizer's
(``reranker.tokenizer`` when it is a fast tokenizer, which gives character offsets), else whitespace-separated words.
Passages beyond the server's per-call limit are scored in parts when the head's scores are independent of the list
(``Reranker.independent_scores``) and merged by score.
:func:`token_counter` counts texts' tokens for a response's ``usage``: the head's tokenizer's tokens (any Hugging Face
tokenizer, no special tokens), else whitespace-separated words.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rerank.heads.base import Reranker
from rerank.heads.passages import fitted_windows, read_tokens
from rerank.heads.text import token_spans
from rerank.types import Candidate, Document

__all__ = ["Budget", "Passages", "TextTooLong", "make_passages", "merge", "token_counter"]

log = logging.getLogger(__name__)


class TextTooLong(ValueError):
    """A text is longer than the head reads and the request asked not to truncate (TEI ``truncate: false``)."""


@dataclass(frozen=True)
class Budget:
    """Per-request document options: a token cap, a passage count, which end a cut keeps, and whether to cut."""

    max_tokens: int | None = None
    max_chunks: int | None = None
    keep: Literal["start", "end"] = "start"
    truncate: bool = True

    @property
    def needs_tokens(self) -> bool:
        """Whether documents must be tokenised (the default budget passes them through untouched)."""
        return self.max_tokens is not None or self.max_chunks is not None or self.keep == "end" or not self.truncate


@dataclass
class Passages:
    """The candidates to score (``candidates[k]`` is a passage of document ``owner[k]``) for ``n_docs`` documents."""

    candidates: list[Candidate]
    owner: list[int]
    n_docs: int


def make_passages(
    reranker: Reranker, query: str, docs: Sequence[tuple[str, str]], budget: Budget, names: str = "documents"
) -> Passages:
    """Apply ``budget`` to ``docs`` (``(text, title)`` pairs); run where the head's tokenizer may be used (the
    model thread: fast tokenizers are not safe to share between threads). Raises :class:`TextTooLong`."""
    limit = reranker.document_token_limit(query) if budget.needs_tokens else None
    cands: list[Candidate] = []
    owner: list[int] = []
    tokenizer = getattr(reranker, "tokenizer", None) if budget.needs_tokens else None
    for i, (text, title) in enumerate(docs):
        pieces = [text]
        if budget.needs_tokens:
            spans = token_spans(tokenizer, text)
            room = limit
            if limit is not None and title:  # the head reads the title (and separator) before every passage
                room = max(1, limit - len(token_spans(tokenizer, Document("", "", title).full_text())))
            if not budget.truncate and limit is not None:
                reads = _reads(tokenizer, text, title, spans, limit - (room or 0))
                if reads > limit:
                    with_title = " (title included)" if title else ""
                    raise TextTooLong(
                        f"{names}[{i}] has {reads} tokens as the model reads it{with_title} and the model "
                        f"reads at most {limit} with this query; send truncate: true to cut it"
                    )
            if budget.max_tokens is not None and len(spans) > budget.max_tokens:
                spans = spans[: budget.max_tokens]
            window = room if room is not None else len(spans)
            if budget.max_chunks is not None and window and tokenizer is not None and limit is not None and spans:
                # windows measured as the head reads them (title in front, special strings defanged)
                kept = Document("", text[: spans[-1][1]], title)
                spans_list = [[(a, b)] for a, b in fitted_windows(tokenizer, kept, limit, limit, limit)[0]]
                spans_list = spans_list[: budget.max_chunks]
            elif budget.max_chunks is not None and window:
                spans_list = [spans[k : k + window] for k in range(0, len(spans), window)][: budget.max_chunks]
            elif (budget.keep == "end" and limit is not None and room is not None and spans
                  and _reads(tokenizer, text[: spans[-1][1]], title, spans, limit - room) > limit):
                spans_list = [_last_read(tokenizer, text, title, spans, room, limit)]
            else:
                spans_list = [spans]
            pieces = [text[s[0][0] : s[-1][1]] if s else "" for s in spans_list] or [""]
        for piece in pieces:
            cands.append(Candidate(Document(str(len(cands)), piece, title)))
            owner.append(i)
    return Passages(cands, owner, len(docs))


def _reads(tokenizer: Any, text: str, title: str, spans: list[tuple[int, int]], title_tokens: int) -> int:
    """Tokens the head reads of ``text`` behind ``title``: with a tokenizer as the head tokenises it (special strings
    defanged, :func:`read_tokens`), else the text's words plus the title's (``title_tokens``)."""
    if tokenizer is None:
        return len(spans) + title_tokens
    return read_tokens(tokenizer, Document("", text, title))


def _last_read(tokenizer: Any, text: str, title: str, spans: list[tuple[int, int]], room: int,
               limit: int | None) -> list[tuple[int, int]]:
    """The last tokens of ``text`` the head reads whole behind ``title``: ``room`` of them, fewer where defanging
    special strings makes the passage longer as the head reads it (a cut there would drop the end it should keep)."""
    k = min(room, len(spans))
    while tokenizer is not None and limit is not None and k > 1:
        cost = read_tokens(tokenizer, Document("", text[spans[-k][0] : spans[-1][1]], title))
        if cost <= limit:
            break
        k = max(1, min(k - 1, k * limit // cost))
    return spans[-k:]


def merge(passages: Passages, raw: Sequence[float], relevance: Sequence[float]) -> list[tuple[int, float, float]]:
    """``(document index, raw score, relevance)`` best first: each document scores as its best passage; ties keep
    input order, as :meth:`Reranker.rerank_batch` does."""
    best: list[tuple[float, float] | None] = [None] * passages.n_docs
    for k, i in enumerate(passages.owner):
        cur = best[i]
        if cur is None or raw[k] > cur[0]:
            best[i] = (raw[k], relevance[k])
    scored = [(i, b[0], b[1]) for i, b in enumerate(best) if b is not None]
    return sorted(scored, key=lambda t: -t[1])


def token_counter(reranker: Reranker) -> Callable[[Sequence[str]], list[int]]:
    """A function counting each text's tokens as the head's tokenizer does (no special tokens), or its
    whitespace-separated words for a head without a tokenizer (``remote``). It holds its own copy of the tokenizer
    (a fast tokenizer is not safe to share with the model thread), so it runs on a thread of its own, one call at a
    time."""
    try:
        tokenizer: Any = getattr(reranker, "tokenizer", None)
    except Exception:  # noqa: BLE001 - a head whose tokenizer cannot be had counts words
        tokenizer = None
    if tokenizer is not None and callable(tokenizer):
        try:
            tokenizer = copy.deepcopy(tokenizer)
        except Exception as e:  # noqa: BLE001 - said once at start: usage then counts words
            log.warning("the tokenizer cannot be copied for counting (%s: %s); usage counts words", type(e).__name__, e)
            tokenizer = None
    else:
        tokenizer = None
    if tokenizer is None:
        return lambda texts: [len(token_spans(None, t)) for t in texts]

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    return count
