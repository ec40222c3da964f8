"""Audit s38/backends: the llama.cpp context, the openai backend's malformed replies, NaN hints, secrets in logs,
the LLM-call cache key, openai concurrency and log lines beside progress bars.

The openai tests run against a tiny scripted completions server on loopback (one thread); the llama.cpp test uses
the tiny GGUF of :mod:`rerank.testing` and skips, saying why, without ``llama-cpp-python``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_llamacpp_backend import needs_llama_cpp

from rerank.backends.registry import build_backend
from rerank.errors import RerankError

# ---------------------------------------------------------------- #1 llama.cpp n_ctx not a multiple of 256


@needs_llama_cpp
def test_llamacpp_fits_prompts_to_the_requested_n_ctx(tiny_llm_dir: Path, tmp_path: Path) -> None:
    """llama.cpp rounds n_ctx=300 up to 512, but llama-cpp-python's buffers hold 300 tokens: prompts are fitted to
    300 (the old context_length of 512 let a 400-token prompt through, which crashed in numpy)."""
    from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker
    from rerank.testing import tiny_gguf

    gguf = tiny_gguf(tiny_llm_dir, tmp_path / "tiny.gguf")
    backend = build_backend("llamacpp", str(gguf), n_ctx=300, n_threads=1)
    try:
        assert backend.context_length == 300
        head = YesNoReranker(YesNoConfig(max_doc_tokens=400), backend=backend)
        result = head.rerank("what do cats eat", ["cats eat meat and fish " * 60, "dogs bark"])
        assert sorted(result.doc_ids) == ["0", "1"] and head.stats.fitted_prompts >= 1
        with pytest.raises(ValueError, match="exceeds n_ctx 300"):
            backend.next_token_logprobs([[1] * 301], [1])
    finally:
        backend.close()


# ---------------------------------------------------------------- a scripted completions server


class Server:
    """A completions server on loopback whose reply is ``reply(body) -> (status, raw body)``; it records each
    request's ``Authorization`` header, its prompts, and the most requests it held at once."""

    def __init__(self) -> None:
        self.reply: Callable[[dict[str, Any]], tuple[int, str]] = self.logprobs
        self.delay = 0.0
        self.auth: list[str | None] = []
        self.prompts: list[list[Any]] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.auth.append(self.headers.get("Authorization"))
                    server.prompts.append(body["prompt"])
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                time.sleep(server.delay)
                status, raw = server.reply(body)
                with server.lock:
                    server.in_flight -= 1
                data = raw.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def logprobs(body: dict[str, Any], value: Callable[[list[int], int], Any] | None = None) -> tuple[int, str]:
        """vLLM's answer: each requested id's log-prob keyed ``token_id:N`` (by default distinct per prompt)."""
        value = value or (lambda p, t: -1.0 - (sum(p) * 7 + t) % 13 / 3)
        choices = [{"index": i, "text": "x", "logprobs": {"top_logprobs": [
            {f"token_id:{t}": value(p, t) for t in body.get("logprob_token_ids") or []}]}}
            for i, p in enumerate(body["prompt"])]
        return 200, json.dumps({"choices": choices})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def openai(server: Server, tok: Path, url: str | None = None, **options: Any) -> Any:
    return build_backend("openai", "served", base_url=url or server.url, tokenizer=str(tok), **options)


PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16], [17, 18, 19], [20, 21], [22]]


# ---------------------------------------------------------------- #2, #6, #7a malformed 200 replies


@pytest.mark.parametrize(("raw", "match"), [
    ("<html>proxy login page</html>", r"200 with a non-JSON body: <html>proxy login page</html>$"),
    ("[1,2,3]", r"an unexpected body \(not an object with a list of choice objects\): \[1, 2, 3\]$"),
    ('{"choices": [1]}', r"an unexpected body \(not an object with a list of choice objects\)"),
    ('{"choices": [{"index": 0, "logprobs": {"top_logprobs": [[1, 2]]}}]}', r"an unexpected body \(logprobs is not"),
    ('{"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"token_id:4": "low"}]}}]}',
     r"an unexpected body \(the log-prob of 'token_id:4' is 'low', not a number\): \{\"index\": 0"),
])
def test_malformed_logprob_replies_are_one_line_errors(server: Server, tiny_llm_dir: Path, raw: str,
                                                       match: str) -> None:
    server.reply = lambda body: (200, raw)
    backend = openai(server, tiny_llm_dir, max_retries=0)
    with pytest.raises(RerankError, match=r"^openai backend: http://127\.0\.0\.1:\d+/v1/completions answered " + match) \
            as e:
        backend.next_token_logprobs(PROMPTS[:1], [4])
    assert "\n" not in str(e.value)
    backend.close()


