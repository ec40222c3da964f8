"""What the bi-encoder trainers (contrastive, STAR, ADORE, PG-Rank) share: data, loop, checkpoints, DDP, selection.

* Data: the judged queries of ``split`` (default ``train``); queries without any positive (grade >= the dataset's
  relevance level) are reported in ``skipped_queries.json`` and the log and skipped, never trained with a zero loss.
  A dev split (``dev_fraction`` of the rest, drawn with ``seed``) is held out for model selection.
* Order: step ``s`` of epoch ``e`` trains on slice ``s`` of a permutation of the training queries drawn from
  ``(seed, e)``; per-step choices (which positive, which hard negative) come from a generator seeded by
  ``(seed, step)``. The data order is therefore a function of the step alone, which makes ``--resume`` exact.
* Checkpoints: ``checkpoints/step-N/`` holds the model and ``state.pt`` (optimizer, scheduler, torch RNG, step,
  dev history), ``state.pt`` written last; ``--resume`` continues from the newest complete one.
* Selection: nDCG@10 on the dev split (candidates: BM25 top-``dev_depth`` plus the positives, scored by the current
  model) at step 0 and every ``eval_every`` steps and at the end; the best model is written to ``--output`` as a
  sentence-transformers folder (``rerank eval --retriever dense --model OUTPUT`` loads it). Training uses the
  configured max lengths; the saved model keeps the starting model's settings.
* ``train_doc_encoder: false`` untie the encoders and train the query side only: documents keep the starting
  model's embeddings (the cached corpus encoding, also what ``rerank eval`` reuses), so a step encodes no documents
  and dev selection searches the whole corpus. The saved model then holds separate query and document encoders.
* Distributed (``torchrun`` / ``accelerate launch``; gloo on CPU): each process takes its slice of the global batch,
  document embeddings are all-gathered with gradients so every query sees every process's negatives, and gradients
  are summed across processes; the result matches one process on the same global batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rerank.data.datasets import Dataset, resolve_dataset
from rerank.errors import ConfigError, RerankError
from rerank.retrieval.dense import BiEncoder
from rerank.retrieval.index import doc_text
from rerank.trainers.base import TrainContext, save_run_record
from rerank.utils.files import atomic_write, write_json

__all__ = [
    "Dist",
    "RetrieverTrainConfig",
    "RetrieverTrainer",
    "TrainData",
    "latest_checkpoint",
    "load_negatives",
    "mine_dense_negatives",
    "publish_model",
]

log = logging.getLogger(__name__)

_ST_ENTRIES = (
    "modules.json", "biencoder.json", "config_sentence_transformers.json", "rerank_biencoder.json",
    "0_Transformer", "1_Pooling", "2_Normalize", "query_encoder", "doc_encoder",
)
_MANIFESTS = ("biencoder.json", "modules.json")
NEGATIVES_FORMAT = "rerank-negatives"


@dataclass
class RetrieverTrainConfig:
    """Options every retriever trainer takes (trainers add their own fields)."""

    model: str = ""
    dataset: str = ""
    split: str = "train"
    dev_fraction: float = 0.1
    seed: int = 42
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    query_max_length: int = 64
    doc_max_length: int = 256
    scale: float = 1.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    eval_every: int = 0
    dev_depth: int = 30
    encode_batch_size: int = 64
    disable_dropout: bool = False
    train_doc_encoder: bool = True
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ConfigError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}")
        for name in ("epochs", "batch_size", "query_max_length", "doc_max_length", "dev_depth", "encode_batch_size",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        for name in ("checkpoint_every", "eval_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 disables), got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


class Dist:
    """Process-group facts; initialises gloo (CPU) or nccl (CUDA) when launched with WORLD_SIZE > 1."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.main = self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's ``t`` along dim 0, keeping the gradient path to the local part."""
        if self.world == 1:
            return t
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(t), dim=0)

    def gather_list(self, items: list[Any]) -> list[Any]:
        """Concatenate every process's list (in rank order)."""
        if self.world == 1:
            return list(items)
        out: list[list[Any]] = [[] for _ in range(self.world)]
        torch.distributed.all_gather_object(out, items)
        return [x for part in out for x in part]

    def sum(self, x: float) -> float:
        """Sum of a number over processes (no gradient)."""
        if self.world == 1:
            return float(x)
        t = torch.tensor([float(x)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def rank0_first(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0, then on the others (for steps that fill a shared on-disk cache)."""
        if self.main:
            out = fn()
            self.barrier()
            return out
        self.barrier()
        return fn()


@dataclass
class TrainData:
    """The training and dev queries with their judgements; ``skipped`` lists queries without a positive."""

    dataset: Dataset
    queries: dict[str, str]
    grades: dict[str, dict[str, int]]
    positives: dict[str, list[str]]
    train_qids: list[str]
    dev_qids: list[str]
    skipped: list[str]


def load_train_data(cfg: RetrieverTrainConfig, data_root: str | None) -> TrainData:
    """Judged queries of ``cfg.split``; no-positive queries reported and dropped; dev carved with ``cfg.seed``."""
    if not cfg.dataset:
        raise ConfigError("the training dataset is required (key 'dataset', or --set dataset=NAME_OR_PATH)")
    ds = resolve_dataset(cfg.dataset, data_root)
    queries = ds.split_queries(cfg.split)
    qrels = ds.qrels(cfg.split)
    corpus_ids = ds.corpus.keys()
    rel = ds.rel_level
    grades: dict[str, dict[str, int]] = {}
    positives: dict[str, list[str]] = {}
    skipped: list[str] = []
    unknown = 0
    for qid in sorted(queries):
        judged = {d: int(g) for d, g in qrels[qid].items() if d in corpus_ids}
        unknown += len(qrels[qid]) - len(judged)
        pos = sorted(d for d, g in judged.items() if g >= rel)
        if not pos:
            skipped.append(qid)
            continue
        grades[qid] = judged
        positives[qid] = pos
    if unknown:
        log.warning("%s/%s: %d judged documents are not in the corpus and were ignored", ds.name, cfg.split, unknown)
    if skipped:
        log.warning(
            "%s/%s: %d of %d queries have no positive (grade >= %d) and are skipped: %s%s",
            ds.name, cfg.split, len(skipped), len(queries), rel, ", ".join(skipped[:5]), " …" if len(skipped) > 5 else "",
        )
    usable = sorted(positives)
    if not usable:
        raise RerankError(f"{ds.name}/{cfg.split}: no query has a positive (grade >= {rel}); nothing to train on")
    perm = [usable[i] for i in np.random.default_rng([cfg.seed, 7]).permutation(len(usable))]
    n_dev = round(cfg.dev_fraction * len(usable))
    if cfg.dev_fraction > 0 and len(usable) >= 2:
        n_dev = min(max(n_dev, 1), len(usable) - 1)
    else:
        n_dev = 0
    dev, train = sorted(perm[:n_dev]), sorted(perm[n_dev:])
    texts = {q: queries[q].text for q in usable}
    return TrainData(ds, texts, grades, positives, train, dev, skipped)


def latest_checkpoint(output: Path) -> Path | None:
    """The newest ``checkpoints/step-N`` folder holding a complete ``state.pt``."""
    root = output / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "state.pt").is_file())
    return done[-1] if done else None


def publish_model(encoder: BiEncoder, output: Path, settings: Any | None = None) -> Path:
    """Write ``encoder`` as a sentence-transformers folder *into* ``output`` (other files there are kept).

    The manifest (``modules.json`` / ``biencoder.json``) is removed first and moved in last, so an interrupted
    publish never leaves a folder that loads half-old, half-new.
    """
    output.mkdir(parents=True, exist_ok=True)
    tmp = output / ".publish"
    shutil.rmtree(tmp, ignore_errors=True)
    saved = encoder.settings
    if settings is not None:
        encoder.settings = settings
    try:
        encoder.save(tmp)
    finally:
        encoder.settings = saved
    for name in _MANIFESTS + _ST_ENTRIES:
        p = output / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    entries = sorted(os.listdir(tmp), key=lambda n: n in _MANIFESTS)
    for name in entries:
        os.replace(tmp / name, output / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return output


def mine_dense_negatives(
    encoder: BiEncoder, data: TrainData, qids: Sequence[str], depth: int, batch_size: int = 64, progress: bool = True
) -> dict[str, list[str]]:
    """Top-``depth`` of ``encoder`` (FAISS flat inner product over the cached corpus embeddings) minus positives."""
    from rerank.retrieval.index import DenseIndex, IndexConfig, encode_corpus_cached

    emb = encode_corpus_cached(encoder, data.dataset, batch_size=batch_size, progress=progress)
    index = DenseIndex.build(emb, encoder, IndexConfig("flat"))
    qvec = encoder.encode_numpy([data.queries[q] for q in qids], "query", batch_size)
    hits = index.search(qvec, depth)
    out: dict[str, list[str]] = {}
    for q, row in zip(qids, hits, strict=True):
        pos = set(data.positives[q])
        out[q] = [d for d, _ in row if d not in pos]
    return out


def save_negatives(path: Path, negatives: dict[str, list[str]], meta: dict[str, Any]) -> None:
    """Write a reusable negatives file (JSON: format, provenance, qid -> doc ids best first)."""
    write_json({"format": NEGATIVES_FORMAT, "version": 1, **meta, "negatives": negatives}, path)


def load_negatives(path: str | Path, data: TrainData, qids: Sequence[str]) -> dict[str, list[str]]:
    """Read a negatives file; one mined for another corpus, or missing some training query, is an error."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RerankError(f"{path}: cannot read negatives file: {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != NEGATIVES_FORMAT:
        raise RerankError(f"{path}: not a {NEGATIVES_FORMAT} file")
    if raw.get("corpus_sha256") != data.dataset.corpus_hash:
        raise RerankError(
            f"{path}: mined for a corpus with sha256 {str(raw.get('corpus_sha256'))[:12]}…, but the training corpus "
            f"has {data.dataset.corpus_hash[:12]}…; mine again (drop negatives_file)"
        )
    negs = raw.get("negatives") or {}
    missing = [q for q in qids if q not in negs]
    if missing:
        raise RerankError(f"{path}: no negatives for {len(missing)} training queries (e.g. {missing[:3]})")
    corpus = data.dataset.corpus
    bad = [d for q in qids for d in negs[q] if d not in corpus]
    if bad:
        raise RerankError(f"{path}: {len(bad)} negative ids are not in the corpus (e.g. {bad[:3]})")
    return {q: list(negs[q]) for q in qids}


class RetrieverTrainer:
    """The shared loop; subclasses set ``name`` / ``config_class`` and implement :meth:`loss`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = RetrieverTrainConfig
    trains_docs: bool = True

    # ------------------------------------------------------------------ hooks
    def setup(self, cfg: Any, ctx: TrainContext) -> None:
        """Trainer-specific preparation after the model and data are loaded (mining, indexes)."""

    def loss(self, qids: list[str], rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of this process's queries ``qids`` (already divided so that summing over processes is right)."""
        raise NotImplementedError

    def prepare_model(self, encoder: BiEncoder) -> BiEncoder:
        """Adjust the loaded starting model: untie it when only the query encoder trains."""
        self.trains_docs = bool(self.cfg.train_doc_encoder)
        return encoder if self.trains_docs else encoder.untie()

    def load_frozen_docs(self) -> None:
        """The starting document encoder's corpus embeddings (cache, rank 0 first) as a flat index and a tensor."""
        from rerank.retrieval.index import DenseIndex, IndexConfig, encode_corpus_cached

        enc, cfg = self.encoder, self.cfg

        def encode() -> Any:
            saved, enc.settings = enc.settings, self.save_settings
            try:
                return encode_corpus_cached(enc, self.data.dataset, batch_size=cfg.encode_batch_size,
                                            progress=cfg.progress and self.dist.main)
            finally:
                enc.settings = saved

        emb = self.dist.rank0_first(encode)
        self.use_index(DenseIndex.build(emb, enc, IndexConfig("flat"), model=cfg.model))

    def use_index(self, index: Any) -> None:
        """Fixed document embeddings for training (``embed_docs``) and dev search."""
        self.index = index
        self.doc_row = {d: i for i, d in enumerate(index.ids)}
        self.doc_emb = torch.from_numpy(np.array(index.embeddings, dtype=np.float32, copy=True))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimiser updates."""
        if self.trains_docs:
            return list(dict.fromkeys(self.encoder.parameters()))
        return list(self.encoder.query_model.parameters())

    def dev_doc_scores(self, qids: list[str]) -> dict[str, list[tuple[str, float]]]:
        """Dev run: with fixed documents, a top-100 search of the corpus; else the current model's scores over BM25
        top-``dev_depth`` plus the positives of each dev query."""
        if not self.trains_docs:
            qvec = self.encoder.encode_numpy([self.data.queries[q] for q in qids], "query", self.cfg.encode_batch_size)
            return dict(zip(qids, self.index.search(qvec, 100), strict=True))
        cands = self._dev_candidates
        docs = sorted({d for q in qids for d in cands[q]})
        corpus = self.data.dataset.corpus
        enc = self.encoder
        bs = self.cfg.encode_batch_size
        dvec = enc.encode_numpy([doc_text(corpus[d]) for d in docs], "doc", bs)
        qvec = enc.encode_numpy([self.data.queries[q] for q in qids], "query", bs)
        row = {d: i for i, d in enumerate(docs)}
        run = {}
        for qi, q in enumerate(qids):
            ids = cands[q]
            scores = dvec[[row[d] for d in ids]] @ qvec[qi]
            run[q] = [(d, float(s)) for d, s in zip(ids, scores, strict=True)]
        return run

    # ------------------------------------------------------------------ shared pieces
    def bm25_run(self, qids: Sequence[str], depth: int) -> dict[str, list[str]]:
        """BM25 top-``depth`` doc ids per query (the bm25 index is cached on disk; rank 0 builds it first)."""
        from rerank.retrieval import build_retriever
        from rerank.types import Query

        def run() -> dict[str, list[str]]:
            bm25 = build_retriever("bm25", self.data.dataset)
            res = bm25.retrieve({q: Query(q, self.data.queries[q]) for q in qids}, k=depth)
            return {q: [d for d, _ in res.get(q, [])] for q in qids}

        return self.dist.rank0_first(run)

    def embed_queries(self, qids: Sequence[str]) -> torch.Tensor:
        return self.encoder.embed([self.data.queries[q] for q in qids], "query")

    def embed_docs(self, ids: Sequence[str]) -> torch.Tensor:
        if not self.trains_docs:
            return self.doc_emb[[self.doc_row[d] for d in ids]].to(self.encoder.device)
        corpus = self.data.dataset.corpus
        return self.encoder.embed([doc_text(corpus[d]) for d in ids], "doc")

    def batch_qids(self, step: int) -> list[str]:
        """The global batch of ``step`` (a function of the step and seed only)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        train = self.data.train_qids
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(train))
        b = self.cfg.batch_size
        return [train[j] for j in perm[i * b : (i + 1) * b]]

    # ------------------------------------------------------------------ the loop
    def train(self, cfg: RetrieverTrainConfig, ctx: TrainContext) -> dict[str, Any]:
        """Train, select on dev, publish the best model into ``ctx.output``; returns a summary."""
        t_start = time.perf_counter()
        self.cfg = cfg
        self.ctx = ctx
        self.dist = Dist()
        out = Path(ctx.output)
        self.output = out
        torch.manual_seed(cfg.seed)
        if self.dist.main and not (out / "rerank_train.json").is_file():
            save_run_record(out, self.name, cfg)
        self.data = load_train_data(cfg, ctx.data_root)
        if self.dist.main:
            write_json({"split": cfg.split, "skipped_no_positive": self.data.skipped,
                        "train": self.data.train_qids, "dev": self.data.dev_qids}, out / "queries.json")
        if len(self.data.train_qids) < self.dist.world:
            raise RerankError(f"{len(self.data.train_qids)} training queries cannot feed {self.dist.world} processes")
        if cfg.batch_size % self.dist.world:
            raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the {self.dist.world} processes")
        self.steps_per_epoch = max(1, len(self.data.train_qids) // cfg.batch_size)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch

        ckpt = latest_checkpoint(out)
        if ckpt is not None and not ctx.resume:
            raise ConfigError(f"{out} already holds checkpoints ({ckpt.name}); pass --resume or use a new --output")
        if ctx.resume and ckpt is None:
            log.warning("--resume: no checkpoint in %s; starting from the beginning", out)
        start_model = BiEncoder.load(cfg.model, device=cfg.device)
        self.save_settings = start_model.settings
        self.encoder = self.prepare_model(start_model)
        if ckpt is not None:
            loaded = BiEncoder.load(ckpt / "model", device=cfg.device)
            self.encoder.load_state_dict(self._expand_state(loaded), strict=True)
            log.info("resuming from %s", ckpt)
        self.encoder.settings = dataclasses.replace(
            self.save_settings, query_max_length=cfg.query_max_length, doc_max_length=cfg.doc_max_length
        )
        if cfg.disable_dropout:
            for m in self.encoder.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        if not self.trains_docs:
            self.encoder.doc_model.eval()
            for p in self.encoder.doc_model.parameters():
                p.requires_grad_(False)
        self.setup(cfg, ctx)
        if not self.trains_docs and not hasattr(self, "index"):
            self.load_frozen_docs()
        if self.data.dev_qids and self.trains_docs:
            bm = self.bm25_run(self.data.dev_qids, cfg.dev_depth)
            self._dev_candidates = {
                q: bm[q] + [d for d in self.data.positives[q] if d not in set(bm[q])] for q in self.data.dev_qids
            }

        from transformers import get_linear_schedule_with_warmup

        params = self.trainable_parameters()
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
        )
        scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, self.total_steps)
        step = 0
        history: list[dict[str, Any]] = []
        dev_history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        if ckpt is not None:
            state = torch.load(ckpt / "state.pt", weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            step = int(state["step"])
            history = json.loads(state["history"])
            dev_history = json.loads(state["dev_history"])
            best = json.loads(state["best"])
            self.load_extra_state(json.loads(state.get("extra", "{}")))

        if self.data.dev_qids and step == 0:
            best = self._evaluate(0, dev_history, best)
        elif not self.data.dev_qids and self.dist.main:
            log.info("dev_fraction=0: no model selection; the last step's model is published")

        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=step, desc=f"train {self.name}", disable=not (cfg.progress and self.dist.main))
        t_loop = time.perf_counter()
        steps_run = 0
        while step < self.total_steps:
            qids = self.batch_qids(step)
            local = qids[self.dist.rank :: self.dist.world]
            rng = np.random.default_rng([cfg.seed, step, 1])
            self.encoder.train()
            if not self.trains_docs:
                self.encoder.doc_model.eval()
            loss, stats = self.loss(local, rng, step)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            if self.dist.world > 1:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    torch.distributed.all_reduce(p.grad)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            steps_run += 1
            total_loss = self.dist.sum(loss.item())
            history.append({"step": step, "loss": total_loss, "qids": qids,
                            **{k: self.dist.sum(v) for k, v in stats.items()}})
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss:.4f}")
            if self.data.dev_qids and ((cfg.eval_every and step % cfg.eval_every == 0) or step == self.total_steps):
                best = self._evaluate(step, dev_history, best)
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == self.total_steps:
                self._checkpoint(step, optimizer, scheduler, history, dev_history, best)
        bar.close()
        train_seconds = time.perf_counter() - t_loop
        if not self.data.dev_qids and self.dist.main:
            publish_model(self.encoder, out, self.save_settings)
        if self.dist.main:
            with atomic_write(out / "train_log.jsonl") as f:
                for h in history:
                    f.write(json.dumps(h) + "\n")
        summary = {
            "steps": step, "steps_this_run": steps_run, "train_queries": len(self.data.train_qids),
            "dev_queries": len(self.data.dev_qids), "skipped_no_positive": len(self.data.skipped),
            "best": best, "final_loss": history[-1]["loss"] if history else None,
            "world_size": self.dist.world, "loop_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - t_start, 1),
        }
        if self.dist.main:
            write_json({**summary, "dev_history": dev_history}, out / "train_summary.json")
        self.dist.barrier()
        return summary

    # ------------------------------------------------------------------ helpers of the loop
    def load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore trainer-specific counters saved by :meth:`extra_state`."""

    def extra_state(self) -> dict[str, Any]:
        """Trainer-specific counters to checkpoint (JSON-serialisable)."""
        return {}

    def _expand_state(self, loaded: BiEncoder) -> dict[str, torch.Tensor]:
        """A checkpoint's weights keyed for ``self.encoder`` (a tied checkpoint fills both sides of an untied model)."""
        sd = loaded.state_dict()
        if loaded.tied and not self.encoder.tied:
            sd.update({k.replace("query_model.", "doc_model.", 1): v for k, v in sd.items() if k.startswith("query_model.")})
        return sd

    def _evaluate(self, step: int, dev_history: list[dict[str, Any]], best: dict[str, Any] | None) -> dict[str, Any] | None:
        """Dev nDCG@10 (rank 0, broadcast); publish the model when it is the best so far (ties keep the earlier)."""
        from rerank.eval.metrics import evaluate_run

        result = None
        if self.dist.main:
            self.encoder.eval()
            run = self.dev_doc_scores(self.data.dev_qids)
            qrels = {q: self.data.grades[q] for q in self.data.dev_qids}
            agg = evaluate_run(run, qrels, ("nDCG@10", "R@100"), self.data.dataset.rel_level).aggregate
            result = {"step": step, "ndcg@10": agg["nDCG@10"], "recall@100": agg["R@100"]}
            dev_history.append(result)
            log.info("dev step %d: nDCG@10 %.4f", step, result["ndcg@10"])
            if best is None or result["ndcg@10"] > best["ndcg@10"]:
                best = dict(result)
                publish_model(self.encoder, self.output, self.save_settings)
        return self.dist.broadcast(best)

    def _checkpoint(
        self, step: int, optimizer: Any, scheduler: Any, history: list[dict[str, Any]],
        dev_history: list[dict[str, Any]], best: dict[str, Any] | None,
    ) -> None:
        if self.dist.main:
            folder = self.output / "checkpoints" / f"step-{step:08d}"
            shutil.rmtree(folder, ignore_errors=True)
            self.encoder.save(folder / "model")
            state = {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "step": step, "history": json.dumps(history),
                "dev_history": json.dumps(dev_history), "best": json.dumps(best), "extra": json.dumps(self.extra_state()),
            }
            with atomic_write(folder / "state.pt", "wb") as f:
                torch.save(state, f)
            done = sorted(p for p in (self.output / "checkpoints").glob("step-*") if (p / "state.pt").is_file())
            for old in done[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
