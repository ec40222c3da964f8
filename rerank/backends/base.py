"""What a head needs from a model, and nothing more: a backend turns token-id prompts into log-probabilities or text.

The same head code drives every backend (transformers, vLLM, an OpenAI-compatible server, a scripted test backend).
Heads build prompts with the backend's tokenizer (chat template, truncation in tokens) and pass token ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Backend", "GenerationConfig"]


@dataclass
class GenerationConfig:
    """Decoding options; greedy by default so rankings are deterministic."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: Sequence[str] = ()


class Backend(ABC):
    """A causal LM behind a uniform interface. ``calls`` counts model invocations (one per batched forward/generate)."""

    name: str = ""
    config_class: type | None = None  # the typed options of ``from_options`` (a dataclass)

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

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        """Decoded continuation text per prompt (special tokens removed)."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    def close(self) -> None:
        """Free resources (servers, GPU memory)."""
