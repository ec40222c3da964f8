"""Audit 5 (``--backend openai``): reasoning cut off by the token limit, a total deadline per request and stopping a
stuck run, Retry-After forms, failed answers not cached for good, the documented options, the no-log-probs message,
and ``--log-llm-io`` into a new folder. Against a scripted OpenAI-compatible server on loopback, in process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank.backends.base import GenerationConfig
from rerank.backends.registry import build_backend
from rerank.errors import ConfigError, RerankError
from tests.test_openai_backend import tok_dir  # noqa: F401 - the tokenizer fixture, shared

REPO = Path(__file__).resolve().parents[1]
#: what a thinking model writes when listwise's cap (one permutation's length) cuts it off inside its reasoning
THINK_CUT = "<think>\nFirst guess:\n[4] > [2] > [1] > [3]\nBut wait, passage 3 mentions"


@dataclass
class Reply:
    """A scripted answer: ``status``, ``headers`` and a JSON ``body``; ``trickle``: instead send the headers of a
    long body, then one space every ``trickle`` seconds (``trickle_bytes`` of them); ``stall``: sleep first."""

    status: int = 200
    headers: dict[str, str] | None = None
    body: Any = None
    trickle: float = 0.0
    trickle_bytes: int = 0
    stall: float = 0.0


class Server:
    """A completions server on loopback: ``script(n, body)`` answers request ``n`` (1-based) or, when it returns None,
    the default answer: ``text`` for a generation, ``token_id:N`` log-probs for ``logprob_token_ids``, else none
    (``logprobs: null``) or the top ``top_n`` by text when ``top_n`` is set."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.script: Callable[[int, dict[str, Any]], Reply | None] = lambda n, body: None
        self.text = "[1] > [2]"
        self.finish_reason = "stop"
        self.top_n = 0
        self.requests: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((time.monotonic(), self.path, body))
                    n = len(outer.requests)
                reply = outer.script(n, body) or outer.answer(self.path, body)
                try:
                    self.send(reply)
                except OSError:  # the client gave up
                    pass

            def send(self, reply: Reply) -> None:
                if reply.stall:
                    time.sleep(reply.stall)
                if reply.trickle:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    for _ in range(reply.trickle_bytes):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(reply.trickle)
                    self.close_connection = True
                    return
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (reply.headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str, body: dict[str, Any]) -> Reply:
        if path != "/v1/completions":
            return Reply(404, body={"error": {"message": f"Not Found: {path}"}})
        prompts = body["prompt"] if isinstance(body["prompt"], list) and isinstance(body["prompt"][0], (list, str)) \
            else [body["prompt"]]
        choices = []
        for i, _ in enumerate(prompts):
            choice: dict[str, Any] = {"index": i, "finish_reason": self.finish_reason}
            if "logprobs" not in body:
                choice["text"] = self.text
            elif body.get("logprob_token_ids"):
                top = {f"token_id:{t}": -1.0 - t / 1000.0 for t in body["logprob_token_ids"]}
                choice.update(text="x", logprobs={"tokens": [next(iter(top))], "token_logprobs": [-1.0],
                                                  "top_logprobs": [top]})
            elif self.top_n:
                top = {self.tokenizer.decode([t]): -1.0 - t / 1000.0 for t in range(200, 200 + self.top_n)}
                choice.update(text="x", logprobs={"tokens": [next(iter(top))], "token_logprobs": [-1.0],
                                                  "top_logprobs": [top]})
            else:
                choice.update(text="x", logprobs=None)
            choices.append(choice)
        return Reply(body={"object": "text_completion", "model": body["model"], "choices": choices})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tok_dir: Path) -> Iterator[Server]:
    from transformers import AutoTokenizer

    srv = Server(AutoTokenizer.from_pretrained(tok_dir))
    yield srv
    srv.close()


def make(server: Server, tok_dir: Path, **options: Any) -> Any:
    return build_backend("openai", "served", base_url=server.url, tokenizer=str(tok_dir), **options)


def ids(backend: Any, text: str) -> list[int]:
    return backend.tokenizer.encode(text, add_special_tokens=False)


