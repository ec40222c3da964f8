"""SFT of the seq2seq heads through the shared ``rerank train sft``: the target is the answer word (then ``</s>``),
cross-entropy on the decoder (``loss: ce``), as monoT5 / duoT5 were trained.

monoT5 rows: every (query, candidate) with target ``true`` for grade >= 1, else ``false``. duoT5 rows: each positive
with up to ``data.negatives_per_positive`` of its query's negatives (in candidate order), in both orders: (positive,
negative) -> ``true``, (negative, positive) -> ``false``. Encoder inputs are built by the inference head itself (its
template, truncation and special tokens), so a trained model sees at inference exactly what it was trained on;
``rerank.json`` records the template and token limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rerank.errors import ConfigError

if TYPE_CHECKING:
    from rerank.methods.monot5.head import Seq2SeqReranker
    from rerank.trainers.base import TrainContext
    from rerank.trainers.sft_trainer import SFTTrainConfig

__all__ = ["duot5_rows", "monot5_rows", "train_duot5", "train_monot5"]


def _text(c: dict[str, Any]) -> str:
    from rerank.types import Document

    return Document("", c["text"], c.get("title") or "").full_text()


def _head(method: str, cfg: SFTTrainConfig, tokenizer: Any) -> Seq2SeqReranker:
    from rerank.heads.registry import get_reranker_class
    from rerank.methods.monot5.seq2seq import PromptOnlySeq2Seq

    cls = get_reranker_class(method)
    head_cfg = cls.config_class(template=cfg.template, max_doc_tokens=cfg.max_doc_tokens,  # type: ignore[call-arg]
                                max_query_tokens=cfg.max_query_tokens)
    return cls(head_cfg, PromptOnlySeq2Seq(tokenizer))  # type: ignore[call-arg, return-value]


def _target(head: Seq2SeqReranker, positive: bool) -> list[int]:
    word = str(head.template.extra.get("positive" if positive else "negative", "true" if positive else "false"))
    return head.tokenizer(word)["input_ids"]


def monot5_rows(head: Seq2SeqReranker, examples: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    """(encoder input, target) token ids of every (query, candidate) pair."""
    cfg = head.config
    rows = []
    for e in examples:
        q = head.truncate(e["query"], cfg.max_query_tokens)  # type: ignore[attr-defined]
        for c, grade in zip(e["candidates"], e["labels"], strict=True):
            doc = head.truncate(_text(c), cfg.max_doc_tokens)  # type: ignore[attr-defined]
            rows.append({"input_ids": head.encode(query=q, document=doc), "labels": _target(head, grade >= 1)})
    return rows


def duot5_rows(head: Seq2SeqReranker, examples: list[dict[str, Any]], negatives: int) -> list[dict[str, list[int]]]:
    """(encoder input, target) token ids of (positive, negative) -> true and (negative, positive) -> false."""
    cfg = head.config
    yes, no = _target(head, True), _target(head, False)
    rows = []
    for e in examples:
        q = head.truncate(e["query"], cfg.max_query_tokens)  # type: ignore[attr-defined]
        docs = [head.truncate(_text(c), cfg.max_doc_tokens) for c in e["candidates"]]  # type: ignore[attr-defined]
        pos = [d for d, g in zip(docs, e["labels"], strict=True) if g >= 1]
        neg = [d for d, g in zip(docs, e["labels"], strict=True) if g < 1][:negatives]
        for p in pos:
            for n in neg:
                rows.append({"input_ids": head.encode(query=q, document0=p, document1=n), "labels": yes})
                rows.append({"input_ids": head.encode(query=q, document0=n, document1=p), "labels": no})
    return rows


def _train(method: str, cfg: SFTTrainConfig, train: list[dict[str, Any]], dev: list[dict[str, Any]],
           ctx: TrainContext) -> dict[str, Any]:
    """Fine-tune on ``train``; with ``eval_steps`` > 0 the checkpoint with the lowest loss on ``dev``'s rows is
    kept (as the LLM heads' SFT selects)."""
    import datasets
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from rerank.models import resolve_model_path
    from rerank.trainers.common import cpu_only, training_kwargs
    from rerank.trainers.resume import fit, resume_arg
    from rerank.trainers.sft_trainer import save_final, selection_metrics

    path = resolve_model_path(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    head = _head(method, cfg, tok)
    def build(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if method == "monot5":
            return monot5_rows(head, examples)
        return duot5_rows(head, examples, cfg.data.negatives_per_positive)

    rows = build(train)
    if not rows:
        raise ConfigError(f"{method}: no training rows (duot5 needs queries with a positive and a negative candidate)")
    dev_rows = build(dev) if dev and cfg.eval_steps > 0 else []
    if cfg.eval_steps > 0 and not dev_rows:
        raise ConfigError(f"eval_steps {cfg.eval_steps} selects the model on the dev split, but its queries give no "
                          f"{method} rows (duot5 needs a positive and a negative candidate): set eval_steps: 0 to keep "
                          "the last step")
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
    return _train("monot5", cfg, train, dev, ctx)


def train_duot5(cfg: SFTTrainConfig, train: list[dict[str, Any]], dev: list[dict[str, Any]],
                ctx: TrainContext) -> dict[str, Any]:
    """Fine-tune a T5 checkpoint as duoT5 (true / false per ordered (positive, negative) pair)."""
    return _train("duot5", cfg, train, dev, ctx)