@pytest.mark.parametrize(("value", "expected"), [(None, -math.inf), (-0.5, -0.5), (1e-6, 0.0)])
def test_null_logprob_reads_as_minus_infinity(server: Server, tiny_llm_dir: Path, value: Any,
                                               expected: float) -> None:
    server.reply = lambda body: Server.logprobs(body, lambda p, t: value)
    backend = openai(server, tiny_llm_dir)
    assert backend.next_token_logprobs(PROMPTS[:2], [4, 6]) == [[expected, expected]] * 2
    backend.close()


@pytest.mark.parametrize("value", [5.0, float("nan")])
def test_positive_or_nan_logprob_is_refused(server: Server, tiny_llm_dir: Path, value: float) -> None:
    server.reply = lambda body: Server.logprobs(body, lambda p, t: value)
    backend = openai(server, tiny_llm_dir)
    with pytest.raises(RerankError, match=rf"answered the log-prob {value} for 'token_id:4', but log-probs are <= 0"):
        backend.next_token_logprobs(PROMPTS[:1], [4])
    backend.close()


@pytest.mark.parametrize(("choice", "match"), [
    ({"index": 0, "text": None}, r"a choice's text is None, not a string"),
    ({"index": 0}, r"a choice's text is None, not a string"),
    ({"index": 0, "text": "x", "token_ids": ["a"]}, r"token_ids is not a list of integers"),
])
def test_null_text_is_a_one_line_error(server: Server, tiny_llm_dir: Path, choice: dict[str, Any],
                                        match: str) -> None:
    from rerank.backends.base import GenerationConfig

    server.reply = lambda body: (200, json.dumps({"choices": [choice]}))
    backend = openai(server, tiny_llm_dir)
    with pytest.raises(RerankError, match=r"^openai backend: http://127\.0\.0\.1:\d+/v1/completions answered an "
                                          r"unexpected body \(" + match):
        backend.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=4))
    backend.close()


def test_malformed_reply_through_the_cli_is_one_line_exit_2(server: Server, tiny_llm_dir: Path, tmp_path: Path,
                                                            run_cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.reply = lambda body: (200, "[1,2,3]")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"query": "cats", "docs": ["cats eat meat", "dogs bark"]}) + "\n")
    rc, _, err = run_cli("rank", "--reranker", "yes-no", "--model", "fake", "--backend", "openai",
                         "--base-url", f"http://alice:PASSWORD42@127.0.0.1:{server.port}/v1", "--reranker-set",
                         f"backend_options.tokenizer={tiny_llm_dir}", "--input", src, "--output", tmp_path / "o.jsonl")
    assert rc == 2 and "Traceback" not in err and "PASSWORD42" not in err
    assert f"openai backend: http://alice:<redacted>@127.0.0.1:{server.port}/v1/completions answered an " \
           "unexpected body" in err


# ---------------------------------------------------------------- #3 a base URL's password in logs


