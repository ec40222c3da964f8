"""The ``rerank`` command line. Each subcommand lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from rerank.errors import RerankError

__all__ = ["main", "build_parser", "COMMANDS"]

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


def build_parser() -> argparse.ArgumentParser:
    from rerank import __version__

    parser = argparse.ArgumentParser(prog="rerank", description="Train, run and evaluate rerankers and retrievers.")
    parser.add_argument("--version", action="version", version=f"rerank {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rerank`` console script; user errors print one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except RerankError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
