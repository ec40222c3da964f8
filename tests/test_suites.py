"""Suites: the BRIGHT loader on a fixture in the hub's exact parquet layout, excluded ids, DL run files, summaries."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank.data.io import read_qrels, write_jsonl, write_qrels, write_run
from rerank.errors import ConfigError
from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.eval.suites import bright_dataset, suite_entries
from rerank.heads.base import Reranker
from rerank.heads.registry import get_reranker_class, register_reranker
from rerank.retrieval.base import FirstStage, register_retriever
from rerank.types import Candidate, Query, Run


class OverlapRetriever(FirstStage):
    """Scores documents by query-word overlap (ties by doc id, descending): a deterministic stand-in first stage."""

    name = "test-overlap"

    def __init__(self, docs: dict[str, str]) -> None:
        self.docs = docs

    @classmethod
    def from_dataset(cls, dataset: Any, **options: Any) -> OverlapRetriever:
        return cls({d.id: d.full_text().lower() for d in dataset.corpus.values()})

    def retrieve(self, queries: Mapping[str, Query], k: int) -> Run:
        out: Run = {}
        for qid, q in queries.items():
            words = set(q.text.lower().split())
            scored = [(d, float(len(words & set(t.split())))) for d, t in self.docs.items()]
            scored.sort(key=lambda x: (x[1], x[0]), reverse=True)
            out[qid] = scored[:k]
        return out


register_retriever("test-overlap", OverlapRetriever)


class CountingReranker(Reranker):
    """Reverses the first-stage order; counts instances (a suite must load its reranker once)."""

    method = "test-counting"
    instances = 0

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        type(self).instances += 1

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [float(i) for i in range(len(candidates))]


register_reranker("test-counting", CountingReranker)


def _parquet(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def make_bright_fixture(root: Path, subsets: tuple[str, ...] = ("biology", "pony")) -> Path:
    """The xlangai/BRIGHT layout: {documents,long_documents,examples}/<subset>-00000-of-00001.parquet."""
    for s in subsets:
        docs = [
            {"id": f"{s}/gold.txt", "content": "bees pollinate flowers in spring"},
            {"id": f"{s}/copy.txt", "content": "why do bees pollinate flowers in spring bees flowers"},
            {"id": f"{s}/other.txt", "content": "rocks erode slowly"},
            {"id": f"{s}/noise.txt", "content": "flowers"},
        ]
        long_docs = [
            {"id": f"{s}/gold_long.txt", "content": "bees pollinate flowers in spring, a long page"},
            {"id": f"{s}/other_long.txt", "content": "rocks erode slowly, a long page"},
        ]
        examples = [
            {"query": "why do bees pollinate flowers", "reasoning": "r", "id": "0", "excluded_ids": [f"{s}/copy.txt"],
             "gold_ids_long": [f"{s}/gold_long.txt"], "gold_ids": [f"{s}/gold.txt"]},
            {"query": "how do rocks erode", "reasoning": "r", "id": "1", "excluded_ids": ["N/A"],
             "gold_ids_long": [f"{s}/other_long.txt"], "gold_ids": [f"{s}/other.txt"]},
        ]
        _parquet(docs, root / "documents" / f"{s}-00000-of-00001.parquet")
        _parquet(long_docs, root / "long_documents" / f"{s}-00000-of-00001.parquet")
        _parquet(examples, root / "examples" / f"{s}-00000-of-00001.parquet")
        reason = [dict(e, query=e["query"] + " pollination reasoning") for e in examples]
        _parquet(reason, root / "gpt4_reason" / f"{s}-00000-of-00001.parquet")
    return root


@pytest.fixture()
def bright_src(tmp_path: Path) -> Path:
    return make_bright_fixture(tmp_path / "bright")


def test_bright_conversion_qrels_excluded_long(bright_src: Path, tmp_path: Path) -> None:
    ds = bright_dataset("biology", bright_src, cache_dir=tmp_path / "c")
    assert read_qrels(ds.qrels_path("test")) == {"0": {"biology/gold.txt": 1}, "1": {"biology/other.txt": 1}}
    assert ds.excluded_ids("test") == {"0": {"biology/copy.txt"}}  # "N/A" is not an id
    assert len(ds.corpus) == 4 and ds.queries["0"].text == "why do bees pollinate flowers"
    long = bright_dataset("biology", bright_src, long_documents=True, cache_dir=tmp_path / "c")
    assert read_qrels(long.qrels_path("test"))["0"] == {"biology/gold_long.txt": 1}
    assert set(long.corpus) == {"biology/gold_long.txt", "biology/other_long.txt"}
    reason = bright_dataset("biology", bright_src, query_config="gpt4_reason", cache_dir=tmp_path / "c")
    assert reason.queries["0"].text.endswith("pollination reasoning")
    with pytest.raises(ConfigError, match="no long_documents"):
        bright_dataset("leetcode", bright_src, long_documents=True, cache_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="unknown BRIGHT subset"):
        bright_dataset("chemistry", bright_src, cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="economics"):
        bright_dataset("economics", bright_src, cache_dir=tmp_path / "c")


def test_bright_reconverts_when_source_changes(bright_src: Path, tmp_path: Path) -> None:
    ds = bright_dataset("pony", bright_src, cache_dir=tmp_path / "c")
    assert len(ds.corpus) == 4
    _parquet([{"id": "pony/gold.txt", "content": "x"}, {"id": "pony/other.txt", "content": "y"}],
             bright_src / "documents" / "pony-00000-of-00001.parquet")
    assert len(bright_dataset("pony", bright_src, cache_dir=tmp_path / "c").corpus) == 2


def test_excluded_ids_leave_the_ranking_before_scoring(bright_src: Path, tmp_path: Path) -> None:
    ds = bright_dataset("biology", bright_src, cache_dir=tmp_path / "c")
    m = run_eval(EvalConfig(dataset=str(ds.root), retriever="test-overlap", output=str(tmp_path / "o")), progress=False)
    # copy.txt overlaps the query most; excluded, the gold document is first
    assert m["per_query"]["0"]["nDCG@10"] == pytest.approx(1.0)
    ranked = [line.split()[2] for line in (tmp_path / "o" / "run.trec").read_text().splitlines() if line[0] == "0"]
    assert "biology/copy.txt" not in ranked and ranked[0] == "biology/gold.txt"
    (ds.root / "excluded" / "test.tsv").unlink()
    ds2 = run_eval(EvalConfig(dataset=str(ds.root), retriever="test-overlap"), progress=False)
    assert ds2["per_query"]["0"]["nDCG@10"] < 1.0  # the same ranking without BRIGHT's exclusion is worse


def test_eval_suite_bright_cli_summary(bright_src: Path, tmp_path: Path, run_cli, monkeypatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "suite"
    rc, so, se = run_cli("eval", "--suite", "bright", "--datasets", "biology,pony", "--bright-source", bright_src,
                         "--retriever", "test-overlap", "--output", out)
    assert rc == 0, se
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["datasets"]) == ["biology", "pony"]
    per = [json.loads((out / n / "metrics.json").read_text())["metrics"]["nDCG@10"] for n in ("biology", "pony")]
    assert summary["mean"]["nDCG@10"] == pytest.approx(sum(per) / 2)
    assert "mean (2 datasets)" in (out / "summary.md").read_text()
    assert "suite bright (2 datasets)" in so
    counting = get_reranker_class("test-counting")  # this module may be imported twice (as a test and a helper)
    counting.instances = 0
    rc, so, se = run_cli("eval", "--suite", "bright", "--datasets", "biology,pony", "--bright-source", bright_src,
                         "--retriever", "test-overlap", "--reranker", "test-counting", "--top-k", "2",
                         "--output", tmp_path / "rr")
    assert rc == 0, se
    assert counting.instances == 1
    for n in ("biology", "pony"):
        m = json.loads((tmp_path / "rr" / n / "metrics.json").read_text())
        assert m["reranker"]["method"] == "test-counting"
        first = [line.split()[2] for line in (out / n / "run.trec").read_text().splitlines() if line[0] == "1"]
        reranked = [line.split()[2] for line in (tmp_path / "rr" / n / "run.trec").read_text().splitlines()
                    if line[0] == "1"]
        assert reranked[:2] == first[:2][::-1] and reranked[2:] == first[2:]


def test_suite_cli_errors(bright_src: Path, tmp_path: Path, run_cli) -> None:
    rc, _, se = run_cli("eval", "--suite", "bright", "--dataset", "x", "--retriever", "bm25", "--output", tmp_path)
    assert rc == 2 and "not allowed with argument" in se
    rc, _, se = run_cli("eval", "--suite", "bright", "--datasets", "chemistry", "--retriever", "test-overlap",
                        "--bright-source", bright_src, "--output", tmp_path / "o")
    assert rc == 2 and "no dataset(s) ['chemistry']" in se
    rc, _, se = run_cli("eval", "--dataset", "x", "--datasets", "a", "--retriever", "bm25", "--output", tmp_path)
    assert rc == 2 and "need --suite" in se
    with pytest.raises(ConfigError, match="bright suite only"):
        suite_entries("dl", None, tmp_path, long_documents=True)


def _dl_folder(root: Path, name: str) -> Path:
    d = root / name
    write_jsonl([{"_id": f"p{i}", "title": "", "text": f"passage {i}"} for i in range(5)], d / "corpus.jsonl")
    write_jsonl([{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "b"}], d / "queries.jsonl")
    write_qrels({"q1": {"p0": 1, "p3": 3}, "q2": {"p1": 2}}, d / "qrels" / "test.tsv", beir=True)
    write_run({"q1": [(f"p{i}", 5.0 - i) for i in range(5)], "q2": [(f"p{i}", 5.0 - i) for i in range(5)]},
              d / "bm25_top100.trec")
    return d


def test_dl_suite_uses_the_folder_run_and_rel_level_2(tmp_path: Path, run_cli) -> None:
    _dl_folder(tmp_path / "data", "dl19-bm25-top100")
    _dl_folder(tmp_path / "data", "dl20-bm25-top100")
    out = tmp_path / "o"
    rc, _, se = run_cli("eval", "--suite", "dl", "--data-root", tmp_path / "data", "--output", out)
    assert rc == 0, se
    m = json.loads((out / "dl19-bm25-top100" / "metrics.json").read_text())
    assert m["rel_level"] == 2 and m["first_stage"]["path"].endswith("bm25_top100.trec")
    # q1: p0 (grade 1) is not relevant at >= 2, p3 at rank 4 is: RR = 1/4; q2: p1 at rank 2
    assert m["metrics"]["RR(rel=2)@10"] == pytest.approx((0.25 + 0.5) / 2)
    assert json.loads((out / "summary.json").read_text())["num_datasets"] == 2


def test_dl_suite_runs_the_members_present_and_names_the_missing(tmp_path: Path, run_cli) -> None:
    """With only DL19 under the data root, ``--suite dl`` evaluates DL19 and says in one line that DL20 is missing;
    naming DL20 in --datasets requires it (a one-line error, exit 2)."""
    _dl_folder(tmp_path / "data", "dl19-bm25-top100")
    out = tmp_path / "o"
    rc, so, se = run_cli("eval", "--suite", "dl", "--data-root", tmp_path / "data", "--output", out)
    assert rc == 0, se
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_datasets"] == 1 and list(summary["datasets"]) == ["dl19-bm25-top100"]
    assert summary["missing"] == ["dl20-bm25-top100"]
    assert "not found, skipped: dl20-bm25-top100" in so and len(so.strip().splitlines()) == 1
    rc, _, se = run_cli("eval", "--suite", "dl", "--datasets", "dl19-bm25-top100,dl20-bm25-top100",
                        "--data-root", tmp_path / "data", "--output", tmp_path / "o2")
    assert rc == 2 and "dataset 'dl20-bm25-top100' not found" in se and len(se.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()  # an empty data root (one that does not exist is refused as such)
    rc, _, se = run_cli("eval", "--suite", "dl", "--data-root", tmp_path / "empty", "--output", tmp_path / "o3")
    assert rc == 2 and "none of its datasets was found" in se


def test_eval_has_no_default_first_stage(tmp_path: Path, run_cli) -> None:
    """``rerank eval`` needs --retriever or --first-stage unless the dataset folder holds its own run (RUN_FILES);
    without any it is a one-line error, exit 2."""
    folder = _dl_folder(tmp_path / "data", "dl19-bm25-top100")
    (folder / "bm25_top100.trec").unlink()
    rc, _, se = run_cli("eval", "--dataset", folder, "--output", tmp_path / "o")
    assert rc == 2 and se.startswith("error: give exactly one of --retriever NAME or --first-stage RUN (dataset "
                                     "dl19-bm25-top100 holds no first-stage run of its own")
    assert len(se.strip().splitlines()) == 1 and not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.shared_data
def test_dl19_suite_reproduces_anserini_bm25(dl19_dir: Path, tmp_path: Path, run_cli) -> None:
    rc, _, se = run_cli("eval", "--suite", "dl", "--datasets", "dl19-bm25-top100", "--data-root", dl19_dir.parent,
                        "--output", tmp_path / "o")
    assert rc == 0, se
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["mean"]["nDCG@10"] == pytest.approx(0.5058, abs=5e-5)


def test_bright_offline_without_local_copy_says_where_to_put_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match=r"xlangai/BRIGHT.*<data-root>/bright"):
        bright_dataset("biology", data_root=tmp_path / "empty", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "biology").exists()  # nothing half-written


def test_bright_found_under_data_root(tmp_path: Path) -> None:
    make_bright_fixture(tmp_path / "data" / "bright", subsets=("aops",))
    ds = bright_dataset("aops", data_root=tmp_path / "data", cache_dir=tmp_path / "c")
    assert json.loads((ds.root / "source.json").read_text())["source"] == str((tmp_path / "data" / "bright").resolve())
