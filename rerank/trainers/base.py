"""What every ``rerank train TRAINER`` shares: strict configs with ``--set`` overrides, a registry of trainers by
name, and the run record (config, git hash, versions, the starting model's fingerprint, the device and threads) saved
next to the model, which ``--config`` also takes to train the same run again.

A trainer is a class with a ``config_class`` (a dataclass with a required ``model`` field: the starting model) and
a ``train(config, ctx)`` method. The registered names are the shared reranker trainers ``sft`` and ``grpo`` plus
every method of :mod:`rerank.methods` that has its own trainer (the retrievers), under the method's name: built-in
names, registered on first use, which :func:`register_trainer` refuses to give another class.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol

from rerank.config import REDACTED, apply_overrides, from_dict, load_yaml, redact_argv, to_dict
from rerank.errors import ConfigError
from rerank.methods import all_methods
from rerank.utils.files import path_stamp, write_json
from rerank.utils.registry import Registry

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_KEY",
    "TrainContext",
    "Trainer",
    "available_trainers",
    "build_train_config",
    "check_foreign_keys",
    "get_trainer",
    "git_hash",
    "is_run_record",
    "load_train_config",
    "machine_record",
    "model_record",
    "register_trainer",
    "save_run_record",
]


@dataclass
class TrainContext:
    """Where a run writes, where datasets are found, and whether to resume from the last checkpoint."""

    output: Path
    data_root: str | None = None
    resume: bool = False


class Trainer(Protocol):
    config_class: ClassVar[type]

    def train(self, config: Any, ctx: TrainContext) -> dict[str, Any]: ...


def _builtins(registry: Registry[type]) -> None:
    """The shared reranker trainers, then every method's own trainer under the method's name (built-in names: a
    method cannot take ``sft`` or ``grpo``, :data:`rerank.methods.RESERVED_NAMES`)."""
    registry.register("sft", "rerank.trainers.sft_trainer:SFTTrainer", builtin=True)
    registry.register("grpo", "rerank.trainers.grpo_trainer:GRPOTrainer", builtin=True)
    for method in all_methods().values():
        if method.trainer is not None:
            registry.register(method.name, method.trainer, builtin=True, load=partial(method.resolve, "trainer"))


TRAINERS: Registry[type] = Registry("trainer", fill=_builtins)


def register_trainer(name: str, target: str | type) -> None:
    """Register ``name`` -> ``"module:Class"`` (or a class); a built-in name (``sft``, ``grpo``, a method's) is
    refused unless it is the same class, another name is replaced."""
    TRAINERS.register(name, target)


def available_trainers() -> list[str]:
    """Registered trainer names, sorted."""
    return TRAINERS.names()


def get_trainer(name: str) -> Trainer:
    """The registered trainer ``name`` (an instance); unknown names raise listing the known ones."""
    return TRAINERS.get(name)()


def build_train_config(config_class: type, raw: dict[str, Any], where: str = "config") -> Any:
    """A mapping -> the trainer's typed config; unknown keys raise naming the key (a former key name names its
    replacement), and the starting model is required."""
    from rerank.trainers.common import check_renamed_keys

    check_renamed_keys(config_class, raw, where)
    check_foreign_keys(config_class, raw, where)
    cfg = from_dict(config_class, raw, where=where)
    if not getattr(cfg, "model", None):
        raise ConfigError(f"{where}: the starting model is required (key 'model', or --set model=PATH)")
    return cfg


def load_train_config(config_class: type, path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                      trainer: str | None = None) -> Any:
    """YAML file + ``key=value`` overrides -> the trainer's typed config (see :func:`build_train_config`). The file
    may be a run record (``OUTPUT/rerank_train.json``): its ``config`` is read, for the ``trainer`` it records
    (:func:`_record_config`)."""
    raw = load_yaml(path) if path else {}
    where = str(path) if path else "config"
    record = bool(path) and is_run_record(raw)
    if record:
        raw = _record_config(raw, path, config_class, trainer)  # type: ignore[arg-type]
        where = f"{path} (its config)"
    raw = apply_overrides(raw, list(overrides))
    if record:
        _refuse_redacted(raw, where)
    return build_train_config(config_class, raw, where)


#: transformers' and TRL's names for training options -> (rerank's keys for it, the first the config takes is
#: suggested; what rerank does instead, when the config takes none of them or it has no such option)
HF_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "num_train_epochs": (("epochs",), ""),
    "per_device_train_batch_size": (("batch_size",), "per device, as in transformers"),
    "train_batch_size": (("batch_size",), "per device"),
    "gradient_accumulation_steps": (("grad_accum",), ""),
    "max_seq_length": (("max_length", "max_doc_tokens"), "the token limit of the model's input"),
    "max_prompt_length": (("max_length",), "the token limit of prompt and target"),
    "fp16": (("bf16",), "rerank trains in float32, or bfloat16 with bf16: true; it has no float16 mixed precision"),
    "lr_scheduler_type": ((), "the learning rate always decays linearly to 0 after a linear warmup of warmup_ratio "
                              "of the steps; the schedule is not an option"),
    "optim": ((), "the optimiser is always AdamW (weight_decay, max_grad_norm); it is not an option"),
    **{key: ((), "the optimiser is AdamW with transformers' default betas and epsilon (0.9, 0.999, 1e-8); they are "
                 "not options") for key in ("adam_beta1", "adam_beta2", "adam_epsilon")},
    "per_device_eval_batch_size": (("batch_size",), "the dev split is evaluated in batches of batch_size too"),
    "save_strategy": (("save_steps",), "checkpoints are saved every save_steps steps"),
    "eval_strategy": (("eval_steps",), "the dev split is evaluated every eval_steps steps (0: never)"),
    "evaluation_strategy": (("eval_steps",), "the dev split is evaluated every eval_steps steps (0: never)"),
    "logging_strategy": (("logging_steps",), "the loss is logged every logging_steps steps"),
    "load_best_model_at_end": (("eval_steps",), "eval_steps > 0 (equal to save_steps) keeps the best dev checkpoint"),
    "output_dir": ((), "the run folder is rerank train's --output"),
    "resume_from_checkpoint": ((), "continue a run with rerank train --resume (from its newest complete checkpoint)"),
    "model_name_or_path": (("model",), "the starting model"),
}


def check_foreign_keys(config_class: type, raw: Any, where: str) -> None:
    """An unknown top-level key that is transformers' or TRL's name for an option (:data:`HF_KEYS`) or an option of
    another registered trainer (GRPO's ``beta`` given to ``sft``) is a one-line error naming rerank's key for it, or
    saying what rerank does instead, and the ``--set`` override or file that gave it."""
    import dataclasses

    from rerank.config import override_source

    if not isinstance(raw, dict):
        return
    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    for key in raw:
        if key in fields:
            continue
        unknown = f"{override_source(raw, key) or where}: unknown key {key!r} for {config_class.__name__}"
        if key in HF_KEYS:
            uses, why = HF_KEYS[key]
            use = next((u for u in uses if u in fields), None)
            if use is not None:
                raise ConfigError(f"{unknown}: did you mean {use!r}? (rerank's name for transformers' {key}"
                                  f"{': ' + why if why else ''})")
            raise ConfigError(f"{unknown} (transformers' {key}): {why or 'rerank has no such option'}")
        owners = _trainers_with_option(key, config_class)
        if owners:
            raise ConfigError(f"{unknown}: {key} is an option of rerank train {' and '.join(owners)}, not of this "
                              f"trainer")


def _trainers_with_option(key: str, config_class: type) -> list[str]:
    """The registered trainers, other than those configured by ``config_class``, whose config takes ``key``."""
    import dataclasses

    owners = []
    for name in TRAINERS.names():
        try:
            other = TRAINERS.get(name).config_class
        except (ConfigError, ImportError, AttributeError):  # a plugin trainer that does not load names nothing here
            continue
        if other is not config_class and dataclasses.is_dataclass(other) and \
                key in {f.name for f in dataclasses.fields(other) if f.init}:
            owners.append(name)
    return owners


def is_run_record(raw: Any) -> bool:
    """Whether a mapping read from a file is a run record (``rerank_train.json``: a ``trainer`` name and a
    ``config`` mapping), not a trainer's config."""
    return isinstance(raw, dict) and isinstance(raw.get("trainer"), str) and isinstance(raw.get("config"), dict)


def _record_config(record: dict[str, Any], path: str | Path, config_class: type, trainer: str | None) -> dict[str, Any]:
    """The ``config`` of the run record at ``path``, with keys recorded under a former name under their current one.
    The record's trainer must be ``trainer`` (one line naming the command that reruns it otherwise); without a name
    (the Python API), the record's trainer must take ``config_class``."""
    from rerank.trainers.resume import _current_names

    recorded = record["trainer"]
    if trainer is not None and recorded != trainer:
        raise ConfigError(f"--config {path} is the record of a {recorded!r} run, not {trainer!r}: rerun it with "
                          f"`rerank train {recorded} --config {path} --output NEW`")
    if trainer is None and (recorded not in TRAINERS.names()
                            or TRAINERS.get(recorded).config_class is not config_class):
        raise ConfigError(f"{path} is the record of a {recorded!r} run, which a {config_class.__name__} does not "
                          f"configure: rerun it with `rerank train {recorded} --config {path} --output NEW`")
    config = dict(_current_names(record["config"], config_class))
    resumes = [r for r in record.get("resumed") or [] if isinstance(r, dict)]
    for entry in resumes:  # a resume may have lengthened the run: the rerun trains as long as it finally did
        length = entry.get(RESUMED_LENGTH_KEY)
        if isinstance(length, dict):
            config.update({k: v for k, v in length.items() if k in RESUMABLE_LENGTH and k in config})
    if any(not isinstance(r.get(RESUMED_LENGTH_KEY), dict) for r in resumes):
        log.warning("%s: the run was resumed by a rerank that did not record the length it resumed to; if a resume "
                    "raised max_steps or epochs, give them with --set", path)
    return config


#: the options a resume may raise (a longer run), recorded with each resume under :data:`RESUMED_LENGTH_KEY`
RESUMABLE_LENGTH = ("max_steps", "epochs")
RESUMED_LENGTH_KEY = "length"


def _refuse_redacted(raw: Any, where: str, key: str = "") -> None:
    """A value a run record wrote as ``<redacted>`` (a secret, a URL's password) and no ``--set`` replaced cannot be
    trained with: one line naming the key and the ``--set`` that gives it."""
    if isinstance(raw, dict):
        for k, v in raw.items():
            _refuse_redacted(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(raw, list):
        for v in raw:
            _refuse_redacted(v, where, key)
    elif isinstance(raw, str) and REDACTED in raw:
        raise ConfigError(f"{where}: {key} holds a secret the record does not keep ({REDACTED}): give it with "
                          f"--set {key}=VALUE")


def git_hash() -> str | None:
    """The commit of the rerank checkout (plus '-dirty' when a tracked file differs from it), or None when rerank
    does not run from its own checkout (an installed copy inside another project's repository is not that project's
    commit)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], check=False, cwd=root, capture_output=True, text=True, timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root or not (root / "pyproject.toml").is_file():
            return None
        h = git("rev-parse", "HEAD")
        if h.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return h.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


#: the ``rerank_train.json`` key holding what a run records of the models it starts from (:func:`model_record`), by
#: option: ``model``, and ``distill_model`` where one is set
MODEL_KEY = "model_inputs"


def _package_of(path: Path) -> tuple[str, str] | None:
    """(distribution, version) of the installed package whose files hold ``path``, or None."""
    import importlib.metadata

    roots = {Path(p).resolve() for p in sys.path if p}
    resolved = path.resolve()
    for parent in resolved.parents:
        if parent.parent in roots:
            for dist in importlib.metadata.packages_distributions().get(parent.name, []):
                return dist, importlib.metadata.version(dist)
            return None
    return None


def model_record(model: str | Path) -> dict[str, Any]:
    """What a run record holds of a model it starts from: a packaged model its name, package and version; a local
    folder or file the sha256 of each file (:func:`~rerank.utils.files.path_stamp`: each file read once per process
    and change) and one ``fingerprint`` over them; a hub id its name and, where the local hub cache holds it, the
    revision (commit) of its snapshot there."""
    from rerank.models import PACKAGED_MODELS, packaged_model_path

    name = str(model)
    if name in PACKAGED_MODELS:
        package = _package_of(packaged_model_path(name))
        if package is not None:
            return {"model": name, "package": package[0], "version": package[1]}
    path = packaged_model_path(name) if name in PACKAGED_MODELS else Path(name).expanduser()
    if path.exists():
        files = {rel: f"sha256:{digest}" for rel, digest in path_stamp(path, hash_limit=None)}
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        return {"model": name, "path": str(path.resolve()), "fingerprint": f"sha256:{digest}", "files": files}
    from rerank.backends.cache import hub_snapshot

    snapshot = hub_snapshot(name)
    return {"model": name, "hub_revision": snapshot.name if snapshot is not None else None}


def _models(config: Any) -> dict[str, Any]:
    """:func:`model_record` of the starting model and a teacher (``distill_model``), by option."""
    return {option: model_record(value) for option in ("model", "distill_model")
            if (value := getattr(config, option, None))}


def machine_record(config: Any) -> dict[str, Any]:
    """Where a run of ``config`` trains: the device (``cpu``, ``cuda`` with the visible GPUs' names, or ``mps``), as
    its ``use_cpu`` (unset: a GPU when one is visible) chooses, the number of processes (``WORLD_SIZE`` under
    torchrun), and torch's intra-op threads with the ``OMP_NUM_THREADS`` that set them."""
    import torch

    use_cpu = getattr(config, "use_cpu", None)
    device: dict[str, Any] = {"type": "cpu"}
    if not use_cpu and torch.cuda.is_available():
        device = {"type": "cuda", "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    elif not use_cpu and torch.backends.mps.is_available():
        device = {"type": "mps"}
    device["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return {"device": device,
            "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}


def save_run_record(output: str | Path, trainer: str, config: Any, extra: dict[str, Any] | None = None,
                    previous: dict[str, Any] | None = None) -> Path:
    """Write ``rerank_train.json`` (trainer, config, git hash, versions, the starting models' fingerprints under
    :data:`MODEL_KEY`, the device and threads) into ``output``; a resumed run keeps the ``previous`` record and adds
    its own command, versions, device and threads under ``resumed``."""
    import torch
    import transformers

    from rerank import __version__

    path = Path(output) / "rerank_train.json"
    if previous is not None:
        resumed = {"command": redact_argv(sys.argv), "git_hash": git_hash(), "rerank_version": __version__,
                   "torch": torch.__version__, "transformers": transformers.__version__, **machine_record(config),
                   RESUMED_LENGTH_KEY: {k: getattr(config, k) for k in RESUMABLE_LENGTH if hasattr(config, k)}}
        write_json({**previous, "resumed": [*previous.get("resumed", []), resumed]}, path)
        return path
    record = {
        "trainer": trainer,
        "config": to_dict(config),
        "git_hash": git_hash(),
        "rerank_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **machine_record(config),
        "command": redact_argv(sys.argv),
        MODEL_KEY: _models(config),
        **(extra or {}),
    }
    write_json(record, path)
    return path
