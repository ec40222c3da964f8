"""Audit s41 of ``rerank serve``: worker deaths and stops under ``--workers N``, the port while workers load, exit
statuses on SIGTERM / SIGINT, and queries with no character the model reads.

Run as a script, this file registers ``test-slow-load`` (the word-overlap head of ``serve_support``, whose load
sleeps ``$SLOW_LOAD_S`` seconds) and runs the real ``rerank`` CLI, as ``serve_support.py`` does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from serve_support import OverlapReranker, serving, wait_until_healthy  # noqa: E402

STARTED = "started 2 worker processes"
LOADING = "test-slow-load: loading"


class SlowLoad(OverlapReranker):
    """The word-overlap head, whose load takes ``$SLOW_LOAD_S`` seconds (a model being read)."""

    method = "test-slow-load"

    @classmethod
    def from_options(cls, model: str | None = None, backend: str = "transformers", **options: Any) -> OverlapReranker:
        print(LOADING, file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("SLOW_LOAD_S", "0")))
        return super().from_options(model=model, backend=backend, **options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _server(tmp_path: Path, workers: int, load_s: float = 0.0, *args: str) -> Iterator[tuple[subprocess.Popen, str,
                                                                                              Path]]:
    """``rerank serve --reranker test-slow-load --workers N`` in its own process group (as a terminal's job: a
    Ctrl-C reaches every process of it); yields the process, its URL and its log, and kills what is left after."""
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "SLOW_LOAD_S": str(load_s)}
    env.pop("RERANK_API_KEY", None)
    cmd = [sys.executable, __file__, "serve", "--reranker", "test-slow-load", "--port", str(port), "--threads", "1",
           "--workers", str(workers), *args]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _wait_for_log(proc: subprocess.Popen, log: Path, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def _worker_pids(base: str) -> set[int]:
    """The pids of both workers, from /health over new connections (the kernel spreads them)."""
    pids: set[int] = set()
    deadline = time.monotonic() + 20
    while len(pids) < 2 and time.monotonic() < deadline:
        with httpx.Client(timeout=5) as c:
            pids.add(c.get(f"{base}/health").json()["pid"])
    assert len(pids) == 2, pids
    return pids


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ---------------------------------------------------------------- 1. a worker SIGTERMed alone is a death


def test_a_worker_stopped_alone_by_sigterm_stops_the_service_with_status_1(tmp_path: Path) -> None:
    """The parent did not ask for it: it logs the death in one line, stops the other worker and exits 1 (it used to
    go on with one worker, silently, and exit 0 later)."""
    with _server(tmp_path, 2) as (proc, base, log):
        wait_until_healthy(base, proc, 60, lambda: log.read_text()[-3000:])
        victim, other = sorted(_worker_pids(base))
        os.kill(victim, signal.SIGTERM)
        assert proc.wait(timeout=30) == 1, log.read_text()[-3000:]
        text = log.read_text()
        assert f"worker {victim} was killed by SIGTERM; stopping the others" in text, text[-3000:]
        assert text.count("ERROR") == 1, text[-3000:]
        deadline = time.monotonic() + 10
        while not _gone(other):
            assert time.monotonic() < deadline, f"worker {other} still runs"
            time.sleep(0.1)


# ---------------------------------------------------------------- 2. and minor: stops and their exit statuses


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_while_the_model_loads_is_interrupted_130(tmp_path: Path, workers: int) -> None:
    """SIGINT to the process group (Ctrl-C) during the load: ``interrupted`` and 130 with one worker or two (two used
    to give an ERROR line, 'worker exited with status -2', and 1)."""
    with _server(tmp_path, workers, 30) as (proc, _, log):
        _wait_for_log(proc, log, LOADING)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130, log.read_text()[-3000:]
        text = log.read_text()
        assert text.rstrip().endswith("interrupted") and "ERROR" not in text and "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_requests_in_flight_refuses_new_ones_and_exits_0(tmp_path: Path, workers: int) -> None:
    """A supervisor's stop (SIGTERM to the main process): the request in flight is answered, a new connection is
    refused at once, and the exit status is 0 with one worker or several (one worker used to exit 143)."""
    with _server(tmp_path, workers, 0, "--reranker-set", "delay_s=2") as (proc, base, log):
        wait_until_healthy(base, proc, 60, lambda: log.read_text()[-3000:])
        answer: dict[str, Any] = {}

        def call() -> None:
            answer["r"] = httpx.post(f"{base}/v1/rerank", json={"query": "a", "documents": ["a", "b"]}, timeout=30)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.7)  # the request is being scored
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert caller.is_alive()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=2).close()
        caller.join(timeout=30)
        assert answer["r"].status_code == 200, answer["r"].text
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "stopped on SIGTERM" in text and "ERROR" not in text and "terminated" not in text, text[-3000:]


def test_ctrl_c_once_serving_is_interrupted_130_with_workers(tmp_path: Path) -> None:
    """Ctrl-C once both workers serve: ``interrupted`` and 130, as one worker gives (it used to be 0)."""
    with _server(tmp_path, 2) as (proc, base, log):
        wait_until_healthy(base, proc, 60, lambda: log.read_text()[-3000:])
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130, log.read_text()[-3000:]
        text = log.read_text()
        assert text.rstrip().endswith("interrupted") and "ERROR" not in text, text[-3000:]


# ---------------------------------------------------------------- 3. the port while workers load


def test_with_workers_the_port_refuses_connections_until_a_worker_can_answer(tmp_path: Path) -> None:
    """As with one worker: while the workers load, a connection is refused (it used to be accepted and left
    hanging, so a TCP readiness probe passed and requests waited for the load)."""
    with _server(tmp_path, 2, 4) as (proc, base, log):
        _wait_for_log(proc, log, LOADING)
        port = int(base.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        wait_until_healthy(base, proc, 60, lambda: log.read_text()[-3000:])
        assert httpx.post(f"{base}/v1/rerank", json={"query": "a", "documents": ["a"]}, timeout=10).status_code == 200


def test_with_workers_the_first_worker_ready_logs_where_it_listens(tmp_path: Path) -> None:
    """Once, when the port starts accepting, as one worker logs it (the log used to say 'serving' at the fork, seconds
    before the port listened, and nothing when it did)."""
    with _server(tmp_path, 2, 2) as (proc, base, log):
        _wait_for_log(proc, log, STARTED)
        ready = f"INFO uvicorn.error: Uvicorn running on {base} (Press CTRL+C to quit)"
        _wait_for_log(proc, log, ready)
        socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=2).close()  # it listens
        deadline = time.monotonic() + 30
        while log.read_text().count("Application startup complete") < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        text = log.read_text()
        assert text.count("Uvicorn running on") == 1 and "serving with" not in text, text[-3000:]
        assert text.index(STARTED) < text.index(ready), text[-3000:]


# ---------------------------------------------------------------- 4. where a 503 unavailable comes from


def test_health_and_rerank_answer_503_unavailable_only_without_the_batcher() -> None:
    """The 503 ``unavailable`` docs/serve.md names: an app served without its lifespan (no batcher). ``rerank serve``
    never answers it: it refuses connections while loading and once a stop begins (the tests above)."""
    from fastapi.testclient import TestClient

    from rerank.serve import create_app

    client = TestClient(create_app(OverlapReranker()))  # no ``with``: the lifespan, and so the batcher, never starts
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unavailable", health.text
    r = client.post("/v1/rerank", json={"query": "a", "documents": ["a"]})
    assert r.status_code == 503 and r.json()["error_type"] == "unavailable", r.text
    with client:
        assert client.get("/health").status_code == 200


# ---------------------------------------------------------------- 5. a query with nothing the model reads


UNREADABLE = ["\u200b\u200b", "\x00", "\ufeff", "\u00ad", "\u2060", " \u200b\t", "\u202e\u2028"]


def test_a_query_with_no_readable_character_is_a_422_like_an_empty_one() -> None:
    """Zero-width, format and control characters only: 422 ``query must not be empty`` on the Cohere and TEI routes
    (they used to be ranked against nothing). A readable character among them passes, and a document with nothing
    readable is still a candidate."""
    with serving(OverlapReranker()) as (url, _):
        for query in UNREADABLE:
            for path, body in (("/v1/rerank", {"query": query, "documents": ["a", "b"]}),
                               ("/v2/rerank", {"query": query, "documents": ["a", "b"]}),
                               ("/rerank", {"query": query, "texts": ["a", "b"]})):
                r = httpx.post(url + path, json=body)
                assert r.status_code == 422 and r.json()["error_type"] == "invalid_request", (query, path, r.text)
                assert r.json()["message"].startswith("query must not be empty"), r.text
        ok = httpx.post(f"{url}/v1/rerank", json={"query": "\u200b bm25", "documents": ["bm25", "cats"]})
        assert ok.status_code == 200 and ok.json()["results"][0]["index"] == 0, ok.text
        blank_doc = httpx.post(f"{url}/v1/rerank", json={"query": "bm25", "documents": ["\u200b\x00", "bm25 x"]})
        assert blank_doc.status_code == 200, blank_doc.text
        assert sorted(x["index"] for x in blank_doc.json()["results"]) == [0, 1]
        named = httpx.post(f"{url}/rerank", json={"query": "\u200b\ufeff", "texts": ["a"]}).json()["error"]
        assert "U+200B, U+FEFF" in named, named


if __name__ == "__main__":
    from rerank.cli import main
    from rerank.heads.registry import register_reranker

    register_reranker("test-slow-load", SlowLoad)
    sys.exit(main(sys.argv[1:]))
