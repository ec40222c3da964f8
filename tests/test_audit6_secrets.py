"""Audit s43/repro findings 1-2: credentials in a URL (``user:password@``, a token as the user, a token in the query
string) never reach a record, an error message or an httpx log line.

:func:`rerank.config.redact_url` is checked on its own and through its users: the remote reranker's ``describe()`` and
errors (a scripted transport, or a closed loopback port), the openai backend's errors and refusal (a scripted
completions server on loopback, the tiny Qwen2 tokenizer) and the command line's log handler.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_audit_backends import PROMPTS, Server

from rerank.backends.registry import build_backend
from rerank.config import REDACTED, redact_url, to_dict
from rerank.errors import ConfigError, RerankError

SECRET = "sk-FAKESECRET123"


@pytest.mark.parametrize(("url", "expected"), [
    (f"http://u:{SECRET}@127.0.0.1:8766", "http://u:<redacted>@127.0.0.1:8766"),
    (f"http://{SECRET}@127.0.0.1:8766/v1", "http://<redacted>@127.0.0.1:8766/v1"),
    (f"redis://:{SECRET}@db:6379/0", "redis://:<redacted>@db:6379/0"),
    (f"http://u:p@{SECRET}@h/x", "http://u:<redacted>@h/x"),  # an unencoded '@' in the password
    (f"http://127.0.0.1:9/v1?api_key={SECRET}", "http://127.0.0.1:9/v1?api_key=<redacted>"),
    (f"http://h/v1?model=m&Token={SECRET}&page=2", "http://h/v1?model=m&Token=<redacted>&page=2"),
    (f"https://b.s3.amazonaws.com/o?X-Amz-Date=2026&X-Amz-Signature={SECRET}",
     "https://b.s3.amazonaws.com/o?X-Amz-Date=2026&X-Amz-Signature=<redacted>"),
    (f"https://a.blob.core.windows.net/c?sv=2021&sig={SECRET}",
     "https://a.blob.core.windows.net/c?sv=2021&sig=<redacted>"),
    (f"http://h/cb?code={SECRET}&state=s#access_token={SECRET}",
     "http://h/cb?code=<redacted>&state=s#access_token=<redacted>"),
    (f"http://h/?hf_token={SECRET}&subscription-key={SECRET}&max_tokens=3",
     "http://h/?hf_token=<redacted>&subscription-key=<redacted>&max_tokens=3"),
    (f"http://h/?next=http://i/?key={SECRET}", "http://h/?next=http://i/?key=<redacted>"),  # a URL in a value
])
def test_redact_url_hides_every_credential_form_and_keeps_the_rest(url: str, expected: str) -> None:
    """Only ``user:password@`` was redacted: a token as the user or in the query string was kept in full."""
    assert redact_url(url) == expected
    assert redact_url(expected) == expected  # redacting twice changes nothing


def test_redact_url_finds_urls_inside_a_longer_text() -> None:
    text = (f'error: rerank server http://{SECRET}@127.0.0.1:8766 answered 401: bad key; '
            f'{{"url":"http://127.0.0.1:9/v1?api_key={SECRET}","mail":"a@b.com"}} (http://x:{SECRET}@h:1/p)')
    out = redact_url(text)
    assert SECRET not in out
    assert out == ('error: rerank server http://<redacted>@127.0.0.1:8766 answered 401: bad key; '
                   '{"url":"http://127.0.0.1:9/v1?api_key=<redacted>","mail":"a@b.com"} (http://x:<redacted>@h:1/p)')


@pytest.mark.parametrize("plain", [
    "http://127.0.0.1:8000/v1", "https://host/path?model=m&max_tokens=3", "mail me at a@b.com", "token=abc",
    "see http://h/ or a@b.c", "http://u:@h/",
])
def test_redact_url_leaves_text_without_credentials_alone(plain: str) -> None:
    assert redact_url(plain) == plain


# ---------------------------------------------------------------- the remote reranker


@pytest.mark.parametrize("url", [f"http://u:{SECRET}@127.0.0.1:9", f"http://{SECRET}@127.0.0.1:9"])
def test_remote_describe_and_config_record_no_url_credential(url: str) -> None:
    """``describe()`` returned the raw ``base_url``, which ``rerank eval`` wrote to ``metrics.json``."""
    from rerank.client import RemoteReranker, RemoteRerankerConfig

    rr = RemoteReranker(RemoteRerankerConfig(base_url=url, api_key="k"))
    try:
        record = json.dumps({"reranker": rr.describe(), "config": to_dict(rr.config)})
    finally:
        rr.close()
    assert SECRET not in record and "127.0.0.1:9" in record and REDACTED in record


def test_remote_errors_name_the_server_without_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.client import RemoteReranker, RemoteRerankerConfig, RemoteRerankError

    monkeypatch.setattr("rerank.utils.http.time.sleep", lambda s: None)
    url = f"http://{SECRET}@127.0.0.1:9"
    rr = RemoteReranker(RemoteRerankerConfig(base_url=url, max_retries=0))
    try:
        with pytest.raises(RemoteRerankError, match=r"^rerank server http://<redacted>@127\.0\.0\.1:9 unreachable") \
                as e:
            rr.check_server()
        assert SECRET not in str(e.value)
        echo = f"no access for {url}/v1/rerank?api_key={SECRET}"  # a server that quotes the request
        rr._client = httpx.Client(base_url=url, transport=httpx.MockTransport(
            lambda request: httpx.Response(401, json={"message": echo})))
        with pytest.raises(RemoteRerankError, match=r"^rerank server http://<redacted>@127\.0\.0\.1:9 answered 401: "
                                                    r"no access for http://<redacted>@") as e:
            rr.rerank("q", ["a"])
        assert SECRET not in str(e.value)

        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError(f"cannot connect to {request.url}", request=request)
        rr._client = httpx.Client(base_url=f"http://127.0.0.1:9/?key={SECRET}", transport=httpx.MockTransport(refuse))
        with pytest.raises(RemoteRerankError, match=r"unreachable: cannot connect to") as e:
            rr.rerank("q", ["a"])
        assert SECRET not in str(e.value)
    finally:
        rr.close()


# ---------------------------------------------------------------- the openai backend


@pytest.fixture
def server() -> Iterator[Server]:
    """A scripted completions server on loopback."""
    s = Server()
    yield s
    s.close()


@pytest.mark.parametrize(("url", "shown"), [
    (f"http://tok-{SECRET}@127.0.0.1:9/v1", "http://<redacted>@127.0.0.1:9/v1"),
])
def test_openai_unreachable_error_redacts_the_url(url: str, shown: str, tiny_llm_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = build_backend("openai", "served", base_url=url, tokenizer=str(tiny_llm_dir), max_retries=0)
    try:
        with pytest.raises(RerankError, match="unreachable") as e:
            backend.next_token_logprobs(PROMPTS[:1], [4])
    finally:
        backend.close()
    assert SECRET not in str(e.value) and str(e.value).startswith(f"openai backend: {shown} unreachable: ")


def test_openai_status_error_redacts_a_url_the_server_echoes(server: Server, tiny_llm_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    echoed = f"{server.url}?api_key={SECRET}"  # the server quotes a URL holding a key
    server.reply = lambda body: (403, f"forbidden: {echoed}")
    backend = build_backend("openai", "served", base_url=server.url, tokenizer=str(tiny_llm_dir), max_retries=0)
    try:
        with pytest.raises(RerankError, match=r"answered 403: forbidden: http://127\.0\.0\.1:\d+/v1\?api_key="
                                              "<redacted>") as e:
            backend.next_token_logprobs(PROMPTS[:1], [4])
    finally:
        backend.close()
    assert SECRET not in str(e.value)


def test_openai_refusal_names_a_token_as_the_user_as_such(tiny_llm_dir: Path) -> None:
    """A base_url with a user and no password beside an API key was refused as carrying "a user:password"."""
    with pytest.raises(ConfigError, match=r"^openai backend: base_url http://<redacted>@127\.0\.0\.1:9/v1 carries a "
                                          r"user name or token before '@' \(sent as HTTP basic auth\) and api_key is "
                                          r"set.*drop one of them$") as e:
        build_backend("openai", "served", base_url=f"http://{SECRET}@127.0.0.1:9/v1", tokenizer=str(tiny_llm_dir),
                      api_key="sk-1")
    assert SECRET not in str(e.value) and "user:password" not in str(e.value)


# ---------------------------------------------------------------- the command line's log handler


@pytest.mark.parametrize("url", [f"http://{SECRET}@127.0.0.1:8766/v1/rerank",
                                 f"http://127.0.0.1:9/v1?api_key={SECRET}/completions"])
def test_cli_log_handler_redacts_tokens_in_httpx_lines(url: str) -> None:
    """``rerank -v`` logged ``HTTP Request: POST http://sk-…@127.0.0.1:8766/v1/rerank`` on every request."""
    from rerank.cli import log_handler

    stream = io.StringIO()
    handler = log_handler(True, stream)
    args: Any = ("POST", url, "HTTP/1.1 200 OK")
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, 'HTTP Request: %s %s "%s"', args, None)
    assert handler.filter(record)
    handler.emit(record)
    assert SECRET not in stream.getvalue() and "127.0.0.1" in stream.getvalue() and REDACTED in stream.getvalue()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8796/?token=abc123", "http://127.0.0.1:8796/v1#frag"])
