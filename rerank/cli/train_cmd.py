"""``rerank train TRAINER --config FILE.yaml --output DIR [--set key=value …] [--data-root DIR] [--resume]``."""

from __future__ import annotations

import argparse
import json

from rerank.cli.common import add_data_root


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a reranker or retriever (sft, grpo, contrastive, star, adore, pgrank, …)")
    p.add_argument("trainer", help="registered trainer name")
    p.add_argument("--config", default=None, help="YAML config; the starting model is the key 'model'")
    p.add_argument("--output", required=True,
                   help="run folder: OUTPUT/model (the trained model, its card and rerank.json), "
                        "OUTPUT/checkpoints/checkpoint-N, the run record rerank_train.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted keys for nested options)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    add_data_root(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rerank.trainers.base import TrainContext, get_trainer, load_train_config, save_run_record

    trainer = get_trainer(args.trainer)
    cfg = load_train_config(trainer.config_class, args.config, args.overrides)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    save_run_record(out, args.trainer, cfg)
    result = trainer.train(cfg, TrainContext(output=out, data_root=args.data_root, resume=args.resume))
    print(json.dumps({"trainer": args.trainer, "output": str(out), **(result or {})}, default=str))
    return 0
