"""The first-stage interface and its explicit name registry (``--retriever NAME``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from rerank.types import Query, Run
from rerank.utils.registry import Registry

if TYPE_CHECKING:
    from rerank.data.datasets import Dataset

__all__ = ["FirstStage", "register_retriever", "build_retriever", "available_retrievers"]


class FirstStage(ABC):
    """Retrieve a ranked candidate list per query from a corpus."""

    name: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def from_dataset(cls, dataset: Dataset, **options: Any) -> FirstStage:
        """Build (or load from cache) the retriever over ``dataset``'s corpus; options fill its typed config."""

    @abstractmethod
    def retrieve(self, queries: Mapping[str, Query], k: int) -> Run:
        """Top-``k`` (doc id, score) per query id, best first (ties by doc id descending, as trec_eval)."""

    def describe(self) -> dict[str, Any]:
        """Name and configuration, recorded in ``metrics.json``."""
        return {"name": self.name}


RETRIEVERS: Registry[type[FirstStage]] = Registry("retriever")


def register_retriever(name: str, target: str | type[FirstStage]) -> None:
    """Register ``name`` -> ``"module:Class"`` (imported on first use)."""
    RETRIEVERS.register(name, target)


def available_retrievers() -> list[str]:
    return RETRIEVERS.names()


def build_retriever(name: str, dataset: Dataset, **options: Any) -> FirstStage:
    """Construct the registered retriever ``name`` over ``dataset``."""
    return RETRIEVERS.get(name).from_dataset(dataset, **options)


# built-in retrievers
register_retriever("bm25", "rerank.retrieval.bm25:BM25Retriever")
register_retriever("pyserini", "rerank.retrieval.pyserini:PyseriniBM25")
register_retriever("dense", "rerank.retrieval.dense:DenseRetriever")
register_retriever("hybrid", "rerank.retrieval.hybrid:HybridRetriever")
