"""``rerank evaluate``: score an existing run against qrels (trec_eval for our users)."""

from __future__ import annotations

import argparse
import json

from rerank.cli.common import add_allow_duplicates, check_input_file, positive_int, warn_unused_rel_level
from rerank.data.io import check_rank_column, check_ranked, read_qrels, read_run
from rerank.eval.metrics import DEFAULT_MEASURES, evaluate_run, parse_measures


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a TREC run against qrels")
    p.add_argument("--run", required=True,
                   help="run file: TREC (6 columns) or MS MARCO (qid docid rank, as Pyserini writes); .gz accepted")
    p.add_argument("--qrels", required=True, help="qrels in TREC (4 columns) or BEIR TSV (3 columns) form")
    p.add_argument("-m", "--measure", action="append", default=None,
                   help="measure, ir-measures (nDCG@10, RR@10) or trec_eval (ndcg_cut_10, recip_rank, map) name; "
                   "results are keyed by the ir-measures name (repeatable)")
    p.add_argument("--rel-level", type=positive_int, default=None,
                   help="min grade counted relevant for binary measures (default 1; TREC DL uses 2); with none "
                   "among -m (nDCG alone) it changes nothing, and a warning says so")
    add_allow_duplicates(p)
    p.add_argument("--per-query", action="store_true", help="also print per-query values")
    p.add_argument("--json", action="store_true",
                   help="print JSON instead of a table, with the relevance level and the provenance rerank eval "
                   "records: the --run and --qrels paths and sha256, the rerank version, code revision and command")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    measures = args.measure or DEFAULT_MEASURES
    rel_level = args.rel_level if args.rel_level is not None else 1
    parse_measures(measures, rel_level)  # a misspelt measure fails before the files are read
    warn_unused_rel_level(measures, args.rel_level)
    check_input_file(args.run, "--run")
    check_input_file(args.qrels, "--qrels")
    from rerank.eval.pipeline import check_run_docs, check_run_overlap, file_input, provenance, warn_rel_level

    qrels = read_qrels(args.qrels, args.allow_duplicates or "error")
    run = read_run(args.run)
    check_run_overlap(run, qrels, f"--run {args.run}", f"the {len(qrels)} judged queries of --qrels {args.qrels}")
    judged = {d for docs in qrels.values() for d in docs}
    check_run_docs(run, judged, f"--run {args.run}", f"the {len(judged)} documents judged in --qrels {args.qrels}")
    warn_rel_level(qrels, rel_level, measures, args.rel_level is not None, f"--qrels {args.qrels}")
    if check_ranked(run, f"--run {args.run}"):
        check_rank_column(args.run, f"--run {args.run}")
    result = evaluate_run(run, qrels, measures, rel_level)
    if args.json:
        out = {"metrics": result.aggregate, "num_queries": result.num_queries, "missing_queries": result.missing_queries}
        if args.per_query:
            out["per_query"] = result.per_query
        out["rel_level"] = rel_level
        files = {"run": file_input(args.run), "qrels": file_input(args.qrels)}  # None: not a file (a pipe)
        out["provenance"] = provenance(data={name: entry for name, entry in files.items() if entry is not None})
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
