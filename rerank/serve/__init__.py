"""``rerank serve``: any registered reranker behind an HTTP ``/rerank`` endpoint with dynamic batching."""

from rerank.serve.app import ApiError, create_app
from rerank.serve.config import ServeConfig

__all__ = ["create_app", "ServeConfig", "ApiError"]
