"""Dense index builds that share a cache, are interrupted, or fail: no crash, no corrupt or orphaned files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerank.errors import DataFormatError, RerankError
from rerank.retrieval.index import DenseIndex, IndexConfig, build_faiss, embedding_cache_dir
from rerank.utils.files import file_lock

INDEX_FILES = ("manifest.json", "index.faiss", "embeddings.npy", "ids.json")

# A process encoding 30 documents in shards of 5 with a fake encoder that takes 0.3 s a shard (vectors from the text's
# hash): slow enough for a second process started after its first shard to find the work under way.
WORKER = """
import hashlib, json, sys, time
from pathlib import Path
import numpy as np
from rerank.retrieval.index import encode_corpus
from rerank.types import Document

work, started, out = map(Path, sys.argv[1:4])


class SlowEncoder:
    name_or_path = "fake"
    dim = 8
    encoded = 0

    def encode_numpy(self, texts, side, batch_size, bar=None, pool=None):
        started.touch()
        time.sleep(0.3)
        self.encoded += len(texts)
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        return np.stack([np.random.default_rng(s).normal(size=8) for s in seeds]).astype(np.float32)


enc = SlowEncoder()
docs = [Document(f"d{i}", f"text {i}") for i in range(30)]
res = encode_corpus(enc, docs, work, {"k": 1}, shard_size=5, progress=False)
out.write_text(json.dumps({"encoded": enc.encoded, "ids": res.ids, "emb": np.asarray(res.embeddings).tolist()}))
"""


def test_concurrent_builds_on_one_cache_entry_encode_once(tmp_path: Path) -> None:
    """Two builds of one model and corpus started a moment apart: the second crashed (the first deleted the shards
    it was reading; both wrote one fixed temporary file); now it waits for the first and reads its embeddings."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    work = tmp_path / "cache" / "entry"
    started = tmp_path / "a-started"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(name: str, flag: Path) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(script), str(work), str(flag), str(tmp_path / f"{name}.json")],
                                env=env, stderr=subprocess.PIPE, text=True)

    a = start("a", started)
    deadline = time.monotonic() + 30
    while not started.exists() and a.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), a.communicate()[1]
    b = start("b", tmp_path / "b-started")
    errs = [p.communicate(timeout=60)[1] for p in (a, b)]
    assert (a.returncode, b.returncode) == (0, 0), errs
    ra, rb = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b"))
    assert ra["encoded"] == 30 and rb["encoded"] == 0  # the second reused the first's result
    assert ra["ids"] == rb["ids"] == [f"d{i}" for i in range(30)]
    assert ra["emb"] == rb["emb"]
    assert sorted(p.name for p in work.iterdir()) == [".lock", "embeddings.npy", "ids.json", "manifest.json"]


def test_lock_file_deleted_by_its_holder_is_replaced_for_waiters(tmp_path: Path) -> None:
    """A failed build deletes its lock file while holding it: a process waiting on that file must then hold the lock
    of the file at the path, or it would run beside a third process that locked a new one."""
    import fcntl

    lock = tmp_path / "entry" / ".lock"
    held: list[bool] = []
    waited = threading.Event()

    def waiter() -> None:
        with file_lock(lock, on_wait=waited.set):
            fd = os.open(lock, os.O_RDONLY)  # a third party trying the lock now
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
            finally:
                os.close(fd)

    with file_lock(lock):
        t = threading.Thread(target=waiter)
        t.start()
        assert waited.wait(10)
        lock.unlink()
        lock.parent.rmdir()
    t.join(10)
    assert held == [True]


# ---------------------------------------------------------------------- saving over an existing index


def _index(n: int, seed: int) -> DenseIndex:
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    manifest = {"format": "rerank-dense-index", "num_docs": n, "dim": 8, "corpus_sha256": "c", "model_hash": "m",
                "model": "x"}
    return DenseIndex(build_faiss(x, IndexConfig()), [f"doc{i}" for i in range(n)], x, manifest)


