"""Shared plumbing of the pointwise LLM heads (yes-no, ERank): one prompt per (query, document) pair.

Pairs from all queries of a batch are flattened, sent to the backend in chunks of ``batch_size`` prompts, and the
scores are split back per query. Documents and queries are truncated in tokens before rendering, so the
instruction and the chat template's tail are always intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank.errors import ConfigError
from rerank.heads.llm import LLMReranker
from rerank.types import Candidate, Query

__all__ = ["PointwiseLLMReranker", "continuation_ids"]


def continuation_ids(tokenizer: Any, context: str, continuation: str) -> list[int]:
    """Token ids ``continuation`` gets right after ``context`` (tokenisation can depend on the left context)."""
    base = tokenizer.encode(context, add_special_tokens=False)
    full = tokenizer.encode(context + continuation, add_special_tokens=False)
    if full[: len(base)] != base or len(full) == len(base):
        raise ConfigError(
            f"cannot isolate the tokens of {continuation!r} after {context[-30:]!r}: the tokenizer merges them"
        )
    return full[len(base) :]


class PointwiseLLMReranker(LLMReranker):
    """Base of heads that score each (query, document) pair independently from one prompt."""

    def pair_messages(self, query: Query, candidates: list[Candidate]) -> list[list[dict[str, str]]]:
        """Chat messages per candidate, with the query and each document truncated to their token limits."""
        cfg = self.config
        q = self.truncate(query.text, cfg.max_query_tokens)  # type: ignore[attr-defined]
        return [
            self.template.messages(query=q, document=self.truncate(c.doc.full_text(), cfg.max_doc_tokens))  # type: ignore[attr-defined]
            for c in candidates
        ]

    def pair_prompts(self, query: Query, candidates: list[Candidate]) -> list[str]:
        """The rendered prompt per candidate (chat template + the template's assistant prefix): what the head scores
        and what training (:mod:`rerank.trainers.task`) trains on."""
        return [self.render(m, self.template.assistant_prefix) for m in self.pair_messages(query, candidates)]

    def flat_prompts(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[str]:
        """All pairs' rendered prompts of a batch, query-major."""
        return [p for q, c in zip(queries, candidate_lists, strict=True) for p in self.pair_prompts(q, c)]

    def chunks(self, n: int) -> list[range]:
        """Index ranges of at most ``batch_size`` prompts (one backend call each)."""
        size = self.config.batch_size
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    @staticmethod
    def split(flat: Sequence[float], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        """Undo :meth:`flat_prompts`: flat scores back into per-query lists."""
        out, i = [], 0
        for c in candidate_lists:
            out.append([float(x) for x in flat[i : i + len(c)]])
            i += len(c)
        return out

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]
