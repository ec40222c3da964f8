"""Audit 3 (interrupt): a full disk names the file it could not write, SIGTERM ends a command as Ctrl-C does, temp
files that killed writers left are swept, and a cache folder that cannot be written is refused up front."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rerank.utils import files
from rerank.utils.files import atomic_write, staged_dir


def _fail_fsync_under(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``os.fsync`` of a file under ``folder`` fails as a full disk does: ENOSPC, no file named."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if str(folder.resolve()) in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_fsync_under(monkeypatch, tmp_path)
    target = tmp_path / "run.trec"
    with pytest.raises(OSError) as e:
        with atomic_write(target) as f:
            f.write("q1 Q0 d1 1 1.0 x\n")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_numpy_short_write_and_faiss_error_name_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy's ``524288 requested and 523232 written`` has no errno and faiss raises a RuntimeError: both become an
    OSError naming the file (the shard) or the staged folder (the index), ENOSPC when the disk is full."""
    from rerank.utils.files import named_write

    monkeypatch.setattr(files, "_free_bytes", lambda path: 0)
    shard = tmp_path / "cache" / "shard_00000.npy"
    with pytest.raises(OSError) as e:
        with atomic_write(shard, "wb") as f:
            np.save(f, np.zeros(3, dtype=np.float32))
            raise OSError("524288 requested and 523232 written")
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(shard))
    assert list(shard.parent.iterdir()) == []
    idx = tmp_path / "idx"
    with pytest.raises(OSError) as e:
        with staged_dir(idx) as tmp:
            (tmp / "index.faiss").write_bytes(b"partial")
            raise RuntimeError("Error in faiss::write_index: write error in x/index.faiss: 2097107 != 10240000 "
                               "(No space left on device)")
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(idx))
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
    with pytest.raises(RuntimeError, match="unrelated"), named_write(idx):
        raise RuntimeError("unrelated")


def test_eval_on_a_full_disk_is_one_line_naming_the_file(run_cli, tiny_ds, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    _fail_fsync_under(monkeypatch, out)
    rc, _, err = run_cli("eval", "--dataset", tiny_ds.root, "--retriever", "bm25", "--output", out)
    assert rc == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: no space left on device writing {out}/"), err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_without_a_file_is_one_line(run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import rerank.cli.eval_cmd as eval_cmd

    def run(args: object) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "x"))

    monkeypatch.setattr(eval_cmd, "run", run)
    rc, _, err = run_cli("eval", "--dataset", tmp_path, "--output", tmp_path / "o")
    assert (rc, err.strip()) == (2, f"error: read-only file system: cannot write {tmp_path / 'x'}")

    def full(args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(eval_cmd, "run", full)
    rc, _, err = run_cli("eval", "--dataset", tmp_path, "--output", tmp_path / "o")
    assert (rc, err.strip()) == (2, "error: no space left on device")


def test_temp_files_carry_the_pid_and_dead_writers_ones_are_swept(tmp_path: Path) -> None:
    host = files._HOST
    dead = _dead_pid()
    stale = tmp_path / f".run.trec.{dead}-{host}.abc_12.tmp"
    other_file = tmp_path / f".metrics.json.{dead}-{host}.zz9.tmp"
    live_writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".run.trec.{live_writer.pid}-{host}.q1w2.tmp"
        elsewhere = tmp_path / f".run.trec.{dead}-0123abcd.q1w2.tmp"  # another machine's, fresh: kept
        for p in (stale, other_file, live, elsewhere):
            p.write_text("partial")
        with atomic_write(tmp_path / "run.trec") as f:
            mine = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".run.trec.{os.getpid()}-{host}.")]
            assert len(mine) == 1 and mine[0].endswith(".tmp")
            f.write("x\n")
        assert not stale.exists() and not other_file.exists()
        assert live.exists() and elsewhere.exists()
    finally:
        live_writer.kill()
        live_writer.wait()


