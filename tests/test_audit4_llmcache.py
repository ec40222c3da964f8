"""Shared-cache audit (caches), findings 3-6 for the GGUF conversion cache and the LLM answer cache: a damaged or
half-built GGUF entry is rebuilt with a warning naming it (never "Directory not empty", never advice to convert a
pickle), converters of one file take turns, and a damaged, misplaced or read-only ``llm-calls.sqlite`` gives one
line naming it and the fixes, or (read-only) serves its hits and stores nothing, with one warning."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rerank.backends import gguf as gguf_mod
from rerank.backends.gguf import gguf_to_hf, gguf_tokenizer
from rerank.errors import ConfigError


@pytest.fixture(scope="module")
def converted(tiny_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny GGUF file, a pristine copy of its converted cache entry)."""
    from rerank.testing import tiny_gguf

    root = tmp_path_factory.mktemp("gguf-audit4")
    gguf = tiny_gguf(tiny_llm_dir, root / "tiny.gguf")
    entry = gguf_to_hf(gguf, root / "cache")
    shutil.copytree(entry, root / "pristine")
    return gguf, root / "pristine"


def _entry(converted: tuple[Path, Path], cache: Path) -> Path:
    """A fresh copy of the pristine entry at its place under ``cache``."""
    gguf, pristine = converted
    from rerank.utils.files import sha256_file

    entry = cache / sha256_file(gguf)
    shutil.copytree(pristine, entry)
    return entry


def _complete(entry: Path, pristine: Path) -> bool:
    return entry.is_dir() and all((entry / f.name).read_bytes() == f.read_bytes() for f in pristine.iterdir()
                                  if f.name != "SOURCE")


