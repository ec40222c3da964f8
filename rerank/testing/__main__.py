"""``python -m rerank.testing {tiny-llm,tiny-bert,tiny-st,tiny-t5,tiny-beir} DIR``: write a tiny model or dataset
folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rerank.testing.models import LLM_ARCHS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m rerank.testing``."""
    parser = argparse.ArgumentParser(prog="python -m rerank.testing", description="Write tiny models and datasets.")
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = sub.add_parser("tiny-llm", help="random tiny causal LM + BPE tokenizer with a ChatML template")
    p.add_argument("dir")
    p.add_argument("--arch", choices=LLM_ARCHS, default="qwen2")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("tiny-bert", help="random tiny BERT (+ WordPiece tokenizer); a classifier with --num-labels")
    p.add_argument("dir")
    p.add_argument("--num-labels", type=int, default=None, help="1 for a cross-encoder; omit for a bare encoder")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("tiny-st", help="SentenceTransformer folder: tiny BERT + mean pooling")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("tiny-t5", help="random tiny T5 (seq2seq, for monot5 / duot5) + T5-like Unigram tokenizer")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("tiny-beir", help="synthetic BEIR dataset (key-word relevance, grades 0-2)")
    p.add_argument("dir")
    p.add_argument("--num-docs", type=int, default=200)
    p.add_argument("--num-queries", type=int, default=30)
    p.add_argument("--splits", default="train,dev,test", help="comma-separated qrels splits (default: train,dev,test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--doc-chars", type=int, default=None, help="pad or cut every document's text to N characters")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write the requested folder and print its path."""
    args = build_parser().parse_args(argv)
    if args.what == "tiny-llm":
        from rerank.testing.models import tiny_llm

        out = tiny_llm(args.dir, arch=args.arch, seed=args.seed)
    elif args.what == "tiny-bert":
        from rerank.testing.models import tiny_bert

        out = tiny_bert(args.dir, num_labels=args.num_labels, seed=args.seed)
    elif args.what == "tiny-st":
        from rerank.testing.models import tiny_sentence_transformer

        out = tiny_sentence_transformer(args.dir, seed=args.seed)
    elif args.what == "tiny-t5":
        from rerank.testing.models import tiny_t5

        out = tiny_t5(args.dir, seed=args.seed)
    else:
        from rerank.testing.synthetic import make_tiny_beir

        splits = tuple(s for s in args.splits.split(",") if s)
        if args.num_docs < 3 * args.num_queries:
            build_parser().error(f"--num-docs {args.num_docs} is too small for --num-queries {args.num_queries}: "
                                 f"each query needs 3 judged documents, so give --num-docs {3 * args.num_queries} or "
                                 "more")
        try:
            out = make_tiny_beir(
                args.dir, num_docs=args.num_docs, num_queries=args.num_queries, splits=splits, seed=args.seed,
                doc_chars=args.doc_chars,
            )
        except ValueError as e:  # the other argument checks of make_tiny_beir (no split, doc_chars < 1, ...)
            build_parser().error(str(e))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
