"""Throughput of every reranker head on a GPU with a code-built ~0.5B model, against the GPU's measured matmul peak.

Run on the lent GPU machine (torch + transformers, no hub): models and tokenizers are built in code
(Qwen2.5-0.5B geometry with our small trained tokenizer; a BERT-base-sized cross-encoder), documents are sampled from
the built-in test corpus. Achieved FLOP/s counts 2 × non-embedding parameters × tokens run through the model
(prompt tokens plus generated tokens; attention FLOPs are left out, so the figure is a lower bound).

    python benchmarks/bench_gpu_heads.py --out results.json           # GPU
    python benchmarks/bench_gpu_heads.py --small --device cpu         # smoke test on CPU

Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, Qwen2Config, Qwen2ForCausalLM

from rerank import Reranker
from rerank.methods import method_names
from rerank.testing import build_tokenizer, tiny_bert

HEADS = method_names("reranker")


def matmul_peak(device: str, dtype: torch.dtype, n: int, iters: int) -> float:
    """Measured dense matmul FLOP/s (the roofline we compare against)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_llm(path: Path, small: bool) -> int:
    tok = build_tokenizer(path)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=128 if small else 896,
        intermediate_size=256 if small else 4864,
        num_hidden_layers=2 if small else 24,
        num_attention_heads=2 if small else 14,
        num_key_value_heads=1 if small else 2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    return sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)


def build_cross_encoder(path: Path, small: bool) -> int:
    tiny_bert(path, num_labels=1)
    tok = AutoTokenizer.from_pretrained(path)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=64 if small else 768,
        num_hidden_layers=2 if small else 12,
        num_attention_heads=2 if small else 12,
        intermediate_size=128 if small else 3072,
        max_position_embeddings=512,
        num_labels=1,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(path, safe_serialization=True)
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def make_data(n_queries: int, n_docs: int, doc_words: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    import rerank.testing as rt

    words = (Path(rt.__file__).parent / "corpus.txt").read_text().split()
    rng = random.Random(seed)
    return [
        (" ".join(rng.choices(words, k=8)), [" ".join(rng.choices(words, k=doc_words)) for _ in range(n_docs)])
        for _ in range(n_queries)
    ]


class TokenCounter:
    """Counts non-padding tokens entering the model's forward (prompt and generated tokens alike)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):  # noqa: ANN001, ANN201 - torch hook signature
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            return None
        if mask is not None:
            self.tokens += int(mask[:, -ids.shape[1]:].sum())
        else:
            self.tokens += ids.numel()
        return None


def find_model(reranker: Reranker) -> torch.nn.Module:
    backend = getattr(reranker, "backend", None)
    return getattr(backend, "model", None) or reranker.model  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny models (CPU smoke test)")
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--doc-words", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    peak = matmul_peak(args.device, dtype, 1024 if args.small else 8192, 3 if args.small else 50)
    info = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "matmul_peak_tflops": peak / 1e12, "dtype": str(dtype), "queries": args.queries, "docs": args.docs}
    print(json.dumps(info))
    data = make_data(args.queries, args.docs, args.doc_words)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        llm_dir, ce_dir = Path(tmp) / "llm", Path(tmp) / "ce"
        n_llm = build_llm(llm_dir, args.small)
        n_ce = build_cross_encoder(ce_dir, args.small)
        info.update(llm_nonembedding_params=n_llm, cross_encoder_nonembedding_params=n_ce)
        for head in args.heads.split(","):
            opts = {"dtype": "bfloat16" if dtype == torch.bfloat16 else "float32", "device": args.device,
                    "batch_size": args.batch_size}
            if head in ("first", "listwise"):
                opts.update(window=args.docs, stride=args.docs // 2)
            if head == "listwise":
                opts.update(identifiers="numbers")
            rr = Reranker.load(head, model=str(ce_dir if head == "cross-encoder" else llm_dir), **opts)
            counter = TokenCounter(find_model(rr))
            rr.rerank_batch([data[0][0]], [data[0][1]])  # warm-up
            counter.tokens = 0
            sync(args.device)
            t = time.perf_counter()
            rr.rerank_batch([q for q, _ in data], [d for _, d in data])
            sync(args.device)
            dt = time.perf_counter() - t
            params = n_ce if head == "cross-encoder" else n_llm
            flops = 2 * params * counter.tokens / dt
            results[head] = {
                "seconds": dt,
                "docs_per_s": args.queries * args.docs / dt,
                "queries_per_s": args.queries / dt,
                "tokens": counter.tokens,
                "achieved_tflops": flops / 1e12,
                "fraction_of_matmul_peak": flops / peak,
            }
            print(head, json.dumps(results[head]), flush=True)
            rr.close()
            del rr
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    out = {**info, "heads": results}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
