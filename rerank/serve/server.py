"""Running the app: uvicorn's h11 protocol with a read deadline and a connection cap, rate-limited logs, workers.

uvicorn closes idle keep-alive connections but has no limit on how long a client may take to send a request, nor on
how many connections it holds, so clients that open connections and stall (slowloris) pin file descriptors until the
process cannot accept anyone. :func:`guarded_protocol` adds both: a connection must deliver a whole request (headers
and body) within ``read_timeout_s`` of its first byte (or of opening), else it is answered 408 and closed; above
``max_connections`` open connections (capped below the process's file limit) the longest-idle keep-alive connection
is closed to make room, and when none is idle the new one is answered 503 and closed. A request h11 cannot parse
(a malformed request line or header, such as ``Content-Length: abc``), which uvicorn would answer with a plain-text
400 before any app sees it, is answered 400 ``invalid_http``. These answers carry the JSON error body every error
has, naming the limit, and count in ``rerank_errors_total``; after one the server reads and discards what the client
still sends for up to :data:`LINGER_S` (or until it closes) before closing, since closing a socket with unread
request bytes makes the kernel reset the connection, and the client then loses the answer. Repeated log lines (a
flood of such events) pass at most once per key and interval, with a count of those held back. ``workers > 1`` forks
that many server processes sharing one socket (listening once the first has loaded the model, which logs where, as one
worker does), each with the model and its own batching queue.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from rerank.errors import USAGE_ERROR, RerankError
from rerank.serve.config import ServeConfig
from rerank.serve.middleware import error_body

__all__ = ["KEEP_ALIVE_S", "RateLimitFilter", "bound_socket", "guarded_protocol", "uvicorn_config", "connection_cap",
           "serve", "install_log_limits"]

log = logging.getLogger(__name__)

FD_RESERVE = 64  # descriptors kept free for the model, log files and the listening socket
#: seconds an idle keep-alive connection stays open. Well above how long HTTP client pools keep one (httpx, and so the
#: Cohere SDK, LangChain and LlamaIndex: 5 s; aiohttp: 15 s) and load balancers' idle timeouts (60 s): a server that
#: closes first races the client's next request on that connection, which then fails ("connection reset by peer").
#: Idle connections cannot starve new ones: at the connection cap the longest-idle one is closed to make room.
KEEP_ALIVE_S = 65
_DONE_STATES = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)
#: seconds a connection answered 503 (over the cap) or 400 (unparsable) is read and discarded before it is closed
LINGER_S = 1.0


class RateLimitFilter(logging.Filter):
    """Let a record through at most once per ``interval`` seconds per (logger, level, message template); the next
    one that passes says how many were held back meanwhile."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[tuple[str, int, str], float] = {}
        self._held: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar messages in the last {now - last:.0f} s not shown)"
        if record.exc_info and held:
            record.exc_info = None  # a repeat: the first one carried the trace
        return True


def install_log_limits(interval: float = 10.0) -> Callable[[], None]:
    """Rate-limit every record that reaches the root logger's handlers (uvicorn's and asyncio's propagate there);
    returns the function that removes the limit again (when the server stops, so a process that goes on, such as a
    test session, keeps its handlers as they were)."""
    limiter = RateLimitFilter(interval)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(limiter)

    def remove() -> None:
        for handler in handlers:
            handler.removeFilter(limiter)

    return remove


