"""setwise: rank by repeatedly asking which passage of a set of ``set_size`` is the most relevant.

One prompt per set (its passages labelled A, B, ..., each passage's title and text on one line, so a document cannot
lay out a ``Passage X:`` entry of its own: as in listwise, FIRST and GroupRank, every run of whitespace, line breaks,
tabs and Unicode spaces such as U+00A0 and U+3000 included, becomes one space, leading and trailing whitespace is
dropped, so a whitespace-only document is empty; :func:`~rerank.heads.llm.passage_texts`); the answer is the label
with the highest log-probability as it follows the template's ``assistant_prefix`` (as llm-rankers reads a causal LM:
the answer opened with `` Passage:``, then ``label_prefix`` + label, `` A``, one token a label): one forward pass,
nothing generated, so any backend with log-probabilities runs it. The sort (:mod:`rerank.methods.setwise.sorting`)
decides the sets; queries of a batch advance together, one set each per backend call. ``forward_passes`` counts the
prompts scored (the method's efficiency figure).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rerank.errors import ConfigError
from rerank.heads.base import PositionScored, RerankerConfig, position_scores
from rerank.heads.llm import LLMHeadConfig, LLMReranker, passage_texts
from rerank.heads.pointwise import continuation_ids
from rerank.methods.setwise.sorting import Sort, bubblesort, heapsort
from rerank.types import Candidate, Query

__all__ = ["SetwiseConfig", "SetwiseReranker"]

SORTS = {"heapsort": heapsort, "bubblesort": bubblesort}


@dataclass
class SetwiseConfig(LLMHeadConfig):
    """Setwise options: passages per set (c), the sort, and how many top passages it orders (the rest keep their
    input order below them)."""

    set_size: int = 4
    strategy: Literal["heapsort", "bubblesort"] = "heapsort"
    top_k: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.set_size < 2:
            raise ConfigError(f"set_size must be >= 2, got {self.set_size}")
        if self.strategy not in SORTS:
            raise ConfigError(f"strategy must be one of {', '.join(SORTS)}, got {self.strategy!r}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")


class SetwiseReranker(PositionScored, LLMReranker):
    """Heapsort or bubble sort over sets, each set's best passage picked by label log-probabilities."""

    method = "setwise"
    config_class: ClassVar[type[RerankerConfig]] = SetwiseConfig
    shrink_options = ("set_size",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg: SetwiseConfig = self.config  # type: ignore[assignment]
        self.labels = str(self.template.extra.get("labels", string.ascii_uppercase))
        self.label_prefix = str(self.template.extra.get("label_prefix", ""))
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < cfg.set_size:
            raise ConfigError(f"setwise: template {self.template.source} needs {cfg.set_size} distinct labels "
                              f"(set_size), it has {self.labels!r}")
        self.forward_passes = 0
        self._label_ids: list[int] | None = None

    def label_ids(self) -> list[int]:
        """The token of each of the ``set_size`` labels as it follows the assistant prefix (written ``label_prefix`` +
        label, e.g. `` A``): exactly one token a label, distinct, or a one-line :class:`ConfigError`."""
        if self._label_ids is None:
            context = self.render([{"role": "user", "content": "x"}], self.template.assistant_prefix)
            size: int = self.config.set_size  # type: ignore[attr-defined]
            written = [self.label_prefix + lab for lab in self.labels[:size]]
            tokens = [continuation_ids(self.tokenizer, context, w) for w in written]
            ids = [t[0] for t in tokens]
            same = (f"the labels {written} do not start with distinct tokens after "
                    f"{self.template.assistant_prefix!r} in this tokenizer")
            for w, t in zip(written, tokens, strict=True):  # a label of several tokens first: the usual cause
                if len(t) != 1:
                    shown = getattr(self.tokenizer, "convert_ids_to_tokens", lambda ids: ids)(t)
                    also = f" ({same} either)" if len(set(ids)) != len(ids) else ""
                    raise ConfigError(f"setwise: template {self.template.source}: the label {w!r} is {len(t)} tokens "
                                      f"{shown} after {self.template.assistant_prefix!r} in this tokenizer, and the "
                                      f"head reads one token a label{also}; give other labels or label_prefix in a "
                                      "template of your own")
            if len(set(ids)) != len(ids):
                raise ConfigError(f"setwise: template {self.template.source}: {same}; give other labels or "
                                  "label_prefix in a template of your own")
            self._label_ids = ids
        return self._label_ids

    def set_prompt(self, query: str, texts: list[str]) -> list[int]:
        """Token ids of the prompt showing ``texts`` (prepared: neutralised and cut) as passages A, B, ..., fitted
        to the backend's context."""

        def render(q: str, ps: list[str]) -> str:
            passages = [{"label": lab, "text": t} for lab, t in zip(self.labels, ps, strict=False)]
            return self.render(self.template.messages(query=q, passages=passages), self.template.assistant_prefix)

        return self.fit(query, texts, render)[1]

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        cfg: SetwiseConfig = self.config  # type: ignore[assignment]
        ids = self.label_ids()
        qtexts = [self.prepare(q.text, cfg.max_query_tokens) for q in queries]
        dtexts = [passage_texts(self, cs, cfg.max_doc_tokens) for cs in candidate_lists]
        sorts: dict[int, Sort] = {}
        asked: dict[int, list[int]] = {}
        orders: dict[int, list[int]] = {}

        def advance(qi: int, answer: int | None) -> None:
            try:
                asked[qi] = sorts[qi].send(answer) if answer is not None else next(sorts[qi])  # type: ignore[arg-type]
            except StopIteration as stop:
                orders[qi] = stop.value
                asked.pop(qi, None)

        for qi, cs in enumerate(candidate_lists):
            sorts[qi] = SORTS[cfg.strategy](len(cs), cfg.set_size, cfg.top_k)
            advance(qi, None)
        while asked:
            pending = list(asked)
            for start in range(0, len(pending), cfg.batch_size):
                chunk = pending[start : start + cfg.batch_size]
                prompts = [self.set_prompt(qtexts[qi], [dtexts[qi][j] for j in asked[qi]]) for qi in chunk]
                self.forward_passes += len(prompts)
                for qi, lps in zip(chunk, self.backend.next_token_logprobs(prompts, ids), strict=True):
                    lps = lps[: len(asked[qi])]
                    advance(qi, max(range(len(lps)), key=lambda j: (lps[j], -j)))
        return [position_scores(orders[qi], len(cs)) for qi, cs in enumerate(candidate_lists)]

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "forward_passes": self.forward_passes}
