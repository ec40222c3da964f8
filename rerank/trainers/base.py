"""What every ``rerank train TRAINER`` shares: strict configs with ``--set`` overrides, a registry of trainers by
name, and the run record (config, git hash, versions) saved next to the model.

A trainer is a class with a ``config_class`` (a dataclass with a required ``model`` field: the starting model) and
a ``train(config, ctx)`` method. The registered names are the shared reranker trainers ``sft`` and ``grpo`` plus
every method of :mod:`rerank.methods` that has its own trainer (the retrievers), under the method's name: built-in
names, registered on first use, which :func:`register_trainer` refuses to give another class.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol

from rerank.config import apply_overrides, from_dict, load_yaml, to_dict
from rerank.errors import ConfigError
from rerank.methods import all_methods
from rerank.utils.files import write_json
from rerank.utils.registry import Registry

__all__ = [
    "TrainContext",
    "Trainer",
    "available_trainers",
    "build_train_config",
    "get_trainer",
    "git_hash",
    "load_train_config",
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
    cfg = from_dict(config_class, raw, where=where)
    if not getattr(cfg, "model", None):
        raise ConfigError(f"{where}: the starting model is required (key 'model', or --set model=PATH)")
    return cfg


def load_train_config(config_class: type, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """YAML file + ``key=value`` overrides -> the trainer's typed config (see :func:`build_train_config`)."""
    raw = load_yaml(path) if path else {}
    raw = apply_overrides(raw, list(overrides))
    return build_train_config(config_class, raw, str(path) if path else "config")


def git_hash() -> str | None:
    """The commit of the rerank checkout (plus '-dirty'), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        h = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=root, capture_output=True, text=True, timeout=10)
        if h.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], check=False, cwd=root, capture_output=True, text=True, timeout=10)
        return h.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def save_run_record(output: str | Path, trainer: str, config: Any, extra: dict[str, Any] | None = None,
                    previous: dict[str, Any] | None = None) -> Path:
    """Write ``rerank_train.json`` (trainer, config, git hash, versions) into ``output``; a resumed run keeps the
    ``previous`` record and adds its own command and versions under ``resumed``."""
    import torch
    import transformers

    from rerank import __version__

    path = Path(output) / "rerank_train.json"
    if previous is not None:
        resumed = {"command": sys.argv, "git_hash": git_hash(), "rerank_version": __version__,
                   "torch": torch.__version__, "transformers": transformers.__version__}
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
        "command": sys.argv,
        **(extra or {}),
    }
    write_json(record, path)
    return path
