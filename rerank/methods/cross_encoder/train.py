"""Cross-encoder SFT through sentence-transformers' ``CrossEncoderTrainer``: pointwise BCE or a listwise loss.

``loss``: ``bce`` (pointwise, labels binarised at grade >= 1), ``listnet`` or ``lambdaloss`` (listwise over each
query's candidates with graded labels), or ``mnrl`` (sentence-transformers' ``MultipleNegativesRankingLoss``: one row
per positive with ``data.negatives_per_positive`` of its query's negatives, softmax cross-entropy over the positive,
those hard negatives and ``in_batch_negatives`` other rows' documents (default 4), scores as sigmoid x 10, the
library's defaults; the localized contrastive estimation of Gao et al. 2021, plus in-batch negatives when > 0).
On SciFact, BCE on a MiniLM-initialised cross-encoder learns only the base rate in one epoch; the contrastive loss
learns to rank (docs/results.md). The pair is cut to ``max_length`` by the inference head's rule (0, the default:
the model's own limit, as sentence-transformers takes it; a longer one than the position embeddings hold is refused
before the weights load), and the number is recorded in ``rerank.json``. Queries are cut to ``max_query_tokens`` by the inference head's own rule (and
recorded in ``rerank.json``), so the pairs trained on are the pairs scored. Model selection keeps the checkpoint with
the best dev nDCG@10 (from sentence-transformers' reranking evaluator over the dev queries' candidates).
``OUTPUT/model`` is a plain ``AutoModelForSequenceClassification`` folder (one label, ``rerank.json`` and a model card
beside the weights) that ``Reranker.load`` and sentence-transformers' ``CrossEncoder`` load.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

from rerank.errors import ConfigError
from rerank.heads.text import neutralise
from rerank.trainers.common import check_safetensors, cpu_only, training_kwargs

if TYPE_CHECKING:
    from rerank.trainers.base import TrainContext
    from rerank.trainers.sft_trainer import SFTTrainConfig

__all__ = ["DISTILL_LOSSES", "PairTexts", "train_cross_encoder"]

log = logging.getLogger(__name__)

#: the losses that learn from the rows' ``teacher_scores`` (knowledge distillation)
DISTILL_LOSSES = ("margin-mse", "listwise-kl")


class PairTexts:
    """Queries and documents as the inference head puts them in its pairs: special-token strings neutralised, the
    query cut to ``max_query_tokens`` tokens by the head's own :func:`~rerank.methods.cross_encoder.head.pair_query`
    (what training reads is what inference reads; the pair is then cut to ``max_length`` by the same ``longest_first``
    rule)."""

    def __init__(self, tokenizer: Any, max_query_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_query_tokens = max_query_tokens

    def query(self, text: str) -> str:
        from rerank.methods.cross_encoder.head import pair_query

        return pair_query(text, self.tokenizer, self.max_query_tokens)

    def document(self, text: str) -> str:
        return neutralise(text, self.tokenizer)


def _query(text: str, texts: PairTexts | None) -> str:
    """A query as the pair holds it (``texts`` None: as given)."""
    return texts.query(text) if texts is not None else text


def _text(c: dict[str, Any], texts: PairTexts | None = None) -> str:
    """A candidate as the scored pair holds it: ``title\ntext`` (the document's ``full_text``), neutralised."""
    doc = f"{c['title']}\n{c['text']}" if c.get("title") else c["text"]
    return texts.document(doc) if texts is not None else doc


def skipped_queries(examples: list[dict[str, Any]], loss: str) -> dict[str, int]:
    """How many queries give ``loss`` no row: without a judged positive or without a negative (``mnrl``), with one
    candidate (``margin-mse``); the other losses use every query."""
    if loss == "mnrl":
        no_pos = sum(1 for e in examples if not any(lab >= 1 for lab in e["labels"]))
        no_neg = sum(1 for e in examples if any(lab >= 1 for lab in e["labels"]) and min(e["labels"]) >= 1)
        return {"skipped_no_positive": no_pos, "skipped_no_negative": no_neg}
    if loss == "margin-mse":
        return {"skipped_one_candidate": sum(1 for e in examples if len(e["candidates"]) < 2)}
    return {}


def _contrastive_rows(examples: list[dict[str, Any]], n_neg: int, seed: int, texts: PairTexts | None = None
                      ) -> list[dict[str, str]]:
    """One row per positive: the query, the positive and ``n_neg`` of its query's negatives (seeded draw).

    A query with fewer negatives than ``n_neg`` repeats some (drawn with replacement); one with none, or with no
    positive, gives no rows (counted by :func:`skipped_queries`). Texts as ``texts`` puts them in the pairs.
    """
    rng = random.Random(seed)
    rows = []
    for e in examples:
        pos = [c for c, lab in zip(e["candidates"], e["labels"], strict=True) if lab >= 1]
        neg = [_text(c, texts) for c, lab in zip(e["candidates"], e["labels"], strict=True) if lab < 1]
        if not neg:
            continue
        query = _query(e["query"], texts)
        for p in pos:
            drawn = rng.sample(neg, n_neg) if len(neg) >= n_neg else [rng.choice(neg) for _ in range(n_neg)]
            rows.append({"query": query, "positive": _text(p, texts),
                         **{f"negative_{i + 1}": d for i, d in enumerate(drawn)}})
    return rows


def _targets(e: dict[str, Any], temperature: float, bonus: float) -> list[float]:
    """Teacher scores / ``temperature``, plus ``bonus`` for each judged positive (label >= 1)."""
    return [t / temperature + (bonus if lab >= 1 else 0.0)
            for t, lab in zip(e["teacher_scores"], e["labels"], strict=True)]


def _group(e: dict[str, Any], size: int, rng: random.Random) -> list[int]:
    """Candidate indices of a listwise row: all, or ``size`` of them (every judged positive kept, the rest drawn)."""
    n = len(e["candidates"])
    if not size or n <= size:
        return list(range(n))
    pos = [i for i, lab in enumerate(e["labels"]) if lab >= 1][:size]
    rest = [i for i in range(n) if i not in set(pos)]
    return sorted(pos + rng.sample(rest, size - len(pos)))


def _distill_rows(examples: list[dict[str, Any]], loss: str, n_neg: int, size: int, temperature: float,
                  bonus: float, seed: int, texts: PairTexts | None = None) -> list[dict[str, Any]]:
    """Rows for the teacher-score losses. ``listwise-kl``: one row per query, ``size`` candidates (0: all) and their
    targets. ``margin-mse``: one row per query, its best candidate (a judged positive if any, else the teacher's top)
    and ``n_neg`` others drawn with the seed, with the targets whose differences the student's margins regress on
    (a query with one candidate gives none, counted by :func:`skipped_queries`). Texts as ``texts`` puts them."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for e in examples:
        target = _targets(e, temperature, bonus)
        query = _query(e["query"], texts)
        if loss == "listwise-kl":
            idx = _group(e, size, rng)
            rows.append({"query": query, "docs": [_text(e["candidates"][i], texts) for i in idx],
                         "labels": [target[i] for i in idx]})
            continue
        best = max(range(len(target)), key=lambda i: (e["labels"][i] >= 1, target[i]))
        others = [i for i in range(len(target)) if i != best]
        if not others:
            continue
        drawn = rng.sample(others, n_neg) if len(others) >= n_neg else [rng.choice(others) for _ in range(n_neg)]
        rows.append({"query": query, "positive": _text(e["candidates"][best], texts),
                     **{f"negative_{j + 1}": _text(e["candidates"][i], texts) for j, i in enumerate(drawn)},
                     "label": [target[best], *(target[i] for i in drawn)]})
    return rows


def _check_teacher_scores(examples: list[dict[str, Any]], loss: str) -> None:
    missing = [e["qid"] for e in examples if e.get("teacher_scores") is None]
    if missing:
        raise ConfigError(f"loss {loss!r} distils teacher scores: {len(missing)} training rows have no "
                          f"'teacher_scores' (e.g. qid {missing[0]!r}); build them with the teacher_labels recipe")


def _warn_skipped(skipped: dict[str, int], total: int, what: str) -> None:
    """One warning with the counts of ``skipped`` (queries that gave ``what`` nothing), when there are any."""
    parts = [f"{n} {key.removeprefix('skipped_').replace('_', ' ')}" for key, n in skipped.items() if n]
    if parts:
        log.warning("%s: %d of %d queries skipped (%s)", what, sum(skipped.values()), total, ", ".join(parts))


def _dataset(examples: list[dict[str, Any]], cfg: SFTTrainConfig, texts: PairTexts | None = None) -> Any:
    """The training rows of ``cfg.loss`` (texts as ``texts`` puts them in pairs); skipped queries are warned of."""
    import datasets

    loss, n_neg, seed = cfg.loss, cfg.data.negatives_per_positive, cfg.seed
    _warn_skipped(skipped_queries(examples, loss), len(examples), f"loss {loss!r} training rows")
    if loss in DISTILL_LOSSES:
        _check_teacher_scores(examples, loss)
        rows = _distill_rows(examples, loss, n_neg, cfg.group_size, cfg.distill_temperature, cfg.positive_bonus,
                             seed, texts)
        if not rows:
            raise ConfigError(f"loss {loss!r} needs queries with at least two candidates")
        return datasets.Dataset.from_list(rows)
    if loss == "mnrl":
        rows = _contrastive_rows(examples, n_neg, seed, texts)
        if not rows:
            raise ConfigError("loss 'mnrl' needs queries with at least one positive and one negative candidate")
        return datasets.Dataset.from_list(rows)
    if loss == "bce":
        rows = []
        for e in examples:
            query = _query(e["query"], texts)
            rows += [{"query": query, "document": _text(c, texts), "label": float(lab >= 1)}
                     for c, lab in zip(e["candidates"], e["labels"], strict=True)]
        return datasets.Dataset.from_list(rows)
    return datasets.Dataset.from_list([
        {"query": _query(e["query"], texts), "docs": [_text(c, texts) for c in e["candidates"]],
         "labels": [float(x) for x in e["labels"]]}
        for e in examples
    ])


def _dev_samples(dev: list[dict[str, Any]], texts: PairTexts | None = None) -> list[dict[str, Any]]:
    """The reranking evaluator's samples: the dev queries with a judged positive (the others are warned of)."""
    samples = []
    for e in dev:
        pos = [_text(c, texts) for c, lab in zip(e["candidates"], e["labels"], strict=True) if lab >= 1]
        neg = [_text(c, texts) for c, lab in zip(e["candidates"], e["labels"], strict=True) if lab < 1]
        if pos:
            samples.append({"query": _query(e["query"], texts), "positive": pos, "negative": neg})
    _warn_skipped({"skipped_no_positive": len(dev) - len(samples)}, len(dev), "dev evaluation")
    return samples


def _evaluator(samples: list[dict[str, Any]]) -> Any:
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    return CrossEncoderRerankingEvaluator(samples, at_k=10, name="dev", show_progress_bar=False) if samples else None


def train_cross_encoder(cfg: SFTTrainConfig, train: list[dict[str, Any]], dev: list[dict[str, Any]],
                        ctx: TrainContext) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` as a one-label cross-encoder on ``train``; save the best (dev nDCG@10) to the output."""
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
        losses,
    )
    from transformers import set_seed

    from rerank.backends.util import load_tokenizer
    from rerank.models import resolve_model_path

    loss_name, output = cfg.loss, ctx.output
    path = resolve_model_path(cfg.model)
    check_safetensors(path, "model")
    # the texts as inference sees them (special-token strings neutralised, the query cut as the head cuts it); before
    # the model: a row without teacher scores, or a dev split without a positive, fails in seconds
    tokenizer = load_tokenizer(path, "model", trust_remote_code=False)
    texts = PairTexts(tokenizer, cfg.max_query_tokens)
    max_length = _pair_length(path, cfg.max_length, tokenizer)
    train_ds = _dataset(train, cfg, texts)
    skipped = skipped_queries(train, loss_name)
    samples = _dev_samples(dev, texts) if cfg.eval_steps > 0 else []
    if cfg.eval_steps > 0 and not samples:
        raise ConfigError(f"eval_steps {cfg.eval_steps} selects the model on dev nDCG@10, but none of the "
                          f"{len(dev)} dev queries has a judged positive: set eval_steps: 0 to keep the last step")
    set_seed(cfg.seed)  # a new classifier head (a bi-encoder start) is drawn from the RNG: seeded, it is reproducible
    model = CrossEncoder(path, num_labels=1, max_length=max_length, device="cpu" if cpu_only(cfg) else None,
                         model_kwargs={"use_safetensors": True})
    if loss_name == "mnrl":
        loss = _mnrl_class(losses.MultipleNegativesRankingLoss)(model, num_negatives=cfg.in_batch_negatives)
    else:
        loss = {"bce": losses.BinaryCrossEntropyLoss, "listnet": losses.ListNetLoss, "listwise-kl": losses.ListNetLoss,
                "margin-mse": losses.MarginMSELoss, "lambdaloss": losses.LambdaLoss}[loss_name](model)
    evaluator = _evaluator(samples)
    kw = training_kwargs(cfg, output, has_dev=evaluator is not None)
    if evaluator is not None:
        kw.update(metric_for_best_model="eval_dev_ndcg@10", greater_is_better=True)
        kw["eval_strategy"] = "steps"
    if loss_name == "mnrl":
        # in-batch negatives must not be another copy of a row's own query or positive; sentence-transformers takes
        # the sampler's name (BatchSamplers.NO_DUPLICATES), whose import path moved in version 6
        kw["batch_sampler"] = "no_duplicates"
    args = CrossEncoderTrainingArguments(**kw)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train_ds, loss=loss, evaluator=evaluator)
    from rerank.trainers.resume import fit, resume_arg

    result = fit(trainer, resume_arg(output, ctx.resume))
    dev_metrics = evaluator(model) if evaluator is not None else {}
    if trainer.is_world_process_zero():
        from rerank.trainers.artifacts import write_model_artifacts
        from rerank.utils.files import staged_dir

        note = (f"Measured by the trainer on its dev split ({len(dev)} queries carved from the training data with the "
                f"seed; sentence-transformers' reranking evaluator over their candidates), for model selection.")
        with staged_dir(output / "model") as tmp:
            model.save(str(tmp), safe_serialization=True)
            write_model_artifacts(tmp, method=cfg.head, trainer="sft", config=cfg,
                                  options={"max_length": max_length, "max_query_tokens": cfg.max_query_tokens},
                                  metrics=dev_metrics or None,
                                  metrics_note=note)
    return {"global_step": trainer.state.global_step, "train_loss": result.training_loss,
            "best_checkpoint": trainer.state.best_model_checkpoint, "dev": dev_metrics,
            "selected_by": "dev nDCG@10" if evaluator is not None else "last step", **skipped,
            **({"dev_skipped_no_positive": len(dev) - len(samples)} if evaluator is not None else {})}


def _pair_length(path: str, max_length: int, tokenizer: Any) -> int:
    """The pair length trained (and recorded in ``rerank.json``), by the inference head's rule
    (:func:`~rerank.methods.cross_encoder.head.pair_length`): ``max_length`` when set, refused beyond the model's
    position embeddings, else (0) the model's own. The position limit is read from the model built from its config
    on the meta device, before any weight loads."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rerank.methods.cross_encoder.head import pair_length

    with torch.device("meta"):
        skeleton = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(path, num_labels=1))
    return pair_length(max_length, skeleton, tokenizer)


def _mnrl_class(base: type) -> type:
    """sentence-transformers' MNRL, where ``num_negatives=0`` means no in-batch negatives (the library cannot draw 0)."""

    class MNRL(base):  # type: ignore[misc, valid-type]
        def get_in_batch_negatives(self, anchors: list[str], candidates: list[list[str]]) -> Any:
            if self.num_negatives:
                yield from super().get_in_batch_negatives(anchors, candidates)

    return MNRL
