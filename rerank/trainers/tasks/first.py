"""FIRST task pieces: the listwise window prompt with letter ids and the answer opened by ``[``.

Same targets and rewards as :mod:`rerank.trainers.tasks.listwise` on the ``first`` template; SFT rows also carry
what FIRST's ranking loss needs: the prompt's token ids (ending at ``[``, as the inference head reads them) and each
window passage's 1-based teacher rank, so :class:`rerank.trainers.first.RankingSFTTrainer` can score the
first-identifier logits.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rerank.errors import ConfigError
from rerank.heads.permutation import identifiers
from rerank.trainers.tasks.listwise import ListwiseTask

__all__ = ["FirstTask"]


class FirstTask(ListwiseTask):
    """FIRST: listwise targets + first-identifier ranking-loss columns."""

    default_template: ClassVar[str] = "first"

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        super().__init__(tokenizer, cfg)
        if self.scheme != "letters" or not self.template.assistant_prefix.endswith("["):
            raise ConfigError(f"first: template {self.template.path} needs letters ids and an assistant prefix '['")

    def identifier_token_ids(self) -> list[int]:
        """Token ids of ``A``.. as they follow ``[`` (the ids the FIRST head reads); each must be one token."""
        tok = self.tokenizer
        base = tok.encode("[", add_special_tokens=False)
        ids = []
        for letter in identifiers("letters", self.cfg.window):
            full = tok.encode("[" + letter, add_special_tokens=False)
            if len(full) == len(base) + 1 and full[: len(base)] == base:
                ids.append(full[-1])
                continue
            alone = tok.encode(letter, add_special_tokens=False)
            if len(alone) != 1:
                raise ConfigError(f"first: identifier {letter!r} is not a single token in this tokenizer")
            ids.append(alone[0])
        if len(set(ids)) != len(ids):
            raise ConfigError("first: identifier letters map to the same token in this tokenizer")
        return ids

    def extra_sft_columns(self, example: dict[str, Any], window: list[int], order: list[int]) -> dict[str, Any]:
        ranks = [0] * len(window)
        for r, k in enumerate(order, 1):
            ranks[k] = r
        prompt = self.window_prompt(example, window)
        return {"rank_prompt_ids": self.tokenizer.encode(prompt, add_special_tokens=False), "rank_ranks": ranks}
