"""bge-reranker-v2-gemma: BAAI's Gemma reranker input as FlagEmbedding builds it (no chat template: bos, ``A: query``,
``B: passage`` and the Yes/No prompt, each piece tokenised apart); score = the raw logit of ``Yes``, whose sigmoid is
FlagEmbedding's normalised score."""

from rerank.methods.base import Method

METHOD = Method(
    name="bge-reranker-v2-gemma",
    kind="reranker",
    package=__name__,
    summary="BAAI bge-reranker-v2-gemma's A/B prompt; score = the raw 'Yes' logit (FlagEmbedding's)",
    head="rerank.methods.bge_reranker_v2_gemma.head:BGEGemmaReranker",
    templates=("bge_reranker_v2_gemma.yaml",),
    pipeline_tag="text-ranking",
)
