"""STAR (Zhan et al., 2021): static dense hard negatives + in-batch random negatives, pairwise loss."""

from rerank.methods.base import Method

METHOD = Method(
    name="star",
    kind="retriever",
    package=__name__,
    summary="bi-encoder: static dense hard negatives mined once + in-batch negatives, pairwise loss",
    trainer="rerank.methods.star.trainer:StarTrainer",
    pipeline_tag="sentence-similarity",
    library_name="sentence-transformers",
)
