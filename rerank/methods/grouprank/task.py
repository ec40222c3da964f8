"""GroupRank task pieces: a group of passages -> ``<reason>…</reason><answer>{"[1]": s, …}</answer>``.

SFT target scores (0-10): ``teacher_scores`` (0-10, rounded; a row outside 0-10 is refused when the data is read; the
``grouprank`` teacher-label recipe writes them) if given, else the graded labels scaled by the example's top grade;
the reason text is the example's ``reasoning`` (empty if absent). GRPO reward:
:func:`rerank.methods.grouprank.reward.grouprank_reward` (nDCG@10 + 0.2·Recall@10 + 0.1·(1 − JS) when valid, −0.1
for invalid JSON, −0.5 for bad tags). The tags are good only in the paper's format: ``<reason>``, ``</reason>``,
``<answer>``, ``</answer>``, each once and in that order, so an answer before the reasoning (closed or not) or without
any is bad tags. Parsing is the head's own lenient :func:`rerank.methods.grouprank.head.parse_group_scores`; an
answer it had to repair as JSON counts as invalid JSON.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rerank.methods.grouprank.head import parse_group_scores
from rerank.methods.grouprank.reward import REWARD_FIELDS, grouprank_reward
from rerank.trainers.task import Parsed, Task, target_scores

__all__ = ["GroupRankTask"]

_TAGS = ("<reason>", "</reason>", "<answer>", "</answer>")
_JSON_FIXES = ("invalid JSON", "quotes/trailing comma", "missing '{'", "missing '}'", "non-numeric")


def _tags_in_order(text: str) -> bool:
    """Whether ``text`` has the paper's tags: ``<reason>…</reason>`` then ``<answer>…</answer>``, each tag once."""
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    places = [text.index(tag) for tag in _TAGS]
    return places == sorted(places)


class GroupRankTask(Task):
    """Groupwise 0-10 scoring."""

    method: ClassVar[str] = "grouprank"
    reward_fields: ClassVar[frozenset[str]] = REWARD_FIELDS
    teacher_scores_range: ClassVar[tuple[int, int] | None] = (0, 10)
    window_option: ClassVar[str | None] = "group_size"

    @classmethod
    def head_options(cls, cfg: Any) -> dict[str, Any]:
        """The group size the model trains on is the head's group size."""
        return {**super().head_options(cfg), "group_size": cfg.window}

    def group_prompt(self, example: dict[str, Any], group: list[int]) -> str:
        """The head's rendered prompt for the example's candidates ``group`` (in that order)."""
        head: Any = self.head
        return head.group_prompt(self.query(example), self.candidates(example, group))

    @staticmethod
    def target(scores: list[int], reasoning: str = "") -> str:
        answer = json.dumps({f"[{k + 1}]": s for k, s in enumerate(scores)})
        return f"<reason>{reasoning}</reason>\n<answer>{answer}</answer>"

    def sft_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        targets = target_scores(example)
        return [{"prompt": self.group_prompt(example, g),
                 "completion": self.target([targets[j] for j in g], example.get("reasoning", ""))}
                for g in self.windows(example, self.cfg.window)]

    def grpo_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"prompt": self.group_prompt(example, g), "ids": [example["candidates"][j]["id"] for j in g],
                 "gold": [float(example["labels"][j]) for j in g]}
                for g in self.windows(example, self.cfg.window)]

    def parse(self, text: str, row: dict[str, Any]) -> Parsed:
        full = self.template.assistant_prefix + text
        if not _tags_in_order(full):
            return Parsed(valid=False)
        g = parse_group_scores(full, len(row["ids"]))
        if g.failed or any(f.startswith(_JSON_FIXES) for f in g.fixes):
            return Parsed(valid=False, order=[])  # tags fine, JSON not: ``order=[]`` marks "tags ok"
        return Parsed(valid=True, scores=g.scores)

    def rewards(self, completions: list[str], rows: list[dict[str, Any]]) -> list[float]:
        out = []
        for c, r in zip(completions, rows, strict=True):
            p = self.safe_parse(c, r)
            gold = dict(zip(r["ids"], r["gold"], strict=True))
            pred = dict(zip(r["ids"], p.scores, strict=True)) if p.valid and p.scores is not None else None
            out.append(grouprank_reward(pred, gold, tags_ok=p.valid or p.order is not None, config=self.reward_config))
        return out

    def max_completion_tokens(self) -> int:
        return len(self.tokenizer.encode(self.target([10] * self.cfg.window), add_special_tokens=False)) + 8
