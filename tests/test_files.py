"""Atomic writes publish files and folders with the modes an ordinary write gives (the umask's), not the owner-only
modes of ``mkstemp`` / ``mkdtemp``: a model folder or a result written by one user must be readable where an
ordinary file would be (a serving container, a teammate on shared storage)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rerank.utils.files import atomic_write, staged_dir, temp_dir, write_json


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_and_folders_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    write_json({"a": 1}, tmp_path / "metrics.json")
    assert _mode(tmp_path / "metrics.json") == 0o644
    with staged_dir(tmp_path / "model") as d:
        (d / "w.bin").write_bytes(b"x")
        (d / "model.safetensors").write_bytes(b"x")
        (d / "model.safetensors").chmod(0o600)  # as transformers writes it
        (d / "sub").mkdir(mode=0o700)
    assert _mode(tmp_path / "model") == 0o755 and _mode(tmp_path / "model" / "sub") == 0o755
    assert _mode(tmp_path / "model" / "model.safetensors") == 0o644
    assert _mode(temp_dir(tmp_path, prefix=".t.")) == 0o755
    os.umask(0o077)  # a private umask stays private
    write_json({"a": 2}, tmp_path / "private.json")
    assert _mode(tmp_path / "private.json") == 0o600


def test_modes_are_best_effort_and_the_umask_is_read_without_changing_it(
        tmp_path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses chmod (or a platform without fchmod) still gets the result; reading the umask from
    several threads leaves it as it was."""
    import threading

    from rerank.utils import files

    os.umask(0o077)
    threads = [threading.Thread(target=lambda: [files._umask() for _ in range(2000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert os.umask(0o022) == 0o077 and files._umask() == 0o022

    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refuse)
    monkeypatch.setattr(os, "chmod", refuse)
    write_json({"kept": True}, tmp_path / "m.json")
    with staged_dir(tmp_path / "model") as d:
        (d / "w").write_text("x")
    assert (tmp_path / "m.json").read_text().startswith("{") and (tmp_path / "model" / "w").read_text() == "x"


def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "run.trec"
    path.write_text("old\n")
    path.chmod(0o640)
    with atomic_write(path) as f:
        f.write("new\n")
    assert path.read_text() == "new\n" and _mode(path) == 0o640


def test_leftovers_of_killed_processes_are_swept(tmp_path: Path) -> None:
    """A killed conversion or index build left its staging folder (0.5 GB for SmolLM2) for good: the next one made
    beside it removes those of processes that are gone, once they are old enough; a live process's stays."""
    import subprocess
    import sys

    from rerank.utils.files import STALE_AGE_S, sweep_stale, temp_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    old = os.path.getmtime(tmp_path) - STALE_AGE_S - 10
    stale_dir = tmp_path / f".model.{dead}-abc123"
    (stale_dir / "sub").mkdir(parents=True)
    stale_file = tmp_path / f".model.onnx.{dead}.tmp"
    stale_file.write_text("partial")
    fresh = tmp_path / f".model.{int(dead) + 1 if int(dead) + 1 != os.getpid() else int(dead) + 2}-new"
    fresh.mkdir()
    live = tmp_path / f".model.{os.getpid()}-mine"
    live.mkdir()
    other = tmp_path / ".other.123-x"
    other.mkdir()
    for p in (stale_dir, stale_file, live, other):
        os.utime(p, (old, old))
    made = temp_dir(tmp_path, prefix=".model.")
    assert made.name.startswith(f".model.{os.getpid()}-")
    sweep_stale(tmp_path, ".model.onnx.")
    assert not stale_dir.exists() and not stale_file.exists()
    assert fresh.exists() and live.exists() and other.exists()  # too young / alive / another prefix
