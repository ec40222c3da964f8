"""Qwen3-Reranker's training rows: the yes-no task (its yes/no targets and reward) on the Qwen3-Reranker head's
prompt, which the task renders with the head itself."""

from __future__ import annotations

from typing import ClassVar

from rerank.methods.yes_no.task import YesNoTask

__all__ = ["Qwen3RerankerTask"]


class Qwen3RerankerTask(YesNoTask):
    """Training rows of the Qwen3-Reranker prompt (the yes/no targets and reward of yes-no)."""

    method: ClassVar[str] = "qwen3-reranker"
