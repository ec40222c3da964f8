"""Qwen3-Reranker: the yes-no head on its own template; ``instruction`` (non-empty) replaces the template's default
task instruction ("Given a web search query, retrieve relevant passages that answer the query")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rerank.heads.base import RerankerConfig
from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker

__all__ = ["Qwen3Reranker", "Qwen3RerankerConfig"]


@dataclass
class Qwen3RerankerConfig(YesNoConfig):
    """yes-no options plus the ``<Instruct>`` text ('' = the template's)."""

    instruction: str = ""


class Qwen3Reranker(YesNoReranker):
    """Score = log P(yes) - log P(no) after Qwen3-Reranker's prompt; :meth:`relevance` is the model card's P(yes)."""

    method = "qwen3-reranker"
    config_class: ClassVar[type[RerankerConfig]] = Qwen3RerankerConfig
    template_texts = ("instruction",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.override_template_field("instruction", self.config.instruction)  # type: ignore[attr-defined]


def __getattr__(name: str) -> object:
    """``Qwen3RerankerTask`` as this module gave it before it moved to ``task.py`` (imported on use: no cycle)."""
    if name == "Qwen3RerankerTask":
        from rerank.methods.qwen3_reranker.task import Qwen3RerankerTask

        return Qwen3RerankerTask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
