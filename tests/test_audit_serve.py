"""``rerank serve`` and ``rerank.client`` audit fixes: keep-alive races, titled passages, API keys, non-finite options,
and the documented relevance of every head."""

from __future__ import annotations

import json
import math
import re
import socket
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from rerank.errors import ConfigError
from rerank.heads.base import Reranker, RerankerConfig
from rerank.heads.registry import available_rerankers
from rerank.serve import ServeConfig
from rerank.serve.documents import Budget, make_passages
from rerank.serve.server import uvicorn_config
from rerank.types import Candidate, Query

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from serve_support import serving


class FirstWords(Reranker):
    """Reads only the first ``LIMIT`` whitespace words of a document's title and text (as a head cuts what it reads)
    and scores how many of them are query words; no tokenizer, so the server counts words too."""

    method = "test-first-words"
    config_class = RerankerConfig
    independent_scores = True
    LIMIT = 6

    def document_token_limit(self, query: str) -> int | None:
        return self.LIMIT

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        words = set(query.text.split())
        return [float(sum(w in words for w in c.doc.full_text().split()[: self.LIMIT])) for c in candidates]


running = serving  # (URL, port) of a server in a thread


def read_request(conn: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 request (head and body by Content-Length) from ``conn``, and the bytes after it; None at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    size = int(m.group(1)) if m else 0
    while len(rest) < size:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head + b"\r\n\r\n" + rest[:size], rest[size:]


def get_health(conn: socket.socket) -> bytes:
    """Send ``GET /health`` on a kept-alive connection and read the whole response."""
    conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    got = read_request(conn)  # a response has the same head / Content-Length body framing
    assert got is not None, "the server closed the connection"
    return got[0]


# ---------------------------------------------------------------- 1. keep-alive: the server outlasts client pools


def test_server_keeps_idle_connections_longer_than_client_pools() -> None:
    """A server closing idle connections at the clients' own pool expiry (httpx: 5 s) races their next request."""
    config = uvicorn_config(object(), ServeConfig())
    pool_expiries = (httpx.Limits().keepalive_expiry or 5.0, 15.0)  # httpx (Cohere SDK, LangChain, ...), aiohttp
    assert config.timeout_keep_alive >= 60 and config.timeout_keep_alive > max(pool_expiries)
    assert "closes after 65 s" in (REPO / "docs" / "serve.md").read_text()


def test_idle_connections_make_room_at_the_connection_cap() -> None:
    """Kept-alive connections idle between requests do not lock out new clients: at the cap, the longest-idle one is
    closed and the new connection is served; connections in the middle of a request are never closed for it."""
    with running(FirstWords(), ServeConfig(max_connections=2)) as (_, port):
        older = socket.create_connection(("127.0.0.1", port), timeout=5)
        newer = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert get_health(older).startswith(b"HTTP/1.1 200")
        assert get_health(newer).startswith(b"HTTP/1.1 200")
        fresh = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert get_health(fresh).startswith(b"HTTP/1.1 200")
        assert older.recv(100) == b""  # closed to make room
        assert get_health(newer).startswith(b"HTTP/1.1 200")
        for s in (older, newer, fresh):
            s.close()
    with running(FirstWords(), ServeConfig(max_connections=2)) as (_, port):
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]  # no request sent
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert extra.recv(4096).startswith(b"HTTP/1.1 503")  # nothing idle to close: refused as before
        for s in [*stalled, extra]:
            s.close()


