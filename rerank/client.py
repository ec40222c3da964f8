"""``RemoteReranker``: the :class:`~rerank.heads.base.Reranker` interface over HTTP, so a pipeline swaps a local
head for a ``rerank serve`` instance (or any Cohere-v1-compatible ``/v1/rerank``) by configuration::

    rr = Reranker.load("remote", base_url="http://127.0.0.1:8000", api_key="...")

Loading it so sends one ``GET /health`` (:meth:`RemoteReranker.check_server`): a server that cannot be reached fails
there, before a pipeline's first stage runs. A reranker loaded before ``os.fork`` (gunicorn ``--preload``) opens its own
connections in each child process: the parent's pooled connections are left to the parent.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from rerank.config import changed_options, redact_url, secret_field, url_parse_problem, url_query_problem
from rerank.errors import ConfigError, RerankError
from rerank.heads.base import Reranker, RerankerConfig
from rerank.types import Candidate, Query
from rerank.utils.forksafe import ForkSafeLock
from rerank.utils.http import excerpt, post_with_retries

__all__ = ["RemoteRerankError", "RemoteReranker", "RemoteRerankerConfig", "api_key_problem"]


_RETRY_STATUS = (429, 502, 503)
#: the longest the health request at load waits (the request ``timeout``, when shorter)
HEALTH_TIMEOUT_S = 5.0
#: the server closed the connection before answering: a pooled connection it had just closed as idle, or a server that
#: went away mid-request. A rerank POST changes nothing on the server, so it is safe to send again.
_CLOSED_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
#: held while a forked child replaces an inherited HTTP client; a child gets a fresh one (it may fork mid-replacement)
_rebuild_lock = ForkSafeLock()


def api_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be sent as ``Authorization: Bearer KEY`` by HTTP clients (httpx encodes header values as
    ASCII and refuses control characters), or None: it must be printable ASCII without surrounding whitespace."""
    for i, ch in enumerate(key):
        if not " " <= ch <= "~":
            kind = "a non-ASCII character" if ord(ch) > 127 else "a control character (a newline, a tab, ...)"
            return f"has {kind} at position {i + 1}"
    if key != key.strip():
        return "starts or ends with a space"
    return None


class RemoteRerankError(RerankError):
    """The server answered an error status (or could not be reached); the message carries its JSON message."""


@dataclass
class RemoteRerankerConfig(RerankerConfig):
    """Server address, bearer token (default ``$RERANK_API_KEY``), timeout, parallel requests in ``score_batch``,
    retries of a busy server (429, 502, 503, a refused connection, or one closed before the answer; ``Retry-After``
    honoured, else 0.5 s doubling), and ``raw_scores``: ask for the head's own scores (``rerank serve``'s extension of
    Cohere's API; set it false for another Cohere-compatible server, whose ``relevance_score`` is then the score)."""

    base_url: str = "http://127.0.0.1:8000"
    api_key: str | None = secret_field()
    timeout: float = 60.0
    max_concurrency: int = 8
    model: str | None = None
    max_retries: int = 3
    raw_scores: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {redact_url(repr(self.base_url))}")
        if (problem := url_parse_problem(self.base_url) or url_query_problem(self.base_url)) is not None:
            raise ValueError(problem)
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be a finite number > 0, got {self.timeout}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if changed_options(self, ("batch_size",)):
            raise ConfigError(f"batch_size={self.batch_size} is not read by the remote reranker (the server batches "
                              "with its own settings; max_concurrency sets the parallel requests): drop it")


