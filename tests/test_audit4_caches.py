"""The BM25 and embedding caches in a folder shared by people and jobs: damaged entries are rebuilt with a warning
naming them, an entry without its marker is replaced, a group-writable cache stays writable by the group."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerank.data.datasets import Dataset
from rerank.errors import ConfigError
from rerank.retrieval.bm25 import BM25Retriever
from rerank.retrieval.index import encode_corpus
from rerank.types import Document, Query
from rerank.utils import files
from rerank.utils.files import publish_dir, staged_dir, temp_dir, write_json
from tests.test_bm25 import write_beir

DOCS = [{"_id": f"d{i:02d}", "title": f"topic {i % 4}", "text": f"word{i} shared{i % 3} common text {i}"}
        for i in range(20)]
QUERIES = {f"q{i}": Query(f"q{i}", f"word{i} shared{i % 3}") for i in range(8)}
META = "rerank_meta.json"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("RERANK_CACHE", str(root))
    return root


@pytest.fixture
def corpus(tmp_path: Path, cache: Path) -> Dataset:
    return write_beir(tmp_path / "c", DOCS)


def _bm25(ds: Dataset) -> BM25Retriever:
    return BM25Retriever.from_dataset(Dataset(ds.root), show_progress=False)


def _run(r: BM25Retriever) -> dict[str, list[tuple[str, float]]]:
    return {q: list(ranking) for q, ranking in r.retrieve(QUERIES, 10).items()}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _rewrite(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(entry: Path) -> None:
        (entry / name).write_bytes(change((entry / name).read_bytes()))
    return damage


def _rotate(raw: bytes) -> bytes:
    ids = json.loads(raw)
    return json.dumps(ids[1:] + ids[:1]).encode()


BM25_DAMAGE = {
    "doc ids rotated": _rewrite("doc_ids.json", _rotate),  # same size: only the hash tells
    "doc ids empty": _rewrite("doc_ids.json", lambda b: b""),
    "doc ids truncated": _rewrite("doc_ids.json", lambda b: b[: len(b) // 2]),
    "indptr empty": _rewrite("indptr.csc.index.npy", lambda b: b""),
    "data truncated": _rewrite("data.csc.index.npy", lambda b: b[: len(b) - 8]),
    "vocab empty": _rewrite("vocab.index.json", lambda b: b""),
    "params missing": lambda e: (e / "params.index.json").unlink(),
    "meta garbage": _rewrite(META, lambda b: b"not json{"),
    "meta of another corpus": _rewrite(META, lambda b: b.replace(b'"corpus_sha256": "', b'"corpus_sha256": "0')),
}


@pytest.mark.parametrize("damage", list(BM25_DAMAGE))
def test_damaged_bm25_entry_is_rebuilt_with_one_warning_naming_it(
        corpus: Dataset, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    """Rotated doc ids gave exit 0 and a wrong run (nDCG 0.6567 -> 0); an empty .npy an EOFError traceback; an empty
    doc_ids.json 'Expecting value' naming no file. Each is rebuilt, once, with a warning naming the entry."""
    first = _bm25(corpus)
    expected = _run(first)
    BM25_DAMAGE[damage](first.cache_path)
    caplog.set_level(logging.WARNING)
    second = _bm25(corpus)
    assert not second.cache_hit and _run(second) == expected
    [warning] = _warnings(caplog)
    assert str(first.cache_path) in warning and "damaged" in warning and "rebuilding" in warning
    caplog.clear()
    third = _bm25(corpus)
    assert third.cache_hit and _run(third) == expected and not _warnings(caplog)
    assert sorted(p.name for p in first.cache_path.parent.iterdir()) == [first.cache_path.name]


def test_bm25_entry_of_an_older_version_still_loads(corpus: Dataset, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A meta written before sizes and the doc ids' hash were recorded is a cache hit (no rebuild); damage that its
    files show (an empty .npy) is still rebuilt."""
    first = _bm25(corpus)
    meta_path = first.cache_path / META
    meta = json.loads(meta_path.read_text())
    assert set(meta["files"]) >= {"doc_ids.json", "data.csc.index.npy", "vocab.index.json"}
    assert meta["doc_ids_sha256"] == hashlib.sha256((first.cache_path / "doc_ids.json").read_bytes()).hexdigest()
    del meta["files"], meta["doc_ids_sha256"]
    meta_path.write_text(json.dumps(meta))
    caplog.set_level(logging.WARNING)
    again = _bm25(corpus)
    assert again.cache_hit and _run(again) == _run(first) and not _warnings(caplog)
    (first.cache_path / "indptr.csc.index.npy").write_bytes(b"")
    rebuilt = _bm25(corpus)
    assert not rebuilt.cache_hit and _run(rebuilt) == _run(first) and len(_warnings(caplog)) == 1


def _drop_meta(entry: Path) -> None:
    (entry / META).unlink()


