"""What every ``rerank train TRAINER`` shares: strict configs with ``--set`` overrides, a registry of trainers by
name, and the run record (config, git hash, versions) saved next to the model.

A trainer is a class with a ``config_class`` (a dataclass with a required ``model`` field: the starting model) and
a ``train(config, ctx)`` method; it is registered by explicit name in the built-in block below.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from rerank.config import apply_overrides, from_dict, load_yaml, to_dict
from rerank.errors import ConfigError
from rerank.utils.files import write_json
from rerank.utils.registry import Registry

__all__ = [
    "TrainContext",
    "Trainer",
    "available_trainers",
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


TRAINERS: Registry[type] = Registry("trainer")


def register_trainer(name: str, target: str | type) -> None:
    TRAINERS.register(name, target)


def available_trainers() -> list[str]:
    return TRAINERS.names()


def get_trainer(name: str) -> Trainer:
    """The registered trainer ``name`` (an instance); unknown names raise listing the known ones."""
    return TRAINERS.get(name)()


def load_train_config(config_class: type, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """YAML file + ``key=value`` overrides -> the trainer's typed config; unknown keys raise naming the key."""
    raw = load_yaml(path) if path else {}
    raw = apply_overrides(raw, list(overrides))
    cfg = from_dict(config_class, raw, where=str(path) if path else "config")
    if not getattr(cfg, "model", None):
        raise ConfigError(f"{path or 'config'}: the starting model is required (key 'model', or --set model=PATH)")
    return cfg


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


def save_run_record(output: str | Path, trainer: str, config: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write ``rerank_train.json`` (trainer, config, git hash, versions) into ``output``."""
    import torch
    import transformers

    from rerank import __version__

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
    path = Path(output) / "rerank_train.json"
    write_json(record, path)
    return path


# built-in trainers
register_trainer("sft", "rerank.trainers.sft_trainer:SFTTrainer")
register_trainer("grpo", "rerank.trainers.grpo_trainer:GRPOTrainer")
register_trainer("contrastive", "rerank.trainers.contrastive:ContrastiveTrainer")
register_trainer("star", "rerank.trainers.star:StarTrainer")
register_trainer("adore", "rerank.trainers.adore:AdoreTrainer")
register_trainer("pgrank", "rerank.trainers.pgrank:PGRankTrainer")
