"""Contrastive bi-encoder training: InfoNCE over in-batch and BM25 hard negatives, optional MarginMSE distillation.

Each query brings one positive (drawn among its positives) and ``hard_negatives`` negatives drawn from BM25's
top-``negatives_depth`` minus its positives. Every query is scored against every document of the global batch
(all processes' documents, gathered); documents that are positives of the query other than its drawn one are masked.
Runs on the shared retriever machinery (:mod:`rerank.trainers.retriever`, transformers' ``Trainer``).
Loss: cross-entropy of ``scale``·score towards the drawn positive. With ``distill_model`` (a cross-encoder loaded
through the registered ``cross-encoder`` head) MarginMSE is added: the squared difference between the student's
margin ``s(q,pos) − s(q,neg)`` and the teacher's, weighted by ``distill_weight`` (1.0). ``distill_model`` is
loaded before any data work and must be a cross-encoder with a trained head; ``distill_weight`` or
``distill_batch_size`` without it is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rerank.config import option_default
from rerank.errors import ConfigError
from rerank.retrieval.index import doc_text
from rerank.trainers.base import TrainContext
from rerank.trainers.retriever import RetrieverTrainConfig, RetrieverTrainer, StepBatch

__all__ = ["ContrastiveConfig", "ContrastiveTrainer", "draw_negatives", "load_teacher"]


@dataclass
class ContrastiveConfig(RetrieverTrainConfig):
    """Contrastive options on top of the shared ones; ``negatives_depth`` (BM25's depth) needs ``hard_negatives``."""

    scale: float = 20.0
    hard_negatives: int = 1
    negatives_depth: int = 30
    distill_model: str | None = None
    distill_weight: float | None = None  # 1.0 with distill_model; set without it: an error
    distill_batch_size: int | None = None  # 32 with distill_model; set without it: an error

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hard_negatives < 0:
            raise ConfigError(f"hard_negatives must be >= 0, got {self.hard_negatives}")
        if self.hard_negatives == 0 and self.negatives_depth != option_default(self, "negatives_depth"):
            raise ConfigError(f"negatives_depth {self.negatives_depth} is unused with hard_negatives: 0 (no BM25 "
                              "negatives are drawn): drop negatives_depth, or set hard_negatives >= 1")
        if not self.distill_model:
            for name in ("distill_weight", "distill_batch_size"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name} is set but distill_model is not: it applies to MarginMSE distillation "
                                      f"only; give distill_model (a cross-encoder) or drop {name}")
            return
        if self.hard_negatives < 1:
            raise ConfigError("hard_negatives must be >= 1 with distill_model (MarginMSE): margins are positive - "
                              "negative")
        self.distill_weight = 1.0 if self.distill_weight is None else self.distill_weight
        self.distill_batch_size = 32 if self.distill_batch_size is None else self.distill_batch_size
        if self.distill_weight < 0:
            raise ConfigError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.distill_batch_size < 1:
            raise ConfigError(f"distill_batch_size must be >= 1, got {self.distill_batch_size}")


def load_teacher(model: str, batch_size: int) -> Any:
    """The MarginMSE teacher: ``model`` as a cross-encoder with a trained head; anything else is a one-line
    :class:`ConfigError` naming the option ``distill_model``."""
    from rerank.backends.util import ALLOW_NEW_HEAD, architectures
    from rerank.heads.base import Reranker
    from rerank.models import check_model_path, resolve_model_path

    check_model_path(model, "distill_model")
    try:
        archs = architectures(resolve_model_path(model))
    except (OSError, ValueError) as e:
        raise ConfigError(f"distill_model {model}: cannot read its model config: {' '.join(str(e).split())}") from None
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ConfigError(f"distill_model {model} is not a cross-encoder ({', '.join(archs) or 'no architecture'}): "
                          "MarginMSE needs a trained sequence-classification checkpoint as its teacher")
    try:
        return Reranker.load("cross-encoder", model=model, batch_size=batch_size)
    except ConfigError as e:  # its hint names reranking's --allow-new-head, which training has no use for
        msg = str(e).replace(f", or {ALLOW_NEW_HEAD}", "").replace(ALLOW_NEW_HEAD, "")
        raise ConfigError(f"distill_model: {msg} (a teacher needs its trained head)") from None


