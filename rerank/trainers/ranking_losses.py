"""Ranking losses on per-candidate logits (FIRST's first-identifier logits): weighted RankNet, ListNet, LambdaRank.

Inputs are batched: ``logits`` (B, n), ``ranks`` (B, n) holding each candidate's 1-based teacher rank (1 = best),
and an optional boolean ``mask`` (B, n) for padded candidates. Each loss is a mean over the valid pairs / lists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["weighted_ranknet", "listnet", "lambdarank", "RANKING_LOSSES"]


def _pairs(ranks: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, n, n) boolean: pair (i, j) with i ranked strictly better than j, both valid."""
    better = ranks.unsqueeze(2) < ranks.unsqueeze(1)
    if mask is not None:
        better = better & mask.unsqueeze(2) & mask.unsqueeze(1)
    return better


def weighted_ranknet(logits: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RankNet over all ordered pairs weighted by 1 / (r_i + r_j) (FIRST): mean of w·log(1 + exp(s_j − s_i))."""
    pairs = _pairs(ranks, mask)
    diff = logits.unsqueeze(2) - logits.unsqueeze(1)
    weight = 1.0 / (ranks.unsqueeze(2) + ranks.unsqueeze(1)).float()
    losses = F.softplus(-diff) * weight
    count = pairs.sum().clamp(min=1)
    return (losses * pairs).sum() / count


def listnet(logits: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ListNet top-1 cross entropy between softmax(−rank) (teacher: one logit per rank step) and softmax(logits)."""
    target = -ranks.float()
    if mask is not None:
        neg = torch.finfo(logits.dtype).min
        logits = logits.masked_fill(~mask, neg)
        target = target.masked_fill(~mask, neg)
    p_true = F.softmax(target, dim=-1)
    log_pred = F.log_softmax(logits, dim=-1)
    if mask is not None:
        log_pred = log_pred.masked_fill(~mask, 0.0)
    return -(p_true * log_pred).sum(-1).mean()


def lambdarank(logits: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RankNet pairs weighted by |ΔnDCG| of swapping i and j in the current predicted order (gain = n − rank + 1)."""
    n = logits.shape[-1]
    valid = mask if mask is not None else torch.ones_like(logits, dtype=torch.bool)
    gains = (n - ranks + 1).float().clamp(min=0) * valid
    with torch.no_grad():
        masked = logits.detach().masked_fill(~valid, float("-inf"))
        order = masked.argsort(dim=-1, descending=True)
        pred_pos = torch.empty_like(order)
        pred_pos.scatter_(-1, order, torch.arange(n, device=logits.device).expand_as(order))
        disc = 1.0 / torch.log2(pred_pos.float() + 2.0)
        ideal = torch.sort(gains, dim=-1, descending=True).values
        idcg = (ideal / torch.log2(torch.arange(n, device=logits.device).float() + 2.0)).sum(-1, keepdim=True)
        delta = (gains.unsqueeze(2) - gains.unsqueeze(1)).abs() * (disc.unsqueeze(2) - disc.unsqueeze(1)).abs()
        delta = delta / idcg.unsqueeze(-1).clamp(min=1e-12)
    pairs = _pairs(ranks, mask)
    diff = logits.unsqueeze(2) - logits.unsqueeze(1)
    losses = F.softplus(-diff) * delta
    return (losses * pairs).sum() / pairs.sum().clamp(min=1)


RANKING_LOSSES = {"ranknet": weighted_ranknet, "listnet": listnet, "lambdarank": lambdarank}
