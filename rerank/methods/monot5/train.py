"""SFT of the seq2seq heads through the shared ``rerank train sft``: the target is the answer word (then ``</s>``),
cross-entropy on the decoder (``loss: ce``), as monoT5 / duoT5 were trained.

This module holds monoT5's rows and training and the seq2seq fine-tuning both heads share (:func:`train_seq2seq`);
duoT5's rows and training are in :mod:`rerank.methods.duot5.train`. monoT5 rows: every (query, candidate) with target
``true`` for grade >= 1, else ``false``. Encoder inputs are built by the inference head itself (its template,
truncation and special tokens), so a trained model sees at inference exactly what it was trained on; ``rerank.json``
records the template and token limits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rerank.errors import ConfigError

if TYPE_CHECKING:
    from rerank.methods.monot5.head import Seq2SeqReranker
    from rerank.trainers.base import TrainContext
    from rerank.trainers.sft_trainer import SFTTrainConfig

__all__ = ["candidate_text", "monot5_rows", "target_ids", "train_monot5", "train_seq2seq"]

#: a head's training rows, (encoder input, target) token ids, from training examples
RowBuilder = Callable[["Seq2SeqReranker", list[dict[str, Any]]], list[dict[str, list[int]]]]


def candidate_text(c: dict[str, Any]) -> str:
    """A training candidate's title and text as the head reads a document (:meth:`Document.full_text`)."""
    from rerank.types import Document

    return Document("", c["text"], c.get("title") or "").full_text()


def _head(method: str, cfg: SFTTrainConfig, tokenizer: Any) -> Seq2SeqReranker:
    """The inference head of ``method`` (its descriptor's ``head=``) over the tokenizer alone, to build the rows."""
    from rerank.methods import get_method
    from rerank.methods.monot5.seq2seq import PromptOnlySeq2Seq

    cls = get_method(method).resolve("head")
    head_cfg = cls.config_class(template=cfg.template, max_doc_tokens=cfg.max_doc_tokens,  # type: ignore[call-arg]
                                max_query_tokens=cfg.max_query_tokens)
    return cls(head_cfg, PromptOnlySeq2Seq(tokenizer))  # type: ignore[call-arg, return-value]


def target_ids(head: Seq2SeqReranker, positive: bool) -> list[int]:
    """Token ids of the head's positive or negative answer word (the template's ``positive`` / ``negative``)."""
    word = str(head.template.extra.get("positive" if positive else "negative", "true" if positive else "false"))
    return head.tokenizer(word)["input_ids"]


def monot5_rows(head: Seq2SeqReranker, examples: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    """(encoder input, target) token ids of every (query, candidate) pair."""
    cfg = head.config
    rows = []
    for e in examples:
        q = head.truncate(e["query"], cfg.max_query_tokens)  # type: ignore[attr-defined]
        for c, grade in zip(e["candidates"], e["labels"], strict=True):
            doc = head.truncate(candidate_text(c), cfg.max_doc_tokens)  # type: ignore[attr-defined]
            rows.append({"input_ids": head.encode(query=q, document=doc), "labels": target_ids(head, grade >= 1)})
    return rows


def train_seq2seq(method: str, cfg: SFTTrainConfig, train: list[dict[str, Any]], dev: list[dict[str, Any]],
                  ctx: TrainContext, build_rows: RowBuilder, needs: str) -> dict[str, Any]:
    """Fine-tune the seq2seq head ``method`` (the config's ``head``) on the rows ``build_rows`` makes of ``train`` (``needs``: what a query
    must hold to give rows, for the error when none does); with ``eval_steps`` > 0 the checkpoint with the lowest loss
    on ``dev``'s rows is kept (as the LLM heads' SFT selects)."""
    import datasets
    from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from rerank.backends.util import load_tokenizer
    from rerank.models import resolve_model_path
    from rerank.trainers.common import cpu_only, training_kwargs
    from rerank.trainers.resume import fit, resume_arg
    from rerank.trainers.sft_trainer import save_final, selection_metrics

    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path, "model", trust_remote_code=False)
    head = _head(method, cfg, tok)
    rows = build_rows(head, train)
    if not rows:
        raise ConfigError(f"{method}: no training rows ({method} needs {needs})")
    dev_rows = build_rows(head, dev) if dev and cfg.eval_steps > 0 else []
    if cfg.eval_steps > 0 and not dev_rows:
        raise ConfigError(f"eval_steps {cfg.eval_steps} selects the model on the dev split, but its queries give no "
                          f"{method} rows ({method} needs {needs}): set eval_steps: 0 to keep the last step")
    model = AutoModelForSeq2SeqLM.from_pretrained(path, use_safetensors=True)
    if cpu_only(cfg):
        model = model.to("cpu")
    kw = training_kwargs(cfg, ctx.output, has_dev=bool(dev_rows))
    if dev_rows:
        kw.update(metric_for_best_model="eval_loss", greater_is_better=False)
    trainer = Trainer(model=model, args=TrainingArguments(**kw), train_dataset=datasets.Dataset.from_list(rows),
                      eval_dataset=datasets.Dataset.from_list(dev_rows) if dev_rows else None,
                      data_collator=DataCollatorForSeq2Seq(tok, model=model), processing_class=tok)
    result = fit(trainer, resume_arg(ctx.output, ctx.resume))
    options = {"template": head.template.to_dict(), "max_doc_tokens": cfg.max_doc_tokens,
               "max_query_tokens": cfg.max_query_tokens}
    metrics, note = selection_metrics(trainer, "dev loss", len(dev_rows))
    save_final(trainer, cfg, ctx.output, "sft", options, metrics, note)
    return {"global_step": trainer.state.global_step, "train_loss": result.training_loss, "rows": len(rows),
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "selected_by": "dev loss" if dev_rows else "last step"}


def train_monot5(cfg: SFTTrainConfig, train: list[dict[str, Any]], dev: list[dict[str, Any]],
                 ctx: TrainContext) -> dict[str, Any]:
    """Fine-tune a T5 checkpoint as monoT5 (true / false per pair); the model goes to ``OUTPUT/model``."""
    return train_seq2seq(cfg.head, cfg, train, dev, ctx, monot5_rows, "queries with candidates")


def __getattr__(name: str) -> Any:
    """duoT5's ``duot5_rows`` and ``train_duot5``, which live in :mod:`rerank.methods.duot5.train`, still import from
    here as before."""
    if name in ("duot5_rows", "train_duot5"):
        from rerank.methods.duot5 import train

        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
