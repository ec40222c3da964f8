"""ADORE (Zhan et al., SIGIR 2021): the query encoder trained alone against a fixed document index.

The starting model's document encoder embeds the corpus once into a FAISS flat inner-product index (``OUTPUT/index``;
or ``index`` names a folder built by ``rerank index`` with that model; a corpus, id, dimension, model or
document-encoder setting (pooling, normalisation, prefix, max length, dtype) that differs is an error, the model and
the settings naming the ``rerank index`` command that rebuilds it).
The index is never rebuilt or written during training. Each step encodes the batch's queries with the current query
encoder, retrieves their top-``top_k`` from the index, appends the positives that were not retrieved, and applies
RankNet over (positive, negative) pairs weighted by ``|1/r_pos − 1/r_neg|`` (ΔMRR), with ``1/r = 0`` beyond
``metric_cut``; ranks are positions in the retrieved list. Scores are ``scale``·q·d against the fixed document
embeddings. The saved model holds separate query and document encoders (the latter unchanged). ``ADORE+STAR``:
start from a STAR output (``model: STAR_OUTPUT``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from rerank.errors import ConfigError, RerankError
from rerank.trainers.base import TrainContext
from rerank.trainers.retriever import RetrieverTrainConfig, RetrieverTrainer, StepBatch

__all__ = ["AdoreConfig", "AdoreTrainer", "adore_query_loss"]


@dataclass
class AdoreConfig(RetrieverTrainConfig):
    """ADORE options on top of the shared ones (DRhard: lr 5e-6, batch 32, top 200, cut 200); the document options
    (``max_doc_tokens``, ``dev_depth``) are unused: documents keep the index's embeddings."""

    fixed_docs_cause: ClassVar[str] = "in ADORE (the query encoder trains alone against the fixed index)"
    fixed_docs_fix: ClassVar[str] = ""

    learning_rate: float = 5e-6
    batch_size: int = 32
    top_k: int = 200
    metric_cut: int | None = 200
    index: str | None = None
    train_doc_encoder: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_doc_encoder:
            raise ConfigError("train_doc_encoder must be false: ADORE trains the query encoder only (documents keep the index's embeddings)")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.metric_cut is not None and self.metric_cut < 1:
            raise ConfigError(f"metric_cut must be >= 1 or null, got {self.metric_cut}")


def adore_query_loss(scores: torch.Tensor, labels: torch.Tensor, metric_cut: int | None) -> torch.Tensor:
    """ΔMRR-weighted RankNet of one ranked list: mean over (pos, neg) pairs of ``w·log(1 + exp(s_neg − s_pos))``.

    ``scores`` [n] in list order (position i has rank i + 1); ``labels`` [n] bool.
    """
    n = scores.shape[0]
    inv = 1.0 / torch.arange(1, n + 1, dtype=scores.dtype, device=scores.device)
    if metric_cut is not None:
        inv[metric_cut:] = 0.0
    pos, neg = labels.nonzero().squeeze(1), (~labels).nonzero().squeeze(1)
    if len(pos) == 0 or len(neg) == 0:
        return scores.sum() * 0.0
    weight = (inv[pos].unsqueeze(1) - inv[neg].unsqueeze(0)).abs()
    pair = torch.nn.functional.softplus(scores[neg].unsqueeze(0) - scores[pos].unsqueeze(1))
    return (weight * pair).sum() / (len(pos) * len(neg))


