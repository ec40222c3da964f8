"""``rerank serve`` answers in the shapes clients beyond Cohere's and TEI's read (wire level, no client packages):
Jina's and Infinity's ``usage`` and ``detail``, a JSON body on the raw 408 / 503, the validator's own message on a 422,
``HEAD /health`` for load balancers, and the loaded dtype in ``/info``."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from serve_support import OverlapReranker
from test_serve import assert_error, running

from rerank.heads.base import Reranker
from rerank.serve import ServeConfig
from rerank.serve.app import model_dtype
from rerank.serve.batcher import Batcher
from rerank.serve.documents import token_counter
from rerank.types import Candidate, Document


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running(OverlapReranker(), ServeConfig(api_key="k", max_docs=2)) as u:
        yield u


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": "Bearer k"}) as c:
        yield c


def _usage(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"]
    return usage


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_cohere_responses_carry_usage_counted_as_the_head_reads(client: httpx.Client, path: str) -> None:
    """A head without a tokenizer counts whitespace words: the query once, then every document as handed to the head
    (its title, the server's cuts), across the parts a request over --max-docs (2 here) is scored in."""
    docs = ["cats sleep all day", "dogs bark", {"text": "birds sing", "title": "Birds"}]
    full = client.post(path, json={"query": "do cats sleep", "documents": docs})
    assert _usage(full)["total_tokens"] == 3 + 4 + 2 + 3
    cut = client.post(path, json={"query": "cats", "documents": docs, "max_tokens_per_doc": 1})
    assert _usage(cut)["total_tokens"] == 1 + 1 + 1 + 2  # each text cut to one word; the title is not cut
    chunks = client.post(path, json={"query": "cats", "documents": ["a b c d e"], "max_chunks_per_doc": 2})
    assert _usage(chunks)["total_tokens"] == 1 + 5
    tei = client.post("/rerank", json={"query": "cats", "texts": ["a b"]})
    assert tei.status_code == 200 and isinstance(tei.json(), list)  # TEI's shape is a bare list, as TEI's


@pytest.mark.parametrize(("method", "folder"), [("cross-encoder", "tiny_bert_dir"), ("yes-no", "tiny_llm_dir")])
def test_usage_counts_the_models_own_tokens(method: str, folder: str, request: pytest.FixtureRequest) -> None:
    """The head's tokenizer counts (sub-word pieces, no special tokens); ``/info`` names the torch model's dtype (the
    cross-encoder's own model, the LLM head's transformers backend's)."""
    rr = Reranker.load(method, model=str(request.getfixturevalue(folder)), device="cpu")
    query, docs = "what is bm25 ranking?", ["BM25 is a ranking function", "unbelievably tokenised words"]
    want = sum(len(rr.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in [query, *docs])
    assert want != sum(len(t.split()) for t in [query, *docs])  # sub-word pieces: the count is not the words'
    with running(rr) as u:
        r = httpx.post(f"{u}/v2/rerank", json={"query": query, "documents": docs}, timeout=30)
        assert _usage(r) == {"prompt_tokens": want, "total_tokens": want}
        assert httpx.get(f"{u}/info").json()["model_dtype"] == "float32"


def test_a_failing_token_count_drops_usage_not_the_ranking() -> None:
    import asyncio

    def broken(texts: object) -> list[int]:
        raise RuntimeError("tokenizer exploded")

    async def go() -> tuple:
        b = Batcher(OverlapReranker(), count_tokens=broken)
        await b.start()
        try:
            cands = [Candidate(Document("0", "a b")), Candidate(Document("1", "c"))]
            return await b.submit("a", cands, 10, count=["a", "a b", "c"]), await b.submit("a", cands, 10)
        finally:
            await b.stop()

    counted, plain = asyncio.run(go())
    assert counted.tokens is None and len(counted.result.results) == 2 and plain.tokens is None
    assert token_counter(OverlapReranker())(["a  b\tc", ""]) == [3, 0]  # no tokenizer: whitespace words


def test_error_bodies_carry_detail(client: httpx.Client, url: str) -> None:
    for resp in (
        client.post("/v1/rerank", json={"query": "", "documents": ["a"]}),
        client.post("/v2/rerank", json={"query": "a", "documents": []}),
        httpx.post(f"{url}/v1/rerank", json={"query": "a", "documents": ["a"]}),  # no key: the middleware's 401
    ):
        body = assert_error(resp, resp.status_code)
        assert body["detail"] == body["message"]


def test_a_validators_message_has_no_pydantic_prefix(client: httpx.Client) -> None:
    for path, body in (("/v1/rerank", {"query": " ", "documents": ["a"]}), ("/rerank", {"query": "", "texts": ["a"]})):
        msg = assert_error(client.post(path, json=body), 422, "invalid_request")["message"]
        assert msg == "query must not be empty: there is nothing to rank the documents against"
    msg = assert_error(client.post("/v1/rerank", json={"query": "a", "documents": ["a"], "rank_fields": []}), 422)
    assert msg["message"] == "rank_fields must be a non-empty list of field names"
    msg = assert_error(client.post("/v2/rerank", json={"query": "a", "documents": ["a"], "top_n": 0}), 422)
    assert msg["message"].startswith("top_n: ")  # pydantic's own constraints keep naming the field


def test_head_health_answers_like_get(client: httpx.Client, url: str) -> None:
    head = httpx.head(f"{url}/health")  # open without the key, as GET
    assert head.status_code == 200 and head.content == b""
    assert client.get("/health").status_code == 200


def _raw_answer(sock: socket.socket, wait_s: float) -> tuple[bytes, dict[str, str], bytes]:
    """Status line, headers and body of what the server sends before closing ``sock``."""
    sock.settimeout(wait_s)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status.encode(), headers, body


def _assert_json_error(headers: dict[str, str], body: bytes, error_type: str, needle: str) -> None:
    assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)
    parsed = json.loads(body)
    assert parsed["error_type"] == error_type and needle in parsed["message"]
    assert parsed["message"] == parsed["error"] == parsed["detail"]


def test_connection_cap_503_and_read_timeout_408_have_json_bodies() -> None:
    with running(OverlapReranker(), ServeConfig(max_connections=1, read_timeout_s=0.5)) as u:
        port = int(u.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
            held.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            time.sleep(0.1)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                status, headers, body = _raw_answer(extra, 3)
            assert status.startswith(b"HTTP/1.1 503") and headers["retry-after"] == "1"
            _assert_json_error(headers, body, "too_many_connections", "--max-connections")
            status, headers, body = _raw_answer(held, 5)
        assert status.startswith(b"HTTP/1.1 408")
        _assert_json_error(headers, body, "read_timeout", "within 0.5 s")
        metrics = httpx.get(f"{u}/metrics", timeout=5).text  # the socket-level answers are counted like the app's
        assert 'rerank_errors_total{error_type="too_many_connections"} 1.0' in metrics
        assert 'rerank_errors_total{error_type="read_timeout"} 1.0' in metrics


def test_model_dtype_reports_what_is_loaded() -> None:
    """The torch model's dtype wherever the head holds it; int8 for an ONNX-quantized run; a backend's resolved dtype;
    the dtype option; else unknown (never "auto")."""
    bf16 = torch.nn.Linear(2, 2).to(torch.bfloat16)
    cached_llm = SimpleNamespace(backend=SimpleNamespace(inner=SimpleNamespace(model=bf16)))
    assert model_dtype(cached_llm, {"config": {"dtype": "auto"}}) == "bfloat16"
    onnx = SimpleNamespace(model=torch.nn.Linear(2, 2), runner=SimpleNamespace(quantize="int8"))
    assert model_dtype(onnx, {}) == "int8"
    assert model_dtype(SimpleNamespace(model=torch.nn.Linear(2, 2)), {}) == "float32"
    vllm = {"config": {"dtype": "auto"}, "backend": {"resolved_dtype": "torch.float16"}}
    assert model_dtype(SimpleNamespace(backend=SimpleNamespace(llm=object())), vllm) == "float16"
    assert model_dtype(SimpleNamespace(), {"config": {"dtype": "bfloat16"}}) == "bfloat16"
    assert model_dtype(SimpleNamespace(), {"config": {"dtype": "auto"}}) == "unknown"
    assert model_dtype(OverlapReranker(), OverlapReranker().describe()) == "unknown"


def test_tokens_are_counted_beside_the_model_with_a_tokenizer_of_their_own(tiny_bert_dir: Path) -> None:
    """Counting ran on the model thread, adding a second tokenisation of every request to the model's critical path;
    it runs on a thread of its own, with its own copy of the tokenizer (a fast tokenizer is not safe to share)."""
    import asyncio
    import threading

    rr = Reranker.load("cross-encoder", model=str(tiny_bert_dir), device="cpu")
    count = token_counter(rr)
    threads: list[str] = []

    def recording(texts: object) -> list[int]:
        threads.append(threading.current_thread().name)
        return count(texts)  # type: ignore[arg-type]

    async def go() -> object:
        b = Batcher(rr, count_tokens=recording)
        await b.start()
        try:
            return await b.submit("bm25", [Candidate(Document("0", "ranking function"))], 10, count=["bm25", "ranking"])
        finally:
            await b.stop()

    scored = asyncio.run(go())
    want = sum(len(rr.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ["bm25", "ranking"])
    assert scored.tokens == want  # type: ignore[attr-defined]
    assert threads and all(t.startswith("rerank-count") for t in threads)
    assert count.__closure__ is not None and all(c.cell_contents is not rr.tokenizer for c in count.__closure__)
