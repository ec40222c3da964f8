"""The Python entry points ``rerank.trainers.sft(...)`` / ``grpo(...)``: the same path as ``rerank train``."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Iterator, Mapping
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


def _typed_config(name: str, config_class: type, config: Any) -> Any:
    """``config`` (a YAML path, a mapping or a config object) as a new, checked ``config_class``: an object goes through
    the same checks as a mapping (its fields read as one: types, the required model), so a field set after it was
    built, or a config of another trainer, fails here and not deep in training; the caller's object is not changed."""
    where = f"{name} config"
    if isinstance(config, (str, os.PathLike)):
        return load_train_config(config_class, config)  # type: ignore[arg-type]
    if isinstance(config, Mapping):
        return build_train_config(config_class, dict(config), where=where)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"{name}: config must be a {config_class.__name__}, a dict or a YAML path, got "
                        f"{type(config).__name__}")
    if not isinstance(config, config_class):
        raise TypeError(f"{name}: config is a {type(config).__name__}, but trainer {name} takes a "
                        f"{config_class.__name__} (or a dict or YAML path)")
    raw = {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}
    return build_train_config(config_class, raw, where=where)


def _plain(value: Any) -> Any:
    """A config field's value as :func:`~rerank.config.from_dict` reads it: nested configs as dicts (secrets kept,
    unlike :func:`~rerank.config.to_dict`), containers copied, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, os.PathLike) else value


def run_trainer(name: str, config: Any, output: str | Path, data_root: str | None = None,
                resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train with the registered trainer ``name``; ``config`` is its config object, a dict or a YAML path, checked
    the same way whichever it is (an object is read anew, so the caller's is never changed).

    An ``output`` holding a trained model or checkpoints is continued (``resume``: with the config it was started
    with, :func:`~rerank.trainers.resume.check_same_run`), replaced (``overwrite``) or refused, before anything is
    written (:func:`rerank.trainers.resume.prepare_output`). A run that fails or is stopped (Ctrl-C, SIGTERM) before
    its first checkpoint removes its run record (and an empty ``checkpoints/``), so the folder takes a plain run again.
    The record holds the prompt template the run trains on, whatever gives it, in full and as a versioned sha256
    (:func:`~rerank.trainers.resume.template_record`; a resume refused for another template writes the run's own to
    ``OUTPUT/template-at-start.yaml``), and the sha256 of each data file it trains on
    (:func:`~rerank.trainers.resume.data_record`), which ``--resume`` and ``--check`` compare.
    """
    from rerank.trainers.resume import (
        _checkpoints,
        check_same_run,
        data_record,
        input_paths,
        main_process,
        prepare_output,
        template_record,
    )

    trainer = get_trainer(name)
    cfg = _typed_config(name, trainer.config_class, config)
    out = Path(output)
    prepare_output(out, resume, overwrite, input_paths(cfg, data_root))
    previous = check_same_run(out, name, cfg, data_root, write_template=True) if resume else None
    main = main_process()  # every process of a torchrun run checks; one writes
    extra = template_record(cfg) if previous is None else None  # a resumed run keeps its first record
    if extra is not None and main:
        extra.update(data_record(cfg, data_root))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    record = save_run_record(out, name, cfg, extra, previous) if main else out / "rerank_train.json"
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