def _killed_partial(entry: Path) -> None:
    for name in (META, "data.csc.index.npy", "indices.csc.index.npy"):
        (entry / name).unlink()


def _dangling_link(entry: Path) -> None:
    moved = entry.parent.parent / "moved"
    entry.rename(moved)
    entry.symlink_to(moved, target_is_directory=True)
    shutil.rmtree(moved)


@pytest.mark.parametrize("leave", [_drop_meta, _killed_partial, _dangling_link], ids=lambda f: f.__name__[1:])
def test_bm25_entry_without_its_marker_is_replaced(corpus: Dataset, leave: Callable[[Path], None]) -> None:
    """Every later run failed with '[Errno 39] Directory not empty: …/bm25/.<hash>.<pid>-….tmp' (a dangling link:
    '[Errno 20] Not a directory'), and the entry was never rebuilt."""
    first = _bm25(corpus)
    entry = first.cache_path
    leave(entry)
    second = _bm25(corpus)
    assert not second.cache_hit and _run(second) == _run(first)
    assert (entry / META).is_file() and not entry.is_symlink()
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # no temp, old or lock leftovers
    assert _bm25(corpus).cache_hit


def _staged(parent: Path, name: str, content: str, marker: str = "done") -> Path:
    tmp = temp_dir(parent, prefix=".entry.")
    (tmp / "data").write_text(content)
    (tmp / marker).write_text("")
    return tmp


def test_publish_dir_keeps_a_complete_copy_and_replaces_an_incomplete_one(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    target.mkdir()
    (target / "data").write_text("half")  # a killed writer's: no marker
    assert publish_dir(_staged(tmp_path, "a", "a"), target, "done")
    assert (target / "data").read_text() == "a"
    assert not publish_dir(_staged(tmp_path, "b", "b"), target, "done")  # written concurrently: that copy kept
    assert (target / "data").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_concurrent_publishers_over_an_incomplete_entry_keep_exactly_one_copy(tmp_path: Path) -> None:
    """Six writers finish at once over a folder a killed run left: one replaces it, the others keep that copy (none
    fails on a name another one's replacement has just moved aside), in each of five rounds."""
    for round_ in range(5):
        parent = tmp_path / str(round_)
        target = parent / "entry"
        target.mkdir(parents=True)
        (target / "data").write_text("half")
        staged = [_staged(parent, str(i), str(i)) for i in range(6)]
        barrier = threading.Barrier(len(staged))
        results: dict[int, bool | BaseException] = {}

        def publish(i: int) -> None:
            barrier.wait()
            try:
                results[i] = publish_dir(staged[i], target, "done")
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                results[i] = e

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(len(staged))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results.values(), key=str) == [False] * 5 + [True], results
        winner = next(i for i, won in results.items() if won is True)
        assert (target / "data").read_text() == str(winner) and (target / "done").is_file()
        assert sorted(p.name for p in parent.iterdir()) == ["entry"]


def test_staged_dir_replaces_a_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "model").symlink_to(tmp_path / "gone", target_is_directory=True)
    with staged_dir(tmp_path / "model") as d:
        (d / "w").write_text("x")
    assert (tmp_path / "model" / "w").read_text() == "x" and not (tmp_path / "model").is_symlink()


class FakeEncoder:
    """Vectors from each text's hash; counts what it encodes."""

    name_or_path = "fake"
    dim = 4

    def __init__(self) -> None:
        self.encoded = 0

    def encode_numpy(self, texts: list[str], side: str, batch_size: int, bar: Any = None, pool: Any = None) -> Any:
        self.encoded += len(texts)
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        return np.stack([np.random.default_rng(s).normal(size=4) for s in seeds]).astype(np.float32)


EMB_DOCS = [Document(f"d{i:02d}", f"text {i}") for i in range(10)]


def _encode(work: Path) -> tuple[int, list[str], np.ndarray]:
    enc = FakeEncoder()
    res = encode_corpus(enc, EMB_DOCS, work, {"k": 1}, shard_size=4, progress=False)
    return enc.encoded, res.ids, np.array(res.embeddings)  # a copy: the test truncates the mapped file


