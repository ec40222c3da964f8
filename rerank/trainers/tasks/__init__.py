"""Per-head task pieces: the only head-specific code the shared SFT / GRPO trainers call.

Each head gives (a) ``sft_rows(example)``: prompt + target completion rows, (b) ``grpo_rows(example)``: prompts with
the state its reward needs, (c) ``parse(text, row)``: a completion -> scores or a permutation, and whether it was
well-formed, plus ``rewards(completions, rows)`` for GRPO. Prompts are rendered from the head's own template file
exactly as the inference head renders them (chat template + the template's assistant prefix), so a trained folder
ranks with ``rerank eval --reranker HEAD --model DIR`` unchanged.
"""

from __future__ import annotations

import importlib
from typing import Any

from rerank.errors import ConfigError
from rerank.trainers.tasks.base import Task

__all__ = ["Task", "build_task", "TASKS"]

TASKS: dict[str, str] = {
    "erank": "rerank.trainers.tasks.erank:ERankTask",
    "yes-no": "rerank.trainers.tasks.yes_no:YesNoTask",
    "listwise": "rerank.trainers.tasks.listwise:ListwiseTask",
    "first": "rerank.trainers.tasks.first:FirstTask",
    "grouprank": "rerank.trainers.tasks.grouprank:GroupRankTask",
}


def build_task(head: str, tokenizer: Any, cfg: Any) -> Task:
    """The task pieces of LLM head ``head`` for ``tokenizer`` (unknown heads raise, listing the known ones)."""
    if head not in TASKS:
        raise ConfigError(f"no LLM training task for head {head!r}; known: {', '.join(sorted(TASKS))}")
    module, _, attr = TASKS[head].partition(":")
    return getattr(importlib.import_module(module), attr)(tokenizer, cfg)
