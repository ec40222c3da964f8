"""The BM25 index is built from the corpus tokenized as it streams, giving the same index and run as one-shot."""

from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np
import pytest
import Stemmer

import rerank.retrieval.bm25 as bm25_mod
from rerank.data.datasets import Dataset
from rerank.retrieval import build_retriever
from rerank.retrieval.bm25 import BM25Config
from rerank.types import Query
from tests.test_bm25 import write_beir

DOCS = [
    {"_id": "d1", "title": "Zebra facts", "text": "Striped animals of the savanna; zebras run and ran."},
    {"_id": "d2", "title": "", "text": "loyal dogs are running in the park"},
    {"_id": "d3", "title": "Running", "text": "loyal dogs are running in the park, the dogs"},
    {"_id": "d4", "title": "", "text": "the of and a"},  # only stopwords (under "en")
    {"_id": "d5", "title": "", "text": "!! ?"},  # no token at all
    {"_id": "d6", "title": "Library", "text": "a quiet library with old books and older bookshelves"},
    {"_id": "d7", "title": "", "text": "Savanna dogs: wild dogs running across the savanna at dawn"},
]
QUERIES = ["zebra runs", "loyal dogs", "the park", "library books", "savanna dogs running", "of the", "unicorn"]


@pytest.fixture()
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dataset:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    return write_beir(tmp_path / "c", DOCS)


def one_shot(config: BM25Config) -> bm25s.BM25:
    """The index as built before chunking: every text tokenized in one bm25s.tokenize call."""
    texts = [f"{d['title']} {d['text']}".strip() if config.include_title else d["text"] for d in DOCS]
    stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
    tokens = bm25s.tokenize(texts, stopwords=config.stopwords, stemmer=stemmer, show_progress=False)
    model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
    model.index(tokens, show_progress=False)
    return model


def columns(model: bm25s.BM25) -> dict[str, tuple[list[int], list[float]]]:
    """Each vocabulary term's (doc indices, scores) column of the index, keyed by the term (ids are arbitrary)."""
    s = model.scores
    return {term: (s["indices"][s["indptr"][i]:s["indptr"][i + 1]].tolist(),
                   s["data"][s["indptr"][i]:s["indptr"][i + 1]].tolist())
            for term, i in model.vocab_dict.items() if term != ""}  # "" is appended after the columns


@pytest.mark.parametrize(
    "options",
    [{}, {"stopwords": "en"}, {"stemmer": None}, {"stemmer": None, "stopwords": "en"}, {"include_title": False},
     {"method": "bm25+", "stopwords": "en"}, {"method": "robertson"}],
)
def test_streamed_build_equals_one_shot_build(corpus: Dataset, options: dict) -> None:
    config = BM25Config(show_progress=False, **options)
    streamed = build_retriever("bm25", corpus, show_progress=False, **options)
    assert not streamed.cache_hit
    ref = one_shot(config)
    assert streamed.doc_ids.tolist() == [d["_id"] for d in DOCS]
    assert columns(streamed.model) == columns(ref)
    assert streamed.model.scores["num_docs"] == ref.scores["num_docs"]
    if ref.nonoccurrence_array is not None:
        nonocc = {t: ref.nonoccurrence_array[i] for t, i in ref.vocab_dict.items() if t != ""}
        assert {t: streamed.model.nonoccurrence_array[i] for t, i in streamed.model.vocab_dict.items()
                if t != ""} == nonocc
    queries = {f"q{i}": Query(f"q{i}", text) for i, text in enumerate(QUERIES)}
    run = streamed.retrieve(queries, 10)
    expected = bm25_mod.BM25Retriever(ref, streamed.doc_ids.tolist(), config, streamed.cache_path, False).retrieve(
        queries, 10)
    assert {q: list(r) for q, r in run.items()} == {q: list(r) for q, r in expected.items()}
    assert any(run.values())
    loaded = build_retriever("bm25", corpus, show_progress=False, **options)  # the saved index gives the same run
    assert loaded.cache_hit and {q: list(r) for q, r in loaded.retrieve(queries, 10).items()} == {
        q: list(r) for q, r in run.items()}


def test_each_document_is_tokenized_as_it_is_read(corpus: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    read = 0
    stream = corpus.iter_corpus

    def counting_stream():
        nonlocal read
        for doc in stream():
            read += 1
            yield doc

    seen: list[int] = []  # documents read when the tokenizer hands out each document's ids
    tokenize = bm25s.tokenization.Tokenizer.streaming_tokenize

    def recording_tokenize(self, texts, *args, **kwargs):
        for ids in tokenize(self, texts, *args, **kwargs):
            seen.append(read)
            yield ids

    monkeypatch.setattr(corpus, "iter_corpus", counting_stream)
    monkeypatch.setattr(bm25s.tokenization.Tokenizer, "streaming_tokenize", recording_tokenize)
    build_retriever("bm25", corpus, show_progress=False)
    assert seen == list(range(1, len(DOCS) + 1))


def test_reading_and_tokenizing_the_corpus_shows_a_bar(
    corpus: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_retriever("bm25", corpus, show_progress=False)
    assert "read + tokenize corpus" not in capsys.readouterr().err
    build_retriever("bm25", write_beir(tmp_path / "other", DOCS[:3]), show_progress=True)
    err = capsys.readouterr().err
    assert "bm25 read + tokenize corpus" in err and "3doc" in err


def test_empty_documents_get_no_token(corpus: Dataset) -> None:
    r = build_retriever("bm25", corpus, show_progress=False, stopwords="en")
    assert np.all(r.model.scores["indices"] != 4)  # d5 (no token) is in no column
    assert "" in r.model.vocab_dict
