"""The FastAPI app behind ``rerank serve``: Cohere v1/v2, and at ``/rerank`` TEI's body (``texts``) or Infinity's
(``documents``), each answered in its own shape; health, Prometheus metrics.

Every error answers a JSON body ``{"message", "error", "detail", "error_type"}`` (``message`` is Cohere's field,
``error`` TEI's, ``detail`` Jina's, the same text) and never a stack trace: 400 malformed JSON (nested too deeply, a
number too long), invalid UTF-8 or a lone surrogate (the message names where); 401 missing/wrong bearer token
(checked on the headers, before the body is read); 404 / 405 a path or method not served (naming the one asked
for and the routes served); 413 too long text (a query, or a document when truncation is
refused) / body too large / too many documents for a head that must see them together or for the queue; 415 a body
that is not sent as JSON; 422 invalid request (naming the field); 429 queue full; 500 reranker failure; 503 the
batcher is not running (an app served without its lifespan: ``rerank serve`` listens only while it runs); 504 request
timeout. A document longer than ``max_doc_chars`` is cut to that many characters
(its start, or its end for TEI's ``truncation_direction: Left``) unless TEI's ``truncate: false`` refuses it; Cohere
responses say so in ``meta.warnings``. ``relevance_score`` (Cohere) and TEI's ``score`` are the head's calibrated
relevance in [0, 1] (:meth:`~rerank.heads.base.Reranker.relevance`); ``raw_scores: true`` adds (Cohere
``raw_score``) or returns (TEI) the head's own score. Cohere responses carry Jina's ``usage`` (``prompt_tokens`` =
``total_tokens``: the query's and the scored passages' tokens under the head's tokenizer,
:func:`~rerank.serve.documents.token_counter`). A request whose client disconnects while it waits is dropped before
it is scored. The reranker's per-call warnings (outputs that failed to parse, prompts fitted to the context) are
logged once, then at most every :data:`CALL_WARNINGS_EVERY_S` seconds with how many were held back; those held back
since the last one logged are counted in one warning when the app stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from rerank import __version__
from rerank.heads.base import CallWarnings, Reranker, described_value
from rerank.serve.batcher import (
    Batcher,
    ModelError,
    QueueFullError,
    RequestTimeoutError,
    Scored,
    ServiceClosedError,
)
from rerank.serve.config import ServeConfig
from rerank.serve.documents import Budget, Passages, TextTooLong, make_passages, merge, token_counter
from rerank.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from rerank.serve.middleware import AuthMiddleware, BodyLimitMiddleware, MetricsMiddleware, error_body
from rerank.serve.schemas import CohereRerankRequest, TeiRerankRequest
from rerank.types import lone_surrogate

__all__ = ["create_app", "ApiError"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

ENDPOINTS = ("/v1/rerank", "/v2/rerank", "/rerank", "/info", "/health", "/metrics")
#: the routes a 404 or 405 names
SERVED_ROUTES = "POST /v1/rerank, /v2/rerank, /rerank (and GET /info, GET /metrics, GET or HEAD /health)"
_PATH_SHOWN = 200  # characters of an unknown path a 404 repeats
OPEN_PATHS = ("/health",)
#: the reranker's per-call warnings (outputs that failed to parse, prompts fitted to the context): the first of each
#: kind, then at most one this often, saying how many were held back (its ``stats`` count them all)
CALL_WARNINGS_EVERY_S = 600.0
_HTTP_ERROR_TYPES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


_NOT_AN_OBJECT = "request body must be a JSON object sent with Content-Type: application/json"


class ApiError(Exception):
    """An error answered as :func:`~rerank.serve.middleware.error_body` with an HTTP status (and optional headers)."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers


class _Abandoned(Exception):
    """The client went away (disconnected, or stalled past the read timeout): nobody reads an answer."""


