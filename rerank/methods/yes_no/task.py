"""Yes-no task pieces: one prompt per (query, document); target the template's positive / negative word.

GRPO reward: 1 for the right word (grade >= the reward config's ``rel_threshold`` -> positive), 0 for the wrong
one, the format penalty for anything else.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rerank.trainers.task import Parsed, PointwiseTask

__all__ = ["REWARD_FIELDS", "YesNoTask"]

#: the ``rewards`` options the yes-no reward (:meth:`YesNoTask.rewards`) reads; a GRPO config setting another is refused
REWARD_FIELDS = frozenset({"rel_threshold", "bad_format_penalty"})


class YesNoTask(PointwiseTask):
    """Pointwise yes/no relevance."""

    method: ClassVar[str] = "yes-no"
    reward_fields: ClassVar[frozenset[str]] = REWARD_FIELDS

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        super().__init__(tokenizer, cfg)
        self.positive = str(self.template.extra.get("positive", "yes"))
        self.negative = str(self.template.extra.get("negative", "no"))

    def sft_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        thr = self.reward_config.rel_threshold
        return [{"prompt": self.prompt(example, j), "completion": self.positive if g >= thr else self.negative}
                for j, g in enumerate(example["labels"])]

    def grpo_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"prompt": self.prompt(example, j), "label": int(g)} for j, g in enumerate(example["labels"])]

    def parse(self, text: str, row: dict[str, Any]) -> Parsed:
        word = text.strip().split()[0].strip(".,!").lower() if text.strip() else ""
        if word not in (self.positive.lower(), self.negative.lower()):
            return Parsed(valid=False)
        return Parsed(valid=True, scores=[1.0 if word == self.positive.lower() else 0.0])

    def rewards(self, completions: list[str], rows: list[dict[str, Any]]) -> list[float]:
        out = []
        for c, r in zip(completions, rows, strict=True):
            p = self.safe_parse(c, r)
            if not p.valid or p.scores is None:
                out.append(self.reward_config.bad_format_penalty)
            else:
                out.append(float(p.scores[0] == float(r["label"] >= self.reward_config.rel_threshold)))
        return out

    def max_completion_tokens(self) -> int:
        return 4
