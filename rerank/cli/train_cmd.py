"""``rerank train TRAINER --config FILE.yaml --output DIR [--set key=value …] [--data-root DIR]
[--resume | --overwrite] [--check [--inputs-later]]``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import logging
from pathlib import Path
from typing import Any

from rerank.cli.common import add_data_root, check_input_file, check_output_dir
from rerank.errors import ConfigError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    try:  # the registry reads the method descriptors (no model code); a broken one is reported when a command runs
        from rerank.trainers.base import available_trainers

        names = ", ".join(available_trainers())
    except ConfigError as e:
        names = f"(the method descriptors do not load: {e})"
    p = sub.add_parser("train", help="train a reranker or retriever (sft, grpo, contrastive, star, adore, pgrank, …)")
    p.add_argument("trainer", help=f"registered trainer name: {names}")
    p.add_argument("--config", default=None,
                   help="YAML config; the starting model is the key 'model'. Or a run's record OLD/rerank_train.json: "
                        "its config, to train that run again (its trainer must be TRAINER)")
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
    p.add_argument("--check", action="store_true",
                   help="check the run without training or writing anything: the config with --set, the method's "
                        "head, task and prompt template, the starting model and data files, and the run in --output; "
                        "prints a line, the plan it resolved on one line (trainer, method, template, model, data, "
                        "loss, length, schedule, seed, checkpoints and model selection, token limits, bf16) unless the "
                        "run is done, and then 'state: train', "
                        "'state: done' (a finished model of this config) or 'state: resume' (continue with --resume)")
    p.add_argument("--inputs-later", action="store_true",
                   help="with --check: do not look for the starting model and the data files (for a script whose "
                        "earlier step makes them)")
    add_data_root(p)
    p.set_defaults(func=run)


def check_inputs(cfg: Any, data_root: str | None = None) -> None:
    """The files and models ``cfg`` reads exist here (a model also as a packaged model or hub id), before any data is
    read or mined: the starting model, the data (``data.path``, or ``data.beir`` with qrels for ``data.split``, under
    ``data_root`` when a name), a teacher, an index or a negatives file."""
    from rerank.models import check_model_path

    check_model_path(cfg.model, "model")  # the config key (or --set model=…)
    if getattr(cfg, "distill_model", None):
        check_model_path(cfg.distill_model, "distill_model")
    data = getattr(cfg, "data", None)
    data_path = getattr(data, "path", None)
    for name, value in (("data.path", data_path), ("index", getattr(cfg, "index", None)),
                        ("negatives_file", getattr(cfg, "negatives_file", None))):
        if isinstance(value, str) and value and not Path(value).expanduser().exists():
            raise ConfigError(f"{name} {value} does not exist")
    beir = getattr(data, "beir", None)
    if isinstance(beir, str) and beir:
        _check_beir(beir, str(getattr(data, "split", "train")), data_root)


def _check_beir(name: str, split: str, data_root: str | None) -> None:
    """``data.beir`` names a BEIR dataset here with qrels for ``split``, as training resolves it (nothing downloaded:
    a registered dataset or an ``irds:`` id that the run fetches is left to the run)."""
    from rerank.data.datasets import is_dataset_name, resolve_dataset
    from rerank.data.irds import PREFIX
    from rerank.data.registry import get_dataset_info
    from rerank.errors import DatasetNotFoundError

    try:
        ds = resolve_dataset(name, data_root, download=False)
    except DatasetNotFoundError as e:
        info = get_dataset_info(name) if is_dataset_name(name) else None
        if name.startswith(PREFIX) or (info is not None and info.url):
            log.info("data.beir %s is not here yet (the run downloads it): its data is not checked", name)
            return
        raise ConfigError(f"data.beir: {e}") from None
    try:
        ds.qrels_path(split)
    except DatasetNotFoundError as e:
        raise ConfigError(f"data.beir: {e}: set data.split to the split to train on") from None


def check_method(cfg: Any) -> None:
    """The pieces of the method a reranker trainer's config names (``head``) resolve: its inference head, its task or
    own SFT function, and the prompt template (the configured one, else the method's default); a piece that does not
    is a one-line error naming the descriptor field, before any data is read. Other trainers' configs have no head."""
    head = getattr(cfg, "head", None)
    if not isinstance(head, str):
        return
    from rerank.methods import get_method
    from rerank.prompts import head_template

    method = get_method(head, kind="reranker")
    for piece in ("head", "task", "sft"):
        if getattr(method, piece) is not None:
            method.resolve(piece)
    template = getattr(cfg, "template", "")
    if template or method.templates:
        head_template(template or method.default_template, head)


def run(args: argparse.Namespace) -> int:
    from rerank.trainers.base import get_trainer, load_train_config

    trainer = get_trainer(args.trainer)
    if args.inputs_later and not args.check:
        raise ConfigError("--inputs-later is an option of --check (training needs its inputs)")
    check_output_dir(args.output)
    if args.config is not None:
        check_input_file(args.config, "--config")
    cfg = load_train_config(trainer.config_class, args.config, args.overrides, trainer=args.trainer)
    check_method(cfg)
    if args.check:
        return _check(args, trainer, cfg)
    check_inputs(cfg, args.data_root)
    if args.config is not None and not args.resume:  # a resume compares what it must itself, without hashing models
        _warn_rerun_changes(Path(args.config), cfg, args.data_root)
    from rerank.trainers.api import run_trainer
    from rerank.trainers.resume import main_process

    with contextlib.redirect_stdout(sys.stderr):  # transformers prints its log dicts: stdout holds the result only
        result = run_trainer(args.trainer, cfg, args.output, args.data_root, args.resume, args.overwrite)
    if not main_process():  # under torchrun every rank returns the same result: rank 0 prints it once
        return 0
    print(json.dumps({"trainer": args.trainer, "output": args.output, **(result or {})}, default=str))
    return 0


def _warn_rerun_changes(path: Path, cfg: Any, data_root: str | None) -> None:
    """A run trained again from its record (``--config OLD/rerank_train.json``) warns, naming each, when a starting
    model or data file it names as the record does has other content (or another package version or hub revision)
    than the record's: the same config would train other weights. Files are hashed once: the new record reuses it."""
    from rerank.config import load_yaml, to_dict
    from rerank.trainers.base import MODEL_KEY, is_run_record, model_record
    from rerank.trainers.resume import data_changes

    record = load_yaml(path)
    if not is_run_record(record):
        return
    changed = []
    for option, was in (record.get(MODEL_KEY) or {}).items():
        value = getattr(cfg, option, None)
        if not isinstance(was, dict) or not value or str(value) != was.get("model"):
            continue
        now = model_record(value)
        if any(now.get(k) != was.get(k) for k in ("fingerprint", "version", "hub_revision") if k in was or k in now):
            changed.append(f"{option} {value}")
    same = [o for o in ("data.path", "data.beir", "dataset", "negatives_file")
            if _value(record["config"], o) == _value(json.loads(json.dumps(to_dict(cfg))), o)]
    changed += [c for c in data_changes(record, cfg, data_root, path) if c.split(" ", 1)[0] in same]
    if changed:
        log.warning("%s: %s changed since that run (its record holds another fingerprint): this run trains from "
                    "other inputs than it did", path, ", ".join(changed))


def _value(config: Any, option: str) -> Any:
    """The value of the dotted ``option`` in a config mapping, or None."""
    for part in option.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _check(args: argparse.Namespace, trainer: Any, cfg: Any) -> int:
    """``--check``: what the run would do with --output, then its inputs when it would train (the trainer's own
    ``check_inputs``: a retriever trainer's data, batch and token limits, GRPO's vLLM); nothing written."""
    from rerank.trainers.resume import check_run, input_paths

    state, line = check_run(Path(args.output), args.trainer, cfg, args.resume, args.overwrite,
                            input_paths(cfg, args.data_root), data_root=args.data_root)
    if state != "done" and not args.inputs_later:
        check_inputs(cfg, args.data_root)
        if callable(getattr(trainer, "check_inputs", None)):  # the trainer's own checks (data, environment)
            trainer.check_inputs(cfg, args.data_root)
    print(line)
    if state != "done":
        print(_plan(args.trainer, cfg))
    print(f"state: {state}")
    return 0


def _plan(trainer: str, cfg: Any) -> str:
    """One line of what ``--check`` resolved and would train: the trainer, the method and its template (the method's
    default when none is set; none for a head without prompts), the starting model, the data, the loss, the length
    (``max_steps`` when set, else ``epochs``), the optimiser's schedule, the seed, the checkpoints and model selection,
    the token limits the method reads, bf16, GRPO's rollouts and LoRA."""
    from rerank.config import to_dict

    config = json.loads(json.dumps(to_dict(cfg), default=str))
    parts = [f"trainer {trainer}"]
    head = config.get("head")
    reads: tuple[str, ...] = ("max_query_tokens", "max_doc_tokens", "max_length")  # a retriever's own limits
    if isinstance(head, str):
        from rerank.methods import get_method

        method = get_method(head)
        reads = method.train_reads
        parts.append(f"method {head}")
        if config.get("template") or method.templates:  # a head without prompts has no template to name
            default = f"{method.default_template} (the method's default)"
            parts.append(f"template {config.get('template') or default}")
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    source = data.get("path") or data.get("beir") or config.get("dataset")
    split = None if data.get("path") else data.get("split") or config.get("split")  # a file is read whole
    parts += [f"model {config.get('model')}", f"data {source}" + (f" (split {split})" if split and source else "")]
    if config.get("loss"):
        parts.append(f"loss {config['loss']}")
    max_steps = config.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:  # -1: unset, the length is epochs
        parts.append(f"max_steps {max_steps}")
    elif config.get("epochs") is not None:
        parts.append(f"epochs {config['epochs']}")
    for key in ("learning_rate", "warmup_ratio", "batch_size", "grad_accum", "num_generations", "seed", "save_steps",
                "save_total_limit"):
        if config.get(key) is not None:
            parts.append(f"{key} {config[key]}")
    if config.get("eval_steps"):
        dev = data.get("dev_fraction", config.get("dev_fraction"))
        parts.append(f"eval_steps {config['eval_steps']} (the best dev checkpoint is kept"
                     + (f", dev_fraction {dev})" if dev is not None else ")"))
    elif "eval_steps" in config:
        parts.append("eval_steps 0 (the last step is kept)")
    for key in ("max_query_tokens", "max_doc_tokens", "max_length"):
        if key in reads and config.get(key) is not None:
            parts.append(f"{key} {config[key]}" if config[key] else f"{key} the model's own")
    if "bf16" in config:
        parts.append(f"bf16 {str(bool(config['bf16'])).lower()}")
    lora = config.get("lora")
    if isinstance(lora, dict):
        parts.append(f"lora r {lora.get('r')}" if lora.get("enabled") else "lora off")
    return "plan: " + ", ".join(parts)
