"""The FastAPI app behind ``rerank serve``: Cohere v1/v2 and TEI ``/rerank`` shapes, health, Prometheus metrics.

Every error answers a JSON body ``{"message", "error_type"}`` and never a stack trace: 400 malformed JSON,
401 missing/wrong bearer token, 413 too many documents / too-long text / body too large, 422 invalid or empty request,
429 queue full, 500 reranker failure, 503 not ready / shutting down, 504 request timeout. Scores are the reranker's
own (Cohere ``relevance_score``); TEI's ``raw_scores=false`` maps them through a sigmoid, as TEI does.
"""

from __future__ import annotations

import hmac
import logging
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rerank.heads.base import Reranker
from rerank.serve.batcher import Batcher, ModelError, QueueFullError, RequestTimeoutError, ServiceClosedError
from rerank.serve.config import ServeConfig
from rerank.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from rerank.serve.middleware import BodyLimitMiddleware, MetricsMiddleware
from rerank.serve.schemas import CohereRerankRequest, DocumentObject, TeiRerankRequest
from rerank.types import Candidate, Document, RankedResult

__all__ = ["create_app", "ApiError"]

log = logging.getLogger(__name__)

ENDPOINTS = ("/v1/rerank", "/v2/rerank", "/rerank", "/health", "/metrics")
_HTTP_ERROR_TYPES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error answered as ``{"message", "error_type"}`` with an HTTP status (and optional headers)."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (first.get("ctx") or {}).get("error", "")
        return 400, "invalid_json", f"request body is not valid JSON{': ' + str(detail) if detail else ''}"
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        if e.get("type") == "missing" and loc == "":
            parts.append("request body is required")
        elif loc == "" and e.get("type") in ("model_attributes_type", "dict_type", "model_type"):
            parts.append("request body must be a JSON object sent with Content-Type: application/json")
        elif e.get("type") == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        else:
            parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid value')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return 422, "invalid_request", "; ".join(parts) + more


def create_app(reranker: Reranker, config: ServeConfig | None = None) -> FastAPI:
    """Build the service around a loaded ``reranker``; the batcher starts and stops with the app's lifespan."""
    cfg = config if config is not None else ServeConfig()
    metrics = ServeMetrics()
    batcher = Batcher(
        reranker,
        max_batch_size=cfg.max_batch_size,
        max_wait_s=cfg.max_wait_ms / 1000.0,
        max_queue=cfg.max_queue,
        metrics=metrics,
    )
    model_name = cfg.model_name or reranker.describe().get("model") or reranker.method or type(reranker).__name__

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="rerank", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.config = cfg
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.reranker = reranker

    def error_response(
        status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        metrics.errors.labels(error_type).inc()
        return JSONResponse({"message": message, "error_type": error_type}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error_type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(*_validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = _HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, error_type, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return error_response(500, "internal", "internal server error")

    app.add_middleware(BodyLimitMiddleware, limit=cfg.max_body_bytes, on_error=lambda t: metrics.errors.labels(t).inc())
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=ENDPOINTS)

    def require_auth(request: Request) -> None:
        if cfg.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), cfg.api_key.encode())
        if not ok:
            raise ApiError(401, "unauthorized", "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})

    def candidates(query: str, docs: list[tuple[str, str]]) -> list[Candidate]:
        if not docs:
            raise ApiError(422, "invalid_request", "documents must not be empty")
        if len(docs) > cfg.max_docs:
            raise ApiError(413, "too_many_documents", f"{len(docs)} documents; the limit is {cfg.max_docs} per request")
        if len(query) > cfg.max_doc_chars:
            raise ApiError(413, "text_too_long", f"query has {len(query)} characters; the limit is {cfg.max_doc_chars}")
        for i, (text, title) in enumerate(docs):
            n = len(text) + len(title)
            if n > cfg.max_doc_chars:
                msg = f"document {i} has {n} characters; the limit is {cfg.max_doc_chars}"
                raise ApiError(413, "text_too_long", msg)
        return [Candidate(Document(str(i), text, title)) for i, (text, title) in enumerate(docs)]

    async def rank(query: str, cands: list[Candidate]) -> RankedResult:
        try:
            result = await batcher.submit(query, cands, cfg.timeout_s)
        except QueueFullError as e:
            raise ApiError(429, "overloaded", str(e), {"Retry-After": "1"}) from None
        except RequestTimeoutError as e:
            raise ApiError(504, "timeout", str(e)) from None
        except ServiceClosedError as e:
            raise ApiError(503, "unavailable", str(e)) from None
        except ModelError as e:
            raise ApiError(500, "model_error", f"the reranker failed on this request ({e})") from None
        if len(result.results) != len(cands) or not all(math.isfinite(r.score) for r in result.results):
            raise ApiError(500, "model_error", "the reranker returned an incomplete or non-finite ranking")
        return result

    async def cohere(body: CohereRerankRequest, version: str) -> JSONResponse:
        docs = [(d, "") if isinstance(d, str) else (d.text, d.title or "") for d in body.documents]
        result = await rank(body.query, candidates(body.query, docs))
        ranked = result.results if body.top_n is None else result.results[: body.top_n]
        out = []
        for sd in ranked:
            i = int(sd.doc.id)
            entry: dict[str, Any] = {"index": i, "relevance_score": sd.score}
            if body.return_documents:
                entry["document"] = _document_out(body.documents[i], version)
            out.append(entry)
        return JSONResponse({"id": str(uuid.uuid4()), "results": out, "meta": {"api_version": {"version": version}}})

    @app.post("/v1/rerank", dependencies=[Depends(require_auth)])
    async def rerank_v1(body: CohereRerankRequest) -> JSONResponse:
        """Cohere v1 rerank: documents as strings or objects (objects echo back whole with ``return_documents``)."""
        return await cohere(body, "1")

    @app.post("/v2/rerank", dependencies=[Depends(require_auth)])
    async def rerank_v2(body: CohereRerankRequest) -> JSONResponse:
        """Cohere v2 rerank: returned documents are ``{"text": ...}``."""
        return await cohere(body, "2")

    @app.post("/rerank", dependencies=[Depends(require_auth)])
    async def rerank_tei(body: TeiRerankRequest) -> JSONResponse:
        """TEI rerank: ``[{index, score, text?}]`` best first."""
        result = await rank(body.query, candidates(body.query, [(t, "") for t in body.texts]))
        out = []
        for sd in result.results:
            i = int(sd.doc.id)
            entry: dict[str, Any] = {"index": i, "score": sd.score if body.raw_scores else _sigmoid(sd.score)}
            if body.return_text:
                entry["text"] = body.texts[i]
            out.append(entry)
        return JSONResponse(out)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness and readiness (unauthenticated, for load balancers): 200 while the batcher runs, else 503."""
        ready = batcher.running
        return JSONResponse(
            {
                "status": "ok" if ready else "unavailable",
                "model": model_name,
                "method": reranker.method,
                "in_flight": batcher.in_flight,
                "max_queue": cfg.max_queue,
            },
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", dependencies=[Depends(require_auth)])
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this instance's metrics."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _document_out(doc: Union[str, DocumentObject], version: str) -> dict[str, Any]:
    if isinstance(doc, str):
        return {"text": doc}
    if version == "1":
        return doc.model_dump(exclude_none=True)
    return {"text": doc.text}
