"""Benchmark ``rerank serve``: throughput and p50/p99 latency vs concurrency, the dynamic-batching gain, and faults.

The server runs in a subprocess (so the load generator does not share its interpreter) on a free 127.0.0.1 port;
closed-loop asyncio clients (one kept-alive connection each, pre-encoded requests: a light load generator) send
Cohere ``/v1/rerank`` requests (one query, ``--docs`` documents of ``--doc-words`` words) for ``--seconds`` per
concurrency level. Two server settings are measured in the same run: dynamic batching
(``--max-batch-size``, ``--max-wait-ms``) and the baseline ``max_batch_size=1`` (one request per model call).
The batching gain is the throughput ratio dynamic / baseline at each concurrency. The servers size their threads as
``rerank serve`` does (the usable cores / ``--server-workers``, whatever ``OMP_NUM_THREADS`` says; ``--server-threads``
sets them) and ``--server-workers N`` forks N server processes. ``--in-process`` also measures, in the same run and
with the same total threads, the reranker called directly on the same requests, one request per call (what a program
without a server gets) and ``--max-batch-size`` requests per call: each level's throughput is given against both.

Default model: a BERT cross-encoder of the shape of all-MiniLM-L6-v2 / cross-encoder/ms-marco-MiniLM-L-6-v2
(6 layers, 384 hidden, 12 heads, 1536 FFN) with seeded random weights and a WordPiece vocabulary of the benchmark's
words (one token per word): the per-batch cost of a real MiniLM cross-encoder, meaningless scores, no files needed.
``--reranker/--model`` serve any registered head instead; ``--cost-model sleep`` serves a reranker that sleeps
``--sleep-fixed-ms`` per model call plus ``--sleep-per-doc-ms`` per document (an accelerator-like cost that batching
amortises).

Fault scenarios (``--scenarios``, all by default), each on a fresh server of the same model with default settings
unless said: ``overload`` (``--max-queue 8``, 64 closed-loop clients: the share answered 429 and how fast, against the
p99 of those served); ``slow`` (``ulimit -n 512``, ``--read-timeout-s 2``: 300 connections that stall mid-request,
then a real request's latency, and how long until the server has closed the stalled ones); ``abandoned`` (150
requests whose clients leave after 0.5 s, then a fresh request's latency; the baseline is 150 × one request's
latency, what scoring them all would cost). Last line: one JSON object.

    OMP_NUM_THREADS=1 python benchmarks/bench_serve.py --cost-model sleep --concurrency 1 8 32 --seconds 10 --docs 8
    OMP_NUM_THREADS=1 python benchmarks/bench_serve.py --concurrency 1 8 32 --seconds 20 --docs 4 --doc-words 20
    OMP_NUM_THREADS=1 python benchmarks/bench_serve.py --scenarios overload slow abandoned --docs 32
    python benchmarks/bench_serve.py --scenarios load --in-process --concurrency 1 8 32 --seconds 10 --docs 20 \
        --doc-words 40 [--server-workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rerank.heads.base import Reranker  # noqa: E402
from rerank.types import Candidate, Query  # noqa: E402

WORDS = (
    "retrieval ranking passage query document model neural sparse dense index search relevance score vector "
    "token transformer encoder training evaluation benchmark corpus answer question language context"
).split()


class MiniLMCrossEncoder(Reranker):
    """A BERT cross-encoder of all-MiniLM-L6-v2's shape with seeded random weights: realistic cost, no quality."""

    method = "bench-minilm-ce"

    def __init__(self, max_length: int = 256, chunk: int = 128) -> None:
        super().__init__()
        import tempfile

        import torch
        from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

        torch.manual_seed(0)
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
            self.tokenizer = BertTokenizerFast(vocab_file=str(Path(tmp) / "vocab.txt"))
        config = BertConfig(
            vocab_size=len(vocab), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
            intermediate_size=1536, max_position_embeddings=512, num_labels=1,
        )
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = BertForSequenceClassification(config).eval().to(self.device)
        self.max_length = max_length
        self.chunk = chunk
        self.torch = torch

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        pairs = [(q.text, c.doc.full_text()) for q, cands in zip(queries, candidate_lists) for c in cands]
        flat: list[float] = []
        with self.torch.inference_mode():
            for i in range(0, len(pairs), self.chunk):
                part = pairs[i : i + self.chunk]
                enc = self.tokenizer(
                    [a for a, _ in part], [b for _, b in part], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
                flat.extend(self.model(**enc).logits[:, 0].float().cpu().tolist())
        out, i = [], 0
        for cands in candidate_lists:
            out.append(flat[i : i + len(cands)])
            i += len(cands)
        return out

    def describe(self) -> dict[str, Any]:
        model = "MiniLM-L6-shaped BERT cross-encoder, random weights"
        return {"method": self.method, "model": model, "device": self.device}


class SleepCostReranker(Reranker):
    """Word-overlap scores with a sleep of ``fixed_ms + per_doc_ms * docs`` per model call: an accelerator-like cost
    (a fixed launch/transfer cost that batching amortises), which isolates how well the server merges requests."""

    method = "bench-sleep-cost"

    def __init__(self, fixed_ms: float, per_doc_ms: float) -> None:
        super().__init__()
        self.fixed_ms = fixed_ms
        self.per_doc_ms = per_doc_ms

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        n = sum(len(c) for c in candidate_lists)
        time.sleep((self.fixed_ms + self.per_doc_ms * n) / 1000.0)
        out = []
        for q, cands in zip(queries, candidate_lists):
            words = set(q.text.split())
            out.append([float(sum(w in words for w in c.doc.text.split())) for c in cands])
        return out

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "fixed_ms": self.fixed_ms, "per_doc_ms": self.per_doc_ms}