def _json_edit(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def damage(work: Path) -> None:
        (work / name).write_text(json.dumps(change(json.loads((work / name).read_text()))))
    return damage


EMB_DAMAGE = {
    "ids reordered": _json_edit("ids.json", lambda ids: sorted(ids, reverse=True)),  # same size: only the hash tells
    "ids truncated": _rewrite("ids.json", lambda b: b[: len(b) // 2]),
    "ids missing": lambda w: (w / "ids.json").unlink(),
    "manifest garbage": _rewrite("manifest.json", lambda b: b"not json{"),
    "manifest empty": _rewrite("manifest.json", lambda b: b""),
    "embeddings empty": _rewrite("embeddings.npy", lambda b: b""),
    "embeddings truncated": _rewrite("embeddings.npy", lambda b: b[: len(b) // 2]),
    "embeddings missing": lambda w: (w / "embeddings.npy").unlink(),
}


@pytest.mark.parametrize("damage", list(EMB_DAMAGE))
def test_damaged_embeddings_are_encoded_again_with_one_warning_naming_them(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    """Reordered ids gave a silently different run; an empty embeddings.npy an EOFError traceback; a garbage
    manifest 'Expecting value' naming no file. Each is encoded again, once, with a warning naming the folder."""
    work = tmp_path / "cache" / "embeddings" / "key"
    encoded, ids, emb = _encode(work)
    assert encoded == len(EMB_DOCS)
    EMB_DAMAGE[damage](work)
    caplog.set_level(logging.WARNING)
    encoded, ids2, emb2 = _encode(work)
    assert encoded == len(EMB_DOCS) and ids2 == ids and np.array_equal(emb2, emb)
    [warning] = _warnings(caplog)
    assert str(work) in warning and "damaged" in warning
    caplog.clear()
    assert _encode(work)[0] == 0 and not _warnings(caplog)


def test_embeddings_of_an_older_version_still_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    work = tmp_path / "work"
    _, ids, emb = _encode(work)
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["files"]["ids.json"] == (work / "ids.json").stat().st_size
    del manifest["files"], manifest["ids_sha256"]
    (work / "manifest.json").write_text(json.dumps(manifest))
    caplog.set_level(logging.WARNING)
    encoded, ids2, emb2 = _encode(work)
    assert encoded == 0 and ids2 == ids and np.array_equal(emb2, emb) and not _warnings(caplog)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_entries_in_a_group_writable_cache_are_group_writable(corpus: Dataset, cache: Path, tmp_path: Path,
                                                              umask_022: None) -> None:
    """With umask 022 in a 2775 cache root, entries were 755/644: a group member could not add an entry to bm25/
    or replace a damaged one. Outputs outside the cache keep the umask's modes, in a group-writable folder too."""
    cache.mkdir()
    cache.chmod(0o2775)
    entry = _bm25(corpus).cache_path
    _encode(cache / "embeddings" / "key")
    made = [cache / "bm25", entry, *entry.iterdir(), cache / "embeddings", *(cache / "embeddings").rglob("*")]
    assert all(_mode(p) & 0o020 for p in made), {str(p): oct(_mode(p)) for p in made}
    assert all(_mode(p) & stat.S_ISGID for p in made if p.is_dir())  # the group's ownership is inherited
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o2775)
    write_json({"a": 1}, out / "metrics.json")
    with staged_dir(out / "model") as d:
        (d / "w").write_text("x")
    assert (_mode(out / "metrics.json"), _mode(out / "model") & 0o777, _mode(out / "model" / "w")) == (
        0o644, 0o755, 0o644)


def test_entries_in_a_private_cache_follow_the_umask(corpus: Dataset, cache: Path, umask_022: None) -> None:
    entry = _bm25(corpus).cache_path
    assert _mode(entry) == 0o755 and _mode(entry / META) == 0o644 and _mode(cache / "bm25") == 0o755


def test_permission_denied_names_the_entry_and_the_fix(corpus: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group member whose umask left bm25/ 755 got 'permission denied: …/bm25/.<hash>.<pid>-….tmp', a temporary
    name and no fix."""
    def denied(prefix: str = "", suffix: str = "", dir: Any = None) -> str:
        raise PermissionError(13, "Permission denied", os.path.join(dir, f"{prefix}x{suffix}"))

    monkeypatch.setattr(files.tempfile, "mkdtemp", denied)
    with pytest.raises(ConfigError) as info:
        _bm25(corpus)
    message = str(info.value)
    assert "bm25" in message and corpus.corpus_hash in message and ".tmp" not in message
    assert "chmod -R g+w" in message and "umask 002" in message and "RERANK_CACHE" in message


def test_damaged_entry_that_cannot_be_replaced_is_one_line_saying_delete_it(
        corpus: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _bm25(corpus).cache_path
    (entry / "doc_ids.json").write_bytes(b"")
    real_unlink = Path.unlink

    def denied(self: Path, missing_ok: bool = False) -> None:
        if self.name == META:
            raise PermissionError(13, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", denied)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(entry))} is damaged \(doc_ids.json is 0 bytes.*delete it$"):
        _bm25(corpus)


def test_cache_docs_describe_the_layout_sharing_and_cleanup() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"
    text = docs.read_text(encoding="utf-8")
    section = text[text.index("## The cache folder"):]
    for name in ("bm25/", "embeddings/", "gguf/", "gguf-tokenizer/", "llm-calls.sqlite", "leaderboard", "umask 002",
                 "chmod", "-mtime"):
        assert name in section, name
