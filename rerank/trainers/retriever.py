"""What the bi-encoder trainers (contrastive, STAR, ADORE, PG-Rank) share, on Hugging Face's ``Trainer``.

* Data: the judged queries of ``split`` (default ``train``; a (query, document) pair judged twice is an error unless
  ``qrels_duplicates`` is ``last`` or ``max``); queries without any positive (grade >= the dataset's
  relevance level) are reported in ``queries.json`` and the log and skipped, never trained with a zero loss. With
  ``eval_steps`` > 0 a dev split (``dev_fraction`` of the rest, default 0.1, drawn with ``seed``) is held out for
  model selection; with ``eval_steps`` 0 every query trains (a ``dev_fraction`` > 0 there is an error).
* The loop is transformers' ``Trainer`` with the schedule every trainer takes (:class:`TrainSchedule`: AdamW,
  linear warmup and decay, gradient clipping, ``bf16``, logging, ``OUTPUT/checkpoints/checkpoint-N`` with optimizer,
  scheduler, RNG and data position, ``--resume``, several processes with ``torchrun`` / ``accelerate launch``). A
  training row is a query; the method's :meth:`RetrieverTrainer.loss` embeds the step's queries and documents in one
  forward of the (possibly distributed) model and draws that query's documents with a generator seeded by
  ``(seed, global step, query)``, so the draws depend neither on how a batch is split over processes nor on a resume.
* Several processes: ``batch_size`` is per process; document embeddings are all-gathered with their gradients, so
  every query sees the whole global batch's documents as negatives, and each process's loss is scaled so that the
  averaged gradient is the one-process gradient of the global batch (when the training queries fill whole global
  batches: accelerate fills a last partial one by repeating queries; and with dropout off, each process drawing its
  own masks).
* Selection (``eval_steps`` > 0; a dev split that came out empty is an error before the model loads): nDCG@10 on
  dev (candidates: BM25 top-``dev_depth`` plus the judged positives, scored by the current model, so no recall is
  reported: it would be 1 by construction; with fixed documents, a search of the whole corpus, with R@100) at the
  start and every ``eval_steps``; the best checkpoint is loaded at the end. When
  no checkpoint beats the starting model (step 0), the best checkpoint is still the model, with a warning, and
  ``train_summary.json`` says so (``start``, ``improved_on_start: false``). A resumed run does not evaluate its
  resume step again. Without selection the last step is kept.
* ``train_doc_encoder: false`` unties the encoders and trains the query side only: documents keep the starting
  model's embeddings (the cached corpus encoding, also what ``rerank eval`` reuses), so a step encodes no documents
  and dev selection searches the whole corpus; ``max_doc_tokens`` and ``dev_depth`` are then unused, and a value
  other than their default is an error (as ``dev_depth`` is with ``eval_steps`` 0).
* Outputs: ``OUTPUT/model`` (a sentence-transformers folder, untied models as a query/document ``Router``; training
  uses the configured max lengths, the saved model keeps the starting model's settings), ``train_log.jsonl`` (one
  line per logging step: loss and the method's statistics), ``train_summary.json`` (with the dev history) and
  ``queries.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rerank.config import option_default
from rerank.data.datasets import Dataset, resolve_dataset
from rerank.data.io import DUPLICATE_POLICIES, Duplicates
from rerank.errors import ConfigError, DataFormatError, DatasetNotFoundError, RerankError
from rerank.retrieval.dense import BiEncoder, EncoderSettings, check_max_lengths
from rerank.retrieval.index import doc_text, upgrade_encoder_keys
from rerank.trainers.artifacts import write_model_artifacts
from rerank.trainers.base import TrainContext
from rerank.trainers.common import RETRIEVER_KEY_HINTS, TrainSchedule, check_dev_split, cpu_only, training_kwargs
from rerank.trainers.resume import fit, resume_arg
from rerank.utils.files import atomic_write, staged_dir, write_json

__all__ = [
    "NEGATIVES_SHAPE",
    "RetrieverTrainConfig",
    "RetrieverTrainer",
    "StepBatch",
    "TrainData",
    "load_negatives",
    "mine_dense_negatives",
    "read_negatives_file",
    "save_negatives",
]

log = logging.getLogger(__name__)

NEGATIVES_FORMAT = "rerank-negatives"
#: the shape of a negatives file's content, as errors name it
NEGATIVES_SHAPE = ('{"format": "rerank-negatives", "negatives": {"QUERY_ID": ["DOC_ID", ...]}} '
                   "(document ids, best first)")


@dataclass
class RetrieverTrainConfig(TrainSchedule):
    """Options every retriever trainer takes: the schedule (:class:`TrainSchedule`, retriever defaults), the data,
    the encoder's training lengths and dev selection (trainers add their own fields). An option a combination never
    reads (``dev_fraction`` or ``dev_depth`` without ``eval_steps``, document options with fixed documents) is an
    error, not silently ignored."""

    #: how errors about options unused with fixed document embeddings name the cause, and the way out
    fixed_docs_cause: ClassVar[str] = "with train_doc_encoder: false"
    fixed_docs_fix: ClassVar[str] = ", or set train_doc_encoder: true"
    key_hints: ClassVar[Mapping[str, tuple[tuple[str, ...], str]]] = RETRIEVER_KEY_HINTS

    learning_rate: float = 2e-5
    batch_size: int = 16
    weight_decay: float = 0.01
    seed: int = 42
    save_steps: int = 100
    model: str = ""
    dataset: str = ""
    split: str = "train"
    qrels_duplicates: Duplicates = "error"
    dev_fraction: float | None = None  # 0.1 with eval_steps > 0, else 0 (a dev split serves selection only)
    max_query_tokens: int = 64
    max_doc_tokens: int = 256
    scale: float = 1.0
    dev_depth: int = 30
    encode_batch_size: int = 64
    disable_dropout: bool = False
    train_doc_encoder: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dev_fraction is not None and not 0.0 <= self.dev_fraction < 1.0:
            raise ConfigError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}")
        if self.qrels_duplicates not in DUPLICATE_POLICIES:
            raise ConfigError(f"qrels_duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, "
                              f"got {self.qrels_duplicates!r}")
        for name in ("max_query_tokens", "max_doc_tokens", "dev_depth", "encode_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ConfigError(f"scale must be a finite number > 0 (it multiplies the scores: 0 trains nothing, a "
                              f"negative one ranks positives last), got {self.scale}")
        if self.split == "test":
            raise ConfigError("split test is the evaluation split, which training never reads (its scores would be "
                              "meaningless): set split to a training split (e.g. train)")
        if self.gradient_checkpointing:
            raise ConfigError("gradient_checkpointing is not available to the retriever trainers")
        self._check_dev_selection()
        if not self.train_doc_encoder:
            unused = {"max_doc_tokens": "documents keep the starting model's embeddings, encoded with its own settings",
                      "dev_depth": "dev selection searches the whole corpus, not BM25 candidates"}
            for name, what in unused.items():
                value = getattr(self, name)
                if value != option_default(self, name):
                    raise ConfigError(f"{name} {value} is unused {self.fixed_docs_cause} ({what}): drop "
                                      f"{name}{self.fixed_docs_fix}")

    def _check_dev_selection(self) -> None:
        """Resolve ``dev_fraction`` (None: 0.1 with selection, else 0) and refuse a dev option selection never uses,
        or selection without a dev split; the same rule as the reranker trainers'."""
        if self.dev_fraction is None:
            self.dev_fraction = 0.1 if self.eval_steps > 0 else 0.0
        if self.eval_steps == 0:
            if self.dev_fraction > 0:
                raise ConfigError(f"dev_fraction {self.dev_fraction} holds training queries out for dev selection, "
                                  "but eval_steps is 0 (no selection: they would never be used): set eval_steps "
                                  "(equal to save_steps) to select on dev, or drop dev_fraction to train on every "
                                  "query")
            if self.dev_depth != option_default(self, "dev_depth"):
                raise ConfigError(f"dev_depth {self.dev_depth} is unused with eval_steps 0 (no dev selection): drop "
                                  "dev_depth, or set eval_steps (equal to save_steps) to select on dev")
        elif self.dev_fraction == 0:
            raise ConfigError(f"eval_steps {self.eval_steps} selects the model on the dev split, but dev_fraction is "
                              "0 (no dev split): set dev_fraction > 0, or eval_steps: 0 to keep the last step")


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


