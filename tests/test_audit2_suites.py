"""Audit fixes (suites and leaderboard): a row's retriever options beside a column's run, malformed BRIGHT subsets,
``--long-documents`` defaults, a suite's earlier results and up-front member checks, leaderboard names checked when
the config is read, result-folder collisions, measures left out of a suite's mean, and hints / docs that were wrong."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rerank.errors import ConfigError, DataFormatError
from rerank.eval.leaderboard import REL_LEVEL_FIX, load_config, run_leaderboard
from rerank.eval.pipeline import EvalConfig, warn_rel_level
from rerank.eval.suites import BRIGHT_LONG_SUBSETS, _render_summary, run_suite, suite_entries, summarize
from rerank.heads.base import Reranker
from rerank.heads.registry import register_reranker
from tests.test_suites import OverlapRetriever, _dl_folder, make_bright_fixture  # noqa: F401 - registers test-overlap

REPO = Path(__file__).resolve().parents[1]


class BrokenReranker(Reranker):
    """Fails to load, as a model folder with a broken config does."""

    method = "test-broken"

    def __init__(self, config: Any = None) -> None:
        raise ConfigError("test-broken: this reranker never loads")

    def score_candidates(self, query: Any, candidates: list[Any]) -> list[float]:  # pragma: no cover - never loads
        return []


register_reranker("test-broken", BrokenReranker)


def _lb(tmp_path: Path, rows: list[dict[str, Any]], columns: list[dict[str, Any]] | None = None) -> Path:
    cfg = {"name": "x", "columns": columns or [{"label": "a", "dataset": "a"}], "rows": rows}
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


# ---------------------------------------------------------------- leaderboard config


def test_retriever_options_beside_a_columns_run_are_refused(tmp_path: Path) -> None:
    """Finding 1: a column's ``runs`` replaced the row's BM25 k1=3 by the default run without a word."""
    columns = [{"label": "dl", "dataset": "dl", "runs": {"bm25": "bm25_top100.trec"}}, {"label": "sf", "dataset": "sf"}]
    tuned = {"name": "BM25 k1=3", "retriever": "bm25", "retriever_options": {"k1": 3.0}}
    with pytest.raises(ConfigError, match=r"row 'BM25 k1=3': retriever_options \(k1\) cannot act in column 'dl'") as e:
        load_config(_lb(tmp_path, [{"name": "BM25", "retriever": "bm25"}, tuned], columns))
    assert "\n" not in str(e.value)
    cfg, _ = load_config(_lb(tmp_path, [{"name": "BM25", "retriever": "bm25"}, {**tuned, "columns": ["sf"]}], columns))
    assert [r.name for r in cfg.rows] == ["BM25", "BM25 k1=3"]  # the row at default settings reads the run


@pytest.mark.parametrize(("row", "message"), [
    ({"retriever": "bm26"}, r"row 'r': unknown retriever 'bm26'"),
    ({"retriever": "bm25", "retriever_options": {"k9": 1}}, r"row 'r': retriever_options of bm25: unknown key 'k9'"),
    ({"retriever": "bm25", "reranker": "crossencoder"}, r"row 'r': unknown reranker 'crossencoder'"),
    ({"retriever": "bm25", "reranker": "test-counting", "reranker_options": {"max_lenght": 8}},
     r"row 'r': test-counting options: unknown key 'max_lenght'"),
])
def test_row_names_and_option_keys_are_checked_when_the_config_is_read(tmp_path: Path, row: dict, message: str) -> None:
    """Finding 8: a typo in a late row was found only when its first cell started, after the earlier rows ran."""
    with pytest.raises(ConfigError, match=message) as e:
        load_config(_lb(tmp_path, [{"name": "a", "retriever": "bm25"}, {"name": "r", **row}]))
    assert "\n" not in str(e.value)


def test_rows_skipped_or_reading_runs_are_not_checked_for_names(tmp_path: Path) -> None:
    """A row skipped by ``requires`` may name a reranker its package registers; a retriever every column maps to a
    run is a name only."""
    columns = [{"label": "dl", "dataset": "dl", "runs": {"anserini": "run.trec"}}]
    rows = [{"name": "a", "retriever": "anserini"},
            {"name": "b", "retriever": "anserini", "reranker": "not-installed", "requires": [str(tmp_path / "no")]}]
    cfg, _ = load_config(_lb(tmp_path, rows, columns))
    assert len(cfg.rows) == 2


@pytest.mark.parametrize(("rows", "columns", "message"), [
    ([{"name": "BM25 k1=1.2", "retriever": "bm25"}, {"name": "BM25 k1:1.2", "retriever": "bm25"}], None,
     r"row names 'BM25 k1=1.2' and 'BM25 k1:1.2' give one result folder 'BM25_k1_1.2'"),
    ([{"name": "r", "retriever": "bm25"}], [{"label": "dl 19", "dataset": "a"}, {"label": "dl/19", "dataset": "b"}],
     r"column labels 'dl 19' and 'dl/19' give one result folder 'dl_19'"),
    ([{"name": "BM25", "retriever": "bm25"}, {"name": "bm25", "retriever": "bm25"}], None,
     r"row names 'BM25' and 'bm25' give one result folder"),
])
def test_names_sharing_a_result_folder_are_refused(tmp_path: Path, rows: list, columns: list | None,
                                                   message: str) -> None:
    """Finding 9: two rows slugged to one folder overwrote each other's cells and never reused one."""
    with pytest.raises(ConfigError, match=message):
        load_config(_lb(tmp_path, rows, columns))


