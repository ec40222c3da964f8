"""``rerank serve`` operator audit (s39): model names the x-model-id header cannot carry, damaged model files, the
503 at the connection cap read by the client, uvicorn's own 400s as JSON, the port held while the model loads,
compressed bodies, the documents-cut counter and the wording of startup and request errors."""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank.cli import build_parser, model_file_error
from rerank.cli.serve_cmd import serve_config
from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.heads.registry import register_reranker
from rerank.serve import ServeConfig
from rerank.serve.documents import Budget, TextTooLong, make_passages

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from serve_support import OverlapConfig, OverlapReranker, serving

register_reranker("test-overlap", OverlapReranker)
JSON = {"content-type": "application/json"}
BODY = {"query": "cats", "documents": ["cats purr", "dogs bark"]}


def _metric(text: str, line_start: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(line_start))


# ---------------------------------------------------------------- 1. names the x-model-id header cannot carry


@pytest.mark.parametrize("name", ["my-model ", "\tmodels/ce", "née/modèle"])
def test_a_model_name_no_header_can_carry_is_sent_whole_in_json_and_cleaned_in_the_header(name: str) -> None:
    """The default name is --model as given (a path is what it is): it used to crash every rerank and /info reply."""
    with serving(OverlapReranker(), ServeConfig(model_name=name)) as (url, _):
        r = httpx.post(f"{url}/v2/rerank", json=BODY)
        assert r.status_code == 200 and r.json()["model"] == name, r.text
        assert r.headers["x-model-id"] == "".join(c if " " <= c <= "~" else "?" for c in name).strip()
        assert httpx.get(f"{url}/info").json()["model_id"] == name


@pytest.mark.parametrize("name, words", [("my-model ", "whitespace"), ("my\r\nX-Evil: 1", "control character"),
                                         ("", "empty")])
def test_served_model_name_the_header_cannot_carry_is_refused_at_start(
    name: str, words: str, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    with pytest.raises(ConfigError, match=f"--served-model-name .*{words}"):
        serve_config(build_parser().parse_args(["serve", "--reranker", "x", "--served-model-name", name]))
    rc, _, err = run_cli("serve", "--reranker", "test-overlap", "--served-model-name", name, "--port", "0")
    assert rc == 2 and err.strip().count("\n") == 0 and "--served-model-name" in err, err
    assert serve_config(build_parser().parse_args(["serve", "--reranker", "x", "--served-model-name",
                                                   "my model/v2 ünïcode"])).model_name == "my model/v2 ünïcode"


# ---------------------------------------------------------------- 2. damaged model files


def _broken_copy(model_dir: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return broken


def test_a_truncated_safetensors_file_is_one_line_exit_2_naming_it(
    tiny_bert_dir: Path, tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    broken = _broken_copy(tiny_bert_dir, tmp_path)
    weights = broken / "model.safetensors"
    rc, _, err = run_cli("serve", "--reranker", "cross-encoder", "--model", broken, "--port", "0", "--threads", "1")
    assert rc == 2 and err.strip().count("\n") == 0, err
    assert f"model weights file {weights} is damaged or incomplete" in err and "save it again" in err, err
    from rerank.serve.server import RateLimitFilter  # the serve command's log limit ends with it (a test session's
    assert not [f for h in logging.getLogger().handlers for f in h.filters if isinstance(f, RateLimitFilter)]  # logs)
    (tmp_path / "in.jsonl").write_text(json.dumps({"query": "q", "docs": ["a", "b"]}) + "\n")
    rc, _, err = run_cli("rank", "--input", tmp_path / "in.jsonl", "--reranker", "cross-encoder", "--model", broken,
                         "--output", tmp_path / "out.jsonl")
    assert rc == 2 and err.strip().count("\n") == 0 and f"model weights file {weights} is damaged" in err, err


def test_only_the_loaders_own_file_errors_are_blamed_on_the_files(tmp_path: Path) -> None:
    from safetensors import safe_open

    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x01\x00")

    def open_weights(path: Path) -> None:
        with safe_open(str(path), framework="pt"):
            pass

    with pytest.raises(Exception) as caught:
        open_weights(bad)
    assert model_file_error(caught.value).startswith(f"{bad}: ")
    for genuine in (RuntimeError("a bug"), OSError("our own OSError"), TypeError("x")):
        try:
            raise genuine
        except Exception as e:  # noqa: BLE001 - raised here, in this test module: not the loader's
            assert model_file_error(e) is None


# ---------------------------------------------------------------- 3. the 503 at the connection cap is read


def _request(body: bytes, extra: str = "") -> bytes:
    return (f"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_connection_over_the_cap_reads_the_503_though_its_request_was_sent_at_once() -> None:
    """The server wrote the 503 and closed with the request unread: the kernel then resets the connection, and the
    client lost the 503 (a ConnectionResetError, or httpx's ReadError)."""
    body = json.dumps({"query": "q", "documents": ["x" * 9000]}).encode()
    with serving(OverlapReranker(), ServeConfig(max_connections=1)) as (url, port):
        answers = []
        with socket.create_connection(("127.0.0.1", port)) as holder:  # holds the cap: not idle, mid-request
            holder.sendall(b"POST /v1/rerank HTTP/1.1\r\n")
            time.sleep(0.2)
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", port)) as late:
                    late.sendall(_request(body))
                    answers.append(_read_all(late))
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers), [a[:40] for a in answers]
        assert b"retry-after: 1" in answers[0].lower() and b'"too_many_connections"' in answers[0]
        metrics = httpx.get(f"{url}/metrics").text
        assert _metric(metrics, 'rerank_errors_total{error_type="too_many_connections"}') == 5


# ---------------------------------------------------------------- 4. requests h11 cannot parse


@pytest.mark.parametrize("length", ["abc", "-1"])
def test_a_malformed_content_length_is_a_json_400_and_counted(length: str) -> None:
    with serving(OverlapReranker()) as (url, port):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {length}\r\n\r\n{{}}".encode())
            answer = _read_all(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower(), answer
        assert json.loads(body)["error_type"] == "invalid_http"
        assert _metric(httpx.get(f"{url}/metrics").text, 'rerank_errors_total{error_type="invalid_http"}') == 1


# ---------------------------------------------------------------- 5. the port is held while the model loads


def test_the_port_checked_at_start_is_the_socket_served_on(monkeypatch: pytest.MonkeyPatch,
                                                           run_cli: Callable[..., tuple[int, str, str]]) -> None:
    """The port was checked, released, and bound again after the model loaded: taken meanwhile, uvicorn exited 3."""
    from rerank.serve import server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seen: dict[str, Any] = {}
    real_load = Reranker.load

    def load(*args: Any, **kwargs: Any) -> Reranker:
        with socket.socket() as intruder:
            try:
                intruder.bind(("127.0.0.1", port))
                seen["taken"] = False
            except OSError:
                seen["taken"] = True
        return real_load(*args, **kwargs)

    def serve(make_app: Callable[[], Any], cfg: ServeConfig, workers: int = 1, sock: Any = None) -> None:
        seen["served on"] = sock.getsockname()[1] if sock is not None else None

    monkeypatch.setattr(Reranker, "load", staticmethod(load))
    monkeypatch.setattr(server, "serve", serve)
    rc, _, err = run_cli("serve", "--reranker", "test-overlap", "--port", str(port), "--threads", "1")
    assert rc == 0, err
    assert seen == {"taken": True, "served on": port}


# ---------------------------------------------------------------- 6. compressed bodies


def test_a_compressed_body_is_a_415_naming_content_encoding() -> None:
    import gzip

    with serving(OverlapReranker()) as (url, _):
        r = httpx.post(f"{url}/v1/rerank", content=gzip.compress(json.dumps(BODY).encode()),
                       headers={**JSON, "content-encoding": "gzip"})
        assert r.status_code == 415 and r.json()["error_type"] == "unsupported_media_type", r.text
        assert "Content-Encoding: gzip" in r.json()["message"]
        ok = httpx.post(f"{url}/v1/rerank", content=json.dumps(BODY), headers={**JSON, "content-encoding": "identity"})
        assert ok.status_code == 200, ok.text


# ---------------------------------------------------------------- 7. documents cut, counted when scored


class WholeList(OverlapReranker):
    """Scores a list as a whole (a listwise head): more documents than --max-docs are refused, not split."""

    independent_scores = False


def test_documents_cut_count_only_for_requests_that_were_scored() -> None:
    cfg = ServeConfig(max_doc_chars=10, max_docs=2)
    with serving(WholeList(), cfg) as (url, _):
        refused = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["long text here"] * 3})
        assert refused.status_code == 413 and refused.json()["error_type"] == "too_many_documents", refused.text
        scored = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["long text here", "short"]})
        assert scored.status_code == 200, scored.text
        assert _metric(httpx.get(f"{url}/metrics").text, "rerank_documents_cut_total") == 1


