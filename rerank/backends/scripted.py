"""A backend whose outputs are given by functions of the prompt text: the test double every head is tested with.

Scripted log-probs / generations make each head's expected order exact, so a head that quietly returned the
first-stage order would fail its test. Every call is logged for assertions such as "one forward per window".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rerank.backends.base import Backend, GenerationConfig

__all__ = ["ScriptedBackend"]

LogprobFn = Callable[[str, Sequence[int]], Sequence[float]]
GenerateFn = Callable[[str], str]


class ScriptedBackend(Backend):
    """Returns ``logprobs_fn(prompt_text, token_ids)`` and ``generate_fn(prompt_text)``; records every prompt."""

    name = "scripted"
    gives_logits = True

    def __init__(self, tokenizer: Any, logprobs_fn: LogprobFn | None = None, generate_fn: GenerateFn | None = None,
                 context_length: int | None = None):
        super().__init__()
        self._tokenizer = tokenizer
        self._context_length = context_length
        self.logprobs_fn = logprobs_fn
        self.generate_fn = generate_fn
        self.log: list[tuple[str, str]] = []  # (kind, decoded prompt), one entry per prompt

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def context_length(self) -> int | None:
        """The context given at construction (None: prompts are not fitted); longer prompts are refused."""
        return self._context_length

    def _check(self, ids: Sequence[int], extra: int) -> None:
        if self._context_length is not None and len(ids) + extra > self._context_length:
            raise ValueError(f"prompt of {len(ids)} tokens (+{extra} to generate) exceeds the context "
                             f"{self._context_length}")

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        self.calls["next_token_logprobs"] += 1
        return self._scripted("next_token_logprobs", prompts, token_ids)

    def _scripted(self, kind: str, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        if self.logprobs_fn is None:
            raise RuntimeError("ScriptedBackend has no logprobs_fn")
        out = []
        for p in prompts:
            self._check(p, 0)
            text = self._decode(p)
            self.log.append((kind, text))
            values = list(self.logprobs_fn(text, token_ids))
            if len(values) != len(token_ids):
                raise ValueError(f"logprobs_fn returned {len(values)} values for {len(token_ids)} token ids")
            out.append([float(v) for v in values])
        return out

    def next_token_logits(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        """``logprobs_fn``'s values read as raw logits (the test double scripts both alike)."""
        self.calls["next_token_logits"] = self.calls.get("next_token_logits", 0) + 1
        return self._scripted("next_token_logits", prompts, token_ids)

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        self.check_constraint(config)
        if self.generate_fn is None:
            raise RuntimeError("ScriptedBackend has no generate_fn")
        self.calls["generate"] += 1
        out = []
        for p in prompts:
            self._check(p, config.max_new_tokens)
            text = self._decode(p)
            self.log.append(("generate", text))
            out.append(self.generate_fn(text))
        return out
