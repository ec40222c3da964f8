"""bi-encoder: an embedding model (sentence-transformers folder or plain HF encoder) scores each (query, candidate)
by the dot product or cosine of their embeddings; in ``eval`` the document embeddings come from the dense
retriever's embedding cache (keyed by model and corpus hash)."""

from rerank.methods.base import Method

METHOD = Method(
    name="bi-encoder",
    kind="reranker",
    package=__name__,
    summary="embedding similarity of query and candidate (dot or cosine), any sentence-transformers / HF encoder",
    head="rerank.methods.bi_encoder.head:BiEncoderReranker",
    pipeline_tag="sentence-similarity",
    library_name="sentence-transformers",
)