def test_the_shipped_leaderboards_still_load() -> None:
    for path in ("configs/examples/leaderboard-cpu.yaml", "configs/distill/leaderboard-distill.yaml"):
        cfg, _ = load_config(REPO / path)
        assert cfg.rows


def test_the_leaderboards_rel_level_warning_names_no_flag_it_lacks(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Finding 12b: the warning told a leaderboard user to give --rel-level, which ``rerank leaderboard`` lacks."""
    qrels = {"q1": {"p0": 1, "p3": 3}}
    caplog.set_level(logging.WARNING, logger="rerank")
    assert warn_rel_level(qrels, 1, ("AP",), False, "the qrels", "FIX HERE")
    assert warn_rel_level(qrels, 5, ("AP",), True, "the qrels", "FIX HERE")
    assert all("FIX HERE" in r.message and "--rel-level" not in r.message for r in caplog.records)
    caplog.clear()
    data = _dl_folder(tmp_path, "mydl")  # grades 1-3, no registry entry: the level is 1
    cfg = _lb(tmp_path, [{"name": "r", "retriever": "test-overlap"}],
              [{"label": "c", "dataset": str(data), "runs": {"x": "bm25_top100.trec"}}])
    run_leaderboard(cfg, results_dir=tmp_path / "res", progress=False)
    warned = [r.getMessage() for r in caplog.records if "no relevance level is set" in r.getMessage()]
    assert len(warned) == 1 and REL_LEVEL_FIX in warned[0] and "give --rel-level" not in warned[0]


# ---------------------------------------------------------------- suites


def _set_parquet_rows(path: Path, edit: Any) -> None:
    rows = pq.read_table(path).to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize(("config", "edit", "message"), [
    ("examples", lambda rows: rows[1].update(gold_ids=["biology/none.txt"]),
     r"examples/biology-00000-of-00001\.parquet: BRIGHT biology, row 2: query 1 has gold_ids not in the documents"),
    ("documents", lambda rows: rows.append(dict(rows[0])),
     r"documents/biology-00000-of-00001\.parquet: BRIGHT biology, row 5: duplicate document id 'biology/gold.txt'"),
    ("documents", lambda rows: rows[2].update(content=None),
     r"documents/biology-00000-of-00001\.parquet: BRIGHT biology, row 3: row without 'content'"),
])
def test_a_malformed_bright_subset_is_an_error_not_a_missing_one(tmp_path: Path, monkeypatch, config: str, edit: Any,
                                                                  message: str) -> None:
    """Finding 3: a subset whose files are there but malformed was skipped as "not found", out of the mean."""
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    src = make_bright_fixture(tmp_path / "data" / "bright", subsets=("biology", "pony"))
    missing: list[str] = []
    assert [e.name for e in suite_entries("bright", None, tmp_path / "data", missing=missing)] == ["biology", "pony"]
    assert "leetcode" in missing  # a really absent subset is still skipped
    _set_parquet_rows(src / config / "biology-00000-of-00001.parquet", edit)
    with pytest.raises(DataFormatError, match=message) as e:
        suite_entries("bright", None, tmp_path / "data")
    assert "\n" not in str(e.value)


def test_long_documents_default_to_the_subsets_that_have_them(tmp_path: Path, monkeypatch) -> None:
    """Finding 4: ``--suite bright --long-documents`` without ``--datasets`` failed on leetcode on every data root,
    after biology's long conversion was done."""
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    make_bright_fixture(tmp_path / "data" / "bright", subsets=("biology", "leetcode"))
    missing: list[str] = []
    entries = suite_entries("bright", None, tmp_path / "data", long_documents=True, missing=missing)
    assert [e.name for e in entries] == ["biology"] and missing == list(BRIGHT_LONG_SUBSETS[1:])
    (tmp_path / "cache").rename(tmp_path / "old-cache")
    with pytest.raises(ConfigError, match="--long-documents: BRIGHT leetcode has no long_documents"):
        suite_entries("bright", ["biology", "leetcode"], tmp_path / "data", long_documents=True)
    assert not (tmp_path / "cache" / "bright" / "biology-long").exists()  # checked before any conversion


def test_bright_source_outside_the_bright_suite_is_refused(tmp_path: Path) -> None:
    """Finding 12a: ``--suite dl --bright-source DIR`` ran and ignored the flag."""
    _dl_folder(tmp_path / "data", "dl19-bm25-top100")
    with pytest.raises(ConfigError, match="--bright-source applies to the bright suite only"):
        suite_entries("dl", None, tmp_path / "data", bright_source=tmp_path / "bright")


def test_a_reranker_that_fails_to_load_leaves_the_earlier_run(tmp_path: Path) -> None:
    """Finding 6: the earlier run's other members and summary were removed before the reranker failed to load."""
    data, out = tmp_path / "data", tmp_path / "o"
    _dl_folder(data, "dl19-bm25-top100")
    _dl_folder(data, "dl20-bm25-top100")
    run_suite("dl", EvalConfig(dataset="", data_root=str(data)), out, progress=False)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(ConfigError, match="never loads"):
        run_suite("dl", EvalConfig(dataset="", data_root=str(data), reranker="test-broken"), out,
                  ["dl19-bm25-top100"], progress=False)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


@pytest.mark.parametrize(("remove", "message"), [
    ("bm25_top100.trec", r"dl20-bm25-top100: no first-stage run in .* give --retriever"),
    ("qrels/test.tsv", r"suite member dl20-bm25-top100: dl20-bm25-top100: no qrels for split 'test'"),
    ("queries.jsonl", r"suite member dl20-bm25-top100: .* holds no queries\.jsonl"),
])
def test_every_members_files_are_looked_for_before_the_reranker_loads(tmp_path: Path, remove: str,
                                                                      message: str) -> None:
    """Finding 7: a member without its run (or qrels) failed when its turn came, after the earlier members ran."""
    data, out = tmp_path / "data", tmp_path / "o"
    _dl_folder(data, "dl19-bm25-top100")
    (_dl_folder(data, "dl20-bm25-top100") / remove).unlink()
    with pytest.raises(ConfigError, match=message) as e:  # not the reranker's load error: checked before it
        run_suite("dl", EvalConfig(dataset="", data_root=str(data), reranker="test-broken"), out, progress=False)
    assert "\n" not in str(e.value) and not out.exists()


def test_measures_not_common_to_every_member_are_shown_and_named() -> None:
    """Finding 11: msmarco-dev's RR@10 (DL's RR(rel=2)@10) appeared nowhere in summary.md."""
    summary = {"suite": "dl", **summarize({
        "dl19": {"metrics": {"nDCG@10": 0.5, "RR(rel=2)@10": 0.7}, "num_queries": 43},
        "dev": {"metrics": {"nDCG@10": 0.3, "RR@10": 0.2}, "num_queries": 10},
    }), "missing": []}
    assert summary["mean"] == {"nDCG@10": pytest.approx(0.4)}
    assert summary["not_in_mean"] == ["RR(rel=2)@10", "RR@10"]
    assert list(summary) == ["suite", "datasets", "mean", "not_in_mean", "num_datasets", "missing"]
    text = _render_summary("dl", summary)
    assert "| nDCG@10 | RR(rel=2)@10 | RR@10 |" in text
    assert "| dl19 | 43 | 0.5000 | 0.7000 | — |" in text and "| dev | 10 | 0.3000 | — | 0.2000 |" in text
    assert "| **mean (2 datasets)** | | **0.4000** | — | — |" in text
    assert "Not in the mean (not measured on every dataset): RR(rel=2)@10, RR@10." in text


def test_docs_say_which_judged_documents_hard_negatives_leaves_out() -> None:
    """Finding 12c: a document judged 0 is a negative; only 1 <= grade < min_positive_grade is neither."""
    doc = " ".join((REPO / "docs" / "suites-leaderboard-recipes.md").read_text(encoding="utf-8").split())
    assert "judged documents below it are neither positives nor negatives" not in doc
    assert "documents judged 1 ≤ grade < `min_positive_grade` are neither positives nor negatives" in doc
