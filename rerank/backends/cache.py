"""A persistent cache of LLM calls, and a log of every prompt and raw response.

:class:`CachingBackend` wraps any backend: each prompt's answer (the requested log-probabilities, or a greedy
generation) is stored in SQLite (``<cache_root>/llm-calls.sqlite``) under a key of the model's fingerprint (the SHA-256
of its weight, config and tokenizer files: a local folder's or GGUF file's, or for a hub id the snapshot of its
``main`` revision in huggingface_hub's local cache, so a new revision misses; a hub id not in that cache, and a served
model, are keyed by name, the served one also by its address), the backend's options, the prompt's token ids and the
request (token ids, or the decoding options). Of what the backend resolved (``resolved_*``), the dtype and the device
type are in the key (``dtype: auto`` is bfloat16 on a GPU, float32 on a CPU: their answers differ), the rest (threads,
context sizes) are not; options that only carry a request and cannot change an answer (the openai backend's
``timeout``, ``max_retries``, ``concurrency``, ``batch_size``, whether an API key is set: a backend's
``cache_ignored_options``) are left out, so tuning them keeps the cache. Sampled generations (temperature > 0) are never
cached. Only misses reach the model, so a re-run of a cached evaluation makes no model calls (``calls`` counts the
wrapped backend's). A generation its head failed to parse (``parse`` outcome ``failed``: an empty answer, one cut off
inside its reasoning, a refusal) is taken out of the cache once the head says so, so the next run asks the model
again instead of repeating a transient failure for ever (a model that always fails is asked again each run); answers
that parsed, repaired or clean, are kept, and so is an answer another run stored under the same key meanwhile (only
the value this run read or stored is removed).

The file is opened when the backend is built: a damaged file, or a folder in its place, is one error naming it
(delete it, or ``--no-llm-cache``, which leaves it unopened). A file this user may not write (another group member's,
made with umask 022) is read: its answers are used and new ones are not stored, with one warning naming the file
(``chmod g+w`` by its owner fixes it); a write that fails later (a full disk) warns once and stores no more. A new file
in a group-writable folder is made group-writable, so the group's members can add to it.

``log_path`` (its folder is made, as ``--output`` folders are) appends one JSON line per prompt: the decoded prompt, the raw response, and whether it came from the
cache; a generation's line also says how the head parsed it (``parse``: ``{"outcome": "clean" | "repaired" | "failed",
"fixes": [...]}``, what had to be repaired; null when no head parsed it). Generation lines are written once their parse
is known, in the order they were generated.

``rerank eval`` wraps the LLM heads' backends by default (``--no-llm-cache`` turns it off, ``--log-llm-io
FILE.jsonl`` writes the log); ``rerank leaderboard`` (its cells are cached whole, and timed), ``serve`` and the Python
API do not unless :func:`llm_cache_scope` asks. Only the LLM heads' calls pass here (:func:`uses_llm_backend`): a
cross-encoder, bi-encoder, ColBERT, monoT5/duoT5 or remote reranker runs its own model or a server, so those options
are refused with it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rerank.backends.base import Backend, GenerationConfig
from rerank.errors import ConfigError

__all__ = ["CachingBackend", "cache_key_options", "hub_snapshot", "llm_cache_scope", "maybe_cached", "model_fingerprint",
           "uses_llm_backend"]

log = logging.getLogger(__name__)
_SCOPE: contextvars.ContextVar[tuple[bool, str | None] | None] = contextvars.ContextVar("llm_cache", default=None)
_WEIGHTS = ("*.safetensors", "*.gguf", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json")


@contextlib.contextmanager
def llm_cache_scope(enabled: bool = True, log_path: str | None = None) -> Iterator[None]:
    """LLM heads built inside the ``with`` block get a cached (and, with ``log_path``, logged) backend."""
    token = _SCOPE.set((enabled, log_path))
    try:
        yield
    finally:
        _SCOPE.reset(token)


_FIX = "delete it (only cached LLM answers are lost) or run with --no-llm-cache"
_WARNED: set[str] = set()  # caches already warned about in this process (read-only, a failed write)


def _db(path: Path) -> tuple[sqlite3.Connection, str | None]:
    """Open the answer cache at ``path``: the connection and, when this process may not write to it, why. A new file
    under a group-writable folder is made group-writable. A folder in its place, a damaged file, or one that cannot
    be opened raises :class:`ConfigError` naming it and the fixes."""
    if path.is_dir():
        raise ConfigError(f"the LLM answer cache {path} is a folder, not a SQLite file: remove it, or run with "
                          "--no-llm-cache")
    created = not path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(path), check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise ConfigError(f"cannot create the LLM answer cache {path} ({e}): fix the permissions of {path.parent}, "
                          "or run with --no-llm-cache") from e
    stage = "open"
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header: a non-database fails here
        stage = "write"
        con.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, stamp TEXT NOT NULL, "
                    "sha256 TEXT NOT NULL)")
    except sqlite3.OperationalError as e:  # cannot read it, or (a file without the tables) write it
        con.close()
        raise ConfigError(f"cannot {stage} the LLM answer cache {path} ({e}): fix its permissions "
                          f"(its owner: chmod g+w {path}), {_FIX}") from e
    except sqlite3.DatabaseError as e:
        con.close()
        raise ConfigError(f"the LLM answer cache {path} is damaged ({e}): {_FIX}") from e
    if created:
        _share_with_group(path)
    return con, _write_problem(con)


def _share_with_group(path: Path) -> None:
    """Make the new file ``path`` group-writable when its folder is (a cache shared by a group, where members' umask
    022 would leave it writable by its creator only). Best-effort."""
    try:
        if path.parent.stat().st_mode & stat.S_IWGRP:
            os.chmod(path, stat.S_IMODE(path.stat().st_mode) | stat.S_IWGRP)
    except OSError:
        pass  # another user's file (created at the same moment): theirs to share


def _write_problem(con: sqlite3.Connection) -> str | None:
    """Why this connection cannot write to its database (a read-only file, or a folder where no journal can be
    made), found by a write that is rolled back; None when it can (or another process holds the write lock)."""
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("INSERT OR REPLACE INTO files VALUES ('', '', '')")
        finally:
            con.rollback()
    except sqlite3.OperationalError as e:
        name = getattr(e, "sqlite_errorname", "")  # Python >= 3.11
        busy = name in ("SQLITE_BUSY", "SQLITE_LOCKED") or (not name and "locked" in str(e))
        return None if busy else str(e)
    return None


def _warn_once(path: Path, message: str) -> None:
    if str(path) not in _WARNED:
        _WARNED.add(str(path))
        log.warning(message)


def hub_snapshot(model: str) -> Path | None:
    """The folder of hub id ``model``'s ``main`` revision in huggingface_hub's local cache (read offline, no request),
    or None when that revision is not there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except (ImportError, ValueError, OSError):  # no huggingface_hub, a name that cannot be a repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_fingerprint(model: str, con: sqlite3.Connection | None = None, served: bool = False) -> str:
    """SHA-256 over a local model's weight, config and tokenizer files (each file's hash remembered by path, size
    and mtime; a GGUF model's own file, never its de-quantised copy; a hub id's snapshot in the local hub cache); a
    ``served`` model, or a name found nowhere locally, is its own fingerprint."""
    from rerank.models import local_model_path

    if served:
        return f"name:{model}"
    try:
        p = local_model_path(model)
    except ConfigError:  # a served model's name, not a local model (offline, a hub id is checked against the cache)
        p = None
    if p is None:
        p = hub_snapshot(model)
    if p is None or not p.exists():
        return f"name:{model}"
    files = [p] if p.is_file() else sorted({f for pat in _WEIGHTS for f in p.glob(pat)})
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        row = con.execute("SELECT stamp, sha256 FROM files WHERE path = ?", (str(f.resolve()),)).fetchone() if con \
            else None
        if row is not None and row[0] == stamp:
            digest = row[1]
        else:
            fh = hashlib.sha256()
            with open(f, "rb") as fp:
                for chunk in iter(lambda: fp.read(1 << 20), b""):
                    fh.update(chunk)
            digest = fh.hexdigest()
            if con is not None:
                with contextlib.suppress(sqlite3.OperationalError), con:  # a memo: a read-only cache goes without
                    con.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (str(f.resolve()), stamp, digest))
        h.update(f"{f.name}:{digest}\n".encode())
    return h.hexdigest()


