"""PyseriniBM25 (Lucene via pyserini 0.25.0 on Java 17): install errors, index cache, ranking, SciFact reproduction."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import rerank.retrieval.pyserini as ps
from rerank.cli import main as cli_main
from rerank.data.datasets import Dataset
from rerank.errors import ConfigError
from rerank.retrieval import build_retriever
from rerank.types import Query, sort_ranking

PYSERINI_SCIFACT_NDCG10 = 0.6789  # pyserini BM25 flat, k1=0.9 b=0.4 (../shared/data/README.md)

DOCS = [
    {"_id": "d1", "title": "Zebra facts", "text": "striped animals of the savanna"},
    {"_id": "d2", "title": "", "text": "loyal dogs are running in the park"},
    {"_id": "d3", "title": "", "text": "loyal dogs are running in the park"},
    {"_id": "d4", "title": "", "text": "the cat sat on the mat"},
    {"_id": "d5", "title": "", "text": "a quiet library with old books"},
]


def _have_pyserini() -> bool:
    return importlib.util.find_spec("pyserini") is not None and ps._java_executable() is not None


needs_pyserini = pytest.mark.skipif(
    not _have_pyserini(), reason="pyserini extra or Java missing: pip install 'rerank[pyserini]' and a Java 11+ JRE"
)


def write_beir(root: Path, docs: list[dict]) -> Dataset:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "zebra"}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return Dataset(root)


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("RERANK_CACHE", str(root))
    return root


@pytest.fixture()
def tiny(tmp_path: Path, cache: Path) -> Dataset:
    return write_beir(tmp_path / "tiny", DOCS)


def test_unknown_option_is_an_error_naming_it(tiny: Dataset) -> None:
    with pytest.raises(ConfigError, match="'k3'"):
        build_retriever("pyserini", tiny, k3=1.2)
    with pytest.raises(ConfigError, match="threads must be"):
        build_retriever("pyserini", tiny, threads=0)


def test_missing_pyserini_is_a_clear_error(tiny: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyserini" else real(name, *a))
    with pytest.raises(ConfigError, match=r"rerank\[pyserini\]"):
        build_retriever("pyserini", tiny)


def test_missing_or_old_java_is_a_clear_error(tiny: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "pyserini" else real(name, *a))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(ps.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs Java 11"):
        build_retriever("pyserini", tiny)
    monkeypatch.setattr(ps, "_java_executable", lambda: "/opt/jdk8/bin/java")
    monkeypatch.setattr(ps, "_java_major", lambda java: 8)
    with pytest.raises(ConfigError, match="is Java 8"):
        build_retriever("pyserini", tiny)


def test_java_version_parsing() -> None:
    java = ps._java_executable()
    if java is None:
        pytest.skip("no Java on this machine")
    assert ps._java_major(java) >= 11


@needs_pyserini
def test_lucene_ranking_and_index_cache(
    tiny: Dataset, cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rerank.retrieval.pyserini")
    r = build_retriever("pyserini", tiny, show_progress=False)
    assert not r.cache_hit and "cache miss" in caplog.text
    assert [p.name for p in (cache / "pyserini").iterdir()] == [r.cache_path.name]  # no temp dir left behind
    queries = {"z": Query("z", "zebra"), "t": Query("t", "facts"), "d": Query("d", "loyal dogs"),
               "none": Query("none", "unicorn")}
    run = r.retrieve(queries, k=1000)  # k is capped at the corpus size
    assert [d for d, _ in run["z"]] == ["d1"]
    assert [d for d, _ in run["t"]] == ["d1"]  # title is indexed
    assert {d for d, _ in run["d"]} == {"d2", "d3"} and run["none"] == []
    assert all(lst == sort_ranking(lst) for lst in run.values())

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the Lucene index was rebuilt despite a cache entry")

    monkeypatch.setattr(ps, "_build", no_rebuild)
    caplog.clear()
    r2 = build_retriever("pyserini", Dataset(tiny.root), show_progress=False, k1=1.5, b=0.9, threads=2)
    assert r2.cache_hit and "cache hit" in caplog.text and r2.cache_path == r.cache_path  # k1, b apply at search
    run2 = r2.retrieve(queries, k=10)
    assert [d for d, _ in run2["z"]] == ["d1"] and run2["d"][0][1] != run["d"][0][1]
    assert r2.describe()["config"] == {"k1": 1.5, "b": 0.9, "include_title": True, "threads": 2,
                                       "show_progress": False}


@needs_pyserini
def test_include_title_false_builds_another_index(tiny: Dataset) -> None:
    r = build_retriever("pyserini", tiny, show_progress=False, include_title=False)
    assert not r.cache_hit
    assert r.retrieve({"t": Query("t", "facts")}, 5)["t"] == []
    assert r.retrieve({"t": "facts"}, np.int64(5)) == {"t": []}  # the forms every retriever takes (retrieve_args)
    with pytest.raises(TypeError, match="k .the retrieval depth. must be an integer"):
        r.retrieve({"t": "facts"}, 5.0)


@needs_pyserini
@pytest.mark.shared_data
def test_scifact_ndcg10_matches_pyserini_reference(scifact_dir: Path, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "out"
    assert cli_main(["eval", "--dataset", str(scifact_dir), "--retriever", "pyserini", "--depth", "100",
                     "--output", str(out), "--retriever-set", "show_progress=false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_queries"] == 300
    assert abs(metrics["metrics"]["nDCG@10"] - PYSERINI_SCIFACT_NDCG10) < 0.01, metrics["metrics"]