def draw_negatives(
    rng: np.random.Generator, pool: list[str], n: int, exclude: set[str], corpus_ids: list[str]
) -> list[str]:
    """``n`` distinct negatives from ``pool``; when it runs short, random corpus documents not in ``exclude``."""
    out = [pool[i] for i in rng.permutation(len(pool))[:n]] if pool else []
    taken = set(out) | exclude
    while len(out) < n:
        d = corpus_ids[int(rng.integers(len(corpus_ids)))]
        if d not in taken:
            out.append(d)
            taken.add(d)
    return out


class ContrastiveTrainer(RetrieverTrainer):
    """``rerank train contrastive``."""

    name = "contrastive"
    config_class = ContrastiveConfig

    teacher: Any = None

    def check(self, cfg: ContrastiveConfig) -> None:
        """Load ``distill_model`` (the teacher) before any data work, so a wrong one fails at once."""
        if cfg.distill_model:
            self.teacher = load_teacher(cfg.distill_model, int(cfg.distill_batch_size or 32))

    def setup(self, cfg: ContrastiveConfig, ctx: TrainContext) -> None:
        self.corpus_ids = sorted(self.data.dataset.corpus)
        self.negatives: dict[str, list[str]] = {}
        if cfg.hard_negatives:
            run = self.bm25_run(self.data.train_qids, cfg.negatives_depth)
            self.negatives = {q: [d for d in run[q] if d not in set(self.data.positives[q])] for q in run}

    def loss(self, model: Any, batch: StepBatch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: ContrastiveConfig = self.cfg  # type: ignore[assignment]
        qids = batch.qids
        pos_ids: list[str] = []
        neg_ids: list[list[str]] = []
        for q, rng in zip(qids, batch.rngs, strict=True):
            pos = self.data.positives[q]
            pos_ids.append(pos[int(rng.integers(len(pos)))])
            pool = self.negatives.get(q, [])
            neg_ids.append(draw_negatives(rng, pool, cfg.hard_negatives, set(pos), self.corpus_ids))
        local_docs = pos_ids + [d for negs in neg_ids for d in negs]
        q_emb, d_local = self.embed(model, qids, local_docs)
        d_all = batch.gather(d_local)
        all_ids = batch.gather_list(local_docs)
        offset = batch.rank * len(local_docs)
        scores = cfg.scale * q_emb @ d_all.T
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for i, q in enumerate(qids):
            pos = set(self.data.positives[q])
            for j, d in enumerate(all_ids):
                if d in pos and j != offset + i:
                    mask[i, j] = True
        scores = scores.masked_fill(mask, float("-inf"))
        target = torch.arange(len(qids), device=scores.device) + offset
        ce = torch.nn.functional.cross_entropy(scores, target)
        stats: dict[str, float] = {"infonce": ce.item()}
        loss = ce
        if self.teacher is not None:
            qtext = [self.data.queries[q] for q in qids]
            corpus = self.data.dataset.corpus
            pairs = [(qtext[i], doc_text(corpus[pos_ids[i]])) for i in range(len(qids))]
            pairs += [(qtext[i], doc_text(corpus[d])) for i in range(len(qids)) for d in neg_ids[i]]
            t = torch.tensor(self.teacher.score_pairs(pairs), dtype=scores.dtype, device=scores.device)
            h = cfg.hard_negatives
            t_pos, t_neg = t[: len(qids)], t[len(qids) :].view(len(qids), h)
            raw = cfg.scale * q_emb @ d_local.T
            s_pos = raw[torch.arange(len(qids)), torch.arange(len(qids))]
            s_neg = torch.stack([raw[i, len(qids) + i * h : len(qids) + (i + 1) * h] for i in range(len(qids))])
            mse = ((s_pos.unsqueeze(1) - s_neg) - (t_pos.unsqueeze(1) - t_neg)).pow(2).mean(1).mean()
            stats["margin_mse"] = mse.item()
            loss = loss + float(cfg.distill_weight or 0.0) * mse
        return loss, stats
