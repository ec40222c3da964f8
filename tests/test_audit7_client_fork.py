"""The remote reranker across ``os.fork`` (gunicorn ``--preload``): each child process uses its own connections, so
every child gets its own ranking; and a 200 answer that is not a rerank answer is a one-line ``RemoteRerankError``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank.client import RemoteReranker, RemoteRerankError
from rerank.heads.base import Reranker

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from serve_support import OverlapReranker, serving  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork exists only on POSIX")

CHILDREN = 4
ROUNDS = 3
WORDS = ["bm25", "paris", "dense", "cats", "neural"]


def child_task(c: int) -> tuple[str, list[str]]:
    """Child ``c``'s query and 5 documents: a ranking (ids and scores) no other child's task gives."""
    word = WORDS[c]
    return f"q{c} {word}", [" ".join([word] * ((k + c) % 5) + ["filler"] * (k + 1)) for k in range(5)]


def key(result: Any) -> list[tuple[str, float]]:
    return [(r.doc.id, round(r.score, 6)) for r in result.results]


@contextlib.contextmanager
def recording_server() -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """``rerank serve``'s app on the word-overlap head in a uvicorn thread; yields its URL and the (path, client
    port) of every request it received."""
    seen: list[tuple[str, int]] = []

    def recording(app: Any) -> Any:
        async def recorded(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append((scope["path"], scope["client"][1]))
            await app(scope, receive, send)
        return recorded

    with serving(OverlapReranker(), wrap=recording) as (url, _):
        yield url, seen


def run_child(rr: Reranker, c: int, want: list[tuple[str, float]], go: int, out: int) -> None:
    """In a forked child: wait for ``go`` to close, rank child ``c``'s task (3 parallel requests, then 3 single
    ones), and write a JSON report to ``out``; never returns."""
    report: dict[str, Any] = {"child": c, "wrong": [], "errors": []}
    try:
        signal.alarm(30)
        os.read(go, 1)  # every child starts together: their requests overlap
        query, docs = child_task(c)
        got = [key(r) for r in rr.rerank_batch([query] * 3, [docs] * 3)]
        for _ in range(3):
            try:
                got.append(key(rr.rerank(query, docs)))
            except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the test
                report["errors"].append(repr(e)[:300])
        report["wrong"] = [g for g in got if g != want]
    except BaseException as e:  # noqa: BLE001
        report["errors"].append(repr(e)[:300])
    finally:
        os.write(out, (json.dumps(report) + "\n").encode())
        os._exit(0)


def test_forked_children_get_their_own_connections_and_rankings() -> None:
    """A remote reranker loaded in the parent (its ``GET /health`` leaves a pooled keep-alive connection), then 4
    forked children ranking different queries at once, 3 rounds: every child gets exactly its own ranking, none of
    the children's requests travels on the parent's connection, and the parent's reranker still works."""
    local = OverlapReranker()
    wants = [key(local.rerank(*child_task(c))) for c in range(CHILDREN)]
    assert len({json.dumps(w) for w in wants}) == CHILDREN  # a mixed-up answer cannot look right
    with recording_server() as (url, seen):
        for _ in range(ROUNDS):
            rr = Reranker.load("remote", base_url=url, timeout=10.0, max_retries=0)
            assert seen[-1][0] == "/health"
            parent_port = seen[-1][1]
            start = len(seen)
            go_r, go_w = os.pipe()
            out_r, out_w = os.pipe()
            pids = []
            for c in range(CHILDREN):
                pid = os.fork()
                if pid == 0:
                    os.close(go_w)
                    os.close(out_r)
                    run_child(rr, c, wants[c], go_r, out_w)
                pids.append(pid)
            os.close(go_r)
            os.close(out_w)
            os.close(go_w)  # go
            with os.fdopen(out_r) as f:
                reports = [json.loads(line) for line in f]
            codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
            assert codes == [0] * CHILDREN
            assert sorted(r["child"] for r in reports) == list(range(CHILDREN))
            for r in reports:
                assert r["errors"] == [] and r["wrong"] == [], r
            child_requests = seen[start:]
            assert len(child_requests) == CHILDREN * 6
            assert parent_port not in {port for _, port in child_requests}
            assert key(rr.rerank(*child_task(1))) == wants[1]  # the parent's client is intact
            rr.close()


def test_close_in_a_child_leaves_the_parents_connection_alone() -> None:
    """``close()`` in a child that never sent a request does not touch the inherited client; after a request it
    closes the child's own."""
    with recording_server() as (url, seen):
        rr = Reranker.load("remote", base_url=url, timeout=10.0)
        inherited = rr._client
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                rr.close()
                untouched = not inherited.is_closed
                rr.rerank("bm25", ["bm25", "cats"])
                own = rr._client
                rr.close()
                ok = untouched and own is not inherited and own.is_closed and not inherited.is_closed
            finally:
                os.write(w, b"1" if ok else b"0")
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"1"
        os.waitpid(pid, 0)
        assert not rr._client.is_closed and rr._client is inherited
        assert rr.rerank("bm25", ["cats", "bm25"]).doc_ids == ["1", "0"]
        rr.close()


@pytest.mark.parametrize(("body", "content_type"), [
    (b"<html>\n  gateway login page\n</html>", "text/html"),
    (b'["not", "an", "answer"]', "application/json"),
    (b'{"data": []}', "application/json"),
    (b'{"results": [{"index": 0}]}', "application/json"),
])
def test_a_200_answer_that_is_not_a_rerank_answer_is_one_line(body: bytes, content_type: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RemoteReranker, "check_server", lambda self: None)  # no server: a scripted transport
    rr = Reranker.load("remote", base_url="http://user:pw@proxy.example:9000")
    rr._client = httpx.Client(base_url="http://test", transport=httpx.MockTransport(
        lambda request: httpx.Response(200, content=body, headers={"content-type": content_type})))
    with pytest.raises(RemoteRerankError) as err:
        rr.rerank("q", ["a", "b"])
    msg = str(err.value)
    assert "\n" not in msg and "pw" not in msg
    assert "proxy.example:9000 answered 200 without a rerank answer" in msg
    assert " ".join(body.decode().split())[:40] in msg


def test_an_index_outside_the_list_is_named() -> None:
    rr = RemoteReranker()
    rr._client = httpx.Client(base_url="http://test", transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 0.5},
                                                              {"index": -1, "relevance_score": 0.1}]})))
    with pytest.raises(RemoteRerankError, match="returned index -1 for 2 documents"):
        rr.rerank("q", ["a", "b"])