def _file_as_dataset(dataset: str) -> str:
    """The error for a file given as ``dataset``: a file of training rows (a shape ``rerank train sft`` reads) is
    named as such, since the retriever trainers read only BEIR folders."""
    from rerank.data.io import iter_jsonl
    from rerank.trainers.data import row_shape

    try:
        shape = row_shape(next(iter(iter_jsonl(Path(dataset).expanduser())), (0, None))[1])
    except (RerankError, OSError):  # not JSONL: a file all the same
        shape = None
    if shape is None:
        return (f"the retriever trainers read only BEIR folders: dataset {dataset} is a file, not a BEIR folder: give "
                "the folder holding corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    return (f"dataset {dataset} is a file of training rows ({shape}'s shape), which the retriever trainers do not "
            "read: they read only BEIR folders (corpus.jsonl, queries.jsonl and qrels/<split>.tsv); such rows train a "
            "reranker (rerank train sft --set 'data={path: FILE}'): see docs/train-your-own.md#1-your-data")


def open_train_dataset(cfg: RetrieverTrainConfig, data_root: str | None, download: bool = True) -> Dataset:
    """The BEIR folder ``cfg.dataset`` names (a registered one fetched when absent and ``download``), with qrels for
    ``cfg.split``: no dataset, a missing or empty folder, a file, or no qrels for the split is a one-line error."""
    if not cfg.dataset:
        raise ConfigError("the training dataset is required (key 'dataset', or --set dataset=NAME_OR_PATH)")
    try:
        ds = resolve_dataset(cfg.dataset, data_root, download=download, qrels_duplicates=cfg.qrels_duplicates)
    except DatasetNotFoundError:
        if Path(cfg.dataset).expanduser().is_file():
            raise ConfigError(_file_as_dataset(cfg.dataset)) from None
        raise
    ds.duplicates_fix = "keep one grade with the key qrels_duplicates: last|max (or --set qrels_duplicates=max)"
    try:
        ds.qrels_path(cfg.split)
    except DatasetNotFoundError as e:
        raise ConfigError(f"{e}: set the key split (or --set split=NAME) to the split to train on") from None
    return ds


def _fetched_by_the_run(dataset: str) -> bool:
    """Whether ``dataset``, not found here, is one the run fetches: an ``irds:`` id, or a registered name with a
    download (:func:`~rerank.data.datasets.resolve_dataset` with ``download``)."""
    from rerank.data.datasets import is_dataset_name
    from rerank.data.irds import PREFIX
    from rerank.data.registry import get_dataset_info

    if dataset.startswith(PREFIX):
        return True
    info = get_dataset_info(dataset) if is_dataset_name(dataset) else None
    return info is not None and bool(info.url)


def load_train_data(cfg: RetrieverTrainConfig, data_root: str | None) -> TrainData:
    """Judged queries of ``cfg.split``; no-positive queries reported and dropped; dev carved with ``cfg.seed``."""
    return read_train_data(cfg, open_train_dataset(cfg, data_root))


def read_train_data(cfg: RetrieverTrainConfig, ds: Dataset, keep_corpus: bool = True) -> TrainData:
    """:func:`load_train_data` of the opened dataset ``ds``; ``keep_corpus`` false: one pass over the corpus finds the
    judged documents it holds, and the corpus is not kept in memory (``--check``)."""
    qrels = ds.qrels(cfg.split)
    queries = ds.split_queries(cfg.split)
    corpus_ids = (ds.corpus.keys() if keep_corpus
                  else ds.documents(frozenset(), {d for q in queries for d in qrels[q]}).found)
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
    fraction = cfg.dev_fraction or 0.0
    n_dev = round(fraction * len(usable))
    if fraction > 0 and len(usable) >= 2:
        n_dev = min(max(n_dev, 1), len(usable) - 1)
    else:
        n_dev = 0
    dev, train = sorted(perm[:n_dev]), sorted(perm[n_dev:])
    texts = {q: queries[q].text for q in usable}
    return TrainData(ds, texts, grades, positives, train, dev, skipped)


def check_batch_fits(cfg: RetrieverTrainConfig, data: TrainData, world: int) -> None:
    """One global batch (``batch_size`` per process x ``world`` processes) needs that many training queries: fewer is
    a one-line :class:`ConfigError` naming the count."""
    n_train = len(data.train_qids)
    if n_train < cfg.batch_size * world:
        held = f" ({len(data.dev_qids)} held out for dev by dev_fraction)" if data.dev_qids else ""
        raise ConfigError(f"{n_train} training queries{held} cannot fill one batch of batch_size {cfg.batch_size} "
                          f"x {world} process{'es' if world > 1 else ''}: lower batch_size (per process)")


def train_settings(cfg: RetrieverTrainConfig, settings: EncoderSettings, query_model: torch.nn.Module,
                   doc_model: torch.nn.Module) -> EncoderSettings:
    """``settings`` (the starting model's) with the token limits training uses: ``max_query_tokens`` /
    ``max_doc_tokens`` set beyond the model's position limit are a one-line :class:`ConfigError`, the defaults capped
    (:func:`check_max_lengths`)."""
    lengths = {k: getattr(cfg, k) for k in ("max_query_tokens", "max_doc_tokens")}
    given = {k: v for k, v in lengths.items() if v != option_default(cfg, k)}  # beyond the limit: an error
    return check_max_lengths(dataclasses.replace(settings, **lengths), given, query_model, doc_model)


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


def read_negatives_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a negatives file, its ``format`` and the shape of ``negatives`` checked: one line naming the
    file (and the query) and the expected shape otherwise."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataFormatError(path, None, f"cannot read negatives file: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict) or raw.get("format") != NEGATIVES_FORMAT:
        raise DataFormatError(path, None, f"not a {NEGATIVES_FORMAT} file: expected {NEGATIVES_SHAPE}")
    negs = raw.get("negatives")
    if not isinstance(negs, dict):
        raise DataFormatError(path, None, f"'negatives' is {_kind(negs)}, not an object of query id -> document "
                                          f"ids: expected {NEGATIVES_SHAPE}")
    for q, docs in negs.items():
        if not isinstance(docs, list):
            raise DataFormatError(path, None, f"query {q!r}: its negatives are {_kind(docs)}, not a list of document "
                                              f"ids: expected {NEGATIVES_SHAPE}")
        for i, d in enumerate(docs):
            if not isinstance(d, str):
                raise DataFormatError(path, None, f"query {q!r}: negative {i} is {_kind(d)}, not a document id "
                                                  f"(ids only, no scores): expected {NEGATIVES_SHAPE}")
    if isinstance(raw.get("encoder"), dict):  # mined before the token limits were renamed too
        raw["encoder"] = upgrade_encoder_keys(raw["encoder"])
    return raw