def test_sigterm_ends_a_command_with_one_line_and_no_temp_file(tmp_path: Path) -> None:
    """A SIGTERM while ``rerank eval`` writes its output: ``terminated``, status 143, the temp file removed."""
    script = textwrap.dedent(f"""
        import sys, time
        import rerank.cli.eval_cmd as eval_cmd
        from rerank.cli import main
        from rerank.utils.files import atomic_write

        def run(args):
            with atomic_write({str(tmp_path / "run.trec")!r}) as f:
                f.write("partial\\n")
                print("ready", flush=True)
                time.sleep(60)
            return 0

        eval_cmd.run = run
        sys.exit(main(["eval", "--dataset", "x", "--output", {str(tmp_path)!r}]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip() == "terminated"
    assert list(tmp_path.iterdir()) == []


def test_a_cache_folder_that_cannot_be_written_is_refused_first(run_cli, tiny_ds, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A cache folder that cannot be made is refused before any work; one that exists read-only is a warning, as
    what it holds (an index built before) is read and needs no write."""
    import rerank.cli.common as common
    import rerank.eval.pipeline as pipeline

    cache = tmp_path / "ro-cache"
    cache.mkdir()
    real = os.access
    monkeypatch.setattr(common.os, "access", lambda p, mode: False if Path(p) == cache else real(p, mode))

    def no_eval(cfg: object) -> None:
        raise AssertionError("the eval started")

    monkeypatch.setattr(pipeline, "run_eval", no_eval)
    monkeypatch.setenv("RERANK_CACHE", str(cache / "sub"))
    rc, _, err = run_cli("eval", "--dataset", tiny_ds.root, "--retriever", "bm25", "--output", tmp_path / "out")
    assert (rc, err.strip()) == (2, f"error: cache folder {cache / 'sub'} is not writable: it would be made in "
                                    f"{cache}, which is not writable (set RERANK_CACHE to a writable folder)")
    import rerank.models as models

    monkeypatch.setattr(models, "check_model_path", lambda *a, **k: None)
    rc, _, err = run_cli("index", "--model", tmp_path, "--dataset", tiny_ds.root, "--output", tmp_path / "idx")
    assert rc == 2 and err.strip().startswith(f"error: cache folder {cache / 'sub'} is not writable"), err
    monkeypatch.setenv("RERANK_CACHE", str(cache))
    ran = []
    monkeypatch.setattr(pipeline, "run_eval", lambda cfg: ran.append(cfg) or {"ndcg@10": 1.0})
    import rerank.eval.report as report

    monkeypatch.setattr(report, "summary_line", lambda metrics: "ok")
    with caplog.at_level("WARNING"):
        rc, _, err = run_cli("eval", "--dataset", tiny_ds.root, "--retriever", "bm25", "--output", tmp_path / "out")
    assert rc == 0 and ran, err
    assert f"cache folder {cache} is not writable: what it holds is read" in caplog.text + err
    # a run that writes nothing into the cache (the dataset's own run, no LLM head) is not refused for it
    (tiny_ds.root / "run.trec").write_text("q1 Q0 d1 1 1.0 x\n")
    monkeypatch.setenv("RERANK_CACHE", str(cache / "sub"))
    rc, out, err = run_cli("eval", "--dataset", tiny_ds.root, "--output", tmp_path / "out")
    assert rc == 0, err


def test_a_full_disk_during_a_copy_names_the_target() -> None:
    """shutil's sendfile copy raises ENOSPC naming the source first (filename) and the target second (filename2):
    the line names the target, the file that could not be written, not the source on a disk with room."""
    import errno

    from rerank.cli import _os_error_line

    err = OSError(errno.ENOSPC, "No space left on device", "/cache/emb.npy", None, "/full/idx/emb.npy")
    line = _os_error_line(err)
    assert line is not None and "/full/idx/emb.npy (from /cache/emb.npy)" in line and line.index("/full") < \
        line.index("/cache")
