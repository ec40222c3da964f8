"""The small typed core that every stage of the pipeline passes along.

Data flows one way: dataset (queries, corpus, qrels) -> first stage (a :data:`Run`) -> reranker
(:class:`RankedResult` per query) -> metrics. Runs and qrels are plain dicts so that they interoperate with
ir-measures and pytrec_eval without copies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, overload

import numpy as np

__all__ = [
    "ArrayRanking",
    "Candidate",
    "Document",
    "Qrels",
    "Query",
    "RankedResult",
    "Run",
    "ScoredDocument",
    "lone_surrogate",
    "sort_ranking",
]


@dataclass(frozen=True, slots=True)
class Query:
    """A search query; a non-string id or text is a ``TypeError`` naming the field (it would otherwise fail deep in a
    head, or give a run keyed by ``None``)."""

    id: str
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise TypeError(f"Query id must be a string, got {type(self.id).__name__} ({self.id!r})")
        if not isinstance(self.text, str):
            raise TypeError(f"Query {self.id!r}: text must be a string, got {type(self.text).__name__}")


@dataclass(frozen=True, slots=True)
class Document:
    """A corpus document; ``title`` may be empty. Its fields are not checked when it is built (a corpus builds
    millions): the readers check each record naming its line, and a reranker each document naming its position."""

    id: str
    text: str
    title: str = ""

    def full_text(self, sep: str = "\n") -> str:
        """Title and body as one string (the form BM25 indexes and rerankers read)."""
        return f"{self.title}{sep}{self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class Candidate:
    """A document proposed by a first stage, with that stage's score (``None`` when unknown)."""

    doc: Document
    score: float | None = None


@dataclass(frozen=True, slots=True)
class ScoredDocument:
    """One entry of a reranked list: the document, the reranker's score and its 1-based rank. ``metadata`` holds what
    the head adds about this score (a long document scored by passages: which passage, ``long_docs`` in the README);
    ``relevance`` is the score mapped to [0, 1] over the whole list (``Reranker.relevance``, what Cohere clients get),
    so it stays right after a ``top_k`` cut."""

    doc: Document
    score: float
    rank: int
    first_stage_score: float | None = None
    metadata: dict[str, Any] | None = None
    relevance: float | None = None

    @property
    def id(self) -> str:
        return self.doc.id


@dataclass(slots=True)
class RankedResult:
    """The ranked list a reranker returns for one query: every input document exactly once, best first. Documents
    with equal scores keep their input order (the first stage's, for a run), not trec_eval's doc-id order: evaluate
    the order shown with :meth:`to_run`, not with the raw scores."""

    query: Query
    results: list[ScoredDocument]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def doc_ids(self) -> list[str]:
        return [r.doc.id for r in self.results]

    def top(self, k: int | None) -> list[ScoredDocument]:
        return self.results if k is None else self.results[:k]

    def to_run(self) -> Run:
        """This ranking as a one-query run with rank-derived scores (n for the first of n, as ``rerank eval`` writes
        ``run.trec``), so :func:`~rerank.eval.metrics.evaluate_run` and trec_eval score exactly the order shown; the
        raw scores can tie, and ties are then broken by doc id."""
        n = len(self.results)
        return {self.query.id: [(r.doc.id, float(n - i)) for i, r in enumerate(self.results)]}


class ArrayRanking(Sequence[tuple[str, float]]):
    """A ranked list held as two numpy arrays (doc ids, scores), read as (doc id, score) pairs.

    A first stage returns it so that retrieving 1000 documents a query builds no Python pair per hit; the pairs are
    made when read (iteration zips the arrays in C). It compares equal to a list of the same pairs."""

    __slots__ = ("ids", "scores")

    def __init__(self, ids: np.ndarray, scores: np.ndarray) -> None:
        if len(ids) != len(scores):
            raise ValueError(f"{len(ids)} doc ids but {len(scores)} scores")
        self.ids, self.scores = ids, scores

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return zip(self.ids.tolist(), self.scores.tolist())

    @overload
    def __getitem__(self, i: int) -> tuple[str, float]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[str, float]]: ...
    def __getitem__(self, i: int | slice) -> tuple[str, float] | list[tuple[str, float]]:
        if isinstance(i, slice):
            return list(zip(self.ids[i].tolist(), self.scores[i].tolist()))
        return str(self.ids[i]), float(self.scores[i])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ArrayRanking({list(self)!r})"


# qid -> ranked list of (doc id, score), best first: a list, or an ArrayRanking from a first stage.
Run = dict[str, Sequence[tuple[str, float]]]
# qid -> doc id -> graded relevance.
Qrels = dict[str, dict[str, int]]


_SCORE_THEN_ID = itemgetter(1, 0)  # (score, doc id): a C-level key, 1.3-1.5x faster than a lambda on 1000-pair lists


def sort_ranking(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Order (doc id, score) pairs as trec_eval does: score descending, ties by doc id descending.

    Every run we read, every first stage's run and every run file we write is kept in this order, so "the top-k"
    means exactly the k documents that trec_eval would score, and written run files reproduce our metrics. A
    reranker's :class:`RankedResult` is not: its ties keep their input order (:meth:`RankedResult.to_run` gives it as
    a run in this order).
    """
    return sorted(pairs, key=_SCORE_THEN_ID, reverse=True)


def lone_surrogate(text: str) -> str | None:
    """Where ``text``'s first lone UTF-16 surrogate is (``"character 4 (\\ud800)"``), or None. JSON's ``\\ud800``
    escape reads into one, yet such text is not valid Unicode: it cannot be encoded, and tokenizers refuse it. Costs
    nothing on ASCII text (``str.isascii`` is O(1) in CPython) and one UTF-8 encoding otherwise."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"character {e.start} (\\u{ord(text[e.start]):04x})"
    return None
