"""PG-Rank's estimator (Gao et al., 2023): the leave-one-out policy gradient of expected nDCG@k under a
Plackett-Luce policy over candidate scores.

The policy samples M rankings per query with the Gumbel-top-k trick from PL(scores / T) and scores their
log-probability under the same PL(scores / T) (sampling and scoring at different temperatures biases the gradient,
a pitfall seen in a public re-implementation). The utility is nDCG@k of each sampled ranking; the baseline of a
sample is the mean utility of the other M − 1 samples (leave-one-out), which keeps the estimator unbiased.
"""

from __future__ import annotations

import torch

from rerank.trainers.plackett_luce import gumbel_topk_sample, plackett_luce_log_prob

__all__ = ["ndcg_of_rankings", "pgrank_loss"]


def ndcg_of_rankings(rankings: torch.Tensor, labels: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """nDCG@k (linear gains, log2 discounts, trec_eval's form) of sampled rankings: (B, M, k'), (B, n) -> (B, M)."""
    b, m, kk = rankings.shape
    k = kk if k is None else min(k, kk)
    gains = labels.float().clamp(min=0).unsqueeze(1).expand(b, m, labels.shape[-1]).gather(-1, rankings[..., :k])
    disc = 1.0 / torch.log2(torch.arange(k, device=labels.device, dtype=torch.float32) + 2.0)
    dcg = (gains * disc).sum(-1)
    ideal = torch.sort(labels.float().clamp(min=0), dim=-1, descending=True).values[:, :k]
    idcg = (ideal * disc[: ideal.shape[-1]]).sum(-1, keepdim=True)
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12), torch.zeros_like(dcg))


def pgrank_loss(
    scores: torch.Tensor, labels: torch.Tensor, num_samples: int = 8, k: int = 10, temperature: float = 1.0,
    generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Surrogate loss whose gradient is the leave-one-out policy-gradient estimate of −∇ E[nDCG@k].

    Returns (loss, mean sampled utility). Needs ``num_samples >= 2`` for the leave-one-out baseline.
    """
    if num_samples < 2:
        raise ValueError("PG-Rank needs at least 2 samples per query for the leave-one-out baseline")
    n = scores.shape[-1]
    rankings = gumbel_topk_sample(scores, num_samples, n, temperature, generator, mask)
    with torch.no_grad():
        utility = ndcg_of_rankings(rankings, labels, k)
        baseline = (utility.sum(-1, keepdim=True) - utility) / (num_samples - 1)
        advantage = utility - baseline
    logp = plackett_luce_log_prob(scores, rankings, temperature, mask)
    loss = -(advantage * logp).mean()
    return loss, utility.mean()
