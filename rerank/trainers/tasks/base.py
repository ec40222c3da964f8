"""The task-piece base class: template rendering and token truncation shared by every LLM head's task."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from rerank.prompts import PromptTemplate, load_template
from rerank.trainers.rewards import RewardConfig

__all__ = ["Parsed", "PointwiseTask", "Task"]


@dataclass
class Parsed:
    """A parsed completion: per-document scores (aligned with the row's documents) and/or a ranking of local
    indices, and whether the output was well-formed (a malformed one gets the format penalty)."""

    valid: bool
    scores: list[float] | None = None
    order: list[int] | None = None


class Task:
    """Shared plumbing; subclasses set ``default_template`` and implement the three pieces."""

    default_template: ClassVar[str] = ""

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.template: PromptTemplate = load_template(getattr(cfg, "template", "") or self.default_template)
        self.reward_config: RewardConfig = getattr(cfg, "rewards", None) or RewardConfig()
        self.eos = tokenizer.eos_token or ""

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut ``text`` to ``max_tokens`` tokens, as the inference heads do (``LLMReranker.truncate``)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= max_tokens else self.tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)

    def render(self, messages: list[dict[str, str]]) -> str:
        """Chat-templated prompt text with the generation prompt and the template's assistant prefix."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + self.template.assistant_prefix

    def query_text(self, example: dict[str, Any]) -> str:
        return self.truncate(example["query"], self.cfg.max_query_tokens)

    def doc_text(self, cand: dict[str, Any]) -> str:
        """Title and text on one line, truncated (the listwise heads' ``passage_texts``)."""
        full = f"{cand['title']} {cand['text']}" if cand.get("title") else cand["text"]
        return self.truncate(" ".join(full.split()), self.cfg.max_doc_tokens)

    def windows(self, example: dict[str, Any], size: int) -> list[list[int]]:
        """Candidate indices cut into groups of ``size`` after a seeded shuffle (per query), for window prompts."""
        idx = list(range(len(example["candidates"])))
        random.Random(f"{self.cfg.seed}\x00{example['qid']}").shuffle(idx)
        return [idx[i : i + size] for i in range(0, len(idx), size) if len(idx[i : i + size]) >= 2]

    def sft_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def grpo_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def parse(self, text: str, row: dict[str, Any]) -> Parsed:
        raise NotImplementedError

    def rewards(self, completions: list[str], rows: list[dict[str, Any]]) -> list[float]:
        raise NotImplementedError

    def max_completion_tokens(self) -> int:
        """A bound on a well-formed completion's length in tokens (the GRPO generation cap)."""
        raise NotImplementedError

    def safe_parse(self, text: str, row: dict[str, Any]) -> Parsed:
        """``parse`` that never raises: anything unexpected is a malformed completion."""
        try:
            return self.parse(text, row)
        except Exception:  # noqa: BLE001 - a completion must never stop a run; it earns the format penalty
            return Parsed(valid=False)


class PointwiseTask(Task):
    """One prompt per (query, document), the document as title and text on separate lines (ERank, yes-no)."""

    def doc_text(self, cand: dict[str, Any]) -> str:
        full = f"{cand['title']}\n{cand['text']}" if cand.get("title") else cand["text"]
        return self.truncate(full, self.cfg.max_doc_tokens)

    def prompt(self, example: dict[str, Any], j: int) -> str:
        """The rendered prompt for the example's ``j``-th candidate."""
        msgs = self.template.messages(query=self.query_text(example), document=self.doc_text(example["candidates"][j]))
        return self.render(msgs)
