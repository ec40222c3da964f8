"""Any OpenAI-compatible *completions* endpoint (``vllm serve``, SGLang, TGI, OpenAI) as a backend, over httpx.

``--model`` is the served model name; the tokenizer (chat template, token ids) is loaded locally from the
``tokenizer`` option (a folder or hub id; default: the model name). Prompts are sent as token-id arrays (the
completions API accepts them), or as decoded text with ``prompt_format: text`` for servers that do not.

Log-probs of requested token ids (``max_tokens=1``, greedy):

- with ``extensions: true`` (default) the request also carries vLLM's ``logprob_token_ids`` (the server returns
  the exact log-softmax of exactly those ids at the first generated position), ``return_tokens_as_token_ids``
  (log-prob keys are ``token_id:N``, so tokens that decode to the same text stay apart) and ``return_token_ids``
  (generated ids, decoded locally like the other backends). Ids are sent ``top_logprobs`` at a time, because
  vLLM checks their count against its ``--max-logprobs`` (default 20).
- servers without those extensions (set ``extensions: false`` if they reject unknown fields) only return the top
  ``top_logprobs`` entries (OpenAI caps it at 5, vLLM at ``--max-logprobs``), keyed by token text. A requested id
  is read from them only when it is in that top list and its text is unambiguous in the vocabulary; otherwise the
  call raises a :class:`~rerank.errors.RerankError` naming the id. Nothing is ever guessed or floored.

A log-prob the server writes as null (JSON has no -inf; servers write a log-prob of -inf that way) is read as -inf;
a positive one or a NaN is refused by name (log-probs are <= 0; a tiny positive rounding error, at most
:data:`LOGPROB_SLACK`, reads as 0). A 200 reply that is not JSON, or not the completions shape (a proxy's login page, a
UI served at ``/v1``, a null text), is a one-line :class:`~rerank.errors.RerankError` naming the URL (its credentials
redacted) and quoting the start of the body.

Each call's prompts are sent ``batch_size`` per request at most, and spread over up to ``concurrency`` requests in
flight at once (``ceil(n / concurrency)`` prompts each), so a head call of 8 prompts makes 4 requests of 2 with the
defaults; the answers keep the prompts' order. ``timeout`` bounds each request's whole answer, not each read
(:mod:`rerank.utils.http`); a request that reaches it is retried at most once, and not at all when the server had
begun its answer (another try pays for the same generation again), and the error says to raise ``timeout``. Requests
run in daemon threads, so Ctrl-C or SIGTERM stops a run whose requests hang.
A ``user:password@`` (or a bare ``user@``/``TOKEN@``) in ``base_url`` is sent as HTTP basic auth, taken out of the URL
httpx logs; it cannot go with an API key (one ``Authorization`` header), so both together are refused. Every error
names the URL with its credentials redacted (:func:`~rerank.config.redact_url`).
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx

from rerank.backends.base import Backend, GenerationConfig
from rerank.backends.util import check_prompts, cut_at_stop, unique_ids
from rerank.backends.vllm import MAX_LOGPROB_IDS
from rerank.config import REDACTED, from_dict, redact_url, secret_field, to_dict, url_parse_problem, url_query_problem
from rerank.errors import ConfigError, RerankError
from rerank.utils.http import DeadlineExceeded, Tries, excerpt, post_with_retries

__all__ = ["OpenAIBackend", "OpenAIBackendConfig"]

TOKEN_ID_PREFIX = "token_id:"
#: the request fields of vLLM's extensions, sent with ``extensions: true``
EXTENSION_FIELDS = ("logprob_token_ids", "return_tokens_as_token_ids", "return_token_ids")
#: a positive log-prob up to this is a rounding error of the server's log-softmax and reads as 0; above, it is refused
LOGPROB_SLACK = 1e-4


def _in_daemon_threads(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    """``[fn(x) for x in items]`` run by up to ``workers`` daemon threads, in order; the first error is raised (no
    item is started once it is). The threads are daemons and nobody joins them, so a request stuck in a read never
    holds up Ctrl-C, SIGTERM or the process's exit (a thread pool's workers would: it joins them)."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for k in range(len(items)):
        todo.put(k)
    done: queue.SimpleQueue[tuple[int, bool, Any]] = queue.SimpleQueue()
    failed = threading.Event()

    def work() -> None:
        while not failed.is_set():
            try:
                k = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((k, True, fn(items[k])))
            except BaseException as e:  # noqa: BLE001 - handed to the calling thread, which raises it
                done.put((k, False, e))

    for _ in range(min(workers, len(items))):
        threading.Thread(target=work, name="rerank-openai", daemon=True).start()
    out: dict[int, Any] = {}
    try:
        while len(out) < len(items):
            k, ok, value = done.get()
            if not ok:
                raise value
            out[k] = value
    finally:
        failed.set()  # an error, Ctrl-C or SIGTERM here: the threads start no more items
    return [out[k] for k in range(len(items))]


