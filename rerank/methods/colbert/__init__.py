"""colbert: late interaction (Khattab & Zaharia, 2020): query and document are embedded token by token, and the
score is MaxSim, the sum over query tokens of their best dot product with a document token; from a PyLate /
sentence-transformers ColBERT folder (Transformer -> Dense projection)."""

from rerank.methods.base import Method

METHOD = Method(
    name="colbert",
    kind="reranker",
    package=__name__,
    summary="late interaction: MaxSim over token embeddings (PyLate-format ColBERT checkpoint)",
    head="rerank.methods.colbert.head:ColBERTReranker",
    pipeline_tag="sentence-similarity",
    library_name="PyLate",
)
