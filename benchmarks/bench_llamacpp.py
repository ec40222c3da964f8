"""FIRST on SmolLM2-135M-Instruct: the llama.cpp backend on the Q4_1 GGUF vs the transformers backend on its float32
de-quantisation, same DL19 queries, same windows, CPU; and greedy generation speed on both.

Both heads are FIRST (window 20, stride 10, depth ``--top``, one prompt per call) on one model object each. After a
one-query warm-up, ``--repeats`` rounds time each backend on all queries, alternating (llama.cpp, then transformers),
so both share whatever else the machine is doing; wall and CPU seconds are both recorded (on a shared machine CPU
seconds vary less). Both use ``--threads`` threads (llama.cpp's ``n_threads``, torch's intra-op threads). Also
printed: how far llama.cpp's orders are from transformers' (Kendall tau, top-5 overlap per query; the quantised
arithmetic is not the same), and greedy decoding of ``--gen-tokens`` tokens continuing a DL19 passage (tokens/s,
prompt included), which listwise and GroupRank spend their time on.

    python benchmarks/bench_llamacpp.py --queries 3 --top 20 --repeats 3 --threads 1

The last line is one JSON object; ``speedup_min`` = llama.cpp FIRST queries/s over transformers' (best wall times),
``generate_speedup_min`` the same for generated tokens/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from benchmarks.bench_listwise import load_dl19  # noqa: E402
from rerank.backends.base import GenerationConfig  # noqa: E402
from rerank.backends.registry import build_backend  # noqa: E402
from rerank.heads.sliding_window import SlidingWindowConfig  # noqa: E402
from rerank.methods.first.head import FirstReranker  # noqa: E402
from rerank.models import resolve_model_path, smollm2_gguf_path  # noqa: E402


def timed(fn: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def summary(walls: list[float], cpus: list[float], units: float) -> dict[str, Any]:
    """Units per second from the best and the median wall time, and per CPU second (best)."""
    return {"per_s_best": units / min(walls), "per_s_median": units / statistics.median(walls),
            "per_cpu_s_best": units / min(cpus), "walls_s": walls, "cpus_s": cpus}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gen-tokens", type=int, default=64, help="greedy tokens generated per generation timing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    gguf = smollm2_gguf_path()
    hf_dir = resolve_model_path(str(gguf))  # de-quantised once, cached by the file's sha256
    loads: dict[str, float] = {}
    heads: dict[str, FirstReranker] = {}
    cfg = SlidingWindowConfig(window=20, stride=10, depth=args.top, batch_size=1)
    for name, make in [("llamacpp", lambda: build_backend("llamacpp", str(gguf), n_threads=args.threads)),
                       ("transformers", lambda: build_backend("transformers", hf_dir, dtype="float32", device="cpu",
                                                              batch_size=1))]:
        t = time.perf_counter()
        heads[name] = FirstReranker(cfg, backend=make())
        loads[name] = time.perf_counter() - t
    queries, cands = load_dl19(args.queries, args.top)
    tok = heads["transformers"].tokenizer
    gen_prompt = tok.encode(cands[0][0].doc.text, add_special_tokens=False)  # a continuation: no early end of turn
    gen_cfg = GenerationConfig(max_new_tokens=args.gen_tokens)

    for head in heads.values():  # warm-up
        head.rerank_batch(queries[:1], cands[:1])
        head.backend.generate([gen_prompt], GenerationConfig(max_new_tokens=4))
    first: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in heads}
    gen: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in heads}
    orders: dict[str, list[list[str]]] = {}
    generated: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, head in heads.items():
            wall, cpu, ranked = timed(lambda: head.rerank_batch(queries, cands))
            first[name][0].append(wall)
            first[name][1].append(cpu)
            orders[name] = [r.doc_ids for r in ranked]
            wall, cpu, texts = timed(lambda: head.backend.generate([gen_prompt], gen_cfg))
            gen[name][0].append(wall)
            gen[name][1].append(cpu)
            generated[name] = len(tok.encode(texts[0], add_special_tokens=False))

    nq = len(queries)
    per = {name: {"first_queries": summary(*first[name], nq), "generate_tokens": summary(*gen[name], generated[name]),
                  "generated_tokens": generated[name], "load_s": loads[name]} for name in heads}
    pairs = list(zip(orders["llamacpp"], orders["transformers"], strict=True))
    ll, tf = per["llamacpp"], per["transformers"]
    result = {
        "bench": "llamacpp",
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "model": "SmolLM2-135M-Instruct GGUF Q4_1 (llama.cpp) vs its float32 de-quantisation (transformers)",
        "head": "first (window 20, stride 10)",
        "queries": nq,
        "top": args.top,
        "repeats": args.repeats,
        "gen_prompt_tokens": len(gen_prompt),
        **per,
        "kendall_tau": [float(kendalltau([a.index(d) for d in b], range(len(b))).statistic) for a, b in pairs],
        "top5_overlap": [len(set(a[:5]) & set(b[:5])) for a, b in pairs],
        "speedup_min": ll["first_queries"]["per_s_best"] / tf["first_queries"]["per_s_best"],
        "speedup_median": ll["first_queries"]["per_s_median"] / tf["first_queries"]["per_s_median"],
        "speedup_cpu": ll["first_queries"]["per_cpu_s_best"] / tf["first_queries"]["per_cpu_s_best"],
        "generate_speedup_min": ll["generate_tokens"]["per_s_best"] / tf["generate_tokens"]["per_s_best"],
        "generate_speedup_cpu": ll["generate_tokens"]["per_cpu_s_best"] / tf["generate_tokens"]["per_cpu_s_best"],
    }
    for name, v in per.items():
        f, g = v["first_queries"], v["generate_tokens"]
        print(f"{name:12s} FIRST {f['per_s_best']:.3f} queries/s best, {f['per_s_median']:.3f} median, "
              f"{f['per_cpu_s_best']:.3f} per CPU s | generate {g['per_s_best']:.1f} tokens/s "
              f"({v['generated_tokens']} tokens) | load {v['load_s']:.1f} s")
    print(f"llama.cpp / transformers, FIRST: {result['speedup_min']:.2f}x (best), {result['speedup_median']:.2f}x "
          f"(median), {result['speedup_cpu']:.2f}x (CPU); generate: {result['generate_speedup_min']:.2f}x; "
          f"Kendall tau {['%.2f' % x for x in result['kendall_tau']]}, top-5 overlap {result['top5_overlap']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
