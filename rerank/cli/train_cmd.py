"""``rerank train TRAINER --config FILE.yaml --output DIR [--set key=value …] [--data-root DIR]
[--resume | --overwrite]``."""

from __future__ import annotations

import argparse
import json

from rerank.cli.common import add_data_root, check_input_file, check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rerank.trainers.base import available_trainers  # the registry reads the method descriptors: no model code

    p = sub.add_parser("train", help="train a reranker or retriever (sft, grpo, contrastive, star, adore, pgrank, …)")
    p.add_argument("trainer", help=f"registered trainer name: {', '.join(available_trainers())}")
    p.add_argument("--config", default=None, help="YAML config; the starting model is the key 'model'")
    p.add_argument("--output", required=True,
                   help="run folder: OUTPUT/model (the trained model, its card and rerank.json), "
                        "OUTPUT/checkpoints/checkpoint-N, the run record rerank_train.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted keys for nested options)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --output from its newest complete checkpoint")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in --output (removes its model, adapter, checkpoints and run files)")
    add_data_root(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rerank.models import check_model_path
    from rerank.trainers.api import run_trainer
    from rerank.trainers.base import get_trainer, load_train_config
    from rerank.trainers.resume import main_process

    trainer = get_trainer(args.trainer)
    check_output_dir(args.output)
    if args.config is not None:
        check_input_file(args.config, "--config")
    cfg = load_train_config(trainer.config_class, args.config, args.overrides)
    check_model_path(cfg.model, "model")  # the config key (or --set model=…); before any data is read or mined
    result = run_trainer(args.trainer, cfg, args.output, args.data_root, args.resume, args.overwrite)
    if not main_process():  # under torchrun every rank returns the same result: rank 0 prints it once
        return 0
    print(json.dumps({"trainer": args.trainer, "output": args.output, **(result or {})}, default=str))
    return 0
