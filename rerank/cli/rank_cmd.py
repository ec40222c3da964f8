"""``rerank rank``: rerank a JSONL of queries with candidate documents, or a first-stage run over a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rerank.cli.common import (
    add_data_root,
    add_max_queries,
    add_reranker,
    check_reranker_model,
    method_from_model,
    positive_int,
    reranker_options,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rank", help="rerank candidates and write the ranking (TREC run or JSONL)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help='JSONL of {"query": …, "docs": […]} records')
    src.add_argument("--first-stage", metavar="RUN", help="TREC run to rerank (needs --dataset for the texts)")
    p.add_argument("--dataset", default=None, help="dataset (path or name) holding the corpus and queries of --first-stage")
    add_max_queries(p)
    add_data_root(p)
    add_reranker(p)
    p.add_argument("--top-k", type=positive_int, default=100,
                   help="rerank this many candidates per query (default 100)")
    p.add_argument("--output", required=True, help="output file: .trec (run) or .jsonl (ranked documents with scores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rerank.data.datasets import resolve_dataset
    from rerank.data.io import read_query_docs_jsonl, read_run, write_run
    from rerank.errors import ConfigError
    from rerank.eval.pipeline import rerank_run
    from rerank.heads.base import Reranker
    from rerank.types import Candidate
    from rerank.utils.files import atomic_write

    method_from_model(args)
    if args.reranker is None:
        raise ConfigError("rerank rank needs --reranker METHOD, or --model a trained reranker's folder (rerank.json)")
    if args.first_stage and not args.dataset:
        raise ConfigError("--first-stage needs --dataset (the corpus and queries it refers to)")
    check_reranker_model(args.reranker, args.model, args.backend)
    # the input is read (and checked) before the model loads
    if args.input:
        records = read_query_docs_jsonl(args.input)
        records.sort(key=lambda r: r[0].id)
        if args.max_queries is not None:
            records = records[: args.max_queries]
        queries = {q.id: q for q, _ in records}
    else:
        ds = resolve_dataset(args.dataset, args.data_root)
        run_in = read_run(args.first_stage)
        qids = sorted(q for q in run_in if q in ds.queries)
        if args.max_queries is not None:
            qids = qids[: args.max_queries]
        queries = {q: ds.queries[q] for q in qids}
        corpus = ds.corpus
    reranker = Reranker.load(args.reranker, model=args.model, backend=args.backend, **reranker_options(args))
    if args.input:
        final = {}
        detail = {}
        for start in range(0, len(records), 8):
            chunk = records[start : start + 8]
            results = reranker.rerank_batch(
                [q for q, _ in chunk],
                [[Candidate(d, s) for d, s in docs[: args.top_k]] for _, docs in chunk],
            )
            for (q, docs), res in zip(chunk, results, strict=True):
                order = res.doc_ids + [d.id for d, _ in docs[args.top_k :]]
                final[q.id] = [(d, float(len(order) - i)) for i, d in enumerate(order)]
                detail[q.id] = res
    else:
        final, _scores, _unknown = rerank_run(reranker, queries, run_in, corpus, args.top_k)
        detail = None
    out = Path(args.output)
    if out.suffix == ".jsonl":
        with atomic_write(out) as f:
            for qid in sorted(final):
                if detail is not None:
                    res = detail[qid]
                    docs = [{"id": r.doc.id, "score": r.score, "rank": r.rank, "text": r.doc.text,
                             **({"metadata": r.metadata} if r.metadata else {})} for r in res.results]
                else:
                    docs = [{"id": d, "rank": i + 1} for i, (d, _) in enumerate(final[qid])]
                f.write(json.dumps({"qid": qid, "query": queries[qid].text, "ranking": docs}, ensure_ascii=False) + "\n")
    else:
        write_run(final, out, tag=args.reranker)
    stats = reranker.stats
    fitted = (f"; {stats.fitted_prompts} prompts fitted to the context, {stats.shortened_passages} passages "
              f"shortened" if stats.fitted_prompts else "")
    print(f"ranked {len(final)} queries with {args.reranker} -> {out} "
          f"({stats.outputs} model outputs, {stats.parse_failures} parse failures, {stats.repaired} repaired{fitted})")
    return 0
