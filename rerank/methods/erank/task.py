"""ERank task pieces: one prompt per (query, document); target ``<answer>s</answer>`` with s in 0-10.

SFT target s: the example's ``teacher_scores`` (0-10, rounded; a row outside 0-10 is refused when the data is read)
if given, else the graded label scaled to 0-10 by the example's top grade. With ``reasoning: true`` the prompt is
ERank's reasoning template and the target is ``<think>reasoning</think><answer>s</answer>`` (the example's
``reasoning`` text); any template with ``think_close`` trains so, and ``rerank.json`` records ``reasoning`` from the
template. GRPO: every row carries its query id, grade and the SFT model's reference score; the reward pools the
rollouts of a query (:func:`rerank.methods.erank.reward.erank_listwise_rewards`).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any, ClassVar

from rerank.errors import ConfigError
from rerank.methods.erank.reward import REWARD_FIELDS, erank_listwise_rewards
from rerank.trainers.task import Parsed, PointwiseTask, target_scores

__all__ = ["ERankTask"]

log = logging.getLogger(__name__)

REASONING_TOKENS = 256  # generation budget for the reasoning text in GRPO rollouts
_INT = re.compile(r"\s*(\d+)\s*$")


class ERankTask(PointwiseTask):
    """Pointwise 0-10 integer relevance."""

    method: ClassVar[str] = "erank"
    reward_fields: ClassVar[frozenset[str]] = REWARD_FIELDS
    teacher_scores_range: ClassVar[tuple[int, int] | None] = (0, 10)
    pools_query: ClassVar[bool] = True

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        super().__init__(tokenizer, cfg)
        extra = self.template.extra
        self.answer_open = str(extra.get("answer_open", "<answer>"))
        self.answer_close = str(extra.get("answer_close", "</answer>"))
        self.think_close = str(extra.get("think_close", ""))

    @classmethod
    def head_options(cls, cfg: Any) -> dict[str, Any]:
        return {**super().head_options(cfg), "reasoning": bool(getattr(cfg, "reasoning", False))}

    def record_options(self) -> dict[str, Any]:
        """As :meth:`Task.record_options`, with ``reasoning`` what the model was trained to do: true when its template
        closes a reasoning (``think_close``, as the targets, rollouts and parser read it), whatever the flag said."""
        return {**super().record_options(), "reasoning": bool(self.think_close)}

    def check_sft_examples(self, examples: list[dict[str, Any]], source: str) -> None:
        """A reasoning template trains ``<think>reasoning</think>`` targets from each row's ``reasoning`` text: none
        with one is an error (every target would be an empty reasoning), some without one a warning with the count."""
        if not self.think_close or not examples:
            return
        missing = sum(1 for e in examples if not str(e.get("reasoning") or "").strip())
        if missing == len(examples):
            raise ConfigError(f"reasoning (template {self.template.name!r}) trains <think>reasoning{self.think_close} "
                              f"targets from each row's 'reasoning' text, but none of the {len(examples)} examples of "
                              f"{source} has one (data.beir rows never do): give rows a 'reasoning' field, or train "
                              "without reasoning (reasoning: false and a template without think_close)")
        if missing:
            log.warning("%d of %d examples of %s have no 'reasoning' text: their targets hold an empty reasoning "
                        "(%s)", missing, len(examples), source, self.think_close)

    def completion(self, score: int, reasoning: str = "") -> str:
        head = f"{reasoning}{self.think_close}{self.answer_open}" if self.think_close else ""
        return f"{head}{score}{self.answer_close}"

    def sft_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        targets = target_scores(example)
        reasoning = example.get("reasoning", "") if self.think_close else ""
        return [{"prompt": self.prompt(example, j), "completion": self.completion(s, reasoning)}
                for j, s in enumerate(targets)]

    def grpo_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"prompt": self.prompt(example, j), "qid": example["qid"], "label": int(g), "reference": 0.0}
                for j, g in enumerate(example["labels"])]

    def parse(self, text: str, row: dict[str, Any]) -> Parsed:
        """``s</answer>`` after the answer tag (reasoning mode: the last ``<answer>s</answer>`` after ``</think>``, as
        the head reads it, never one inside the reasoning); s in 0-10."""
        body = text
        if self.think_close:
            k = text.rfind(self.think_close)
            j = text.rfind(self.answer_open, k + len(self.think_close)) if k >= 0 else -1
            if j < 0:
                return Parsed(valid=False)
            body = text[j + len(self.answer_open):]
        k = body.find(self.answer_close) if self.answer_close else len(body)
        if k < 0:
            return Parsed(valid=False)
        m = _INT.match(body[:k])
        if m is None or not 0 <= int(m.group(1)) <= 10:
            return Parsed(valid=False)
        return Parsed(valid=True, scores=[float(m.group(1))])

    def rewards(self, completions: list[str], rows: list[dict[str, Any]]) -> list[float]:
        parsed = [self.safe_parse(c, r) for c, r in zip(completions, rows, strict=True)]
        by_query: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            by_query[r["qid"]].append(i)
        out = [0.0] * len(rows)
        for idx in by_query.values():
            scores = [parsed[i].scores[0] if parsed[i].valid and parsed[i].scores else None for i in idx]
            rs = erank_listwise_rewards(scores, [rows[i]["label"] for i in idx], [rows[i]["reference"] for i in idx],
                                        self.reward_config)
            for i, v in zip(idx, rs, strict=True):
                out[i] = v
        return out

    def max_completion_tokens(self) -> int:
        n = len(self.tokenizer.encode(self.completion(10), add_special_tokens=False)) + 2
        return n + (REASONING_TOKENS if self.think_close else 0)

    def prepare_grpo_rows(self, model: Any, rows: list[dict[str, Any]], batch: int = 16) -> None:
        """``erank_reference: model``: each row's ``reference`` (the score t negatives are pulled toward) is the
        starting model's greedy 0-10 answer, 0 when it is malformed; ``zero`` leaves 0."""
        import torch

        if self.cfg.erank_reference != "model":
            return
        tok = self.tokenizer
        tok.padding_side = "left"
        model.eval()
        cap = self.max_completion_tokens()
        for b in range(0, len(rows), batch):
            chunk = rows[b : b + batch]
            enc = tok([r["prompt"] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**enc.to(model.device), max_new_tokens=cap, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for r, t in zip(chunk, texts, strict=True):
                p = self.safe_parse(t, r)
                r["reference"] = p.scores[0] if p.valid and p.scores else 0.0
        model.train()
