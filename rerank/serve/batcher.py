"""Dynamic batching: requests that arrive together are merged into one ``Reranker.rerank_batch`` call.

One asyncio task collects pending requests (up to ``max_batch_size`` requests and ``max_batch_docs`` documents,
waiting at most ``max_wait_s`` after the oldest one arrived) and runs the model in a single worker thread, so the
event loop keeps answering ``/health``, ``/metrics`` and new requests while the model computes. Requests that pile
up while the model is busy form the next batch, lowest ``priority`` first (Cohere's: 0 is the highest), then in
arrival order. The number of accepted, unanswered requests is bounded by ``max_queue``. A request whose caller stops
waiting (its client disconnected, or its timeout passed) leaves the queue at once, so abandoned work is never scored.
A request may ask for texts' tokens to be counted (a response's ``usage``): a counting thread of its own (with its own
copy of the tokenizer, see :func:`~rerank.serve.documents.token_counter`) counts a batch's texts while the model
thread scores it, so counting adds no time to the model's critical path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from rerank.heads.base import Reranker
from rerank.serve.metrics import ServeMetrics
from rerank.types import Candidate, Query, RankedResult

__all__ = ["Batcher", "ModelError", "QueueFullError", "RequestTimeoutError", "Scored", "ServiceClosedError",
           "TokenCounter"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_SEQ = itertools.count()
TokenCounter = Callable[[Sequence[str]], list[int]]


class QueueFullError(Exception):
    """The bounded queue is full; the client should retry later."""


class RequestTimeoutError(Exception):
    """The request was not answered within its timeout."""


class ServiceClosedError(Exception):
    """The batcher is not running (starting up or shutting down)."""


class ModelError(Exception):
    """The reranker raised while scoring this request."""


class Scored(NamedTuple):
    """A request's ranking and the tokens of the texts it asked to count (None: none asked, or counting failed)."""

    result: RankedResult
    tokens: int | None


@dataclass(eq=False)
class _Item:
    query: str
    candidates: list[Candidate]
    future: asyncio.Future
    priority: int = 0
    count: Sequence[str] | None = None
    arrived: float = field(default_factory=time.monotonic)
    seq: int = field(default_factory=lambda: next(_SEQ))


