"""FIRST task pieces: the listwise window prompt with letter ids and the answer opened by ``[``.

Same targets and rewards as :mod:`rerank.trainers.tasks.listwise` on the ``first`` template; SFT rows also carry
what FIRST's ranking loss needs: the prompt's token ids (ending at ``[``, as the inference head reads them) and each
window passage's 1-based teacher rank, so :class:`rerank.trainers.first.RankingSFTTrainer` can score the
first-identifier logits.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rerank.errors import ConfigError
from rerank.heads.first import identifier_token_ids
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
        return identifier_token_ids(self.tokenizer, self.cfg.window)

    def extra_sft_columns(self, example: dict[str, Any], window: list[int], order: list[int]) -> dict[str, Any]:
        ranks = [0] * len(window)
        for r, k in enumerate(order, 1):
            ranks[k] = r
        prompt = self.window_prompt(example, window)
        return {"rank_prompt_ids": self.tokenizer.encode(prompt, add_special_tokens=False), "rank_ranks": ranks}
