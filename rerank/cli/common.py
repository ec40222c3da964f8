"""Options shared by every subcommand, so the conventions are defined once."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rerank.config import apply_overrides, load_yaml


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` (checked when the command line is parsed)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)


def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding datasets by name (default: $RERANK_DATA or ~/.cache/rerank/data)",
    )


def add_max_queries(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-queries",
        type=positive_int,
        default=None,
        help="keep the first N >= 1 queries in sorted query-id order; metrics are over those N only",
    )


def add_allow_duplicates(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-duplicates",
        choices=("last", "max"),
        default=None,
        help="a (query, document) pair judged twice in the qrels is an error naming both lines; with this, keep "
        "the last grade or the max grade instead",
    )


def add_dataset(p: argparse.ArgumentParser, required: bool = True, group: argparse._ActionsContainer | None = None) -> None:
    (group or p).add_argument(
        "--dataset", required=required, help="a BEIR-layout folder, or a dataset name under the data root"
    )
    p.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    add_max_queries(p)
    add_data_root(p)


def add_reranker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reranker", default=None,
                   help="registered reranker method (e.g. cross-encoder, first); default: the method a trained "
                        "--model folder records in its rerank.json")
    p.add_argument("--model", default=None, help="model name or path for the reranker / dense retriever")
    p.add_argument("--backend", default="transformers", help="model backend (default: transformers)")
    p.add_argument("--base-url", default=None, help="server URL for --backend openai (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--reranker-config", default=None, help="YAML file of reranker options")
    p.add_argument("--reranker-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one reranker option (an API key is better given as $RERANK_API_KEY or "
                   "$OPENAI_API_KEY: a command line is visible to every user of the machine)")
    p.add_argument("--allow-new-head", action="store_true",
                   help="cross-encoder: accept a --model without a trained classification head (a bare encoder); "
                        "the new head starts random (the option allow_new_head)")


def reranker_options(args: argparse.Namespace) -> dict:
    opts = load_yaml(args.reranker_config) if args.reranker_config else {}
    opts = apply_overrides(opts, args.reranker_set)
    if getattr(args, "allow_new_head", False):
        opts["allow_new_head"] = True
    if getattr(args, "base_url", None):
        opts["backend_options"] = {**opts.get("backend_options", {}), "base_url": args.base_url}
    return opts


def method_from_model(args: argparse.Namespace) -> dict | None:
    """Fill ``args.reranker`` from a trained ``--model`` folder's ``rerank.json`` when no ``--reranker`` is given;
    returns that record (None when ``--model`` is not such a folder)."""
    from rerank.methods.record import read_record

    record = read_record(getattr(args, "model", None))
    if record is not None and args.reranker is None and record.get("kind") == "reranker":
        args.reranker = record["method"]
    return record


def check_reranker_model(reranker: str | None, model: str | None, backend: str) -> None:
    """Before any expensive work: ``--model`` must be a model this machine can load, unless it names a model on a
    server (``--reranker remote``, ``--backend openai``)."""
    from rerank.models import check_model_path

    if model and reranker != "remote" and backend != "openai":
        check_model_path(model)
