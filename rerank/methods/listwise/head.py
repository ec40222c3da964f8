"""Listwise reranking by full permutation generation (RankGPT / RankZephyr style), over a sliding window.

The model reads a window of passages labelled ``[1]..[n]`` (``numbers``) or ``[A]..`` (``letters``; the identifier
scheme comes from the template) and writes the permutation, e.g. ``[2] > [1] > [3]``. Decoding is greedy and
``max_new_tokens`` is capped at the canonical permutation's length in tokens, so a window never generates more than
its answer needs. Output is parsed robustly (:mod:`rerank.heads.permutation`); repairs and failures are counted. A
prompt whose chat template opens reasoning in its generation prompt (QwQ, DeepSeek-R1: ``<think>\n``) makes the output
start inside it (:meth:`~rerank.heads.llm.LLMReranker.prompt_reasoning`): a ranking before the closing tag is not
read, and an output cut off before it is a counted failure that keeps the window's order.
With ``constrained: true`` generation is restricted to exactly that answer format (each identifier once, bracketed,
joined by `` > ``; :mod:`rerank.backends.grammar`), so every output parses as it stands. Windows of different queries
at the same sliding step go to the backend together (``batch_size`` prompts a call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rerank.backends.base import Backend, GenerationConfig
from rerank.backends.grammar import Grammar, compile_grammar, eos_token_ids
from rerank.errors import ConfigError
from rerank.heads.permutation import check_scheme, format_permutation, parse_permutation, permutation_grammar
from rerank.heads.sliding_window import SlidingWindowConfig, SlidingWindowHead

__all__ = ["ListwiseConfig", "ListwiseReranker"]


@dataclass
class ListwiseConfig(SlidingWindowConfig):
    """``identifiers``: ``numbers`` or ``letters`` picks the default template; '' = the template's own scheme.
    ``constrained``: generate only valid permutations (transformers, vllm or llamacpp backend)."""

    identifiers: str = ""
    constrained: bool = False


class ListwiseReranker(SlidingWindowHead):
    """Full permutation generation per window, greedy, capped at the permutation's length in tokens."""

    method = "listwise"
    config_class: ClassVar[type] = ListwiseConfig

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
        super().__init__(cfg, backend=backend, model=model, backend_name=backend_name)
        if cfg.identifiers and self.scheme != cfg.identifiers:
            raise ConfigError(
                f"listwise: identifiers={cfg.identifiers!r} but template {self.template.source} uses {self.scheme!r}"
            )
        self._caps: dict[int, int] = {}

    def default_template(self) -> str:
        """``listwise`` (numbers), or ``listwise-letters`` with ``identifiers: letters``."""
        return "listwise-letters" if self.config.identifiers == "letters" else "listwise"  # type: ignore[attr-defined]

    def max_new_tokens(self, size: int) -> int:
        """Tokens of the canonical permutation of ``size`` passages (after the template's assistant prefix); when
        constrained, at least the fewest tokens that spell a valid answer."""
        if size not in self._caps:
            prefix = self.template.assistant_prefix
            full = self.tokenizer.encode(prefix + format_permutation(self.scheme, list(range(size))), add_special_tokens=False)
            head = self.tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
            cap = max(1, len(full) - len(head))
            if self.constrained:
                cap = max(cap, compile_grammar(self.grammar(size), self.tokenizer, eos_token_ids(self.tokenizer))
                          .min_tokens())
            self._caps[size] = cap
        return self._caps[size]

    def grammar(self, size: int) -> Grammar:
        """The answer format of a window of ``size`` passages, after the template's assistant prefix."""
        return permutation_grammar(self.scheme, size, self.template.assistant_prefix)

    def reserve(self, size: int) -> int:
        """The generation cap of a window of ``size`` passages."""
        return self.max_new_tokens(size)

    def rank_prompts(self, prompts: list[list[int]], sizes: list[int]) -> list[list[int]]:
        # windows with the same size share a cap, so group them to keep generation capped per window
        by_size: dict[int, list[int]] = {}
        for k, size in enumerate(sizes):
            by_size.setdefault(size, []).append(k)
        out: dict[int, list[int]] = {}
        in_reasoning = self.prompt_reasoning(self.template.assistant_prefix)
        for size, members in by_size.items():
            gen = GenerationConfig(max_new_tokens=self.max_new_tokens(size), temperature=0.0,
                                   constraint=self.grammar(size) if self.constrained else None)
            for chunk in self._chunks(members):
                texts = self.backend.generate([prompts[k] for k in chunk], gen)
                for k, text in zip(chunk, texts, strict=True):
                    full = self.template.assistant_prefix + text
                    parsed = parse_permutation(full, size, self.scheme, in_reasoning)
                    self.record_output(text, failed=parsed.failed, fixes=parsed.fixes, example=full)
                    out[k] = parsed.order
        return [out[k] for k in range(len(prompts))]