def _open_log(log_path: str) -> Any:
    """The LLM-call log ``log_path`` opened for appending, its folder made first (as ``--output`` folders are); one
    that cannot be made or opened is a :class:`ConfigError` naming it."""
    path = Path(log_path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in CachingBackend.close()
    except OSError as e:
        raise ConfigError(f"cannot write the LLM-call log {log_path}: {e.strerror or e}") from e


class CachingBackend(Backend):
    """``inner`` with a persistent per-prompt answer cache and an optional JSONL log of every prompt and response."""

    def __init__(self, inner: Backend, model: str, path: str | Path, log_path: str | None = None,
                 use_cache: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.calls = inner.calls  # the model's own calls: a cached re-run leaves them at zero
        self.use_cache = use_cache
        self.log_path = log_path
        self.hits = 0
        self.path = Path(path)
        self._con, self._read_only = _db(self.path) if use_cache else (None, None)
        if self._read_only is not None:
            _warn_once(self.path, f"the LLM answer cache {self.path} is read-only here ({self._read_only}): its "
                                  "answers are used, new ones are not stored; to store them, have its owner run "
                                  f"'chmod g+w {self.path}' (and keep umask 002 in a shared cache), or set "
                                  "RERANK_CACHE to a cache of your own")
        self._lock = threading.Lock()
        try:  # keys only matter with a cache: a log-only wrapper hashes no model files
            fingerprint = model_fingerprint(model, self._con, served="base_url" in inner.describe()) \
                if self._con is not None else f"name:{model}"
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"cannot read the LLM answer cache {self.path} ({e}): {_FIX}") from e
        self._base = {"model": fingerprint, "backend": cache_key_options(inner)}
        self._log = _open_log(log_path) if log_path else None
        #: generation lines waiting for their parse outcome, with their answers' cache keys (None: not stored) and
        #: the stored value this run read or wrote under that key
        self._pending: list[tuple[str | None, str, dict[str, Any]]] = []

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    @property
    def context_length(self) -> int | None:
        return self.inner.context_length

    def constraint_error(self) -> str | None:
        return self.inner.constraint_error()

    def _key(self, kind: str, prompt: Sequence[int], request: Any) -> str:
        blob = json.dumps({**self._base, "kind": kind, "prompt": list(prompt), "request": request}, sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _run(self, kind: str, prompts: Sequence[Sequence[int]], request: Any, cacheable: bool,
             compute: Any) -> list[Any]:
        self._flush()
        keys = [self._key(kind, p, request) for p in prompts]
        found: dict[int, Any] = {}
        stored_as: dict[int, str] = {}  # the stored value of each answer, as the cache holds it
        if self._con is not None and cacheable:
            with self._lock:
                try:
                    for i, k in enumerate(keys):
                        row = self._con.execute("SELECT value FROM calls WHERE key = ?", (k,)).fetchone()
                        if row is not None:
                            found[i], stored_as[i] = json.loads(row[0]), row[0]
                except sqlite3.DatabaseError as e:
                    raise ConfigError(f"cannot read the LLM answer cache {self.path} ({e}): {_FIX}") from e
        todo = [i for i in range(len(prompts)) if i not in found]
        fresh = dict(zip(todo, compute([prompts[i] for i in todo]), strict=True)) if todo else {}
        stored_as.update((i, json.dumps(v)) for i, v in fresh.items())
        if self._con is not None and cacheable and fresh and self._read_only is None:
            self._store([(keys[i], stored_as[i]) for i in fresh])
        self.hits += len(found)
        out = [found[i] if i in found else fresh[i] for i in range(len(prompts))]
        stored = self._con is not None and cacheable
        if self._log is not None or (stored and kind == "generate"):
            for p, v, i in zip(prompts, out, range(len(prompts)), strict=True):
                shown = {"prompt": self.tokenizer.decode(list(p), skip_special_tokens=False), "request": request} \
                    if self._log is not None else {}
                line = {"kind": kind, **shown, "response": v, "cached": i in found}
                if kind == "generate":
                    self._pending.append((keys[i] if stored else None, stored_as.get(i, ""), line))
                else:
                    self._write(line)
        if self._log is not None:
            self._log.flush()
        return out

    def _store(self, rows: list[tuple[str, str]]) -> None:
        """Store answers; a write that fails (a full disk, a file made read-only meanwhile) warns once and the run goes
        on storing nothing more (its answers are right, only not kept)."""
        assert self._con is not None
        try:
            with self._lock, self._con:
                self._con.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?)", rows)
        except sqlite3.OperationalError as e:
            self._read_only = str(e)
            _warn_once(self.path, f"cannot store answers in the LLM answer cache {self.path} ({e}); this run stores "
                                  "no more (its answers are not affected)")

    def log_parse(self, response: str, outcome: dict[str, Any]) -> None:
        """Attach ``outcome`` to the oldest pending generation line with this response, then write the lines whose
        parse is known. A failed parse takes the answer out of the cache, so the next run asks the model again."""
        key, value, line = next(((k, v, x) for k, v, x in self._pending
                                 if "parse" not in x and x["response"] == response), (None, "", None))
        if line is None:
            return
        line["parse"] = outcome
        if key is not None and outcome.get("outcome") == "failed":
            self._forget(key, value)
        while self._pending and "parse" in self._pending[0][2]:
            self._write(self._pending.pop(0)[2])
        if self._log is not None:
            self._log.flush()

    def _forget(self, key: str, value: str) -> None:
        """Remove one stored answer (one that failed to parse) if the cache still holds ``value`` under ``key``, the
        answer this run read or stored (another run may have stored a good one since); a cache that cannot be
        written keeps it."""
        if self._con is None or self._read_only is not None:
            return
        try:
            with self._lock, self._con:
                self._con.execute("DELETE FROM calls WHERE key = ? AND value = ?", (key, value))
        except sqlite3.OperationalError as e:
            self._read_only = str(e)
            _warn_once(self.path, f"cannot update the LLM answer cache {self.path} ({e}); this run stores no more "
                                  "(its answers are not affected)")

    def _write(self, line: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(line, ensure_ascii=False) + "\n")

    def _flush(self) -> None:
        """Write every pending generation line (``parse`` null where no head reported one)."""
        for _, _, line in self._pending:
            line.setdefault("parse", None)
            self._write(line)
        self._pending.clear()
        if self._log is not None:
            self._log.flush()

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        return self._run("next_token_logprobs", prompts, list(token_ids), True,
                         lambda ps: self.inner.next_token_logprobs(ps, token_ids))

    @property
    def gives_logits(self) -> bool:  # type: ignore[override]
        return self.inner.gives_logits

    def next_token_logits(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        return self._run("next_token_logits", prompts, list(token_ids), True,
                         lambda ps: self.inner.next_token_logits(ps, token_ids))

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        self.inner.check_constraint(config)
        return self._run("generate", prompts, config.request(), config.temperature == 0.0,
                         lambda ps: self.inner.generate(ps, config))

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "llm_cache": self.use_cache, "llm_cache_hits": self.hits}

    def close(self) -> None:
        self._flush()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._con is not None:
            self._con.close()
        self.inner.close()


def cache_key_options(backend: Backend) -> dict[str, Any]:
    """What of ``backend.describe()`` keys its cached answers: its options less the transport-only ones (its
    ``cache_ignored_options``), plus the dtype and the device type it resolved (not the device's index, threads or
    context sizes, which do not change an answer)."""
    described = backend.describe()
    ignored = frozenset(getattr(backend, "cache_ignored_options", ()))
    key = {k: v for k, v in described.items() if not k.startswith("resolved_") and k not in ignored}
    if "resolved_dtype" in described:
        key["resolved_dtype"] = described["resolved_dtype"]
    if "resolved_device" in described:
        key["resolved_device_type"] = str(described["resolved_device"]).split(":")[0]
    return key


def maybe_cached(backend: Backend, model: str | None) -> Backend:
    """``backend`` wrapped by :class:`CachingBackend` when built inside an enabled :func:`llm_cache_scope`."""
    scope = _SCOPE.get()
    if scope is None or model is None or isinstance(backend, CachingBackend):
        return backend
    enabled, log_path = scope
    if not enabled and log_path is None:
        return backend
    from rerank.data.datasets import cache_root

    try:
        return CachingBackend(backend, model, cache_root() / "llm-calls.sqlite", log_path, use_cache=enabled)
    except ConfigError:
        backend.close()
        raise


def uses_llm_backend(method: str | type) -> bool:
    """Whether reranker ``method`` (a registered name, or a head class) makes its model calls through a backend that
    :func:`maybe_cached` wraps: its head is an :class:`~rerank.heads.llm.LLMReranker`, the one caller of it. Other
    heads (cross-encoder, bi-encoder, ColBERT, monoT5, duoT5, remote) are never cached nor logged here."""
    from rerank.heads.llm import LLMReranker
    from rerank.heads.registry import get_reranker_class

    cls = get_reranker_class(method) if isinstance(method, str) else method
    return isinstance(cls, type) and issubclass(cls, LLMReranker)
