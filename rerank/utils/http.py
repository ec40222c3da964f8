"""One retry loop for the HTTP clients (the remote reranker, the OpenAI-compatible backend): back-off, ``Retry-After``
and which failures are worth another try are the caller's policy; the loop is shared."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

__all__ = ["post_with_retries", "retry_after"]


def retry_after(resp: httpx.Response, default: float) -> float:
    """Seconds to wait before the next try: the server's ``Retry-After`` (in seconds, at most 60), else ``default``."""
    try:
        return min(max(float(resp.headers.get("Retry-After", "")), 0.0), 60.0)
    except ValueError:
        return default


def post_with_retries(
    client: httpx.Client, path: str, body: dict[str, Any], *, max_retries: int, retry_status: Callable[[int], bool],
    retry_errors: tuple[type[httpx.HTTPError], ...], unreachable: Callable[[httpx.HTTPError], Exception],
) -> httpx.Response:
    """POST ``body`` as JSON to ``path`` and return the last response, retrying up to ``max_retries`` times a status
    for which ``retry_status`` holds or a transport error in ``retry_errors`` (back-off 0.5 s doubling; a status's
    ``Retry-After`` wins). Any other transport error, or a retryable one on the last try, raises ``unreachable(e)``."""
    for attempt in range(max_retries + 1):
        last = attempt == max_retries
        try:
            resp = client.post(path, json=body)
        except httpx.HTTPError as e:
            if last or not isinstance(e, retry_errors):
                raise unreachable(e) from None
            time.sleep(0.5 * 2**attempt)
            continue
        if last or not retry_status(resp.status_code):
            return resp
        time.sleep(retry_after(resp, 0.5 * 2**attempt))
    raise AssertionError("unreachable")
