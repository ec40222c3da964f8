"""Adapters that put any :class:`~rerank.heads.base.Reranker` into RAG frameworks (extras ``langchain``, ``llamaindex``)."""
