"""duoT5: pairwise reranking of a list's top ``top_k`` (in the order given, e.g. monoT5's or the first stage's).

All k(k-1) ordered pairs are scored, p_ij = P(true | Query, Document0 = d_i, Document1 = d_j); the sym-sum aggregate
s_i = sum_{j != i} p_ij + (1 - p_ji) ranks the top k. Documents below ``top_k`` keep their order beneath them (score
-1 - their position among them). Cost: k(k-1) encoder inputs per query.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rerank.errors import ConfigError
from rerank.heads.base import RerankerConfig
from rerank.methods.monot5.head import Seq2SeqConfig, Seq2SeqReranker
from rerank.types import Candidate, Query

__all__ = ["DuoT5Config", "DuoT5Reranker"]


@dataclass
class DuoT5Config(Seq2SeqConfig):
    """duoT5 options: ``top_k`` documents compared pairwise (the paper's 50 costs 2,450 inputs per query)."""

    top_k: int = 10
    max_doc_tokens: int = 200

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_k < 2:
            raise ConfigError(f"top_k must be >= 2 (pairs), got {self.top_k}")


class DuoT5Reranker(Seq2SeqReranker):
    """Sym-sum of pairwise P(true) over the top ``top_k``."""

    method = "duot5"
    config_class: ClassVar[type[RerankerConfig]] = DuoT5Config

    def pairs(self, n: int) -> list[tuple[int, int]]:
        """The ordered pairs (i, j), i != j, of a list's first ``min(top_k, n)`` documents."""
        k = min(self.config.top_k, n)  # type: ignore[attr-defined]
        return [(i, j) for i in range(k) for j in range(k) if i != j]

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        cfg: DuoT5Config = self.config  # type: ignore[assignment]
        inputs: list[list[int]] = []
        for q, cs in zip(queries, candidate_lists, strict=True):
            qt = self.truncate(q.text, cfg.max_query_tokens)
            docs = [self.truncate(c.doc.full_text(), cfg.max_doc_tokens) for c in cs[: cfg.top_k]]
            inputs += [self.encode(query=qt, document0=docs[i], document1=docs[j]) for i, j in self.pairs(len(cs))]
        p = [math.exp(x) for x in self.log_p_true(inputs)]
        out, at = [], 0
        for cs in candidate_lists:
            pairs = self.pairs(len(cs))
            prob = dict(zip(pairs, p[at : at + len(pairs)], strict=True))
            at += len(pairs)
            k = min(cfg.top_k, len(cs))
            scores = [sum(prob[i, j] + 1.0 - prob[j, i] for j in range(k) if j != i) for i in range(k)]
            out.append(scores + [-1.0 - t for t in range(len(cs) - k)])
        return out

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """The sym-sum over its maximum 2(k - 1), in [0, 1]; documents below ``top_k`` get 0."""
        k = min(self.config.top_k, len(scores))  # type: ignore[attr-defined]
        return [min(max(float(s), 0.0) / max(2.0 * (k - 1), 1.0), 1.0) for s in scores]