@dataclass
class OpenAIBackendConfig:
    """Options of the OpenAI-compatible backend. ``api_key`` defaults to ``$OPENAI_API_KEY`` (none if unset).
    ``max_model_len``: the served model's context in tokens (vLLM's ``--max-model-len``); heads fit their prompts to
    it, and without it they cannot (a too-long prompt is then the server's error)."""

    base_url: str = ""
    api_key: str | None = secret_field()
    tokenizer: str | None = None
    prompt_format: Literal["token_ids", "text"] = "token_ids"
    extensions: bool = True
    top_logprobs: int = 20
    timeout: float = 120.0
    concurrency: int = 4
    batch_size: int = 16
    max_retries: int = 2
    dtype: str = "auto"
    device: str | None = None
    trust_remote_code: bool = False
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"openai backend: max_model_len must be >= 1, got {self.max_model_len}")
        if not self.base_url:
            raise ConfigError("openai backend: base_url is required (e.g. --base-url http://127.0.0.1:8000/v1)")
        if (problem := url_parse_problem(self.base_url) or url_query_problem(self.base_url)) is not None:
            raise ConfigError(f"openai backend: {problem}")
        for key in ("top_logprobs", "concurrency", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"openai backend: {key} must be >= 1, got {getattr(self, key)}")
        if self.max_retries < 0 or self.timeout <= 0:
            raise ConfigError("openai backend: max_retries must be >= 0 and timeout > 0")
        if self.dtype != "auto" or self.device is not None:
            raise ConfigError("openai backend: dtype and device are chosen by the server; drop them")


