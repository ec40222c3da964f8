"""ADORE (Zhan et al., 2021): the query encoder trained alone against a fixed document index."""

from rerank.methods.base import Method

METHOD = Method(
    name="adore",
    kind="retriever",
    package=__name__,
    summary="bi-encoder: query encoder only, against a fixed document index searched every step, ΔMRR RankNet",
    trainer="rerank.methods.adore.trainer:AdoreTrainer",
    pipeline_tag="sentence-similarity",
    library_name="sentence-transformers",
)
