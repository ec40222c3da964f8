"""Typed options of the reranking HTTP service (``rerank serve``), validated once at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rerank.client import api_key_problem
from rerank.config import secret_field

__all__ = ["ServeConfig", "flag"]


@dataclass
class ServeConfig:
    """Where the service listens, how it batches, and the limits that protect it from oversized or excess load.

    ``max_batch_docs`` caps the documents of one model call (requests merge up to it), so the work in flight when
    clients leave stays small. ``max_docs`` is the most documents (passages) one model call scores for a request: a
    larger request is scored in parts of ``max_docs`` when the head's scores are independent of the list, else
    refused (413).
    ``read_timeout_s`` bounds how long a client may take to send one request; ``max_connections`` caps open
    connections (lowered to stay under the process's file limit); ``workers`` server processes share the port.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = secret_field()
    max_batch_size: int = 32
    max_batch_docs: int = 1024
    max_wait_ms: float = 0.0
    max_queue: int = 256
    timeout_s: float = 30.0
    max_docs: int = 1000
    max_doc_chars: int = 20_000
    max_body_bytes: int = 32 * 1024 * 1024
    model_name: str | None = None
    read_timeout_s: float = 10.0
    max_connections: int = 1024
    workers: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_docs", "max_queue", "max_docs", "max_doc_chars", "max_body_bytes",
                     "max_connections", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise ValueError(f"{flag('max_wait_ms')} must be a finite number >= 0, got {self.max_wait_ms}")
        for name in ("timeout_s", "read_timeout_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{flag(name)} must be a finite number > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{flag('port')} must be in 0..65535, got {self.port}")
        if self.api_key is not None and not self.api_key:
            raise ValueError(f"{flag('api_key')} is empty: give a key, or leave both unset to serve without one")
        problem = self.api_key and api_key_problem(self.api_key)
        if problem:
            raise ValueError(f"{flag('api_key')} {problem}: HTTP clients cannot send "
                             "it intact in an Authorization header; choose a key of printable ASCII characters")


def flag(name: str) -> str:
    """The ``rerank serve`` option of a :class:`ServeConfig` field, as its errors name it (``max_wait_ms`` ->
    ``--max-wait-ms``): the service is configured on the command line."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


_FLAGS = {"api_key": "--api-key (or $RERANK_API_KEY)", "model_name": "--served-model-name",
          "max_body_bytes": "max_body_bytes"}