def build_reranker(args: argparse.Namespace) -> Reranker:
    """The reranker a server child serves: a registered head, or one of the two cost models."""
    if args.reranker:
        return Reranker.load(args.reranker, model=args.model, backend=args.backend)
    if args.cost_model == "sleep":
        return SleepCostReranker(args.sleep_fixed_ms, args.sleep_per_doc_ms)
    return MiniLMCrossEncoder()


def serve(args: argparse.Namespace) -> None:
    """Child process: load the reranker and serve it with the given batching settings (and ``--serve-set`` ones)."""
    import logging

    from rerank.serve import ServeConfig, create_app
    from rerank.serve.server import install_log_limits
    from rerank.serve.server import serve as run_server

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_log_limits()
    options = dict(max_queue=1024, timeout_s=300)
    options.update(json.loads(args.serve_set))
    cfg = ServeConfig(port=args.port, max_batch_size=args.serve_batch, max_wait_ms=args.max_wait_ms,
                      workers=args.server_workers, **options)

    def app() -> Any:  # in each server process, as rerank serve does: its share of the cores, then the model
        import torch

        torch.set_num_threads(server_threads(args))
        return create_app(build_reranker(args), cfg)

    run_server(app, cfg, workers=args.server_workers)


def server_threads(args: argparse.Namespace) -> int:
    from rerank.parallel import thread_share

    return args.server_threads or thread_share(args.server_workers)


def in_process(args: argparse.Namespace, payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """The reranker called directly for ``--seconds`` on the same requests, with the servers' total threads: one
    request per call, and ``--max-batch-size`` requests per call."""
    import torch

    torch.set_num_threads(server_threads(args) * args.server_workers)
    reranker = build_reranker(args)
    reranker.rerank(payloads[0]["query"], payloads[0]["documents"])  # warm-up
    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    for name, per_call in (("one_per_call", 1), ("batched", args.max_batch_size)):
        done, i, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            reqs = [payloads[(i + k) % len(payloads)] for k in range(per_call)]
            reranker.rerank_batch([r["query"] for r in reqs], [r["documents"] for r in reqs])
            done, i = done + per_call, i + per_call
        out[f"{name}_rps"] = round(done / (time.perf_counter() - start), 2)
    reranker.close()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_requests(n: int, docs: int, words: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "query": " ".join(rng.choices(WORDS, k=6)),
            "documents": [" ".join(rng.choices(WORDS, k=words)) for _ in range(docs)],
        }
        for _ in range(n)
    ]