def _first_surrogate(value: Any, path: str) -> str | None:
    """Where the first lone surrogate in the parsed JSON ``value`` is (``documents[3] character 5``), if any."""
    if isinstance(value, str):
        at = lone_surrogate(value)
        return None if at is None else f"{path or 'body'} {at}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and (hit := _first_surrogate(key, f"{path}.<key>" if path else "<key>")):
            return hit
        sub = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
        if hit := _first_surrogate(item, sub):
            return hit
    return None


def header_value(text: str) -> str:
    """``text`` as an HTTP header value every client and h11 accept: non-ASCII and control characters become ``?``,
    surrounding whitespace is dropped (h11 refuses to send the response otherwise); ``-`` where nothing is left."""
    safe = "".join(ch if " " <= ch <= "~" else "?" for ch in text).strip()
    return safe or "-"


def parse_body(
    body: bytes, content_type: str, model: type[M] | Callable[[dict[str, Any]], type[M]], content_encoding: str = ""
) -> M:
    """Decode and validate a JSON request body: 415 a body sent as another media type or compressed
    (``Content-Encoding``); 400 names invalid UTF-8 (byte offset), bad JSON (line, column; too deep; a number too
    long) or a lone surrogate (field, character); 422 names the invalid or unknown fields. ``model`` is the body's
    model, or a function choosing it from the decoded object (:func:`root_body_model`)."""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in ("application/json", ""):
        raise ApiError(415, "unsupported_media_type", f"{_NOT_AN_OBJECT} (got {media_type!r})")
    encoding = content_encoding.strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, "unsupported_media_type", f"Content-Encoding: {header_value(encoding)} is not supported: "
                       "send the JSON body uncompressed")
    if not body:
        raise ApiError(422, "invalid_request", "request body is required")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, "invalid_utf8", f"request body is not valid UTF-8: byte 0x{body[e.start]:02x} at offset "
                       f"{e.start} ({e.reason})") from None
    too_deep = ApiError(400, "invalid_json", "request body is not valid JSON: nested too deeply")
    try:
        data = json.loads(text)
    except RecursionError:
        raise too_deep from None
    except json.JSONDecodeError as e:  # line, column
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {e}") from None
    except ValueError:  # an integer beyond Python's digit limit (its message is advice for Python programmers)
        raise ApiError(400, "invalid_json", "request body has a number of more than "
                       f"{sys.get_int_max_str_digits()} digits") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", _NOT_AN_OBJECT)
    try:
        where = _first_surrogate(data, "")
        if where:
            raise ApiError(400, "invalid_text", f"lone UTF-16 surrogate in {where}: text must be valid Unicode")
        return (model if isinstance(model, type) else model(data)).model_validate(data)
    except RecursionError:
        raise too_deep from None
    except ValidationError as e:
        raise ApiError(422, "invalid_request", _validation_message(e)) from None


def root_body_model(data: dict[str, Any]) -> type[TeiRerankRequest] | type[CohereRerankRequest]:
    """Which API a ``POST /rerank`` body speaks: TEI's (``texts``) or Infinity's, Cohere-shaped (``documents``); 422
    naming the two forms for a body with both fields or neither."""
    has_texts, has_documents = "texts" in data, "documents" in data
    if has_texts != has_documents:
        return TeiRerankRequest if has_texts else CohereRerankRequest
    found = "both 'texts' and 'documents'" if has_texts else "neither 'texts' nor 'documents'"
    raise ApiError(422, "invalid_request", f"POST /rerank takes TEI's body {{query, texts, ...}} or Infinity's "
                   f"{{query, documents, ...}}; this body has {found}")


def no_route_message(method: str, path: str, allow: str | None = None) -> str:
    """A 404's or 405's message: the method and path asked for (``allow``: the methods that path answers) and the
    routes this server answers."""
    shown = path if len(path) <= _PATH_SHOWN else path[:_PATH_SHOWN] + "..."
    answers = f" ({shown} answers {allow} only)" if allow else ""
    return f"no route {method} {shown}{answers}; this server answers {SERVED_ROUTES}"