def listwise_docs() -> list[dict[str, Any]]:
    return [{"id": f"d{i}", "text": f"passage {i}", "score": 4.0 - i} for i in range(4)]


# ---------------------------------------------------------------- 1. a ranking inside unfinished reasoning


def test_ranking_inside_reasoning_is_not_the_answer() -> None:
    from rerank.heads.permutation import parse_permutation

    cut = parse_permutation(THINK_CUT, 4, "numbers")
    assert cut.failed and cut.order == [0, 1, 2, 3] and "<think> was never closed" in cut.fixes[0]
    closed = parse_permutation("<think>\nmaybe [1] > [2] > [3] > [4]\n</think>\n[3] > [1] > [4] > [2]", 4, "numbers")
    assert (closed.order, closed.failed, closed.fixes) == ([2, 0, 3, 1], False, [])  # the answer after it, clean
    only_inside = parse_permutation("<think>[4] > [3] > [2] > [1]</think>", 4, "numbers")
    assert only_inside.failed and only_inside.order == [0, 1, 2, 3]
    before = parse_permutation("[2] > [1] > [4] > [3]\n<think>no, [1] > [2]", 4, "numbers")
    assert before.order == [1, 0, 3, 2] and before.repaired and "unclosed <think>" in before.fixes[0]


def test_listwise_over_openai_counts_a_cut_reasoning_as_a_failure(server: Server, tok_dir: Path) -> None:
    """The audit's repro: a thinking model cut off by the token limit (finish_reason "length") inside <think>; the
    window keeps its order and the failure is counted, as GroupRank and ERank do."""
    from rerank.methods.listwise.head import ListwiseConfig, ListwiseReranker

    server.text, server.finish_reason = THINK_CUT, "length"
    head = ListwiseReranker(ListwiseConfig(window=4, stride=2), backend=make(server, tok_dir))
    res = head.rerank("q", listwise_docs())
    assert res.doc_ids == ["d0", "d1", "d2", "d3"]
    assert (head.stats.outputs, head.stats.parse_failures, head.stats.repaired) == (1, 1, 0)


# ---------------------------------------------------------------- 2. a deadline per request; stopping a stuck run


def test_timeout_is_a_deadline_for_a_trickling_body(server: Server, tok_dir: Path) -> None:
    """Headers at once, then a byte every 0.1 s (a keep-alive trickle) for 4 s: no single read times out, yet the
    request ends at its 1 s timeout with one line."""
    server.script = lambda n, body: Reply(trickle=0.1, trickle_bytes=40)
    backend = make(server, tok_dir, timeout=1.0, max_retries=0)
    start = time.monotonic()
    with pytest.raises(RerankError, match=r"began its answer but did not finish it within backend_options\.timeout=1 s "
                                          r"\(1 attempt over"):
        backend.generate([ids(backend, "a b")], GenerationConfig(max_new_tokens=4))
    assert time.monotonic() - start < 2.0
    # a server that already sent its headers is generating: its timeout is not retried (it would pay again)
    backend = make(server, tok_dir, timeout=0.3, max_retries=1)
    with pytest.raises(RerankError, match=r"within backend_options\.timeout=0.3 s \(1 attempt over 0\.\d s\)"):
        backend.generate([ids(backend, "a b")], GenerationConfig(max_new_tokens=4))


_STALLED_RUN = """
import json, sys
from rerank.cli import main
sys.exit(main(["rank", "--reranker", "yes-no", "--model", "served", "--backend", "openai", "--base-url", sys.argv[1],
               "--reranker-set", "backend_options.tokenizer=" + sys.argv[2], "--input", sys.argv[3],
               "--output", sys.argv[4]]))
"""


@pytest.mark.parametrize(("signum", "status", "said"), [(signal.SIGTERM, 143, "terminated"),
                                                        (signal.SIGINT, 130, "interrupted")])
