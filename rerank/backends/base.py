"""What a head needs from a model, and nothing more: a backend turns token-id prompts into log-probabilities or text.

The same head code drives every backend (transformers, vLLM, an OpenAI-compatible server, a scripted test backend).
Heads build prompts with the backend's tokenizer (chat template, truncation in tokens) and pass token ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rerank.backends.grammar import Grammar

__all__ = ["Backend", "GenerationConfig", "LogitsBackend"]


@dataclass
class GenerationConfig:
    """Decoding options; greedy by default so rankings are deterministic. ``constraint``: generate only answers of
    this grammar (constrained decoding, :mod:`rerank.backends.grammar`), on backends that can
    (:meth:`Backend.constraint_error`)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: Sequence[str] = ()
    constraint: Grammar | None = None

    def request(self) -> dict[str, Any]:
        """The options as JSON-able data (the LLM cache key and log): the constraint in its JSON form, left out when
        there is none."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                               "top_p": self.top_p, "seed": self.seed, "stop": list(self.stop)}
        if self.constraint is not None:
            out["constraint"] = self.constraint.to_dict()
        return out


class Backend(ABC):
    """A causal LM behind a uniform interface. ``calls`` counts model invocations (one per batched forward/generate)."""

    name: str = ""
    config_class: type | None = None  # the typed options of ``from_options`` (a dataclass)
    gives_logits: bool = False  # whether :meth:`next_token_logits` is available

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"next_token_logprobs": 0, "generate": 0}

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer (chat template, encode/decode) matching the model."""

    @property
    def context_length(self) -> int | None:
        """Tokens a prompt plus what is generated after it may take (the model's context); heads fit their prompts
        to it. None: unknown, prompts are not fitted."""
        return None

    @abstractmethod
    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        """For each prompt, log P(next token = t) for each ``t`` in ``token_ids`` (log-softmax over the vocabulary).

        One call is one forward pass per prompt over the whole prompt (batched); no tokens are generated.
        """

    def next_token_logits(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        """For each prompt, the raw logit of each ``t`` in ``token_ids`` at the next position (before any
        normalisation: what a head that scores by one token's logit reads). Only where :attr:`gives_logits`."""
        from rerank.errors import ConfigError

        raise ConfigError(f"the {self.name or type(self).__name__} backend gives log-probabilities, not raw logits")

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        """Decoded continuation text per prompt (special tokens removed)."""

    def constraint_error(self) -> str | None:
        """Why this backend cannot generate under a grammar (``GenerationConfig.constraint``); None when it can."""
        return f"the {self.name or type(self).__name__} backend cannot constrain generation"

    def check_constraint(self, config: GenerationConfig) -> None:
        """Raise a one-line :class:`~rerank.errors.ConfigError` when ``config`` asks for a constraint this backend
        cannot enforce."""
        if config.constraint is not None:
            error = self.constraint_error()
            if error is not None:
                from rerank.errors import ConfigError

                raise ConfigError(f"constrained decoding: {error}")

    def log_parse(self, response: str, outcome: dict[str, Any]) -> None:
        """How the caller parsed ``response`` (one of this backend's generations): a backend that logs its calls
        adds it to that response's log line. Default: nothing."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    def close(self) -> None:
        """Free resources (servers, GPU memory)."""


class LogitsBackend(Backend):
    """A backend that reads the model's whole next-token distribution: log-probabilities and raw logits both come
    from :meth:`_last_position`, which a subclass implements."""

    gives_logits = True

    @abstractmethod
    def _last_position(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int],
                       normalise: bool) -> list[list[float]]:
        """The logits (``normalise``: log-softmax over the vocabulary) of ``token_ids`` after each prompt."""

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        self.calls["next_token_logprobs"] += 1
        return self._last_position(prompts, token_ids, normalise=True)

    def next_token_logits(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        self.calls["next_token_logits"] = self.calls.get("next_token_logits", 0) + 1
        return self._last_position(prompts, token_ids, normalise=False)
