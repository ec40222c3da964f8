"""OpenAIBackend request building and response parsing against a scripted OpenAI-compatible server on loopback.

The fake server answers ``/v1/completions`` like vLLM (``logprob_token_ids``, ``return_tokens_as_token_ids``,
``return_token_ids``, a ``--max-logprobs`` cap of 20) or like a plain server (top-N log-probs keyed by token text),
returns choices out of order, and can fail or stall on demand. The real-server test is ``test_vllm_backend.py``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rerank.backends.base import GenerationConfig
from rerank.backends.registry import available_backends, build_backend
from rerank.errors import ConfigError, RerankError

MAX_LOGPROBS = 20
GENERATED_TEXT = "yes it is relevant"


def fake_logprob(prompt: list[int], token_id: int) -> float:
    """The scripted log-prob of ``token_id`` after ``prompt`` (distinct per prompt and id)."""
    return -(1.0 + (sum(prompt) * (token_id + 3)) % 89 / 10.0 + token_id / 1000.0)


class FakeServer:
    """A scripted completions server; ``mode`` is ``vllm`` (honours extensions) or ``plain`` (top-N by text)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.mode = "vllm"
        self.strict = False  # plain mode: reject unknown fields with 400, as OpenAI does
        self.fail: list[int] = []  # status codes to answer before succeeding
        self.delay = 0.0
        self.top_override: list[int] | None = None  # plain mode: the ids returned as the top list
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = server.answer(self.path, dict(self.headers), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out (test_timeout_...)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def ids_of(self, prompt: Any) -> list[int]:
        return list(prompt) if isinstance(prompt, list) else self.tokenizer.encode(prompt, add_special_tokens=False)

    def answer(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append((headers, body))
            status = self.fail.pop(0) if self.fail else 200
        if self.delay:
            time.sleep(self.delay)
        if path != "/v1/completions":
            return 404, {"error": {"message": f"no route {path}"}}
        if status != 200:
            return status, {"error": {"message": "scripted failure"}}
        extensions = {"logprob_token_ids", "return_tokens_as_token_ids", "return_token_ids"} & set(body)
        if self.mode == "plain" and self.strict and extensions:
            return 400, {"error": {"message": f"Unrecognized request arguments: {sorted(extensions)}"}}
        if self.mode == "vllm" and len(body.get("logprob_token_ids") or []) > MAX_LOGPROBS:
            return 400, {"error": {"message": f"Requested sample logprobs of more than {MAX_LOGPROBS}"}}
        prompts = body["prompt"] if isinstance(body["prompt"], list) and body["prompt"] and isinstance(
            body["prompt"][0], (list, str)) else [body["prompt"]]
        choices = [self.choice(i, self.ids_of(p), body) for i, p in enumerate(prompts)]
        return 200, {"object": "text_completion", "model": body["model"], "choices": choices[::-1]}

    def choice(self, index: int, prompt: list[int], body: dict[str, Any]) -> dict[str, Any]:
        if body.get("logprobs") is None:
            ids = self.tokenizer.encode(GENERATED_TEXT, add_special_tokens=False) + [self.tokenizer.eos_token_id]
            out: dict[str, Any] = {"index": index, "text": GENERATED_TEXT, "finish_reason": "stop"}
            if self.mode == "vllm" and body.get("return_token_ids"):
                out["token_ids"] = ids
            return out
        vocab = len(self.tokenizer)
        if self.mode == "vllm" and body.get("logprob_token_ids"):
            chosen = list(body["logprob_token_ids"])
        elif self.top_override is not None:
            chosen = self.top_override
        else:
            chosen = sorted(range(vocab), key=lambda t: -fake_logprob(prompt, t))[: body["logprobs"]]
        by_ids = self.mode == "vllm" and body.get("return_tokens_as_token_ids")
        key = (lambda t: f"token_id:{t}") if by_ids else (lambda t: self.tokenizer.decode([t]))
        top = {key(t): fake_logprob(prompt, t) for t in chosen}
        sampled = max(range(vocab), key=lambda t: fake_logprob(prompt, t))
        return {
            "index": index,
            "text": "",
            "logprobs": {"tokens": [key(sampled)], "token_logprobs": [fake_logprob(prompt, sampled)],
                         "top_logprobs": [top], "text_offset": [0]},
        }  # fmt: skip


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerank.testing import build_tokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(path)
    return path


@pytest.fixture
def server(tok_dir: Path) -> Iterator[FakeServer]:
    from transformers import AutoTokenizer

    srv = FakeServer(AutoTokenizer.from_pretrained(tok_dir))
    yield srv
    srv.close()


def make(server: FakeServer, tok_dir: Path, **options: Any) -> Any:
    return build_backend("openai", "served-name", base_url=server.url, tokenizer=str(tok_dir), **options)


def prompts_for(backend: Any, texts: list[str]) -> list[list[int]]:
    return [backend.tokenizer.encode(t, add_special_tokens=False) for t in texts]


TEXTS = ["the cat sat", "solar panels make power", "a b c", "what is the capital", "dogs bark"]


def test_registered() -> None:
    assert {"openai", "vllm"} <= set(available_backends())


def test_logprobs_exact_ids_batched_and_chunked(server: FakeServer, tok_dir: Path) -> None:
    backend = make(server, tok_dir, batch_size=2, concurrency=3)
    prompts = prompts_for(backend, TEXTS)
    ids = list(range(3, 28)) + [5]  # 25 distinct ids (> the server's cap of 20) and one repeat
    got = backend.next_token_logprobs(prompts, ids)
    assert got == [[pytest.approx(fake_logprob(p, t), abs=1e-12) for t in ids] for p in prompts]
    bodies = [b for _, b in server.requests]
    # 3 request batches (2+2+1 prompts) x 2 id chunks (20 + 5), each prompt sent as token ids, in order
    assert len(bodies) == 6 and backend.requests == 6
    assert sorted(len(b["prompt"]) for b in bodies) == [1, 1, 2, 2, 2, 2]
    assert sorted(len(b["logprob_token_ids"]) for b in bodies) == [5, 5, 5, 20, 20, 20]
    assert {p for b in bodies for p in map(tuple, b["prompt"])} == {tuple(p) for p in prompts}
    for b in bodies:
        assert b["model"] == "served-name" and b["max_tokens"] == 1 and b["temperature"] == 0.0
        assert b["return_tokens_as_token_ids"] is True and b["logprobs"] == 20
    assert backend.calls["next_token_logprobs"] == 1


def test_plain_server_reads_top_n_by_text_or_raises(server: FakeServer, tok_dir: Path) -> None:
    server.mode, server.strict = "plain", True
    backend = make(server, tok_dir, extensions=False, top_logprobs=5)
    prompt = prompts_for(backend, ["the cat sat"])
    vocab = len(backend.tokenizer)
    ranked = sorted(range(vocab), key=lambda t: -fake_logprob(prompt[0], t))
    texts = [backend.tokenizer.decode([t]) for t in range(vocab)]
    top = next(t for t in ranked[:5] if texts.count(texts[t]) == 1)
    assert backend.next_token_logprobs(prompt, [top]) == [[pytest.approx(fake_logprob(prompt[0], top))]]
    assert "logprob_token_ids" not in server.requests[-1][1] and server.requests[-1][1]["logprobs"] == 5
    with pytest.raises(RerankError, match=rf"token id {ranked[-1]} .* not among the"):
        backend.next_token_logprobs(prompt, [ranked[-1]])
    # with extensions on, a strict plain server rejects the request: the error names the server's message
    with pytest.raises(RerankError, match="answered 400: .*Unrecognized request arguments"):
        make(server, tok_dir).next_token_logprobs(prompt, [top])


def test_plain_server_ambiguous_text_raises(server: FakeServer, tok_dir: Path) -> None:
    """Two ids decoding to the same text cannot be told apart in a text-keyed answer: raise, never pick one."""
    server.mode = "plain"
    backend = make(server, tok_dir, extensions=False, top_logprobs=20)
    prompt = prompts_for(backend, ["the cat sat"])[0]
    vocab = len(backend.tokenizer)
    texts = [backend.tokenizer.decode([t]) for t in range(vocab)]
    shared = [t for t in range(vocab) if texts.count(texts[t]) > 1]
    assert shared, "the tiny tokenizer has no two ids with the same text (byte fragments decode to U+FFFD)"
    server.top_override = shared[:2]
    with pytest.raises(RerankError, match="decodes to .* like ids"):
        backend.next_token_logprobs([prompt], [shared[0]])


def test_text_prompt_format(server: FakeServer, tok_dir: Path) -> None:
    backend = make(server, tok_dir, prompt_format="text", concurrency=1)  # one request holds both prompts
    prompts = prompts_for(backend, TEXTS[:2])
    got = backend.next_token_logprobs(prompts, [7, 9])
    assert [b["prompt"] for _, b in server.requests] == [["the cat sat", "solar panels make power"]]
    assert got == [[pytest.approx(fake_logprob(p, t)) for t in (7, 9)] for p in prompts]


def test_generate_request_and_local_decoding(server: FakeServer, tok_dir: Path) -> None:
    backend = make(server, tok_dir, batch_size=4)
    prompts = prompts_for(backend, TEXTS[:3])
    out = backend.generate(prompts, GenerationConfig(max_new_tokens=7, seed=3, stop=[" is"]))
    assert out == ["yes it"] * 3
    body = server.requests[-1][1]
    assert body["max_tokens"] == 7 and body["temperature"] == 0.0 and body["seed"] == 3 and body["top_p"] == 1.0
    assert body["stop"] == [" is"] and body["return_token_ids"] is True and "logprobs" not in body
    # without extensions the server's text is used (and still cut at the stop string)
    server.mode = "plain"
    plain = make(server, tok_dir, extensions=False)
    assert plain.generate(prompts[:1], GenerationConfig(stop=["rel"])) == ["yes it is "]
    assert "return_token_ids" not in server.requests[-1][1] and "stop" in server.requests[-1][1]


def test_retries_then_succeeds_and_client_errors_do_not_retry(server: FakeServer, tok_dir: Path) -> None:
    backend = make(server, tok_dir, max_retries=2)
    prompt = prompts_for(backend, ["a b c"])
    server.fail = [503, 429]
    assert backend.next_token_logprobs(prompt, [4]) == [[pytest.approx(fake_logprob(prompt[0], 4))]]
    assert len(server.requests) == 3
    server.fail = [503, 503, 503]
    with pytest.raises(RerankError, match="answered 503"):
        backend.next_token_logprobs(prompt, [4])
    assert len(server.requests) == 6
    server.fail = [400]
    with pytest.raises(RerankError, match="answered 400: .*scripted failure"):
        backend.next_token_logprobs(prompt, [4])
    assert len(server.requests) == 7


def test_timeout_and_unreachable(server: FakeServer, tok_dir: Path) -> None:
    server.delay = 1.0
    slow = make(server, tok_dir, timeout=0.2, max_retries=0)
    with pytest.raises(RerankError, match=r"did not answer within backend_options\.timeout=0\.2 s"):
        slow.next_token_logprobs(prompts_for(slow, ["a"]), [4])
    closed = make(server, tok_dir, max_retries=0)
    server.close()
    with pytest.raises(RerankError, match="unreachable"):
        closed.generate(prompts_for(closed, ["a"]), GenerationConfig())
    server.close = lambda: None  # type: ignore[method-assign]


def test_api_key_from_env_or_option(server: FakeServer, tok_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    backend = make(server, tok_dir)
    backend.next_token_logprobs(prompts_for(backend, ["a"]), [4])
    assert server.requests[-1][0]["Authorization"] == "Bearer env-key"
    assert backend.describe()["api_key"] == "<redacted>"
    make(server, tok_dir, api_key="opt-key").generate(prompts_for(backend, ["a"]), GenerationConfig())
    assert server.requests[-1][0]["Authorization"] == "Bearer opt-key"
    monkeypatch.delenv("OPENAI_API_KEY")
    make(server, tok_dir).generate(prompts_for(backend, ["a"]), GenerationConfig())
    assert "Authorization" not in server.requests[-1][0]


def test_bad_options_and_inputs(server: FakeServer, tok_dir: Path) -> None:
    with pytest.raises(ConfigError, match="base_url is required"):
        build_backend("openai", "m", tokenizer=str(tok_dir))
    with pytest.raises(ConfigError, match="chosen by the server"):
        make(server, tok_dir, dtype="float32")
    with pytest.raises(ConfigError, match="chosen by the server"):
        make(server, tok_dir, device="cuda")
    with pytest.raises(ConfigError, match="concurrency must be >= 1"):
        make(server, tok_dir, concurrency=0)
    with pytest.raises(ConfigError, match="bogus"):
        make(server, tok_dir, bogus=1)
    backend = make(server, tok_dir)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        backend.next_token_logprobs([[1, 2]], [10**6])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        backend.next_token_logprobs([[1, 2], []], [3])
    assert server.requests == []


def test_vllm_backend_without_vllm_says_how_to_install() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs the `vllm` package"):
            build_backend("vllm", "some/model")
    else:
        pytest.skip("vllm is installed in this venv; the vLLM-venv tests cover it")


def test_cli_base_url_fills_backend_options() -> None:
    import argparse

    from rerank.cli.common import add_reranker, reranker_options

    p = argparse.ArgumentParser()
    add_reranker(p)
    args = p.parse_args(["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
                         "--reranker-set", "backend_options.top_logprobs=5"])  # fmt: skip
    assert reranker_options(args) == {"backend_options": {"top_logprobs": 5, "base_url": "http://127.0.0.1:9/v1"}}
    assert reranker_options(p.parse_args([])) == {}


def test_cli_rank_with_openai_backend(server: FakeServer, tok_dir: Path, tmp_path: Path, run_cli: Any) -> None:
    """``rerank rank --backend openai --base-url``: the scores are the server's log P(yes) - log P(no) per prompt."""
    docs = ["solar panels make power", "cats eat fish", "the market fell", "a panel of judges"]
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"qid": "q1", "query": "how do solar panels work", "docs": docs}) + "\n")
    out = tmp_path / "out.jsonl"
    rc, stdout, stderr = run_cli(
        "rank", "--reranker", "yes-no", "--model", "served-name", "--backend", "openai", "--base-url", server.url,
        "--reranker-set", f"backend_options.tokenizer={tok_dir}", "--input", inp, "--output", out,
    )  # fmt: skip
    assert rc == 0, stderr
    ranking = json.loads(out.read_text())["ranking"]
    bodies = [b for _, b in server.requests]
    assert bodies and all(b["model"] == "served-name" for b in bodies)
    pos, neg = bodies[0]["logprob_token_ids"]
    expected = sorted(
        fake_logprob(p, pos) - fake_logprob(p, neg) for b in bodies for p in b["prompt"]
    )
    assert len(expected) == len(docs) and len(set(expected)) == len(docs)  # distinct: the order is decided
    assert sorted(d["score"] for d in ranking) == pytest.approx(expected)
    assert [d["score"] for d in ranking] == sorted((d["score"] for d in ranking), reverse=True)
    for extra in ([], ["--reranker-set", f"backend_options.tokenizer={tmp_path / 'no-such-tokenizer'}"]):
        rc, _, stderr = run_cli(  # a tokenizer that cannot load (the hub is offline in tests): one line, not a traceback
            "rank", "--reranker", "yes-no", "--model", "org/served-name", "--backend", "openai", "--base-url",
            server.url, *extra, "--input", inp, "--output", out,
        )  # fmt: skip
        assert rc == 2 and "openai backend: cannot load the tokenizer" in stderr and "Traceback" not in stderr