def test_interrupted_save_keeps_the_old_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saving into an index folder deleted its manifest and overwrote files in place: an interruption left neither
    index. The new folder is now built beside and swapped in whole."""
    import faiss

    folder = tmp_path / "out" / "idx"
    _index(20, 0).save(folder)
    real = faiss.write_index

    def interrupted(index: faiss.Index, name: str) -> None:
        real(index, name)
        raise KeyboardInterrupt

    monkeypatch.setattr(faiss, "write_index", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _index(10, 1).save(folder)
    monkeypatch.setattr(faiss, "write_index", real)
    old = DenseIndex.load(folder)
    assert len(old.ids) == 20
    assert sorted(p.name for p in folder.iterdir()) == sorted(INDEX_FILES)
    assert [p.name for p in folder.parent.iterdir()] == ["idx"]  # no staging folder left behind

    source = tmp_path / "emb.npy"
    new = _index(10, 1)
    np.save(source, new.embeddings)
    mask = os.umask(0o022)
    try:
        new.save(folder, embeddings_source=source)
    finally:
        os.umask(mask)
    loaded = DenseIndex.load(folder)
    assert loaded.ids == new.ids
    np.testing.assert_array_equal(np.asarray(loaded.embeddings), new.embeddings)
    assert os.stat(folder / "embeddings.npy").st_ino == os.stat(source).st_ino  # linked, not copied
    assert folder.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == dict.fromkeys(INDEX_FILES, 0o644)


def test_save_refuses_a_folder_holding_other_files(tmp_path: Path) -> None:
    """Replacing the folder whole must not delete files that are not the index's."""
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(RerankError, match="notes.txt, not part of a dense index"):
        _index(5, 0).save(folder)
    assert (folder / "notes.txt").read_text() == "mine"
    (folder / "notes.txt").unlink()
    (folder / ".index.faiss.tmp").write_text("stray")  # left by an interrupted save of an earlier version
    _index(5, 0).save(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(INDEX_FILES)


def test_index_cli_refuses_a_folder_holding_other_files_before_loading(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from rerank.cli import main

    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    code = main(["index", "--model", str(tmp_path / "no-such-model"), "--dataset", str(tmp_path / "no-such-data"),
                 "--output", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "notes.txt, not part of a dense index" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------- failed builds leave no cache entry


def _corpus(root: Path, lines: list[str]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    (root / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n', encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("q\td0\t1\n", encoding="utf-8")
    return root


GOOD = [json.dumps({"_id": f"d{i}", "text": f"document number {i}"}) for i in range(6)]


@pytest.mark.parametrize(("lines", "error"), [
    (GOOD[:1] + ["{not json"] + GOOD[1:], "corpus.jsonl:2: invalid JSON"),  # before any shard
    (GOOD + ["{not json"], "corpus.jsonl:7: invalid JSON"),  # after three shards
    (GOOD + [GOOD[2]], "corpus.jsonl:7: duplicate document id 'd2' .first at line 3"),
])
def test_failed_build_leaves_no_cache_entry(tiny_st_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            lines: list[str], error: str) -> None:
    """A malformed corpus left ``embeddings/<key>/partial.json`` and ``shards/``, never reused: fixing the corpus
    changes its hash, hence the key."""
    from rerank.data.datasets import Dataset
    from rerank.retrieval.dense import BiEncoder
    from rerank.retrieval.index import doc_encoding_key, encode_corpus_cached

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    ds = Dataset(_corpus(tmp_path / "data", lines))
    enc = BiEncoder.load(tiny_st_dir, device="cpu")
    with pytest.raises(DataFormatError, match=error):
        encode_corpus_cached(enc, ds, shard_size=2, progress=False)
    assert not embedding_cache_dir(doc_encoding_key(enc, ds.corpus_hash)).exists()
    assert list((tmp_path / "cache" / "embeddings").iterdir()) == []


def test_build_interrupted_before_any_shard_leaves_no_entry_after_one_is_resumable(
    tiny_st_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to resume, nothing kept; once a shard is written the entry stays for the next run to resume."""
    from rerank.data.datasets import Dataset
    from rerank.retrieval.dense import BiEncoder
    from rerank.retrieval.index import doc_encoding_key, encode_corpus_cached

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    ds = Dataset(_corpus(tmp_path / "data", GOOD))
    enc = BiEncoder.load(tiny_st_dir, device="cpu")
    entry = embedding_cache_dir(doc_encoding_key(enc, ds.corpus_hash))
    real = enc.encode_numpy
    calls: list[int] = []

    def fail_at(n: int) -> Callable[..., np.ndarray]:
        def encode(texts: list[str], side: str, *a: Any, **k: Any) -> np.ndarray:
            calls.append(len(texts))
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(texts, side, *a, **k)
        return encode

    enc.encode_numpy = fail_at(1)  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        encode_corpus_cached(enc, ds, shard_size=2, progress=False)
    assert not entry.exists()
    calls.clear()
    enc.encode_numpy = fail_at(2)  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        encode_corpus_cached(enc, ds, shard_size=2, progress=False)
    assert [p.name for p in (entry / "shards").iterdir()] == ["000000.npy"]
    enc.encode_numpy = real  # type: ignore[method-assign]
    assert encode_corpus_cached(enc, ds, shard_size=2, progress=False).manifest["resumed_docs"] == 2
