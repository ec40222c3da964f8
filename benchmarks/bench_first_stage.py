"""First-stage benchmark: our BM25Retriever vs bm25s used directly (and pyserini when installed), plus metrics speed.

Measures on a BEIR dataset (default ``../shared/data/scifact``, test split):

* index build time: our wrapper (read corpus, hash, tokenize, index, save to the cache) vs bm25s directly (read corpus,
  tokenize, index) with the same settings; and loading our cached index;
* search throughput (queries/s) at depths ``--k`` (100 and 1000): our ``retrieve`` (a Run in trec_eval order, zero
  scores dropped) vs bm25s directly (tokenize + ``retrieve`` + doc-id lookup), both as numpy arrays and turned into
  the same Run type the plainest way (the like-for-like baseline); pyserini's LuceneSearcher when installed;
* ``evaluate_run`` on a synthetic run of 1000 queries x 100 docs vs ir-measures called directly.

The contenders of each comparison run interleaved (A, B, A, B, ...) and each keeps its best of ``--repeats`` wall and
process-CPU times, so that other jobs on a shared machine bias neither side. Prints ratios (time ours / time
baseline, > 1 = ours slower); the last line is one JSON object.
Usage: ``python benchmarks/bench_first_stage.py [--data-root DIR] [--dataset scifact] [--k 100 1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bm25s  # noqa: E402
import ir_measures  # noqa: E402
import numpy as np  # noqa: E402
import Stemmer  # noqa: E402

from rerank.data.datasets import resolve_dataset  # noqa: E402
from rerank.eval.metrics import DEFAULT_MEASURES, evaluate_run, parse_measures  # noqa: E402
from rerank.retrieval.bm25 import BM25Config, BM25Retriever  # noqa: E402
from rerank.testing import require_shared_data  # noqa: E402
from rerank.types import sort_ranking  # noqa: E402


def raw_bm25s_build(dataset, cfg: BM25Config) -> tuple[bm25s.BM25, np.ndarray]:
    """bm25s used directly: read the corpus, tokenize with the same settings, index."""
    ids, texts = [], []
    for doc in dataset.iter_corpus():
        ids.append(doc.id)
        texts.append(doc.full_text())
    stemmer = Stemmer.Stemmer(cfg.stemmer) if cfg.stemmer else None
    tokens = bm25s.tokenize(texts, stopwords=cfg.stopwords, stemmer=stemmer, show_progress=False)
    model = bm25s.BM25(k1=cfg.k1, b=cfg.b, method=cfg.method)
    model.index(tokens, show_progress=False)
    return model, np.asarray(ids, dtype=object)


def raw_bm25s_search(model: bm25s.BM25, ids: np.ndarray, texts: list[str], cfg: BM25Config, k: int):
    """bm25s used directly: tokenize the queries the same way, ``retrieve``, look up doc ids (numpy arrays out)."""
    stemmer = Stemmer.Stemmer(cfg.stemmer) if cfg.stemmer else None
    tokens = bm25s.tokenize(texts, stopwords=cfg.stopwords, stemmer=stemmer, return_ids=False, show_progress=False)
    docs, scores = model.retrieve(tokens, k=k, n_threads=cfg.n_threads, show_progress=False)
    return ids[docs], scores


def raw_bm25s_run(model: bm25s.BM25, ids: np.ndarray, qids: list[str], texts: list[str], cfg: BM25Config, k: int):
    """The same, turned into a Run (qid -> [(doc id, score)]) the plainest way: bm25s' own order, no filtering."""
    names, scores = raw_bm25s_search(model, ids, texts, cfg, k)
    return {q: list(zip(names[i].tolist(), scores[i].tolist())) for i, q in enumerate(qids)}


