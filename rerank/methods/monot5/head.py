"""monoT5 (pointwise) and the shared plumbing of the seq2seq heads (:class:`Seq2SeqReranker`, used by duoT5).

A seq2seq template has a user text only; it is rendered with the query and the document(s) cut to their token
limits, then tokenised with the tokenizer's own special tokens (T5 appends ``</s>``). The answer words are template
options (``positive`` / ``negative``: "true" / "false"); their ids are the first token the tokenizer gives each. A
subclass registered from user code reads the templates of the method whose head it subclasses
(:meth:`~rerank.heads.base.Reranker.prompt_method`), as the LLM heads do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rerank.config import from_dict, to_dict
from rerank.errors import ConfigError
from rerank.heads.base import Reranker, RerankerConfig, check_local_model, split_scores
from rerank.heads.text import neutralise
from rerank.methods.monot5.seq2seq import Seq2SeqModel, TransformersSeq2Seq
from rerank.prompts import PromptTemplate, head_template
from rerank.utils.text import cut_to_tokens
from rerank.types import Candidate, Query

__all__ = ["MonoT5Config", "MonoT5Reranker", "Seq2SeqConfig", "Seq2SeqReranker"]


@dataclass
class Seq2SeqConfig(RerankerConfig):
    """Options of the seq2seq heads: template ('' = the method's), token limits, encoder inputs per forward batch."""

    template: str | dict[str, Any] = ""
    max_doc_tokens: int = 400
    max_query_tokens: int = 64
    batch_size: int = 16
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        for name in ("max_doc_tokens", "max_query_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


class Seq2SeqReranker(Reranker):
    """Base of monoT5 / duoT5: template rendering, truncation and P(positive word) at the first decoder step."""

    config_class: ClassVar[type[RerankerConfig]] = Seq2SeqConfig

    def __init__(self, config: Seq2SeqConfig | None = None, model: Seq2SeqModel | None = None,
                 model_name: str | None = None) -> None:
        super().__init__(config)
        if model is None:
            raise ValueError(f"{self.method}: give a seq2seq model (or use Reranker.load)")
        self.model = model
        self.model_name = model_name
        cfg: Seq2SeqConfig = self.config  # type: ignore[assignment]
        self.template: PromptTemplate = head_template(cfg.template or self.default_template(), self.prompt_method(),
                                                      type(self))
        if self.template.system or self.template.assistant_prefix:
            raise ConfigError(f"{self.method}: template {self.template.source} has a system text or an assistant "
                              f"prefix; a seq2seq template has a user text only")
        self.answer_ids = self._answer_ids()

    @classmethod
    def from_options(cls, model: str | None = None, backend: str = "transformers", **options: Any) -> Reranker:
        cfg = from_dict(cls.config_class, options, where=f"{cls.method} options")
        model = check_local_model(cls.method, backend, model)
        if cfg.template:  # checked before the model loads (the head checks it again, as it does any template)
            head_template(cfg.template, cls.prompt_method(), cls)  # type: ignore[attr-defined]
        s2s = TransformersSeq2Seq.load(
            model, cfg.dtype, cfg.device, cfg.trust_remote_code  # type: ignore[attr-defined]
        )
        return cls(cfg, s2s, model_name=model)  # type: ignore[arg-type]

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def _answer_ids(self) -> tuple[int, int]:
        ids = []
        for key, default in (("positive", "true"), ("negative", "false")):
            word = str(self.template.extra.get(key, default))
            toks = self.tokenizer.encode(word, add_special_tokens=False)
            if not toks:
                raise ConfigError(f"{self.method}: the answer word {word!r} has no tokens")
            ids.append(toks[0])
        if ids[0] == ids[1]:
            raise ConfigError(f"{self.method}: the positive and negative answer words start with the same token")
        return ids[0], ids[1]

    def truncate(self, text: str, max_tokens: int) -> str:
        """User ``text`` as the input holds it: special-token strings neutralised (a ``</s>`` in a document must not
        end the input), then cut to ``max_tokens`` tokens (whole tokens, decoded back; only the part of a very long
        text that ``max_tokens`` reaches is tokenised, without transformers' warning about inputs longer than the
        model reads, since it is cut here)."""
        text = neutralise(text, self.tokenizer)
        ids = self.tokenizer.encode(cut_to_tokens(text, self.tokenizer, max_tokens), add_special_tokens=False,
                                    verbose=False)
        return text if len(ids) <= max_tokens else self.tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)

    def encode(self, **variables: str) -> list[int]:
        """Token ids of the template's user text rendered with ``variables`` (the tokenizer's special tokens added)."""
        return self.tokenizer.encode(self.template.messages(**variables)[-1]["content"], add_special_tokens=True)

    def log_p_true(self, inputs: list[list[int]]) -> list[float]:
        """log P(positive) / (P(positive) + P(negative)) at the first decoder step, per input, in batches."""
        size = self.config.batch_size
        out: list[float] = []
        for i in range(0, len(inputs), size):
            for lp_pos, lp_neg in self.model.first_step_logprobs(inputs[i : i + size], self.answer_ids):
                out.append(lp_pos - max(lp_pos, lp_neg) - math.log1p(math.exp(-abs(lp_pos - lp_neg))))
        return out

    def document_token_limit(self, query: str) -> int | None:
        return self.config.max_doc_tokens  # type: ignore[attr-defined]

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "config": to_dict(self.config), "model": self.model_name,
                "template": self.template.source, "backend": self.model.describe()}

    def close(self) -> None:
        self.model.close()


@dataclass
class MonoT5Config(Seq2SeqConfig):
    """monoT5 options (see :class:`Seq2SeqConfig`)."""


class MonoT5Reranker(Seq2SeqReranker):
    """Score = log P(true) over {true, false} at the first decoder step; :meth:`relevance` = P(true)."""

    method = "monot5"
    config_class: ClassVar[type[RerankerConfig]] = MonoT5Config
    independent_scores = True

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        cfg: Seq2SeqConfig = self.config  # type: ignore[assignment]
        inputs = []
        for q, cs in zip(queries, candidate_lists, strict=True):
            qt = self.truncate(q.text, cfg.max_query_tokens)
            inputs += [self.encode(query=qt, document=self.truncate(c.doc.full_text(), cfg.max_doc_tokens)) for c in cs]
        return split_scores(self.log_p_true(inputs), candidate_lists)

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """P(true): the exponential of the score."""
        return [math.exp(min(float(s), 0.0)) for s in scores]
