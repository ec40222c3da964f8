"""Listwise reranking by full permutation generation (RankGPT / RankZephyr style), over a sliding window.

The model reads a window of passages labelled ``[1]..[n]`` (``numbers``) or ``[A]..`` (``letters``; the identifier
scheme comes from the template) and writes the permutation, e.g. ``[2] > [1] > [3]``. Decoding is greedy and
``max_new_tokens`` is capped at the canonical permutation's length in tokens, so a window never generates more than
its answer needs. Output is parsed robustly (:mod:`rerank.heads.permutation`); repairs and failures are counted.
Windows of different queries at the same sliding step go to the backend together (``batch_size`` prompts a call).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rerank.backends.base import Backend, GenerationConfig
from rerank.errors import ConfigError
from rerank.heads.llm import LLMHeadConfig, LLMReranker
from rerank.heads.permutation import (
    Scheme,
    check_scheme,
    format_permutation,
    identifiers,
    parse_permutation,
    record_parse,
)
from rerank.heads.sliding_window import sliding_window_rerank
from rerank.types import Candidate, Query

__all__ = ["SlidingWindowConfig", "ListwiseConfig", "SlidingWindowHead", "ListwiseReranker", "passage_texts"]


def passage_texts(head: LLMReranker, candidates: list[Candidate], max_tokens: int) -> list[str]:
    """Each candidate's title and text on one line, truncated to ``max_tokens`` tokens (the instruction never is)."""
    return [head.truncate(" ".join(c.doc.full_text(" ").split()), max_tokens) for c in candidates]


@dataclass
class SlidingWindowConfig(LLMHeadConfig):
    """Sliding-window options: ``window`` passages per prompt, moving up by ``stride`` over the top ``depth``."""

    window: int = 20
    stride: int = 10
    depth: int = 100

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1 or self.depth < 1:
            raise ConfigError("window, stride and depth must be >= 1")
        if self.stride > self.window:
            raise ConfigError(f"stride ({self.stride}) > window ({self.window}) would skip candidates")


@dataclass
class ListwiseConfig(SlidingWindowConfig):
    """``identifiers``: ``numbers`` or ``letters`` picks the default template; '' = the template's own scheme."""

    identifiers: str = ""


class SlidingWindowHead(LLMReranker):
    """Shared machinery of the window-based listwise heads; subclasses rank one step's windows."""

    config_class: ClassVar[type] = SlidingWindowConfig

    def __init__(
        self,
        config: SlidingWindowConfig | None = None,
        backend: Backend | None = None,
        model: str | None = None,
        backend_name: str = "transformers",
    ) -> None:
        super().__init__(config, backend=backend, model=model, backend_name=backend_name)
        cfg: SlidingWindowConfig = self.config  # type: ignore[assignment]
        scheme = self.template.extra.get("identifiers", "numbers")
        try:
            self.scheme: Scheme = check_scheme(scheme, cfg.window)
        except ConfigError as e:
            raise ConfigError(f"{self.method}: template {self.template.path}: {e}") from None

    def _prompt(self, query: str, texts: list[str]) -> list[int]:
        ids = identifiers(self.scheme, len(texts))
        passages = [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]
        messages = self.template.messages(query=query, num=len(texts), passages=passages)
        return self.prompt_ids(messages, self.template.assistant_prefix)

    def _chunks(self, items: list[Any]) -> list[list[Any]]:
        size = max(1, self.config.batch_size)
        return [items[i : i + size] for i in range(0, len(items), size)]

    def rank_prompts(self, prompts: list[list[int]], sizes: list[int]) -> list[list[int]]:
        """Permutations (local indices, best first) for window prompts holding ``sizes`` passages each."""
        raise NotImplementedError

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        cfg: SlidingWindowConfig = self.config  # type: ignore[assignment]
        qtexts = [self.truncate(q.text, cfg.max_query_tokens) for q in queries]
        texts = [passage_texts(self, c[: cfg.depth], cfg.max_doc_tokens) for c in candidate_lists]

        def rank_windows(batch: list[tuple[int, list[int]]]) -> list[list[int]]:
            prompts = [self._prompt(qtexts[qi], [texts[qi][j] for j in window]) for qi, window in batch]
            return self.rank_prompts(prompts, [len(w) for _, w in batch])

        orders = sliding_window_rerank(
            [list(range(len(c))) for c in candidate_lists], rank_windows, cfg.window, cfg.stride, cfg.depth
        )
        scores: list[list[float]] = []
        for order in orders:
            s = [0.0] * len(order)
            for pos, j in enumerate(order):
                s[j] = float(len(order) - pos)
            scores.append(s)
        return scores

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """Scores are positions (n for the first of n, 1 for the last): divided by n, so the first scores 1."""
        n = len(scores)
        return [min(max(float(s) / n, 0.0), 1.0) for s in scores]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "identifiers": self.scheme}


class ListwiseReranker(SlidingWindowHead):
    """Full permutation generation per window, greedy, capped at the permutation's length in tokens."""

    method = "listwise"
    config_class: ClassVar[type] = ListwiseConfig
    default_template = "listwise"

    def __init__(
        self,
        config: ListwiseConfig | None = None,
        backend: Backend | None = None,
        model: str | None = None,
        backend_name: str = "transformers",
    ) -> None:
        cfg = config if config is not None else ListwiseConfig()
        if cfg.identifiers:
            check_scheme(cfg.identifiers)
            if not cfg.template:
                self.default_template = "listwise" if cfg.identifiers == "numbers" else "listwise-letters"
        super().__init__(cfg, backend=backend, model=model, backend_name=backend_name)
        if cfg.identifiers and self.scheme != cfg.identifiers:
            raise ConfigError(
                f"listwise: identifiers={cfg.identifiers!r} but template {self.template.path} uses {self.scheme!r}"
            )
        self._caps: dict[int, int] = {}

    def max_new_tokens(self, size: int) -> int:
        """Tokens of the canonical permutation of ``size`` passages (after the template's assistant prefix)."""
        if size not in self._caps:
            prefix = self.template.assistant_prefix
            full = self.tokenizer.encode(prefix + format_permutation(self.scheme, list(range(size))), add_special_tokens=False)
            head = self.tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
            self._caps[size] = max(1, len(full) - len(head))
        return self._caps[size]

    def rank_prompts(self, prompts: list[list[int]], sizes: list[int]) -> list[list[int]]:
        # windows with the same size share a cap, so group them to keep generation capped per window
        by_size: dict[int, list[int]] = {}
        for k, size in enumerate(sizes):
            by_size.setdefault(size, []).append(k)
        out: dict[int, list[int]] = {}
        for size, members in by_size.items():
            gen = GenerationConfig(max_new_tokens=self.max_new_tokens(size), temperature=0.0)
            for chunk in self._chunks(members):
                texts = self.backend.generate([prompts[k] for k in chunk], gen)
                for k, text in zip(chunk, texts, strict=True):
                    full = self.template.assistant_prefix + text
                    parsed = parse_permutation(full, size, self.scheme)
                    record_parse(self.stats, parsed, full)
                    out[k] = parsed.order
        return [out[k] for k in range(len(prompts))]

