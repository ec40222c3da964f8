"""Long documents for heads whose scores are independent per document (cross-encoder, yes-no, ERank): ``long_docs``.

``truncate`` (default) reads a document's start, as far as the head reads. ``maxp`` and ``firstp`` split each
document's text into overlapping windows of at most ``passage_tokens`` tokens (the head's tokenizer), one every
``stride`` tokens, score each window as a document of its own (the document's title kept in front), and give the
document its best passage's score (``maxp``, Dai & Callan 2019) or its first passage's (``firstp``). A window holds
no more than the head reads of a document with that query (:meth:`~rerank.heads.base.Reranker.document_token_limit`:
the cross-encoder's pair less the query's share, an LLM head's ``max_doc_tokens`` less what fitting the prompt to the
context takes), measured on the passage as the head tokenises it (the title in front, special strings and turn
markers defanged, which can make a token several); a window that is longer is shortened, and the next one starts
within it, so every token of the text is read. A passage the head still cuts (a title that leaves no room) is
counted in ``stats.shortened_passages`` and logged as a warning. The result keeps one entry per input document; its
metadata names the passage that scored (``{"passage": {"index", "start", "end"}, "passages": n}``, character offsets
into the document's text). There is no sum of passage scores (Dai & Callan's SumP, their weakest variant): the
heads' scores are mostly unbounded logits or log-odds, whose sum ranks by document length and has no calibrated
relevance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from rerank.config import refuse_changed
from rerank.errors import ConfigError
from rerank.heads.text import neutralise, token_spans
from rerank.types import Candidate, Document, Query

__all__ = ["LONG_DOCS", "LongDocs", "ScoresByPassages", "check_long_docs", "fitted_windows", "read_tokens",
           "score_by_passages"]

LongDocs = Literal["truncate", "maxp", "firstp"]
LONG_DOCS: tuple[str, ...] = ("truncate", "maxp", "firstp")

ScoreFn = Callable[[list[Query], list[list[Candidate]]], list[list[float]]]
Metadata = list[list[dict[str, Any] | None]]
Limit = Callable[[str], int | None]

log = logging.getLogger(__name__)


def check_long_docs(cfg: Any, reads: int | None = None) -> None:
    """Validate ``long_docs``, ``passage_tokens`` and ``stride`` of a head's config (``reads``: the most tokens of a
    passage the head reads, which a passage must not exceed); passage settings other than their defaults need a
    passage mode (``truncate`` reads no passages, so they would do nothing)."""
    if cfg.long_docs not in LONG_DOCS:
        raise ConfigError(f"long_docs must be one of {list(LONG_DOCS)}, got {cfg.long_docs!r}")
    if cfg.long_docs == "truncate":
        refuse_changed(cfg, ("passage_tokens", "stride"), "when documents are scored by passages",
                       "set long_docs to maxp or firstp")
    if cfg.passage_tokens < 1 or not 1 <= cfg.stride <= cfg.passage_tokens:
        raise ConfigError(f"passage_tokens must be >= 1 and stride in 1..passage_tokens, got {cfg.passage_tokens} "
                          f"and {cfg.stride}")
    if cfg.long_docs != "truncate" and reads is not None and cfg.passage_tokens > reads:
        raise ConfigError(f"passage_tokens ({cfg.passage_tokens}) is more than the head reads of a document "
                          f"({reads} tokens); lower it or raise the head's document budget")


def read_tokens(tokenizer: Any, doc: Document) -> int:
    """Tokens of ``doc`` as a head reads it: title and text (``full_text``), special strings and turn markers
    defanged (:func:`~rerank.heads.text.neutralise`), no special tokens added."""
    return len(tokenizer.encode(neutralise(doc.full_text(), tokenizer), add_special_tokens=False, verbose=False))


def fitted_windows(tokenizer: Any, doc: Document, size: int, stride: int,
                   limit: int | None) -> tuple[list[tuple[int, int]], list[bool]]:
    """Character spans of ``doc.text``'s windows of at most ``size`` tokens, one every ``stride`` tokens, up to the
    window that reaches the last token; and for each, whether the head still cuts it.

    With a ``limit`` (the tokens of a document the head reads) each window is shortened until the head reads all of
    it (:func:`read_tokens` of the passage, its title included), and the next one starts within it (``stride`` scaled
    to its length), so no token is skipped; a window is cut only when its first token with the title is already more
    than the limit. Without one (or without a tokenizer) the windows are ``size`` tokens of :func:`token_spans`."""
    spans = token_spans(tokenizer, doc.text)
    if not spans:
        return [(0, 0)], [False]
    lim = limit if tokenizer is not None else None
    title_fills = False
    if lim is not None:
        title = read_tokens(tokenizer, Document("", "", doc.title)) if doc.title else 0
        title_fills = title >= lim  # no window can be read whole: they are as configured, and every one is cut
        if not title_fills:
            size = min(size, lim - title)
            stride = min(stride, size)
    out: list[tuple[int, int]] = []
    cut: list[bool] = []
    start, n = 0, len(spans)
    while True:
        end = min(start + size, n)
        over = title_fills
        if lim is not None and not title_fills:
            while True:
                cost = read_tokens(tokenizer, Document("", doc.text[spans[start][0] : spans[end - 1][1]], doc.title))
                if cost <= lim or end - start == 1:
                    over = cost > lim
                    break
                end = start + max(1, min(end - start - 1, (end - start) * lim // cost))
        out.append((spans[start][0], spans[end - 1][1]))
        cut.append(over)
        if end == n:
            return out, cut
        start += max(1, min(stride, (end - start) * stride // size))


def score_by_passages(
    score: ScoreFn, tokenizer: Any, queries: list[Query], candidate_lists: list[list[Candidate]], cfg: Any,
    limit: Limit | None = None, stats: Any = None, name: str = "",
) -> tuple[list[list[float]], Metadata | None]:
    """Scores per input document under ``cfg.long_docs``, scoring with ``score`` (the head's own, over candidates);
    metadata per document (None for ``truncate``). ``limit(query)``: the tokens of a document the head reads with that
    query (windows are sized to it, :func:`fitted_windows`); passages it still cuts are added to
    ``stats.shortened_passages`` and logged (``name``: the head's)."""
    if cfg.long_docs == "truncate":
        return score(queries, candidate_lists), None
    passage_lists: list[list[Candidate]] = []
    owners: list[list[tuple[int, int, tuple[int, int], int]]] = []  # (document, passage index, span, passages)
    cut = 0
    for query, cands in zip(queries, candidate_lists, strict=True):
        reads = limit(query.text) if limit is not None else None
        plist, own = [], []
        for i, c in enumerate(cands):
            windows, over = fitted_windows(tokenizer, c.doc, cfg.passage_tokens, cfg.stride, reads)
            scored = windows[:1] if cfg.long_docs == "firstp" else windows
            cut += sum(over[: len(scored)])
            for k, (a, b) in enumerate(scored):
                plist.append(Candidate(Document(f"{c.doc.id}#{k}", c.doc.text[a:b], c.doc.title), c.score))
                own.append((i, k, (a, b), len(windows)))
        passage_lists.append(plist)
        owners.append(own)
    if cut:
        if stats is not None:
            stats.shortened_passages += cut
        log.warning("%s: %d passage(s) are longer than the head reads of a document with this query (the title "
                    "leaves too little room): their ends are cut (long_docs=%s, shortened_passages)",
                    name or "long_docs", cut, cfg.long_docs)
    passage_scores = score(queries, passage_lists)
    scores: list[list[float]] = []
    metadata: Metadata = []
    for cands, own, ps in zip(candidate_lists, owners, passage_scores, strict=True):
        best: list[tuple[float, int, tuple[int, int], int] | None] = [None] * len(cands)
        for (i, k, span, n), s in zip(own, ps, strict=True):
            cur = best[i]
            if cur is None or s > cur[0]:
                best[i] = (s, k, span, n)
        row, meta = [], []
        for i in range(len(cands)):
            s, k, (a, b), n = best[i]  # type: ignore[misc]
            row.append(s)
            meta.append({"passage": {"index": k, "start": a, "end": b}, "passages": n})
        scores.append(row)
        metadata.append(meta)
    return scores, metadata


class ScoresByPassages:
    """Mixin of the heads with independent scores: :meth:`score_batch` and :meth:`score_with_metadata` score the
    documents under the config's ``long_docs`` with the head's :meth:`score_passages` (put it before the head's base
    class)."""

    config: Any
    tokenizer: Any
    stats: Any
    method: str
    document_token_limit: Callable[[str], int | None]

    def score_passages(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        """Scores of the candidates as given (each cut to what the head reads)."""
        raise NotImplementedError

    def score_with_metadata(
        self, queries: list[Query], candidate_lists: list[list[Candidate]]
    ) -> tuple[list[list[float]], Metadata | None]:
        """Document scores under ``long_docs`` (by passages, each window sized to what the head reads of a document
        with the query, :meth:`document_token_limit`: which passage scored, in the metadata)."""
        return score_by_passages(self.score_passages, self.tokenizer, queries, candidate_lists, self.config,
                                 self.document_token_limit, self.stats, self.method)

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        return self.score_with_metadata(queries, candidate_lists)[0]