def test_a_base_url_with_a_query_or_fragment_is_refused_in_one_line(url: str) -> None:
    """httpx appends the request path after the query (``POST /?token=X/v1/rerank``), so such a base_url could only
    answer 404; the token must not be echoed either."""
    from rerank.backends.openai import OpenAIBackendConfig
    from rerank.client import RemoteRerankerConfig

    with pytest.raises(ValueError, match="carries '\\?' or '#' \\(a query string or fragment") as e:
        RemoteRerankerConfig(base_url=url)
    assert "abc123" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="openai backend: base_url .* carries '\\?' or '#'") as e2:
        OpenAIBackendConfig(base_url=url)
    assert "abc123" not in str(e2.value)


# ---------------------------------------------------------------- review s43/reviewF of the redaction


@pytest.mark.parametrize("url", [f"http://u:pa#{SECRET}@127.0.0.1:9", f"http://u:pa?{SECRET}@127.0.0.1:9"])
def test_a_password_holding_a_hash_or_question_mark_is_redacted_whole(url: str) -> None:
    from rerank.client import RemoteRerankerConfig

    assert SECRET not in redact_url(f"error: {url} failed")
    with pytest.raises(ValueError) as e:
        RemoteRerankerConfig(base_url=url)
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("name", ["accessToken", "apiToken", "authToken", "sessionToken", "clientSecret", "privateKey",
                                  "bearer"])
