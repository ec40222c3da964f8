"""``rerank eval --retriever bm25`` end to end against a bare bm25s + pytrec_eval script, on SciFact test.

Both run as fresh processes (what a user waits for), interleaved, ``--repeats`` times each; ours after one untimed
warm-up run, so its BM25 index comes from the cache as it does from the second run on. The bare script is what a
user writes without us (once as is, once saving its bm25s index on the first run and loading it after, like our
cache): read the corpus, queries and qrels, tokenize and index with bm25s (same settings: lucene,
k1 0.9, b 0.4, English stemmer, title + text), retrieve the top 1000, write the TREC run, score it with pytrec_eval
(ndcg_cut.10, recip_rank, recall.100, map, P.10) and write the means as JSON. Ours writes run.trec, metrics.json
(with per-query values and Judged@10) and report.md. Prints min and median wall time and the ratio ours / bare
(> 1 = ours slower); the last line is one JSON object.
Usage: ``python benchmarks/bench_eval_bm25.py [--data-root DIR] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BARE = r'''
import csv, json, sys
import bm25s, pytrec_eval, Stemmer
import os
root, out, index = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None
stemmer = Stemmer.Stemmer("english")
if index and os.path.exists(f"{index}/ids.json"):
    model = bm25s.BM25.load(index)
    with open(f"{index}/ids.json") as f:
        ids = json.load(f)
else:
    ids, texts = [], []
    with open(f"{root}/corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            ids.append(d["_id"])
            texts.append(f"{d['title']}\n{d['text']}" if d.get("title") else d["text"])
    model = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    model.index(bm25s.tokenize(texts, stopwords=None, stemmer=stemmer, show_progress=False), show_progress=False)
    if index:
        model.save(index)
        with open(f"{index}/ids.json", "w") as f:
            json.dump(ids, f)
qrels = {}
with open(f"{root}/qrels/test.tsv") as f:
    for row in list(csv.reader(f, delimiter="\t"))[1:]:
        qrels.setdefault(row[0], {})[row[1]] = int(row[2])
queries = {}
with open(f"{root}/queries.jsonl") as f:
    for line in f:
        q = json.loads(line)
        if q["_id"] in qrels:
            queries[q["_id"]] = q["text"]
qids = list(queries)
tokens = bm25s.tokenize([queries[q] for q in qids], stopwords=None, stemmer=stemmer, return_ids=False, show_progress=False)
docs, scores = model.retrieve(tokens, k=1000, show_progress=False)
run = {q: {ids[d]: float(s) for d, s in zip(docs[i].tolist(), scores[i].tolist()) if s != 0} for i, q in enumerate(qids)}
with open(f"{out}/run.trec", "w") as f:
    for q in sorted(run):
        for r, (d, s) in enumerate(sorted(run[q].items(), key=lambda p: (p[1], p[0]), reverse=True)):
            f.write(f"{q} Q0 {d} {r + 1} {s} bm25s\n")
per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank", "recall.100", "map", "P.10"}).evaluate(run)
keys = next(iter(per_query.values())).keys()
with open(f"{out}/metrics.json", "w") as f:
    json.dump({k: sum(v[k] for v in per_query.values()) / len(qrels) for k in keys}, f)
'''


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("RERANK_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    root = Path(args.data_root) / "scifact"
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-bm25-"))
    env = {**os.environ, "RERANK_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "HF_HUB_OFFLINE": "1"}
    ours_cmd = [sys.executable, "-m", "rerank", "eval", "--dataset", str(root), "--retriever", "bm25",
                "--retriever-set", "show_progress=false", "--output", str(tmp / "ours")]
    (tmp / "bare").mkdir()
    (tmp / "bare_cached").mkdir()
    bare_cmd = [sys.executable, "-c", BARE, str(root), str(tmp / "bare")]
    cached_cmd = [sys.executable, "-c", BARE, str(root), str(tmp / "bare_cached"), str(tmp / "bm25s-index")]
    for cmd in (ours_cmd, cached_cmd):  # each builds and saves its index: the timed runs load it
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    walls: dict[str, list[float]] = {"ours": [], "bare": [], "bare_cached": []}
    for _ in range(args.repeats):
        for name, cmd in (("ours", ours_cmd), ("bare", bare_cmd), ("bare_cached", cached_cmd)):
            t = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            walls[name].append(time.perf_counter() - t)
    ours = json.loads((tmp / "ours" / "metrics.json").read_text())["metrics"]
    bare = json.loads((tmp / "bare" / "metrics.json").read_text())
    out = {
        "dataset": "scifact/test", "repeats": args.repeats, "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "python": platform.python_version(), "command": " ".join(ours_cmd[1:]),
        "ndcg10": {"ours": ours["nDCG@10"], "bare": bare["ndcg_cut_10"]},
        "run_bytes": {"ours": sum(f.stat().st_size for f in (tmp / "ours").glob("*.trec")),
                      "bare": (tmp / "bare" / "run.trec").stat().st_size},
        **{name: {"min_s": min(w), "median_s": statistics.median(w)} for name, w in walls.items()},
    }
    out["ratio_min"] = out["ours"]["min_s"] / out["bare"]["min_s"]
    out["ratio_median"] = out["ours"]["median_s"] / out["bare"]["median_s"]
    out["ratio_vs_cached_min"] = out["ours"]["min_s"] / out["bare_cached"]["min_s"]
    out["ratio_vs_cached_median"] = out["ours"]["median_s"] / out["bare_cached"]["median_s"]
    out["target_met_1_2x"] = max(out["ratio_min"], out["ratio_vs_cached_min"]) <= 1.2
    print(f"ours {out['ours']['min_s']:.2f}s (median {out['ours']['median_s']:.2f}) | bare bm25s + pytrec_eval "
          f"{out['bare']['min_s']:.2f}s (median {out['bare']['median_s']:.2f}) | ratio x{out['ratio_min']:.3f} min, "
          f"x{out['ratio_median']:.3f} median | bare with a saved bm25s index {out['bare_cached']['min_s']:.2f}s "
          f"(median {out['bare_cached']['median_s']:.2f}): ratio x{out['ratio_vs_cached_min']:.3f} min, "
          f"x{out['ratio_vs_cached_median']:.3f} median | nDCG@10 {out['ndcg10']['ours']:.4f} vs {out['ndcg10']['bare']:.4f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
