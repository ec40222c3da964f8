"""Audit 3 leftovers: ``rerank rank --first-stage`` holds only the documents its run names (output unchanged); the
bi-encoder's ``prepare_corpus`` reads only the candidates; a BM25 corpus with no token is a one-line error; the
adapters' ``.load`` refuses ``top_k`` pointing at ``top_n``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rerank.data import datasets as datasets_mod
from rerank.data.datasets import Dataset
from rerank.heads.registry import register_reranker
from rerank.testing import make_tiny_beir
from tests.serve_support import LongestFirst

register_reranker(LongestFirst.method, LongestFirst)


@pytest.fixture
def beir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    return make_tiny_beir(tmp_path / "beir", num_docs=120, num_queries=12, splits=("test",), seed=1)


def _first_stage(tmp_path: Path) -> Path:
    """A run of 4 queries, 4 documents each, one of them not in the corpus."""
    run = tmp_path / "first.trec"
    run.write_text("".join(f"q{q:03d} Q0 {d} {r} {10 - r} bm25\n" for q in range(0, 12, 3)
                           for r, d in enumerate([f"d{q:03d}", "ghost", f"d{q + 40:03d}", f"d{q + 80:03d}"], 1)))
    return run


def _rank(run_cli: Any, beir: Path, run: Path, out: Path) -> None:
    code, _, err = run_cli("rank", "--first-stage", run, "--dataset", beir, "--reranker", LongestFirst.method,
                           "--top-k", "2", "--output", out)
    assert code == 0, err


@pytest.mark.parametrize("name", ["out.trec", "out.jsonl"])
def test_rank_first_stage_holds_only_the_run_documents_and_output_is_unchanged(
    beir: Path, tmp_path: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    name: str
) -> None:
    run = _first_stage(tmp_path)
    real = Dataset.documents
    asked: list[set[str]] = []

    def from_memory(self: Dataset, ids: Any, ask: Any = frozenset()) -> Any:
        self.corpus  # noqa: B018 - the whole corpus in memory first, as rank held it before
        return real(self, ids, ask)

    with monkeypatch.context() as m:
        m.setattr(Dataset, "documents", from_memory)
        _rank(run_cli, beir, run, tmp_path / "full" / name)

    def spy(self: Dataset, ids: Any, ask: Any = frozenset()) -> Any:
        part = real(self, ids, ask)
        asked.append(set(part.docs))
        return part

    def no_full_read(path: Any) -> Any:
        raise AssertionError(f"the whole corpus {path} was read into memory")

    monkeypatch.setattr(Dataset, "documents", spy)
    monkeypatch.setattr(datasets_mod, "read_corpus", no_full_read)
    caplog.clear()
    _rank(run_cli, beir, run, tmp_path / "part" / name)
    assert "4 doc ids of --first-stage" in caplog.text and "(e.g. ['ghost'])" in caplog.text
    assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    heads = {f"d{q:03d}" for q in range(0, 12, 3)}  # top 2: d0xx and ghost (not in the corpus)
    tails = {f"d{q + k:03d}" for q in range(0, 12, 3) for k in (40, 80)}
    assert asked == [heads | tails if name.endswith(".jsonl") else heads]
    if name.endswith(".jsonl"):
        rows = [json.loads(line) for line in (tmp_path / "part" / name).read_text().splitlines()]
        assert all(r["text"] is not None for row in rows for r in row["ranking"] if r["id"] != "ghost")


@pytest.mark.parametrize(("bad", "error"), [
    ('{"_id": "zz", "text": 3}', r"corpus\.jsonl:121: field 'text' must be a string"),
    ('{oops', r"corpus\.jsonl:121: invalid JSON"),
])
def test_rank_malformed_line_of_an_unranked_document_is_one_line(
    beir: Path, tmp_path: Path, run_cli: Any, bad: str, error: str
) -> None:
    with (beir / "corpus.jsonl").open("a") as f:
        f.write(bad + "\n")
    code, _, err = run_cli("rank", "--first-stage", _first_stage(tmp_path), "--dataset", beir, "--reranker",
                           LongestFirst.method, "--top-k", "2", "--output", tmp_path / "out.trec")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(error, err), err


@pytest.mark.parametrize("corpus_cache", [False, True])
def test_bi_encoder_prepare_corpus_reads_only_the_candidates(
    beir: Path, tiny_st_dir: Path, monkeypatch: pytest.MonkeyPatch, corpus_cache: bool
) -> None:
    """The embeddings prepared are those of the whole-corpus read; the corpus is not read into memory, and a corpus
    already in memory is not read again. With the cache, 60 of 120 candidates encode (and cache) the corpus."""
    from rerank.data import io as io_mod
    from rerank.heads.base import Reranker

    ids = {f"d{i:03d}" for i in range(0, 120, 2)} | {"ghost"}
    full = Dataset(beir)
    full.corpus  # noqa: B018 - in memory: the head must take it from there
    monkeypatch.setattr(datasets_mod, "read_corpus_part", lambda *a: pytest.fail("an in-memory corpus was re-read"))
    before = Reranker.load("bi-encoder", model=str(tiny_st_dir), device="cpu", corpus_cache=corpus_cache)
    before.prepare_corpus(full, ids)  # type: ignore[attr-defined]
    monkeypatch.setattr(datasets_mod, "read_corpus_part", io_mod.read_corpus_part)
    monkeypatch.setattr(datasets_mod, "read_corpus", lambda path: pytest.fail(f"the whole corpus {path} was read"))
    head = Reranker.load("bi-encoder", model=str(tiny_st_dir), device="cpu", corpus_cache=corpus_cache)
    ds = Dataset(beir)
    head.prepare_corpus(ds, ids)  # type: ignore[attr-defined]
    assert "corpus" not in vars(ds)
    got, want = head._prepared, before._prepared  # type: ignore[attr-defined]
    assert len(got) == 60 and got.keys() == want.keys()
    assert all(got[t].tolist() == want[t].tolist() for t in got)


@pytest.mark.parametrize(("texts", "options", "settings"), [
    (["", "  "], {}, "stopwords=None, stemmer='english'"),
    (["the a", "I", "of the"], {"stopwords": "en", "stemmer": None}, "stopwords='en', stemmer=None"),
])
def test_bm25_corpus_without_any_token_is_one_line(
    tmp_path: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch, texts: list[str], options: dict[str, Any],
    settings: str
) -> None:
    from rerank.data.io import write_jsonl, write_qrels
    from rerank.errors import DataFormatError
    from rerank.retrieval.bm25 import BM25Retriever

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    ds = tmp_path / "ds"
    write_jsonl([{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(texts)], ds / "corpus.jsonl")
    write_jsonl([{"_id": "q1", "text": "rain"}], ds / "queries.jsonl")
    write_qrels({"q1": {"d0": 1}}, ds / "qrels" / "test.tsv", beir=True)
    with pytest.raises(DataFormatError, match=re.escape(f"none of its {len(texts)} documents has a token after "
                                                        "tokenisation")) as e:
        BM25Retriever.from_dataset(Dataset(ds), show_progress=False, **options)
    assert str(e.value).startswith(str(ds / "corpus.jsonl")) and settings in str(e.value)
    sets = [a for k, v in options.items() for a in ("--retriever-set", f"{k}={'null' if v is None else v}")]
    code, _, err = run_cli("eval", "--dataset", ds, "--retriever", "bm25", *sets, "--output", tmp_path / "out")
    lines = [ln for ln in err.splitlines() if ln.strip() and "bm25 read + tokenize" not in ln]  # not the bar
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "has a token after tokenisation" in lines[0]


@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
def test_adapter_load_refuses_top_k_pointing_at_top_n(adapter: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``.load(method, top_k=8)`` is refused naming top_n before any model loads; a method whose options have top_k
    (setwise) still gets it."""
    from rerank.heads.base import Reranker
    from tests.test_integrations import OverlapReranker

    if adapter == "langchain":
        pytest.importorskip("langchain_core", reason="langchain-core (extra 'langchain') not installed")
        from rerank.integrations.langchain import RerankCompressor as cls
    else:
        pytest.importorskip("llama_index.core", reason="llama-index-core (extra 'llamaindex') not installed")
        from rerank.integrations.llamaindex import RerankNodePostprocessor as cls
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\.load: top_k is not an option of cross-encoder; the "
                                        rf"number of documents the adapter keeps is top_n, e.g\. .*top_n=8\)$"):
        cls.load("cross-encoder", model="/nowhere", top_k=8)
    given: list[dict[str, Any]] = []

    def load(method: str, model: str | None = None, **options: Any) -> Reranker:
        given.append({"method": method, **options})
        return OverlapReranker()

    monkeypatch.setattr(Reranker, "load", staticmethod(load))
    assert cls.load("setwise", model="/nowhere", top_k=5, top_n=2).top_n == 2
    assert given == [{"method": "setwise", "top_k": 5}]
