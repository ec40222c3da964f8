"""Data-parallel worker processes: N copies of a model, each with its own share of the machine.

``rerank eval --workers N`` and ``rerank index --workers N`` start N spawned processes. Each builds its state once (a
reranker, an encoder) with ``torch.set_num_threads(cores // N)`` (and ``OMP_NUM_THREADS`` set to the same, for ONNX
Runtime / OpenVINO, which follow torch's count) or, when CUDA is visible, its own GPU (``CUDA_VISIBLE_DEVICES``: worker
i gets device i, so N may not exceed the GPU count). Work is handed out in chunks that are the same units of
computation as in one process (the same query chunks, the same encoding batches), so the results are identical to
one process's; chunks go to whichever worker is free. An error in a worker (its model fails to load, a chunk raises)
is raised in the parent as the same exception when it can be pickled, a worker that dies is reported, and a worker
whose parent died exits once it is idle.

The rerankers and retrievers the parent registered from user code (``register_reranker`` / ``register_retriever``)
are registered again in each worker by their ``module:Class``, imported when a worker looks the name up; a class the
worker cannot import that way (defined in the ``__main__`` of a script, inside a function, or in a module loaded from
a file, not importable by its name) is a one-line error there, saying to move it into a module or run one process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rerank.errors import ConfigError, RerankError

__all__ = ["WorkerPool", "register_in_worker", "thread_share", "usable_cores", "user_registrations", "worker_devices"]

_STATE: Any = None  # the worker's state (built once by its build function)
#: how often an idle worker checks that its parent is alive: a parent killed without closing the pool (``kill -9``, the
#: OOM killer, a SIGTERM to it alone) would otherwise leave its workers, each holding a model, running for ever
PARENT_POLL_S = 1.0


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_share(workers: int) -> int:
    """Threads per worker: the usable cores divided evenly, at least one."""
    return max(1, usable_cores() // workers)


def worker_devices(workers: int) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each worker: GPU i for worker i when CUDA is visible (more workers than GPUs is
    an error), else None (CPU) for all."""
    import torch

    if not torch.cuda.is_available():
        return [None] * workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [
        str(i) for i in range(torch.cuda.device_count())]
    if workers > len(ids):
        raise ConfigError(f"--workers {workers} needs one GPU per worker, but {len(ids)} are visible")
    return ids[:workers]


def user_registrations() -> list[tuple[str, str, str]]:
    """The (kind, name, ``module:Class``) of every reranker and retriever this process registered from user code."""
    from rerank.heads.registry import RERANKERS
    from rerank.retrieval.base import RETRIEVERS

    return [(registry.kind, name, path) for registry in (RERANKERS, RETRIEVERS)
            for name, path in registry.user_paths().items()]


def _import_in_worker(kind: str, name: str, path: str) -> Any:
    """``path`` imported in a worker; a class the worker cannot reach by its path is a one-line error saying why."""
    from rerank.utils.registry import import_target

    module, _, attr = path.partition(":")
    try:
        return import_target(path, f"{kind} {name!r}")
    except ConfigError:
        if module in ("__main__", "__mp_main__"):
            where = "in the script run as __main__"
        elif "<locals>" in attr:
            where = "inside a function"
        elif not _importable(module):
            where = f"in module {module!r}, loaded from a file or made at run time (not importable by name)"
        else:
            raise
    raise ConfigError(f"{kind} {name!r} ({path}) is defined {where}, which a worker process cannot import: move the "
                      f"class into a module, or use workers=1") from None


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported by its name from ``sys.path``."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def register_in_worker(registrations: Sequence[tuple[str, str, str]]) -> None:
    """Register the parent's :func:`user_registrations` again in this process, each imported when looked up."""
    from functools import partial

    from rerank.heads.registry import RERANKERS
    from rerank.retrieval.base import RETRIEVERS

    registries = {r.kind: r for r in (RERANKERS, RETRIEVERS)}
    for kind, name, path in registrations:
        registries[kind].register(name, path, replace=True, load=partial(_import_in_worker, kind, name, path))


