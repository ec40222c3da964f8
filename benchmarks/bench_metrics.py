"""``evaluate_run`` against pytrec_eval called directly, on synthetic runs of 1k-50k queries.

The baseline is what a user holding our Run type (qid -> [(doc id, score)]) writes to get trec_eval's measures from
pytrec_eval: turn each list into a dict, one ``RelevanceEvaluator(...).evaluate`` with ``ndcg_cut.10, recip_rank,
recall.100, map, P.10``, and the per-measure means. Ours computes the default measures, which add ``RR@10`` (cut)
and ``Judged@10`` (pytrec_eval has neither), and once without ``Judged@10``. Scores are continuous with a few ties; the runs are in trec_eval order as
every run we read or produce is. Contenders run interleaved; prints min and median wall time of ``--repeats`` and
the ratio ours / pytrec_eval (> 1 = ours slower); the last line is one JSON object.
Usage: ``python benchmarks/bench_metrics.py [--queries 1000 10000 50000] [--docs 100] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytrec_eval  # noqa: E402

from rerank.eval.metrics import DEFAULT_MEASURES, evaluate_run  # noqa: E402
from rerank.types import sort_ranking  # noqa: E402

TREC_MEASURES = {"ndcg_cut.10", "recip_rank", "recall.100", "map", "P.10"}
TREC_ONLY = ("nDCG@10", "RR@10", "R@100", "AP", "P@10")  # the defaults less Judged@10, which pytrec_eval lacks


def synthetic(n_queries: int, n_docs: int, seed: int = 0) -> tuple[dict, dict]:
    """A run of ``n_queries`` x ``n_docs`` (scores rounded to 3 decimals: some ties) and graded qrels."""
    rng = random.Random(seed)
    run, qrels = {}, {}
    for q in range(n_queries):
        docs = list(dict.fromkeys(f"d{rng.randrange(1_000_000)}" for _ in range(n_docs)))
        run[f"q{q}"] = sort_ranking([(d, round(rng.random() * 20, 3)) for d in docs])
        judged = rng.sample(docs, 10) + [f"d{rng.randrange(1_000_000)}" for _ in range(5)]
        qrels[f"q{q}"] = {d: rng.randrange(3) for d in judged}
    return run, qrels


def pytrec_direct(run: dict, qrels: dict) -> dict[str, float]:
    per_query = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate({q: dict(lst) for q, lst in run.items()})
    keys = next(iter(per_query.values())).keys()
    return {k: sum(v[k] for v in per_query.values()) / len(qrels) for k in keys}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, nargs="+", default=[1000, 10000, 50000])
    p.add_argument("--docs", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    out: dict = {"docs_per_query": args.docs, "repeats": args.repeats, "measures": list(DEFAULT_MEASURES),
                 "baseline": sorted(TREC_MEASURES), "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                 "python": platform.python_version(), "results": {}}
    for n in args.queries:
        run, qrels = synthetic(n, args.docs)
        walls: dict[str, list[float]] = {"ours": [], "ours_trec_only": [], "pytrec_eval": []}
        contenders = (("ours", lambda: evaluate_run(run, qrels)),
                      ("ours_trec_only", lambda: evaluate_run(run, qrels, TREC_ONLY)),
                      ("pytrec_eval", lambda: pytrec_direct(run, qrels)))
        for _ in range(args.repeats):
            for name, fn in contenders:
                gc.collect()
                t = time.perf_counter()
                res = fn()
                walls[name].append(time.perf_counter() - t)
                if name == "ours":
                    ours = res.aggregate
                elif name == "pytrec_eval":
                    base = res
                del res  # freed outside the timed region, so no contender pays for the one before it
        for ours_name, key in (("nDCG@10", "ndcg_cut_10"), ("R@100", "recall_100"), ("AP", "map"), ("P@10", "P_10")):
            assert abs(ours[ours_name] - base[key]) < 1e-12, (ours_name, ours[ours_name], base[key])
        row = {name: {"min_s": min(w), "median_s": statistics.median(w)} for name, w in walls.items()}
        row["ratio_min"] = row["ours"]["min_s"] / row["pytrec_eval"]["min_s"]
        row["ratio_median"] = row["ours"]["median_s"] / row["pytrec_eval"]["median_s"]
        row["ratio_trec_only_min"] = row["ours_trec_only"]["min_s"] / row["pytrec_eval"]["min_s"]
        row["ratio_trec_only_median"] = row["ours_trec_only"]["median_s"] / row["pytrec_eval"]["median_s"]
        out["results"][n] = row
        print(f"{n} queries x {args.docs}: ours {row['ours']['min_s']:.3f}s (median {row['ours']['median_s']:.3f}) | "
              f"pytrec_eval {row['pytrec_eval']['min_s']:.3f}s (median {row['pytrec_eval']['median_s']:.3f}) | "
              f"ratio x{row['ratio_min']:.3f} min, x{row['ratio_median']:.3f} median | without Judged@10 "
              f"x{row['ratio_trec_only_min']:.3f} min, x{row['ratio_trec_only_median']:.3f} median", flush=True)
        del run, qrels
    out["worst_ratio_min"] = max(r["ratio_min"] for r in out["results"].values())
    out["worst_ratio_trec_only_min"] = max(r["ratio_trec_only_min"] for r in out["results"].values())
    out["target_met_1_1x"] = out["worst_ratio_min"] <= 1.10
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
