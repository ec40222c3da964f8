"""``rerank serve``: load a registered reranker and serve it over HTTP (Cohere v1/v2 and TEI ``/rerank``)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from typing import TYPE_CHECKING

from rerank.cli import model_file_error
from rerank.cli.common import (
    add_reranker,
    check_reranker_model,
    check_reranker_options,
    method_from_model,
    positive_int,
    reranker_options,
)
from rerank.errors import ConfigError

if TYPE_CHECKING:
    from rerank.serve import ServeConfig

log = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a reranker over HTTP with dynamic batching")
    add_reranker(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /health (default and recommended: "
        "$RERANK_API_KEY, which stays out of the process list and shell history; else no auth)",
    )
    p.add_argument("--max-batch-size", type=positive_int, default=32,
                   help="requests merged into one model call (default 32)")
    p.add_argument(
        "--max-batch-docs",
        type=positive_int,
        default=1024,
        help="documents merged into one model call; a larger request still runs alone (default 1024)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long a batch waits to fill (default 0: requests arriving while the model is busy still merge)",
    )
    p.add_argument("--max-queue", type=positive_int, default=256,
                   help="requests accepted at once; more get 429 (default 256)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout; answers 504 (default 30 s)")
    p.add_argument(
        "--max-docs",
        type=positive_int,
        default=1000,
        help="documents scored per model call for one request; a pointwise head scores more in parts and merges them, "
        "a listwise head answers 413 (default 1000)",
    )
    p.add_argument("--max-doc-chars", type=positive_int, default=20_000,
                   help="characters read of a document (a longer one is cut; TEI's truncate: false refuses it) and "
                   "the most a query may have (default 20000)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model name responses, x-model-id and /info report (default: --model as given)")
    p.add_argument(
        "--read-timeout-s",
        type=float,
        default=10.0,
        help="a client must send a whole request (headers and body) within this time, else 408 (default 10 s)",
    )
    p.add_argument(
        "--max-connections",
        type=positive_int,
        default=1024,
        help="open connections per worker, lowered to fit the file limit (ulimit -n); more get 503 (default 1024)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes sharing the port, each with its own copy of the model and batching queue (default 1)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch (and ONNX Runtime / OpenVINO) threads per server process (default: the usable cores divided by "
        "--workers, whatever OMP_NUM_THREADS says: a server uses the whole machine)",
    )
    p.set_defaults(func=run)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The service options of parsed ``rerank serve`` arguments (``--api-key`` falls back to $RERANK_API_KEY)."""
    from rerank.serve import ServeConfig

    api_key = args.api_key if args.api_key is not None else (os.environ.get("RERANK_API_KEY") or None)
    if args.served_model_name is not None:
        check_served_model_name(args.served_model_name)
    return ServeConfig(
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_batch_size=args.max_batch_size,
        max_batch_docs=args.max_batch_docs,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
        max_docs=args.max_docs,
        max_doc_chars=args.max_doc_chars,
        model_name=args.served_model_name if args.served_model_name is not None else args.model,
        read_timeout_s=args.read_timeout_s,
        max_connections=args.max_connections,
        workers=args.workers,
    )


def check_served_model_name(name: str) -> None:
    """Refuse a ``--served-model-name`` that the ``x-model-id`` header cannot carry as given (the name as ``--model``
    gives it is sent as is in JSON and with such characters replaced in the header: a path is what it is)."""
    if not name:
        raise ConfigError("--served-model-name is empty: give the name clients should see, or leave it out to report "
                          "--model")
    for i, ch in enumerate(name):
        if ch < " " or ch == "\x7f":
            raise ConfigError(f"--served-model-name has a control character (a newline, a tab, ...) at position "
                              f"{i + 1}: responses send the name in the x-model-id header; choose a name without one")
    if name != name.strip():
        raise ConfigError(f"--served-model-name {name!r} starts or ends with whitespace: responses send the name in "
                          "the x-model-id header, which cannot; remove it")


def check_port(host: str, port: int) -> socket.socket:
    """Bind, before a model loads, the address to serve on, refusing one this process cannot listen on (in use, or
    not this machine's); the caller hands the socket to the server, so nothing can take the port while it loads."""
    from rerank.serve.server import bound_socket

    try:
        return bound_socket(host, port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    """Serve until stopped: SIGTERM (a supervisor's stop) ends with status 0 once the requests in flight are answered
    (at once while the model loads); SIGINT (Ctrl-C) ends as in every command, ``interrupted`` and 130."""
    from rerank.cli import Terminated

    try:
        return _serve(args)
    except Terminated:
        log.info("stopped on SIGTERM")
        return 0


def _serve(args: argparse.Namespace) -> int:
    from rerank.heads.base import Reranker
    from rerank.heads.registry import get_reranker_class
    from rerank.parallel import thread_share
    from rerank.serve import create_app
    from rerank.serve.server import install_log_limits, serve

    method_from_model(args)
    if not args.reranker:
        raise ConfigError("rerank serve needs --reranker METHOD, or --model a trained reranker's folder (rerank.json)")
    cfg = serve_config(args)
    get_reranker_class(args.reranker)  # an unknown name fails here, before any worker starts
    check_reranker_model(args.reranker, args.model, args.backend)
    options = reranker_options(args)
    check_reranker_options(args.reranker, args.model, options, args.backend)  # before any model loads or worker starts
    sock = check_port(cfg.host, cfg.port)  # held from here on: the server listens on it once the model is loaded
    remove_log_limits = None
    try:
        if cfg.host not in _LOOPBACK and cfg.api_key is None:
            log.warning("serving on %s without an API key: anyone who can reach this address can use the model",
                        cfg.host)
        remove_log_limits = install_log_limits()

        threads = args.threads or thread_share(cfg.workers)

        def load() -> Reranker:  # in each worker process: its share of the cores, then its copy of the model
            import torch

            torch.set_num_threads(threads)
            try:
                return Reranker.load(args.reranker, model=args.model, backend=args.backend, **options)
            except Exception as e:
                problem = model_file_error(e)
                if problem is None:
                    raise
                raise ConfigError(f"cannot load --model {args.model}: {problem}") from e

        where = f"{args.reranker} ({args.model or '-'}) on http://{cfg.host}:{sock.getsockname()[1]}"
        if cfg.workers > 1:  # each worker process loads its own copy of the model
            log.info("starting %s: %d processes of %d thread(s)", where, cfg.workers, threads)
            serve(lambda: create_app(load(), cfg), cfg, workers=cfg.workers, sock=sock)
            log.info("stopped on SIGTERM")  # the workers' parent returns only then
            return 0
        reranker = load()  # before the server listens, so a bad model fails first
        log.info("serving %s, %d thread(s)", where, threads)
        try:
            serve(lambda: create_app(reranker, cfg), cfg, sock=sock)
        finally:
            reranker.close()
        return 0
    finally:
        sock.close()
        if remove_log_limits is not None:
            remove_log_limits()