def _kind(x: Any) -> str:
    """How an error names a JSON value that has the wrong type: its type and a short excerpt."""
    text = json.dumps(x, default=str)
    return f"{type(x).__name__ if x is not None else 'null'} {text[:40]}{'…' if len(text) > 40 else ''}"


def load_negatives(path: str | Path, data: TrainData, qids: Sequence[str],
                   raw: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Read a negatives file (:data:`NEGATIVES_SHAPE`) for the training queries ``qids``, their positives dropped
    (``raw``: its content, when :func:`read_negatives_file` has read it already).

    A file of another shape, mined for another corpus, missing a training query or naming a document outside the
    corpus is an error; queries left with no negative (an empty list, or positives only) draw theirs at random from
    the corpus, which is warned of with the count."""
    path = Path(path)
    raw = read_negatives_file(path) if raw is None else raw
    if raw.get("corpus_sha256") != data.dataset.corpus_hash:
        raise RerankError(
            f"{path}: mined for a corpus with sha256 {str(raw.get('corpus_sha256'))[:12]}…, but the training corpus "
            f"has {data.dataset.corpus_hash[:12]}…; mine again (drop negatives_file)"
        )
    negs = raw["negatives"]
    missing = [q for q in qids if q not in negs]
    if missing:
        raise RerankError(f"{path}: no negatives for {len(missing)} training queries (e.g. {missing[:3]})")
    corpus = data.dataset.corpus
    bad = [d for q in qids for d in negs[q] if d not in corpus]
    if bad:
        raise RerankError(f"{path}: {len(bad)} negative ids are not in the corpus (e.g. {bad[:3]})")
    out: dict[str, list[str]] = {}
    dropped = 0
    for q in qids:
        pos = set(data.positives[q])
        out[q] = [d for d in negs[q] if d not in pos]
        dropped += len(negs[q]) - len(out[q])
    empty = [q for q in qids if not out[q]]
    if dropped:
        log.warning("%s: %d listed negatives are positives of their query and were dropped", path, dropped)
    if empty:
        log.warning("%s: %d of %d training queries have no usable negative (an empty list, or only their positives: "
                    "%s%s); their hard negative is drawn at random from the corpus", path, len(empty), len(qids),
                    ", ".join(empty[:3]), " …" if len(empty) > 3 else "")
    return out


@dataclass
class StepBatch:
    """What a method's loss gets each step: this process's queries, one generator per query (seeded by seed, global
    step and query id), and the distributed facts needed to gather the global batch."""

    qids: list[str]
    rngs: list[np.random.Generator]
    step: int
    world: int
    rank: int

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's ``t`` concatenated along dim 0, the gradient kept to each process's own part."""
        if self.world == 1:
            return t
        from sentence_transformers.util import all_gather_with_grad

        return all_gather_with_grad(t)

    def gather_list(self, items: list[Any]) -> list[Any]:
        """Every process's list, concatenated in rank order."""
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))

    def sum(self, x: float) -> float:
        """A number summed over processes (no gradient)."""
        if self.world == 1:
            return float(x)
        t = torch.tensor([float(x)], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            t = t.cuda()
        torch.distributed.all_reduce(t)
        return float(t.item())


def query_rng(seed: int, step: int, qid: str) -> np.random.Generator:
    """The generator of query ``qid``'s draws at ``step`` (independent of the batch split and of resuming)."""
    h = int.from_bytes(hashlib.sha256(qid.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, step, h])


class _Rows(torch.utils.data.Dataset):
    """The training (or dev) queries as rows: row i is query index i."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate(rows: list[int]) -> dict[str, torch.Tensor]:
    return {"query_index": torch.tensor(rows, dtype=torch.long)}


def _hf_trainer(method: RetrieverTrainer, **kwargs: Any) -> Any:
    """transformers' Trainer driving ``method``: its loss, dev evaluation and a BiEncoder's checkpoints."""
    from transformers import Trainer
    from transformers.trainer import TRAINING_ARGS_NAME

    class _Trainer(Trainer):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self._stats: dict[str, float] = {}
            self._stat_steps = 0

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            qids = [method.data.train_qids[i] for i in inputs["query_index"].tolist()]
            step = self.state.global_step
            batch = StepBatch(qids, [query_rng(method.cfg.seed, step, q) for q in qids], step,
                              self.args.world_size, self.args.process_index)
            loss, stats = method.loss(model, batch)
            if model.training:
                for k, v in stats.items():
                    self._stats[k] = self._stats.get(k, 0.0) + float(v)
                self._stat_steps += 1
            return (loss, {}) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs and self._stats:
                keys = sorted(self._stats)
                local = torch.tensor([self._stats[k] / max(self._stat_steps, 1) for k in keys],
                                     device=self.args.device)
                mean = self.accelerator.gather(local.unsqueeze(0)).mean(0).tolist()
                logs = {**logs, **{k: round(v, 6) for k, v in zip(keys, mean, strict=True)}}
                self._stats, self._stat_steps = {}, 0
            super().log(logs, start_time)

        def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                     metric_key_prefix: str = "eval") -> dict[str, float]:
            encoder = self.accelerator.unwrap_model(self.model)
            was_training = encoder.training
            encoder.eval()
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in method.dev_metrics(encoder).items()}
            encoder.train(was_training)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            if not self.args.should_save:
                return
            out = Path(output_dir or self.args.output_dir)
            method.save_model(self.accelerator.unwrap_model(self.model), out)
            torch.save(self.args, out / TRAINING_ARGS_NAME)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            method.load_weights(model if model is not None else self.model, Path(resume_from_checkpoint))

        def _load_best_model(self) -> None:
            method.load_weights(self.accelerator.unwrap_model(self.model), Path(self.state.best_model_checkpoint))

    return _Trainer(**kwargs)


def _dev_history(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The dev evaluations of ``log_history``, one per step (the first kept: a resumed run may evaluate its resume
    step again)."""
    out: dict[int, dict[str, Any]] = {}
    for h in log_history:
        if "eval_ndcg@10" in h and h["step"] not in out:
            out[h["step"]] = {"step": h["step"], "ndcg@10": h["eval_ndcg@10"]}
            if "eval_recall@100" in h:
                out[h["step"]]["recall@100"] = h["eval_recall@100"]
    return sorted(out.values(), key=lambda d: d["step"])


class RetrieverTrainer:
    """The shared trainer; a method sets ``name`` / ``config_class`` and implements :meth:`loss` (and :meth:`setup`)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = RetrieverTrainConfig
    trains_docs: bool = True

    # ------------------------------------------------------------------ hooks
    def check(self, cfg: Any) -> None:
        """Checks of the method's own inputs (files, models) that fail fast, before the data is read or anything is
        written."""

    def check_inputs(self, cfg: Any, data_root: str | None) -> None:
        """What ``rerank train --check`` verifies before training, with the checks the run makes: the dataset and split
        (:func:`open_train_dataset`, :func:`read_train_data`, the dev split), the batch against the training queries
        (:func:`check_batch_fits`, for ``$WORLD_SIZE`` processes) and token limits set against the model's position
        limits (:func:`train_settings`); no weights are read, nothing is downloaded (a registered dataset that is not
        here yet, which the run fetches, is not checked) and the corpus is not kept."""
        try:
            ds = open_train_dataset(cfg, data_root, download=False)
        except DatasetNotFoundError:
            if not _fetched_by_the_run(cfg.dataset):
                raise
            log.info("dataset %s is not here yet (the run downloads it): its data is not checked", cfg.dataset)
        else:
            data = read_train_data(cfg, ds, keep_corpus=False)
            check_dev_split(cfg, data.dev_qids)
            check_batch_fits(cfg, data, int(os.environ.get("WORLD_SIZE", "1")))
        if str(cfg.model).lower().endswith(".gguf"):  # its config comes from converting the weights: the run checks
            log.info("%s is a GGUF file: --check leaves its token limits to the run", cfg.model)
        elif any(getattr(cfg, k) != option_default(cfg, k) for k in ("max_query_tokens", "max_doc_tokens")):
            shape = BiEncoder.load(cfg.model, weights=False)
            train_settings(cfg, shape.settings, shape.query_model, shape.doc_model)

    def setup(self, cfg: Any, ctx: TrainContext) -> None:
        """Method-specific preparation after the model and data are loaded (mining, indexes)."""

    def loss(self, model: Any, batch: StepBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """This process's loss for ``batch`` (scaled so that averaging over processes gives the global batch's) and
        statistics to log (per process; the log averages them over processes)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared pieces
    def main_first(self, fn: Callable[[], Any], desc: str) -> Any:
        """Run ``fn`` on the main process first, then on the others (steps that fill a shared on-disk cache)."""
        with self.args.main_process_first(desc=desc) if self.args.world_size > 1 else nullcontext():
            return fn()

    def bm25_run(self, qids: Sequence[str], depth: int) -> dict[str, list[str]]:
        """BM25 top-``depth`` doc ids per query (the bm25 index is cached on disk; the main process builds it)."""
        from rerank.retrieval import build_retriever
        from rerank.types import Query

        def run() -> dict[str, list[str]]:
            bm25 = build_retriever("bm25", self.data.dataset)
            res = bm25.retrieve({q: Query(q, self.data.queries[q]) for q in qids}, k=depth)
            return {q: [d for d, _ in res.get(q, [])] for q in qids}

        return self.main_first(run, "bm25")

    def start_encoder(self) -> BiEncoder:
        """The starting model on this process's device (for mining with it)."""
        return BiEncoder.load(self.cfg.model, device=str(self.args.device))

    def load_frozen_docs(self) -> None:
        """The starting document encoder's corpus embeddings (cache, main process first) as a flat index."""
        from rerank.retrieval.index import DenseIndex, IndexConfig, encode_corpus_cached

        enc, cfg = self.encoder, self.cfg

        def encode() -> Any:
            with self.saved_settings(enc):
                return encode_corpus_cached(enc, self.data.dataset, batch_size=cfg.encode_batch_size,
                                            progress=cfg.progress and self.args.process_index == 0)

        emb = self.main_first(encode, "encode the corpus")
        self.use_index(DenseIndex.build(emb, enc, IndexConfig("flat"), model=cfg.model))

    def use_index(self, index: Any) -> None:
        """Fixed document embeddings for training (:meth:`doc_embeddings`) and dev search."""
        self.index = index
        self.doc_row = {d: i for i, d in enumerate(index.ids)}
        self.doc_emb = torch.from_numpy(np.array(index.embeddings, dtype=np.float32, copy=True))

    def embed(self, model: Any, qids: Sequence[str],
              docs: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings of queries ``qids`` and documents ``docs`` (ids) in one forward of ``model``; with fixed
        documents, theirs come from the index."""
        corpus = self.data.dataset.corpus
        texts = [doc_text(corpus[d]) for d in docs] if self.trains_docs else []
        q, d = model([self.data.queries[q] for q in qids], texts)
        if not self.trains_docs and len(docs):
            d = self.doc_emb[[self.doc_row[x] for x in docs]].to(q.device)
        return q, d

    def saved_settings(self, enc: BiEncoder) -> Any:
        """A context in which ``enc`` has the starting model's settings (what it is saved and indexed with)."""
        trainer = self

        class _Swap:
            def __enter__(self) -> None:
                self.kept, enc.settings = enc.settings, trainer.save_settings

            def __exit__(self, *exc: object) -> None:
                enc.settings = self.kept

        return _Swap()

    def save_model(self, enc: BiEncoder, folder: Path) -> None:
        """Write ``enc`` with the starting model's settings into ``folder`` (a checkpoint or the final model)."""
        with self.saved_settings(enc):
            enc.save_into(folder)

    def load_weights(self, enc: BiEncoder, folder: Path) -> None:
        """Load the weights of the model saved in ``folder`` into ``enc``."""
        loaded = BiEncoder.load(folder, device="cpu")
        enc.load_state_dict(loaded.state_dict(), strict=True)

    def dev_candidates(self) -> str:
        """What the dev nDCG@10 ranks (the summary, the log and the model card name it)."""
        if not self.trains_docs:
            return "a search of the whole corpus"
        return f"BM25's top-{self.cfg.dev_depth} plus the judged positives of each dev query"

    def dev_metrics(self, enc: BiEncoder) -> dict[str, float]:
        """nDCG@10 of the dev queries and, with fixed documents, R@100: with fixed documents a top-100 search of the
        corpus, else the model's scores over BM25 top-``dev_depth`` plus the positives of each dev query (no recall
        there: the positives are among the candidates, so it would be 1 by construction)."""
        from rerank.eval.metrics import evaluate_run

        qids = self.data.dev_qids
        bs = self.cfg.encode_batch_size
        qvec = enc.encode_numpy([self.data.queries[q] for q in qids], "query", bs)
        if not self.trains_docs:
            run = dict(zip(qids, self.index.search(qvec, 100), strict=True))
        else:
            cands = self._dev_candidates
            docs = sorted({d for q in qids for d in cands[q]})
            corpus = self.data.dataset.corpus
            dvec = enc.encode_numpy([doc_text(corpus[d]) for d in docs], "doc", bs)
            row = {d: i for i, d in enumerate(docs)}
            run = {}
            for qi, q in enumerate(qids):
                scores = dvec[[row[d] for d in cands[q]]] @ qvec[qi]
                run[q] = [(d, float(s)) for d, s in zip(cands[q], scores, strict=True)]
        qrels = {q: self.data.grades[q] for q in qids}
        measures = ("nDCG@10",) if self.trains_docs else ("nDCG@10", "R@100")
        agg = evaluate_run(run, qrels, measures, self.data.dataset.rel_level).aggregate
        out = {"ndcg@10": agg["nDCG@10"]}
        if not self.trains_docs:
            out["recall@100"] = agg["R@100"]
        return out

    # ------------------------------------------------------------------ the run
    def train(self, cfg: RetrieverTrainConfig, ctx: TrainContext) -> dict[str, Any]:
        """Train, select on dev, write the model to ``OUTPUT/model``; returns a summary."""
        from transformers import TrainingArguments

        self.cfg, self.ctx = cfg, ctx
        out = Path(ctx.output)
        resume_from = resume_arg(out, ctx.resume)
        self.check(cfg)
        self.data = load_train_data(cfg, ctx.data_root)
        check_dev_split(cfg, self.data.dev_qids)
        selecting = cfg.eval_steps > 0
        kw = training_kwargs(cfg, out, has_dev=selecting)
        kw.update(remove_unused_columns=False, label_names=[], disable_tqdm=not cfg.progress)
        if selecting:
            # the starting model's dev score (step 0); a resumed run has it in the checkpoint's history already
            kw.update(metric_for_best_model="eval_ndcg@10", greater_is_better=True, eval_on_start=resume_from is None)
        self.args = TrainingArguments(**kw)
        main = self.args.process_index == 0
        n_train, world = len(self.data.train_qids), self.args.world_size
        check_batch_fits(cfg, self.data, world)
        if world > 1 and n_train % (cfg.batch_size * world) and main:
            log.info("%d training queries do not fill whole global batches of %d: accelerate fills the last batch of "
                     "each epoch by repeating queries", n_train, cfg.batch_size * world)
        if main:
            write_json({"split": cfg.split, "skipped_no_positive": self.data.skipped,
                        "train": self.data.train_qids, "dev": self.data.dev_qids}, out / "queries.json")

        device = "cpu" if cpu_only(cfg) else None
        start = BiEncoder.load(cfg.model, device=device)
        self.save_settings = start.settings
        self.trains_docs = bool(cfg.train_doc_encoder)
        self.encoder = start if self.trains_docs else start.untie()
        self.encoder.settings = train_settings(cfg, self.save_settings, self.encoder.query_model,
                                               self.encoder.doc_model)
        if cfg.disable_dropout:
            for m in self.encoder.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        if not self.trains_docs:
            for p in self.encoder.doc_model.parameters():
                p.requires_grad_(False)
        self.setup(cfg, ctx)
        if not self.trains_docs and not hasattr(self, "index"):
            self.load_frozen_docs()
        if selecting and self.trains_docs:
            bm = self.bm25_run(self.data.dev_qids, cfg.dev_depth)
            self._dev_candidates = {
                q: bm[q] + [d for d in self.data.positives[q] if d not in set(bm[q])] for q in self.data.dev_qids
            }
            if main:
                log.info("dev selection: nDCG@10 over %s (not a search of the corpus; no recall is reported: the "
                         "positives are among the candidates)", self.dev_candidates())
        elif not selecting and main:
            log.info("no dev selection (eval_steps 0): the last step's model is kept")

        trainer = _hf_trainer(self, model=self.encoder, args=self.args, train_dataset=_Rows(len(self.data.train_qids)),
                              eval_dataset=_Rows(len(self.data.dev_qids)) if selecting else None,
                              data_collator=_collate)
        start_step = 0
        if resume_from is not None:
            start_step = json.loads((Path(resume_from) / "trainer_state.json").read_text())["global_step"]
        result = fit(trainer, resume_from)
        enc = trainer.accelerator.unwrap_model(trainer.model)
        history = [h for h in trainer.state.log_history if "loss" in h]
        dev_history = _dev_history(trainer.state.log_history)
        best = None
        if trainer.state.best_model_checkpoint:
            best = next(d for d in dev_history if d["step"] == trainer.state.best_global_step)
        start_dev = next((d for d in dev_history if d["step"] == 0), None)
        improved = None if best is None or start_dev is None else best["ndcg@10"] > start_dev["ndcg@10"]
        if improved is False and main:
            tie = best["ndcg@10"] == start_dev["ndcg@10"]
            log.warning(
                "training did not improve on the starting model on dev: nDCG@10 %.4f at step 0 (the starting model), "
                "%.4f at the best checkpoint (step %d); that checkpoint is kept as the model (selection is among "
                "checkpoints): the starting model %s %s (train_summary.json: improved_on_start false)",
                start_dev["ndcg@10"], best["ndcg@10"], best["step"], cfg.model,
                "scores the same there" if tie else "scores better there",
            )
        summary = {
            "global_step": trainer.state.global_step, "steps_this_run": trainer.state.global_step - start_step,
            "train_loss": result.training_loss, "train_queries": len(self.data.train_qids),
            "dev_queries": len(self.data.dev_qids), "skipped_no_positive": len(self.data.skipped),
            "best": best, "best_checkpoint": trainer.state.best_model_checkpoint,
            "start": start_dev, "improved_on_start": improved,
            "selected_by": "dev nDCG@10" if best is not None else "last step",
            "dev_candidates": self.dev_candidates() if selecting else None,
            "final_loss": history[-1]["loss"] if history else None, "world_size": self.args.world_size,
        }
        trainer.accelerator.wait_for_everyone()
        if main:
            metrics = None
            if best is not None:
                metrics = {"dev nDCG@10": best["ndcg@10"]}
                if "recall@100" in best:
                    metrics["dev R@100"] = best["recall@100"]
                metrics["selected step"] = best["step"]
            if metrics is not None and start_dev is not None:
                metrics["starting model dev nDCG@10"] = start_dev["ndcg@10"]
            note = (f"Measured by the trainer on its dev split ({len(self.data.dev_qids)} queries carved from the "
                    f"training queries with the seed), for model selection")
            if self.trains_docs:
                note += (f": nDCG@10 over {self.dev_candidates()}, not a search of the corpus (the positives are "
                         "always among the candidates, so it is not comparable to a retrieval nDCG@10).")
            else:
                note += f": nDCG@10 and R@100 over {self.dev_candidates()}."
            if improved is False:
                note += " No checkpoint improved on the starting model's dev nDCG@10; the best checkpoint was kept."
            with staged_dir(out / "model") as tmp:
                self.save_model(enc, tmp)
                write_model_artifacts(tmp, method=self.name, trainer=self.name, config=cfg, metrics=metrics,
                                      metrics_note=note)
            with atomic_write(out / "train_log.jsonl") as f:
                for h in history:
                    f.write(json.dumps(h) + "\n")
            write_json({**summary, "dev_history": dev_history}, out / "train_summary.json")
        trainer.accelerator.wait_for_everyone()
        return summary
