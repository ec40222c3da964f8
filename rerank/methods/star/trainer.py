"""STAR (Zhan et al., SIGIR 2021): static hard negatives plus in-batch random negatives, DRhard's pairwise loss.

Hard negatives are mined once, before training, by the warm-start model: its top-``negatives_depth`` (FAISS flat
inner product over the corpus) minus the positives. They are written to ``OUTPUT/negatives.json`` (corpus hash,
model fingerprint, its encoder settings and depth recorded) and can be reused by another run with ``negatives_file``.
A run into a folder whose ``negatives.json`` was mined with another model, encoder settings (pooling, normalisation,
prefixes, max lengths) or depth (or does not fit its corpus and queries) mines again,
saying why; a ``--resume`` keeps the run's negatives, so there such a file is an error. Each query of a batch brings one
positive and one hard negative drawn at random from its list; every other document of the global batch (the other
queries' positives and hard negatives, all processes) is a negative too, except documents relevant to the query.
Loss: for each (query, negative) pair the two-way softmax cross-entropy of the positive against that negative,
``log(1 + exp(s_neg − s_pos))``, averaged over all valid pairs of the global batch.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rerank.config import option_default
from rerank.errors import ConfigError, RerankError
from rerank.methods.contrastive.trainer import draw_negatives
from rerank.retrieval.index import settings_differences
from rerank.trainers.base import TrainContext
from rerank.trainers.retriever import (
    RetrieverTrainConfig,
    RetrieverTrainer,
    StepBatch,
    load_negatives,
    mine_dense_negatives,
    read_negatives_file,
    save_negatives,
)

__all__ = ["StarConfig", "StarTrainer", "star_pair_loss"]

log = logging.getLogger(__name__)


@dataclass
class StarConfig(RetrieverTrainConfig):
    """STAR options on top of the shared ones; ``negatives_depth`` is the mining depth, so it cannot go with
    ``negatives_file``."""

    negatives_depth: int = 200
    negatives_file: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.negatives_depth < 1:
            raise ConfigError(f"negatives_depth must be >= 1, got {self.negatives_depth}")
        if self.negatives_file and self.negatives_depth != option_default(self, "negatives_depth"):
            raise ConfigError(f"negatives_depth {self.negatives_depth} is unused with negatives_file (its negatives "
                              "were mined to the file's own depth): drop negatives_depth, or drop negatives_file to "
                              "mine them again")


def star_pair_loss(scores: torch.Tensor, pos_index: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum over valid (query, negative) pairs of ``softplus(s_neg − s_pos)``, and the number of pairs.

    ``scores`` [Q, D]; ``pos_index`` [Q] column of each query's positive; ``valid`` [Q, D] marks the negatives.
    """
    s_pos = scores.gather(1, pos_index.unsqueeze(1))
    pair = torch.nn.functional.softplus(scores - s_pos)
    return (pair * valid).sum(), int(valid.sum().item())


