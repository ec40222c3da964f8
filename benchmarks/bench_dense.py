"""Dense retrieval speed: corpus encoding docs/s of our BiEncoder vs sentence-transformers ``encode`` (same model,
batch size, max length and texts), and FAISS search queries/s (flat and HNSW) over the encoded corpus.

    python benchmarks/bench_dense.py --docs 1000 --batch-size 64 --threads 2

Runs alternate (ours, theirs, ours, theirs, ...) so that load from other processes hits both; each figure is the best
of ``--repeats``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from rerank.testing import require_shared_data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="sentence-transformers folder or packaged name")
    ap.add_argument("--dataset", default=None, help="BEIR folder (corpus + queries); default ../shared/data/scifact")
    ap.add_argument("--docs", type=int, default=1000, help="encode the first N corpus documents")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-doc-tokens", type=int, default=None,
                    help="document token limit for both (default: the model's)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch / FAISS threads")
    ap.add_argument("--device", default=None, help="torch device for both (default cuda if available, else cpu)")
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"], help="model dtype for both")
    ap.add_argument("--k", type=int, default=100, help="search depth")
    ap.add_argument("--synthetic-docs", type=int, default=100_000, help="also search a random corpus of this size")
    ap.add_argument(
        "--search-only", metavar="EMB_NPY", default=None,
        help="skip encoding: search an embeddings.npy (e.g. from the embedding cache), every 17th row as a query",
    )
    ap.add_argument("--synthetic-hnsw", action="store_true", help="also build HNSW over the synthetic corpus (slow)")
    args = ap.parse_args()
    if args.search_only:
        return search_only(args)

    import faiss
    import torch
    from sentence_transformers import SentenceTransformer

    from rerank.data.io import find_file, iter_corpus, read_queries
    from rerank.models import resolve_model_path
    from rerank.retrieval.dense import BiEncoder
    from rerank.retrieval.index import DenseIndex, IndexConfig, build_faiss, doc_text

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    root = Path(args.dataset) if args.dataset else require_shared_data() / "scifact"
    docs = []
    for d in iter_corpus(find_file(root / "corpus.jsonl")):
        docs.append(d)
        if len(docs) == args.docs:
            break
    texts = [doc_text(d) for d in docs]
    queries = [q.text for q in read_queries(find_file(root / "queries.jsonl")).values()]

    path = resolve_model_path(args.model)
    ours = BiEncoder.load(path, device=device, dtype=args.dtype, max_doc_tokens=args.max_doc_tokens)
    st_kwargs = {"model_kwargs": {"dtype": getattr(torch, args.dtype)}} if args.dtype else {}
    theirs = SentenceTransformer(path, device=device, **st_kwargs)
    if args.max_doc_tokens:
        theirs.max_seq_length = args.max_doc_tokens
    max_len = ours.settings.max_doc_tokens
    assert theirs.max_seq_length == max_len, (theirs.max_seq_length, max_len)

    def run_ours() -> np.ndarray:
        return ours.encode_docs(texts, batch_size=args.batch_size)

    def run_theirs() -> np.ndarray:
        return theirs.encode_document(texts, batch_size=args.batch_size, convert_to_numpy=True)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    ours.encode_docs(texts[:32], batch_size=args.batch_size)  # warm-up (threads, allocator)
    theirs.encode_document(texts[:32], batch_size=args.batch_size)
    t_ours, t_theirs = [], []
    emb = ref = None
    for _ in range(args.repeats):
        sync()
        t = time.perf_counter()
        emb = run_ours()
        sync()
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = run_theirs()
        sync()
        t_theirs.append(time.perf_counter() - t)
    ours_dps, theirs_dps = len(texts) / min(t_ours), len(texts) / min(t_theirs)
    max_diff = float(np.abs(emb - ref).max())
    cos = float(np.min(np.sum(emb * ref, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))))
    print(f"encoding {len(texts)} docs, batch {args.batch_size}, max_doc_tokens {max_len}, {device}, "
          f"{args.threads} threads")
    print(f"  ours                  {ours_dps:8.1f} docs/s  (runs {', '.join(f'{x:.2f}s' for x in t_ours)})")
    print(f"  sentence-transformers {theirs_dps:8.1f} docs/s  (runs {', '.join(f'{x:.2f}s' for x in t_theirs)})")
    print(f"  ratio ours/st         {ours_dps / theirs_dps:8.3f}x   max |diff| {max_diff:.2e}, min cosine {cos:.6f}")

    qemb = ours.encode_queries(queries, batch_size=args.batch_size)
    search: dict[str, float] = {}
    ids = [d.id for d in docs]
    for name, cfg in (("flat", IndexConfig("flat")), ("hnsw", IndexConfig("hnsw"))):
        index = DenseIndex(build_faiss(emb, cfg), ids, emb, {})
        index.search(qemb[:10], args.k)
        t = time.perf_counter()
        index.search(qemb, args.k)
        search[f"{name}_{len(ids)}"] = len(qemb) / (time.perf_counter() - t)
    if args.synthetic_docs:
        rng = np.random.default_rng(0)
        synth = rng.normal(size=(args.synthetic_docs, emb.shape[1])).astype(np.float32)
        synth /= np.linalg.norm(synth, axis=1, keepdims=True)
        sids = [str(i) for i in range(len(synth))]
        kinds = (("flat", IndexConfig("flat")), ("hnsw", IndexConfig("hnsw")))
        for name, cfg in kinds if args.synthetic_hnsw else kinds[:1]:
            t = time.perf_counter()
            index = DenseIndex(build_faiss(synth, cfg), sids, synth, {})
            build_s = time.perf_counter() - t
            index.search(qemb[:10], args.k)
            t = time.perf_counter()
            index.search(qemb, args.k)
            search[f"{name}_{len(sids)}"] = len(qemb) / (time.perf_counter() - t)
            search[f"{name}_{len(sids)}_build_s"] = build_s
    print(f"FAISS search, {len(qemb)} queries, k={args.k} (queries/s):")
    for k, v in search.items():
        print(f"  {k:24s} {v:10.1f}")

    result = {
        "bench": "dense",
        "model": args.model,
        "device": device,
        "dtype": args.dtype or "float32",
        "threads": args.threads,
        "docs": len(texts),
        "batch_size": args.batch_size,
        "max_doc_tokens": max_len,
        "ours_docs_per_s": round(ours_dps, 2),
        "st_docs_per_s": round(theirs_dps, 2),
        "ratio": round(ours_dps / theirs_dps, 3),
        "max_abs_diff": max_diff,
        "search_qps": {k: round(v, 2) for k, v in search.items()},
        "k": args.k,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }
    print(json.dumps(result))
    return 0


def search_only(args: argparse.Namespace) -> int:
    """FAISS queries/s (and build seconds) over saved embeddings, every 17th row (up to 300) used as a query."""
    import faiss

    from rerank.retrieval.index import DenseIndex, IndexConfig, build_faiss

    faiss.omp_set_num_threads(args.threads)
    emb = np.load(args.search_only)
    q = np.ascontiguousarray(emb[::17][:300])
    out: dict[str, float] = {}
    corpora = [("real", emb)]
    if args.synthetic_docs:
        rng = np.random.default_rng(0)
        synth = rng.normal(size=(args.synthetic_docs, emb.shape[1])).astype(np.float32)
        corpora.append(("synthetic", synth / np.linalg.norm(synth, axis=1, keepdims=True)))
    for label, x in corpora:
        ids = [str(i) for i in range(len(x))]
        kinds = ["flat", "hnsw"] if label == "real" or args.synthetic_hnsw else ["flat"]
        for kind in kinds:
            t = time.perf_counter()
            index = DenseIndex(build_faiss(x, IndexConfig(kind)), ids, x, {})
            out[f"{kind}_{len(x)}_build_s"] = round(time.perf_counter() - t, 3)
            index.search(q[:10], args.k)
            t = time.perf_counter()
            index.search(q, args.k)
            out[f"{kind}_{len(x)}"] = round(len(q) / (time.perf_counter() - t), 1)
            print(f"  {kind:5s} {len(x):7d} docs: {out[f'{kind}_{len(x)}']:10.1f} queries/s (build {out[f'{kind}_{len(x)}_build_s']}s)")
    print(json.dumps({"bench": "dense-search", "queries": len(q), "k": args.k, "threads": args.threads, "search_qps": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