def _validation_message(exc: ValidationError) -> str:
    """Up to three of pydantic's errors as one line, each naming its field (a validator's message as it wrote it)."""
    errors = exc.errors()
    parts = []
    for e in errors[:3]:
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.get("loc", ())).lstrip(".")
        cause = e.get("ctx", {}).get("error")
        if e.get("type") == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        elif e.get("type") == "missing":
            parts.append(f"{loc}: field required")
        elif e.get("type") == "value_error" and cause is not None:  # a validator's own words, not pydantic's prefix
            text = str(cause)
            parts.append(text if not loc or text.startswith(loc) else f"{loc}: {text}")
        else:
            parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid value')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def model_dtype(reranker: Reranker, described: dict[str, Any]) -> str:
    """TEI's ``model_dtype`` for ``/info``: ``int8`` for a model run ONNX-quantized; the parameters' dtype of the torch
    model the head runs in this process (``float32``, ``bfloat16``, ...); the dtype its backend reports as resolved
    (vLLM); else the head's ``dtype`` option where it names one; else ``unknown`` (llama.cpp, a remote server)."""
    import torch

    layer: list[Any] = [reranker]
    for _ in range(4):  # the head's model, its encoder, its backend's model, a cache's inner backend's model
        found = []
        for obj in layer:
            runners = [getattr(obj, "runner", None), *(getattr(obj, "runners", None) or {}).values()]
            if any(getattr(r, "quantize", "none") == "int8" for r in runners):
                return "int8"
            if isinstance(obj, torch.nn.Module):
                param = next(obj.parameters(), None)
                if param is not None:
                    return str(param.dtype).removeprefix("torch.")
            found += [v for name in ("model", "encoder", "backend", "inner")
                      if (v := getattr(obj, name, None)) is not None and not isinstance(v, str)]
        layer = found
    resolved = described_value(described, "resolved_dtype")
    if resolved:
        return str(resolved).removeprefix("torch.")
    option = described.get("config", {}).get("dtype")
    return str(option) if option and option != "auto" else "unknown"


def _cohere_docs(body: CohereRerankRequest) -> list[tuple[str, str]]:
    """``(text, title)`` per Cohere document: a string; an object's ``rank_fields`` as ``field: value`` lines in the
    order given; else an object's ``text`` (with ``title`` prepended by the head, as for any document)."""
    out = []
    for i, d in enumerate(body.documents):
        if isinstance(d, str):
            out.append((d, ""))
        elif body.rank_fields:
            lines = [f"{f}: {_field_text(d[f])}" for f in body.rank_fields if f in d]
            if not lines:
                raise ApiError(422, "invalid_request", f"documents[{i}] has none of the rank_fields {body.rank_fields}")
            out.append(("\n".join(lines), ""))
        else:
            text, title = d.get("text"), d.get("title")
            if not isinstance(text, str):
                raise ApiError(422, "invalid_request", f"documents[{i}] needs a string 'text' field (or send "
                               "rank_fields naming the fields to rank)")
            if title is not None and not isinstance(title, str):
                raise ApiError(422, "invalid_request", f"documents[{i}].title must be a string")
            out.append((text, title or ""))
    return out


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _warn_held_back(name: str, policy: CallWarnings) -> None:
    """At shutdown, one warning counting the per-call warnings held back since the last of their kind was logged."""
    held = policy.held_back()
    if held:
        counts = ", ".join(f"{n} on {CallWarnings.KINDS.get(kind, kind)}" for kind, n in sorted(held.items()))
        log.warning("%s: per-call warnings held back since the last one logged, at shutdown: %s (the reranker's stats "
                    "count every call)", name, counts)


