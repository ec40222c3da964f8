"""FIRST's training loss: TRL's ``SFTTrainer`` (a subclass, not a fork) with a ranking loss on the first-identifier
logits added to the LM loss.

For each window the prompt (ending at ``[``, exactly as the FIRST head reads it) is run once more and the logits of
the identifier tokens ``A``..  at its last position are scored against the teacher ranks with
:mod:`rerank.trainers.ranking_losses`: weighted RankNet (pair weight 1/(r_i + r_j), ×10 by default), ListNet
(×0.1) or LambdaRank (×1) — the weights of rank_llm's training script. Total loss = LM loss + weight · ranking loss.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import SFTTrainer

from rerank.errors import ConfigError
from rerank.trainers.ranking_losses import lambdarank, listnet, weighted_ranknet

__all__ = ["RankingSFTTrainer", "RANKING", "DEFAULT_WEIGHTS"]

RANKING = {"ranknet": weighted_ranknet, "listnet": listnet, "lambdarank": lambdarank}
DEFAULT_WEIGHTS = {"ranknet": 10.0, "listnet": 0.1, "lambdarank": 1.0}
_EXTRA = ("rank_prompt_ids", "rank_ranks")


class _RankingCollator:
    """Wraps TRL's collator: pops the ranking columns and adds them as left-padded tensors."""

    def __init__(self, base: Any, pad_id: int) -> None:
        self.base = base
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [list(e["rank_prompt_ids"]) for e in examples]
        ranks = [list(e["rank_ranks"]) for e in examples]
        batch = self.base([{k: v for k, v in e.items() if k not in _EXTRA} for e in examples])
        width = max(map(len, prompts))
        n = max(map(len, ranks))
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(prompts), width), dtype=torch.long)
        rk = torch.full((len(ranks), n), n + 1, dtype=torch.long)
        mask = torch.zeros((len(ranks), n), dtype=torch.bool)
        for i, (p, r) in enumerate(zip(prompts, ranks, strict=True)):
            ids[i, width - len(p):] = torch.tensor(p)
            att[i, width - len(p):] = 1
            rk[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        batch.update(rank_input_ids=ids, rank_attention_mask=att, rank_ranks=rk, rank_mask=mask)
        return batch


class RankingSFTTrainer(SFTTrainer):
    """``SFTTrainer`` + a ranking loss on the first-identifier logits (``ranking_loss`` = ranknet|listnet|lambdarank)."""

    def __init__(self, *args: Any, ranking_loss: str = "ranknet", ranking_weight: float | None = None,
                 identifier_token_ids: list[int] | None = None, **kwargs: Any) -> None:
        if ranking_loss not in RANKING:
            raise ConfigError(f"ranking loss must be one of {sorted(RANKING)}, got {ranking_loss!r}")
        if not identifier_token_ids:
            raise ConfigError("the ranking loss needs the identifier token ids")
        super().__init__(*args, **kwargs)
        self.ranking_fn = RANKING[ranking_loss]
        self.ranking_name = ranking_loss
        self.ranking_weight = DEFAULT_WEIGHTS[ranking_loss] if ranking_weight is None else ranking_weight
        self.identifier_ids = torch.tensor(identifier_token_ids, dtype=torch.long)
        pad = self.processing_class.pad_token_id
        self.data_collator = _RankingCollator(self.data_collator, int(pad if pad is not None else 0))

    def ranking_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """The ranking loss of the batch's windows from one forward over their prompts."""
        ids, att = inputs["rank_input_ids"], inputs["rank_attention_mask"]
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        position_ids = (att.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=att, position_ids=position_ids, use_cache=False,
                    logits_to_keep=1)
        del pos
        n = inputs["rank_ranks"].shape[1]
        logits = out.logits[:, -1, :].float()[:, self.identifier_ids[:n].to(logits_device(out))]
        return self.ranking_fn(logits, inputs["rank_ranks"], inputs["rank_mask"])

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        extra = {k: inputs.pop(k) for k in ("rank_input_ids", "rank_attention_mask", "rank_ranks", "rank_mask")
                 if k in inputs}
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if not extra:
            return result
        rank = self.ranking_loss(model, extra)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][f"{self.ranking_name}_loss"].append(float(rank.detach()))
        if return_outputs:
            loss, outputs = result
            return loss + self.ranking_weight * rank, outputs
        return result + self.ranking_weight * rank


def logits_device(out: Any) -> torch.device:
    return out.logits.device
