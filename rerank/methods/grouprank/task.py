"""GroupRank task pieces: a group of passages -> ``<reason>…</reason><answer>{"[1]": s, …}</answer>``.

SFT target scores (0-10): ``teacher_scores`` (0-10, rounded; a row outside 0-10 is refused when the data is read; the
``grouprank`` teacher-label recipe writes them) if given, else the graded labels scaled by the example's top grade;
the reason text is the example's ``reasoning`` (empty if absent). GRPO reward:
:func:`rerank.methods.grouprank.reward.grouprank_reward` (nDCG@10 + 0.2·Recall@10 + 0.1·(1 − JS) when valid, −0.1
for invalid JSON, −0.5 for bad tags). The reward reads the completion as the head does, after the template's assistant
prefix, and its tags are good only in the paper's order: ``<reason>`` opens the reasoning, the first ``</reason>``
closes it, then one ``<answer>…</answer>``; no ``<answer>`` before that ``</reason>`` and no reasoning tag after it.
So an answer before the reasoning (closed or not), reasoning never closed, or no reasoning is bad tags, while
reasoning text that quotes ``<reason>`` or ``</answer>`` (as the constrained grammar allows) is not. The SFT
completion is the target after the assistant prefix: a prefix ending in ``<reason>`` opens the reasoning, which is not
opened again. Parsing is the head's own lenient :func:`rerank.methods.grouprank.head.parse_group_scores`; an answer it
had to repair as JSON counts as invalid JSON.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rerank.methods.grouprank.head import parse_group_scores
from rerank.methods.grouprank.reward import REWARD_FIELDS, grouprank_reward
from rerank.trainers.task import Parsed, Task, target_scores

__all__ = ["GroupRankTask"]

_REASON_OPEN, _REASON_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE = "<reason>", "</reason>", "<answer>", "</answer>"
_JSON_FIXES = ("invalid JSON", "quotes/trailing comma", "missing '{'", "missing '}'", "non-numeric")


def _tags_in_order(text: str) -> bool:
    """Whether ``text`` (assistant prefix + completion) is in the paper's order: ``<reason>`` with no tag before it, the
    first ``</reason>`` after it with no ``<answer>`` between, then one ``<answer>…</answer>`` and no reasoning tag."""
    opening = text.find(_REASON_OPEN)
    if opening < 0 or any(tag in text[:opening] for tag in (_REASON_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)):
        return False
    close = text.find(_REASON_CLOSE, opening + len(_REASON_OPEN))
    if close < 0 or _ANSWER_OPEN in text[opening:close]:
        return False
    tail = text[close + len(_REASON_CLOSE) :]
    if tail.count(_ANSWER_OPEN) != 1 or tail.count(_ANSWER_CLOSE) != 1 or _REASON_OPEN in tail or _REASON_CLOSE in tail:
        return False
    return tail.index(_ANSWER_OPEN) < tail.index(_ANSWER_CLOSE)


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
        """The whole answer in the paper's format: ``<reason>reasoning</reason>`` then the scores' ``<answer>``."""
        answer = json.dumps({f"[{k + 1}]": s for k, s in enumerate(scores)})
        return f"{_REASON_OPEN}{reasoning}{_REASON_CLOSE}\n{_ANSWER_OPEN}{answer}{_ANSWER_CLOSE}"

    def completion(self, scores: list[int], reasoning: str = "") -> str:
        """The SFT completion: :meth:`target` after the template's assistant prefix (the prompt ends with it); a prefix
        that opens the reasoning is followed by the reasoning itself."""
        text, prefix = self.target(scores, reasoning), self.template.assistant_prefix
        if text.startswith(prefix):
            return text[len(prefix) :]
        if prefix.rstrip().endswith(_REASON_OPEN):
            return text[len(_REASON_OPEN) :]
        return text

    def sft_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        targets = target_scores(example)
        return [{"prompt": self.group_prompt(example, g),
                 "completion": self.completion([targets[j] for j in g], example.get("reasoning", ""))}
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
        return len(self.tokenizer.encode(self.completion([10] * self.cfg.window), add_special_tokens=False)) + 8
