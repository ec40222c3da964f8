"""rerank: train, run and evaluate rerankers and dense retrievers.

The Python entry points a RAG pipeline needs::

    from rerank import Reranker
    rr = Reranker.load("cross-encoder", model="path/or/hub-id")
    result = rr.rerank("what is bm25?", ["doc one", "doc two"])
"""

from rerank.heads.base import Reranker, RerankerConfig
from rerank.types import Candidate, Document, Qrels, Query, RankedResult, Run, ScoredDocument

__version__ = "0.1.0"

__all__ = [
    "Reranker",
    "RerankerConfig",
    "Candidate",
    "Document",
    "Qrels",
    "Query",
    "RankedResult",
    "Run",
    "ScoredDocument",
    "__version__",
]
