"""The Python entry points ``rerank.trainers.sft(...)`` / ``grpo(...)``: the same path as ``rerank train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rerank.trainers.base import TrainContext, build_train_config, get_trainer, load_train_config, save_run_record

__all__ = ["run_trainer"]


def run_trainer(name: str, config: Any, output: str | Path, data_root: str | None = None,
                resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train with the registered trainer ``name``; ``config`` is its config object, a dict or a YAML path.

    An ``output`` holding a trained model or checkpoints is continued (``resume``: with the config it was started
    with, :func:`~rerank.trainers.resume.check_same_run`), replaced (``overwrite``) or refused, before anything is
    written (:func:`rerank.trainers.resume.prepare_output`).
    """
    from rerank.trainers.resume import _main_process, check_same_run, prepare_output

    trainer = get_trainer(name)
    if isinstance(config, (str, Path)):
        cfg = load_train_config(trainer.config_class, config)
    elif isinstance(config, dict):
        cfg = build_train_config(trainer.config_class, config, where=f"{name} config")
    else:
        cfg = config
    out = Path(output)
    prepare_output(out, resume, overwrite)
    previous = check_same_run(out, name, cfg) if resume else None
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    main = _main_process()  # every process of a torchrun run checks; one writes
    record = save_run_record(out, name, cfg, previous=previous) if main else out / "rerank_train.json"
    try:
        return trainer.train(cfg, TrainContext(output=out, data_root=data_root, resume=resume))
    except BaseException:
        if main and previous is None and not any((out / n).exists() for n in ("checkpoints", "model", "adapter")):
            record.unlink(missing_ok=True)  # a run that failed before its first checkpoint leaves no record behind
            if created and not any(out.iterdir()):
                out.rmdir()
        raise
