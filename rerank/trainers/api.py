"""The Python entry points ``rerank.trainers.sft(...)`` / ``grpo(...)``: the same path as ``rerank train``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rerank.trainers.base import TrainContext, build_train_config, get_trainer, load_train_config, save_run_record

__all__ = ["run_trainer"]


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's or torchrun's stop) raises ``SystemExit(143)`` in the main thread while the run
    trains, so a stopped run cleans up as an interrupted one does; a handler someone else installed is left alone."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_trainer(name: str, config: Any, output: str | Path, data_root: str | None = None,
                resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train with the registered trainer ``name``; ``config`` is its config object, a dict or a YAML path.

    An ``output`` holding a trained model or checkpoints is continued (``resume``: with the config it was started
    with, :func:`~rerank.trainers.resume.check_same_run`), replaced (``overwrite``) or refused, before anything is
    written (:func:`rerank.trainers.resume.prepare_output`). A run that fails or is stopped (Ctrl-C, SIGTERM) before
    its first checkpoint removes its run record (and an empty ``checkpoints/``), so the folder takes a plain run again.
    """
    from rerank.trainers.resume import _checkpoints, check_same_run, input_paths, main_process, prepare_output

    trainer = get_trainer(name)
    if isinstance(config, (str, Path)):
        cfg = load_train_config(trainer.config_class, config)
    elif isinstance(config, dict):
        cfg = build_train_config(trainer.config_class, config, where=f"{name} config")
    else:
        cfg = config
    out = Path(output)
    prepare_output(out, resume, overwrite, input_paths(cfg, data_root))
    previous = check_same_run(out, name, cfg) if resume else None
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    main = main_process()  # every process of a torchrun run checks; one writes
    record = save_run_record(out, name, cfg, previous=previous) if main else out / "rerank_train.json"
    try:
        with _sigterm_exits():
            return trainer.train(cfg, TrainContext(output=out, data_root=data_root, resume=resume))
    except BaseException:
        trained = _checkpoints(out) or any((out / n).is_dir() for n in ("model", "adapter"))
        if main and previous is None and not trained:
            record.unlink(missing_ok=True)  # a run that failed before its first checkpoint leaves no record behind
            ckpts = out / "checkpoints"
            if ckpts.is_dir() and not any(ckpts.iterdir()):
                ckpts.rmdir()  # the trainer's output folder, made before any checkpoint was written
            if created and not any(out.iterdir()):
                out.rmdir()
        raise
