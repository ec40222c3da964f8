"""Atomic writes and content hashing, so that no result file is ever half-written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from rerank.errors import ConfigError

__all__ = [
    "DamagedEntry",
    "atomic_write",
    "cache_permission_error",
    "checked_entry_ids",
    "file_lock",
    "hash_obj",
    "named_write",
    "nearest_existing",
    "resolved_path",
    "publish_dir",
    "read_entry_json",
    "sha256_file",
    "staged_dir",
    "sweep_stale",
    "temp_dir",
    "write_json",
]


def nearest_existing(path: Path) -> Path:
    """``path``, or its closest ancestor that exists (the folder that creating ``path`` writes into)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _proc_umask() -> int | None:
    """The process's umask as /proc reports it (read without changing it, so no race between threads), or None
    where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _import_umask() -> int:
    """The umask at import (one thread yet): from /proc, else by setting and restoring it."""
    mask = _proc_umask()
    if mask is None:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_START_UMASK = _import_umask()


def _umask() -> int:
    """The current umask where /proc tells it, else the one the process had when this module was imported."""
    mask = _proc_umask()
    return _START_UMASK if mask is None else mask


def resolved_path(value: Any) -> Any:
    """``value`` naming a file or folder that exists here, as its resolved path (``./m``, ``m``, ``~/m`` and an
    absolute ``m`` are one); anything else (a hub id, an absent path, not a string) as it is."""
    if isinstance(value, (str, os.PathLike)) and str(value) and os.path.exists(os.path.expanduser(value)):
        return os.path.realpath(os.path.expanduser(value))
    return value


def _chmod(path: str | Path | int, mode: int) -> None:
    """Set ``mode`` where the platform and file system allow it (no ``fchmod`` on Windows, ``EPERM`` on some mounts):
    a mode is a courtesy to other readers, never a reason to lose a result."""
    with contextlib.suppress(OSError, AttributeError, NotImplementedError):
        if isinstance(path, int):
            os.fchmod(path, mode)
        else:
            os.chmod(path, mode)


def _group_write(path: Path) -> int:
    """``0o020`` (group write) for what is created at ``path`` when it lies in the cache folder
    (:func:`~rerank.data.datasets.cache_root`) and that folder or ``path``'s parent is group-writable (a cache shared
    by a group), else 0: elsewhere modes follow the umask alone."""
    from rerank.data.datasets import cache_root

    if _umask() & 0o040:  # the group may not even read: nothing to share
        return 0
    try:
        root = cache_root().resolve()
        parent = nearest_existing(path.parent).resolve()
        if parent != root and root not in parent.parents:
            return 0
        return 0o020 if (root.stat().st_mode | parent.stat().st_mode) & 0o020 else 0
    except OSError:
        return 0


def _mkdirs(path: Path) -> None:
    """``path.mkdir(parents=True, exist_ok=True)``, each folder it creates given group write as
    :func:`_group_write` says (a setgid parent's bit is inherited by the system)."""
    if path.is_dir():
        return
    if path.parent != path:
        _mkdirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    extra = _group_write(path)
    if extra:
        _chmod(path, stat.S_IMODE(path.stat().st_mode) | extra)


def _add_group_write(folder: Path) -> None:
    """Add group write to ``folder`` and everything under it when :func:`_group_write` says so for ``folder``."""
    extra = _group_write(folder)
    if not extra:
        return
    for p in [folder, *folder.rglob("*")]:
        if not p.is_symlink():
            with contextlib.suppress(OSError):
                _chmod(p, stat.S_IMODE(p.stat().st_mode) | extra)


def cache_permission_error(entry: str | Path, error: OSError) -> ConfigError:
    """``error`` (permission denied writing the cache entry ``entry`` or its folder) as a one-line error naming the
    entry and the fix: the folder's owner makes it group-writable, or the user takes a cache of their own."""
    entry = Path(entry)
    where = nearest_existing(Path(os.fsdecode(error.filename)) if error.filename is not None else entry.parent)
    return ConfigError(
        f"permission denied writing the cache entry {entry} ({where} is not writable by this user): in a cache "
        f"shared by a group, the owner of {entry.parent} runs `chmod -R g+w {entry.parent}` and everyone uses "
        "`umask 002` (docs/scaling.md, The cache folder); or set RERANK_CACHE to a folder of your own")


#: how old a leftover of a killed process on another machine (or of an untagged name) must be before
#: :func:`sweep_stale` removes it: a process there sharing the folder may hold the same pid, but not for this long
#: without touching its staging folder
STALE_AGE_S = 3600.0

#: this machine in the names of temporary files and folders (with the pid), so that a leftover of a process that is
#: gone from this machine is removed at once, and one of another machine only when it is old
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _tag() -> str:
    """``{pid}-{host}``: the owner of a temporary name."""
    return f"{os.getpid()}-{_HOST}"


def temp_dir(parent: str | Path, prefix: str, suffix: str = "") -> Path:
    """A new temporary folder under ``parent`` that is published by a rename: named ``{prefix}{pid}-{host}-…`` (what a
    killed run leaves is swept by the next: :func:`sweep_stale`), made with the mode an ordinary ``mkdir`` gets
    (``0o777`` less the umask, plus group write in a group-writable cache: :func:`_group_write`), not ``mkdtemp``'s
    owner-only ``0o700``, so others may read what lands; ``parent`` is created if absent."""
    parent = Path(parent)
    _mkdirs(parent)
    sweep_stale(parent, prefix)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{_tag()}-", suffix=suffix, dir=parent))
    except OSError as e:  # it names the temporary folder: name the one it was to be made in
        raise type(e)(e.errno, e.strerror, str(parent)) from e
    setgid = stat.S_IMODE(tmp.stat().st_mode) & stat.S_ISGID  # inherited from a setgid parent: kept
    _chmod(tmp, (0o777 & ~_umask()) | _group_write(tmp) | setgid)
    return tmp


def sweep_stale(parent: str | Path, prefix: str) -> None:
    """Remove what killed processes left under ``parent``: entries named ``{prefix}{pid}-{host}-…`` /
    ``{prefix}{pid}-{host}.…`` of a process of this machine that is gone, and ``{prefix}{pid}-…`` / ``{prefix}{pid}.…``
    (or another machine's) whose process is gone and that are older than :data:`STALE_AGE_S` (a 0.5 GB half-converted
    model stayed for good). Best-effort: an entry that cannot be inspected or removed is left."""

    def owner(name: str) -> tuple[int, str | None] | None:
        if not name.startswith(prefix):
            return None
        m = _TAGGED_NAME.match(name[len(prefix):]) or _PID_NAME.match(name[len(prefix):])
        return None if m is None else (int(m.group(1)), m.group(2) if m.re is _TAGGED_NAME else None)

    _sweep(Path(parent), owner)


def _sweep_temp_files(parent: Path) -> None:
    """Remove the :func:`atomic_write` temporary files (``.NAME.{pid}-{host}.….tmp``) that processes now gone left in
    ``parent`` (a SIGKILL mid-write): at once for this machine's, when old for another's. Best-effort."""

    def owner(name: str) -> tuple[int, str | None] | None:
        m = _TEMP_FILE.fullmatch(name)
        return None if m is None else (int(m.group(1)), m.group(2))

    _sweep(parent, owner, files_only=True)


def _sweep(parent: Path, owner: Callable[[str], tuple[int, str | None] | None], files_only: bool = False) -> None:
    """Remove each entry of ``parent`` whose name ``owner`` reads as (pid, host or None) of a process that is gone
    (:func:`_remove_leftover`). Best-effort: a folder that cannot be listed is left."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    now = time.time()
    for p in entries:
        found = owner(p.name)
        if found is not None:
            _remove_leftover(p, *found, now, files_only=files_only)


def _remove_leftover(p: Path, pid: int, host: str | None, now: float, files_only: bool = False) -> None:
    """Remove ``p``, named for process ``pid`` on machine ``host`` (None: untagged), when that process is gone: a
    process of this machine is asked (``kill(pid, 0)``); another machine's, or an untagged name, must be older than
    :data:`STALE_AGE_S` too. Errors leave it."""
    if pid == os.getpid() or (host in (None, _HOST) and _alive(pid)):
        return
    try:
        if host != _HOST and now - p.lstat().st_mtime < STALE_AGE_S:
            return
        if p.is_dir() and not p.is_symlink():
            if not files_only:
                shutil.rmtree(p)
        else:
            p.unlink()
    except OSError:
        return


_PID_NAME = re.compile(r"(\d+)[-.]")
_TAGGED_NAME = re.compile(r"(\d+)-([0-9a-f]{8})[-.]")
_TEMP_FILE = re.compile(r"\..+\.(\d+)-([0-9a-f]{8})\.[A-Za-z0-9_]+\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists (another user's)
        return True
    return True


def _named_error(error: BaseException, path: Path) -> OSError | None:
    """``error`` as an ``OSError`` whose ``filename`` is ``path`` (errno kept), when it is a write failure that names
    no file; else None. A short write without an errno (numpy) is ENOSPC when the disk has less room than was asked
    (else EIO); faiss's ``RuntimeError`` is read for the system's error text it ends with."""
    if isinstance(error, OSError):
        if error.filename is not None:
            return None
        code = error.errno
        if code is None:
            short = re.search(r"(\d+) requested and (\d+) written", str(error))
            if short is None:
                return None
            code = errno.ENOSPC if _free_bytes(path) < int(short.group(1)) else errno.EIO
        return OSError(code, os.strerror(code), str(path))
    if isinstance(error, RuntimeError):  # faiss: "... write error in FILE: 2097107 != 10240000 (No space left ...)"
        text = str(error)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG, errno.EIO):
            if f"({os.strerror(code)})" in text:
                return OSError(code, os.strerror(code), str(path))
    return None


def _free_bytes(path: Path) -> int:
    """Bytes free on the file system that ``path`` is (to be) on; a large number when that cannot be told."""
    try:
        return shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return 1 << 62


@contextlib.contextmanager
def named_write(path: str | Path) -> Iterator[None]:
    """Writing ``path`` in the block: a failure that names no file (``ENOSPC`` from a write, numpy's short
    ``tofile``, faiss's ``RuntimeError`` ending ``(No space left on device)``) is raised as an ``OSError`` naming
    ``path``, its errno kept, so the command line can say which file could not be written."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        named = _named_error(e, Path(path))
        if named is None:
            raise
        raise named from e


def is_stream(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is, or links to, an existing file that is neither a regular file nor a folder: a device
    (``/dev/stdout``, ``/dev/null``), a pipe, a FIFO or a socket, which a write goes through rather than replaces."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` (``.NAME.{pid}-{host}.….tmp``) and rename it into place only on
    success; the temporary files that killed processes left there are removed first. A failure to write is an
    ``OSError`` naming ``path`` (:func:`named_write`). A symbolic link is followed: the regular file it names is
    replaced and the link kept. A path that is, or links to, something other than a regular file or a folder (a
    device such as ``/dev/stdout``, a pipe, a FIFO, a socket) is a stream: it is written to directly, never replaced."""
    path = Path(path)
    if is_stream(path):
        with named_write(path), open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as stream:
            yield stream
        return
    if path.is_symlink():  # the file it names is replaced, not the link
        path = Path(os.path.realpath(path))
    with named_write(path):
        _mkdirs(path.parent)
        _sweep_temp_files(path.parent)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_tag()}.", suffix=".tmp", dir=path.parent)
        except OSError as e:  # it names the temporary file: name the one asked for
            raise OSError(e.errno, e.strerror, str(path)) from e
    with _removed_on_error(tmp), named_write(path):  # named while the partial file still fills the disk
        try:  # the mode of the file replaced, else an ordinary new file's (mkstemp's 0o600 would hide results)
            perms = path.stat().st_mode & 0o7777
        except OSError:
            perms = (0o666 & ~_umask()) | _group_write(path)
        _chmod(fd, perms)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


@contextlib.contextmanager
def _removed_on_error(tmp: str) -> Iterator[None]:
    """Delete the file ``tmp`` when the block fails (or is interrupted)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _open_private_modes(folder: Path) -> None:
    """Give files and folders under ``folder`` that their writer left owner-only (transformers writes
    ``model.safetensors`` 0o600) the modes of ordinary new ones; modes that let others in already are kept."""
    mask = _umask()
    for p in folder.rglob("*"):
        if p.is_symlink():
            continue
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077 == 0:
            _chmod(p, (0o777 if p.is_dir() else 0o666 | (mode & 0o111)) & ~mask)


@contextlib.contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it to ``path`` only on success (an older ``path`` is replaced),
    so a reader never sees a half-written folder; a write failure in the block that names no file names ``path``
    (:func:`named_write`)."""
    path = Path(path)
    tmp = temp_dir(path.parent, prefix=f".{path.name}.")
    try:
        with named_write(path):  # a writer that names no file (faiss on a full disk): name the folder
            yield tmp
        _open_private_modes(tmp)
        _add_group_write(tmp)
        if os.path.lexists(path):
            _move_aside(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(obj: Any, path: str | Path) -> None:
    """Write pretty JSON atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object (config hashes, cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _move_aside(path: Path) -> None:
    """Remove the folder (or link, or file) ``path`` by renaming it into a temporary sibling first, so that ``path``
    is free at once; what a killed process leaves there is swept like its other temporary folders."""
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_tag()}-old.", dir=path.parent))
    try:
        os.replace(path, old / "x")
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _taken(tmp: Path, path: Path) -> OSError | None:
    """Rename ``tmp`` to ``path``: None when done, the error when something stands at ``path`` (another process's
    folder, a link); any other failure raises."""
    try:
        os.rename(tmp, path)
        return None
    except OSError as e:
        if e.errno not in _TAKEN and not os.path.lexists(path):
            raise
        return e


def publish_dir(tmp: str | Path, path: str | Path, marker: str) -> bool:
    """Rename the fully written folder ``tmp`` to ``path`` (atomic on one filesystem).

    If another process published ``path`` first (its ``marker`` file exists), keep that copy, delete ``tmp`` and
    return False. A ``path`` without its marker (a folder a killed run left, its marker deleted, a dangling link) is
    replaced; processes doing so take turns on ``.NAME.publish.lock`` beside it (:func:`file_lock`, removed after),
    each looking for the marker again first. Any other failure raises.
    """
    tmp, path = Path(tmp), Path(path)
    _add_group_write(tmp)
    error = _taken(tmp, path)
    if error is None:
        return True
    lock = path.parent / f".{path.name}.publish.lock"  # not a caller's own ``.NAME.lock``: that would wait on itself
    with file_lock(lock):
        try:
            for _ in range(100):  # another replacer's folder is moved aside between two looks: look again
                if (path / marker).is_file():
                    shutil.rmtree(tmp, ignore_errors=True)
                    return False
                if os.path.lexists(path):
                    _move_aside(path)
                taken = _taken(tmp, path)
                if taken is None:
                    return True
                error = taken
            raise error
        finally:
            lock.unlink(missing_ok=True)  # a waiter notices and locks a new file


#: what ``rename`` of a folder onto a name that is taken fails with (a folder, a file or a link there)
_TAKEN = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)


@contextlib.contextmanager
def file_lock(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created, with its folder, if absent) for the ``with`` block, so
    that processes sharing a cache entry take turns; ``on_wait`` is called once if another process holds it.

    The lock is advisory (it only orders processes that take it too) and POSIX only: where there is no ``fcntl``
    (Windows) it locks nothing; on NFS it is as good as the client's ``flock``. A holder may delete the lock file (to
    clean up): a waiter then finds that the file it locked is no longer ``path`` and locks the new one. The lock is
    released when the block ends, or by the system when the process dies, so a crash never leaves it held.
    """
    try:
        import fcntl
    except ImportError:  # no POSIX locks here (Windows): nothing to take
        yield
        return
    path = Path(path)
    waited = False
    while True:
        _mkdirs(path.parent)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access: others' files lock too
        try:
            st = os.fstat(fd)  # a lock file this user made in a group-writable cache: the group may remove it too
            if not st.st_mode & 0o020 and st.st_uid == os.geteuid() and _group_write(path):
                _chmod(fd, stat.S_IMODE(st.st_mode) | 0o020)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)  # the holder deleted this lock file: lock the one now at ``path``
    try:
        yield
    finally:
        os.close(fd)


#: files up to this size are stamped by their content (configs, tokenizers, small weights); larger ones by size and
#: modification time, so that a multi-GB model is not read on every run
STAMP_HASH_LIMIT = 16 << 20
#: content hashes of this process, by resolved path -> (size, mtime_ns, sha256): each file is read once per change
_STAMP_HASHES: dict[str, tuple[int, int, str]] = {}


def path_stamp(path: str | Path, recursive: bool = True, hash_limit: int | None = STAMP_HASH_LIMIT) -> list[list[Any]]:
    """What a cache key records of a file or of every file under a folder (``recursive=False``: its top level only;
    hidden names such as ``.git/`` skipped; symlinks followed): ``[relative path, sha256]`` for a file up to
    ``hash_limit`` bytes (every file when None), else ``[relative path, size, mtime_ns]``. ``[]`` when absent."""
    root = Path(path)
    if root.is_file():
        files = [(root.name, root)]
    elif root.is_dir():
        files = []
        seen: set[tuple[int, int]] = set()

        def walk(folder: Path, prefix: str) -> None:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:  # a symlink back up the tree
                return
            seen.add((st.st_dev, st.st_ino))
            for entry in os.scandir(folder):
                if entry.name.startswith("."):
                    continue
                if entry.is_file():
                    files.append((prefix + entry.name, Path(entry.path)))
                elif recursive and entry.is_dir():
                    walk(Path(entry.path), prefix + entry.name + "/")

        walk(root, "")
    else:
        return []
    out: list[list[Any]] = []
    for rel, file in sorted(files):
        st = file.stat()
        if hash_limit is not None and st.st_size > hash_limit:
            out.append([rel, st.st_size, st.st_mtime_ns])
            continue
        key = str(file.resolve())
        seen_hash = _STAMP_HASHES.get(key)
        if seen_hash is None or seen_hash[:2] != (st.st_size, st.st_mtime_ns):
            seen_hash = _STAMP_HASHES[key] = (st.st_size, st.st_mtime_ns, sha256_file(file))
        out.append([rel, seen_hash[2]])
    return out


class DamagedEntry(Exception):
    """A cache entry whose files do not match what was recorded when it was written, or do not load (the message
    says how); the entry can be built again."""


def read_entry_json(path: Path) -> Any:
    """The JSON in the cache entry file ``path``; one that is absent, empty or not JSON is :class:`DamagedEntry`."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise DamagedEntry(f"{Path(path).name} is missing") from None
    except ValueError as e:  # not JSON, not UTF-8
        raise DamagedEntry(f"{Path(path).name} is not valid JSON: {e}") from None


def checked_entry_ids(folder: Path, record: dict[str, Any], ids_name: str, hash_key: str) -> list[str]:
    """The document ids of the cache entry ``folder`` (the JSON list ``ids_name``), after checking what ``record``
    (its manifest) wrote down: each file's size (``files``), the sha256 of the id list (``hash_key``) and the document
    count (``num_docs``); a record written before these were kept is checked for what it has. A mismatch, or ids
    that do not load, is :class:`DamagedEntry`."""
    sizes = record.get("files")
    for name, size in (sizes.items() if isinstance(sizes, dict) else ()):
        try:
            found = (folder / name).stat().st_size
        except FileNotFoundError:
            raise DamagedEntry(f"{name} is missing") from None
        if found != size:
            raise DamagedEntry(f"{name} is {found} bytes, {size} when written")
    try:
        raw = (folder / ids_name).read_bytes()
    except FileNotFoundError:
        raise DamagedEntry(f"{ids_name} is missing") from None
    if hash_key in record and hashlib.sha256(raw).hexdigest() != record[hash_key]:
        raise DamagedEntry(f"{ids_name} differs from the one written")
    try:
        ids = json.loads(raw)
    except ValueError as e:
        raise DamagedEntry(f"{ids_name} is not valid JSON: {e}") from None
    if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
        raise DamagedEntry(f"{ids_name} is not a list of ids")
    if record.get("num_docs", len(ids)) != len(ids):
        raise DamagedEntry(f"{ids_name} holds {len(ids)} ids for {record['num_docs']} documents")
    return ids