def synthetic_run(n_queries: int, n_docs: int, seed: int = 0) -> tuple[dict, dict]:
    """A run of ``n_queries`` x ``n_docs`` with tied scores, and qrels with graded judgements."""
    rng = random.Random(seed)
    run, qrels = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        docs = [f"d{rng.randrange(100_000)}" for _ in range(n_docs * 2)]
        docs = list(dict.fromkeys(docs))[:n_docs]
        run[qid] = sorted(((d, float(rng.randrange(50))) for d in docs), key=lambda p: (p[1], p[0]), reverse=True)
        judged = rng.sample(docs, 10) + [f"d{rng.randrange(100_000)}" for _ in range(5)]
        qrels[qid] = {d: rng.randrange(3) for d in judged}
    return run, qrels


def race(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """Run the contenders interleaved ``repeats`` times; per contender the best wall and CPU time, and a result."""
    res = {name: {"wall": float("inf"), "cpu": float("inf"), "walls": [], "result": None} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            out = fn()
            r = res[name]
            r["walls"].append(time.perf_counter() - t)
            r["wall"], r["cpu"] = min(r["wall"], r["walls"][-1]), min(r["cpu"], time.process_time() - c)
            r["result"] = out
    return res


def times(res: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {name: {"wall_s": r["wall"], "median_wall_s": statistics.median(r["walls"]), "cpu_s": r["cpu"]}
            for name, r in res.items()}


def ratio(res: dict[str, dict[str, Any]], ours: str, base: str) -> dict[str, float]:
    """Time ratio ours / baseline on both clocks, best of each (> 1 means ours is slower), and of the median walls."""
    return {"wall": res[ours]["wall"] / res[base]["wall"], "cpu": res[ours]["cpu"] / res[base]["cpu"],
            "median_wall": statistics.median(res[ours]["walls"]) / statistics.median(res[base]["walls"])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None,
                   help="default: $RERANK_SHARED_DATA, else ../shared/data beside the repo, else /work/shared/data")
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--split", default="test")
    p.add_argument("--k", type=int, nargs="+", default=[100, 1000], help="retrieval depths")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-pyserini", action="store_true", help="skip pyserini even when installed")
    p.add_argument("--metric-queries", type=int, default=1000)
    p.add_argument("--metric-docs", type=int, default=100)
    args = p.parse_args(argv)

    root = Path(args.data_root) if args.data_root else require_shared_data()
    dataset = resolve_dataset(args.dataset, root, download=False)
    queries = dataset.split_queries(args.split)
    qids = list(queries)
    qtexts = [queries[q].text for q in qids]
    qrels = dataset.qrels(args.split)
    n_docs = sum(1 for _ in dataset.iter_corpus())
    ks = sorted({min(k, n_docs) for k in args.k})
    nq = len(qids)
    cfg = BM25Config(show_progress=False)
    out: dict[str, Any] = {
        "dataset": dataset.name, "split": args.split, "num_docs": n_docs, "num_queries": nq, "k": ks,
        "repeats": args.repeats, "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "python": platform.python_version(), "bm25s": bm25s.__version__,
    }

    # --- index build: a fresh cache folder per call, so ours always builds -----------------------------------------
    cache = tempfile.mkdtemp(prefix="bench-first-stage-")
    counter = iter(range(1_000_000))

    def ours_build() -> BM25Retriever:
        os.environ["RERANK_CACHE"] = f"{cache}/{next(counter)}"
        return BM25Retriever.from_dataset(resolve_dataset(args.dataset, root, download=False), show_progress=False)

    def ours_load() -> BM25Retriever:
        return BM25Retriever.from_dataset(resolve_dataset(args.dataset, root, download=False), show_progress=False)

    build = race({"bm25s": lambda: raw_bm25s_build(dataset, cfg), "ours": ours_build}, args.repeats)
    assert not build["ours"]["result"].cache_hit
    load = race({"ours_cache_load": ours_load}, args.repeats)
    loaded = load["ours_cache_load"]["result"]
    assert loaded.cache_hit
    raw_model, raw_ids = build["bm25s"]["result"]
    out["build"] = {**times(build), **times(load), "ratio_ours_vs_bm25s": ratio(build, "ours", "bm25s")}

    # --- search --------------------------------------------------------------------------------------------------
    out["search"] = {}
    runs = {}
    for depth in ks:
        res = race(
            {
                "bm25s_arrays": lambda: raw_bm25s_search(raw_model, raw_ids, qtexts, cfg, depth),
                "bm25s_run": lambda: raw_bm25s_run(raw_model, raw_ids, qids, qtexts, cfg, depth),
                "ours": lambda: loaded.retrieve(queries, depth),
            },
            args.repeats,
        )
        run = runs[depth] = res["ours"]["result"]
        raw_names = res["bm25s_arrays"]["result"][0]
        # same top-10 sets as bm25s directly (order within ties may differ: ours is trec_eval's order)
        same = sum(set(raw_names[i][:10].tolist()) == {d for d, _ in run[q][:10]} for i, q in enumerate(qids))
        out["search"][depth] = {
            "qps": {name: nq / r["wall"] for name, r in res.items()},
            **times(res),
            "ratio_ours_vs_bm25s_run": ratio(res, "ours", "bm25s_run"),
            "ratio_ours_vs_bm25s_arrays": ratio(res, "ours", "bm25s_arrays"),
            "same_top10_sets": f"{same}/{nq}",
        }
    kmax = max(ks)
    cfg2 = BM25Config(show_progress=False, n_threads=2)
    threaded = BM25Retriever.from_dataset(dataset, show_progress=False, n_threads=2)
    res = race(
        {
            "bm25s_run_threads2": lambda: raw_bm25s_run(raw_model, raw_ids, qids, qtexts, cfg2, kmax),
            "ours_threads2": lambda: threaded.retrieve(queries, kmax),
        },
        args.repeats,
    )
    assert res["ours_threads2"]["result"] == runs[kmax]
    out["search"][kmax]["qps"].update({name: nq / r["wall"] for name, r in res.items()})
    out["ndcg10"] = {"ours": evaluate_run(runs[kmax], qrels, ["nDCG@10"]).aggregate["nDCG@10"]}

    # --- pyserini (one timed pass each: its search is slow) ------------------------------------------------------
    try:
        from rerank.retrieval.pyserini import PyseriniBM25, check_pyserini

        if args.no_pyserini:
            raise ImportError("--no-pyserini")
        check_pyserini()
    except Exception as e:  # noqa: BLE001 - report why pyserini was skipped
        out["pyserini"] = {"skipped": str(e)}
    else:
        os.environ["RERANK_CACHE"] = f"{cache}/pyserini"
        t = time.perf_counter()
        pys = PyseriniBM25.from_dataset(dataset, show_progress=False)  # index build + pyserini import + JVM start
        out["pyserini"] = {"build_import_jvm_s": time.perf_counter() - t, "search": {}}
        pys.retrieve(dict(list(queries.items())[:20]), 10)  # JIT warm-up
        for depth in ks:
            t = time.perf_counter()
            pys_run = pys.retrieve(queries, depth)
            wall = time.perf_counter() - t
            out["pyserini"]["search"][depth] = {
                "qps": nq / wall, "wall_s": wall, "ratio_pyserini_vs_ours": wall / out["search"][depth]["ours"]["wall_s"],
            }
        out["ndcg10"]["pyserini"] = evaluate_run(pys_run, qrels, ["nDCG@10"]).aggregate["nDCG@10"]

    # --- metrics -------------------------------------------------------------------------------------------------
    srun, sqrels = synthetic_run(args.metric_queries, args.metric_docs)
    measures = [m for _, m in parse_measures(DEFAULT_MEASURES)]
    # ir-measures' own dict-of-dicts form, built untimed, with trec_eval's order as scores (as evaluate_run does:
    # ir-measures' RR/Judged providers would otherwise break the synthetic run's ties differently)
    srun_dict = {q: {d: float(-r) for r, (d, _) in enumerate(sort_ranking(lst))} for q, lst in srun.items()}
    res = race(
        {
            "evaluate_run": lambda: evaluate_run(srun, sqrels, DEFAULT_MEASURES),
            "ir_measures_direct": lambda: ir_measures.calc_aggregate(measures, sqrels, srun_dict),
        },
        args.repeats,
    )
    for m in measures:
        assert abs(res["ir_measures_direct"]["result"][m] - res["evaluate_run"]["result"].aggregate[str(m)]) < 1e-9
    out["metrics"] = {"shape": f"{args.metric_queries}x{args.metric_docs}", "measures": list(DEFAULT_MEASURES),
                      **times(res), "ratio_ours_vs_ir_measures": ratio(res, "evaluate_run", "ir_measures_direct")}

    # --- report --------------------------------------------------------------------------------------------------
    def fmt(r: dict[str, float]) -> str:
        return f"x{r['wall']:.2f} wall (median x{r['median_wall']:.2f}), x{r['cpu']:.2f} cpu"

    print(f"{dataset.name}/{args.split}: {n_docs} docs, {nq} queries; best of {args.repeats}, interleaved")
    b = out["build"]
    print(f"build  bm25s {b['bm25s']['wall_s']:.3f}s | ours {b['ours']['wall_s']:.3f}s ({fmt(b['ratio_ours_vs_bm25s'])}) "
          f"| ours cache load {b['ours_cache_load']['wall_s']:.3f}s")
    for depth, r in out["search"].items():
        q = r["qps"]
        print(f"search k={depth}: bm25s arrays {q['bm25s_arrays']:.0f} q/s | bm25s->Run {q['bm25s_run']:.0f} q/s | "
              f"ours {q['ours']:.0f} q/s ({fmt(r['ratio_ours_vs_bm25s_run'])} vs bm25s->Run; "
              f"{fmt(r['ratio_ours_vs_bm25s_arrays'])} vs arrays) | same top-10 sets: {r['same_top10_sets']}")
    q = out["search"][kmax]["qps"]
    print(f"search k={kmax}, n_threads=2: bm25s->Run {q['bm25s_run_threads2']:.0f} q/s | ours {q['ours_threads2']:.0f} q/s")
    if "search" in out["pyserini"]:
        py = out["pyserini"]
        print(f"pyserini build+import+JVM {py['build_import_jvm_s']:.1f}s | "
              + " | ".join(f"k={d}: {r['qps']:.0f} q/s (x{r['ratio_pyserini_vs_ours']:.1f} ours' time)"
                           for d, r in py["search"].items()))
    else:
        print(f"pyserini skipped: {out['pyserini']['skipped']}")
    print(f"nDCG@10 (k={kmax}): " + ", ".join(f"{k} {v:.4f}" for k, v in out["ndcg10"].items()))
    m = out["metrics"]
    print(f"metrics {m['shape']}: evaluate_run {m['evaluate_run']['wall_s']:.3f}s wall "
          f"({m['evaluate_run']['cpu_s']:.3f}s cpu) | ir-measures direct {m['ir_measures_direct']['wall_s']:.3f}s "
          f"({fmt(m['ratio_ours_vs_ir_measures'])})")
    out["targets_met"] = {
        "wrapper_build_within_10pct": out["build"]["ratio_ours_vs_bm25s"]["wall"] <= 1.10,
        "wrapper_search_within_10pct": all(r["ratio_ours_vs_bm25s_run"]["wall"] <= 1.10 for r in out["search"].values()),
        "search_within_10pct_of_arrays": all(r["ratio_ours_vs_bm25s_arrays"]["wall"] <= 1.10
                                             for r in out["search"].values()),
        "metrics_1000q_under_1s": m["evaluate_run"]["wall_s"] < 1.0,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
