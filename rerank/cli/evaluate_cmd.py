"""``rerank evaluate``: score an existing run against qrels (trec_eval for our users)."""

from __future__ import annotations

import argparse
import json

from rerank.data.io import read_qrels, read_run
from rerank.eval.metrics import DEFAULT_MEASURES, evaluate_run


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a TREC run against qrels")
    p.add_argument("--run", required=True, help="TREC run file (6 columns, .gz accepted)")
    p.add_argument("--qrels", required=True, help="qrels in TREC (4 columns) or BEIR TSV (3 columns) form")
    p.add_argument("-m", "--measure", action="append", default=None, help="ir-measures name (repeatable)")
    p.add_argument("--rel-level", type=int, default=1, help="min grade counted relevant for binary measures")
    p.add_argument("--per-query", action="store_true", help="also print per-query values")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = evaluate_run(
        read_run(args.run), read_qrels(args.qrels), args.measure or DEFAULT_MEASURES, args.rel_level
    )
    if args.json:
        out = {"metrics": result.aggregate, "num_queries": result.num_queries, "missing_queries": result.missing_queries}
        if args.per_query:
            out["per_query"] = result.per_query
        print(json.dumps(out, indent=2))
        return 0
    if args.per_query:
        for q, vals in result.per_query.items():
            for k, v in vals.items():
                print(f"{k}\t{q}\t{v:.4f}")
    for k, v in result.aggregate.items():
        print(f"{k}\tall\t{v:.4f}")
    print(f"num_q\tall\t{result.num_queries}")
    if result.missing_queries:
        print(f"# {len(result.missing_queries)} judged queries absent from the run were counted as 0")
    return 0
