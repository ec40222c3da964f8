"""Audit s38 / dense: damaged or stale index folders, empty documents, hybrid depth, conflicting index options."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerank.config import from_dict
from rerank.data.datasets import Dataset
from rerank.errors import ConfigError, RerankError
from rerank.retrieval.dense import DenseConfig, DenseRetriever, _encoder_overrides
from rerank.retrieval.index import DenseIndex, IndexConfig, build_faiss

DIM = 8
IDS = [f"d{i}" for i in range(6)]
ENCODER = {"pooling": "mean", "normalize": False, "query_prefix": "", "doc_prefix": "", "max_query_tokens": 256,
           "max_doc_tokens": 256, "lowercase": False, "dtype": "float32", "title_sep": " "}


def _manifest(**changes: Any) -> dict[str, Any]:
    return {"format": "rerank-dense-index", "version": 1, "model": "/m/st", "model_hash": "a" * 64,
            "corpus_sha256": "b" * 64, "num_docs": len(IDS), "dim": DIM, "metric": "inner_product",
            "encoder": dict(ENCODER), "index_type": "flat", "index_params": {}, **changes}


@pytest.fixture
def saved_index(tmp_path: Path) -> Path:
    """A small flat index folder written without a model (random vectors, a manifest like `rerank index`'s)."""
    emb = np.random.default_rng(0).normal(size=(len(IDS), DIM)).astype(np.float32)
    return DenseIndex(build_faiss(emb, IndexConfig()), IDS, emb, _manifest()).save(tmp_path / "idx")


def _load_error(path: Path, **kwargs: Any) -> str:
    with pytest.raises(RerankError) as info:
        DenseIndex.load(path, dataset="/data/beir", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _command(path: Path, model: str = "/m/st") -> str:
    return f"`rerank index --model {model} --dataset /data/beir --output {path} --pooling mean"


@pytest.mark.parametrize("name, damage, said", [
    ("index.faiss", b"garbage", "not recognized"),
    ("index.faiss", None, "read error"),  # truncated: what an interrupted copy leaves
    ("ids.json", b'["d0",\n', "damaged"),
    ("embeddings.npy", None, "damaged or truncated"),
])
def test_damaged_index_file_is_one_line_naming_it_and_the_rebuild(saved_index: Path, name: str,
                                                                  damage: bytes | None, said: str) -> None:
    """A damaged index.faiss was a FAISS traceback; a damaged ids.json / embeddings.npy a line naming no file."""
    target = saved_index / name
    target.write_bytes(damage if damage is not None else target.read_bytes()[: target.stat().st_size // 2])
    message = _load_error(saved_index)
    assert message.startswith(f"{target}: ") and said in message
    assert _command(saved_index) in message


@pytest.mark.parametrize("key", ["num_docs", "dim", "corpus_sha256", "model_hash"])
def test_manifest_lacking_a_key_is_one_line_not_a_key_error(saved_index: Path, key: str) -> None:
    mpath = saved_index / "manifest.json"
    manifest = json.loads(mpath.read_text())
    del manifest[key]
    mpath.write_text(json.dumps(manifest))
    message = _load_error(saved_index)
    assert message.startswith(f"{mpath}: no {key} (written by another rerank version?)")
    assert _command(saved_index) in message


def test_manifest_of_a_newer_version_is_refused(saved_index: Path) -> None:
    mpath = saved_index / "manifest.json"
    mpath.write_text(json.dumps(_manifest(version=99)))
    message = _load_error(saved_index)
    assert message.startswith(f"{mpath}: format version 99") and "upgrade rerank" in message
    assert _command(saved_index) in message


def test_missing_file_names_the_rebuild_command_with_the_index_settings(saved_index: Path) -> None:
    (saved_index / "ids.json").unlink()
    message = _load_error(saved_index)
    assert ("--pooling mean --no-normalize --max-query-tokens 256 --max-doc-tokens 256 --dtype float32`"
            in message)
    assert _command(saved_index) in message


def test_stale_index_errors_name_the_rebuild_command(saved_index: Path) -> None:
    """Corpus changed or another model: the message said only "rebuild the index" (and printed ``e.g. []``)."""
    added = _load_error(saved_index, corpus_ids=[*IDS, "dnew"])
    assert "1 corpus ids missing from the index, e.g. ['dnew']" in added and "e.g. []" not in added
    assert "not in the corpus" not in added and _command(saved_index) in added
    assert _command(saved_index) in _load_error(saved_index, corpus_sha256="c" * 64)
    other = _load_error(saved_index, model_hash="c" * 64, model="/m/st2")
    assert "search with the model it was built with" in other and _command(saved_index, "/m/st2") in other


def test_search_dtype_other_than_the_index_names_dtype_not_another_model(saved_index: Path) -> None:
    cfg = DenseConfig(index=str(saved_index), dtype="bfloat16")
    with pytest.raises(RerankError, match=r"built with dtype='float32', but dtype='bfloat16' was given; drop the "
                                          r"option, or rebuild the index with it: `rerank index .*--dtype bfloat16`"):
        _encoder_overrides(cfg, _manifest(), "/m/st", "/data/beir")
    assert _encoder_overrides(DenseConfig(index=str(saved_index), dtype="float32"), _manifest())["pooling"] == "mean"


def test_cache_with_an_index_names_both_things_to_drop() -> None:
    """It read "drop the index, or drop it"."""
    with pytest.raises(ConfigError, match=r"drop cache=False, or drop the index to encode the corpus$"):
        from_dict(DenseConfig, {"index": "idx", "cache": False})
    with pytest.raises(ConfigError, match=r"drop cache=False and shard_size=10, or drop the index"):
        from_dict(DenseConfig, {"index": "idx", "cache": False, "shard_size": 10})


def _blank_dataset(tmp_path: Path) -> Dataset:
    root = tmp_path / "ds"
    (root / "qrels").mkdir(parents=True)
    docs = [("d1", "zebra facts", "striped animals"), ("d2", "", "loyal dogs running"), ("d3", "", "a zebra"),
            ("dempty", "", ""), ("dws", " ", "   ")]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                                               for i, t, x in docs))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "zebra"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return Dataset(root)


def test_dense_retrieval_never_returns_empty_documents(tiny_st_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """With a dot-product model the empty documents ranked first for every query; BM25 never returns them."""
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    ds = _blank_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="rerank.retrieval.dense"):
        retriever = DenseRetriever.from_dataset(ds, model=str(tiny_st_dir), progress=False)
    assert sum("2 documents are empty" in r.getMessage() for r in caplog.records) == 1
    assert [d for d, _ in retriever.retrieve({"q1": "zebra"}, 10)["q1"]] != []
    assert {d for d, _ in retriever.retrieve({"q1": "zebra"}, 10)["q1"]} == {"d1", "d2", "d3"}
    assert len(retriever.retrieve({"q1": "zebra"}, 2)["q1"]) == 2  # k results remain once they are dropped
    assert len(retriever.index.ids) == 5  # the index keeps them: existing indexes keep working


def test_hybrid_depth_below_the_retrieval_depth_is_refused(tmp_path: Path, run_cli: Any) -> None:
    """It was silently raised to the retrieval depth: runs with and without it were byte-identical."""
    from rerank.retrieval.hybrid import HybridConfig, HybridRetriever

    retriever = HybridRetriever(None, None, HybridConfig(depth=5))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^retriever option depth=5 is below the 10 documents retrieved .*give "
                                          r"depth >= 10 to fuse deeper lists, or drop it$"):
        retriever.retrieve({"q1": "zebra"}, 10)
    code, _, err = run_cli("eval", "--dataset", str(tmp_path / "nope"), "--retriever", "hybrid", "--retriever-set",
                           "depth=5", "--output", str(tmp_path / "out"))
    assert code == 2 and "depth=5 is below the 1000 documents retrieved" in err  # before any work
    code, _, err = run_cli("eval", "--dataset", str(tmp_path / "nope"), "--retriever", "hybrid", "--retriever-set",
                           "depth=5", "--depth", "20", "--output", str(tmp_path / "out"))
    assert code == 2 and "depth=5 is below the 20 documents retrieved" in err


def test_eval_index_conflicting_with_retriever_set_index_is_refused(tmp_path: Path, run_cli: Any) -> None:
    """--index silently won over --retriever-set index=, while the same conflict for model is refused."""
    (tmp_path / "a").mkdir()
    code, _, err = run_cli("eval", "--dataset", str(tmp_path / "nope"), "--retriever", "dense", "--index",
                           str(tmp_path / "a"), "--retriever-set", f"index={tmp_path / 'b'}", "--output",
                           str(tmp_path / "out"))
    assert code == 2 and f"--index {tmp_path / 'a'} conflicts with retriever option index={tmp_path / 'b'}" in err


def test_no_cache_build_whose_work_folder_another_build_removed_is_one_line(
        tiny_st_dir: Path, tiny_ds: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Any) -> None:
    """Two `rerank index --no-cache` into one folder: the one that waited read OUTPUT/.encoding, which the first
    removed when it swapped its index in, and failed with `[Errno 2] ... .encoding/embeddings.npy`."""
    import rerank.retrieval.index as index_module

    real = index_module.encode_corpus_cached
    out = tmp_path / "idx"

    def then_the_other_build_finishes(*args: Any, **kwargs: Any) -> Any:
        emb = real(*args, **kwargs)
        (out / ".encoding" / "embeddings.npy").unlink()  # what the other build's swap of OUTPUT does
        return emb

    monkeypatch.setattr(index_module, "encode_corpus_cached", then_the_other_build_finishes)
    code, _, err = run_cli("index", "--model", str(tiny_st_dir), "--dataset", str(tiny_ds.root), "--output", str(out),
                           "--no-cache", "--no-progress")
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith(f"error: {out}: another `rerank index` wrote this folder meanwhile")
    assert "(embeddings.npy)" in line


def test_research_doc_lists_every_dense_and_hybrid_retriever_option() -> None:
    """docs/research.md gave `rerank index`'s --ef-search / --nprobe as `rerank eval` options and documented none of
    the search-time keys; its table now lists each HybridConfig (hence DenseConfig) key, and only those."""
    import dataclasses
    import re

    from rerank.retrieval.hybrid import HybridConfig

    doc = (Path(__file__).parent.parent / "docs" / "research.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if re.match(r"\| `\w+`.*\| (dense, hybrid|hybrid) \|", line)]
    keys = {k for row in rows for k in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert keys == {f.name for f in dataclasses.fields(HybridConfig)}
    assert "--retriever-set ef_search=N" in doc and '--retriever-set "query_prefix=query: "' in doc
