"""Which one-epoch recipe makes an all-MiniLM-L6-v2-initialised cross-encoder rank SciFact? A loss/lr/pooling sweep.

Diagnostic behind the ``scifact-cross-encoder`` example's choice of loss (docs/results.md). Two steps:

* ``prep`` (this machine, needs ``rerank`` and ``../shared/data``): builds the training examples exactly as the
  example config does (qrels positives + 4 BM25 negatives per positive from the top-100, ``top`` or ``random``, the
  same seeded dev split), the dev queries' and the test queries' BM25 top-30 lists, and a float16 copy of the
  MiniLM folder (small enough to carry to a GPU box) into ``--bundle``.
* ``sweep`` (any machine with torch + transformers, GPU if present): for each recipe, a fresh model is trained for
  the given epochs with AdamW, 10 % linear warm-up, max length 256, and scored on the dev and test BM25 top-30
  lists (nDCG@10, linear gains, trec_eval's ideal). One JSON line per recipe on stdout and in ``--out``.

Recipes: ``bce`` (pointwise, 16 pairs a step, like sentence-transformers' BinaryCrossEntropyLoss) or ``lce``
(softmax cross-entropy over one positive + its 4 hard negatives [+ ``inb`` negatives borrowed from the step's other
groups], 4 positives a step; ``act=sig10`` scores as sigmoid × 10 first, as sentence-transformers'
MultipleNegativesRankingLoss does); pooling ``cls`` (BertForSequenceClassification's pooler, what the trainer uses)
or ``mean``. This is a measurement loop, not the product: the trainer is ``rerank train sft`` (sentence-transformers).
Usage: ``python benchmarks/ce_loss_sweep.py prep --bundle B`` then ``python benchmarks/ce_loss_sweep.py sweep
--bundle B --grid broad|focus [--budget SECONDS]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import time
from pathlib import Path
from typing import Any

MAXLEN = 256


def prep(bundle: Path, data_root: str | None) -> None:
    """Write ``data.json.gz`` and ``model/`` (float16) into ``bundle``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerank.data.datasets import resolve_dataset
    from rerank.models import resolve_model_path
    from rerank.retrieval.base import build_retriever
    from rerank.testing import require_shared_data
    from rerank.trainers.data import build_from_beir, split_dev

    root = data_root or str(require_shared_data())
    bundle.mkdir(parents=True, exist_ok=True)
    ds = resolve_dataset("scifact", root)
    out: dict[str, Any] = {}
    dev: list[dict[str, Any]] = []
    for negs in ("top", "random"):
        ex = build_from_beir("scifact", root, "train", 4, 100, 20, None, 0, negs)
        out[f"train_{negs}"], dev = split_dev(ex, 0.05, 0, 40)
    bm25 = build_retriever("bm25", ds)

    def lists(split: str, qids: list[str]) -> list[dict[str, Any]]:
        qrels, queries = ds.qrels(split), ds.split_queries(split)
        run = bm25.retrieve({q: queries[q] for q in qids}, 30)
        return [{"qid": q, "query": queries[q].text, "qrels": qrels[q],
                 "cands": [{"id": d, "text": ds.corpus[d].full_text(), "bm25": s} for d, s in run[q]]} for q in qids]

    out["dev"] = lists("train", [e["qid"] for e in dev])
    test_qrels = ds.qrels("test")
    out["test"] = lists("test", [q for q in ds.split_queries("test") if any(g > 0 for g in test_qrels.get(q, {}).values())])
    with gzip.open(bundle / "data.json.gz", "wt") as f:
        json.dump(out, f)
    path = resolve_model_path("all-MiniLM-L6-v2")
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).half().save_pretrained(bundle / "model")
    AutoTokenizer.from_pretrained(path).save_pretrained(bundle / "model")
    print(json.dumps({k: len(v) for k, v in out.items()}))


def _text(c: dict[str, Any]) -> str:
    return f"{c['title']}\n{c['text']}" if c.get("title") else c["text"]