class Batcher:
    """Queue reranking requests and run them through ``reranker`` in merged batches on one worker thread."""

    def __init__(
        self,
        reranker: Reranker,
        *,
        max_batch_size: int = 32,
        max_wait_s: float = 0.0,
        max_queue: int = 256,
        max_batch_docs: int = 1024,
        metrics: ServeMetrics | None = None,
        count_tokens: TokenCounter | None = None,
    ) -> None:
        self.reranker = reranker
        self.count_tokens = count_tokens
        self.max_batch_size = max_batch_size
        self.max_batch_docs = max_batch_docs
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: list[_Item] = []
        self._in_flight = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._counter: ThreadPoolExecutor | None = None

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet answered (queued or being scored)."""
        return self._in_flight

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the collector task and the model thread (call from the serving event loop)."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerank-model")
        self._counter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerank-count")
        self._task = asyncio.create_task(self._run(), name="rerank-batcher")

    async def stop(self) -> None:
        """Stop collecting, fail queued requests with :class:`ServiceClosedError`, and release the model thread."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            item = self._pending.pop()
            if not item.future.done():
                item.future.set_exception(ServiceClosedError("server is shutting down"))
        for pool in (self._executor, self._counter):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._executor = self._counter = None

    async def run_in_model_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model thread (work that uses the head's tokenizer, which is not safe to share)."""
        if not self.running or self._executor is None:
            raise ServiceClosedError("server is not accepting requests")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def check_capacity(self, n: int = 1) -> None:
        """Raise :class:`QueueFullError` unless ``n`` more requests fit in the queue."""
        if self._in_flight + n > self.max_queue:
            raise QueueFullError(f"queue is full ({self.max_queue} requests in flight)")

    async def submit(
        self, query: str, candidates: list[Candidate], timeout_s: float, priority: int = 0,
        count: Sequence[str] | None = None,
    ) -> Scored:
        """Rank ``candidates`` for ``query`` in a coming batch, and count the tokens of the texts ``count`` (with the
        ``count_tokens`` the batcher was given); raises on a full queue, timeout or model error. Cancelling the
        caller (a disconnected client) takes the request out of the queue."""
        if not self.running or self._wakeup is None:
            raise ServiceClosedError("server is not accepting requests")
        self.check_capacity()
        item = _Item(query, candidates, asyncio.get_running_loop().create_future(), priority, count)
        self._in_flight += 1
        self._gauge()
        self._pending.append(item)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"request not answered within {timeout_s:g} s") from None
        finally:
            try:
                self._pending.remove(item)  # timed out or cancelled before its batch started
            except ValueError:
                pass
            self._in_flight -= 1
            self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._in_flight)

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = min(it.arrived for it in self._pending) + self.max_wait_s
            while len(self._pending) < self.max_batch_size and self._pending_docs() < self.max_batch_docs:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._next_batch()
            if batch:
                await self._execute(loop, batch)

    def _pending_docs(self) -> int:
        return sum(len(it.candidates) for it in self._pending)

    def _next_batch(self) -> list[_Item]:
        """Lowest priority value first, then oldest: up to ``max_batch_size`` requests and ``max_batch_docs``
        documents (a request larger than that alone still forms a batch)."""
        self._pending.sort(key=lambda it: (it.priority, it.seq))
        n, docs = 0, 0
        for it in self._pending:
            if n and (n >= self.max_batch_size or docs + len(it.candidates) > self.max_batch_docs):
                break
            n += 1
            docs += len(it.candidates)
        batch = self._pending[:n]
        del self._pending[:n]
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        start = time.perf_counter()
        counting = loop.run_in_executor(self._counter, self._tokens, batch)  # beside the model, not before it
        try:
            results = await loop.run_in_executor(self._executor, self._score, batch)
        except Exception as e:  # noqa: BLE001 - isolate the failing request, answer the others
            log.warning("batch of %d failed (%s: %s)", len(batch), type(e).__name__, e)
            if len(batch) == 1:
                self._fail(batch[0], e)
            else:
                for item in batch:
                    await self._execute(loop, [item])
            return
        self._observe(batch, time.perf_counter() - start)
        tokens = await counting
        for item, result, n in zip(batch, results, tokens, strict=True):
            if not item.future.done():
                item.future.set_result(Scored(result, n))

    def _score(self, batch: list[_Item]) -> list[RankedResult]:
        queries = [Query(str(i), it.query) for i, it in enumerate(batch)]
        return self.reranker.rerank_batch(queries, [it.candidates for it in batch])

    def _tokens(self, batch: list[_Item]) -> list[int | None]:
        """Per request, the tokens of its ``count`` texts, in one tokenizer call for the batch; None for a request
        that asked for none, and for all where counting fails (logged: a count must not fail a scored request)."""
        texts = [t for it in batch if it.count is not None for t in it.count]
        if self.count_tokens is None or not any(it.count is not None for it in batch):
            return [None] * len(batch)
        try:
            counts = self.count_tokens(texts) if texts else []
        except Exception as e:  # noqa: BLE001 - the ranking stands; the response goes without a usage count
            log.warning("token count failed (%s: %s); responses go without usage", type(e).__name__, e)
            return [None] * len(batch)
        out: list[int | None] = []
        k = 0
        for it in batch:
            if it.count is None:
                out.append(None)
                continue
            out.append(sum(counts[k : k + len(it.count)]))
            k += len(it.count)
        return out

    def _observe(self, batch: list[_Item], seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_docs.observe(sum(len(it.candidates) for it in batch))
            self.metrics.batch_latency.observe(seconds)

    @staticmethod
    def _fail(item: _Item, error: Exception) -> None:
        log.error("reranker failed on a request: %s: %s", type(error).__name__, error, exc_info=error)
        if not item.future.done():
            item.future.set_exception(ModelError(f"{type(error).__name__}"))
