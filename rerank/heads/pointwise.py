"""Shared plumbing of the pointwise LLM heads (yes-no, ERank): one prompt per (query, document) pair.

Pairs from all queries of a batch are flattened, sent to the backend in chunks of ``batch_size`` prompts, and the
scores are split back per query. Queries and documents are prepared (special strings neutralised, cut in tokens)
before rendering, so the instruction and the chat template's tail are always intact, and each prompt is fitted to the
backend's context less what the head appends after it (:meth:`PointwiseLLMReranker.reserve`). Long documents are
read as ``long_docs`` says (:mod:`rerank.heads.passages`): cut, or scored by passages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rerank.errors import ConfigError
from rerank.heads.base import RerankerConfig, split_scores
from rerank.heads.llm import LLMHeadConfig, LLMReranker
from rerank.heads.passages import LongDocs, ScoresByPassages, check_long_docs
from rerank.types import Candidate, Query

__all__ = ["PointwiseConfig", "PointwiseLLMReranker", "continuation_ids"]


@dataclass
class PointwiseConfig(LLMHeadConfig):
    """Options of the pointwise LLM heads: ``long_docs`` (``truncate`` | ``maxp`` | ``firstp``) with
    passages of ``passage_tokens`` tokens every ``stride`` (at most ``max_doc_tokens``; see
    :mod:`rerank.heads.passages`)."""

    long_docs: LongDocs = "truncate"
    passage_tokens: int = 200
    stride: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        check_long_docs(self, self.max_doc_tokens)


def continuation_ids(tokenizer: Any, context: str, continuation: str) -> list[int]:
    """Token ids ``continuation`` gets right after ``context`` (tokenisation can depend on the left context)."""
    base = tokenizer.encode(context, add_special_tokens=False)
    full = tokenizer.encode(context + continuation, add_special_tokens=False)
    if full[: len(base)] != base or len(full) == len(base):
        raise ConfigError(
            f"cannot isolate the tokens of {continuation!r} after {context[-30:]!r}: the tokenizer merges them"
        )
    return full[len(base) :]


class PointwiseLLMReranker(ScoresByPassages, LLMReranker):
    """Base of heads that score each (query, document) pair independently from one prompt; subclasses implement
    :meth:`score_passages` (the scores of the candidates as given). Its options are :class:`PointwiseConfig`'s
    (what the base reads, ``long_docs`` included); a head with options of its own subclasses that config."""

    config_class: ClassVar[type[RerankerConfig]] = PointwiseConfig
    independent_scores = True

    def reserve(self) -> int:
        """Tokens the head appends to or generates after a pair prompt (the prompt is fitted to the context less
        these)."""
        return 0

    def document_token_limit(self, query: str) -> int | None:
        """Tokens of a document the prompt holds with ``query``: ``max_doc_tokens``, less what fitting the prompt to
        the model's context cuts (as :meth:`fit` does: the query keeps at most half the room the template leaves, a
        document the rest), so a server's ``truncate: false`` and passage chunks follow what the model reads."""
        cfg: PointwiseConfig = self.config  # type: ignore[assignment]
        context = self.backend.context_length
        if context is None:
            return cfg.max_doc_tokens

        def length(q: str, doc: str) -> int:
            ids = self.pair_token_ids(q, [doc]) if self.pair_token_ids is not None else self.encode(
                self._render_pair(q, [doc]))
            return len(ids)

        base = length("", "")
        free = context - self.reserve() - base
        query_tokens = length(self.prepare(query, cfg.max_query_tokens), "") - base
        room = free - min(query_tokens, free // 2)
        return max(1, min(cfg.max_doc_tokens, room))

    def _render_pair(self, query: str, documents: list[str]) -> str:
        messages = self.template.messages(query=query, document=documents[0])
        return self.render(messages, self.template.assistant_prefix)

    def pair_inputs(self, query: Query, candidates: list[Candidate]) -> list[tuple[str, list[int]]]:
        """The rendered prompt per candidate (chat template + the template's assistant prefix) and its token ids,
        query and document prepared and the prompt fitted to the context."""
        cfg: PointwiseConfig = self.config  # type: ignore[assignment]
        q = self.prepare(query.text, cfg.max_query_tokens)
        reserve = self.reserve()
        return [self.fit(q, [self.prepare(c.doc.full_text(), cfg.max_doc_tokens)], self._render_pair, reserve,
                         self.pair_token_ids)
                for c in candidates]

    #: token ids of a pair prompt from its query and document when they are not the rendered text's (a head that
    #: tokenises its prompt's pieces apart overrides this with a method); None: the rendered text's.
    pair_token_ids: Callable[[str, list[str]], list[int]] | None = None

    def pair_prompts(self, query: Query, candidates: list[Candidate]) -> list[str]:
        """The rendered prompt per candidate: what the head scores and what training (:mod:`rerank.trainers.task`)
        trains on."""
        return [text for text, _ in self.pair_inputs(query, candidates)]

    def flat_inputs(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[tuple[str, list[int]]]:
        """All pairs' prompts (text, token ids) of a batch, query-major."""
        return [p for q, c in zip(queries, candidate_lists, strict=True) for p in self.pair_inputs(q, c)]

    def chunks(self, n: int) -> list[range]:
        """Index ranges of at most ``batch_size`` prompts (one backend call each)."""
        size = self.config.batch_size
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    @staticmethod
    def split(flat: Sequence[float], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        """Undo :meth:`flat_inputs`: flat scores back into per-query lists."""
        return split_scores(flat, candidate_lists)

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]