class RemoteReranker(Reranker):
    """Score candidates by POSTing them to a rerank server's ``/v1/rerank``; rankings and scores equal the server's
    model's (``raw_scores`` asks ``rerank serve`` for the head's own scores besides the [0, 1] relevance)."""

    method = "remote"
    config_class = RemoteRerankerConfig
    serialise_calls = False  # the server batches concurrent requests; the HTTP client is thread-safe
    config: RemoteRerankerConfig

    def __init__(self, config: RemoteRerankerConfig | None = None) -> None:
        super().__init__(config)
        key = self.config.api_key if self.config.api_key is not None else os.environ.get("RERANK_API_KEY") or None
        problem = key and api_key_problem(key)
        if problem:
            source = "api_key" if self.config.api_key is not None else "$RERANK_API_KEY"
            raise ConfigError(f"{source} {problem}: it cannot be sent intact in an HTTP Authorization header; give the "
                              "server's key as printable ASCII")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = self._new_client()
        self._pid = os.getpid()

    def _new_client(self) -> httpx.Client:
        """An HTTP client with this reranker's server, timeout and key."""
        return httpx.Client(base_url=self.config.base_url.rstrip("/"), timeout=self.config.timeout,
                            headers=self._headers)

    @property
    def _http(self) -> httpx.Client:
        """This process's HTTP client: in a process forked after the reranker was built (gunicorn ``--preload``), a
        new one; the inherited client is dropped unused and unclosed, its sockets being the parent's connections."""
        if self._pid != os.getpid():
            with _rebuild_lock:
                if self._pid != os.getpid():
                    self._client = self._new_client()
                    self._pid = os.getpid()
        return self._client

    def nan_hint(self) -> str:
        """A NaN score came from the server's model, whose dtype is chosen where it runs."""
        return "the server returned a NaN score; check the served model (e.g. rerank serve's --reranker-set dtype=float32)"

    @classmethod
    def from_options(cls, model: str | None = None, backend: str = "transformers", **options: Any) -> RemoteReranker:
        """``model`` (if given) is sent as the request's ``model`` field; the server's backend is its own, so naming
        another backend here is an error."""
        if backend != "transformers":
            raise ConfigError(f"the remote reranker uses the server's backend; drop backend={backend!r} (choose the "
                              "backend where the server runs: rerank serve --backend ...)")
        if model is not None:
            options = {**options, "model": model}
        reranker: RemoteReranker = super().from_options(**options)  # type: ignore[assignment]
        reranker.check_server()
        return reranker

    def check_server(self) -> None:
        """One ``GET /health`` when the reranker loads (``Reranker.load``): a server that cannot be reached is a
        :class:`RemoteRerankError` then, not after a pipeline's first stage. One attempt, waiting at most
        ``HEALTH_TIMEOUT_S`` (5 s) or ``timeout`` when shorter, without the retries of a rerank request; any HTTP
        answer passes (another Cohere-compatible server may have no ``/health``)."""
        try:
            self._http.get("/health", timeout=min(self.config.timeout, HEALTH_TIMEOUT_S))
        except httpx.HTTPError as e:
            self.close()
            raise RemoteRerankError(redact_url(f"{self._server} unreachable when the reranker loaded (GET /health, "
                                               f"one try): {e}")) from None

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        """One request; returns the server's scores aligned with ``candidates``."""
        return self._request(query, candidates)[0]

    def _request(self, query: Query, candidates: list[Candidate]) -> tuple[list[float], list[float]]:
        """One request: the server's scores (the head's own where it gives them) and relevance, aligned with
        ``candidates``."""
        docs: list[Any] = [
            {"text": c.doc.text, "title": c.doc.title} if c.doc.title else c.doc.text for c in candidates
        ]
        body: dict[str, Any] = {"query": query.text, "documents": docs}
        if self.config.raw_scores:
            body["raw_scores"] = True
        if self.config.model is not None:
            body["model"] = self.config.model
        resp = self._post(body)
        if resp.status_code != 200:
            try:
                msg = resp.json().get("message", resp.text)
            except ValueError:
                msg = resp.text
            tries = f" (after {self.config.max_retries + 1} attempts)" if resp.status_code in _RETRY_STATUS else ""
            msg = excerpt(str(msg), 300)  # one line, and at most 300 characters of what the server wrote
            raise RemoteRerankError(redact_url(f"{self._server} answered {resp.status_code}{tries}: {msg}"))
        scores: list[float | None] = [None] * len(candidates)
        rel: list[float] = [0.0] * len(candidates)
        try:  # the head's own score where the server gives it (rerank serve does)
            got = [(int(r["index"]), float(r.get("raw_score", r["relevance_score"])), float(r["relevance_score"]))
                   for r in resp.json()["results"]]
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):  # not JSON, or not a rerank answer
            raise RemoteRerankError(redact_url(f"{self._server} answered 200 without a rerank answer (JSON with a "
                                               f"results list): {excerpt(resp.text, 300)}")) from None
        for i, score, relevance in got:
            if not 0 <= i < len(candidates):
                raise RemoteRerankError(f"{self._server} returned index {i} for {len(candidates)} documents")
            scores[i], rel[i] = score, relevance
        if any(s is None for s in scores):
            raise RemoteRerankError(f"{self._server} returned an incomplete ranking")
        return scores, rel  # type: ignore[return-value]

    def _post(self, body: dict[str, Any]) -> httpx.Response:
        """POST ``/v1/rerank``, retrying ``max_retries`` times a busy or not-yet-listening server and a connection it
        closed before answering (a read timeout is not retried: the server may still be working on it)."""
        return post_with_retries(
            self._http, "/v1/rerank", body, max_retries=self.config.max_retries,
            retry_status=lambda status: status in _RETRY_STATUS, retry_errors=(httpx.ConnectError, *_CLOSED_ERRORS),
            unreachable=self._transport_error,
        )

    def _transport_error(self, e: httpx.HTTPError) -> RemoteRerankError:
        """A request that got no answer: a read timeout (the server took longer than ``timeout``) and a connection the
        server closed before answering are not a server that cannot be reached."""
        server = self._server
        if isinstance(e, httpx.ReadTimeout):
            return RemoteRerankError(f"{server} did not answer within timeout={self.config.timeout:g} s (raise the "
                                     "reranker's timeout option for long requests; a timed-out request is not retried)")
        if isinstance(e, _CLOSED_ERRORS):
            return RemoteRerankError(redact_url(f"{server} closed the connection without answering (after "
                                                f"{self.config.max_retries + 1} attempts): {e}"))
        return RemoteRerankError(redact_url(f"{server} unreachable: {e}"))

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        """Send the queries as parallel requests (the server batches them into model calls)."""
        return self.score_with_metadata(queries, candidate_lists)[0]

    def score_with_metadata(
        self, queries: list[Query], candidate_lists: list[list[Candidate]]
    ) -> tuple[list[list[float]], list[list[dict[str, Any] | None]]]:
        """:meth:`score_batch`, each document's metadata holding the server's ``relevance``."""
        if len(queries) <= 1 or self.config.max_concurrency == 1:
            got = [self._request(q, c) for q, c in zip(queries, candidate_lists, strict=True)]
        else:
            with ThreadPoolExecutor(min(self.config.max_concurrency, len(queries))) as pool:
                got = list(pool.map(self._request, queries, candidate_lists))
        return [s for s, _ in got], [[{"relevance": r} for r in rel] for _, rel in got]

    def list_relevance(self, scores: Sequence[float], metadata: Sequence[dict[str, Any] | None]) -> list[float]:
        """The server's relevance of each document (read from the metadata :meth:`score_with_metadata` gives)."""
        return [m["relevance"] if m else 0.0 for m in metadata]

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """Scores asked without ``raw_scores`` are the server's relevance already; a remote head's raw scores cannot
        be mapped here (each ranked document carries the server's: ``ScoredDocument.relevance``)."""
        if self.config.raw_scores:
            raise ValueError("a remote reranker's raw scores have no relevance mapping on the client: read "
                             "ScoredDocument.relevance (the server's), or load it with raw_scores=False")
        return [min(max(float(s), 0.0), 1.0) for s in scores]

    @property
    def _server(self) -> str:
        """The server as errors name it, credentials in its URL redacted (:func:`~rerank.config.redact_url`)."""
        return f"rerank server {redact_url(self.config.base_url)}"

    def describe(self) -> dict[str, Any]:
        """Method, server address (credentials in the URL redacted) and model; the API key is never included."""
        return {"method": self.method, "base_url": redact_url(self.config.base_url), "model": self.config.model}

    def close(self) -> None:
        """Close this process's HTTP connection pool (in a forked child, one inherited from the parent is left open
        for the parent)."""
        if self._pid == os.getpid():
            self._client.close()