def test_url_password_goes_as_basic_auth_and_never_reaches_the_logs(server: Server, tiny_llm_dir: Path,
                                                                    caplog: pytest.LogCaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import logging

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = f"http://alice:PASSWORD42@127.0.0.1:{server.port}/v1"
    with caplog.at_level(logging.DEBUG):
        backend = openai(server, tiny_llm_dir, url=url)
        backend.next_token_logprobs(PROMPTS[:1], [4])
        backend.close()
    assert "HTTP Request: POST" in caplog.text and "PASSWORD42" not in caplog.text
    assert server.auth == ["Basic " + base64.b64encode(b"alice:PASSWORD42").decode()]


def test_url_password_beside_an_api_key_is_refused(server: Server, tiny_llm_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.errors import ConfigError

    url = f"http://alice:PASSWORD42@127.0.0.1:{server.port}/v1"
    with pytest.raises(ConfigError, match=r"base_url http://alice:<redacted>@.* carries a user:password and api_key "
                                          r"is set.*drop one") as e:
        openai(server, tiny_llm_dir, url=url, api_key="sk-1")
    assert "PASSWORD42" not in str(e.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-2")
    with pytest.raises(ConfigError, match=r"\$OPENAI_API_KEY is set"):
        openai(server, tiny_llm_dir, url=url)
    backend = openai(server, tiny_llm_dir)  # the key alone is still sent as a Bearer token
    backend.next_token_logprobs(PROMPTS[:1], [4])
    assert server.auth == ["Bearer sk-2"]
    backend.close()


@pytest.mark.parametrize("verbose", [True, False])
def test_cli_log_handler_redacts_httpx_urls(verbose: bool) -> None:
    import io
    import logging

    from rerank.cli import log_handler

    stream = io.StringIO()
    handler = log_handler(verbose, stream)
    for name, level in (("httpx", logging.INFO), ("httpcore.http11", logging.WARNING)):
        record = logging.LogRecord(name, level, __file__, 1, 'HTTP Request: %s %s "%s"', ("POST",
                                   "http://alice:PASSWORD42@127.0.0.1:1/v1/completions", "HTTP/1.1 200 OK"), None)
        if handler.filter(record):
            handler.emit(record)
    assert "PASSWORD42" not in stream.getvalue() and "http://alice:<redacted>@127.0.0.1:1/v1/completions" \
        in stream.getvalue()


# ---------------------------------------------------------------- #8 openai concurrency with the default options


def test_a_head_call_is_spread_over_concurrent_requests_in_order(server: Server, tiny_llm_dir: Path) -> None:
    """The head's batch of 8 prompts (its default batch_size, which it also gives the backend) goes as 4 requests of
    2 at once with the default concurrency 4 (it was one request of 8); the answers keep the prompts' order."""
    from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker

    server.delay = 0.2
    head = YesNoReranker(YesNoConfig(backend_options={"base_url": server.url, "tokenizer": str(tiny_llm_dir)}),
                         model="served", backend_name="openai")
    assert head.backend.config.batch_size == 8 and head.backend.config.concurrency == 4
    got = head.backend.next_token_logprobs(PROMPTS, [4, 6])
    assert sorted(map(len, server.prompts)) == [2, 2, 2, 2] and server.most_in_flight == 4
    assert sorted(map(tuple, (p for batch in server.prompts for p in batch))) == sorted(map(tuple, PROMPTS))
    serial = openai(server, tiny_llm_dir, concurrency=1, batch_size=8)
    assert serial.next_token_logprobs(PROMPTS, [4, 6]) == got
    assert len(server.prompts[-1]) == 8
    head.backend.close()
    serial.close()


# ---------------------------------------------------------------- #7b the NaN hint follows the backend


@pytest.mark.parametrize(("backend_name", "hint", "absent"), [
    ("openai", "the server returned NaN log-probabilities", "--reranker-set dtype=float32"),
    ("llamacpp", "backend_options.kv_cache_type=f32", "--reranker-set dtype=float32"),
    ("transformers", "try dtype=float32 (--reranker-set dtype=float32)", "server"),
])
def test_nan_hint_suggests_only_what_the_backend_takes(tiny_llm_dir: Path, backend_name: str, hint: str,
                                                       absent: str) -> None:
    from transformers import AutoTokenizer

    from rerank.backends.scripted import ScriptedBackend
    from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker

    backend = ScriptedBackend(AutoTokenizer.from_pretrained(tiny_llm_dir),
                              logprobs_fn=lambda text, ids: [math.nan] * len(ids))
    backend.name = backend_name
    head = YesNoReranker(YesNoConfig(), backend=backend)
    with pytest.raises(RerankError, match="NaN") as e:
        head.rerank("cats", ["cats eat meat", "dogs bark"])
    assert hint in str(e.value) and absent not in str(e.value)


# ---------------------------------------------------------------- #4, #9, #5 the LLM-call cache key


class _Described:
    """A scripted backend that describes itself as a transformers run resolved to ``resolved``."""

    @staticmethod
    def make(tok: Any, value: float, **resolved: Any) -> Any:
        from rerank.backends.scripted import ScriptedBackend

        class Backend(ScriptedBackend):
            def describe(self) -> dict[str, Any]:
                return {"backend": "transformers", "dtype": "auto", "device": None, **resolved}

        return Backend(tok, logprobs_fn=lambda text, ids: [value] * len(ids))


def test_cache_key_holds_the_resolved_dtype_and_device_type(tiny_llm_dir: Path, tmp_path: Path) -> None:
    """A bf16 GPU run and an fp32 CPU run of the same model no longer share answers; another GPU index, another
    thread count do."""
    from transformers import AutoTokenizer

    from rerank.backends.cache import CachingBackend

    tok, db, model = AutoTokenizer.from_pretrained(tiny_llm_dir), tmp_path / "c.sqlite", str(tiny_llm_dir)

    def run(value: float, **resolved: Any) -> tuple[list[list[float]], int]:
        be = CachingBackend(_Described.make(tok, value, **resolved), model, db)
        out, hits = be.next_token_logprobs([[1, 2, 3]], [5]), be.hits
        be.close()
        return out, hits

    assert run(-0.5, resolved_dtype="torch.bfloat16", resolved_device="cuda:0") == ([[-0.5]], 0)
    assert run(-2.0, resolved_dtype="torch.float32", resolved_device="cuda:0") == ([[-2.0]], 0)
    assert run(-3.0, resolved_dtype="torch.float32", resolved_device="cpu") == ([[-3.0]], 0)
    assert run(-9.0, resolved_dtype="torch.bfloat16", resolved_device="cuda:1", resolved_threads=3) == ([[-0.5]], 1)


def test_openai_transport_options_keep_the_cache(server: Server, tiny_llm_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.backends.cache import CachingBackend

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db = tmp_path / "c.sqlite"

    def run(**options: Any) -> int:
        be = CachingBackend(openai(server, tiny_llm_dir, **options), "served", db)
        be.next_token_logprobs(PROMPTS[:2], [4])
        be.close()
        return be.hits

    assert run() == 0
    sent = len(server.prompts)
    assert run(timeout=60, max_retries=0, concurrency=1, batch_size=1, api_key="sk-1") == 2
    assert len(server.prompts) == sent  # the second run made no request
    assert run(top_logprobs=5) == 0  # an option that shapes the request still misses


def test_hub_id_is_keyed_by_its_local_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id found in huggingface_hub's cache is keyed by its snapshot's files: a new revision misses; one not
    in that cache (or a served name) is keyed by name."""
    import huggingface_hub.constants

    from rerank.backends.cache import model_fingerprint

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--tiny"
    for sha, weights in (("a" * 40, b"old"), ("b" * 40, b"new")):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
        (repo / "snapshots" / sha / "model.safetensors").write_bytes(weights)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    old = model_fingerprint("org/tiny")
    (repo / "refs" / "main").write_text("b" * 40)
    new = model_fingerprint("org/tiny")
    assert len(old) == len(new) == 64 and old != new
    assert model_fingerprint("org/tiny", served=True) == "name:org/tiny"
    assert model_fingerprint("org/absent") == "name:org/absent"


# ---------------------------------------------------------------- #10 a warning beside a progress bar


def test_cli_log_lines_start_their_own_line_beside_a_progress_bar() -> None:
    import io
    import logging

    from tqdm import tqdm

    from rerank.cli import log_handler

    stream = io.StringIO()
    handler = log_handler(False, stream)
    with tqdm(total=2, desc="rerank", file=stream, ncols=60) as bar:
        bar.update(1)
        record = logging.LogRecord("rerank.heads.base", logging.WARNING, __file__, 1, "listwise: 2 of 2 outputs failed",
                                   (), None)
        handler.handle(record)
        bar.update(1)
    before = stream.getvalue().split("WARNING rerank.heads.base")[0]
    assert "rerank:" in before and before.split("\r")[-1].strip() == ""  # the bar was cleared first, then redrawn
    assert "2/2" in stream.getvalue().split("outputs failed")[1]
