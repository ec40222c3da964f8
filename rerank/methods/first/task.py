"""FIRST task pieces: the listwise window prompt with letter ids and the answer opened by ``[``.

Same targets and rewards as :mod:`rerank.methods.listwise.task` on the ``first`` template; SFT rows also carry
what FIRST's ranking loss needs: the prompt's token ids (ending at ``[``, as the inference head reads them) and each
window passage's 1-based teacher rank, so :class:`rerank.methods.first.training.RankingSFTTrainer` can score the
first-identifier logits.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rerank.methods.first.head import identifier_token_ids
from rerank.methods.listwise.task import ListwiseTask

__all__ = ["FirstTask"]


class FirstTask(ListwiseTask):
    """FIRST: listwise targets + first-identifier ranking-loss columns."""

    method: ClassVar[str] = "first"
    rollouts: ClassVar[tuple[str, ...]] = ("generate", "plackett-luce")

    def identifier_token_ids(self) -> list[int]:
        """Token ids of ``A``.. as they follow ``[`` (the ids the FIRST head reads); each must be one token."""
        return identifier_token_ids(self.tokenizer, self.cfg.window)

    def extra_sft_columns(self, example: dict[str, Any], window: list[int], order: list[int]) -> dict[str, Any]:
        ranks = [0] * len(window)
        for r, k in enumerate(order, 1):
            ranks[k] = r
        prompt = self.window_prompt(example, window)
        return {"rank_prompt_ids": self.head.encode(prompt), "rank_ranks": ranks}

    def sft_trainer(self, cfg: Any) -> tuple[type | None, dict[str, Any]]:
        """``lm+ranknet|listnet|lambdarank``: the ranking loss on the first-identifier logits (RankingSFTTrainer)."""
        if cfg.loss == "lm":
            return None, {}
        from rerank.methods.first.training import RankingSFTTrainer

        return RankingSFTTrainer, {"ranking_loss": cfg.loss.split("+", 1)[1], "ranking_weight": cfg.ranking_weight,
                                   "identifier_token_ids": self.identifier_token_ids()}

    def grpo_trainer(self, cfg: Any, rows: list[dict[str, Any]]) -> tuple[type | None, dict[str, Any]]:
        """``rollout: plackett-luce``: rollouts drawn from the first-identifier logits (PlackettLuceGRPOTrainer)."""
        if cfg.rollout != "plackett-luce":
            return None, {}
        from rerank.methods.first.training import PlackettLuceGRPOTrainer

        return PlackettLuceGRPOTrainer, {"identifier_token_ids": self.identifier_token_ids(), "scheme": self.scheme,
                                         "window_sizes": {r["prompt"]: len(r["ids"]) for r in rows}}

    def sample_completions(self, model: Any, row: dict[str, Any], samples: int, generator: Any) -> list[str]:
        """``rollout: plackett-luce``: rankings drawn from the first-identifier logits at the config's temperature
        (Gumbel top-k), written as the completion the head would generate; else sampled text."""
        if self.cfg.rollout != "plackett-luce":
            return super().sample_completions(model, row, samples, generator)
        import torch

        from rerank.heads.permutation import format_permutation
        from rerank.methods.first.training import first_position_logits
        from rerank.trainers.plackett_luce import gumbel_topk_sample

        enc = self.tokenizer([row["prompt"]], return_tensors="pt", add_special_tokens=False)
        logits = first_position_logits(model, enc["input_ids"], enc["attention_mask"])[0]
        ids = torch.tensor(self.identifier_token_ids()[: len(row["ids"])])
        orders = gumbel_topk_sample(logits[ids].unsqueeze(0), samples, temperature=self.cfg.temperature,
                                    generator=generator)[0]
        prefix = self.template.assistant_prefix
        return [format_permutation(self.scheme, o)[len(prefix):] for o in orders.tolist()]