def test_gguf_entry_without_its_marker_is_converted_again(converted: tuple[Path, Path], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Finding 3: a folder without config.json (killed older version, deleted marker) used to be converted in full,
    then fail with 'Directory not empty'; it is replaced by a new conversion, with a warning naming it."""
    gguf, pristine = converted
    entry = _entry(converted, tmp_path)
    (entry / "config.json").unlink()
    with caplog.at_level(logging.WARNING, logger="rerank.backends.gguf"):
        assert gguf_to_hf(gguf, tmp_path) == entry
    assert _complete(entry, pristine)
    assert f"GGUF cache entry {entry} is damaged (config.json is missing)" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("damage, problem", [
    ("del_weights", "it holds no .safetensors weights"),
    ("trunc_weights", "model.safetensors is truncated or damaged"),
    ("zero_tokenizer", "tokenizer.json is empty"),
    ("garbage_config", "config.json is not valid JSON"),
    ("dangling_symlink", "it is a file or a dangling symlink, not a folder"),
])
def test_damaged_gguf_entry_is_rebuilt_and_named(converted: tuple[Path, Path], tmp_path: Path, damage: str,
                                                 problem: str, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 5: a damaged entry used to be returned as is, and loading it failed naming no entry (advice to convert
    a pickle or download again, or a bare JSON error); it is detected and rebuilt, the warning naming the entry."""
    gguf, pristine = converted
    entry = _entry(converted, tmp_path)
    if damage == "del_weights":
        (entry / "model.safetensors").unlink()
    elif damage == "trunc_weights":
        (entry / "model.safetensors").write_bytes((entry / "model.safetensors").read_bytes()[:20000])
    elif damage == "zero_tokenizer":
        (entry / "tokenizer.json").write_text("")
    elif damage == "garbage_config":
        (entry / "config.json").write_text("{bad")
    else:
        shutil.rmtree(entry)
        entry.symlink_to(tmp_path / "gone")
    calls = []

    def convert(source: Path, target: Path) -> None:  # the real conversion is checked above; this one copies
        calls.append(source)
        shutil.copytree(pristine, target)

    monkeypatch.setattr(gguf_mod, "_convert", convert, raising=False)
    with caplog.at_level(logging.WARNING, logger="rerank.backends.gguf"):
        assert gguf_to_hf(gguf, tmp_path) == entry
    assert calls == [gguf] and _complete(entry, pristine) and not entry.is_symlink()
    assert f"GGUF cache entry {entry} is damaged ({problem})" in caplog.text
    caplog.clear()
    assert gguf_to_hf(gguf, tmp_path) == entry and calls == [gguf] and caplog.text == ""  # reused now


def test_damaged_gguf_entry_that_cannot_be_removed_names_it(converted: tuple[Path, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's damaged entry (no right to move it) is one error naming the entry and the fix."""
    gguf, _ = converted
    entry = _entry(converted, tmp_path)
    (entry / "config.json").unlink()

    def refuse(src: Any, dst: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gguf_mod.os, "replace", refuse)
    monkeypatch.setattr(gguf_mod.os, "rename", refuse)
    with pytest.raises(ConfigError, match=rf"GGUF cache entry {entry} is damaged \(config.json is missing\) and "
                                          r"cannot be replaced \(Permission denied\): remove that folder"):
        gguf_to_hf(gguf, tmp_path)


def test_damaged_gguf_tokenizer_entry_is_rebuilt(converted: tuple[Path, Path], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    gguf, _ = converted
    first = gguf_tokenizer(gguf, tmp_path)
    entry = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    (entry / "tokenizer_config.json").write_text("{trunc")
    with caplog.at_level(logging.WARNING, logger="rerank.backends.gguf"):
        again = gguf_tokenizer(gguf, tmp_path)
    assert again.encode("a cat sat") == first.encode("a cat sat")
    assert f"GGUF cache entry {entry} is damaged (tokenizer_config.json is not valid JSON)" in caplog.text


def test_concurrent_gguf_converters_convert_once(converted: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two converters of one file: the second waits on the entry's lock, then reuses the first's folder (each used to
    convert in full)."""
    from transformers import AutoModelForCausalLM

    gguf, pristine = converted
    real = AutoModelForCausalLM.from_pretrained
    loads = []

    def slow(*args: Any, **kwargs: Any) -> Any:
        loads.append(kwargs.get("gguf_file"))
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", slow)
    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(gguf_to_hf(gguf, tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2 and out[0] == out[1] and _complete(out[0], pristine)
    assert loads == [gguf.name]


# ---------------------------------------------------------------- the LLM answer cache (llm-calls.sqlite)


@pytest.fixture(scope="module")
def tok() -> Any:
    from rerank.testing import build_tokenizer

    return build_tokenizer()


def _scripted(tok: Any) -> Any:
    from rerank.backends.scripted import ScriptedBackend

    return ScriptedBackend(tok, lambda text, ids: [float(len(text)), -1.0][: len(ids)], lambda text: text[-3:])


def _filled(tok: Any, path: Path, n: int = 1) -> list[list[int]]:
    """Write ``n`` cached answers into a new cache at ``path`` (model 'served-m'); their prompts."""
    from rerank.backends.cache import CachingBackend

    prompts = [tok.encode(f"prompt number {i}") for i in range(n)]
    be = CachingBackend(_scripted(tok), "served-m", path)
    be.next_token_logprobs(prompts, [5, 6])
    be.close()
    return prompts


def test_garbage_truncated_or_folder_llm_cache_is_one_error_naming_it(tok: Any, tmp_path: Path) -> None:
    """Finding 4: sqlite3.DatabaseError / OperationalError tracebacks become one error naming the file and the fixes,
    raised when the backend is built (not at the first answer)."""
    from rerank.backends.cache import CachingBackend

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_text("garbage garbage garbage\n")
    with pytest.raises(ConfigError, match=rf"LLM answer cache {garbage} is damaged \(file is not a database\): "
                                          r"delete it .* or run with --no-llm-cache"):
        CachingBackend(_scripted(tok), "served-m", garbage)
    truncated = tmp_path / "truncated.sqlite"
    _filled(tok, truncated, n=300)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(ConfigError, match=rf"LLM answer cache {truncated} is damaged \(database disk image is "
                                          r"malformed\): delete it"):
        CachingBackend(_scripted(tok), "served-m", truncated)
    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    with pytest.raises(ConfigError, match=rf"LLM answer cache {folder} is a folder, not a SQLite file: remove it, "
                                          r"or run with --no-llm-cache"):
        CachingBackend(_scripted(tok), "served-m", folder)


def test_eval_with_a_damaged_llm_cache_exits_2_and_no_llm_cache_avoids_it(tiny_llm_dir: Path, dl19_dir: Path,
                                                                          tmp_path: Path, run_cli: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    db = tmp_path / "cache" / "llm-calls.sqlite"
    db.write_text("garbage garbage garbage\n")
    args = ["eval", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec", "--reranker", "yes-no",
            "--model", tiny_llm_dir, "--top-k", "3", "--max-queries", "1"]
    rc, _, err = run_cli(*args, "--output", tmp_path / "a")
    assert rc == 2 and "Traceback" not in err and not (tmp_path / "a" / "run.trec").exists()
    assert f"error: the LLM answer cache {db} is damaged (file is not a database)" in err
    rc, _, err = run_cli(*args, "--output", tmp_path / "b", "--no-llm-cache", "--log-llm-io", tmp_path / "io.jsonl")
    assert rc == 0, err  # the log alone does not open the cache
    assert db.read_text() == "garbage garbage garbage\n"


def _as_other_user(fn: Any) -> Any:
    """``fn()``'s result, run by a user who does not own the files (root: a forked child as nobody)."""
    import json
    import os

    if os.geteuid() != 0:
        return fn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = {"ok": fn()}
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = {"error": f"{type(e).__name__}: {e}"}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = json.loads(f.read())
    os.waitpid(pid, 0)
    assert "ok" in out, out["error"]
    return out["ok"]


def test_read_only_llm_cache_serves_hits_and_stores_nothing_with_one_warning(tok: Any) -> None:
    """Finding 6: another group member's cache file (umask 022: 644) used to fail at the first new answer, mid-run,
    with 'attempt to write a readonly database'; its hits are used, new answers computed and not stored, and one
    warning names the file and the fix."""
    import os
    import sqlite3
    import tempfile

    from rerank.backends.cache import CachingBackend

    folder = Path(tempfile.mkdtemp(prefix="rerank-audit4-"))
    try:
        folder.chmod(0o755)
        db = folder / "llm-calls.sqlite"
        cached = _filled(tok, db)[0]
        db.chmod(0o644 if os.geteuid() == 0 else 0o444)
        fresh = tok.encode("a prompt nobody asked before")

        def run() -> dict[str, Any]:
            messages: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
            logger = logging.getLogger("rerank.backends.cache")
            logger.addHandler(handler)
            try:
                inner = _scripted(tok)
                be = CachingBackend(inner, "served-m", db)
                got = [be.next_token_logprobs([cached, fresh], [5, 6]) for _ in range(2)]
                be.close()
                return {"got": got, "calls": inner.calls["next_token_logprobs"], "hits": be.hits,
                        "messages": messages}
            finally:
                logger.removeHandler(handler)

        out = _as_other_user(run)
        expected = _scripted(tok).next_token_logprobs([cached, fresh], [5, 6])
        assert out["got"] == [expected, expected]
        assert out["calls"] == 2 and out["hits"] == 2  # the stored answer is read; the new one is asked twice
        assert len(out["messages"]) == 1
        assert f"LLM answer cache {db} is read-only here" in out["messages"][0]
        assert f"chmod g+w {db}" in out["messages"][0]
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT count(*) FROM calls").fetchone()[0] == 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("shared", [True, False])
def test_new_llm_cache_is_group_writable_under_a_group_writable_folder(tok: Any, tmp_path: Path,
                                                                       shared: bool) -> None:
    """Finding 6: with umask 022, a new llm-calls.sqlite in a shared (g+w) cache folder is made g+w so the group can
    add to it; elsewhere its mode is the umask's."""
    import os

    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o2775 if shared else 0o755)
    old = os.umask(0o022)
    try:
        _filled(tok, folder / "llm-calls.sqlite")
    finally:
        os.umask(old)
    assert (folder / "llm-calls.sqlite").stat().st_mode & 0o777 == (0o664 if shared else 0o644)