def test_camel_case_credential_parameters_are_redacted(name: str) -> None:
    assert redact_url(f"http://h/x?{name}={SECRET}&page=2") == f"http://h/x?{name}={REDACTED}&page=2"


def test_many_parameters_do_not_exhaust_the_recursion_limit() -> None:
    text = "http://h/" + "?a=x" * 5000 + f"&token={SECRET}"
    assert SECRET not in redact_url(text)
    nested = "http://h/?next=" * 50 + f"http://h/?token={SECRET}"
    redact_url(nested)  # bounded nesting: no RecursionError


def test_json_escaped_url_credentials_are_redacted() -> None:
    assert redact_url(f'{{"url": "http:\\/\\/u:{SECRET}@h\\/v1"}}') == f'{{"url": "http:\\/\\/u:{REDACTED}@h\\/v1"}}'


@pytest.mark.parametrize("url", [f"http://u:{SECRET[:6]}/x{SECRET[6:]}@127.0.0.1:9"])
def test_a_slash_in_a_password_is_one_line_without_the_password(url: str) -> None:
    from rerank.backends.openai import OpenAIBackendConfig
    from rerank.client import RemoteRerankerConfig

    with pytest.raises(ValueError, match="percent-encoded") as e:
        RemoteRerankerConfig(base_url=url)
    assert SECRET[:6] not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="percent-encoded") as e2:
        OpenAIBackendConfig(base_url=url)
    assert SECRET[:6] not in str(e2.value)


def test_a_long_server_answer_is_quoted_on_one_short_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.client import RemoteReranker, RemoteRerankerConfig, RemoteRerankError

    rr = RemoteReranker(RemoteRerankerConfig(base_url="http://127.0.0.1:9", max_retries=0))
    try:
        rr._client = httpx.Client(base_url="http://127.0.0.1:9", transport=httpx.MockTransport(
            lambda request: httpx.Response(400, json={"message": "bad\nrequest " + "x" * 5000})))
        with pytest.raises(RemoteRerankError) as e:
            rr.rerank("q", ["a"])
    finally:
        rr.close()
    assert "\n" not in str(e.value) and len(str(e.value)) < 500