def connection_cap(requested: int) -> int:
    """``requested`` open connections, lowered to stay ``FD_RESERVE`` descriptors under the process's file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft - FD_RESERVE))


def _raw_response(status: int, reason: str, error_type: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 error response written straight to the socket (no app involved), with the JSON body every
    error has (:func:`~rerank.serve.middleware.error_body`) and its length; the connection closes after it."""
    body = json.dumps(error_body(message, error_type)).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n".encode()
        + extra
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def guarded_protocol(read_timeout_s: float, max_connections: int,
                     count_error: Callable[[str], None] | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a request read deadline and a cap on open connections (see the module doc);
    ``count_error`` (the app's ``rerank_errors_total``) is told of each 503 / 408 written to the socket."""
    count = count_error or (lambda _error_type: None)

    timeout_408 = _raw_response(
        408, "Request Timeout", "read_timeout",
        f"the whole request (headers and body) did not arrive within {read_timeout_s:g} s (the server's "
        "--read-timeout-s)",
    )
    busy_503 = _raw_response(
        503, "Service Unavailable", "too_many_connections",
        f"too many open connections: this server holds at most {max_connections} (its --max-connections, or fewer "
        "under a low file limit); retry shortly",
        b"retry-after: 1\r\n",
    )
    invalid_400 = _raw_response(
        400, "Bad Request", "invalid_http",
        "malformed HTTP request: the request line or a header could not be parsed (for example a Content-Length "
        "that is not a non-negative integer, or headers over 16 KiB)",
    )

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline: Any = None
            self._lingering: Any = None
            if len(self.connections) > max_connections and not self._close_longest_idle():
                log.warning("connection refused: %d connections open (the cap)", max_connections)
                count("too_many_connections")
                self._answer_and_linger(busy_503)
                return
            self._arm()

        def _answer_and_linger(self, response: bytes) -> None:
            """Write ``response``, end this side of the connection, and discard what the client still sends until it
            closes or :data:`LINGER_S` passes; then close (see the module doc)."""
            self._disarm()
            self.transport.write(response)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._lingering = self.loop.call_later(LINGER_S, self.transport.close)

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to a request h11 cannot parse, as JSON and counted (uvicorn has logged ``msg``)."""
            count("invalid_http")
            self._answer_and_linger(invalid_400)

        def _close_longest_idle(self) -> bool:
            """Close the keep-alive connection idle the longest, as its keep-alive timeout would (a client pool
            opens a new one when it next needs one); False when open connections, not counting those closing, are
            still over the cap after that, or none is idle."""
            live = [c for c in self.connections if c is not self and not c.transport.is_closing()]
            if len(live) < max_connections:
                return True
            idle = [c for c in live if c.timeout_keep_alive_task is not None]
            if not idle:
                return False
            victim = min(idle, key=lambda c: c.timeout_keep_alive_task.when())
            victim._unset_keepalive_if_required()
            victim.timeout_keep_alive_handler()
            return True

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(read_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def data_received(self, data: bytes) -> None:
            if self._lingering is not None:
                return  # answered already: read and discarded
            self._arm()
            super().data_received(data)
            if self.conn.their_state in _DONE_STATES:
                self._disarm()

        def on_response_complete(self) -> None:
            self._disarm()
            super().on_response_complete()
            if self.conn.trailing_data[0] and self.conn.their_state not in _DONE_STATES:
                self._arm()  # a pipelined request, partly received already, gets its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._lingering is not None:
                self._lingering.cancel()
            super().connection_lost(exc)

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            log.warning("closed a connection that sent no complete request within %g s", read_timeout_s)
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                if not cycle.response_started:
                    self.transport.write(timeout_408)
                    count("read_timeout")
                cycle.disconnected = True  # the app's receive() answers http.disconnect, its send() is a no-op
                cycle.message_event.set()
            elif self.conn.our_state is h11.IDLE:
                self.transport.write(timeout_408)
                count("read_timeout")
            self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app: Any, cfg: ServeConfig, **overrides: Any) -> uvicorn.Config:
    """The uvicorn settings of the service: guarded protocol, no access log, no server header, logging left to the
    caller (uvicorn's loggers propagate to the root logger)."""
    metrics = getattr(getattr(app, "state", None), "metrics", None)  # create_app's; another app has none
    count = (lambda error_type: metrics.errors.labels(error_type).inc()) if metrics is not None else None
    options: dict[str, Any] = dict(
        host=cfg.host, port=cfg.port,
        http=guarded_protocol(cfg.read_timeout_s, connection_cap(cfg.max_connections), count),
        log_config=None, access_log=False, server_header=False, timeout_keep_alive=KEEP_ALIVE_S, lifespan="on",
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` as uvicorn binds one (``SO_REUSEADDR``: a port in TIME_WAIT is free);
    ``OSError`` where this process cannot listen there (in use, or not this machine's address)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


#: how often a forked worker checks that the parent still runs
PARENT_POLL_S = 1.0


def _stop_with_parent(parent: int) -> None:
    """In a forked worker: SIGTERM itself (uvicorn's graceful stop) once ``parent`` is gone. A parent killed without
    forwarding its signal (``kill -9``, the OOM killer) would otherwise leave its workers serving on the port, so
    the supervisor's restart could not bind it."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        log.error("worker %d: the parent process %d is gone; stopping", os.getpid(), parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="rerank-parent-watch", daemon=True).start()


class _AddressLoggingServer(uvicorn.Server):
    """uvicorn's server, logging where it listens also when given its socket (uvicorn logs it only when it binds).
    ``first``: a flag the forked workers share, so that only the first of them ready logs it."""

    def __init__(self, config: uvicorn.Config, first: Any = None) -> None:
        super().__init__(config)
        self.first = first

    def _claim(self) -> bool:
        """Whether this server logs the address: always alone, the first to get here among workers."""
        if self.first is None:
            return True
        with self.first.get_lock():
            claimed, self.first.value = not self.first.value, True
        return claimed

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and sockets and self._claim():
            host, port = sockets[0].getsockname()[:2]
            where = f"[{host}]" if ":" in host else host
            logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", where,
                                                    port)


def _exit_status(code: int) -> str:
    """A worker's wait status in words: ``killed by SIGTERM`` or ``exited with status 3``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def serve(make_app: Callable[[], Any], cfg: ServeConfig, workers: int = 1, sock: socket.socket | None = None) -> None:
    """Serve ``make_app()`` on ``sock`` (bound by :func:`bound_socket` before the model loaded, so that nothing can
    take the port meanwhile), else on ``cfg.host:cfg.port``. The socket is not listening yet: uvicorn listens on it
    after the app's startup, so a connection is refused until a server can answer. With ``workers > 1``, fork that
    many processes sharing the socket, each calling ``make_app`` (its own model and queue): the port listens once the
    first worker has loaded its model, and that worker logs where, as one worker does. The parent forwards
    SIGINT/SIGTERM as SIGTERM, waits for the workers, and then raises ``KeyboardInterrupt`` after a SIGINT or
    returns after a SIGTERM. A worker that exits while the parent was not told to stop (whatever its status, a
    SIGTERM sent to it alone included) is a death: the parent logs it, stops the others and exits 1, or 2 where a
    worker's model could not load (leave restarts to the supervisor: systemd, Kubernetes, ...); a worker whose
    parent was killed stops by itself."""
    if sock is None:
        sock = bound_socket(cfg.host, cfg.port)
    if workers <= 1:
        with sock:
            _AddressLoggingServer(uvicorn_config(make_app(), cfg)).run(sockets=[sock])
        return
    sock.set_inheritable(True)
    first = multiprocessing.Value("b", False)  # set by the first worker listening, which logs the address
    children: list[int] = []
    parent = os.getpid()
    requested: list[int] = []  # the stop signals the parent received

    def forward() -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(signum: int, _frame: Any) -> None:
        if os.getpid() != parent:  # a worker just forked, before it reset its handlers: the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        requested.append(signum)
        forward()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(workers):
            if requested:
                break
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    for sig in previous:  # a worker dies of them until uvicorn handles them (a graceful stop)
                        signal.signal(sig, signal.SIG_DFL)
                    _stop_with_parent(parent)
                    _AddressLoggingServer(uvicorn_config(make_app(), cfg), first).run(sockets=[sock])
                except RerankError as e:  # a user error (a damaged model file): one line, and the parent exits 2
                    log.error("worker %d failed: %s", os.getpid(), e)
                    code = USAGE_ERROR
                except BaseException as e:  # noqa: BLE001 - a worker reports and exits; the parent sees the status
                    log.error("worker %d failed: %s: %s", os.getpid(), type(e).__name__, e)
                    code = 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children.append(pid)
        sock.close()
        if requested:
            forward()  # a worker forked while the signal was being handled
        else:
            log.info("started %d worker processes (%s), loading the model; the port listens once the first is ready",
                     workers, ", ".join(map(str, children)))
        failed = _wait_for_workers(children, requested, forward)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise SystemExit(failed)
    if signal.SIGINT in requested:
        raise KeyboardInterrupt


def _wait_for_workers(children: list[int], requested: list[int], forward: Callable[[], None]) -> int:
    """Wait until every worker has exited; the exit status the parent owes (0, or 1 / 2 after a worker death)."""
    failed = 0
    alive = set(children)
    while alive:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in alive:
            continue
        alive.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if failed or requested:
            continue  # stopping: the others exit as they were told to
        log.error("worker %d %s; stopping the others", pid, _exit_status(code))
        failed = USAGE_ERROR if code == USAGE_ERROR else 1
        forward()
    return failed
