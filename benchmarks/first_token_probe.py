"""Can a tiny LLM learn FIRST's first-identifier choice on the synthetic key-word task, and with how much data?

Plain PyTorch on the FIRST task's own prompts (``rerank.methods.first.task`` with the short test template of
tests/test_trainer_learns.py): cross-entropy on the teacher's top identifier at the position after ``[``
(``--loss ce``) or FIRST's weighted RankNet (``--loss ranknet``), nothing else. Prints the held-out (200 queries)
top-1 accuracy and nDCG@10 of the first-identifier logits every ``--eval-every`` steps; a random order scores ~0.63.

    OMP_NUM_THREADS=1 python benchmarks/first_token_probe.py --steps 2000 --batch 16 --lr 1e-3 --eval-every 400
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from rerank.methods.first.training import first_position_logits, left_pad
from rerank.testing import synthetic_ranking_examples, tiny_llm
from rerank.trainers.base import load_train_config
from rerank.trainers.ranking_losses import weighted_ranknet
from rerank.trainers.sft_trainer import SFTTrainConfig, load_causal_lm
from rerank.trainers.task import build_task

TEMPLATE = (
    'name: first-tiny\nidentifiers: letters\nassistant_prefix: "["\n'
    'user: "Q: {{ query }}\\n{% for p in passages %}[{{ p.id }}] {{ p.text }}\\n{% endfor %}Rank {{ num }}:"\n'
)
Row = tuple[list[int], list[int], list[int]]  # prompt ids, teacher ranks, labels of the window


def _dcg(gains: list[int]) -> float:
    return sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(gains))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ntrain", type=int, default=2500, help="synthetic training queries (one window each)")
    ap.add_argument("--loss", choices=("ce", "ranknet"), default="ce")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--work", default="runs/first-token-probe", help="folder for the tiny model and template")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    work = Path(a.work)
    llm = work / f"llm-{a.layers}-{a.heads}-{a.hidden}"
    if not (llm / "model.safetensors").exists():
        tiny_llm(llm, seed=0, num_layers=a.layers, num_heads=a.heads, hidden_size=a.hidden,
                 intermediate_size=2 * a.hidden)
    tpl = work / "first-tiny.yaml"
    tpl.write_text(TEMPLATE)
    model, tok = load_causal_lm(str(llm), True)
    cfg = load_train_config(SFTTrainConfig, None, ["model=x", "head=first", f"template={tpl}", "max_doc_tokens=40",
                                                   "window=6", "data.path=x"])
    task: Any = build_task("first", tok, cfg)
    id_tokens = torch.tensor(task.identifier_token_ids())

    def rows(examples: list[dict[str, Any]]) -> list[Row]:
        out = []
        for e in examples:
            for r, w in zip(task.sft_rows(e), task.windows(e, 6), strict=True):
                out.append((r["rank_prompt_ids"], r["rank_ranks"], [e["labels"][j] for j in w]))
        return out

    train = rows(synthetic_ranking_examples(a.ntrain, num_candidates=6, seed=1))
    held = rows(synthetic_ranking_examples(200, num_candidates=6, seed=2))

    def logits_of(rs: list[Row]) -> torch.Tensor:
        ids, att = left_pad([p for p, _, _ in rs], tok.pad_token_id)
        return first_position_logits(model, ids, att)[:, id_tokens]

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        acc = ndcg = 0.0
        for i in range(0, len(held), 50):
            rs = held[i : i + 50]
            for (_, _, labels), lg in zip(rs, logits_of(rs), strict=True):
                order = sorted(range(len(labels)), key=lambda k: -float(lg[k]))
                acc += labels[order[0]] == max(labels)
                ndcg += _dcg([labels[k] for k in order]) / _dcg(sorted(labels, reverse=True))
        model.train()
        return {"top1_accuracy": round(acc / len(held), 4), "ndcg@10": round(ndcg / len(held), 4)}

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    warm = max(1, a.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / a.steps))
    rng = random.Random(a.seed)
    t0 = time.time()
    print(json.dumps({"step": 0, **evaluate()}), flush=True)
    for step in range(1, a.steps + 1):
        rs = [train[rng.randrange(len(train))] for _ in range(a.batch)]
        lg = logits_of(rs)
        ranks = torch.tensor([r for _, r, _ in rs])
        if a.loss == "ce":
            loss = torch.nn.functional.cross_entropy(lg, ranks.argmin(-1))
        else:
            loss = weighted_ranknet(lg, ranks)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % a.eval_every == 0 or step == a.steps:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), **evaluate(),
                              "secs": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
