"""Bottom-to-top sliding window over the top of a ranked list (RankGPT / RankZephyr / FIRST inference), and the
window-based LLM head both listwise and FIRST build on.

A listwise model sees at most ``window`` candidates at once. The window starts at the bottom of the top-``depth``
list and moves up by ``stride`` positions; each window's permutation is applied in place before the next window,
so strong candidates bubble up from the bottom to the top. The ranking function is generic: it receives the
windows of *many* lists at the same sliding step, so a head can batch windows of different queries into one model
call.
"""

from __future__ import annotations

import logging

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from rerank.backends.base import Backend
from rerank.errors import ConfigError
from rerank.heads.base import PositionScored, position_scores
from rerank.heads.llm import LLMHeadConfig, LLMReranker, passage_texts
from rerank.heads.permutation import Scheme, check_scheme, identifiers
from rerank.types import Candidate, Query

log = logging.getLogger(__name__)
__all__ = [
    "SlidingWindowConfig",
    "SlidingWindowHead",
    "WindowRanker",
    "passage_texts",
    "sliding_window_rerank",
    "window_plan",
]

T = TypeVar("T")

# Given the windows of one sliding step, as (list index, items in current order), return one permutation per window:
# the window's local indices, best first. Permutations must be complete (see rerank.heads.permutation).
WindowRanker = Callable[[list[tuple[int, list[T]]]], list[list[int]]]


def window_plan(n: int, window: int, stride: int, depth: int | None = None) -> list[tuple[int, int]]:
    """The ``[start, end)`` windows visited over the top ``min(n, depth)`` items, bottom window first.

    The last window is the first one that reaches the top; no window is visited twice and a list no longer than
    ``window`` gets exactly one window.
    """
    if window < 1 or stride < 1:
        raise ConfigError(f"sliding window: window ({window}) and stride ({stride}) must be >= 1")
    if stride > window:
        raise ConfigError(f"sliding window: stride ({stride}) > window ({window}) would skip candidates")
    top = n if depth is None else min(n, depth)
    plan: list[tuple[int, int]] = []
    end = top
    while end > 0:
        start = max(0, end - window)
        plan.append((start, end))
        if start == 0:
            break
        end -= stride
    return plan


def _check_permutation(perm: Sequence[int], size: int) -> None:
    if sorted(perm) != list(range(size)):
        raise RuntimeError(f"window ranker returned {list(perm)!r}, not a permutation of range({size})")


def sliding_window_rerank(
    lists: Sequence[Sequence[T]],
    rank_windows: WindowRanker[T],
    window: int = 20,
    stride: int = 10,
    depth: int | None = None,
) -> list[list[T]]:
    """Rerank the top ``depth`` of each list with bottom-to-top sliding windows; items below ``depth`` keep order.

    ``rank_windows`` is called once per sliding step with the windows of every list that still has a window at
    that step (step 0 = each list's bottom window), so a head can put windows of different queries in one batch.
    """
    orders = [list(items) for items in lists]
    plans = [window_plan(len(o), window, stride, depth) for o in orders]
    steps = max((len(p) for p in plans), default=0)
    for step in range(steps):
        batch = [(i, orders[i][plans[i][step][0] : plans[i][step][1]]) for i in range(len(orders))
                 if step < len(plans[i])]
        perms = rank_windows(batch)
        if len(perms) != len(batch):
            raise RuntimeError(f"window ranker returned {len(perms)} permutations for {len(batch)} windows")
        for (i, items), perm in zip(batch, perms, strict=True):
            _check_permutation(perm, len(items))
            start, end = plans[i][step]
            orders[i][start:end] = [items[j] for j in perm]
    return orders


