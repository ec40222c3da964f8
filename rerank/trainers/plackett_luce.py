"""Plackett-Luce rankings over scores: Gumbel-top-k sampling and exact log-probabilities (shared by PG-Rank's
policy gradient and FIRST's Plackett-Luce GRPO rollouts).

Sampling and scoring must use the same temperature: Gumbel noise on ``scores / T`` samples PL(scores / T), and the
log-probability of those samples has to be read under that same PL(scores / T).
"""

from __future__ import annotations

import torch

__all__ = ["gumbel_topk_sample", "plackett_luce_log_prob"]


def gumbel_topk_sample(
    scores: torch.Tensor, num_samples: int, k: int | None = None, temperature: float = 1.0,
    generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample rankings from PL(scores / temperature): (B, n) scores -> (B, M, k) candidate indices, best first."""
    b, n = scores.shape
    k = n if k is None else min(k, n)
    logits = scores.detach() / temperature
    u = torch.rand((b, num_samples, n), generator=generator, device=scores.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    perturbed = logits.unsqueeze(1).double() + gumbel
    if mask is not None:
        perturbed = perturbed.masked_fill(~mask.unsqueeze(1), float("-inf"))
    return perturbed.topk(k, dim=-1).indices


def plackett_luce_log_prob(
    scores: torch.Tensor, rankings: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None,
    per_step: bool = False,
) -> torch.Tensor:
    """log PL(ranking | scores / temperature) of the top-k prefix: (B, n), (B, M, k) -> (B, M), or with ``per_step``
    each placement's term (B, M, k) (FIRST's GRPO scores them as per-token log-probabilities).

    log π = Σ_i [ s_σ(i) − log Σ_{j not yet placed} exp(s_j) ]; the denominators come from a reversed logcumsumexp
    over the ranked prefix plus the mass of the candidates left unranked (summed directly, not as total − prefix). With ``mask``, masked candidates (padding)
    carry no mass and a placement of one contributes 0, so a padded list has the log-probability of the unpadded one.
    """
    logits = scores / temperature
    b, m, k = rankings.shape
    placed = None
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
        placed = mask.unsqueeze(1).expand(b, m, mask.shape[-1]).gather(-1, rankings)
    expanded = logits.unsqueeze(1).expand(b, m, logits.shape[-1])
    chosen = expanded.gather(-1, rankings)
    rev = torch.flip(torch.logcumsumexp(torch.flip(chosen, [-1]), dim=-1), [-1])
    if k < logits.shape[-1]:  # add the mass of the candidates left unranked (none: -inf, and no gradient)
        left = torch.ones_like(expanded, dtype=torch.bool).scatter(-1, rankings, False)
        if mask is not None:
            left &= mask.unsqueeze(1)
        any_left = left.any(-1, keepdim=True)
        safe = torch.where(left, expanded, torch.zeros((), dtype=expanded.dtype, device=expanded.device))
        rest = torch.logsumexp(safe.masked_fill(~left & any_left, float("-inf")), dim=-1, keepdim=True)
        rest = rest.masked_fill(~any_left, float("-inf"))
        rev = torch.logaddexp(rev, rest.expand_as(rev))
    if placed is None:
        steps = chosen - rev
    else:  # a masked placement is -inf - (-inf): count it as 0 (and keep the gradient finite)
        zero = torch.zeros((), dtype=chosen.dtype, device=chosen.device)
        steps = torch.where(placed, torch.where(placed, chosen, zero) - torch.where(placed, rev, zero), zero)
    return steps if per_step else steps.sum(-1)