def test_a_signal_stops_a_run_whose_requests_are_stuck(server: Server, tok_dir: Path, tmp_path: Path, signum: int,
                                                      status: int, said: str) -> None:
    """Four requests in flight to a server that never answers (timeout 120 s): SIGTERM or Ctrl-C ends the command at
    once with its status; no worker thread keeps the process alive."""
    server.script = lambda n, body: Reply(stall=30.0)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"qid": "q", "query": "solar", "docs": [f"doc {i}" for i in range(4)]}) + "\n")
    env = {**os.environ, "RERANK_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-c", _STALLED_RUN, server.url, str(tok_dir), str(inp),
                             str(tmp_path / "out.jsonl")], stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while len(server.requests) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(server.requests) == 4, proc.stderr.read() if proc.poll() is not None else "no requests"
        sent = time.monotonic()
        proc.send_signal(signum)
        rc = proc.wait(timeout=10)
        assert time.monotonic() - sent < 3.0
    finally:
        proc.kill()
        proc.wait()
    assert rc == status and said in proc.stderr.read()


# ---------------------------------------------------------------- 3. Retry-After in every form


def test_retry_after_forms_and_cap() -> None:
    from rerank.utils.http import retry_after

    def resp(**headers: str) -> httpx.Response:
        return httpx.Response(429, headers=headers)

    assert retry_after(resp(**{"Retry-After": "2"}), 0.5) == 2.0
    assert retry_after(resp(**{"retry-after-ms": "3000", "Retry-After": "1"}), 0.5) == 3.0
    assert 2.0 < retry_after(resp(**{"Retry-After": formatdate(time.time() + 4, usegmt=True)}), 0.5) <= 4.0
    assert retry_after(resp(**{"Retry-After": formatdate(time.time() - 30, usegmt=True)}), 0.5) == 0.0  # past
    assert retry_after(resp(**{"Retry-After": "3600"}), 0.5) == 60.0
    assert retry_after(resp(**{"retry-after-ms": "999999"}), 0.5) == 60.0
    assert retry_after(resp(**{"Retry-After": "soon"}), 0.5) == 0.5
    assert retry_after(resp(), 0.25) == 0.25


