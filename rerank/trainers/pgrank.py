"""Neural PG-Rank (Gao et al., 2023): a Plackett–Luce ranking policy over candidate scores trained by policy gradient.

The policy samples M rankings per query with the Gumbel-top-k trick from PL(scores / T) and scores their
log-probability under the same PL(scores / T) (sampling and scoring at different temperatures biases the gradient,
a pitfall seen in a public re-implementation). The utility is nDCG@k of each sampled ranking; the baseline of a
sample is the mean utility of the other M − 1 samples (leave-one-out), which keeps the estimator unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from rerank.errors import ConfigError
from rerank.retrieval.dense import BiEncoder
from rerank.trainers.base import TrainContext
from rerank.trainers.retriever import RetrieverTrainConfig, RetrieverTrainer, mine_dense_negatives

__all__ = [
    "PGRankConfig",
    "PGRankTrainer",
    "gumbel_topk_sample",
    "ndcg_of_rankings",
    "pgrank_loss",
    "plackett_luce_log_prob",
]


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


# ---------------------------------------------------------------------- the trainer


@dataclass
class PGRankConfig(RetrieverTrainConfig):
    """PG-Rank options on top of the shared ones.

    Each training query gets a fixed candidate set of ``num_candidates`` documents: its judged documents (gold, with
    their grades) first, filled up with hard negatives from ``negatives_from`` (BM25 or the starting model's dense
    top list).
    """

    num_candidates: int = 32
    negatives_from: Literal["bm25", "dense"] = "bm25"
    num_samples: int = 8
    ndcg_k: int = 10
    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_candidates < 2:
            raise ConfigError(f"num_candidates must be >= 2, got {self.num_candidates}")
        if self.num_samples < 2:
            raise ConfigError(f"num_samples must be >= 2 (leave-one-out baseline), got {self.num_samples}")
        if self.ndcg_k < 1 or self.temperature <= 0:
            raise ConfigError("ndcg_k must be >= 1 and temperature > 0")


class PGRankTrainer(RetrieverTrainer):
    """``rerank train pgrank``: policy gradient of expected nDCG@k under a Plackett-Luce policy over candidate scores."""

    name = "pgrank"
    config_class = PGRankConfig

    def setup(self, cfg: PGRankConfig, ctx: TrainContext) -> None:
        qids = self.data.train_qids
        depth = cfg.num_candidates + 20
        if cfg.negatives_from == "bm25":
            pool = self.bm25_run(qids, depth)
        else:
            def mine() -> dict[str, list[str]]:
                warm = BiEncoder.load(cfg.model, device=cfg.device)
                return mine_dense_negatives(warm, self.data, qids, depth, cfg.encode_batch_size, cfg.progress)

            pool = self.dist.broadcast(mine() if self.dist.main else None)
        corpus_ids = sorted(self.data.dataset.corpus)
        self.candidates: dict[str, list[str]] = {}
        for q in qids:
            gold = sorted(self.data.grades[q], key=lambda d: (-self.data.grades[q][d], d))[: cfg.num_candidates]
            cands = list(gold)
            seen = set(self.data.grades[q])
            for d in pool[q]:
                if len(cands) >= cfg.num_candidates:
                    break
                if d not in seen:
                    cands.append(d)
                    seen.add(d)
            fill = np.random.default_rng([cfg.seed, 11, len(cands)])
            while len(cands) < min(cfg.num_candidates, len(corpus_ids)):
                d = corpus_ids[int(fill.integers(len(corpus_ids)))]
                if d not in seen:
                    cands.append(d)
                    seen.add(d)
            self.candidates[q] = cands

    def loss(self, qids: list[str], rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: PGRankConfig = self.cfg  # type: ignore[assignment]
        n = cfg.num_candidates
        flat: list[str] = []
        mask = torch.zeros(len(qids), n, dtype=torch.bool)
        labels = torch.zeros(len(qids), n)
        for i, q in enumerate(qids):
            cands = self.candidates[q]
            mask[i, : len(cands)] = True
            labels[i, : len(cands)] = torch.tensor([float(self.data.grades[q].get(d, 0)) for d in cands])
            flat += cands + [cands[0]] * (n - len(cands))
        q_emb = self.embed_queries(qids)
        d_emb = self.embed_docs(flat).view(len(qids), n, -1).to(q_emb.device)
        scores = cfg.scale * torch.einsum("bd,bnd->bn", q_emb, d_emb)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        loss, utility = pgrank_loss(scores, labels.to(scores.device), cfg.num_samples, cfg.ndcg_k, cfg.temperature,
                                    gen, mask.to(scores.device))
        share = len(qids) / (len(qids) * self.dist.world)
        return loss * share, {"utility": utility.item() * share}
