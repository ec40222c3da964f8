"""Shared plumbing of the LLM heads: typed options, backend construction, prompt building and truncation in tokens.

Prompts are rendered from template files (each method's own, ``rerank/methods/<name>/*.yaml``) into chat messages,
passed through the model's chat template with the generation prompt plus the template's assistant prefix, and
tokenised once. Documents are truncated (in tokens) before rendering, so the instruction and the chat template's tail
are never cut. The training tasks render their prompts with these same methods (a head on a
:class:`PromptOnlyBackend`), so a trained model sees at inference exactly the prompts it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rerank.backends.base import Backend, GenerationConfig
from rerank.backends.registry import backend_accepts, build_backend
from rerank.config import from_dict, to_dict
from rerank.errors import ConfigError
from rerank.heads.base import Reranker, RerankerConfig
from rerank.prompts import PromptTemplate, load_template

__all__ = ["LLMHeadConfig", "LLMReranker", "PromptOnlyBackend"]


@dataclass
class LLMHeadConfig(RerankerConfig):
    """Options every LLM head has. ``template``: a shipped template name, a path, or the template itself as a mapping
    (as a trained model's ``rerank.json`` records it); '' = the method's default.

    ``batch_size`` is the number of prompts per backend call and, for backends that batch themselves (transformers,
    openai), their batch size too; ``backend_options`` go to the backend's own typed config.
    """

    template: str | dict[str, Any] = ""
    max_doc_tokens: int = 300
    max_query_tokens: int = 128
    batch_size: int = 8
    dtype: str = "auto"
    device: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_doc_tokens", "max_query_tokens", "batch_size"):  # a cut to <= 0 tokens drops the text
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")


class PromptOnlyBackend(Backend):
    """A tokenizer and no model: a head on it renders prompts and runs nothing (the training tasks use it)."""

    name = "prompt-only"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__()
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        raise RuntimeError("a prompt-only backend renders prompts; it has no model to score them")

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        raise RuntimeError("a prompt-only backend renders prompts; it has no model to generate with")


class LLMReranker(Reranker):
    """Base for heads that drive a :class:`~rerank.backends.base.Backend`."""

    config_class: ClassVar[type[RerankerConfig]] = LLMHeadConfig

    def __init__(
        self,
        config: LLMHeadConfig | None = None,
        backend: Backend | None = None,
        model: str | None = None,
        backend_name: str = "transformers",
    ) -> None:
        super().__init__(config)
        cfg: LLMHeadConfig = self.config  # type: ignore[assignment]
        if backend is None:
            if model is None:
                raise ValueError(f"{self.method}: give a model (name or path) or a backend instance")
            opts = dict(cfg.backend_options)
            opts.setdefault("dtype", cfg.dtype)
            if cfg.device is not None:
                opts.setdefault("device", cfg.device)
            if backend_accepts(backend_name, "batch_size"):
                opts.setdefault("batch_size", cfg.batch_size)  # one batch size: the head's is the model's
            backend = build_backend(backend_name, model, **opts)
        self.backend = backend
        self.model_name = model
        self.template: PromptTemplate = load_template(cfg.template or self.default_template())

    @classmethod
    def from_options(cls, model: str | None = None, backend: str = "transformers", **options: Any) -> Reranker:
        cfg = from_dict(cls.config_class, options, where=f"{cls.method} options")
        return cls(cfg, model=model, backend_name=backend)  # type: ignore[arg-type]

    def default_template(self) -> str:
        """The template used when the config names none: the method's first shipped template."""
        from rerank.methods import get_method

        return get_method(self.method).default_template

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut ``text`` to at most ``max_tokens`` tokens of the model's tokenizer (whole tokens, decoded back)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= max_tokens:
            return text
        return self.tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)

    def document_token_limit(self, query: str) -> int | None:
        """``max_doc_tokens``: each document is cut to it before the prompt is rendered."""
        return self.config.max_doc_tokens  # type: ignore[attr-defined]

    def render(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        """The chat-templated prompt text with the generation prompt, plus an assistant prefix."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + assistant_prefix

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt (no special tokens added: the chat template has them)."""
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def prompt_ids(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> list[int]:
        """Token ids of :meth:`render`."""
        return self.encode(self.render(messages, assistant_prefix))

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "config": to_dict(self.config),
            "template": self.template.source,
            "backend": self.backend.describe(),
        }

    def close(self) -> None:
        self.backend.close()