def test_the_server_asked_wait_is_kept_and_the_final_error_counts_attempts(server: Server, tok_dir: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("rerank.utils.http.time.sleep", slept.append)
    limited = Reply(429, body={"error": {"message": "rate limited"}})
    until = formatdate(time.time() + 5, usegmt=True)
    server.script = lambda n, body: (Reply(429, {"Retry-After": until}, limited.body) if n == 1 else
                                     Reply(429, {"retry-after-ms": "1500"}, limited.body) if n == 2 else None)
    backend = make(server, tok_dir, max_retries=2)
    assert backend.generate([ids(backend, "a")], GenerationConfig(max_new_tokens=4)) == ["[1] > [2]"]
    assert 3.5 < slept[0] <= 5.0 and slept[1] == 1.5
    server.script = lambda n, body: limited
    with pytest.raises(RerankError, match=r"answered 429 \(3 attempts over \d+\.\d s\): .*rate limited"):
        backend.generate([ids(backend, "a")], GenerationConfig(max_new_tokens=4))


# ---------------------------------------------------------------- 4. a failed answer is not cached for good


def test_a_transient_failed_answer_is_asked_again_on_the_next_run(server: Server, tok_dir: Path,
                                                                  tmp_path: Path) -> None:
    """The first two requests answer "" (a parse failure); the next run asks again and gets the ranking, which is
    then kept (a third run makes no request)."""
    from rerank.backends.cache import CachingBackend
    from rerank.methods.listwise.head import ListwiseConfig, ListwiseReranker

    server.text = "[4] > [3] > [2] > [1]"
    server.script = lambda n, body: None if n > 2 else Reply(body={"object": "text_completion", "choices": [
        {"index": 0, "text": "", "finish_reason": "stop"}]})

    def run() -> tuple[list[str], int, int]:
        backend = CachingBackend(make(server, tok_dir), "served", tmp_path / "llm.sqlite")
        head = ListwiseReranker(ListwiseConfig(window=4, stride=2), backend=backend)
        before = len(server.requests)
        order = head.rerank("q", listwise_docs()).doc_ids
        backend.close()
        return order, head.stats.parse_failures, len(server.requests) - before

    assert run() == (["d0", "d1", "d2", "d3"], 1, 1)  # the empty answer: a failure, the order kept
    assert run() == (["d0", "d1", "d2", "d3"], 1, 1)  # asked again (still the transient failure)
    assert run() == (["d3", "d2", "d1", "d0"], 0, 1)  # asked again: the good answer
    assert run() == (["d3", "d2", "d1", "d0"], 0, 0)  # which is cached


# ---------------------------------------------------------------- 5. the documented options and the 404 / 400 hints


def test_backends_doc_names_every_openai_option() -> None:
    from rerank.backends.openai import OpenAIBackendConfig

    doc = (REPO / "docs" / "backends.md").read_text()
    missing = [f.name for f in fields(OpenAIBackendConfig)
               if f.name not in ("dtype", "device") and f"`{f.name}`" not in doc]
    assert not missing, f"docs/backends.md does not document {missing}"
    for advice in ("Against OpenAI itself: `extensions=false`, `top_logprobs=5`, `prompt_format=text`",
                   "Against Ollama or OpenRouter:\n`extensions=false` and `prompt_format=text`",
                   "Against llama.cpp's `llama-server`: `extensions=false`"):  # when each server needs which option
        assert advice in doc


def test_404_and_extension_400_say_what_to_do(server: Server, tok_dir: Path) -> None:
    chat_only = build_backend("openai", "served", base_url=server.url.replace("/v1", "/chat-only/v1"),
                              tokenizer=str(tok_dir))
    with pytest.raises(RerankError, match=r"answered 404: .*needs a completions endpoint.*only /chat/completions"):
        chat_only.generate([ids(chat_only, "a")], GenerationConfig())
    server.script = lambda n, body: Reply(400, body={"error": {"message": "Unrecognized request argument supplied: "
                                                                          "logprob_token_ids"}})
    backend = make(server, tok_dir)
    with pytest.raises(RerankError, match=r"answered 400: .*set backend_options.extensions=false"):
        backend.next_token_logprobs([ids(backend, "a")], [5])


# ---------------------------------------------------------------- 6. no (or too few) log-probs


def test_no_logprobs_message_says_so_without_claiming_a_cap(server: Server, tok_dir: Path) -> None:
    backend = make(server, tok_dir, extensions=False)
    with pytest.raises(RerankError) as none:
        backend.next_token_logprobs([ids(backend, "a")], [5])
    assert "returned no log-probs" in str(none.value) and "raising top_logprobs does not help" in str(none.value)
    assert "top_logprobs=20" not in str(none.value)
    server.top_n = 5  # a server that returns 5 whatever is asked
    with pytest.raises(RerankError) as few:
        backend.next_token_logprobs([ids(backend, "a")], [5])
    assert "not among the 5 log-probs" in str(few.value) and "asked for 20: the server returned fewer" in \
        str(few.value) and "top_logprobs=20" not in str(few.value)


# ---------------------------------------------------------------- 7. --log-llm-io into a folder not made yet


def test_log_llm_io_into_a_new_folder(server: Server, tok_dir: Path, tmp_path: Path, run_cli: Any) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"qid": "q", "query": "solar", "docs": ["doc 1", "doc 2"]}) + "\n")
    log = tmp_path / "new" / "deeper" / "llm-io.jsonl"
    rc, _, stderr = run_cli("rank", "--reranker", "yes-no", "--model", "served", "--backend", "openai", "--base-url",
                            server.url, "--reranker-set", f"backend_options.tokenizer={tok_dir}", "--input", inp,
                            "--output", tmp_path / "out.jsonl", "--log-llm-io", log)
    assert rc == 0, stderr
    assert len(log.read_text().splitlines()) == 2


def test_log_llm_io_that_cannot_be_made_is_one_error(tok_dir: Path, tmp_path: Path) -> None:
    from rerank.backends.cache import CachingBackend
    from rerank.backends.scripted import ScriptedBackend
    from transformers import AutoTokenizer

    (tmp_path / "file").write_text("")
    inner = ScriptedBackend(AutoTokenizer.from_pretrained(tok_dir), generate_fn=lambda p: "x")
    with pytest.raises(ConfigError, match=r"cannot write the LLM-call log .*file/llm-io.jsonl"):
        CachingBackend(inner, "served", tmp_path / "c.sqlite", str(tmp_path / "file" / "llm-io.jsonl"),
                       use_cache=False)
