"""FIRST (Reddy et al., 2024): a listwise ranking from the logits of the first generated identifier.

The prompt labels passages ``[A]``, ``[B]``, … and ends with the assistant's answer opened by ``[``. One forward
pass per window gives the next-token log-probabilities of the identifier tokens ``A``..(A+window-1); the window is
ordered by them, highest first. Nothing is generated: the head only ever calls ``next_token_logprobs``.
Windows of different queries at the same sliding step share a backend call (``batch_size`` prompts a call).
"""

from __future__ import annotations

from typing import Any, ClassVar

from rerank.backends.base import Backend
from rerank.errors import ConfigError
from rerank.heads.permutation import identifiers
from rerank.heads.sliding_window import SlidingWindowConfig, SlidingWindowHead

__all__ = ["FirstReranker", "identifier_token_ids"]


def identifier_token_ids(tokenizer: Any, window: int) -> list[int]:
    """Token ids of the letters ``A``.. as they follow ``[``; each must be one distinct token (FIRST reads them)."""
    base = tokenizer.encode("[", add_special_tokens=False)
    ids = []
    for letter in identifiers("letters", window):
        full = tokenizer.encode("[" + letter, add_special_tokens=False)
        if len(full) == len(base) + 1 and full[: len(base)] == base:
            ids.append(full[-1])
            continue
        alone = tokenizer.encode(letter, add_special_tokens=False)
        if len(alone) != 1:
            raise ConfigError(f"first: identifier {letter!r} is not a single token in this tokenizer")
        ids.append(alone[0])
    if len(set(ids)) != len(ids):
        raise ConfigError("first: identifier letters map to the same token in this tokenizer")
    return ids


class FirstReranker(SlidingWindowHead):
    """Single-token listwise reranking; letters scheme only (each identifier one token, at most 26 a window)."""

    method = "first"
    config_class: ClassVar[type] = SlidingWindowConfig

    def __init__(
        self,
        config: SlidingWindowConfig | None = None,
        backend: Backend | None = None,
        model: str | None = None,
        backend_name: str = "transformers",
    ) -> None:
        super().__init__(config, backend=backend, model=model, backend_name=backend_name)
        if self.scheme != "letters":
            raise ConfigError(f"first: template {self.template.source} must use identifiers: letters, "
                              f"not {self.scheme!r}")
        if not self.template.assistant_prefix.endswith("["):
            raise ConfigError(f"first: template {self.template.source} must set assistant_prefix ending with '['")
        self._token_ids: list[int] | None = None

    def identifier_token_ids(self) -> list[int]:
        """Token ids of ``A``.. as they follow ``[`` (read at the first output position), computed once."""
        if self._token_ids is None:
            self._token_ids = identifier_token_ids(self.tokenizer, self.config.window)  # type: ignore[attr-defined]
        return self._token_ids

    def rank_prompts(self, prompts: list[list[int]], sizes: list[int]) -> list[list[int]]:
        token_ids = self.identifier_token_ids()
        perms: list[list[int]] = []
        for chunk in self._chunks(list(range(len(prompts)))):
            rows = self.backend.next_token_logprobs([prompts[k] for k in chunk], token_ids)
            for k, row in zip(chunk, rows, strict=True):
                logits = row[: sizes[k]]
                perms.append(sorted(range(sizes[k]), key=lambda j: -logits[j]))  # stable: ties keep input order
                self.stats.record()
        return perms
