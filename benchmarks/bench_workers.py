"""Data-parallel workers: ``rerank eval --workers N`` (cross-encoder) and ``rerank index --workers N`` (dense
encoding) against ``--workers 1``, each a fresh ``rerank`` process, interleaved, min and median of ``--repeats``.

Contenders, all on the same machine in the same run:

* ``w1``: ``--workers 1`` with every usable core as torch threads (``OMP_NUM_THREADS=cores``): the same total threads
  as the workers get, the policy comparison;
* ``w1-1t``: ``--workers 1`` with ``OMP_NUM_THREADS=1`` (what this project's shared development box runs with);
* ``wN``: ``--workers N`` (each worker cores/N threads).

Cross-encoder: SciFact test, the first ``--queries`` queries, BM25's top ``--top-k`` reranked by ``--ce-model``
(default: all-MiniLM-L6-v2 weights + a seeded 1-label head) at ``--max-length`` tokens. Dense: the first ``--docs``
SciFact documents (a corpus written to a temporary folder) encoded by all-MiniLM-L6-v2 with ``--no-cache``. Times are
each command's wall time (process start, model loading and the workers' start-up included); for eval also the
reranking stage alone (``timing_s.rerank_s``). Outputs are checked byte-identical across contenders (run.trec,
scores.jsonl, embeddings.npy). Last line: one JSON object with the ratios.

    python benchmarks/bench_workers.py --parts ce --queries 32 --top-k 20 --repeats 3
    python benchmarks/bench_workers.py --parts dense --docs 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rerank.parallel import usable_cores  # noqa: E402
from rerank.testing import require_shared_data  # noqa: E402


def rerank_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rerank", *args]


def timed(cmd: list[str], threads: int, cache: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "RERANK_CACHE": str(cache), "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def contenders(workers: int) -> dict[str, tuple[int, int]]:
    """name -> (workers, OMP_NUM_THREADS of the command)."""
    cores = usable_cores()
    return {"w1": (1, cores), "w1-1t": (1, 1), f"w{workers}": (workers, 1)}


def summarise(times: dict[str, list[float]], base: str, best: str) -> dict:
    out: dict = {name: {"min_s": min(ts), "median_s": statistics.median(ts), "runs_s": ts} for name, ts in times.items()}
    for name in times:
        out[name]["speedup_vs_w1"] = min(times[base]) / min(times[name])
        out[name]["median_speedup_vs_w1"] = statistics.median(times[base]) / statistics.median(times[name])
    out["ratio"] = out[best]["speedup_vs_w1"]
    out["median_ratio"] = out[best]["median_speedup_vs_w1"]
    return out


def minilm_cross_encoder(out: Path) -> str:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from rerank.models import minilm_path

    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(out)
    return str(out)


def bench_ce(args: argparse.Namespace, tmp: Path) -> dict:
    model = args.ce_model or minilm_cross_encoder(tmp / "ce")
    cache = tmp / "cache"
    data = require_shared_data()
    runs: dict[str, list[float]] = {}
    rerank_s: dict[str, list[float]] = {}
    outputs: dict[str, Path] = {}
    for r in range(args.repeats):
        for name, (workers, threads) in contenders(args.workers).items():
            out = tmp / f"ce-{name}"
            cmd = rerank_cmd("eval", "--dataset", "scifact", "--data-root", str(data), "--retriever", "bm25",
                             "--reranker", "cross-encoder", "--model", model, "--top-k", str(args.top_k),
                             "--max-queries", str(args.queries), "--reranker-set", f"max_length={args.max_length}",
                             "--workers", str(workers), "--output", str(out))
            runs.setdefault(name, []).append(timed(cmd, threads, cache))
            rerank_s.setdefault(name, []).append(json.loads((out / "metrics.json").read_text())["timing_s"]["rerank_s"])
            outputs[name] = out
            print(f"ce round {r} {name}: {runs[name][-1]:.1f} s wall, rerank {rerank_s[name][-1]:.1f} s", flush=True)
    first = next(iter(outputs.values()))
    identical = all((o / f).read_bytes() == (first / f).read_bytes()
                    for o in outputs.values() for f in ("run.trec", "scores.jsonl"))
    best = f"w{args.workers}"
    return {"model": args.ce_model or "all-MiniLM-L6-v2 + seeded 1-label head", "queries": args.queries,
            "top_k": args.top_k, "pairs": args.queries * args.top_k, "max_length": args.max_length,
            "wall": summarise(runs, "w1", best), "rerank_stage": summarise(rerank_s, "w1", best),
            "outputs_identical": identical}


def bench_dense(args: argparse.Namespace, tmp: Path) -> dict:
    src = require_shared_data() / "scifact"
    corpus = tmp / "scifact-head"
    (corpus / "qrels").mkdir(parents=True)
    with open(src / "corpus.jsonl", encoding="utf-8") as f, open(corpus / "corpus.jsonl", "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i >= args.docs:
                break
            g.write(line)
    shutil.copy(src / "queries.jsonl", corpus / "queries.jsonl")
    shutil.copy(src / "qrels" / "test.tsv", corpus / "qrels" / "test.tsv")
    runs: dict[str, list[float]] = {}
    outputs: dict[str, Path] = {}
    for r in range(args.repeats):
        for name, (workers, threads) in contenders(args.workers).items():
            out = tmp / f"ix-{name}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = rerank_cmd("index", "--model", "all-MiniLM-L6-v2", "--dataset", str(corpus), "--output", str(out),
                             "--no-cache", "--no-progress", "--batch-size", str(args.batch_size),
                             "--workers", str(workers))
            runs.setdefault(name, []).append(timed(cmd, threads, tmp / "cache"))
            outputs[name] = out
            print(f"dense round {r} {name}: {runs[name][-1]:.1f} s wall", flush=True)
    first = next(iter(outputs.values()))
    identical = all((o / "embeddings.npy").read_bytes() == (first / "embeddings.npy").read_bytes()
                    for o in outputs.values())
    return {"model": "all-MiniLM-L6-v2", "docs": args.docs, "batch_size": args.batch_size,
            "wall": summarise(runs, "w1", f"w{args.workers}"), "outputs_identical": identical}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="ce,dense", help="comma list of: ce, dense")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ce-model", default=None)
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    parts = set(args.parts.split(","))
    load = os.getloadavg()
    result: dict = {"bench": "workers", "cores": usable_cores(), "workers": args.workers, "load_before": load[0]}
    with tempfile.TemporaryDirectory() as tmp:
        if "ce" in parts:
            ce = result["cross_encoder"] = bench_ce(args, Path(tmp))
            print(f"cross-encoder: --workers {args.workers} {ce['wall']['ratio']:.2f}x --workers 1 wall "
                  f"(median {ce['wall']['median_ratio']:.2f}x), rerank stage {ce['rerank_stage']['ratio']:.2f}x; "
                  f"identical outputs: {ce['outputs_identical']}", flush=True)
        if "dense" in parts:
            dn = result["dense"] = bench_dense(args, Path(tmp))
            print(f"dense: --workers {args.workers} {dn['wall']['ratio']:.2f}x --workers 1 wall "
                  f"(median {dn['wall']['median_ratio']:.2f}x); identical outputs: {dn['outputs_identical']}",
                  flush=True)
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
