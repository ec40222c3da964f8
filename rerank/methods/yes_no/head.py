"""yes-no: pointwise relevance = log P("yes") - log P("no") at the answer position (one forward per pair).

The answer words are template options (``positive`` / ``negative``); their token ids are those the tokenizer gives
the word right after the generation prompt (and the template's assistant prefix), i.e. the answer's first token.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rerank.backends.base import Backend
from rerank.heads.base import RerankerConfig
from rerank.heads.pointwise import PointwiseConfig, PointwiseLLMReranker, continuation_ids
from rerank.types import Candidate, Query

__all__ = ["LOW_ANSWER_MASS", "YesNoConfig", "YesNoReranker"]

log = logging.getLogger(__name__)

#: below this mean probability of the two answer words at the answer position, the head warns (once per reranker):
#: the model does not answer with them, and their log-odds rank by noise
LOW_ANSWER_MASS = 0.1


@dataclass
class YesNoConfig(PointwiseConfig):
    """yes-no options (see :class:`PointwiseConfig`); the answer words live in the template."""


class YesNoReranker(PointwiseLLMReranker):
    """Score = log P(positive word) - log P(negative word) as the first answer token."""

    method = "yes-no"
    config_class: ClassVar[type[RerankerConfig]] = YesNoConfig

    def __init__(
        self,
        config: YesNoConfig | None = None,
        backend: Backend | None = None,
        model: str | None = None,
        backend_name: str = "transformers",
    ) -> None:
        """Load the head and check at once that the tokenizer gives the answer words their own first tokens after
        the prompt (a tokenizer that merges them with the prompt's last token would otherwise fail only at the first
        rerank, after the model loaded)."""
        super().__init__(config, backend=backend, model=model, backend_name=backend_name)
        self._warned_answer_mass = False
        try:
            self.answer_token_ids()
        except ValueError:  # ConfigError (merged tokens) or the same first token for both words
            if backend is None:  # the head built the backend: release it
                self.close()
            raise

    def answer_token_ids(self) -> tuple[int, int]:
        """First token ids of the positive and negative answer words after the generation prompt."""
        context = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
        ) + self.template.assistant_prefix
        pos = continuation_ids(self.tokenizer, context, str(self.template.extra.get("positive", "yes")))[0]
        neg = continuation_ids(self.tokenizer, context, str(self.template.extra.get("negative", "no")))[0]
        if pos == neg:
            raise ValueError("the positive and negative answer words start with the same token")
        return pos, neg

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """P(positive) / (P(positive) + P(negative)), which is the sigmoid of the log-odds score."""
        return super().relevance(scores)

    def score_passages(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        pos, neg = self.answer_token_ids()
        prompts = [ids for _, ids in self.flat_inputs(queries, candidate_lists)]
        flat: list[float] = []
        mass = 0.0
        for idx in self.chunks(len(prompts)):
            for lp_pos, lp_neg in self.backend.next_token_logprobs([prompts[i] for i in idx], [pos, neg]):
                flat.append(lp_pos - lp_neg)
                mass += math.exp(min(lp_pos, 0.0)) + math.exp(min(lp_neg, 0.0))
        if prompts and mass / len(prompts) < LOW_ANSWER_MASS and not getattr(self, "_warned_answer_mass", False):
            self._warned_answer_mass = True
            words = (self.template.extra.get("positive", "yes"), self.template.extra.get("negative", "no"))
            log.warning("%s: the answer words %r / %r take %.1f%% of the model's next-token probability on average: "
                        "it answers in other words (e.g. capitalised), so the scores are log-odds of rare tokens; set "
                        "the template's positive / negative words to what the model writes", self.method, *words,
                        100 * mass / len(prompts))
        return self.split(flat, candidate_lists)
