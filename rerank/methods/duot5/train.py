"""duoT5's SFT through the shared ``rerank train sft`` (``loss: ce``, the seq2seq fine-tuning of
:func:`rerank.methods.monot5.train.train_seq2seq`): each positive with up to ``data.negatives_per_positive`` of its
query's negatives (in candidate order), in both orders: (positive, negative) -> ``true``, (negative, positive) ->
``false``. Encoder inputs are built by the inference head itself, as monoT5's are."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rerank.methods.monot5.train import candidate_text, target_ids, train_seq2seq

if TYPE_CHECKING:
    from rerank.methods.monot5.head import Seq2SeqReranker
    from rerank.trainers.base import TrainContext
    from rerank.trainers.sft_trainer import SFTTrainConfig

__all__ = ["duot5_rows", "train_duot5"]


def duot5_rows(head: Seq2SeqReranker, examples: list[dict[str, Any]], negatives: int) -> list[dict[str, list[int]]]:
    """(encoder input, target) token ids of (positive, negative) -> true and (negative, positive) -> false."""
    cfg: Any = head.config
    yes, no = target_ids(head, True), target_ids(head, False)
    rows = []
    for e in examples:
        q = head.truncate(e["query"], cfg.max_query_tokens)
        docs = [head.truncate(candidate_text(c), cfg.max_doc_tokens) for c in e["candidates"]]
        pos = [d for d, g in zip(docs, e["labels"], strict=True) if g >= 1]
        neg = [d for d, g in zip(docs, e["labels"], strict=True) if g < 1][:negatives]
        for p in pos:
            for n in neg:
                rows.append({"input_ids": head.encode(query=q, document0=p, document1=n), "labels": yes})
                rows.append({"input_ids": head.encode(query=q, document0=n, document1=p), "labels": no})
    return rows


def train_duot5(cfg: SFTTrainConfig, train: list[dict[str, Any]], dev: list[dict[str, Any]],
                ctx: TrainContext) -> dict[str, Any]:
    """Fine-tune a T5 checkpoint as duoT5 (true / false per ordered (positive, negative) pair)."""
    n = cfg.data.negatives_per_positive
    return train_seq2seq(cfg.head, cfg, train, dev, ctx, lambda head, examples: duot5_rows(head, examples, n),
                         "queries with a positive and a negative candidate")
