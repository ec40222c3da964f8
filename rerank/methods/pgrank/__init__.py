"""Neural PG-Rank (Gao et al., 2023): a Plackett-Luce ranking policy over candidate scores, policy gradient of nDCG."""

from rerank.methods.base import Method

METHOD = Method(
    name="pgrank",
    kind="retriever",
    package=__name__,
    summary="bi-encoder: Plackett-Luce policy over candidate scores, leave-one-out policy gradient of nDCG@k",
    trainer="rerank.methods.pgrank.trainer:PGRankTrainer",
    pipeline_tag="sentence-similarity",
    library_name="sentence-transformers",
)
