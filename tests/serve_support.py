"""Test support for ``tests/test_serve.py``: a deterministic word-overlap reranker (optionally slow or failing).

Run as a script it registers the reranker as ``test-overlap`` and runs the real ``rerank`` CLI, so tests can start
``rerank serve --reranker test-overlap`` in a subprocess: ``PYTHONPATH=. python tests/serve_support.py serve ...``.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from rerank.heads.base import Reranker, RerankerConfig
from rerank.serve import ServeConfig, create_app
from rerank.serve.server import uvicorn_config
from rerank.types import Candidate, Query

_TOKEN = re.compile(r"\w+")


@dataclass
class OverlapConfig(RerankerConfig):
    """``delay_s`` + ``per_doc_s`` × documents of sleep per model call; ``scale`` multiplies every score;
    ``doc_words`` (if > 0) is how many words of a document the head reads (a server cuts or splits by it)."""

    delay_s: float = 0.0
    per_doc_s: float = 0.0
    scale: float = 1.0
    doc_words: int = 0


def overlap_score(query: str, text: str) -> float:
    """Share of document tokens that occur in the query (deterministic, ties possible)."""
    q = set(_TOKEN.findall(query.lower()))
    d = _TOKEN.findall(text.lower())
    return sum(t in q for t in d) / (1 + len(d))


class OverlapReranker(Reranker):
    """Scores by word overlap; records the size of every model call; a query containing FAIL raises."""

    method = "test-overlap"
    config_class = OverlapConfig
    config: OverlapConfig
    independent_scores = True

    def __init__(self, config: OverlapConfig | None = None) -> None:
        super().__init__(config)
        self.batch_sizes: list[int] = []
        self.queries: list[str] = []
        self._lock = threading.Lock()

    def document_token_limit(self, query: str) -> int | None:
        return self.config.doc_words or None

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        with self._lock:
            self.batch_sizes.append(len(queries))
            self.queries.extend(q.text for q in queries)
        cost = self.config.delay_s + self.config.per_doc_s * sum(len(c) for c in candidate_lists)
        if cost > 0:
            time.sleep(cost)
        if any("FAIL" in q.text for q in queries):
            raise RuntimeError("secret-internal-detail: scoring exploded")
        return [
            [self.config.scale * overlap_score(q.text, c.doc.full_text()) for c in cands]
            for q, cands in zip(queries, candidate_lists, strict=True)
        ]


class LongestFirst(Reranker):
    """Scores a document by its text length: deterministic, model-free, parses nothing, and unlike a first stage
    that lists the shortest first (the CLI tests of ``rerank rank`` register it as ``test-longest-first``)."""

    method = "test-longest-first"
    config_class = RerankerConfig

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [float(len(c.doc.text)) for c in candidates]


def wait_until_healthy(base: str, proc: subprocess.Popen, timeout_s: float, output: Callable[[], str]) -> None:
    """Poll ``base``/health until it answers 200; fail with ``output()`` if ``proc`` exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, output()
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "rerank serve did not come up"
        time.sleep(0.1)


if __name__ == "__main__":
    from rerank.cli import main
    from rerank.heads.registry import register_reranker

    register_reranker("test-overlap", OverlapReranker)
    sys.exit(main(sys.argv[1:]))


@contextlib.contextmanager
def serving(reranker: Reranker, config: ServeConfig | None = None,
            wrap: Callable[[Any], Any] | None = None) -> Iterator[tuple[str, int]]:
    """Serve ``create_app(reranker, config)`` (passed through ``wrap``, an ASGI middleware, when given) with uvicorn
    in a thread on a free loopback port; yield (URL, port)."""
    cfg = config or ServeConfig()
    app = create_app(reranker, cfg)
    server = uvicorn.Server(uvicorn_config(wrap(app) if wrap is not None else app, cfg, port=0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(timeout=20)
