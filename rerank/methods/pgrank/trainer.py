"""``rerank train pgrank``: Neural PG-Rank (Gao et al., 2023), a bi-encoder trained by the policy gradient of
expected nDCG@k under a Plackett–Luce policy over each query's candidate scores (the estimator: :mod:`.loss`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from rerank.errors import ConfigError
from rerank.methods.pgrank.loss import pgrank_loss
from rerank.trainers.base import TrainContext
from rerank.trainers.retriever import RetrieverTrainConfig, RetrieverTrainer, StepBatch, mine_dense_negatives

__all__ = ["PGRankConfig", "PGRankTrainer"]


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
        if self.ndcg_k < 1:
            raise ConfigError(f"ndcg_k must be >= 1, got {self.ndcg_k}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


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
            pool = self.main_first(lambda: mine_dense_negatives(self.start_encoder(), self.data, qids, depth,
                                                                cfg.encode_batch_size, cfg.progress),
                                   "mine PG-Rank's candidates")
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

    def loss(self, model: Any, batch: StepBatch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: PGRankConfig = self.cfg  # type: ignore[assignment]
        qids = batch.qids
        n = cfg.num_candidates
        flat: list[str] = []
        mask = torch.zeros(len(qids), n, dtype=torch.bool)
        labels = torch.zeros(len(qids), n)
        for i, q in enumerate(qids):
            cands = self.candidates[q]
            mask[i, : len(cands)] = True
            labels[i, : len(cands)] = torch.tensor([float(self.data.grades[q].get(d, 0)) for d in cands])
            flat += cands + [cands[0]] * (n - len(cands))
        q_emb, d_emb = self.embed(model, qids, flat)
        d_emb = d_emb.view(len(qids), n, -1).to(q_emb.device)
        scores = cfg.scale * torch.einsum("bd,bnd->bn", q_emb, d_emb)
        losses, utility = [], []
        for i, rng in enumerate(batch.rngs):  # each query's samples from its own generator (split-independent)
            gen = torch.Generator(device=scores.device).manual_seed(int(rng.integers(2**62)))
            li, ui = pgrank_loss(scores[i : i + 1], labels[i : i + 1].to(scores.device), cfg.num_samples, cfg.ndcg_k,
                                 cfg.temperature, gen, mask[i : i + 1].to(scores.device))
            losses.append(li)
            utility.append(float(ui))
        return torch.stack(losses).mean(), {"utility": sum(utility) / len(utility)}
