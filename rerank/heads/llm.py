"""Shared plumbing of the LLM heads: typed options, backend construction, prompt building and truncation in tokens.

Prompts are rendered from template files (``rerank/prompts/templates``) into chat messages, passed through the
model's chat template with the generation prompt, and tokenised once. Documents are truncated (in tokens) before
rendering, so the instruction and the chat template's tail are never cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rerank.backends.base import Backend
from rerank.backends.registry import backend_accepts, build_backend
from rerank.config import from_dict, to_dict
from rerank.heads.base import Reranker, RerankerConfig
from rerank.prompts import PromptTemplate, load_template

__all__ = ["LLMHeadConfig", "LLMReranker"]


@dataclass
class LLMHeadConfig(RerankerConfig):
    """Options every LLM head has. ``template`` is a shipped template name or a path ('' = the head's default).

    ``batch_size`` is the number of prompts per backend call and, for backends that batch themselves (transformers,
    openai), their batch size too; ``backend_options`` go to the backend's own typed config.
    """

    template: str = ""
    max_doc_tokens: int = 300
    max_query_tokens: int = 128
    batch_size: int = 8
    dtype: str = "auto"
    device: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)


class LLMReranker(Reranker):
    """Base for heads that drive a :class:`~rerank.backends.base.Backend`."""

    config_class: ClassVar[type[RerankerConfig]] = LLMHeadConfig
    default_template: ClassVar[str] = ""

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
        self.template: PromptTemplate = load_template(cfg.template or self.default_template)

    @classmethod
    def from_options(cls, model: str | None = None, backend: str = "transformers", **options: Any) -> Reranker:
        cfg = from_dict(cls.config_class, options, where=f"{cls.method} options")
        return cls(cfg, model=model, backend_name=backend)  # type: ignore[arg-type]

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

    def prompt_ids(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> list[int]:
        """Token ids of the chat-templated prompt with the generation prompt, plus an assistant prefix."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text + assistant_prefix, add_special_tokens=False)

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "config": to_dict(self.config),
            "template": self.template.path,
            "backend": self.backend.describe(),
        }

    def close(self) -> None:
        self.backend.close()
