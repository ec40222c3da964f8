"""``rerank serve``: the real server (uvicorn on a free loopback port) against the in-process reranker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank.cli import build_parser
from rerank.cli.serve_cmd import serve_config
from rerank.data.io import read_run, write_jsonl, write_qrels, write_run
from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.heads.base import Reranker
from rerank.heads.registry import available_rerankers, register_reranker
from rerank.serve import ServeConfig
from rerank.types import Document

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from serve_support import OverlapConfig, OverlapReranker, serving, wait_until_healthy  # noqa: E402

register_reranker("test-overlap", OverlapReranker)

QUERIES = [
    "what is bm25 ranking",
    "dense retrieval with faiss",
    "cross encoder reranking of passages",
    "the cat sat on the mat",
]
DOCS = [
    "BM25 is a ranking function used by search engines",
    "FAISS is a library for dense vector similarity search",
    "A cross encoder reads query and passage together for reranking",
    "The cat sat quietly",
    "Passages are reranked by a model after retrieval",
    "ranking ranking ranking",
    "nothing relevant here at all",
]


@contextlib.contextmanager
def running(reranker: Reranker, config: ServeConfig | None = None) -> Iterator[str]:
    """Serve ``create_app(reranker, config)`` in a thread on a free 127.0.0.1 port; yield its URL."""
    with serving(reranker, config) as (url, _):
        yield url


def local_ranking(
    query: str, docs: list, raw: bool = False, reranker: Reranker | None = None
) -> list[tuple[int, float]]:
    """(input index, relevance) best first from the in-process reranker; ``raw``: its own scores instead."""
    rr = reranker or OverlapReranker()
    res = rr.rerank(query, docs).results
    scores = [r.score for r in res]
    return [(int(r.doc.id), s) for r, s in zip(res, scores if raw else rr.relevance(scores))]


def assert_error(resp: httpx.Response, status: int, error_type: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body["message"], str) and body["message"]
    assert body["error"] == body["message"]  # TEI's field (huggingface_hub reads it), Cohere's field
    if error_type is not None:
        assert body["error_type"] == error_type, body
    assert "Traceback" not in resp.text and 'File "' not in resp.text and "secret-internal" not in resp.text
    return body


def metric_values(text: str, name: str) -> dict[str, float]:
    """Samples of metric ``name`` (label string -> value) from Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running(OverlapReranker()) as u:
        yield u


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cohere_shape_matches_in_process_ranking(client: httpx.Client, version: str) -> None:
    for q in QUERIES:
        resp = client.post(f"/{version}/rerank", json={"query": q, "documents": DOCS, "model": "anything"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["meta"]["api_version"]["version"] == version[1]
        got = [(r["index"], r["relevance_score"]) for r in body["results"]]
        assert got == local_ranking(q, DOCS)
        assert all("document" not in r for r in body["results"])
    resp = client.post(
        f"/{version}/rerank", json={"query": QUERIES[2], "documents": DOCS, "top_n": 3, "return_documents": True}
    )
    body = resp.json()
    expected = local_ranking(QUERIES[2], DOCS)[:3]
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == expected
    assert [r["document"] for r in body["results"]] == [{"text": DOCS[i]} for i, _ in expected]
    big = client.post(f"/{version}/rerank", json={"query": QUERIES[0], "documents": DOCS, "top_n": 100}).json()
    assert len(big["results"]) == len(DOCS)


def test_document_objects_rank_title_and_echo_fields(client: httpx.Client) -> None:
    objs = [{"text": d, "title": "bm25" if i == 6 else None, "url": f"u{i}"} for i, d in enumerate(DOCS)]
    objs = [{k: v for k, v in o.items() if v is not None} for o in objs]
    local_docs = [Document(str(i), o["text"], o.get("title", "")) for i, o in enumerate(objs)]
    body = client.post(
        "/v1/rerank", json={"query": QUERIES[0], "documents": objs, "return_documents": True}
    ).json()
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == local_ranking(QUERIES[0], local_docs)
    assert all(r["document"] == objs[r["index"]] for r in body["results"])  # v1 echoes the whole object
    v2 = client.post("/v2/rerank", json={"query": QUERIES[0], "documents": objs, "return_documents": True}).json()
    assert all(r["document"] == {"text": objs[r["index"]]["text"]} for r in v2["results"])
    mixed = client.post("/v2/rerank", json={"query": QUERIES[1], "documents": [DOCS[0], {"text": DOCS[1]}]}).json()
    assert [(r["index"], r["relevance_score"]) for r in mixed["results"]] == local_ranking(QUERIES[1], DOCS[:2])


def test_tei_shape(client: httpx.Client) -> None:
    raw = client.post("/rerank", json={"query": QUERIES[2], "texts": DOCS, "raw_scores": True}).json()
    assert [(r["index"], r["score"]) for r in raw] == local_ranking(QUERIES[2], DOCS, raw=True)
    assert all("text" not in r for r in raw)
    sig = client.post("/rerank", json={"query": QUERIES[2], "texts": DOCS, "return_text": True}).json()
    assert [r["index"] for r in sig] == [r["index"] for r in raw]
    for s, r in zip(sig, raw):
        assert s["score"] == pytest.approx(1 / (1 + math.exp(-r["score"])))
        assert s["text"] == DOCS[s["index"]]


def test_bad_requests_answer_json_errors_without_traces(client: httpx.Client) -> None:
    post = client.post
    hdr = {"content-type": "application/json"}
    assert_error(post("/v1/rerank", content=b'{"query": "x", "documents": [', headers=hdr), 400, "invalid_json")
    assert_error(post("/v1/rerank", content=b"", headers=hdr), 422, "invalid_request")
    assert_error(post("/v1/rerank", json={"query": "x", "documents": []}), 422, "invalid_request")
    assert_error(post("/rerank", json={"query": "x", "texts": []}), 422, "invalid_request")
    assert_error(post("/v1/rerank", json={"documents": ["a"]}), 422, "invalid_request")
    body = assert_error(post("/v1/rerank", json={"query": "x", "documents": ["a"], "topn": 1}), 422)
    assert "topn" in body["message"]
    assert_error(post("/v1/rerank", json={"query": "x", "documents": ["a", 3]}), 422)
    assert_error(post("/v1/rerank", json={"query": "x", "documents": [{"title": "no text"}]}), 422)
    assert_error(post("/v1/rerank", json={"query": "x", "documents": ["a"], "top_n": 0}), 422)
    assert_error(post("/v1/rerank", json={"query": 5, "documents": ["a"]}), 422)
    body = assert_error(post("/v1/rerank", json=["not", "an", "object"]), 422)
    assert "JSON object" in body["message"]
    no_type = post("/v1/rerank", content=b'{"query": "x", "documents": ["a"]}', headers={"content-type": "text/plain"})
    assert "Content-Type: application/json" in assert_error(no_type, 415, "unsupported_media_type")["message"]
    deep = b'{"query": "x", "documents": [{"text": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}]}"
    assert "nested too deeply" in assert_error(post("/rerank", content=deep, headers=hdr), 400, "invalid_json")["message"]
    nested = b'{"query": "x", "documents": [{"text": "a", "x": ' + b"[" * 980 + b"]" * 980 + b"}]}"
    assert post("/v1/rerank", content=nested, headers=hdr).status_code in (200, 400, 422)  # parsed or refused, no 500
    big_int = b'{"query": "x", "documents": ["a"], "top_n": ' + b"9" * 5000 + b"}"
    assert "digits" in assert_error(post("/v1/rerank", content=big_int, headers=hdr), 400, "invalid_json")["message"]
    assert_error(client.get("/v1/rerank"), 405)
    assert_error(client.get("/nope"), 404, "not_found")


def test_size_limits() -> None:
    cfg = ServeConfig(max_docs=5, max_doc_chars=50, max_body_bytes=4000)
    with running(OverlapReranker(), cfg) as u, httpx.Client(base_url=u) as c:
        assert c.post("/v1/rerank", json={"query": "a", "documents": ["a"] * 5}).status_code == 200
        # a document over max_doc_chars is cut to it (Cohere truncates long documents) and the response says so
        long_doc = "b " * 20 + "a " * 20  # 80 characters: the first 50 hold 20 b's and 5 a's
        r = c.post("/v2/rerank", json={"query": "a", "documents": ["ok", long_doc], "return_documents": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert "documents 1 had more than 50 characters" in body["meta"]["warnings"][0]
        got = {x["index"]: x["relevance_score"] for x in body["results"]}
        assert got[1] == pytest.approx(local_ranking("a", [long_doc[:50]])[0][1])
        assert body["results"][0]["document"] == {"text": long_doc}  # the document echoes whole
        assert "warnings" not in c.post("/v2/rerank", json={"query": "a", "documents": ["ok"]}).json()["meta"]
        left = c.post("/rerank", json={"query": "a", "texts": [long_doc], "truncation_direction": "Left"}).json()
        assert left[0]["score"] == pytest.approx(local_ranking("a", [long_doc[-50:]])[0][1])  # TEI Left: the end
        refused = c.post("/rerank", json={"query": "a", "texts": ["ok", "x" * 51], "truncate": False})
        assert "texts[1] has 51 characters" in assert_error(refused, 413, "text_too_long")["message"]
        long_title = {"text": "x" * 30, "title": "y" * 30}  # the text is cut to what the title leaves
        assert c.post("/v1/rerank", json={"query": "a", "documents": [long_title]}).status_code == 200
        title_only = {"text": "x", "title": "y" * 51}
        assert_error(c.post("/v1/rerank", json={"query": "a", "documents": [title_only]}), 413, "text_too_long")
        assert_error(c.post("/v1/rerank", json={"query": "q" * 51, "documents": ["a"]}), 413, "text_too_long")
        for path, body in (("/v2/rerank", {"query": " ", "documents": ["a"]}), ("/rerank", {"query": "", "texts": ["a"]})):
            assert "query must not be empty" in assert_error(c.post(path, json=body), 422)["message"]
        cut = metric_values(c.get("/metrics").text, "rerank_documents_cut_total")[""]
        assert cut == 3
        huge = json.dumps({"query": "a", "documents": ["a"] * 2000}).encode()
        assert_error(c.post("/v1/rerank", content=huge, headers={"content-type": "application/json"}), 413)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed byte count is enforced
            for i in range(0, len(huge), 1000):
                yield huge[i : i + 1000]

        assert_error(c.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"}), 413)
        errors = metric_values(c.get("/metrics").text, "rerank_errors_total")
        assert errors['{error_type="payload_too_large"}'] == 2
        assert errors['{error_type="text_too_long"}'] == 3


def test_model_failure_is_isolated_and_hidden() -> None:
    rr = OverlapReranker(OverlapConfig(delay_s=0.05))
    cfg = ServeConfig(max_batch_size=8, max_wait_ms=300)

    async def go(u: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=u, timeout=30) as c:
            queries = [QUERIES[0], "FAIL me", QUERIES[1]]
            reqs = [c.post("/v1/rerank", json={"query": q, "documents": DOCS}) for q in queries]
            return await asyncio.gather(*reqs)

    with running(rr, cfg) as u:
        ok1, bad, ok2 = asyncio.run(go(u))
    assert_error(bad, 500, "model_error")
    assert [(r["index"], r["relevance_score"]) for r in ok1.json()["results"]] == local_ranking(QUERIES[0], DOCS)
    assert [(r["index"], r["relevance_score"]) for r in ok2.json()["results"]] == local_ranking(QUERIES[1], DOCS)
    assert max(rr.batch_sizes) == 3  # the three were one batch, then retried one by one


class _NaNReranker(OverlapReranker):
    def score_batch(self, queries: list, candidate_lists: list) -> list[list[float]]:
        return [[float("nan")] * len(c) for c in candidate_lists]


class _BrokenIdsReranker(OverlapReranker):
    """A buggy head that renames documents: the response code hits an unexpected error."""

    def rerank_batch(self, queries, docs_lists, top_k=None):  # type: ignore[no-untyped-def]
        results = super().rerank_batch(queries, docs_lists, top_k)
        for res in results:
            res.results = [type(r)(Document("not-an-index", r.doc.text), r.score, r.rank) for r in res.results]
        return results


def test_buggy_heads_answer_500_json_without_traces() -> None:
    req = {"query": "a", "documents": ["a", "b"]}
    with running(_NaNReranker()) as u:
        assert_error(httpx.post(f"{u}/v1/rerank", json=req), 500, "model_error")
    with running(_BrokenIdsReranker()) as u:
        r = httpx.post(f"{u}/v1/rerank", json=req)
        assert_error(r, 500, "internal")
        assert "not-an-index" not in r.text
        assert httpx.get(f"{u}/health").status_code == 200


def test_bearer_auth() -> None:
    with running(OverlapReranker(), ServeConfig(api_key="s3cret")) as u, httpx.Client(base_url=u) as c:
        req = {"query": "a", "documents": ["a b", "c"]}
        r = c.post("/v1/rerank", json=req)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(c.post("/v1/rerank", json=req, headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(c.post("/v1/rerank", json=req, headers={"Authorization": "Basic s3cret"}), 401)
        assert_error(c.post("/rerank", json={"query": "a", "texts": ["a"]}), 401)
        assert_error(c.get("/metrics"), 401)
        good = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/rerank", json=req, headers=good).status_code == 200
        assert c.post("/v2/rerank", json=req, headers=good).status_code == 200
        assert c.get("/metrics", headers=good).status_code == 200
        assert c.get("/health").status_code == 200  # open for load balancers
        assert "model" not in c.get("/health").json()  # which names no model: /info does, behind the key
        assert_error(c.get("/info"), 401)
        info = c.get("/info", headers=good).json()
        assert info["model_id"] == "test-overlap" and info["model_type"] == {
            "reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
        assert info["max_client_batch_size"] == 1000 * 256 and info["auto_truncate"] is True
        assert info["max_input_length"] is None  # tokens, and this head reads whole texts (never characters)


def test_queue_full_answers_429_and_health_stays_responsive() -> None:
    rr = OverlapReranker(OverlapConfig(delay_s=0.4))
    cfg = ServeConfig(max_batch_size=1, max_queue=3, max_wait_ms=0)

    async def go(u: str) -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(base_url=u, timeout=30) as c:
            req = {"query": "a", "documents": ["a"]}
            tasks = [asyncio.create_task(c.post("/v1/rerank", json=req)) for _ in range(8)]
            deadline = time.monotonic() + 10
            while sum(t.done() for t in tasks) < 5:  # the five rejections come back at once
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            t0 = time.perf_counter()  # the model thread is busy for 3 x 0.4 s now
            h = await c.get("/health")
            health_s = time.perf_counter() - t0
            assert h.status_code == 200 and h.json()["in_flight"] == 3
            return await asyncio.gather(*tasks), health_s

    with running(rr, cfg) as u:
        resps, health_s = asyncio.run(go(u))
    codes = sorted(r.status_code for r in resps)
    assert codes == [200] * 3 + [429] * 5, codes
    for r in resps:
        if r.status_code == 429:
            assert_error(r, 429, "overloaded")
            assert r.headers["retry-after"] == "1"
    assert health_s < 0.3  # answered while a 0.4 s model call runs


def test_default_queue_accepts_64_concurrent_requests() -> None:
    assert ServeConfig().max_queue >= 64
    rr = OverlapReranker(OverlapConfig(delay_s=0.02))

    async def go(u: str) -> list[int]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=u, timeout=30, limits=limits) as c:
            reqs = [c.post("/v1/rerank", json={"query": "a", "documents": ["a", "b"]}) for _ in range(64)]
            return [r.status_code for r in await asyncio.gather(*reqs)]

    with running(rr) as u:
        assert asyncio.run(go(u)) == [200] * 64


def test_window_head_past_its_depth_says_so(tiny_llm_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A window head orders a list's top ``depth``; documents past it kept their input order with scores that looked
    like the model's. The Cohere response and the log now say how many were not reranked, and /metrics counts them."""
    rr = Reranker.load("first", model=str(tiny_llm_dir), depth=5, window=3, stride=2)
    docs = [f"passage number {i} about topic {i % 3}" for i in range(8)]
    with running(rr) as u, httpx.Client(base_url=u, timeout=60) as c:
        body = c.post("/v2/rerank", json={"query": "topic 1", "documents": docs}).json()
        assert [r["index"] for r in body["results"]][5:] == [5, 6, 7]
        assert body["meta"]["warnings"] == [
            "3 of 8 documents (passages) past the first 5 were not reranked: they follow in their input order (first "
            "orders the top 5; the server's --reranker-set depth=N ranks more)"]
        assert "warnings" not in c.post("/v2/rerank", json={"query": "q", "documents": docs[:5]}).json()["meta"]
        assert metric_values(c.get("/metrics").text, "rerank_documents_unranked_total")[""] == 3
    with caplog.at_level(logging.WARNING, logger="rerank.heads.sliding_window"):
        rr.rerank("topic 1", docs)
    assert "1 of 1 lists hold more than depth=5 documents (up to 8)" in caplog.text


def test_timeout_answers_504() -> None:
    rr = OverlapReranker(OverlapConfig(delay_s=0.8))
    with running(rr, ServeConfig(timeout_s=0.2)) as u, httpx.Client(base_url=u, timeout=30) as c:
        t0 = time.perf_counter()
        r = c.post("/v1/rerank", json={"query": "a", "documents": ["a"]})
        assert time.perf_counter() - t0 < 0.7
        assert_error(r, 504, "timeout")
        from rerank.client import RemoteRerankError

        with pytest.raises(RemoteRerankError, match=r"did not answer within timeout=0.1 s"):  # the client's own
            Reranker.load("remote", base_url=u, timeout=0.1).rerank("a", ["a"])
        time.sleep(1.0)  # the abandoned calls finish; the service keeps working
        h = c.get("/health").json()
        assert h["in_flight"] == 0


def test_concurrent_requests_are_batched() -> None:
    rr = OverlapReranker(OverlapConfig(delay_s=0.05))
    cfg = ServeConfig(max_batch_size=8, max_wait_ms=20)

    async def go(u: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=u, timeout=30) as c:
            reqs = [c.post("/v2/rerank", json={"query": QUERIES[i % 4], "documents": DOCS}) for i in range(24)]
            return await asyncio.gather(*reqs)

    with running(rr, cfg) as u:
        resps = asyncio.run(go(u))
        text = httpx.get(f"{u}/metrics").text
    for i, r in enumerate(resps):
        assert [(x["index"], x["relevance_score"]) for x in r.json()["results"]] == local_ranking(QUERIES[i % 4], DOCS)
    count = metric_values(text, "rerank_batch_size_count")[""]
    total = metric_values(text, "rerank_batch_size_sum")[""]
    assert total == 24 and count < 24  # some model calls merged several requests
    le1 = metric_values(text, "rerank_batch_size_bucket")['{le="1.0"}']
    assert le1 < count  # batches > 1 in the histogram
    assert max(rr.batch_sizes) > 1 and max(rr.batch_sizes) <= 8
    reqs = metric_values(text, "rerank_requests_total")
    assert reqs['{endpoint="/v2/rerank",status="200"}'] == 24
    assert metric_values(text, "rerank_request_latency_seconds_count")['{endpoint="/v2/rerank"}'] == 24


def test_load_50_clients_x_20_requests(url: str) -> None:
    """Bounded loopback load test: zero 5xx and every response equals the in-process ranking."""
    expected = {q: local_ranking(q, DOCS) for q in QUERIES}

    async def client_loop(c: httpx.AsyncClient, k: int) -> list[tuple[int, str, list]]:
        out = []
        for i in range(20):
            q = QUERIES[(k + i) % len(QUERIES)]
            r = await c.post("/v1/rerank", json={"query": q, "documents": DOCS})
            out.append((r.status_code, q, r.json()["results"] if r.status_code == 200 else r.text))
        return out

    async def go() -> list[tuple[int, str, list]]:
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=50)) as c:
            res = await asyncio.wait_for(asyncio.gather(*[client_loop(c, k) for k in range(50)]), timeout=90)
        return [x for per in res for x in per]

    t0 = time.perf_counter()
    results = asyncio.run(go())
    elapsed = time.perf_counter() - t0
    assert len(results) == 1000
    assert [s for s, _, _ in results if s >= 500] == []
    assert all(s == 200 for s, _, _ in results)
    for _, q, res in results:
        assert [(r["index"], r["relevance_score"]) for r in res] == expected[q]
    print(f"load test: 1000 requests in {elapsed:.1f} s")


def test_remote_reranker_round_trip_equals_local(url: str) -> None:
    remote = Reranker.load("remote", base_url=url, timeout=10.0)
    local = OverlapReranker()
    docs_lists = [DOCS, DOCS[:3], [Document("a", "bm25 ranking", "title bm25"), Document("b", "cats and mats")], DOCS]
    got = remote.rerank_batch(QUERIES, docs_lists)
    want = local.rerank_batch(QUERIES, docs_lists)
    for g, w in zip(got, want):
        assert [(r.doc.id, r.score, r.rank) for r in g.results] == [(r.doc.id, r.score, r.rank) for r in w.results]
    serial = Reranker.load("remote", base_url=url, max_concurrency=1, model="any-name").rerank_batch(QUERIES, docs_lists)
    assert [g.doc_ids for g in serial] == [w.doc_ids for w in want]
    top = remote.rerank(QUERIES[0], DOCS, top_k=2)
    assert top.doc_ids == local.rerank(QUERIES[0], DOCS, top_k=2).doc_ids
    relevance = Reranker.load("remote", base_url=url, raw_scores=False).rerank(QUERIES[0], DOCS)  # another server's way
    assert [(int(r.doc.id), r.score) for r in relevance.results] == local_ranking(QUERIES[0], DOCS)
    assert "api_key" not in json.dumps(remote.describe())
    remote.close()


def test_pipeline_swaps_local_for_remote_by_configuration(url: str, tmp_path: Path) -> None:
    """``rerank eval`` config with reranker ``remote`` gives the same run file as the local head."""
    root = tmp_path / "mini"
    write_jsonl([{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(DOCS)], root / "corpus.jsonl")
    write_jsonl([{"_id": f"q{i}", "text": q} for i, q in enumerate(QUERIES)], root / "queries.jsonl")
    write_qrels({f"q{i}": {f"d{i}": 1} for i in range(len(QUERIES))}, root / "qrels" / "test.tsv", beir=True)
    write_run({f"q{i}": [(f"d{j}", 10.0 - j) for j in range(len(DOCS))] for i in range(len(QUERIES))},
              root / "run.trec")
    common = dict(dataset=str(root), first_stage=str(root / "run.trec"), top_k=5)
    local = run_eval(EvalConfig(**common, reranker="test-overlap", output=str(tmp_path / "local")), progress=False)
    remote = run_eval(
        EvalConfig(**common, reranker="remote", reranker_options={"base_url": url}, output=str(tmp_path / "remote")),
        progress=False,
    )
    assert read_run(tmp_path / "local" / "run.trec") == read_run(tmp_path / "remote" / "run.trec")
    assert local["per_query"] == remote["per_query"]
    assert (tmp_path / "local" / "scores.jsonl").read_text() == (tmp_path / "remote" / "scores.jsonl").read_text()


def test_remote_reranker_reports_server_errors() -> None:
    from rerank.client import RemoteRerankError
    from rerank.errors import ConfigError

    with pytest.raises(ConfigError, match="base_url"):
        Reranker.load("remote", base_url="127.0.0.1:8000")

    with running(OverlapReranker(), ServeConfig(api_key="k", max_doc_chars=5)) as u:
        with pytest.raises(RemoteRerankError, match="401"):
            Reranker.load("remote", base_url=u).rerank("q", ["a"])
        ok = Reranker.load("remote", base_url=u, api_key="k")
        assert ok.rerank("a", ["a", "b"]).doc_ids == ["0", "1"]
        with pytest.raises(RemoteRerankError, match="413.*limit is 5"):
            ok.rerank("q" * 6, ["a", "b"])
        os.environ["RERANK_API_KEY"] = "k"
        try:
            assert Reranker.load("remote", base_url=u).rerank("b", ["a", "b"]).doc_ids == ["1", "0"]
        finally:
            del os.environ["RERANK_API_KEY"]


def test_cli_flags_map_to_serve_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RERANK_API_KEY", raising=False)
    args = build_parser().parse_args(["serve", "--reranker", "test-overlap"])
    assert serve_config(args) == ServeConfig(model_name=None)
    argv = [
        "serve", "--reranker", "x", "--model", "m", "--host", "0.0.0.0", "--port", "9", "--api-key", "k",
        "--max-batch-size", "3", "--max-wait-ms", "7.5", "--max-queue", "70", "--timeout-s", "2",
        "--max-docs", "11", "--max-doc-chars", "12", "--max-batch-docs", "13", "--read-timeout-s", "4",
        "--max-connections", "15", "--workers", "2",
    ]
    named = serve_config(build_parser().parse_args(argv + ["--served-model-name", "my-reranker"]))
    assert named.model_name == "my-reranker"
    cfg = serve_config(build_parser().parse_args(argv))
    assert cfg == ServeConfig(
        host="0.0.0.0", port=9, api_key="k", max_batch_size=3, max_wait_ms=7.5, max_queue=70, timeout_s=2.0,
        max_docs=11, max_doc_chars=12, model_name="m", max_batch_docs=13, read_timeout_s=4.0, max_connections=15,
        workers=2,
    )
    monkeypatch.setenv("RERANK_API_KEY", "from-env")
    assert serve_config(build_parser().parse_args(["serve", "--reranker", "x"])).api_key == "from-env"
    with pytest.raises(SystemExit) as e:  # refused when the command line is parsed (one line, exit 2)
        build_parser().parse_args(["serve", "--reranker", "x", "--max-queue", "0"])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="--max-queue"):  # and by the typed config itself
        ServeConfig(max_queue=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rerank_serve_cli_subprocess(tmp_path: Path) -> None:
    """The real ``rerank serve`` command, with options from a YAML file, key from the environment and --max-docs."""
    (tmp_path / "rr.yaml").write_text("scale: 2.0\n")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RERANK_API_KEY": "envkey"}
    cmd = [
        sys.executable, str(HERE / "serve_support.py"), "serve", "--reranker", "test-overlap",
        "--reranker-config", str(tmp_path / "rr.yaml"), "--port", str(port), "--max-docs", "7",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_healthy(base, proc, 30, lambda: proc.communicate()[0])
        auth = {"Authorization": "Bearer envkey"}
        r = httpx.post(f"{base}/v1/rerank", json={"query": QUERIES[0], "documents": DOCS}, headers=auth)
        assert r.status_code == 200, r.text
        scaled = OverlapReranker(OverlapConfig(scale=2.0))
        assert [(x["index"], x["relevance_score"]) for x in r.json()["results"]] == local_ranking(
            QUERIES[0], DOCS, reranker=scaled
        )
        assert_error(httpx.post(f"{base}/v1/rerank", json={"query": "a", "documents": ["a"]}), 401)
        eight = httpx.post(f"{base}/v1/rerank", json={"query": QUERIES[1], "documents": DOCS + ["faiss"]}, headers=auth)
        assert [x["index"] for x in eight.json()["results"]] == [  # --max-docs 7: scored in two parts, merged
            i for i, _ in local_ranking(QUERIES[1], DOCS + ["faiss"])
        ]
        assert httpx.get(f"{base}/health").json()["method"] == "test-overlap"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert "Traceback" not in out


def test_rerank_serve_cli_errors() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "rerank", "serve", "--reranker", "no-such-head"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 2 and "unknown reranker 'no-such-head'" in r.stderr and "remote" in r.stderr
    cmd = [sys.executable, str(HERE / "serve_support.py"), "serve", "--reranker", "test-overlap"]
    bad = subprocess.run(cmd + ["--reranker-set", "foo=1", "--workers", "2", "--port", str(_free_port())], env=env,
                         capture_output=True, text=True, timeout=60)  # checked before any worker starts
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "unknown key 'foo'" in bad.stderr and "serving" not in bad.stderr
    with socket.socket() as busy:  # a port in use: one line, exit 2, before the model loads
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        taken = subprocess.run(cmd + ["--port", str(port)], env=env, capture_output=True, text=True, timeout=60)
    assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr, taken.stderr
    assert taken.stderr.strip().count("\n") == 0


def test_tiny_cross_encoder_served_equals_in_process(request: pytest.FixtureRequest) -> None:
    """The real cross-encoder head (tiny random BERT) behind the server: same order and scores as in process."""
    if "cross-encoder" not in available_rerankers():
        pytest.skip("the cross-encoder head is not on this branch yet")
    tiny_bert_dir = request.getfixturevalue("tiny_bert_dir")
    from rerank.testing.tokenizer import corpus_lines

    lines = [ln for ln in corpus_lines() if ln.strip()]
    docs, queries = lines[:12], lines[12:18]
    rr = Reranker.load("cross-encoder", model=str(tiny_bert_dir))
    want = {q: local_ranking(q, docs, reranker=rr) for q in queries}

    async def go(u: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=u, timeout=60) as c:
            return await asyncio.gather(*[c.post("/v2/rerank", json={"query": q, "documents": docs}) for q in queries])

    with running(rr, ServeConfig(max_batch_size=8, max_wait_ms=200)) as u:
        resps = asyncio.run(go(u))
        text = httpx.get(f"{u}/metrics").text
    assert metric_values(text, "rerank_batch_size_count")[""] < len(queries)  # merged into shared model calls
    for q, r in zip(queries, resps):
        got = [(x["index"], x["relevance_score"]) for x in r.json()["results"]]
        assert sorted(i for i, _ in got) == list(range(len(docs)))
        local = dict(want[q])
        for i, s in got:
            assert s == pytest.approx(local[i], rel=1e-5, abs=1e-6)
        # the tiny random model leaves gaps of ~1e-6 between scores and merged batches pad differently (~1e-8), so the
        # served order must agree with the in-process scores up to that rounding, and exactly where scores match
        assert all(a >= b for (_, a), (_, b) in zip(got, got[1:]))
        assert all(local[i] >= local[j] - 1e-6 for (i, _), (j, _) in zip(got, got[1:]))
        if all(s == local[i] for i, s in got):
            assert [i for i, _ in got] == [i for i, _ in want[q]]


def test_remote_reranker_retries_a_busy_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """429 / 503 are retried (``Retry-After`` honoured) up to ``max_retries``; other errors are not retried."""
    from rerank.client import RemoteReranker, RemoteRerankError

    monkeypatch.setattr(RemoteReranker, "check_server", lambda self: None)  # no server: a scripted transport

    def client(statuses: list[int], **options: Any) -> tuple[Any, list[int]]:
        calls: list[int] = []

        def handler(request: httpx.Request) -> httpx.Response:
            status = statuses[min(len(calls), len(statuses) - 1)]
            calls.append(status)
            if status != 200:
                return httpx.Response(status, headers={"Retry-After": "0"}, json={"message": "busy"})
            n = len(json.loads(request.content)["documents"])
            return httpx.Response(200, json={"results": [{"index": i, "relevance_score": -i} for i in range(n)]})

        rr = Reranker.load("remote", **options)
        rr._client = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))
        return rr, calls

    rr, calls = client([429, 503, 200])
    assert rr.rerank("q", ["a", "b"]).doc_ids == ["0", "1"]
    assert calls == [429, 503, 200]
    rr, calls = client([429], max_retries=1)
    with pytest.raises(RemoteRerankError, match=r"429 \(after 2 attempts\): busy"):
        rr.rerank("q", ["a"])
    assert calls == [429, 429]
    rr, calls = client([413])
    with pytest.raises(RemoteRerankError, match="413: busy"):
        rr.rerank("q", ["a"])
    assert calls == [413]
    with pytest.raises(ValueError, match="max_retries"):
        Reranker.load("remote", max_retries=-1)


@pytest.mark.parametrize(("error", "attempts", "match"), [
    (httpx.ConnectError, 3, "http://127.0.0.1:8000 unreachable: scripted"),
    (httpx.ReadTimeout, 1, r"http://127.0.0.1:8000 did not answer within timeout=60 s"),
])
def test_remote_reranker_retries_a_refused_connection_not_a_timeout(error: type, attempts: int, match: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection (a server still starting) is retried and ends 'unreachable'; a read timeout is not
    retried (the server may still be working on the request) and says so, naming the timeout."""
    from rerank.client import RemoteReranker, RemoteRerankError

    monkeypatch.setattr("rerank.utils.http.time.sleep", lambda s: None)
    monkeypatch.setattr(RemoteReranker, "check_server", lambda self: None)  # no server: a scripted transport
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise error("scripted", request=request)

    rr = Reranker.load("remote", max_retries=2)
    rr._client = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))
    with pytest.raises(RemoteRerankError, match=match):
        rr.rerank("q", ["a"])
    assert len(calls) == attempts


# ---------------------------------------------------------------- protocol fidelity: every documented field


def test_every_documented_field_is_accepted_and_null_means_unset(client: httpx.Client) -> None:
    """Cohere v1 (query, documents, model, top_n, rank_fields, return_documents, max_chunks_per_doc), Cohere v2
    (model, query, documents, top_n, max_tokens_per_doc, priority) and TEI (query, texts, raw_scores, return_text,
    truncate, truncation_direction; model and top_n as the rerankers library sends them)."""
    objs = [{"text": d} for d in DOCS]
    v1 = {"model": "rerank-english-v3.0", "query": QUERIES[0], "documents": objs, "top_n": 7, "rank_fields": ["text"],
          "return_documents": False, "max_chunks_per_doc": 10}
    v2 = {"model": "rerank-v3.5", "query": QUERIES[0], "documents": DOCS, "top_n": 7, "max_tokens_per_doc": 4096,
          "priority": 0}
    tei = {"query": QUERIES[0], "texts": DOCS, "raw_scores": False, "return_text": False, "truncate": True,
           "truncation_direction": "Right", "model": "BAAI/bge-reranker-base", "top_n": 7}
    want = [i for i, _ in local_ranking(QUERIES[0], DOCS)]
    for path, body, key in [("/v1/rerank", v1, "results"), ("/v2/rerank", v2, "results"), ("/rerank", tei, None)]:
        for b in (body, {k: (None if k not in ("query", "documents", "texts") else v) for k, v in body.items()}):
            r = client.post(path, json=b)
            assert r.status_code == 200, (path, b, r.text)
            results = r.json()[key] if key else r.json()
            assert [x["index"] for x in results] == want
            assert r.headers["x-model-id"] == "test-overlap"
    body = client.post("/v2/rerank", json=v2).json()
    assert body["model"] == "test-overlap" and body["meta"]["billed_units"]["search_units"] == 1
    assert body["meta"]["api_version"] == {"version": "2", "is_experimental": False}
    for path, bad, field in [("/v2/rerank", {**v2, "top_n": 0}, "top_n"),
                             ("/v2/rerank", {**v2, "priority": -1}, "priority"),
                             ("/v1/rerank", {**v1, "max_chunks_per_doc": "5"}, "max_chunks_per_doc"),
                             ("/v1/rerank", {**v1, "rank_fields": []}, "rank_fields"),
                             ("/rerank", {**tei, "truncation_direction": "up"}, "truncation_direction"),
                             ("/rerank", {**tei, "truncate": "yes"}, "truncate")]:
        assert field in assert_error(client.post(path, json=bad), 422, "invalid_request")["message"]


def test_relevance_is_calibrated_and_raw_scores_are_kept(client: httpx.Client) -> None:
    body = client.post("/v1/rerank", json={"query": QUERIES[1], "documents": DOCS, "raw_scores": True}).json()
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == local_ranking(QUERIES[1], DOCS)
    assert [(r["index"], r["raw_score"]) for r in body["results"]] == local_ranking(QUERIES[1], DOCS, raw=True)
    assert all(0.0 <= r["relevance_score"] <= 1.0 for r in body["results"])
    plain = client.post("/v2/rerank", json={"query": QUERIES[1], "documents": DOCS}).json()
    assert all("raw_score" not in r for r in plain["results"])


def test_rank_fields_rank_the_named_fields_in_order(client: httpx.Client) -> None:
    objs = [{"title": f"t{i}", "author": "bm25 ranking" if i == 5 else "anon", "text": d, "n": i}
            for i, d in enumerate(DOCS)]
    r = client.post("/v1/rerank", json={"query": QUERIES[0], "documents": objs, "rank_fields": ["author", "n"],
                                        "return_documents": True}).json()
    texts = [f"author: {o['author']}\nn: {o['n']}" for o in objs]
    assert [(x["index"], x["relevance_score"]) for x in r["results"]] == local_ranking(QUERIES[0], texts)
    assert r["results"][0]["index"] == 5 and r["results"][0]["document"] == objs[5]
    missing = client.post("/v1/rerank", json={"query": "q", "documents": [{"text": "a"}], "rank_fields": ["author"]})
    assert "documents[0] has none of the rank_fields" in assert_error(missing, 422)["message"]
    no_text = client.post("/v1/rerank", json={"query": "q", "documents": [{"body": "a"}]})
    assert "documents[0] needs a string 'text'" in assert_error(no_text, 422)["message"]


def test_document_budgets_tokens_passages_and_direction() -> None:
    """``max_tokens_per_doc`` cuts each document; ``max_chunks_per_doc`` scores up to that many passages of what the
    head reads (here 4 words) and keeps the best; TEI ``truncation_direction: Left`` keeps a long text's end and
    ``truncate: false`` refuses a text longer than the head reads."""
    rr = OverlapReranker(OverlapConfig(doc_words=4))
    q = "bm25 ranking"
    docs = ["a b c d e f bm25 ranking", "bm25 x y z", "nothing here at all"]
    with running(rr) as u, httpx.Client(base_url=u) as c:
        cut = c.post("/v2/rerank", json={"query": q, "documents": docs, "max_tokens_per_doc": 3}).json()
        want = local_ranking(q, ["a b c", "bm25 x y", "nothing here at"])
        assert [(x["index"], x["relevance_score"]) for x in cut["results"]] == want
        chunks = c.post("/v1/rerank", json={"query": q, "documents": docs, "max_chunks_per_doc": 2}).json()
        best = [max(rr.relevance([overlap(q, p)])[0] for p in ps) for ps in
                (["a b c d", "e f bm25 ranking"], ["bm25 x y z"], ["nothing here at all"])]
        assert [(x["index"], x["relevance_score"]) for x in chunks["results"]] == sorted(
            enumerate(best), key=lambda t: -t[1])
        one = c.post("/v1/rerank", json={"query": q, "documents": docs, "max_chunks_per_doc": 1}).json()
        assert [x["index"] for x in one["results"]] == [1, 0, 2]  # only "a b c d" of the first document is read
        left = c.post("/rerank", json={"query": q, "texts": docs, "truncation_direction": "Left", "raw_scores": True})
        assert [(x["index"], x["score"]) for x in left.json()] == local_ranking(
            q, ["e f bm25 ranking", "bm25 x y z", "nothing here at all"], raw=True)
        refused = c.post("/rerank", json={"query": q, "texts": docs, "truncate": False})
        assert "texts[0] has 8 tokens" in assert_error(refused, 413, "text_too_long")["message"]
        assert c.post("/rerank", json={"query": q, "texts": docs[1:], "truncate": False}).status_code == 200


def overlap(query: str, text: str) -> float:
    from serve_support import overlap_score

    return overlap_score(query, text)


def test_oversized_requests_are_scored_in_parts_and_merged() -> None:
    """Above ``max_docs`` a pointwise head scores the documents in parts (each part one queued request) and the
    ranking is merged; a head whose scores depend on the whole list answers 413; the byte limit still holds."""
    rr = OverlapReranker()
    docs = DOCS * 3
    with running(rr, ServeConfig(max_docs=4, max_body_bytes=3000)) as u, httpx.Client(base_url=u) as c:
        r = c.post("/v1/rerank", json={"query": QUERIES[0], "documents": docs})
        assert [(x["index"], x["relevance_score"]) for x in r.json()["results"]] == local_ranking(QUERIES[0], docs)
        docs_hist = metric_values(c.get("/metrics").text, "rerank_batch_documents_sum")[""]
        assert docs_hist == len(docs)
        assert max(rr.batch_sizes) >= 2  # the parts were queued together and merged into model calls
        big = json.dumps({"query": "a", "documents": ["a" * 20] * 200}).encode()
        assert_error(c.post("/v1/rerank", content=big, headers={"content-type": "application/json"}), 413,
                     "payload_too_large")

    class Listwise(OverlapReranker):
        independent_scores = False

    with running(Listwise(), ServeConfig(max_docs=4)) as u:
        r = httpx.post(f"{u}/v1/rerank", json={"query": "a", "documents": ["a"] * 5})
        assert "ranks a list as a whole" in assert_error(r, 413, "too_many_documents")["message"]

    with running(OverlapReranker(), ServeConfig(max_docs=3, max_queue=4)) as u:  # 7 parts never fit a queue of 4
        r = httpx.post(f"{u}/rerank", json={"query": "a", "texts": ["a"] * 20})
        assert "7 model calls of 3; the queue holds 4" in assert_error(r, 413, "too_many_documents")["message"]
        assert "retry-after" not in r.headers
        assert httpx.post(f"{u}/rerank", json={"query": "a", "texts": ["a"] * 12}).status_code == 200


def test_invalid_utf8_and_lone_surrogates_answer_400_naming_the_problem(client: httpx.Client) -> None:
    hdr = {"content-type": "application/json"}
    latin1 = b'{"query": "a", "documents": ["ok", "caf' + bytes([0xE9]) + b'"]}'
    msg = assert_error(client.post("/v1/rerank", content=latin1, headers=hdr), 400, "invalid_utf8")["message"]
    assert "byte 0xe9 at offset 39" in msg
    encoded_surrogate = b'{"query": "a", "texts": ["x' + bytes([0xED, 0xA0, 0x80]) + b'"]}'
    assert_error(client.post("/rerank", content=encoded_surrogate, headers=hdr), 400, "invalid_utf8")
    escaped = b'{"query": "a", "documents": ["ok", "ab\\ud800c"]}'  # valid UTF-8, valid JSON, not valid text
    msg = assert_error(client.post("/v2/rerank", content=escaped, headers=hdr), 400, "invalid_text")["message"]
    assert "documents[1] character 2" in msg and "\\ud800" in msg
    in_query = b'{"query": "\\udfff", "texts": ["a"]}'
    assert "query character 0" in assert_error(client.post("/rerank", content=in_query, headers=hdr), 400)["message"]
    pair = b'{"query": "caf\\u00e9 \\ud83d\\ude00", "documents": ["caf\\u00e9"]}'  # an escaped surrogate pair is fine
    assert client.post("/v1/rerank", content=pair, headers=hdr).status_code == 200


def test_auth_is_checked_before_the_body_is_read_and_no_docs_routes() -> None:
    with running(OverlapReranker(), ServeConfig(api_key="s3cret")) as u:
        port = int(u.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"query\"")  # a body that never comes
            s.settimeout(3)
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 401") and b"www-authenticate: Bearer" in head
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert_error(httpx.get(f"{u}{path}"), 401)
            assert_error(httpx.get(f"{u}{path}", headers={"Authorization": "Bearer s3cret"}), 404)
        assert httpx.get(f"{u}/health").status_code == 200


def test_priority_orders_a_busy_queue() -> None:
    """Cohere v2 ``priority``: with the model busy, a priority-0 request queued after a priority-5 one runs first."""
    rr = OverlapReranker(OverlapConfig(delay_s=0.3))

    async def go(u: str) -> None:
        async with httpx.AsyncClient(base_url=u, timeout=30) as c:
            busy = asyncio.create_task(c.post("/v2/rerank", json={"query": "busy", "documents": ["a"]}))
            await asyncio.sleep(0.1)
            low = asyncio.create_task(c.post("/v2/rerank", json={"query": "low", "documents": ["a"], "priority": 5}))
            await asyncio.sleep(0.05)
            high = asyncio.create_task(c.post("/v2/rerank", json={"query": "high", "documents": ["a"], "priority": 0}))
            assert all(r.status_code == 200 for r in await asyncio.gather(busy, low, high))

    with running(rr, ServeConfig(max_batch_size=1)) as u:
        asyncio.run(go(u))
    assert rr.queries == ["busy", "high", "low"]


def test_max_batch_docs_caps_one_model_call() -> None:
    rr = OverlapReranker(OverlapConfig(delay_s=0.05))
    cfg = ServeConfig(max_batch_size=32, max_batch_docs=10, max_wait_ms=100)

    async def go(u: str) -> None:
        async with httpx.AsyncClient(base_url=u, timeout=30) as c:
            reqs = [c.post("/v1/rerank", json={"query": QUERIES[0], "documents": DOCS[:4]}) for _ in range(9)]
            assert all(r.status_code == 200 for r in await asyncio.gather(*reqs))

    with running(rr, cfg) as u:
        asyncio.run(go(u))
        text = httpx.get(f"{u}/metrics").text
    assert max(rr.batch_sizes) == 2  # 2 x 4 documents fit in 10, 3 x 4 do not
    assert metric_values(text, "rerank_batch_documents_bucket")['{le="10.0"}'] == len(rr.batch_sizes)


def test_connection_cap_answers_503_and_frees_slots() -> None:
    from rerank.serve.server import connection_cap

    assert connection_cap(10**9) < 10**9 or resource_unlimited()
    with running(OverlapReranker(), ServeConfig(max_connections=5)) as u:
        port = int(u.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        extra.settimeout(3)
        assert extra.recv(4096).startswith(b"HTTP/1.1 503")
        extra.close()
        for s in held:
            s.close()
        time.sleep(0.2)
        assert httpx.post(f"{u}/v1/rerank", json={"query": "a", "documents": ["a"]}).status_code == 200


def resource_unlimited() -> bool:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] == resource.RLIM_INFINITY


def test_rate_limited_log_lines() -> None:
    import logging

    from rerank.serve.server import RateLimitFilter

    f = RateLimitFilter(interval=60)
    records = [logging.LogRecord("x", logging.WARNING, "", 0, "closed %d", (i,), None) for i in range(100)]
    passed = [r for r in records if f.filter(r)]
    assert len(passed) == 1
    other = logging.LogRecord("x", logging.WARNING, "", 0, "another event", (), None)
    assert f.filter(other)
    f.interval = 0.0
    late = logging.LogRecord("x", logging.WARNING, "", 0, "closed %d", (7,), None)
    assert f.filter(late) and "99 similar messages" in late.getMessage()


def test_head_relevance_mappings(tiny_bert_dir: Path) -> None:
    """Each head's calibration: cross-encoder logit -> sigmoid (probabilities kept), yes-no log-odds -> sigmoid,
    ERank 0-10 -> /10, listwise and FIRST positions -> /n, GroupRank already in [0, 1]."""
    from rerank.methods.erank.head import ERankReranker
    from rerank.methods.first.head import FirstReranker
    from rerank.methods.grouprank.head import GroupRankReranker
    from rerank.methods.listwise.head import ListwiseReranker
    from rerank.methods.yes_no.head import YesNoReranker

    ce = Reranker.load("cross-encoder", model=str(tiny_bert_dir))
    assert ce.relevance([0.0, 2.0, -800.0]) == pytest.approx([0.5, 1 / (1 + math.exp(-2.0)), 0.0])
    assert Reranker.load("cross-encoder", model=str(tiny_bert_dir), sigmoid=True).relevance([0.25]) == [0.25]
    assert ce.independent_scores and ce.document_token_limit("one two") < ce.max_length

    def bare(cls: type) -> Any:  # the mappings read no model state
        return object.__new__(cls)

    assert bare(YesNoReranker).relevance([0.0, math.log(3)]) == pytest.approx([0.5, 0.75])  # P(yes)=3 P(no)
    assert bare(ERankReranker).relevance([0.0, 7.2, 10.0]) == pytest.approx([0.0, 0.72, 1.0])
    for cls in (ListwiseReranker, FirstReranker):
        assert bare(cls).relevance([4.0, 1.0, 3.0, 2.0]) == [1.0, 0.25, 0.75, 0.5]
        assert not cls.independent_scores
    assert bare(GroupRankReranker).relevance([0.3, 1.0]) == [0.3, 1.0] and not GroupRankReranker.independent_scores
    assert YesNoReranker.independent_scores and ERankReranker.independent_scores


@pytest.mark.parametrize("method", ["cross-encoder", "yes-no", "listwise"])
def test_a_20000_character_query_is_served(method: str, request: pytest.FixtureRequest) -> None:
    """A query at the server's character limit (20,000) is ranked, as in process, by the cross-encoder (whose pair is
    cut longest-first) and the LLM heads (whose prompts are fitted), with and without per-document token budgets."""
    from rerank.testing.tokenizer import corpus_lines

    model = request.getfixturevalue("tiny_bert_dir" if method == "cross-encoder" else "tiny_llm_dir")
    options = {"window": 4, "stride": 2} if method == "listwise" else {}
    rr = Reranker.load(method, model=str(model), device="cpu", **options)
    query = (" ".join(corpus_lines()) * 3)[:20_000]
    docs = corpus_lines()[:5]
    want = local_ranking(query, docs, reranker=rr)
    with running(rr) as u, httpx.Client(base_url=u, timeout=120) as c:
        r = c.post("/v2/rerank", json={"query": query, "documents": docs})
        assert r.status_code == 200, r.text
        got = [(x["index"], x["relevance_score"]) for x in r.json()["results"]]
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-5, abs=1e-6)
        budget = c.post("/v2/rerank", json={"query": query, "documents": docs, "max_tokens_per_doc": 8,
                                            "max_chunks_per_doc": 2})
        assert budget.status_code == 200, budget.text
        assert sorted(x["index"] for x in budget.json()["results"]) == list(range(5))
        too_long = c.post("/v2/rerank", json={"query": query + "x", "documents": docs})
        assert_error(too_long, 413, "text_too_long")
