"""``rerank leaderboard --config FILE.yaml``: run (or reuse) a rows x datasets matrix and write the leaderboard."""

from __future__ import annotations

import argparse

from rerank.cli.common import (
    add_data_root,
    check_cache_writable,
    check_input_file,
    check_output_dir,
    check_output_file,
    positive_int,
)
from rerank.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="run a (first stage, reranker, model) x datasets matrix into a leaderboard")
    p.add_argument("--config", required=True, help="leaderboard YAML (columns, rows; see configs/examples)")
    p.add_argument("--results-dir", default=None,
                   help="where cells are written and reused (default: <cache>/leaderboard/<name>, outside the repo)")
    p.add_argument("--force", action="store_true", help="rerun every cell even if its config hash matches")
    p.add_argument("--only-cached", action="store_true",
                   help="run nothing: build the leaderboard from cells already computed (others are listed as not run)")
    p.add_argument("--output-md", default=None,
                   help="Markdown leaderboard path; the plot is written beside it as .png "
                   "(default: <results-dir>/leaderboard.md)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="reranking processes per cell, as rerank eval --workers (the same rankings; a cached cell is "
                   "reused whatever count it ran with; default 1; not with --only-cached, which runs none)")
    add_data_root(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rerank.eval.leaderboard import run_leaderboard

    check_input_file(args.config, "--config")
    if args.only_cached and args.workers is not None:
        raise ConfigError(f"--workers {args.workers} sets the processes of the cells that run, and --only-cached runs "
                          "none: drop --workers, or drop --only-cached")
    if args.results_dir is not None:
        check_output_dir(args.results_dir, "--results-dir")
    if args.output_md is not None:
        check_output_file(args.output_md, "--output-md")
    if not (args.only_cached and args.results_dir is not None):  # cells' indexes and answers; the default results
        check_cache_writable()
    report = run_leaderboard(args.config, data_root=args.data_root, results_dir=args.results_dir, force=args.force,
                             output_md=args.output_md, only_cached=args.only_cached, workers=args.workers or 1)
    ran = sum(1 for d in report["cells"].values() for c in d.values() if not c["reused"])
    reused = sum(1 for d in report["cells"].values() for c in d.values() if c["reused"])
    print(f"leaderboard {report['name']!r}: {ran} cells run, {reused} reused -> {report['markdown']}, "
          f"{report['plot']}")
    for n in report["notes"]:
        print(f"note: {n}")
    return 0