@dataclass
class SlidingWindowConfig(LLMHeadConfig):
    """Sliding-window options: ``window`` passages per prompt, moving up by ``stride`` over the top ``depth``;
    ``passes`` sweeps, each starting from the order the previous one left (rank_llm's multi-pass)."""

    window: int = 20
    stride: int = 10
    depth: int = 100
    passes: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1 or self.stride < 1 or self.depth < 1:
            raise ConfigError("window, stride and depth must be >= 1")
        if self.passes < 1:
            raise ConfigError(f"passes must be >= 1, got {self.passes}")
        if self.stride > self.window:
            raise ConfigError(f"stride ({self.stride}) > window ({self.window}) would skip candidates")


class SlidingWindowHead(PositionScored, LLMReranker):
    """Shared machinery of the window-based listwise heads; subclasses rank one step's windows."""

    config_class: ClassVar[type] = SlidingWindowConfig
    shrink_options = ("window",)

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
            raise ConfigError(f"{self.method}: template {self.template.source}: {e}") from None

    def _prompt(self, query: str, texts: list[str]) -> str:
        """The rendered prompt of one window from the already truncated query and passage texts."""
        ids = identifiers(self.scheme, len(texts))
        passages = [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]
        messages = self.template.messages(query=query, num=len(texts), passages=passages)
        return self.render(messages, self.template.assistant_prefix)

    def reserve(self, size: int) -> int:
        """Tokens generated after a window prompt of ``size`` passages (the prompt is fitted to the context less
        these)."""
        return 0

    def window_inputs(self, query: str, texts: list[str]) -> tuple[str, list[int]]:
        """The window prompt (text, token ids) from the prepared query and passage texts, fitted to the context less
        :meth:`reserve`."""
        return self.fit(query, texts, self._prompt, self.reserve(len(texts)))

    def window_prompt(self, query: Query, candidates: list[Candidate]) -> str:
        """The rendered prompt of one window holding ``candidates`` in this order (query and passages prepared and
        fitted as :meth:`score_batch` does): what the head ranks and what training trains on."""
        cfg: SlidingWindowConfig = self.config  # type: ignore[assignment]
        return self.window_inputs(self.prepare(query.text, cfg.max_query_tokens),
                                  passage_texts(self, candidates, cfg.max_doc_tokens))[0]

    def _chunks(self, items: list[Any]) -> list[list[Any]]:
        size = max(1, self.config.batch_size)
        return [items[i : i + size] for i in range(0, len(items), size)]

    def rank_prompts(self, prompts: list[list[int]], sizes: list[int]) -> list[list[int]]:
        """Permutations (local indices, best first) for window prompts holding ``sizes`` passages each."""
        raise NotImplementedError

    def ranked_depth(self) -> int | None:
        """The windows cover a list's top ``depth``; documents below it keep their input order after them."""
        return self.config.depth  # type: ignore[attr-defined, no-any-return]

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        cfg: SlidingWindowConfig = self.config  # type: ignore[assignment]
        longer = [len(c) for c in candidate_lists if len(c) > cfg.depth]
        if longer:
            log.warning("%s: %d of %d lists hold more than depth=%d documents (up to %d): those past the first %d keep "
                        "their input order below the reranked ones (--reranker-set depth=N ranks more)",
                        self.method, len(longer), len(candidate_lists), cfg.depth, max(longer), cfg.depth)
        qtexts = [self.prepare(q.text, cfg.max_query_tokens) for q in queries]
        texts = [passage_texts(self, c[: cfg.depth], cfg.max_doc_tokens) for c in candidate_lists]

        def rank_windows(batch: list[tuple[int, list[int]]]) -> list[list[int]]:
            prompts = [self.window_inputs(qtexts[qi], [texts[qi][j] for j in window])[1] for qi, window in batch]
            return self.rank_prompts(prompts, [len(w) for _, w in batch])

        orders = [list(range(len(c))) for c in candidate_lists]
        for _ in range(cfg.passes):
            orders = sliding_window_rerank(orders, rank_windows, cfg.window, cfg.stride, cfg.depth)
        return [position_scores(order, len(order)) for order in orders]

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "identifiers": self.scheme}