def ndcg10(scores: list[float], item: dict[str, Any]) -> float:
    """nDCG@10 of the candidates ordered by ``scores`` (gains = qrels grades; ideal from all judged positives)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:10]
    g = item["qrels"]
    dcg = sum(g.get(item["cands"][i]["id"], 0) / math.log2(r + 2) for r, i in enumerate(order))
    ideal = sorted((v for v in g.values() if v > 0), reverse=True)[:10]
    idcg = sum(v / math.log2(r + 2) for r, v in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def grid(name: str) -> list[dict[str, Any]]:
    """``broad``: pooling × loss × negatives × lr at 1 epoch; ``focus``: the contrastive recipes over 3 seeds."""
    if name == "broad":
        return [{"pool": p, "loss": lo, "negs": n, "lr": lr, "epochs": 1, "seed": 0} for lr in (2e-5, 5e-5, 1e-4)
                for p in ("cls", "mean") for lo in ("bce", "lce") for n in ("random", "top")]
    return [{"pool": "cls", "loss": "lce", "negs": "random", "lr": lr, "epochs": 1, "seed": s, "act": a,
             **({"inb": 4} if i else {})}
            for s in (0, 1, 2) for lr in (1e-4, 2e-4) for a in ("id", "sig10") for i in (0, 1)]


def sweep(bundle: Path, grid_name: str, budget: float, out: Path) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    with gzip.open(bundle / "data.json.gz", "rt") as fh:
        data = json.load(fh)
    tok = AutoTokenizer.from_pretrained(bundle / "model")

    class CE(nn.Module):
        def __init__(self, pool: str, seed: int) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.enc = AutoModel.from_pretrained(bundle / "model", dtype=torch.float32, add_pooling_layer=pool == "cls")
            self.pool, self.drop = pool, nn.Dropout(0.1)
            self.head = nn.Linear(self.enc.config.hidden_size, 1)
            self.head.weight.data.normal_(0, 0.02)
            self.head.bias.data.zero_()

        def forward(self, **b: Any) -> Any:
            o = self.enc(**b)
            if self.pool == "cls":
                h = o.pooler_output
            else:
                m = b["attention_mask"].unsqueeze(-1).float()
                h = (o.last_hidden_state * m).sum(1) / m.sum(1)
            return self.head(self.drop(h)).squeeze(-1)

    def enc(qs: list[str], ds: list[str]) -> dict[str, Any]:
        b = tok(qs, ds, truncation="only_second", max_length=MAXLEN, padding=True, return_tensors="pt")
        return {k: v.to(device) for k, v in b.items()}

    def batches(cfg: dict[str, Any], rng: random.Random) -> Any:
        ex = data[f"train_{cfg['negs']}"]
        if cfg["loss"] == "bce":
            rows = [(e["query"], _text(c), float(lab >= 1)) for e in ex for c, lab in zip(e["candidates"], e["labels"])]
            rng.shuffle(rows)
            for i in range(0, len(rows), 16):
                yield [rows[i : i + 16]]
            return
        groups = []
        for e in ex:
            pos = [c for c, lab in zip(e["candidates"], e["labels"]) if lab >= 1]
            neg = [c for c, lab in zip(e["candidates"], e["labels"]) if lab < 1]
            for p in pos:
                ns = rng.sample(neg, min(4, len(neg)))
                if ns:
                    groups.append([(e["query"], _text(p), 1.0)] + [(e["query"], _text(n), 0.0) for n in ns])
        rng.shuffle(groups)
        for i in range(0, len(groups), 4):
            chunk = groups[i : i + 4]
            if cfg.get("inb"):
                chunk = [g + [(g[0][0], d, 0.0) for d in rng.sample(
                    [r[1] for k, h in enumerate(chunk) if k != j for r in h],
                    min(cfg["inb"], sum(len(h) for k, h in enumerate(chunk) if k != j)))] for j, g in enumerate(chunk)]
            yield chunk

    @torch.no_grad()
    def evaluate(model: Any, split: str) -> float:
        model.eval()
        vals = [ndcg10(model(**enc([it["query"]] * len(it["cands"]), [c["text"] for c in it["cands"]])).float().tolist(),
                       it) for it in data[split]]
        model.train()
        return sum(vals) / len(vals)

    def run(cfg: dict[str, Any]) -> dict[str, Any]:
        t0 = time.time()
        model = CE(cfg["pool"], cfg["seed"]).to(device).train()
        steps = sum(1 for _ in batches(cfg, random.Random(0))) * cfg["epochs"]
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
        sch = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
        rng, losses = random.Random(cfg["seed"]), []
        for _ in range(cfg["epochs"]):
            for groups in batches(cfg, rng):
                flat = [r for g in groups for r in g]
                logits = model(**enc([r[0] for r in flat], [r[1] for r in flat]))
                if cfg["loss"] == "bce":
                    loss = F.binary_cross_entropy_with_logits(logits, torch.tensor([r[2] for r in flat], device=device))
                else:
                    if cfg.get("act") == "sig10":
                        logits = torch.sigmoid(logits) * 10
                    parts, i = [], 0
                    for g in groups:
                        parts.append(F.cross_entropy(logits[i : i + len(g)].unsqueeze(0),
                                                     torch.zeros(1, dtype=torch.long, device=device)))
                        i += len(g)
                    loss = torch.stack(parts).mean()
                loss.backward()
                opt.step()
                sch.step()
                opt.zero_grad()
                losses.append(loss.item())
        return dict(cfg, steps=steps, first_loss=round(sum(losses[:20]) / min(20, len(losses)), 4),
                    last_loss=round(sum(losses[-20:]) / min(20, len(losses)), 4), dev=round(evaluate(model, "dev"), 4),
                    test=round(evaluate(model, "test"), 4), secs=round(time.time() - t0, 1))

    bm25 = {s: round(sum(ndcg10([c["bm25"] for c in it["cands"]], it) for it in data[s]) / len(data[s]), 4)
            for s in ("dev", "test")}
    print(json.dumps({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "bm25": bm25}), flush=True)
    start = time.time()
    with open(out, "a") as f:
        for cfg in grid(grid_name):
            if time.time() - start > budget:
                print("budget reached; stopped", flush=True)
                break
            r = run(cfg)
            print(json.dumps(r), flush=True)
            f.write(json.dumps(r) + "\n")
            f.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["prep", "sweep"])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--grid", choices=["broad", "focus"], default="focus")
    ap.add_argument("--budget", type=float, default=3600.0, help="stop starting new recipes after this many seconds")
    ap.add_argument("--out", type=Path, default=Path("ce_loss_sweep.jsonl"))
    a = ap.parse_args()
    if a.step == "prep":
        prep(a.bundle, a.data_root)
    else:
        sweep(a.bundle, a.grid, a.budget, a.out)


if __name__ == "__main__":
    main()
