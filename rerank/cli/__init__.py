"""The ``rerank`` command line. Each subcommand lives in its own module with ``add_parser`` and ``run``.

Errors a user can fix (bad input, a missing file or model, an invalid option) print one line, ``error: …`` naming
the thing and the fix, and exit with status 2; ``--debug`` (or ``RERANK_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from rerank.errors import RerankError

__all__ = ["main", "build_parser", "COMMANDS", "USAGE_ERROR"]

#: exit status of every error the user can fix (as argparse uses for bad arguments)
USAGE_ERROR = 2

# subcommand name -> module under rerank.cli (explicit; the order is the order of `rerank --help`)
COMMANDS: dict[str, str] = {
    "data": "rerank.cli.data_cmd",
    "eval": "rerank.cli.eval_cmd",
    "evaluate": "rerank.cli.evaluate_cmd",
    "leaderboard": "rerank.cli.leaderboard_cmd",
    "rank": "rerank.cli.rank_cmd",
    "train": "rerank.cli.train_cmd",
    "index": "rerank.cli.index_cmd",
    "serve": "rerank.cli.serve_cmd",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one ``--help`` away), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from rerank import __version__

    parser = _Parser(prog="rerank", description="Train, run and evaluate rerankers and retrievers.")
    parser.add_argument("--version", action="version", version=f"rerank {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error instead of one line (or RERANK_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (a multi-line library message is joined with ' | ')."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return " | ".join(lines) or type(error).__name__


def _user_error(error: BaseException) -> bool:
    """Errors a user fixes by changing their input: ours, bad values, and files that are absent or unreadable."""
    if isinstance(error, (RerankError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                          PermissionError)):
        return True
    return isinstance(error, OSError) and error.filename is not None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rerank`` console script; user errors print one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("RERANK_DEBUG", "").strip().lower() in ("1", "true", "yes")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug or not _user_error(e):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return USAGE_ERROR
