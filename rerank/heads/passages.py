"""Long documents for heads whose scores are independent per document (cross-encoder, yes-no, ERank): ``long_docs``.

``truncate`` (default) reads a document's start, as far as the head reads. ``maxp`` and ``firstp`` split each
document's text into overlapping windows of ``passage_tokens`` tokens (the head's tokenizer), one every ``stride``
tokens, score each window as a document of its own (the document's title kept in front), and give the document its
best passage's score (``maxp``, Dai & Callan 2019) or its first passage's (``firstp``). The result keeps one entry per
input document; its metadata names the passage that scored (``{"passage": {"index", "start", "end"}, "passages": n}``,
character offsets into the document's text). There is no sum of passage scores (Dai & Callan's SumP, their weakest
variant): the heads' scores are mostly unbounded logits or log-odds, whose sum ranks by document length and has no
calibrated relevance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from rerank.config import refuse_changed
from rerank.errors import ConfigError
from rerank.heads.text import passage_windows, token_spans
from rerank.types import Candidate, Document, Query

__all__ = ["LONG_DOCS", "LongDocs", "ScoresByPassages", "check_long_docs", "score_by_passages"]

LongDocs = Literal["truncate", "maxp", "firstp"]
LONG_DOCS: tuple[str, ...] = ("truncate", "maxp", "firstp")

ScoreFn = Callable[[list[Query], list[list[Candidate]]], list[list[float]]]
Metadata = list[list[dict[str, Any] | None]]


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


def score_by_passages(
    score: ScoreFn, tokenizer: Any, queries: list[Query], candidate_lists: list[list[Candidate]], cfg: Any
) -> tuple[list[list[float]], Metadata | None]:
    """Scores per input document under ``cfg.long_docs``, scoring with ``score`` (the head's own, over candidates);
    metadata per document (None for ``truncate``)."""
    if cfg.long_docs == "truncate":
        return score(queries, candidate_lists), None
    passage_lists: list[list[Candidate]] = []
    owners: list[list[tuple[int, int, tuple[int, int], int]]] = []  # (document, passage index, span, passages)
    for cands in candidate_lists:
        plist, own = [], []
        for i, c in enumerate(cands):
            windows = passage_windows(token_spans(tokenizer, c.doc.text), cfg.passage_tokens, cfg.stride)
            for k, (a, b) in enumerate(windows[:1] if cfg.long_docs == "firstp" else windows):
                plist.append(Candidate(Document(f"{c.doc.id}#{k}", c.doc.text[a:b], c.doc.title), c.score))
                own.append((i, k, (a, b), len(windows)))
        passage_lists.append(plist)
        owners.append(own)
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

    def score_passages(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        """Scores of the candidates as given (each cut to what the head reads)."""
        raise NotImplementedError

    def score_with_metadata(
        self, queries: list[Query], candidate_lists: list[list[Candidate]]
    ) -> tuple[list[list[float]], Metadata | None]:
        """Document scores under ``long_docs`` (by passages: which passage scored, in the metadata)."""
        return score_by_passages(self.score_passages, self.tokenizer, queries, candidate_lists, self.config)

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        return self.score_with_metadata(queries, candidate_lists)[0]