def server_stats(text: str) -> dict[str, float]:
    """Cumulative batch-size and server-side /v1/rerank latency sums and counts from /metrics."""
    names = {
        "rerank_batch_size_sum": "bsum",
        "rerank_batch_size_count": "bcount",
        'rerank_request_latency_seconds_sum{endpoint="/v1/rerank"}': "lsum",
        'rerank_request_latency_seconds_count{endpoint="/v1/rerank"}': "lcount",
    }
    vals = dict.fromkeys(names.values(), 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in names:
            vals[names[name]] = float(value)
    return vals


def encode_requests(reqs: list[dict[str, Any]], port: int) -> list[bytes]:
    """Pre-encoded HTTP/1.1 keep-alive POSTs, so the load generator spends little CPU per request."""
    out = []
    for r in reqs:
        body = json.dumps(r).encode()
        head = (
            f"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


async def post_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one pre-encoded request on a kept-alive connection; read the whole response; return its status."""
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def median_or_none(values: list[float | None], digits: int) -> float | None:
    """The rounded median, or None where a value is missing (several server processes)."""
    return None if None in values else round(statistics.median(values), digits)


async def level(base: str, concurrency: int, seconds: float, reqs: list[bytes], one_process: bool = True
                ) -> dict[str, Any]:
    """Closed loop: ``concurrency`` clients, one connection each, send requests back to back for ``seconds``.
    The server's batch statistics (``/metrics`` before and after) only for ``one_process``: with several server
    processes each scrape reads whichever process answers, so their differences mean nothing (None)."""
    lat: list[float] = []
    errors = 0
    host, port = base.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=base, timeout=300) as c:
        m0 = server_stats((await c.get("/metrics")).text)
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            reader, writer = await asyncio.open_connection(host, int(port))
            i = k
            try:
                while time.perf_counter() < deadline:
                    t = time.perf_counter()
                    if await post_raw(reader, writer, reqs[i % len(reqs)]) == 200:
                        lat.append(time.perf_counter() - t)
                    else:
                        errors += 1
                    i += concurrency
            finally:
                writer.close()

        await asyncio.gather(*[worker(k) for k in range(concurrency)])
        elapsed = time.perf_counter() - start
        m1 = server_stats((await c.get("/metrics")).text)
    lat.sort()
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": errors,
        "throughput_rps": round(len(lat) / elapsed, 2),
        "p50_ms": round(1000 * q[49], 1),
        "p99_ms": round(1000 * q[98], 1),
        "mean_batch_size": round((m1["bsum"] - m0["bsum"]) / max(m1["bcount"] - m0["bcount"], 1), 2)
        if one_process else None,
        "server_mean_ms": round(1000 * (m1["lsum"] - m0["lsum"]) / max(m1["lcount"] - m0["lcount"], 1), 1)
        if one_process else None,
    }


def start_server(
    args: argparse.Namespace, max_batch: int, serve_set: dict[str, Any] | None = None, fd_limit: int | None = None
) -> tuple[subprocess.Popen, str]:
    """Start a server child with ``max_batch`` requests per model call (``serve_set``: other ServeConfig fields,
    ``fd_limit``: its ``ulimit -n``); return it and its URL once healthy."""
    port = free_port()
    cmd = [sys.executable, __file__, "--_serve", "--port", str(port), "--serve-batch", str(max_batch),
           "--serve-set", json.dumps(serve_set or {}),
           "--max-wait-ms", str(args.max_wait_ms), "--backend", args.backend, "--cost-model", args.cost_model,
           "--sleep-fixed-ms", str(args.sleep_fixed_ms), "--sleep-per-doc-ms", str(args.sleep_per_doc_ms),
           "--server-workers", str(args.server_workers), "--server-threads", str(args.server_threads or 0)]
    if args.reranker:
        cmd += ["--reranker", args.reranker] + (["--model", args.model] if args.model else [])
    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=limit)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit("server did not start")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


async def overload(base: str, clients: int, seconds: float, reqs: list[bytes]) -> dict[str, Any]:
    """``clients`` closed-loop clients against a small queue: how many answers are 429, and how fast they come."""
    host, port = base.removeprefix("http://").split(":")
    served: list[float] = []
    rejected: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        i = k
        try:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                status = await post_raw(reader, writer, reqs[i % len(reqs)])
                (served if status == 200 else rejected).append(time.perf_counter() - t)
                if status == 429:
                    await asyncio.sleep(0.05)  # a polite client backs off a little
                i += clients
        finally:
            writer.close()

    await asyncio.gather(*[worker(k) for k in range(clients)])

    def pct(xs: list[float], q: int) -> float:
        if len(xs) < 2:
            return 0.0
        return round(1000 * statistics.quantiles(sorted(xs), n=100, method="inclusive")[q - 1], 1)

    return {"clients": clients, "served": len(served), "rejected_429": len(rejected),
            "share_429": round(len(rejected) / max(1, len(served) + len(rejected)), 3),
            "served_p50_ms": pct(served, 50), "served_p99_ms": pct(served, 99),
            "rejected_p50_ms": pct(rejected, 50), "rejected_p99_ms": pct(rejected, 99)}


def timed_post(base: str, body: dict[str, Any], timeout: float = 120.0) -> tuple[int, float]:
    t = time.perf_counter()
    status = httpx.post(f"{base}/v1/rerank", json=body, timeout=timeout).status_code
    return status, round(time.perf_counter() - t, 3)


def slow_clients(base: str, n: int = 300) -> dict[str, Any]:
    """``n`` connections that stall mid-request (half in the headers, half before the body), then a real request."""
    port = int(base.rsplit(":", 1)[1])
    partial = f"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty".encode()
    no_body = (b"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 5000\r\n\r\n{")
    t0 = time.perf_counter()
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(partial if i % 2 else no_body)
        socks.append(s)
    status, real = timed_post(base, {"query": "a b", "documents": ["a", "b"]}, timeout=30)
    closed = 0
    for s in socks:
        s.settimeout(max(0.1, t0 + 15 - time.perf_counter()))
        try:
            while s.recv(4096):
                pass
            closed += 1
        except OSError:
            pass
        s.close()
    return {"stalled": n, "real_status": status, "real_request_s": real, "stalled_closed": closed,
            "all_closed_after_s": round(time.perf_counter() - t0, 2)}


def abandoned(base: str, payloads: list[dict[str, Any]], n: int = 150) -> dict[str, Any]:
    """``n`` requests whose clients leave after 0.5 s, then a fresh request; one request's latency as the unit."""
    port = int(base.rsplit(":", 1)[1])
    _, one = timed_post(base, payloads[0])
    raw = encode_requests(payloads[:1], port)[0]
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(raw)
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        s.close()
    status, fresh = timed_post(base, payloads[1])
    text = httpx.get(f"{base}/metrics").text
    vals = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}
    return {"abandoned_requests": n, "one_request_s": one, "all_scored_estimate_s": round(n * one, 1),
            "fresh_status": status, "fresh_request_s": fresh, "dropped": int(vals.get("rerank_abandoned_total", 0)),
            "scored_requests": int(vals.get("rerank_batch_size_sum", 0)) - 2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reranker", default=None, help="serve this registered head instead of the MiniLM cost model")
    p.add_argument("--model", default=None)
    p.add_argument("--cost-model", choices=["minilm", "sleep"], default="minilm", help="when no --reranker is given")
    p.add_argument("--sleep-fixed-ms", type=float, default=20.0, help="sleep cost model: per model call")
    p.add_argument("--sleep-per-doc-ms", type=float, default=0.5, help="sleep cost model: per document")
    p.add_argument("--backend", default="transformers")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=6.0, help="measurement time per level")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=1, help="repeat the sweep; figures are medians over rounds")
    p.add_argument("--docs", type=int, default=8, help="documents per request")
    p.add_argument("--doc-words", type=int, default=40)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--scenarios", nargs="+", choices=["load", "overload", "slow", "abandoned"],
                   default=["load", "overload", "slow", "abandoned"])
    p.add_argument("--overload-seconds", type=float, default=10.0)
    p.add_argument("--server-workers", type=int, default=1, help="server processes (rerank serve --workers)")
    p.add_argument("--server-threads", type=int, default=0,
                   help="threads per server process (default 0: the usable cores / --server-workers)")
    p.add_argument("--in-process", action="store_true",
                   help="also measure the reranker called directly (one request per call, and batched)")
    p.add_argument("--_serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--serve-batch", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--serve-set", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._serve:
        serve(args)
        return
    payloads = make_requests(256, args.docs, args.doc_words)
    out: dict[str, Any] = {"bench": "serve"}
    if "load" in args.scenarios:
        out.update(load_sweep(args, payloads))
        if args.in_process:  # after the servers stopped, so it has the machine to itself as they had
            base = out["in_process"] = in_process(args, payloads)
            for d in out["dynamic"]:
                d["vs_in_process_one_per_call"] = round(d["throughput_rps"] / base["one_per_call_rps"], 3)
                d["vs_in_process_batched"] = round(d["throughput_rps"] / base["batched_rps"], 3)
            print(json.dumps({"in_process": base}), flush=True)
    faults: dict[str, Any] = {}
    if "overload" in args.scenarios:
        proc, base = start_server(args, args.max_batch_size, {"max_queue": 8})
        try:
            encoded = encode_requests(payloads, int(base.rsplit(":", 1)[1]))
            faults["overload"] = {"max_queue": 8, **asyncio.run(overload(base, 64, args.overload_seconds, encoded))}
        finally:
            stop(proc)
        print(json.dumps(faults["overload"]), flush=True)
    if "slow" in args.scenarios:
        proc, base = start_server(args, args.max_batch_size, {"read_timeout_s": 2.0}, fd_limit=512)
        try:
            faults["slow_clients"] = {"ulimit_n": 512, "read_timeout_s": 2.0, **slow_clients(base)}
        finally:
            stop(proc)
        print(json.dumps(faults["slow_clients"]), flush=True)
    if "abandoned" in args.scenarios:
        proc, base = start_server(args, args.max_batch_size)
        try:
            faults["abandoned"] = abandoned(base, payloads)
        finally:
            stop(proc)
        print(json.dumps(faults["abandoned"]), flush=True)
    import torch

    out.update({
        "reranker": args.reranker or {
            "minilm": "MiniLM-L6-shaped BERT cross-encoder (random weights)",
            "sleep": f"sleep cost model ({args.sleep_fixed_ms:g} ms/call + {args.sleep_per_doc_ms:g} ms/doc)",
        }[args.cost_model],
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "server_threads": server_threads(args),
        "server_workers": args.server_workers,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "docs_per_request": args.docs,
        "doc_words": args.doc_words,
        "max_wait_ms": args.max_wait_ms,
        "max_batch_size": args.max_batch_size,
        **faults,
    })
    print(json.dumps(out))


def load_sweep(args: argparse.Namespace, payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """Closed-loop levels against dynamic batching and batch 1, interleaved level by level."""
    servers = {"dynamic": start_server(args, args.max_batch_size), "batch1": start_server(args, 1)}
    encoded = {mode: encode_requests(payloads, int(base.rsplit(":", 1)[1])) for mode, (_, base) in servers.items()}
    results: dict[str, list[dict[str, Any]]] = {"dynamic": [], "batch1": []}
    try:
        for mode, (_, base) in servers.items():
            asyncio.run(level(base, max(args.concurrency), args.warmup, encoded[mode]))
        # interleave the two settings level by level, so drifting machine load hits both alike
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for mode, (_, base) in servers.items():
                    r = asyncio.run(level(base, c, args.seconds, encoded[mode], args.server_workers == 1))
                    r.update(mode=mode, round=rnd)
                    print(json.dumps(r), flush=True)
                    results[mode].append(r)
    finally:
        for proc, _ in servers.values():
            stop(proc)

    def summary(mode: str, c: int) -> dict[str, Any]:
        rs = [r for r in results[mode] if r["concurrency"] == c]
        return {
            "concurrency": c,
            "throughput_rps": round(statistics.median(r["throughput_rps"] for r in rs), 2),
            "p50_ms": round(statistics.median(r["p50_ms"] for r in rs), 1),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in rs), 1),
            "mean_batch_size": median_or_none([r["mean_batch_size"] for r in rs], 2),
            "server_mean_ms": median_or_none([r["server_mean_ms"] for r in rs], 1),
            "requests": sum(r["requests"] for r in rs),
        }

    dynamic = [summary("dynamic", c) for c in args.concurrency]
    single = [summary("batch1", c) for c in args.concurrency]
    gain = {str(d["concurrency"]): round(d["throughput_rps"] / s["throughput_rps"], 3) for d, s in zip(dynamic, single)}
    return {
        "dynamic": dynamic,
        "batch1": single,
        "batching_gain": gain,
        "batching_gain_at_max_concurrency": gain[str(max(args.concurrency))],
        "rounds": args.rounds,
        "seconds_per_level": args.seconds,
        "errors": sum(r["errors"] for rs in results.values() for r in rs),
    }


if __name__ == "__main__":
    main()
