"""Listwise task pieces (RankGPT / RankZephyr style): a window of passages -> the teacher permutation.

Candidates are shuffled (seeded per query) and cut into windows of ``window``; the SFT target is the window's
teacher order (teacher ranking, else teacher scores, else labels) written in the template's identifier scheme
(``[2] > [1] > …``), minus the template's assistant prefix. GRPO reward: ReasonRank-style
(:func:`rerank.methods.listwise.reward.reasonrank_reward`: nDCG@10 + 0.2·Recall@10 + 0.1·RBO vs the teacher; 0 when the
ids are not exactly the window's, or with ``rewards.repair_incomplete`` the repaired ranking's reward minus a missing-id
penalty; the format penalty when no id can be read). Parsing is the heads' own
:func:`rerank.heads.permutation.parse_permutation`.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rerank.heads.permutation import format_permutation, parse_permutation
from rerank.methods.listwise.reward import REWARD_FIELDS, permutation_reward
from rerank.trainers.data import teacher_order
from rerank.trainers.task import Parsed, Task

__all__ = ["ListwiseTask"]


class ListwiseTask(Task):
    """Full-permutation listwise ranking of windows."""

    method: ClassVar[str] = "listwise"
    reward_fields: ClassVar[frozenset[str]] = REWARD_FIELDS
    window_option: ClassVar[str | None] = "window"

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        super().__init__(tokenizer, cfg)
        self.scheme = self.head.scheme  # type: ignore[attr-defined]

    @classmethod
    def head_options(cls, cfg: Any) -> dict[str, Any]:
        """The window the model trains on is the head's window; the stride half of it."""
        return {**super().head_options(cfg), "window": cfg.window, "stride": max(1, cfg.window // 2)}

    def window_prompt(self, example: dict[str, Any], window: list[int]) -> str:
        """The head's rendered prompt for the example's candidates ``window`` (in that order)."""
        return self.head.window_prompt(self.query(example), self.candidates(example, window))  # type: ignore[attr-defined]

    @staticmethod
    def window_order(example: dict[str, Any], window: list[int]) -> list[int]:
        """Local indices of ``window`` in teacher order, best first."""
        rank = {j: r for r, j in enumerate(teacher_order(example))}
        return sorted(range(len(window)), key=lambda k: rank[window[k]])

    def target(self, order: list[int]) -> str:
        text = format_permutation(self.scheme, order)
        prefix = self.template.assistant_prefix
        return text[len(prefix):] if prefix and text.startswith(prefix) else text

    def sft_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for window in self.windows(example, self.cfg.window):
            order = self.window_order(example, window)
            rows.append({"prompt": self.window_prompt(example, window), "completion": self.target(order),
                         **self.extra_sft_columns(example, window, order)})
        return rows

    def extra_sft_columns(self, example: dict[str, Any], window: list[int], order: list[int]) -> dict[str, Any]:
        return {}

    def grpo_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for window in self.windows(example, self.cfg.window):
            order = self.window_order(example, window)
            ids = [example["candidates"][j]["id"] for j in window]
            rows.append({"prompt": self.window_prompt(example, window),
                         "labels_json": json.dumps({d: example["labels"][j] for d, j in zip(ids, window, strict=True)}),
                         "ids": ids, "teacher": [ids[k] for k in order]})
        return rows

    def parse(self, text: str, row: dict[str, Any]) -> Parsed:
        """The ids the model wrote, in its order (``order`` holds only those; valid = a complete permutation)."""
        n = len(row["ids"])
        prefix = self.template.assistant_prefix  # read as the head reads it, reasoning the chat template opens too
        p = parse_permutation(prefix + text, n, self.scheme, self.head.prompt_reasoning(prefix))  # type: ignore[attr-defined]
        if p.failed:
            return Parsed(valid=False)
        written = p.order[: n - p.missing]
        return Parsed(valid=not p.repaired, order=written)

    def rewards(self, completions: list[str], rows: list[dict[str, Any]]) -> list[float]:
        out = []
        for c, r in zip(completions, rows, strict=True):
            p = self.safe_parse(c, r)
            ranking = None if p.order is None else [r["ids"][k] for k in p.order]
            labels = {k: float(v) for k, v in json.loads(r["labels_json"]).items()}
            out.append(permutation_reward(ranking, r["ids"], labels, r["teacher"], self.reward_config))
        return out

    def max_completion_tokens(self) -> int:
        n = len(self.tokenizer.encode(self.target(list(range(self.cfg.window))), add_special_tokens=False))
        return n + 2
