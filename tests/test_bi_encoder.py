"""bi-encoder reranking: a scripted encoder gives the exact expected order (dot and cosine differ on purpose); on a
tiny sentence-transformers model the scores equal sentence-transformers' own embeddings; in ``eval`` the documents
come from the dense retriever's embedding cache (no document encoded twice) and scores equal dense retrieval's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.methods.bi_encoder.head import BiEncoderConfig, BiEncoderReranker
from rerank.retrieval.dense import EncoderSettings


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class ScriptedEncoder:
    """Embeddings looked up by text; records every document text it embeds."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors
        self.settings = EncoderSettings()
        self.doc_calls: list[list[str]] = []

    def encode_numpy(self, texts: list[str], side: str, batch_size: int = 64, *a: Any) -> np.ndarray:
        if side == "doc":
            self.doc_calls.append(list(texts))
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"model": "scripted"}


VECTORS = {
    "q": [1.0, 0.0],
    "long and aligned": [10.0, 10.0],  # dot 10, cosine 0.71
    "short and exact": [1.0, 0.0],  # dot 1, cosine 1
    "orthogonal": [0.0, 5.0],  # dot 0, cosine 0
    "opposite": [-2.0, 0.0],  # dot -2, cosine -1
}


@pytest.mark.parametrize(("similarity", "expected"), [
    ("dot", ["long and aligned", "short and exact", "orthogonal", "opposite"]),
    ("cosine", ["short and exact", "long and aligned", "orthogonal", "opposite"]),
])
def test_scripted_encoder_gives_the_exact_order(similarity: str, expected: list[str]) -> None:
    enc = ScriptedEncoder(VECTORS)
    head = BiEncoderReranker(BiEncoderConfig(similarity=similarity), enc)  # type: ignore[arg-type]
    docs = ["orthogonal", "opposite", "short and exact", "long and aligned"]
    res = head.rerank_batch(["q", "q"], [docs, docs[::-1]])
    assert [[r.doc.text for r in x.results] for x in res] == [expected, expected]
    assert enc.doc_calls == [docs]  # each distinct document embedded once per call
    scores = {r.doc.text: r.score for r in res[0].results}
    want = {"dot": 10.0, "cosine": 2 ** -0.5}[similarity]
    assert scores["long and aligned"] == pytest.approx(want)
    rel = head.relevance([scores[t] for t in expected])
    assert rel == sorted(rel, reverse=True) and all(0.0 <= r <= 1.0 for r in rel)


def test_tiny_model_scores_equal_sentence_transformers(tiny_st_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    docs = ["the cat sat on the mat", "gene expression of dna", "virus and cancer risk", "a dog"]
    head = Reranker.load("bi-encoder", model=str(tiny_st_dir), device="cpu")
    res = head.rerank("cancer risk of a virus", docs)
    st = SentenceTransformer(str(tiny_st_dir), device="cpu")
    want = st.encode(docs) @ st.encode("cancer risk of a virus")
    assert [r.doc.id for r in res.results] == [str(i) for i in np.argsort(-want, kind="stable")]
    assert [r.score for r in res.results] == pytest.approx(sorted(want, reverse=True), abs=1e-5)
    assert head.document_token_limit("q") == 256 - 2
    with pytest.raises(ConfigError, match="transformers backend only"):
        Reranker.load("bi-encoder", model=str(tiny_st_dir), backend="vllm")
    with pytest.raises(ConfigError, match="similarity"):
        Reranker.load("bi-encoder", model=str(tiny_st_dir), similarity="l2")


def test_eval_reads_the_dense_embedding_cache(tiny_st_dir: Path, tiny_beir_dir: Path, tmp_path: Path) -> None:
    """Dense retrieval writes the corpus embeddings; the bi-encoder reranking its run reads them (no document
    encoded) and gives every candidate dense retrieval's score, so the order is unchanged."""
    from rerank.eval.pipeline import EvalConfig, run_eval

    dense = run_eval(EvalConfig(dataset=str(tiny_beir_dir), output=str(tmp_path / "dense"), retriever="dense",
                                retriever_options={"model": str(tiny_st_dir), "progress": False}, depth=10),
                     progress=False)
    head = Reranker.load("bi-encoder", model=str(tiny_st_dir), device="cpu")
    run_eval(EvalConfig(dataset=str(tiny_beir_dir), output=str(tmp_path / "rr"), first_stage=str(tmp_path / "dense" /
                        "run.trec"), top_k=10), reranker=head, progress=False)
    assert head.encoded_docs == 0  # type: ignore[attr-defined]
    dense_run = (tmp_path / "dense" / "run.trec").read_text().split("\n")
    rr_run = (tmp_path / "rr" / "run.trec").read_text().split("\n")
    assert [line.split()[:3] for line in dense_run if line] == [line.split()[:3] for line in rr_run if line]
    scores = [json.loads(x) for x in (tmp_path / "rr" / "scores.jsonl").read_text().splitlines()]
    assert scores and dense["first_stage"]["name"] == "dense"
    # without the cache and with fewer candidates than half the corpus: only the candidates, each once
    head2 = Reranker.load("bi-encoder", model=str(tiny_st_dir), device="cpu", corpus_cache=False)
    run_eval(EvalConfig(dataset=str(tiny_beir_dir), output=str(tmp_path / "rr2"), first_stage=str(tmp_path / "dense" /
                        "run.trec"), top_k=3, max_queries=4), reranker=head2, progress=False)
    assert 0 < head2.encoded_docs <= 12  # type: ignore[attr-defined]


def test_cli_eval_on_dl19(tiny_st_dir: Path, dl19_dir: Path, tmp_path: Path, run_cli: Any) -> None:
    rc, out, err = run_cli("eval", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec",
                           "--reranker", "bi-encoder", "--model", tiny_st_dir, "--top-k", "5", "--max-queries", "2",
                           "--output", tmp_path / "out")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["reranker"]["method"] == "bi-encoder"
    head = Reranker.load("bi-encoder", model=str(tiny_st_dir), device="cpu")
    qid = sorted({line.split()[0] for line in (tmp_path / "out" / "run.trec").read_text().splitlines()})[0]
    ranked = [x for x in (tmp_path / "out" / "run.trec").read_text().splitlines() if x.split()[0] == qid]
    first5 = [x.split()[2] for x in ranked[:5]]
    bm25 = [x.split()[2] for x in (dl19_dir / "bm25_top100.trec").read_text().splitlines() if x.split()[0] == qid]
    assert sorted(first5) == sorted(bm25[:5])
    from rerank.data.datasets import Dataset

    ds = Dataset(dl19_dir)
    res = head.rerank(ds.queries[qid], [ds.corpus[d] for d in bm25[:5]])
    assert [r.doc.id for r in res.results] == first5