class ClosingServer:
    """A server that answers the first request on each connection (kept alive) and closes the connection when the
    next one arrives without answering, as a server does that closes an idle connection just as a request comes:
    ``reset`` closes with a TCP reset (the client reads "connection reset by peer") instead of a clean close."""

    def __init__(self, reset: bool) -> None:
        self.reset = reset
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.answered = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            got = read_request(conn)
            if got is None:
                return
            n = len(json.loads(got[0].split(b"\r\n\r\n", 1)[1])["documents"])
            body = json.dumps({"results": [{"index": i, "relevance_score": 1.0 - i / n} for i in range(n)]}).encode()
            self.answered += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), body))
            if read_request(conn, got[1]) is not None and self.reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_remote_reranker_resends_a_request_the_server_closed_unanswered(reset: bool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The second call goes out on the pooled connection, which the server closes unanswered
    (``RemoteProtocolError`` / ``ReadError``): it is sent again on a new connection, not reported unreachable."""
    from rerank.client import RemoteReranker

    monkeypatch.setattr("rerank.utils.http.time.sleep", lambda s: None)
    monkeypatch.setattr(RemoteReranker, "check_server", lambda self: None)  # the scripted server answers rerank POSTs
    server = ClosingServer(reset)
    rr = Reranker.load("remote", base_url=f"http://127.0.0.1:{server.port}", max_retries=1)
    try:
        assert rr.rerank("q", ["a", "b"]).doc_ids == ["0", "1"]
        assert rr.rerank("q", ["a", "b", "c"]).doc_ids == ["0", "1", "2"]
        assert (server.connections, server.answered) == (2, 2)
    finally:
        rr.close()
        server.close()


@pytest.mark.parametrize("error", [httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError])
def test_a_connection_closed_before_the_answer_is_retried_and_not_called_unreachable(
        error: type[httpx.TransportError], monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.client import RemoteReranker, RemoteRerankError

    monkeypatch.setattr("rerank.utils.http.time.sleep", lambda s: None)
    monkeypatch.setattr(RemoteReranker, "check_server", lambda self: None)  # no server: a scripted transport
    calls: list[int] = []

    def script(fail: int) -> Callable[[httpx.Request], httpx.Response]:
        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(1)
            if len(calls) <= fail:
                raise error("Server disconnected without sending a response.", request=request)
            return httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 0.5}]})
        return handler

    rr = Reranker.load("remote", max_retries=2)
    rr._client = httpx.Client(base_url="http://test", transport=httpx.MockTransport(script(2)))
    assert rr.rerank("q", ["a"]).doc_ids == ["0"] and len(calls) == 3
    calls.clear()
    rr._client = httpx.Client(base_url="http://test", transport=httpx.MockTransport(script(5)))
    with pytest.raises(RemoteRerankError, match=r"closed the connection without answering \(after 3 attempts\)") as e:
        rr.rerank("q", ["a"])
    assert "unreachable" not in str(e.value) and len(calls) == 3


# ---------------------------------------------------------------- 2. passages leave room for the title


def test_passages_leave_room_for_the_title_so_every_word_is_read() -> None:
    """The head reads the title before each passage: windows of the whole budget lost the last title-length words of
    every passage (never scored); now a keyword there changes the document's score."""
    rr = FirstWords()
    title = "t1 t2 t3"
    words = [f"w{i}" for i in range(12)]
    passages = make_passages(rr, "cats", [(" ".join(words), title)], Budget(max_chunks=10))
    read = [w for c in passages.candidates for w in c.doc.full_text().split()[: FirstWords.LIMIT] if w in words]
    assert read == words  # every word read exactly once
    assert all(len(c.doc.full_text().split()) <= FirstWords.LIMIT for c in passages.candidates)
    with running(rr) as (url, _), httpx.Client(base_url=url) as client:
        def score(pos: int | None) -> float:
            text = " ".join("cats" if i == pos else w for i, w in enumerate(words))
            body = {"query": "cats", "documents": [{"text": text, "title": title}], "max_chunks_per_doc": 10,
                    "raw_scores": True}
            return client.post("/v1/rerank", json=body).json()["results"][0]["raw_score"]

        assert score(None) == 0.0
        assert score(4) == 1.0  # word 4: in the first 6-word window, behind the title's 3 words
        truncated = client.post("/rerank", json={"query": "cats", "texts": [" ".join(words)], "truncate": False})
        assert truncated.status_code == 413  # no title: the whole budget, 6 words


def test_titled_passages_fit_a_real_tokenizer(tiny_bert_dir: Path) -> None:
    """With the tiny BERT cross-encoder (WordPiece), each titled passage fits ``max_length`` with the query, so the
    model reads all of it, and a keyword at the end of the first passage changes the score."""
    rr = Reranker.load("cross-encoder", model=str(tiny_bert_dir), max_length=64)
    title = " ".join(["the"] * 12)
    text = " ".join(["the"] * 150)
    passages = make_passages(rr, "cats", [(text, title)], Budget(max_chunks=10))
    lengths = [len(rr.tokenizer("cats", c.doc.full_text())["input_ids"]) for c in passages.candidates]
    assert max(lengths) <= 64 and sum(len(c.doc.text.split()) for c in passages.candidates) == 150
    last = len(passages.candidates[0].doc.text.split()) - 1  # the first passage's last word
    words = text.split()
    words[last] = "cats"
    keyed = make_passages(rr, "cats", [(" ".join(words), title)], Budget(max_chunks=10)).candidates[0]
    first = passages.candidates[0].doc.full_text()
    plain, with_key = rr.score_pairs([("cats", first), ("cats", keyed.doc.full_text())])
    assert plain != with_key
    rr.close()


# ---------------------------------------------------------------- 3. API keys HTTP clients can send


@pytest.mark.parametrize(("key", "problem"), [
    ("pässwörd", "non-ASCII character at position 2"),
    ("s3cret\n", "control character"),
    ("a\tb", "control character"),
    (" s3cret", "starts or ends with a space"),
])
def test_a_key_http_clients_cannot_send_is_refused(key: str, problem: str, monkeypatch: pytest.MonkeyPatch,
                                                   run_cli: Callable[..., tuple[int, str, str]]) -> None:
    with pytest.raises(ValueError, match=problem) as e:
        ServeConfig(api_key=key)
    assert key.strip() not in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("RERANK_API_KEY", key)
    rc, _, err = run_cli("serve", "--reranker", "cross-encoder", "--model", "never-loaded")
    assert rc == 2 and problem in err and err.strip().count("\n") == 0, err
    with pytest.raises(ConfigError, match=rf"^\$RERANK_API_KEY .*{problem}"):
        Reranker.load("remote")
    monkeypatch.delenv("RERANK_API_KEY")
    with pytest.raises(ConfigError, match=rf"^api_key .*{problem}"):
        Reranker.load("remote", api_key=key)


def test_a_printable_key_is_accepted_and_sent() -> None:
    assert ServeConfig(api_key="a b~!").api_key == "a b~!"
    with running(FirstWords(), ServeConfig(api_key="a b~!")) as (url, _):
        rr = Reranker.load("remote", base_url=url, api_key="a b~!")
        assert rr.rerank("w0", ["w1", "w0"]).doc_ids == ["1", "0"]
        rr.close()


# ---------------------------------------------------------------- 4. non-finite float options


@pytest.mark.parametrize("name", ["timeout_s", "read_timeout_s", "max_wait_ms"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_float_options_are_refused(name: str, value: float) -> None:
    floats = [f for f, t in ServeConfig.__annotations__.items() if t == "float"]
    assert sorted(floats) == sorted(["max_wait_ms", "timeout_s", "read_timeout_s"])  # every float option is covered
    with pytest.raises(ValueError, match=rf"^--{name.replace('_', '-')} must be a finite number"):  # the flag
        ServeConfig(**{name: value})


def test_nan_on_the_command_line_is_one_line_exit_2(run_cli: Callable[..., tuple[int, str, str]]) -> None:
    for flag in ("--read-timeout-s", "--timeout-s", "--max-wait-ms"):
        rc, _, err = run_cli("serve", "--reranker", "cross-encoder", "--model", "never-loaded", flag, "nan")
        assert rc == 2 and "must be a finite number" in err and err.strip().count("\n") == 0, err
    from rerank.client import RemoteRerankerConfig

    with pytest.raises(ValueError, match="timeout must be a finite number"):
        RemoteRerankerConfig(timeout=math.nan)


# ---------------------------------------------------------------- 5. the relevance table names every head


def test_relevance_table_lists_every_head() -> None:
    doc = (REPO / "docs" / "serve.md").read_text()
    section = doc.split("## Scores", 1)[1].split("\n## ", 1)[0]
    listed = {name for line in section.splitlines() if line.startswith("| `")
              for name in re.findall(r"`([a-z0-9-]+)`", line.split("|")[1])}
    heads = set(available_rerankers()) - {"remote"} - {n for n in available_rerankers() if n.startswith("test-")}
    assert heads <= listed, sorted(heads - listed)
    assert "any other head" not in section
