"""The descriptor every method package declares once: what its name is and where its pieces live.

Pieces are ``"module:Attr"`` strings, imported on first use, so reading every descriptor imports no model code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["GRPODefaults", "Method", "resolve"]


def resolve(target: str) -> Any:
    """Import ``"module:Attr"`` and return the attribute."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class GRPODefaults:
    """A method's GRPO defaults, used when the config leaves them unset (ANCHORS.md per paper)."""

    num_generations: int
    learning_rate: float


@dataclass(frozen=True)
class Method:
    """One method: a reranker (inference head, optional training pieces) or a retriever (its own trainer).

    ``head``: the inference head class (registered reranker name = ``name``). ``task``: the LLM training task
    (examples -> SFT / GRPO rows, completion parser, rewards) used by the shared ``sft`` and ``grpo`` trainers.
    ``sft``: a method's own SFT function ``(config, train, dev, ctx) -> summary`` when it does not train through a
    task (the cross-encoder). ``trainer``: a method's own trainer class, registered as ``rerank train NAME``.
    ``sft_losses``: the accepted SFT ``loss`` values, the first the default. ``grpo``: present when GRPO trains the
    method. ``teacher_labels``: the data recipe's teacher-label mode of the method (``(recipe, unit, docs, row) ->
    rows``) and ``teacher_roles`` the teacher models it needs. ``templates``: prompt files in the package, the
    first the head's default. ``windowed``: its training task cuts candidates into windows (``window``,
    ``window_order``). ``lora``: its SFT takes the ``lora`` options (the shared LLM trainers do; a method whose own
    ``sft`` fine-tunes in full says False, and ``lora.enabled`` is refused for it). ``pipeline_tag`` /
    ``library_name``: the model card's Hub metadata.
    """

    name: str
    kind: Literal["reranker", "retriever"]
    package: str
    summary: str
    head: str | None = None
    task: str | None = None
    sft: str | None = None
    trainer: str | None = None
    sft_losses: tuple[str, ...] = ()
    grpo: GRPODefaults | None = None
    teacher_labels: str | None = None
    teacher_roles: tuple[str, ...] = ("teacher",)
    templates: tuple[str, ...] = ()
    windowed: bool = False
    lora: bool = True
    pipeline_tag: str | None = None
    library_name: str = "transformers"

    @property
    def folder(self) -> Path:
        """The method's package folder (its template files live there)."""
        return Path(importlib.import_module(self.package).__file__).parent  # type: ignore[arg-type]

    @property
    def default_template(self) -> str:
        """The name of the head's default prompt template ('' for methods without prompts)."""
        return Path(self.templates[0]).stem if self.templates else ""

    def trains_with(self, trainer: str) -> bool:
        """Whether the shared trainer ``sft`` / ``grpo`` trains this method."""
        if trainer == "sft":
            return self.task is not None or self.sft is not None
        if trainer == "grpo":
            return self.task is not None and self.grpo is not None
        return False