# ---------------------------------------------------------------- 8. wording


@pytest.mark.parametrize("field, value, flag", [("max_wait_ms", math.nan, "--max-wait-ms"),
                                                ("timeout_s", 0.0, "--timeout-s"),
                                                ("read_timeout_s", -1.0, "--read-timeout-s"),
                                                ("max_queue", 0, "--max-queue")])
def test_startup_errors_name_the_flag(field: str, value: float, flag: str) -> None:
    with pytest.raises(ValueError, match=f"^{flag} must be "):
        ServeConfig(**{field: value})


def test_an_empty_api_key_says_it_is_empty(run_cli: Callable[..., tuple[int, str, str]]) -> None:
    rc, _, err = run_cli("serve", "--reranker", "test-overlap", "--api-key", "", "--port", "0")
    assert rc == 2 and "--api-key (or $RERANK_API_KEY) is empty" in err and "None" not in err, err


def test_a_huge_integer_is_a_400_without_python_advice() -> None:
    with serving(OverlapReranker()) as (url, _):
        big = '{"query": "q", "documents": ["a"], "top_n": ' + "9" * 5000 + "}"
        r = httpx.post(f"{url}/v1/rerank", content=big, headers=JSON)
        assert r.status_code == 400 and r.json()["error_type"] == "invalid_json", r.text
        message = r.json()["message"]
        assert "digits" in message and "sys." not in message and "set_int_max_str_digits" not in message


def test_no_truncate_error_mentions_a_title_only_when_there_is_one() -> None:
    rr = OverlapReranker(OverlapConfig(doc_words=3))
    long = "one two three four five"
    with pytest.raises(TextTooLong) as untitled:
        make_passages(rr, "q", [(long, "")], Budget(truncate=False), "texts")
    assert "title" not in str(untitled.value) and "texts[0]" in str(untitled.value)
    with pytest.raises(TextTooLong, match=r"\(title included\)"):
        make_passages(rr, "q", [(long, "a title")], Budget(truncate=False))