def _worker(index: int, threads: int, device: str | None, build: Callable[..., Any], build_args: tuple,
            tasks: Any, results: Any, registrations: Sequence[tuple[str, str, str]] = ()) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    import torch

    torch.set_num_threads(threads)
    try:
        register_in_worker(registrations)
        state = build(*build_args)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        results.put((index, -1, "error", _picklable(e)))
        return
    results.put((index, -1, "ready", None))
    parent = os.getppid()
    while True:
        try:
            task = tasks.get(timeout=PARENT_POLL_S)
        except queue.Empty:
            if os.getppid() != parent:  # the parent was killed (SIGKILL, a plain SIGTERM): nobody will ask again
                return
            continue
        if task is None:
            return
        i, fn, item = task
        try:
            results.put((index, i, "ok", fn(state, item)))
        except BaseException as e:  # noqa: BLE001
            results.put((index, i, "error", _picklable(e)))


def _picklable(e: BaseException) -> BaseException:
    """``e`` itself when it survives pickling, else a RerankError with its type, message and trace."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return RerankError(f"{type(e).__name__}: {e}\n{''.join(traceback.format_exception(e))}")


class WorkerPool:
    """``workers`` spawned processes, each holding ``build(*build_args)``; :meth:`map` runs ``fn(state, item)`` over
    items in whichever worker is free and returns the results in item order, :meth:`broadcast` runs it once in every
    worker. Use as a context manager (the processes stop at exit). ``build`` and ``fn`` must be module-level
    functions (they are pickled by name)."""

    def __init__(self, workers: int, build: Callable[..., Any], build_args: Sequence[Any] = ()) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        ctx = mp.get_context("spawn")  # a fork of a process that has run torch threads can deadlock
        self.workers = workers
        self.threads = thread_share(workers)
        self._tasks = [ctx.Queue() for _ in range(workers)]
        self._results = ctx.Queue()
        registrations = user_registrations()
        self._procs = [
            ctx.Process(target=_worker, args=(i, self.threads, dev, build, tuple(build_args), self._tasks[i],
                                              self._results, registrations), daemon=True)
            for i, dev in enumerate(worker_devices(workers))
        ]
        for p in self._procs:
            p.start()
        try:
            for _ in range(workers):  # every model loaded (or the first error) before any work is handed out
                self._get()
        except BaseException:
            self.close()
            raise

    def _get(self) -> tuple[int, int, Any]:
        """The next (worker, item index, value); a worker's error is raised here."""
        while True:
            try:
                w, i, status, value = self._results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in self._procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RerankError(f"a worker process died (exit code {dead[0].exitcode})") from None
                continue
            if status == "error":
                raise value
            return w, i, value

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any],
            done: Callable[[int], None] | None = None) -> list[Any]:
        """``[fn(state, item) for item in items]``, computed by the workers; ``done(i)`` is called as item i comes
        back (progress bars)."""
        todo = list(enumerate(items))
        out: list[Any] = [None] * len(todo)
        waiting = len(todo)
        todo.reverse()
        for w in range(self.workers):  # one item each: the next goes to whichever finishes first, so no item waits
            if todo:                   # behind another in a busy worker's queue while a worker stands idle
                i, item = todo.pop()
                self._tasks[w].put((i, fn, item))
        while waiting:
            w, i, value = self._get()
            out[i] = value
            waiting -= 1
            if done is not None:
                done(i)
            if todo:
                i_next, item = todo.pop()
                self._tasks[w].put((i_next, fn, item))
        return out

    def broadcast(self, fn: Callable[[Any, Any], Any], item: Any) -> list[Any]:
        """``fn(state, item)`` in every worker (e.g. preparing each copy of a model alike); results by worker."""
        for w in range(self.workers):
            self._tasks[w].put((w, fn, item))
        out: list[Any] = [None] * self.workers
        for _ in range(self.workers):
            w, _, value = self._get()
            out[w] = value
        return out

    def close(self) -> None:
        """Stop the workers (each finishes its current chunk)."""
        for p, tasks in zip(self._procs, self._tasks, strict=True):
            if p.is_alive():
                tasks.put(None)
        for p in self._procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
