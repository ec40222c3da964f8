"""``rerank serve`` under faulty clients, as subprocess servers (so their file limit applies): clients that open
connections and stall, clients that send a request and leave, a worker pool. Each test is bounded in time and talks
to 127.0.0.1 only."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from serve_support import wait_until_healthy  # noqa: E402

FD_LIMIT = 512


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(args: list[str], log: Path, fd_limit: int | None = None, entry: str = "support") -> Iterator[str]:
    """``rerank serve ARGS`` in a subprocess (``tests/serve_support.py`` registers ``test-overlap``) with its log in
    ``log`` and, if given, a file limit (``ulimit -n``); yields its URL once /health answers."""
    port = _free_port()
    prog = [str(HERE / "serve_support.py")] if entry == "support" else ["-m", "rerank"]
    cmd = [sys.executable, *prog, "serve", "--port", str(port), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RERANK_API_KEY", None)

    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, proc, 60, lambda: log.read_text()[-3000:])
        yield base
        assert proc.poll() is None, "the server died:\n" + log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stall(port: int, n: int, payload: bytes) -> list[socket.socket]:
    """``n`` connections that send ``payload`` (an incomplete request) and then nothing."""
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(payload)
        out.append(s)
    return out


def _closed_by_server(sock: socket.socket, wait_s: float) -> bytes | None:
    """What the server sent before closing ``sock`` (None if it is still open after ``wait_s``)."""
    sock.settimeout(wait_s)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (socket.timeout, TimeoutError):
        return None
    except ConnectionResetError:
        pass
    return data


@pytest.fixture(autouse=True)
def _enough_files_for_the_client() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))


def _real_request(base: str, timeout: float = 5.0) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = httpx.post(f"{base}/v1/rerank", json={"query": "bm25 ranking", "documents": ["bm25", "cats"]}, timeout=timeout)
    return r.status_code, time.perf_counter() - t0


def test_stalled_connections_do_not_starve_real_clients(tmp_path: Path) -> None:
    """300 connections that stall (half mid-headers, half after the headers of a body they never send) under
    ``ulimit -n 512``: a real request is answered at once; the server closes the stalled ones (408) after the read
    timeout; then 500 more (beyond what the file limit allows) are refused or timed out without a log flood, and a
    real request is answered within 5 s again."""
    log = tmp_path / "serve.log"
    with server(["--reranker", "test-overlap", "--read-timeout-s", "2"], log, fd_limit=FD_LIMIT) as base:
        port = int(base.rsplit(":", 1)[1])
        partial_headers = f"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Ty".encode()
        no_body = (f"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                   "Content-Length: 5000\r\n\r\n{\"query\": ").encode()
        t0 = time.monotonic()
        stalled = _stall(port, 150, partial_headers) + _stall(port, 150, no_body)
        status, seconds = _real_request(base)
        assert status == 200 and seconds < 5.0, (status, seconds)
        answers = [_closed_by_server(s, max(0.1, t0 + 6.0 - time.monotonic())) for s in stalled]
        assert all(a is not None for a in answers), f"{sum(a is None for a in answers)} stalled connections kept open"
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers if a) == 300
        for s in stalled:
            s.close()

        flood = []
        for _ in range(500):  # more than the file limit: the cap (512 - 64) answers the rest 503 at once
            try:
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                flood[-1].sendall(partial_headers)
            except OSError:
                break
        t1 = time.perf_counter()
        deadline = t1 + 5.0
        while True:
            try:
                status, _ = _real_request(base, timeout=max(0.1, deadline - time.perf_counter()))
            except httpx.TransportError:
                status = 0
            if status == 200 or time.perf_counter() > deadline:
                break
            time.sleep(0.2)
        assert status == 200, "no real request answered within 5 s of the flood"
        refused = sum(1 for s in flood if (_closed_by_server(s, 0.05) or b"").startswith(b"HTTP/1.1 503"))
        assert refused >= 500 - (FD_LIMIT - 64), refused
        for s in flood:
            s.close()
        health = httpx.get(f"{base}/health").json()
        assert health["in_flight"] == 0
    text = log.read_text()
    assert len(text) < 20_000, f"log of {len(text)} bytes:\n{text[-2000:]}"
    assert "Traceback" not in text and "Too many open files" not in text
    print(f"real request after 300 stalled connections: {seconds:.3f} s; after the flood: "
          f"{time.perf_counter() - t1:.2f} s; log {len(text)} bytes")


def test_abandoned_requests_are_not_scored(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """150 to 240 requests to the tiny cross-encoder (128 documents each; as many as make 15 s of scoring on this
    machine, within the server's queue of 256) whose clients leave after 0.5 s: the server drops them from its queue,
    and a fresh request is answered within 5 s."""
    from rerank.testing.tokenizer import corpus_lines

    lines = [ln for ln in corpus_lines() if ln.strip()]
    docs = [" ".join(lines[i : i + 6]) for i in range(128)]
    log = tmp_path / "serve.log"
    with server(["--reranker", "cross-encoder", "--model", str(tiny_bert_dir)], log, entry="cli") as base:
        port = int(base.rsplit(":", 1)[1])
        for _ in range(2):  # the second is timed: warm
            t = time.perf_counter()
            single = httpx.post(f"{base}/v1/rerank", json={"query": lines[100], "documents": docs}, timeout=60)
            per_request = time.perf_counter() - t
            assert single.status_code == 200
        n = min(240, max(150, math.ceil(15.0 / per_request)))
        body = json.dumps({"query": lines[200], "documents": docs}).encode()
        request = (f"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        clients = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(request)
            clients.append(s)
        time.sleep(0.5)
        for s in clients:
            s.close()
        status, seconds = _real_request(base, timeout=30)
        assert status == 200
        assert seconds < 5.0, f"a fresh request waited {seconds:.1f} s behind abandoned work"
        text = httpx.get(f"{base}/metrics").text
    scored = next(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("rerank_batch_size_sum"))
    abandoned = next(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("rerank_abandoned_total"))
    assert abandoned >= 2 * n / 3 and scored < 60 + 2, (n, abandoned, scored)  # + the two timed requests
    assert n * per_request > 2 * 5.0, f"the abandoned work ({n * per_request:.1f} s) is too small to test this"
    print(f"one request {per_request:.3f} s ({n}: ~{n * per_request:.0f} s); fresh request after {n} abandoned: "
          f"{seconds:.2f} s; scored {scored:.0f}, abandoned {abandoned:.0f}")


def test_one_server_uses_every_core_unless_told(tmp_path: Path) -> None:
    """A server sizes its threads to the machine whatever ``OMP_NUM_THREADS`` (1 here) says; ``--threads`` sets them."""
    from rerank.parallel import usable_cores

    for args, want in (([], usable_cores()), (["--threads", "3"], 3)):
        with server(["--reranker", "test-overlap", *args], tmp_path / "serve.log") as base:
            assert httpx.get(f"{base}/health").json()["threads"] == want


def test_workers_share_the_port(tmp_path: Path) -> None:
    """``--workers 2``: two processes answer on one port; SIGTERM to the parent stops both."""
    log = tmp_path / "serve.log"
    with server(["--reranker", "test-overlap", "--workers", "2"], log) as base:
        pids = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            with httpx.Client(timeout=5) as c:  # a new connection each time: the kernel spreads them
                pids.add(c.get(f"{base}/health").json()["pid"])
                assert _real_request(base)[0] == 200
        assert len(pids) == 2, pids
        from rerank.parallel import thread_share

        assert httpx.get(f"{base}/health").json()["threads"] == thread_share(2)  # the cores shared out
    for pid in pids:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker {pid} still running after the parent stopped")


def test_workers_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    """``--workers 2`` with the parent killed outright (``kill -9``, the OOM killer: no signal is forwarded): the
    workers stop by themselves and free the port, so a supervisor's restart can bind it (they used to serve on)."""
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RERANK_API_KEY", None)
    cmd = [sys.executable, str(HERE / "serve_support.py"), "serve", "--port", str(port), "--reranker", "test-overlap",
           "--workers", "2"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    pids: set[int] = set()
    try:
        wait_until_healthy(base, proc, 60, lambda: log.read_text()[-3000:])
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            with httpx.Client(timeout=5) as c:
                pids.add(c.get(f"{base}/health").json()["pid"])
        assert len(pids) == 2, pids
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        left = set(pids)
        while left and time.monotonic() < deadline:
            for pid in list(left):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    left.discard(pid)
            time.sleep(0.2)
        assert not left, "workers kept serving after their parent was killed:\n" + log.read_text()[-2000:]
        with socket.socket() as s:  # the port is free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        proc.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
