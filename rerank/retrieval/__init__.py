"""First-stage retrievers behind one interface, built by registered name."""

from rerank.retrieval.base import FirstStage, available_retrievers, build_retriever, register_retriever

__all__ = ["FirstStage", "available_retrievers", "build_retriever", "register_retriever"]
