"""BM25Retriever (bm25s): strict options, on-disk index cache, ranking conventions, SciFact reproduction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import bm25s
import numpy as np
import pytest

from rerank.cli import main as cli_main
from rerank.data.datasets import Dataset
from rerank.errors import ConfigError, DataFormatError
from rerank.retrieval import build_retriever
from rerank.retrieval.bm25 import BM25Config, BM25Retriever, index_cache_path
from rerank.types import ArrayRanking, Query, sort_ranking

PYSERINI_SCIFACT_NDCG10 = 0.6789  # pyserini BM25 flat, k1=0.9 b=0.4 (../shared/data/README.md)

DOCS = [
    {"_id": "d1", "title": "Zebra facts", "text": "striped animals of the savanna"},
    {"_id": "d2", "title": "", "text": "loyal dogs are running in the park"},
    {"_id": "d3", "title": "", "text": "loyal dogs are running in the park"},
    {"_id": "d4", "title": "", "text": "the cat sat on the mat"},
    {"_id": "d5", "title": "", "text": "a quiet library with old books"},
]


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


def search(ds: Dataset, text: str, k: int = 10, **options) -> list[tuple[str, float]]:
    r = build_retriever("bm25", ds, show_progress=False, **options)
    return r.retrieve({"q": Query("q", text)}, k)["q"]


def test_unknown_option_is_an_error_naming_it(tiny: Dataset) -> None:
    with pytest.raises(ConfigError, match="'k3'"):
        build_retriever("bm25", tiny, k3=1.2)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"b": 1.5}, "b must be"), ({"k1": -1}, "k1 must be"), ({"stemmer": "klingon"}, "unknown stemmer"),
     ({"stopwords": "klingon"}, "klingon"), ({"method": "bm99"}, "method"), ({"n_threads": -2}, "n_threads")],
)
def test_bad_option_values_are_config_errors(tiny: Dataset, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_retriever("bm25", tiny, **options)


def test_term_match_ranks_first_and_non_matches_are_dropped(tiny: Dataset) -> None:
    assert search(tiny, "zebra")[0][0] == "d1"
    assert [d for d, _ in search(tiny, "zebra")] == ["d1"]
    assert search(tiny, "unicorn") == []
    assert search(tiny, "") == []


def test_ties_are_ordered_by_doc_id_descending_and_k_is_capped(tiny: Dataset) -> None:
    ranked = search(tiny, "loyal dogs", k=1000)
    assert [d for d, _ in ranked] == ["d3", "d2"]
    assert ranked[0][1] == ranked[1][1] > 0
    run = build_retriever("bm25", tiny, show_progress=False).retrieve(
        {"a": Query("a", "dogs zebra cat"), "b": Query("b", "park books")}, k=3
    )
    assert set(run) == {"a", "b"}
    for lst in run.values():
        assert lst == sort_ranking(lst) and len(lst) == 3  # 4 documents match "a", 3 match "b"


def test_depth_below_one_is_an_error(tiny: Dataset) -> None:
    r = build_retriever("bm25", tiny, show_progress=False)
    with pytest.raises(ConfigError, match="k must be >= 1"):
        r.retrieve({"q": Query("q", "zebra")}, 0)


def test_title_is_indexed_unless_disabled(tiny: Dataset) -> None:
    assert [d for d, _ in search(tiny, "facts")] == ["d1"]
    assert search(tiny, "facts", include_title=False) == []


def test_stemmer_and_stopwords_options(tiny: Dataset) -> None:
    assert [d for d, _ in search(tiny, "runs")] == ["d3", "d2"]  # english stemming: runs ~ running
    assert search(tiny, "runs", stemmer=None) == []
    assert [d for d, _ in search(tiny, "the")][0] == "d4"  # the only document with "the" twice
    assert len(search(tiny, "the")) == 4
    assert search(tiny, "the", stopwords="en") == []


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25l", "bm25+"])
def test_every_method_ranks_the_matching_document_first(tiny: Dataset, method: str) -> None:
    assert search(tiny, "zebra", method=method)[0][0] == "d1"


def test_k1_and_b_change_scores(tiny: Dataset) -> None:
    base = dict(search(tiny, "loyal dogs"))
    assert dict(search(tiny, "loyal dogs", k1=1.5)) != base
    assert dict(search(tiny, "loyal dogs", b=0.9)) != base


def test_threads_give_the_same_run(tiny: Dataset) -> None:
    queries = {f"q{i}": Query(f"q{i}", t) for i, t in enumerate(["zebra", "loyal dogs", "the cat", "old books"] * 5)}
    r0 = build_retriever("bm25", tiny, show_progress=False).retrieve(queries, 5)
    r2 = build_retriever("bm25", tiny, show_progress=False, n_threads=2).retrieve(queries, 5)
    assert r0 == r2


def test_show_progress_controls_bm25s_bars(tiny: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    build_retriever("bm25", tiny, show_progress=False).retrieve({"q": Query("q", "zebra")}, 3)
    assert capsys.readouterr().err == ""
    build_retriever("bm25", tiny, show_progress=True).retrieve({"q": Query("q", "zebra")}, 3)
    assert "BM25S Retrieve" in capsys.readouterr().err


def test_second_build_loads_the_cached_index(
    tiny: Dataset, cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rerank.retrieval.bm25")
    first = build_retriever("bm25", tiny, show_progress=False)
    assert not first.cache_hit and "cache miss" in caplog.text
    assert first.cache_path.parent == cache / "bm25" and first.cache_path.name.startswith(tiny.corpus_hash)
    assert [p.name for p in (cache / "bm25").iterdir()] == [first.cache_path.name]  # no temp dir left behind

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the index was rebuilt despite a cache entry")

    monkeypatch.setattr(bm25s.BM25, "index", no_rebuild)
    caplog.clear()
    second = build_retriever("bm25", Dataset(tiny.root), show_progress=False, n_threads=2)
    assert second.cache_hit and "cache hit" in caplog.text
    assert second.cache_path == first.cache_path  # retrieval-time options do not key the cache
    queries = {"q": Query("q", "loyal dogs zebra")}
    assert second.retrieve(queries, 5) == first.retrieve(queries, 5)
    desc = second.describe()
    assert desc["name"] == "bm25" and desc["cache_path"] == str(first.cache_path) and desc["config"]["k1"] == 0.9


def test_index_options_key_the_cache(tiny: Dataset) -> None:
    paths = {index_cache_path(tiny, BM25Config(**o)) for o in ({}, {"k1": 1.2}, {"b": 0.75}, {"stemmer": None},
                                                              {"stopwords": "en"}, {"include_title": False},
                                                              {"method": "atire"})}
    assert len(paths) == 7
    assert index_cache_path(tiny, BM25Config(n_threads=2, show_progress=False)) == index_cache_path(tiny, BM25Config())


def test_changed_corpus_misses_the_cache(tmp_path: Path, cache: Path) -> None:
    ds = write_beir(tmp_path / "a", DOCS)
    first = build_retriever("bm25", ds, show_progress=False)
    ds2 = write_beir(tmp_path / "a", DOCS + [{"_id": "d6", "title": "", "text": "zebra zebra"}])
    second = build_retriever("bm25", ds2, show_progress=False)
    assert not second.cache_hit and second.cache_path != first.cache_path
    assert second.retrieve({"q": Query("q", "zebra")}, 10)["q"][0][0] == "d6"


def test_failed_build_leaves_no_cache_entry(tiny: Dataset, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bm25s.BM25, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        BM25Retriever.from_dataset(tiny, show_progress=False)
    assert list((cache / "bm25").iterdir()) == []


def test_duplicate_doc_id_is_an_error(tmp_path: Path, cache: Path) -> None:
    ds = write_beir(tmp_path / "dup", DOCS + [{"_id": "d2", "title": "", "text": "again"}])
    with pytest.raises(DataFormatError, match="duplicate document id 'd2'"):
        build_retriever("bm25", ds, show_progress=False)


@pytest.mark.shared_data
def test_scifact_ndcg10_matches_pyserini(scifact_dir: Path, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "out"
    assert cli_main(["eval", "--dataset", str(scifact_dir), "--retriever", "bm25", "--output", str(out),
                     "--retriever-set", "show_progress=false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_queries"] == 300
    assert abs(metrics["metrics"]["nDCG@10"] - PYSERINI_SCIFACT_NDCG10) < 0.01, metrics["metrics"]
    assert metrics["first_stage"]["name"] == "bm25" and metrics["first_stage"]["cache_hit"] is False


@pytest.mark.parametrize("low", [0, -3])
def test_run_conversion_matches_sort_ranking_on_tie_heavy_arrays(low: int) -> None:
    rng = np.random.default_rng(low + 7)
    ids = [f"doc{i:03d}" for i in range(60)]
    r = BM25Retriever(None, ids, BM25Config(), Path("unused"), cache_hit=False)  # type: ignore[arg-type]
    docs = np.stack([rng.permutation(60)[:40] for _ in range(25)])
    scores = rng.integers(low, 4, size=docs.shape).astype(np.float32) / 2
    order = np.argsort(-scores, axis=1, kind="stable")  # bm25s' form: by score, ties in arbitrary (doc) order
    docs, scores = np.take_along_axis(docs, order, 1), np.take_along_axis(scores, order, 1)
    qids = [f"q{i}" for i in range(len(docs))]
    run = r._to_run(qids, docs, scores)
    for i, q in enumerate(qids):
        expected = sort_ranking([(ids[d], float(s)) for d, s in zip(docs[i], scores[i]) if s != 0])
        assert run[q] == expected


def test_array_ranking_reads_as_its_list() -> None:
    pairs = [("d3", 2.5), ("d1", 1.0), ("d2", 0.5)]
    r = ArrayRanking(np.asarray([d for d, _ in pairs], dtype=object), np.asarray([s for _, s in pairs], np.float32))
    assert len(r) == 3 and list(r) == pairs and r == pairs and pairs == r and r != pairs[:2]
    assert r[0] == ("d3", 2.5) and r[-1] == ("d2", 0.5) and r[1:] == pairs[1:] and r[:0] == []
    assert dict(r) == dict(pairs) and sort_ranking(r) == pairs
    with pytest.raises(ValueError, match="2 doc ids but 3 scores"):
        ArrayRanking(np.asarray(["a", "b"], dtype=object), np.zeros(3))
