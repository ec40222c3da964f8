"""Cross-encoder SFT through sentence-transformers' ``CrossEncoderTrainer``: pointwise BCE or a listwise loss.

``loss``: ``bce`` (pointwise, labels binarised at grade >= 1), ``listnet`` or ``lambdaloss`` (listwise over each
query's candidates with graded labels), or ``mnrl`` (sentence-transformers' ``MultipleNegativesRankingLoss``: one row
per positive with ``data.negatives_per_positive`` of its query's negatives, softmax cross-entropy over the positive,
those hard negatives and ``in_batch_negatives`` other rows' documents (default 4), scores as sigmoid x 10, the
library's defaults; the localized contrastive estimation of Gao et al. 2021, plus in-batch negatives when > 0).
On SciFact, BCE on a MiniLM-initialised cross-encoder learns only the base rate in one epoch; the contrastive loss
learns to rank (docs/results.md). Model selection keeps the checkpoint with the best dev nDCG@10 (from
sentence-transformers' reranking evaluator over the dev queries' candidates). ``OUTPUT/model`` is a plain
``AutoModelForSequenceClassification`` folder (one label, ``rerank.json`` and a model card beside the weights) that
``Reranker.load`` and sentence-transformers' ``CrossEncoder`` load.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from rerank.errors import ConfigError
from rerank.trainers.common import cpu_only, training_kwargs

if TYPE_CHECKING:
    from rerank.trainers.base import TrainContext
    from rerank.trainers.sft_trainer import SFTTrainConfig

__all__ = ["DISTILL_LOSSES", "train_cross_encoder"]

#: the losses that learn from the rows' ``teacher_scores`` (knowledge distillation)
DISTILL_LOSSES = ("margin-mse", "listwise-kl")


def _text(c: dict[str, Any]) -> str:
    return f"{c['title']}\n{c['text']}" if c.get("title") else c["text"]


def _contrastive_rows(examples: list[dict[str, Any]], n_neg: int, seed: int) -> list[dict[str, str]]:
    """One row per positive: the query, the positive and ``n_neg`` of its query's negatives (seeded draw).

    A query with fewer negatives than ``n_neg`` repeats some (drawn with replacement); one with none gives no rows.
    """
    rng = random.Random(seed)
    rows = []
    for e in examples:
        pos = [c for c, lab in zip(e["candidates"], e["labels"], strict=True) if lab >= 1]
        neg = [_text(c) for c, lab in zip(e["candidates"], e["labels"], strict=True) if lab < 1]
        if not neg:
            continue
        for p in pos:
            drawn = rng.sample(neg, n_neg) if len(neg) >= n_neg else [rng.choice(neg) for _ in range(n_neg)]
            rows.append({"query": e["query"], "positive": _text(p),
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
                  bonus: float, seed: int) -> list[dict[str, Any]]:
    """Rows for the teacher-score losses. ``listwise-kl``: one row per query, ``size`` candidates (0: all) and their
    targets. ``margin-mse``: one row per query, its best candidate (a judged positive if any, else the teacher's top)
    and ``n_neg`` others drawn with the seed, with the targets whose differences the student's margins regress on."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for e in examples:
        target = _targets(e, temperature, bonus)
        if loss == "listwise-kl":
            idx = _group(e, size, rng)
            rows.append({"query": e["query"], "docs": [_text(e["candidates"][i]) for i in idx],
                         "labels": [target[i] for i in idx]})
            continue
        best = max(range(len(target)), key=lambda i: (e["labels"][i] >= 1, target[i]))
        others = [i for i in range(len(target)) if i != best]
        if not others:
            continue
        drawn = rng.sample(others, n_neg) if len(others) >= n_neg else [rng.choice(others) for _ in range(n_neg)]
        rows.append({"query": e["query"], "positive": _text(e["candidates"][best]),
                     **{f"negative_{j + 1}": _text(e["candidates"][i]) for j, i in enumerate(drawn)},
                     "label": [target[best], *(target[i] for i in drawn)]})
    return rows


def _check_teacher_scores(examples: list[dict[str, Any]], loss: str) -> None:
    missing = [e["qid"] for e in examples if e.get("teacher_scores") is None]
    if missing:
        raise ConfigError(f"loss {loss!r} distils teacher scores: {len(missing)} training rows have no "
                          f"'teacher_scores' (e.g. qid {missing[0]!r}); build them with the teacher_labels recipe")


def _dataset(examples: list[dict[str, Any]], cfg: SFTTrainConfig) -> Any:
    import datasets

    loss, n_neg, seed = cfg.loss, cfg.data.negatives_per_positive, cfg.seed
    if loss in DISTILL_LOSSES:
        _check_teacher_scores(examples, loss)
        rows = _distill_rows(examples, loss, n_neg, cfg.group_size, cfg.distill_temperature, cfg.positive_bonus,
                             seed)
        if not rows:
            raise ConfigError(f"loss {loss!r} needs queries with at least two candidates")
        return datasets.Dataset.from_list(rows)
    if loss == "mnrl":
        rows = _contrastive_rows(examples, n_neg, seed)
        if not rows:
            raise ConfigError("loss 'mnrl' needs queries with at least one positive and one negative candidate")
        return datasets.Dataset.from_list(rows)
    if loss == "bce":
        rows = [{"query": e["query"], "document": _text(c), "label": float(lab >= 1)}
                for e in examples for c, lab in zip(e["candidates"], e["labels"], strict=True)]
        return datasets.Dataset.from_list(rows)
    return datasets.Dataset.from_list([
        {"query": e["query"], "docs": [_text(c) for c in e["candidates"]], "labels": [float(x) for x in e["labels"]]}
        for e in examples
    ])


def _evaluator(dev: list[dict[str, Any]]) -> Any:
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    samples = []
    for e in dev:
        pos = [_text(c) for c, lab in zip(e["candidates"], e["labels"], strict=True) if lab >= 1]
        neg = [_text(c) for c, lab in zip(e["candidates"], e["labels"], strict=True) if lab < 1]
        if pos:
            samples.append({"query": e["query"], "positive": pos, "negative": neg})
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

    loss_name, output = cfg.loss, ctx.output
    if cfg.lora.enabled:
        raise ConfigError("lora is for the LLM heads; the cross-encoder is fine-tuned in full")
    from rerank.models import resolve_model_path

    train_ds = _dataset(train, cfg)  # before the model: a row without teacher scores fails in seconds
    model = CrossEncoder(resolve_model_path(cfg.model), num_labels=1, max_length=cfg.max_length,
                         device="cpu" if cpu_only(cfg) else None)
    if loss_name == "mnrl":
        loss = _mnrl_class(losses.MultipleNegativesRankingLoss)(model, num_negatives=cfg.in_batch_negatives)
    else:
        loss = {"bce": losses.BinaryCrossEntropyLoss, "listnet": losses.ListNetLoss, "listwise-kl": losses.ListNetLoss,
                "margin-mse": losses.MarginMSELoss, "lambdaloss": losses.LambdaLoss}[loss_name](model)
    evaluator = _evaluator(dev) if cfg.eval_steps > 0 else None
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
            write_model_artifacts(tmp, method="cross-encoder", trainer="sft", config=cfg,
                                  options={"max_length": cfg.max_length}, metrics=dev_metrics or None,
                                  metrics_note=note)
    return {"global_step": trainer.state.global_step, "train_loss": result.training_loss,
            "best_checkpoint": trainer.state.best_model_checkpoint, "dev": dev_metrics,
            "selected_by": "dev nDCG@10" if evaluator is not None else "last step"}


def _mnrl_class(base: type) -> type:
    """sentence-transformers' MNRL, where ``num_negatives=0`` means no in-batch negatives (the library cannot draw 0)."""

    class MNRL(base):  # type: ignore[misc, valid-type]
        def get_in_batch_negatives(self, anchors: list[str], candidates: list[list[str]]) -> Any:
            if self.num_negatives:
                yield from super().get_in_batch_negatives(anchors, candidates)

    return MNRL
