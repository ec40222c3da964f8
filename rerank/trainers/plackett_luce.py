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
    over the ranked prefix plus the mass of the candidates left unranked.
    """
    logits = scores / temperature
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    b, m, k = rankings.shape
    expanded = logits.unsqueeze(1).expand(b, m, logits.shape[-1])
    chosen = expanded.gather(-1, rankings)
    total = torch.logsumexp(expanded, dim=-1, keepdim=True)
    # mass of everything not in the prefix: log(exp(total) - Σ exp(chosen)); exact when k == n (then -inf)
    prefix_mass = torch.logsumexp(chosen, dim=-1, keepdim=True)
    rest = total + torch.log1p(-torch.exp(prefix_mass - total).clamp(max=1.0 - 1e-12)) if k < logits.shape[-1] else None
    rev = torch.flip(torch.logcumsumexp(torch.flip(chosen, [-1]), dim=-1), [-1])
    if rest is not None:
        rev = torch.logaddexp(rev, rest.expand_as(rev))
    steps = chosen - rev
    return steps if per_step else steps.sum(-1)