class StarTrainer(RetrieverTrainer):
    """``rerank train star``."""

    name = "star"
    config_class = StarConfig

    def misfit(self, path: Path, cfg: StarConfig, model_hash: str) -> str | None:
        """Why the mined negatives in ``path`` cannot serve this run (another starting model, encoder settings or
        depth, another corpus, a training query missing, a malformed file), or None when they can: then they are this
        run's negatives."""
        try:
            raw = read_negatives_file(path)
            if raw.get("model_hash") != model_hash:
                return (f"mined with model {raw.get('model')!r} (fingerprint {str(raw.get('model_hash'))[:12]}…), not "
                        f"the starting model {cfg.model!r} ({model_hash[:12]}…)")
            encoder, own = raw.get("encoder"), self.mining_settings()
            if encoder != own:
                if not isinstance(encoder, dict):
                    return ("its encoder settings (pooling, normalisation, prefixes, lengths) are not recorded (mined "
                            "by an earlier rerank)")
                diff = settings_differences(encoder, own, "the starting model")
                return f"mined with other encoder settings than the starting model's: {diff}"
            if raw.get("depth") != cfg.negatives_depth:
                return f"mined to depth {raw.get('depth')}, not negatives_depth {cfg.negatives_depth}"
            self.negatives = load_negatives(path, self.data, self.data.train_qids, raw)
        except RerankError as e:
            return str(e).removeprefix(f"{path}: ")
        return None

    def mining_settings(self) -> dict[str, Any]:
        """The starting model's own encoder settings, which mine the negatives (and ``negatives.json`` records)."""
        return dataclasses.asdict(self.save_settings)

    def setup(self, cfg: StarConfig, ctx: TrainContext) -> None:
        self.corpus_ids = sorted(self.data.dataset.corpus)
        qids = self.data.train_qids
        if cfg.negatives_file:
            self.negatives = load_negatives(cfg.negatives_file, self.data, qids)
            return
        path = Path(ctx.output) / "negatives.json"
        model_hash = self.encoder.fingerprint("doc")  # the starting model's (setup runs before any step or resume)
        self.negatives = None  # set by misfit() when the file in OUTPUT serves this run, each file read once
        if ctx.resume and path.is_file():
            why = self.misfit(path, cfg, model_hash)
            if why is not None:
                raise RerankError(f"{path}: {why}; a --resume trains on the negatives its run started with: resume "
                                  "with that starting model, or start again with --overwrite")

        def mine() -> None:
            if self.negatives is not None:  # the resumed run's own, checked above
                return
            if path.is_file():
                why = self.misfit(path, cfg, model_hash)
                if why is None:
                    if self.args.process_index == 0:
                        log.info("%s: reusing the negatives mined with this starting model, its encoder settings and "
                                 "depth", path)
                    return
                log.warning("%s: %s; mining the negatives again", path, why)
            warm = self.start_encoder()
            negs = mine_dense_negatives(warm, self.data, qids, cfg.negatives_depth + 50, cfg.encode_batch_size,
                                        cfg.progress)
            negs = {q: v[: cfg.negatives_depth] for q, v in negs.items()}
            save_negatives(path, negs, {
                "model": cfg.model, "model_hash": model_hash, "encoder": self.mining_settings(),
                "corpus_sha256": self.data.dataset.corpus_hash,
                "depth": cfg.negatives_depth, "split": cfg.split,
            })

        self.main_first(mine, "mine STAR's negatives")
        if self.negatives is None:  # mined now, or checked by the main process only
            self.negatives = load_negatives(path, self.data, qids)

    def loss(self, model: Any, batch: StepBatch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: StarConfig = self.cfg  # type: ignore[assignment]
        qids = batch.qids
        pos_ids, neg_ids = [], []
        for q, rng in zip(qids, batch.rngs, strict=True):
            pos = self.data.positives[q]
            pos_ids.append(pos[int(rng.integers(len(pos)))])
            neg_ids.append(draw_negatives(rng, self.negatives[q], 1, set(pos), self.corpus_ids)[0])
        local_docs = pos_ids + neg_ids
        q_emb, d_local = self.embed(model, qids, local_docs)
        d_all = batch.gather(d_local)
        all_ids = batch.gather_list(local_docs)
        scores = cfg.scale * q_emb @ d_all.T
        offset = batch.rank * len(local_docs)
        pos_index = torch.arange(len(qids), device=scores.device) + offset
        valid = torch.ones_like(scores)
        for i, q in enumerate(qids):
            rel = set(self.data.positives[q])
            for j, d in enumerate(all_ids):
                if d in rel:
                    valid[i, j] = 0.0
        total, n_pairs = star_pair_loss(scores, pos_index, valid)
        n_global = batch.sum(n_pairs)
        return total * batch.world / max(n_global, 1.0), {"pairs": float(n_pairs)}