class AdoreTrainer(RetrieverTrainer):
    """``rerank train adore``."""

    name = "adore"
    config_class = AdoreConfig

    def setup(self, cfg: AdoreConfig, ctx: TrainContext) -> None:
        from rerank.retrieval.index import DenseIndex, IndexConfig, doc_encoder_settings, encode_corpus_cached

        ds = self.data.dataset
        enc = self.encoder
        doc_hash = enc.fingerprint("doc")
        with self.saved_settings(enc):  # the starting model's own settings: what its documents are encoded with
            doc_settings = doc_encoder_settings(enc)
        if cfg.index:
            path = cfg.index
        else:
            path = str(Path(ctx.output) / "index")

            def build() -> None:
                if (Path(path) / "manifest.json").is_file():
                    return
                with self.saved_settings(enc):  # the manifest records them too, as `rerank index` would
                    emb = encode_corpus_cached(enc, ds, batch_size=cfg.encode_batch_size, progress=cfg.progress)
                    DenseIndex.build(emb, enc, IndexConfig("flat"), model=cfg.model).save(path, emb.path)

            self.main_first(build, "build ADORE's document index")
        where = str(ds.root)  # the dataset's folder: the rebuild commands errors name run without --data-root
        self.check_index(path, doc_hash, doc_settings, cfg, where)
        self.use_index(DenseIndex.load(
            path, corpus_sha256=ds.corpus_hash, corpus_ids=ds.corpus.keys(), model_hash=doc_hash, dim=enc.dim,
            encoder=doc_settings, model=cfg.model, dataset=where,
        ))

    def check_index(self, path: str, doc_hash: str, doc_settings: dict[str, Any], cfg: AdoreConfig,
                    dataset: str) -> None:
        """Refuse an index built with another model than the starting one, or with other document-encoder settings
        than the model's own, naming the ``rerank index`` command (for ``dataset``, a folder) that builds the right one
        (the other mismatches: :meth:`DenseIndex.load`)."""
        from rerank.retrieval.index import rebuild_command, settings_differences

        try:
            manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # DenseIndex.load names what the folder lacks
        if not isinstance(manifest, dict):
            return
        other = ", or drop index to build one into OUTPUT/index" if cfg.index else ""
        recorded = manifest.get("model_hash")
        if recorded is not None and recorded != doc_hash:
            redo = rebuild_command(path, {**manifest, "encoder": {}}, model=cfg.model, dataset=dataset)
            raise RerankError(
                f"{path}: built with model {manifest.get('model')!r} (fingerprint {str(recorded)[:12]}…), not the "
                f"starting model {cfg.model!r} ({doc_hash[:12]}…), whose document embeddings ADORE trains against: "
                f"rebuild it with {redo}{other}"
            )
        shown = settings_differences(manifest.get("encoder"), doc_settings)
        if shown:
            own = {**dataclasses.asdict(self.save_settings), "dtype": doc_settings["dtype"]}
            redo = rebuild_command(path, manifest, model=cfg.model, dataset=dataset, settings=own)
            raise RerankError(
                f"{path}: built with other document-encoder settings than the model's: {shown}; its embeddings do not "
                f"match the model's documents: rebuild it with the model's own settings: {redo}{other}"
            )

    def loss(self, model: Any, batch: StepBatch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: AdoreConfig = self.cfg  # type: ignore[assignment]
        qids = batch.qids
        q_emb, _ = self.embed(model, qids)
        hits = self.index.search(q_emb.detach().float().cpu().numpy(), cfg.top_k)
        total = q_emb.sum() * 0.0
        appended = 0
        mrr = 0.0
        for i, q in enumerate(qids):
            rel = set(self.data.positives[q])
            ids = [d for d, _ in hits[i]]
            first = next((r for r, d in enumerate(ids[:10], 1) if d in rel), None)
            mrr += 1.0 / first if first else 0.0
            missing = [d for d in self.data.positives[q] if d not in set(ids)]
            appended += len(missing)
            ids += missing
            labels = torch.tensor([d in rel for d in ids])
            docs = self.doc_emb[[self.doc_row[d] for d in ids]].to(q_emb.device)
            scores = cfg.scale * docs @ q_emb[i]
            total = total + adore_query_loss(scores, labels, cfg.metric_cut)
        return total / len(qids), {"retrieved_queries": float(len(qids)), "appended_positives": float(appended),
                                   "mrr@10": mrr / len(qids)}