class OpenAIBackend(Backend):
    """Batched, concurrent ``POST {base_url}/completions`` requests; greedy decoding unless a temperature is given."""

    name = "openai"
    config_class = OpenAIBackendConfig
    #: options that only carry requests: the LLM-call cache leaves them out of its key (rerank.backends.cache)
    cache_ignored_options: ClassVar[frozenset[str]] = frozenset(
        {"timeout", "max_retries", "concurrency", "batch_size", "api_key"})

    def __init__(self, model: str, tokenizer: Any, config: OpenAIBackendConfig) -> None:
        super().__init__()
        self.model = model
        self._tokenizer = tokenizer
        self.config = config
        self.api_key = config.api_key if config.api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = httpx.URL(config.base_url.rstrip("/") + "/")
        auth: httpx.BasicAuth | None = None
        if url.userinfo:  # basic auth, kept out of the URL that httpx logs (`rerank -v`)
            if self.api_key:
                given = "api_key" if config.api_key is not None else "$OPENAI_API_KEY"
                what = "a user:password" if b":" in url.userinfo \
                    else "a user name or token before '@' (sent as HTTP basic auth)"
                raise ConfigError(f"openai backend: base_url {redact_url(config.base_url)} carries {what} and {given} "
                                  "is set, but a request sends one Authorization header; drop one of them")
            auth = httpx.BasicAuth(url.username, url.password)
            url = url.copy_with(username=None, password=None)
        self.requests = 0  # HTTP responses received, retried ones included
        self.client = httpx.Client(base_url=url, headers=headers, auth=auth, timeout=config.timeout,
                                   event_hooks={"response": [self._count_response]})
        self._text_to_ids: dict[str, list[int]] | None = None

    def _count_response(self, response: httpx.Response) -> None:
        self.requests += 1

    @classmethod
    def from_options(cls, model: str | None, **options: Any) -> OpenAIBackend:
        """Connect to ``base_url`` serving ``model``; the tokenizer loads from ``tokenizer`` (default: ``model``)."""
        cfg = from_dict(OpenAIBackendConfig, options, where="openai backend options")
        if not model:
            raise ConfigError("the openai backend needs --model (the served model name)")
        from transformers import AutoTokenizer

        source = cfg.tokenizer or model
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:  # not a folder, an unreachable or offline hub, no tokenizer files in it
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            given = "backend_options.tokenizer" if cfg.tokenizer else "--model (the tokenizer defaults to it)"
            raise ConfigError(f"openai backend: cannot load the tokenizer {source!r} from {given}: {first[:200]}; "
                              "give backend_options.tokenizer=FOLDER holding the served model's tokenizer files"
                              ) from None
        return cls(model, tokenizer, cfg)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def context_length(self) -> int | None:
        """The ``max_model_len`` option (None: unknown, prompts are not fitted)."""
        return self.config.max_model_len

    @property
    def _endpoint(self) -> str:
        """The completions URL as errors show it (credentials in it redacted: :func:`~rerank.config.redact_url`)."""
        return f"{redact_url(self.config.base_url.rstrip('/'))}/completions"

    def _unexpected(self, what: str, body: Any) -> RerankError:
        """A one-line error: the server's 200 reply was not the completions shape (``what``), quoting ``body``."""
        text = body if isinstance(body, str) else json.dumps(body, default=str)
        return RerankError(redact_url(f"openai backend: {self._endpoint} answered an unexpected body ({what}): "
                                      f"{excerpt(text)}"))

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One completions request, answered in full within ``timeout`` seconds a try; retries connection failures,
        429 and 5xx with exponential back-off or the server's ``Retry-After``, and a try that ran out of time at most
        once (never one the server had begun to answer: :mod:`rerank.utils.http`)."""
        tries = Tries()
        response = post_with_retries(
            self.client, "completions", payload, max_retries=self.config.max_retries,
            retry_status=lambda status: status == 429 or status >= 500, retry_errors=(httpx.TransportError,),
            unreachable=lambda e: self._transport_error(e, tries), deadline=self.config.timeout, tries=tries,
        )
        if response.status_code != 200:
            retried = f" ({tries})" if tries.count > 1 else ""
            raise RerankError(redact_url(f"openai backend: {self._endpoint} answered {response.status_code}{retried}: "
                                         f"{excerpt(response.text, 500)}{self._hint(response)}"))
        try:
            body = response.json()
        except ValueError:  # a proxy's login page, a UI served at /v1, a truncated reply
            raise RerankError(redact_url(f"openai backend: {self._endpoint} answered 200 with a non-JSON body: "
                                         f"{excerpt(response.text)}")) from None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list) \
                or not all(isinstance(c, dict) for c in body["choices"]):
            raise self._unexpected("not an object with a list of choice objects", body)
        return body

    def _transport_error(self, e: httpx.HTTPError, tries: Tries) -> RerankError:
        """The one-line error of a request that got no complete answer: a try that reached the ``timeout`` deadline
        says so and to raise it (the server was reached), any other transport error says the server is unreachable."""
        if isinstance(e, DeadlineExceeded):
            what = "began its answer but did not finish it" if e.answered else "did not answer"
            return RerankError(f"openai backend: {self._endpoint} {what} within backend_options.timeout="
                               f"{e.deadline:g} s ({tries}); a slow generation needs a longer deadline: raise "
                               "backend_options.timeout")
        return RerankError(redact_url(f"openai backend: {self.config.base_url} unreachable: {e} ({tries})"))

    def _hint(self, response: httpx.Response) -> str:
        """What to do about a refused request, where the status says: a 404 (no completions endpoint, or no such
        model), a 400 naming one of vLLM's extension fields (a server without them)."""
        if response.status_code == 404:
            return (f" (this backend needs a completions endpoint, {self._endpoint}, serving the model "
                    f"{self.model!r}; a server with only /chat/completions cannot run it: serve the model with "
                    "vLLM, SGLang or llama.cpp's llama-server)")
        if response.status_code in (400, 422) and self.config.extensions \
                and any(field in response.text for field in EXTENSION_FIELDS):
            return " (a server without vLLM's extensions: set backend_options.extensions=false)"
        return ""

    def _choices(self, prompts: Sequence[Sequence[int]], fields: dict[str, Any]) -> list[dict[str, Any]]:
        """Send prompts in up to ``concurrency`` requests at once (``batch_size`` per request at most, fewer so that a
        call's prompts fill ``concurrency`` requests); one choice per prompt, in the prompts' order."""
        check_prompts(prompts)
        if self.config.prompt_format == "token_ids":
            sent: list[Any] = [[int(t) for t in p] for p in prompts]
        else:
            sent = [self._tokenizer.decode(list(p), skip_special_tokens=False) for p in prompts]
        size = max(1, min(self.config.batch_size, -(-len(sent) // self.config.concurrency)))
        batches = [sent[i : i + size] for i in range(0, len(sent), size)]

        def run(batch: list[Any]) -> list[dict[str, Any]]:
            body = self._post({"model": self.model, "prompt": batch, "n": 1, **fields})
            choices = sorted(body["choices"], key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
            if len(choices) != len(batch):
                raise RerankError(f"openai backend: sent {len(batch)} prompts, got {len(choices)} choices")
            return choices

        if not batches:
            return []
        if len(batches) == 1:
            return run(batches[0])
        return [c for batch_choices in _in_daemon_threads(run, batches, self.config.concurrency) for c in batch_choices]

    def _vocab_text(self) -> dict[str, list[int]]:
        """Decoded text -> token ids over the whole vocabulary (to map text-keyed log-probs back to ids)."""
        if self._text_to_ids is None:
            table: dict[str, list[int]] = {}
            for t in range(len(self._tokenizer)):
                table.setdefault(self._tokenizer.decode([t]), []).append(t)
            self._text_to_ids = table
        return self._text_to_ids

    def _logprob(self, key: str, value: Any, choice: dict[str, Any]) -> float:
        """One log-prob as the server wrote it: null is -inf; a non-number, a NaN or a positive value is refused."""
        if value is None:
            return -math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._unexpected(f"the log-prob of {key!r} is {value!r}, not a number", choice)
        if math.isnan(value) or value > LOGPROB_SLACK:
            raise RerankError(f"openai backend: {self._endpoint} answered the log-prob {value} for {key!r}, but "
                              "log-probs are <= 0 (a NaN or positive one is a broken server or model); check the server")
        return min(float(value), 0.0)

    def _parse_logprobs(self, choice: dict[str, Any], wanted: Sequence[int], prompt_index: int) -> dict[int, float]:
        """Log-probs of ``wanted`` from one choice's first position; raises if one is absent or ambiguous."""
        lp = choice.get("logprobs") or {}
        tops = lp.get("top_logprobs") if isinstance(lp, dict) else None
        tokens = lp.get("tokens") if isinstance(lp, dict) else None
        token_lps = lp.get("token_logprobs") if isinstance(lp, dict) else None
        if not isinstance(lp, dict) or not isinstance(tops or [], list) or not isinstance(tokens or [], list) \
                or not isinstance(token_lps or [], list) or (tops and not isinstance(tops[0] or {}, dict)):
            raise self._unexpected("logprobs is not an object with top_logprobs as a list of objects", choice)
        entries: dict[str, Any] = dict(tops[0]) if tops and tops[0] else {}
        if tokens and token_lps and isinstance(tokens[0], str):
            entries.setdefault(tokens[0], token_lps[0])
        by_id: dict[int, float] = {}
        by_text: dict[str, float] = {}
        for key, value in entries.items():
            if key.startswith(TOKEN_ID_PREFIX) and key[len(TOKEN_ID_PREFIX) :].isdigit():
                by_id[int(key[len(TOKEN_ID_PREFIX) :])] = self._logprob(key, value, choice)
            else:
                by_text[key] = self._logprob(key, value, choice)
        out: dict[int, float] = {}
        for t in wanted:
            if t in by_id:
                out[t] = by_id[t]
                continue
            text = self._tokenizer.decode([t])
            if text in by_text:
                same = self._vocab_text().get(text, [t])
                if len(same) > 1:
                    raise RerankError(
                        f"openai backend: the server keys log-probs by text and token id {t} decodes to {text!r} "
                        f"like ids {same}; use a server that honours return_tokens_as_token_ids (vLLM)"
                    )
                out[t] = by_text[text]
                continue
            raise RerankError(self._missing_logprob(t, text, len(entries), prompt_index))
        return out

    def _missing_logprob(self, token: int, text: str, returned: int, prompt_index: int) -> str:
        """Why ``token``'s log-prob is not among the ``returned`` ones of a choice, and what helps."""
        asked = self.config.top_logprobs
        exact = "vLLM with extensions: true gives the log-prob of any token id"
        if returned == 0:
            return (f"openai backend: {self._endpoint} returned no log-probs for prompt {prompt_index} (asked for "
                    f"logprobs={asked}), so the log-prob of token id {token} ({text!r}) is unknown; this head needs a "
                    f"server that returns them ({exact}); raising top_logprobs does not help")
        if returned < asked:
            return (f"openai backend: token id {token} ({text!r}) is not among the {returned} log-probs "
                    f"{self._endpoint} returned for prompt {prompt_index} (asked for {asked}: the server returned "
                    f"fewer, so raising top_logprobs does not help); {exact}")
        return (f"openai backend: token id {token} ({text!r}) is not among the top {returned} log-probs "
                f"{self._endpoint} returned for prompt {prompt_index}; {exact}, or raise top_logprobs (the server "
                "may cap it)")

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        self.calls["next_token_logprobs"] += 1
        wanted = unique_ids(token_ids, len(self._tokenizer))
        base = {"max_tokens": 1, "temperature": 0.0, "logprobs": self.config.top_logprobs}
        step = min(self.config.top_logprobs, MAX_LOGPROB_IDS) if self.config.extensions else len(wanted)
        found: list[dict[int, float]] = [{} for _ in prompts]
        for start in range(0, len(wanted), step):
            chunk = wanted[start : start + step]
            fields = dict(base)
            if self.config.extensions:
                fields.update(logprob_token_ids=chunk, return_tokens_as_token_ids=True)
            for i, choice in enumerate(self._choices(prompts, fields)):
                found[i].update(self._parse_logprobs(choice, chunk, i))
        return [[row[int(t)] for t in token_ids] for row in found]

    def constraint_error(self) -> str | None:
        return ("the openai backend cannot constrain generation (a completions server enforces no permutation or "
                "token budget); use --backend transformers, vllm or llamacpp, or leave constrained off")

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        self.check_constraint(config)
        self.calls["generate"] += 1
        fields: dict[str, Any] = {
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "seed": config.seed,
        }
        if config.stop:
            fields["stop"] = list(config.stop)
        if self.config.extensions:
            fields["return_token_ids"] = True
        texts = []
        for choice in self._choices(prompts, fields):
            ids = choice.get("token_ids")
            if ids is not None and not (isinstance(ids, list) and all(type(t) is int for t in ids)):
                raise self._unexpected("token_ids is not a list of integers", choice)
            text = self._tokenizer.decode(ids, skip_special_tokens=True) if ids is not None else choice.get("text")
            if not isinstance(text, str):
                raise self._unexpected(f"a choice's text is {text!r}, not a string", choice)
            texts.append(cut_at_stop(text, config.stop))
        return texts

    def describe(self) -> dict[str, Any]:
        desc = to_dict(self.config)
        desc["api_key"] = REDACTED if self.api_key else None  # also when it came from $OPENAI_API_KEY
        return {"backend": self.name, "model": self.model, **desc}

    def close(self) -> None:
        self.client.close()
