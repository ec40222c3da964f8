"""One retry loop for the HTTP clients (the remote reranker, the OpenAI-compatible backend): back-off, ``Retry-After``
and which failures are worth another try are the caller's policy; the loop is shared.

A server's wait is read from ``retry-after-ms`` (milliseconds; OpenAI, Azure) or ``Retry-After`` (seconds, or an
HTTP-date, read as UTC), at most :data:`MAX_WAIT` seconds. With a ``deadline`` each try must be answered in full
within that many seconds (connecting, sending, the headers and the whole body: a server that trickles its body a byte
at a time is cut off), else it fails with :class:`DeadlineExceeded`, a timeout that says whether the server had begun
its answer (sent its headers). Such a try runs in a daemon thread that the caller waits on, so a stuck read neither
delays the caller past the deadline nor keeps the process alive at exit. A try that ran out of time is retried at
most once, and not at all once the server had begun its answer: the server is generating it, and another try would
pay for the same generation again under the same deadline.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["MAX_WAIT", "DeadlineExceeded", "Tries", "excerpt", "post_with_retries", "retry_after"]

#: the longest wait a server's Retry-After can ask for, in seconds
MAX_WAIT = 60.0


class DeadlineExceeded(httpx.TimeoutException):
    """A try that was not answered in full within its ``deadline`` seconds; ``answered``: the server had sent its
    headers (it was working on the answer, not unreachable)."""

    def __init__(self, message: str, *, deadline: float, answered: bool,
                 request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)
        self.deadline = deadline
        self.answered = answered


@dataclass
class Tries:
    """How many requests a :func:`post_with_retries` call sent, and since when (for its caller's error message)."""

    count: int = 0
    started: float = field(default_factory=time.monotonic)

    def __str__(self) -> str:
        seconds = time.monotonic() - self.started
        return f"{self.count} attempt{'s' if self.count != 1 else ''} over {seconds:.1f} s"


def excerpt(text: str, limit: int = 200) -> str:
    """The start of a server's answer on one line (whitespace runs joined), at most ``limit`` characters, for an
    error message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def retry_after(resp: httpx.Response, default: float) -> float:
    """Seconds to wait before the next try: the server's ``retry-after-ms``, else its ``Retry-After`` (seconds or
    an HTTP-date), at most :data:`MAX_WAIT`; ``default`` when it gives neither (or an unreadable one)."""
    wait: float | None = None
    try:
        wait = float(resp.headers["retry-after-ms"]) / 1000.0
    except (KeyError, ValueError):
        pass
    if wait is None or not math.isfinite(wait):  # absent, unreadable, NaN or infinite: Retry-After says
        value = resp.headers.get("Retry-After", "").strip()
        try:
            wait = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                if when.tzinfo is None:  # no zone, or -0000 (asctime form): HTTP dates are UTC (RFC 9110)
                    when = when.replace(tzinfo=datetime.timezone.utc)
                wait = when.timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                wait = None
    if wait is None or wait != wait:  # absent, unreadable or NaN
        return default
    return min(max(wait, 0.0), MAX_WAIT)


def _read_by(client: httpx.Client, path: str, body: dict[str, Any], end: float, answered: threading.Event,
             deadline: float) -> httpx.Response:
    """POST and read the whole response, giving up (:class:`DeadlineExceeded`) once ``time.monotonic()`` passes
    ``end``; each phase's own timeout is the time left. ``answered`` is set once the headers have arrived."""
    left = max(end - time.monotonic(), 0.001)
    request = client.build_request("POST", path, json=body, timeout=httpx.Timeout(left))
    resp = client.send(request, stream=True)
    answered.set()
    try:
        chunks = []
        for chunk in resp.iter_raw():
            chunks.append(chunk)
            if time.monotonic() > end:
                raise DeadlineExceeded("the answer did not arrive in full in time", deadline=deadline, answered=True,
                                       request=request)
    finally:
        resp.close()
    return httpx.Response(resp.status_code, headers=resp.headers, content=b"".join(chunks), request=request,
                          extensions={"http_version": resp.extensions.get("http_version", b"HTTP/1.1")})


def _post_within(client: httpx.Client, path: str, body: dict[str, Any], deadline: float) -> httpx.Response:
    """One try that returns or raises within ``deadline`` seconds: it runs in a daemon thread (which stops by
    itself at its next read once the deadline has passed) and this one waits for it that long at most."""
    end = time.monotonic() + deadline
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
    answered = threading.Event()

    def attempt() -> None:
        try:
            box.put((True, _read_by(client, path, body, end, answered, deadline)))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, which raises it
            box.put((False, e))

    def late() -> DeadlineExceeded:
        began = "the server began its answer but did not finish it" if answered.is_set() else "no answer"
        return DeadlineExceeded(f"{began} within timeout={deadline:g} s", deadline=deadline,
                                answered=answered.is_set())

    threading.Thread(target=attempt, name="rerank-http", daemon=True).start()
    try:
        ok, value = box.get(timeout=max(end - time.monotonic(), 0.0))
    except queue.Empty:
        raise late() from None
    if not ok:
        if isinstance(value, httpx.TimeoutException) and not isinstance(value, httpx.ConnectTimeout):
            raise late() from None
        raise value  # a connection that could not be made in time is a connection failure
    return value  # type: ignore[no-any-return]


def post_with_retries(
    client: httpx.Client, path: str, body: dict[str, Any], *, max_retries: int, retry_status: Callable[[int], bool],
    retry_errors: tuple[type[httpx.HTTPError], ...], unreachable: Callable[[httpx.HTTPError], Exception],
    deadline: float | None = None, tries: Tries | None = None,
) -> httpx.Response:
    """POST ``body`` as JSON to ``path`` and return the last response, retrying up to ``max_retries`` times a status
    for which ``retry_status`` holds or a transport error in ``retry_errors`` (back-off 0.5 s doubling; a status's
    :func:`retry_after` wins). Any other transport error, or a retryable one on the last try, raises
    ``unreachable(e)``. ``deadline``: seconds each try may take in all (:class:`DeadlineExceeded` past it, a
    timeout), retried at most once and not at all when the server had begun its answer; ``tries`` counts the
    requests sent."""
    tries = tries if tries is not None else Tries()
    late = False  # a try has run out of time
    for attempt in range(max_retries + 1):
        last = attempt == max_retries
        tries.count += 1
        try:
            resp = client.post(path, json=body) if deadline is None else _post_within(client, path, body, deadline)
        except httpx.HTTPError as e:
            if isinstance(e, DeadlineExceeded):
                last, late = last or late or e.answered, True
            if last or not isinstance(e, retry_errors):
                raise unreachable(e) from None
            time.sleep(0.5 * 2**attempt)
            continue
        if last or not retry_status(resp.status_code):
            return resp
        time.sleep(retry_after(resp, 0.5 * 2**attempt))
    raise AssertionError("unreachable")
