"""Reranking holds only the candidates' documents, not the corpus (the results unchanged); the corpus is still checked
line by line; dense ``--index`` reads only ids; the corpus-encoding bar has a total."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rerank.data import datasets as datasets_mod
from rerank.data.datasets import Dataset
from rerank.errors import DataFormatError
from rerank.eval import pipeline
from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.testing import make_tiny_beir


@pytest.fixture
def beir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    return make_tiny_beir(tmp_path / "beir", num_docs=120, num_queries=12, splits=("test",), seed=1)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """Record the documents each rerank_run is given; reading the whole corpus into memory fails."""
    held: list[set[str]] = []
    real = pipeline.rerank_run

    def rerank_run(reranker: Any, queries: Any, run: Any, corpus: Any, *args: Any, **kw: Any) -> Any:
        held.append(set(corpus))
        return real(reranker, queries, run, corpus, *args, **kw)

    def no_full_read(path: Any) -> Any:
        raise AssertionError(f"the whole corpus {path} was read into memory")

    monkeypatch.setattr(pipeline, "rerank_run", rerank_run)
    monkeypatch.setattr(datasets_mod, "read_corpus", no_full_read)
    return held


def _outputs(out: Path) -> tuple[bytes, dict[str, Any]]:
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("timing_s")
    metrics.pop("throughput")
    metrics.pop("provenance")  # when the run was made
    metrics["config"].pop("output")
    metrics["first_stage"].pop("cache_hit", None)  # the first run built the BM25 index, the second reads it
    return (out / "run.trec").read_bytes(), metrics


def test_retriever_rerank_holds_only_candidates_and_results_match(
    beir: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = EvalConfig(dataset=str(beir), retriever="bm25", reranker="cross-encoder", model=str(tiny_bert_dir),
                     top_k=5, depth=5)
    real = Dataset.documents

    def from_memory(self: Dataset, ids: Any, ask: Any = frozenset()) -> Any:
        self.corpus  # noqa: B018 - the whole corpus in memory first, as eval held it before
        return real(self, ids, ask)

    with monkeypatch.context() as m:
        m.setattr(Dataset, "documents", from_memory)
        run_eval(EvalConfig(**{**vars(cfg), "output": str(tmp_path / "full")}), progress=False)
    held = _spy(monkeypatch)
    run_eval(EvalConfig(**{**vars(cfg), "output": str(tmp_path / "part")}), progress=False)
    first = [ln.split()[2] for ln in (tmp_path / "part" / "first_stage.trec").read_text().splitlines()]
    assert held == [set(first)] and len(held[0]) < 120  # the top 5 of each query, no other document
    assert _outputs(tmp_path / "part") == _outputs(tmp_path / "full")


def test_given_run_rerank_holds_only_candidates_and_counts_unknown(
    beir: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "first.trec"
    run.write_text("".join(f"q{q:03d} Q0 {d} {r} {10 - r} bm25\n" for q in range(0, 12, 3)
                           for r, d in enumerate([f"d{q:03d}", "ghost", f"d{q + 40:03d}", f"d{q + 80:03d}"], 1)))
    held = _spy(monkeypatch)
    metrics = run_eval(EvalConfig(dataset=str(beir), first_stage=str(run), reranker="cross-encoder",
                                  model=str(tiny_bert_dir), top_k=2, output=str(tmp_path / "out")), progress=False)
    assert held == [{f"d{q:03d}" for q in range(0, 12, 3)}]
    assert metrics["unknown_doc_ids"]["count"] == 4
    plain = run_eval(EvalConfig(dataset=str(beir), first_stage=str(run)), progress=False)  # no reranker: ids only
    assert plain["unknown_doc_ids"]["count"] == 4


@pytest.mark.parametrize(("bad", "error"), [
    ('{"_id": "zz", "text": 3}', r"corpus\.jsonl:121: field 'text' must be a string"),
    ('{"_id": "d119", "text": "again"}', r"corpus\.jsonl:121: duplicate document id 'd119' \(first at line 120\)"),
])
def test_malformed_line_of_a_non_candidate_is_an_error(
    beir: Path, tiny_bert_dir: Path, tmp_path: Path, run_cli: Any, bad: str, error: str
) -> None:
    with (beir / "corpus.jsonl").open("a") as f:
        f.write(bad + "\n")
    run = tmp_path / "first.trec"
    run.write_text("q000 Q0 d000 1 2.0 bm25\nq000 Q0 d001 2 1.0 bm25\n")
    code, _, err = run_cli("eval", "--dataset", beir, "--first-stage", run, "--reranker", "cross-encoder",
                           "--model", tiny_bert_dir, "--top-k", "2", "--output", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(error, err), err


def test_documents_reads_once_and_checks_every_line(beir: Path) -> None:
    ds = Dataset(beir)
    part = ds.documents({"d003", "nope"}, {"d007", "gone"})
    assert set(part.docs) == {"d003"} and part.found == {"d003", "d007"} and part.size == 120
    assert "corpus" not in vars(ds) and ds.corpus_size == 120
    (beir / "corpus.jsonl").write_text((beir / "corpus.jsonl").read_text() + "{oops\n")
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:121: invalid JSON"):
        Dataset(beir).documents({"d003"})


def test_dense_index_reads_ids_only_and_encoding_bar_has_total(
    beir: Path, tiny_st_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tqdm.auto

    from rerank.retrieval.dense import BiEncoder, DenseRetriever
    from rerank.retrieval.index import DenseIndex, encode_corpus_cached

    totals: list[int | None] = []
    real_tqdm = tqdm.auto.tqdm

    def tqdm_spy(*args: Any, **kw: Any) -> Any:
        if kw.get("desc") == "encode corpus":
            totals.append(kw.get("total"))
        return real_tqdm(*args, **kw)

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm_spy)
    enc = BiEncoder.load(tiny_st_dir, device="cpu")
    ds = Dataset(beir)
    emb = encode_corpus_cached(enc, ds, progress=True)
    assert totals == [120] and "corpus" not in vars(ds)
    DenseIndex.build(emb, enc, model=str(tiny_st_dir)).save(tmp_path / "idx", embeddings_source=emb.path)
    ds = Dataset(beir)
    monkeypatch.setattr(datasets_mod, "read_corpus", lambda path: pytest.fail(f"{path} read into memory"))
    retriever = DenseRetriever.from_dataset(ds, index=str(tmp_path / "idx"), progress=False)
    assert "corpus" not in vars(ds) and len(retriever.index.ids) == 120


def test_a_request_within_the_last_part_read_reads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A head's prepare_corpus reads its candidates, then the pipeline asks for the same (or fewer): one pass over the
    corpus file, not two."""
    import rerank.data.datasets as datasets_module
    from rerank.data.datasets import resolve_dataset

    root = tmp_path / "ds"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"text {i}"}) + "\n"
                                               for i in range(6)))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "text"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td1\t1\n")
    reads = []
    real = datasets_module.read_corpus_part
    monkeypatch.setattr(datasets_module, "read_corpus_part", lambda *a, **k: reads.append(a) or real(*a, **k))
    ds = resolve_dataset(str(root))
    first = ds.documents({"d1", "d2", "d9"})
    again = ds.documents({"d1", "d9"}, ask={"d2"})
    assert len(reads) == 1 and set(first.docs) == {"d1", "d2"}
    assert set(again.docs) == {"d1"} and again.found == frozenset({"d1", "d2"}) and again.size == 6
    assert set(ds.documents({"d3"}).docs) == {"d3"} and len(reads) == 2  # beyond the last part: read again
