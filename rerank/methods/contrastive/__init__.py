"""Contrastive bi-encoder training: InfoNCE over in-batch and BM25 hard negatives, optional MarginMSE distillation."""

from rerank.methods.base import Method

METHOD = Method(
    name="contrastive",
    kind="retriever",
    package=__name__,
    summary="bi-encoder: InfoNCE over in-batch + BM25 hard negatives, optional MarginMSE from a cross-encoder",
    trainer="rerank.methods.contrastive.trainer:ContrastiveTrainer",
    pipeline_tag="sentence-similarity",
    library_name="sentence-transformers",
)