def create_app(reranker: Reranker, config: ServeConfig | None = None) -> FastAPI:
    """Build the service around a loaded ``reranker``; the batcher starts and stops with the app's lifespan."""
    cfg = config if config is not None else ServeConfig()
    metrics = ServeMetrics()
    batcher = Batcher(
        reranker,
        max_batch_size=cfg.max_batch_size,
        max_wait_s=cfg.max_wait_ms / 1000.0,
        max_queue=cfg.max_queue,
        max_batch_docs=cfg.max_batch_docs,
        metrics=metrics,
        count_tokens=token_counter(reranker),
    )
    model_name = cfg.model_name or reranker.describe().get("model") or reranker.method or type(reranker).__name__
    model_header = {"x-model-id": header_value(str(model_name))}
    import torch

    threads = torch.get_num_threads()  # this process's model threads (rerank serve --threads)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with reranker.warning_policy(CallWarnings(every=CALL_WARNINGS_EVERY_S)) as policy:  # not one per request
            await batcher.start()
            try:
                yield
            finally:
                await batcher.stop()
        _warn_held_back(reranker.method or type(reranker).__name__, policy)

    # no /docs, /redoc or /openapi.json: the API is Cohere's and TEI's, documented in docs/serve.md
    app = FastAPI(title="rerank", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = cfg
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.reranker = reranker

    def count_error(error_type: str) -> None:
        metrics.errors.labels(error_type).inc()

    def error_response(
        status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        count_error(error_type)
        return JSONResponse(error_body(message, error_type), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error_type, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = _HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        message = str(exc.detail)
        if exc.status_code in (404, 405):  # the router's: say what was asked for and what is served
            message = no_route_message(request.method, request.url.path, (headers or {}).get("Allow"))
        return error_response(exc.status_code, error_type, message, headers)

    @app.exception_handler(_Abandoned)
    async def _abandoned(_: Request, exc: _Abandoned) -> Response:
        metrics.abandoned.inc()
        return Response(status_code=499)  # never sent: the connection is gone

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s: %s", type(exc).__name__, exc)  # Starlette re-raises: uvicorn logs the trace
        return error_response(500, "internal", "internal server error")

    app.add_middleware(BodyLimitMiddleware, limit=cfg.max_body_bytes, on_error=count_error)
    app.add_middleware(AuthMiddleware, api_key=cfg.api_key, open_paths=OPEN_PATHS, on_error=count_error)
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=ENDPOINTS)

    async def read(request: Request, model: type[M] | Callable[[dict[str, Any]], type[M]]) -> M:
        try:
            body = await request.body()
        except ClientDisconnect:
            raise _Abandoned() from None
        return parse_body(body, request.headers.get("content-type", ""), model,
                          request.headers.get("content-encoding", ""))

    async def unless_abandoned(request: Request, work: Awaitable[T]) -> T:
        """Await ``work`` unless the client disconnects first; then cancel it (queued requests leave the queue)."""
        job = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not job.done():
                job.cancel()
            watch.cancel()
        if not job.done() or job.cancelled():
            raise _Abandoned()
        return job.result()

    async def rank(
        request: Request, query: str, docs: list[tuple[str, str]], budget: Budget, priority: int, names: str,
        count: bool = False,
    ) -> tuple[list[tuple[int, float, float]], list[str], int | None]:
        """``(document index, raw score, relevance)`` best first, for every document; warnings for the client:
        documents cut to ``max_doc_chars``, passages past what the head orders (a window head's ``depth``); and with
        ``count``, the tokens of the query and of the passages handed to the head (None where not counted)."""
        if not docs:
            raise ApiError(422, "invalid_request", f"{names} must not be empty")
        limit = cfg.max_doc_chars
        if len(query) > limit:
            raise ApiError(413, "text_too_long", f"query has {len(query)} characters; the limit is {limit}")
        docs, cut = _cut_documents(docs, budget, names)
        scored, n, tokens = await unless_abandoned(
            request, _passages_and_scores(query, docs, budget, priority, names, count)
        )
        if cut:  # counted once scored: a request refused (429, 413, 504, ...) or abandoned had nothing cut
            metrics.documents_cut.inc(len(cut))
            log.info("cut %d document(s) longer than %d characters (--max-doc-chars) to %d", len(cut), limit, limit)
        warnings = [f"{names} {', '.join(map(str, cut))} had more than {limit} characters and were cut to their first "
                    f"{limit} (the server's --max-doc-chars)"] if cut else []
        depth = reranker.ranked_depth()
        if depth is not None and n > depth:
            metrics.documents_unranked.inc(n - depth)
            warnings.append(f"{n - depth} of {n} {names} (passages) past the first {depth} were not reranked: they "
                            f"follow in their input order ({reranker.method} orders the top {depth}; the server's "
                            f"--reranker-set depth=N ranks more)")  # the head logs it too
        return scored, warnings, tokens

    def _cut_documents(
        docs: list[tuple[str, str]], budget: Budget, names: str
    ) -> tuple[list[tuple[str, str]], list[int]]:
        """Documents over ``max_doc_chars`` (title included) cut to it on the side a truncation keeps: more than any
        head reads, so only ``max_chunks_per_doc`` passages beyond it are lost. 413 where truncation is refused or
        the title alone is over the limit."""
        limit = cfg.max_doc_chars
        out, cut = list(docs), []
        for i, (text, title) in enumerate(docs):
            over = len(text) + len(title) - limit
            if over <= 0:
                continue
            if len(title) > limit:
                raise ApiError(413, "text_too_long", f"{names}[{i}] has a title of {len(title)} characters; the limit "
                               f"is {limit}")
            if not budget.truncate:
                raise ApiError(413, "text_too_long", f"{names}[{i}] has {len(text) + len(title)} characters; the "
                               f"limit is {limit} (send truncate: true to cut it)")
            out[i] = (text[over:] if budget.keep == "end" else text[: len(text) - over], title)
            cut.append(i)
        return out, cut

    async def _passages_and_scores(
        query: str, docs: list[tuple[str, str]], budget: Budget, priority: int, names: str, count: bool
    ) -> tuple[list[tuple[int, float, float]], int, int | None]:
        """The scored documents, how many passages the head was given, and (with ``count``) their and the query's
        tokens."""
        try:
            if budget.needs_tokens:  # the head's tokenizer: on the model thread
                passages = await batcher.run_in_model_thread(
                    lambda: make_passages(reranker, query, docs, budget, names)
                )
            else:
                passages = make_passages(reranker, query, docs, budget, names)
        except TextTooLong as e:
            raise ApiError(413, "text_too_long", str(e)) from None
        except ServiceClosedError as e:
            raise ApiError(503, "unavailable", str(e)) from None
        scored, tokens = await _score_parts(query, passages, _parts(passages), priority, count)
        return scored, len(passages.candidates), tokens

    def _parts(passages: Passages) -> list[range]:
        n = len(passages.candidates)
        if n <= cfg.max_docs:
            return [range(n)]
        if not reranker.independent_scores:
            raise ApiError(413, "too_many_documents", f"{n} documents (passages); the limit is {cfg.max_docs} per "
                           f"request for {reranker.method or 'this reranker'}, which ranks a list as a whole")
        return [range(k, min(k + cfg.max_docs, n)) for k in range(0, n, cfg.max_docs)]

    async def _score_parts(
        query: str, passages: Passages, parts: list[range], priority: int, count: bool
    ) -> tuple[list[tuple[int, float, float]], int | None]:
        """Score each part of the passages as its own request; merge them; with ``count``, the tokens of the query
        (counted with the first part) and of every passage."""
        if len(parts) > cfg.max_queue:  # could never fit: a permanent 413, not a 429 to retry
            raise ApiError(413, "too_many_documents", f"{len(passages.candidates)} documents (passages) need "
                           f"{len(parts)} model calls of {cfg.max_docs}; the queue holds {cfg.max_queue}")
        if len(parts) > 1:
            try:
                batcher.check_capacity(len(parts))
            except QueueFullError as e:
                raise ApiError(429, "overloaded", str(e), {"Retry-After": "1"}) from None
        cands = passages.candidates

        def texts(j: int, part: range) -> list[str] | None:
            return ([query] if j == 0 else []) + [cands[k].doc.full_text() for k in part] if count else None

        answers = await asyncio.gather(
            *[_submit(query, [cands[k] for k in part], priority, texts(j, part)) for j, part in enumerate(parts)]
        )
        raw = [0.0] * len(cands)
        rel = [0.0] * len(cands)
        for part, (result, _) in zip(parts, answers, strict=True):
            if len(result.results) != len(part) or not all(math.isfinite(r.score) for r in result.results):
                raise ApiError(500, "model_error", "the reranker returned an incomplete or non-finite ranking")
            by_id = {r.doc.id: r.score for r in result.results}
            part_raw = [by_id[cands[k].doc.id] for k in part]
            part_rel = reranker.relevance(part_raw)
            for k, r, v in zip(part, part_raw, part_rel, strict=True):
                raw[k], rel[k] = r, v
        counts = [a.tokens for a in answers]
        tokens = sum(c for c in counts if c is not None) if count and None not in counts else None
        return merge(passages, raw, rel), tokens

    async def _submit(query: str, cands: list, priority: int, count: list[str] | None) -> Scored:
        try:
            return await batcher.submit(query, cands, cfg.timeout_s, priority, count)
        except QueueFullError as e:
            raise ApiError(429, "overloaded", str(e), {"Retry-After": "1"}) from None
        except RequestTimeoutError as e:
            raise ApiError(504, "timeout", str(e)) from None
        except ServiceClosedError as e:
            raise ApiError(503, "unavailable", str(e)) from None
        except ModelError as e:
            raise ApiError(500, "model_error", f"the reranker failed on this request ({e})") from None

    async def cohere_ranking(
        request: Request, body: CohereRerankRequest
    ) -> tuple[list[tuple[str, str]], list[tuple[int, float, float]], list[str], int | None]:
        """A Cohere-shaped body's ``(text, title)`` per document, its top ``top_n`` ``(index, raw, relevance)``, the
        warnings for the client and the tokens counted."""
        docs = _cohere_docs(body)
        budget = Budget(max_tokens=body.max_tokens_per_doc, max_chunks=body.max_chunks_per_doc)
        scored, warnings, tokens = await rank(request, body.query, docs, budget, body.priority or 0, "documents",
                                              count=True)
        return docs, scored if body.top_n is None else scored[: body.top_n], warnings, tokens

    async def cohere(request: Request, version: str) -> JSONResponse:
        body = await read(request, CohereRerankRequest)
        docs, ranked, warnings, tokens = await cohere_ranking(request, body)
        out = []
        for i, raw, rel in ranked:
            entry: dict[str, Any] = {"index": i, "relevance_score": rel}
            if body.raw_scores:
                entry["raw_score"] = raw
            if body.return_documents:
                d = body.documents[i]
                if isinstance(d, str) or version != "1":
                    entry["document"] = {"text": d if isinstance(d, str) else docs[i][0]}
                else:
                    entry["document"] = d
            out.append(entry)
        n_units = max(1, math.ceil(len(docs) / 100))
        meta: dict[str, Any] = {
            "api_version": {"version": version, "is_experimental": False},
            "billed_units": {"search_units": n_units},
        }
        if warnings:
            meta["warnings"] = warnings
        answer: dict[str, Any] = {"id": str(uuid.uuid4()), "results": out, "meta": meta, "model": model_name}
        if tokens is not None:  # Jina's and Infinity's field (their clients read it); Cohere's SDKs ignore it
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse(answer, headers=model_header)

    async def infinity(request: Request, body: CohereRerankRequest) -> JSONResponse:
        """Infinity's answer to a Cohere-shaped body: ``document`` is the ranked text as a plain string, and
        ``raw_scores`` puts the head's own score in ``relevance_score``, as Infinity does."""
        docs, ranked, _, tokens = await cohere_ranking(request, body)
        out = []
        for i, raw, rel in ranked:
            entry: dict[str, Any] = {"index": i, "relevance_score": raw if body.raw_scores else rel}
            if body.return_documents:
                entry["document"] = docs[i][0]
            out.append(entry)
        used = tokens if tokens is not None else 0  # Infinity's clients require usage; 0 where counting failed
        return JSONResponse(
            {
                "object": "rerank",
                "results": out,
                "model": model_name,
                "usage": {"prompt_tokens": used, "total_tokens": used},
                "id": f"infinity-{uuid.uuid4()}",
                "created": int(time.time()),
            },
            headers=model_header,
        )

    @app.post("/v1/rerank")
    async def rerank_v1(request: Request) -> JSONResponse:
        """Cohere v1 rerank: documents as strings or objects (objects echo back whole with ``return_documents``)."""
        return await cohere(request, "1")

    @app.post("/v2/rerank")
    async def rerank_v2(request: Request) -> JSONResponse:
        """Cohere v2 rerank: returned documents are ``{"text": ...}``."""
        return await cohere(request, "2")

    @app.post("/rerank")
    async def rerank_root(request: Request) -> JSONResponse:
        """TEI's body (``texts``) answers TEI's ``[{index, score, text?}]`` best first; a Cohere-shaped body
        (``documents``, as Infinity's and LiteLLM's ``infinity/`` clients send) answers Infinity's
        ``{object, results: [{index, relevance_score, document?}], model, usage, id, created}``."""
        body = await read(request, root_body_model)
        if isinstance(body, CohereRerankRequest):
            return await infinity(request, body)
        keep = "end" if (body.truncation_direction or "right").lower() == "left" else "start"
        budget = Budget(keep=keep, truncate=body.truncate is not False)
        scored, _, _ = await rank(request, body.query, [(t, "") for t in body.texts], budget, 0, "texts")
        out = []
        for i, raw, rel in scored if body.top_n is None else scored[: body.top_n]:
            entry: dict[str, Any] = {"index": i, "score": raw if body.raw_scores else rel}
            if body.return_text:
                entry["text"] = body.texts[i]
            out.append(entry)
        return JSONResponse(out, headers=model_header)

    @app.get("/info")
    async def info() -> JSONResponse:
        """TEI's ``/info``: the served model and the limits clients size their requests to."""
        described = reranker.describe()
        limit = reranker.document_token_limit("")
        return JSONResponse(
            {
                "model_id": model_name,
                "model_sha": None,
                "model_dtype": model_dtype(reranker, described),
                "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
                "max_concurrent_requests": cfg.max_queue,
                "max_input_length": limit,  # tokens of a document the head reads; null: it has no such limit
                "max_batch_requests": cfg.max_batch_size,
                "max_client_batch_size": cfg.max_docs * (cfg.max_queue if reranker.independent_scores else 1),
                "auto_truncate": True,
                "tokenization_workers": 1,
                "version": __version__,
                "method": reranker.method,
            },
            headers=model_header,
        )

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        """Liveness and readiness (unauthenticated, for load balancers): 200 while the batcher runs, else 503 (the
        app served without its lifespan). It names no model (``/info`` does, behind the key)."""
        ready = batcher.running
        return JSONResponse(
            {
                "status": "ok" if ready else "unavailable",
                "method": reranker.method,
                "in_flight": batcher.in_flight,
                "max_queue": cfg.max_queue,
                "pid": os.getpid(),
                "threads": threads,
            },
            status_code=200 if ready else 503,
        )

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this instance's metrics."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (ASGI ``http.disconnect``); the body must have been read already."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