@pytest.mark.parametrize(("raw", "value"), [("out/exp #3/data.jsonl", "out/exp #3/data.jsonl"),
                                            ("#tag", "#tag"), ('"a #b"', "a #b"), ("a#b", "a#b"), ("5", 5)])
def test_a_set_value_holding_a_hash_is_not_cut_as_a_yaml_comment(raw: str, value: Any) -> None:
    """``--set "data.path=out/exp #3/x"`` became ``out/exp`` (audit s43/shipped, finding 1)."""
    from rerank.config import apply_overrides

    assert apply_overrides({}, [f"data.path={raw}"])["data"]["path"] == value


@pytest.mark.parametrize(("argv", "shown"), [
    (["rerank", "serve", "--api-key", SECRET], ["rerank", "serve", "--api-key", REDACTED]),
    (["rerank", "serve", f"--api-key={SECRET}"], ["rerank", "serve", f"--api-key={REDACTED}"]),
    (["--reranker-set", f"backend_options.api_key={SECRET}"], ["--reranker-set", f"backend_options.api_key={REDACTED}"]),
    (["--set", f"hf_token={SECRET}", "--set", "max_doc_tokens=5"], ["--set", f"hf_token={REDACTED}", "--set",
                                                                   "max_doc_tokens=5"]),
    (["--base-url", f"http://u:{SECRET}@h/v1", "--tokenizer", "t"], ["--base-url", f"http://u:{REDACTED}@h/v1",
                                                                      "--tokenizer", "t"]),
])
def test_command_lines_in_records_hide_secrets(argv: list[str], shown: list[str]) -> None:
    """Training wrote sys.argv as typed into rerank_train.json, an ``--set api_key=…`` included (review of the eval
    provenance); eval's record missed a secret flag followed by its value."""
    from rerank.config import redact_argv

    assert redact_argv(argv) == shown


def test_the_training_record_hides_a_secret_given_on_the_command_line(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.config import from_dict
    from rerank.trainers.base import save_run_record
    from rerank.trainers.sft_trainer import SFTTrainConfig

    monkeypatch.setattr("sys.argv", ["rerank", "train", "sft", "--set", f"backend_options.api_key={SECRET}"])
    config = from_dict(SFTTrainConfig, {"model": "m", "head": "cross-encoder", "data": {"path": "d.jsonl"}})
    path = save_run_record(tmp_path, "sft", config)
    text = Path(path).read_text()
    assert SECRET not in text and REDACTED in text


@pytest.mark.parametrize(("argv", "shown"), [
    ([f"--reranker-set=api_key={SECRET}"], [f"--reranker-set=api_key={REDACTED}"]),
    ([f"--set=backend_options.api_key={SECRET}"], [f"--set=backend_options.api_key={REDACTED}"]),
    (["--reranker-set", f"backend_options={{api_key: {SECRET}}}"], ["--reranker-set", f"backend_options={{api_key: {REDACTED}"]),
])
def test_secrets_given_as_flag_equals_key_value_are_hidden(argv: list[str], shown: list[str]) -> None:
    """``--reranker-set=api_key=KEY`` was written in clear (review s43/reviewI)."""
    from rerank.config import redact_argv

    assert redact_argv(argv) == shown


@pytest.mark.parametrize(("url", "shown"), [
    (f"http://h/?token=ab;{SECRET}&page=2", f"http://h/?token={REDACTED}&page=2"),
    (f"http://h/?a=1;token={SECRET}&b=2", f"http://h/?a=1;token={REDACTED}&b=2"),
    ("http://h/?x=1;y=2;z=3&page=4#top", "http://h/?x=1;y=2;z=3&page=4#top"),
])
def test_semicolons_in_a_query_neither_leak_nor_lose_parameters(url: str, shown: str) -> None:
    """``?token=ab;SECRET`` kept the part after the ';' (review s43/reviewF)."""
    assert redact_url(url) == shown


def test_many_semicolon_parameters_are_redacted_without_recursion() -> None:
    text = "http://h/" + ";a=x" * 5000 + f";token={SECRET}"
    assert SECRET not in redact_url(text)
