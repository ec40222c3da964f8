"""CPU runtimes of the encoder models (rerank.runtime): ONNX Runtime / OpenVINO scores against torch on tiny models,
the export cache, and the option checks.

Tolerances: float ONNX and OpenVINO run the same float32 graph as torch, so scores and embeddings agree to 1e-4;
int8 (dynamic quantization, per-channel weights) moves scores more: on MiniLM with a seeded head, by at most 20% of
their spread with a Spearman correlation >= 0.85 over 15 pairs (what the quality on real data is: docs/results.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.retrieval.dense import BiEncoder
from rerank.runtime import check_runtime

QUERIES = ["what is a cat", "the passage about a mat", "dogs"]
DOCS = [
    "the cat sat on the mat",
    "a dog barked at the passage about the query " * 20,  # cut to max_length
    "mat",
    "what is a query and what is a document in a search engine that ranks passages",
    "cats and dogs",
]
PAIRS = [(q, d) for q in QUERIES for d in DOCS]


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT cross-encoder with its classifier scaled up, so its scores spread over about one unit (the random
    head's spread by 1e-3)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerank.testing import tiny_bert

    src = tiny_bert(tmp_path_factory.mktemp("ce-src") / "m", num_labels=1, seed=0)
    model = AutoModelForSequenceClassification.from_pretrained(src)
    with torch.no_grad():
        model.classifier.weight.mul_(1000.0)
    out = tmp_path_factory.mktemp("ce") / "m"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def _ce(path: Path, **options) -> Reranker:  # noqa: ANN003
    return Reranker.load("cross-encoder", model=str(path), batch_size=4, max_length=48, **options)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_float_runtimes_score_as_torch(ce_dir: Path, runtime: str) -> None:
    want = _ce(ce_dir).score_pairs(PAIRS)
    head = _ce(ce_dir, runtime=runtime)
    got = head.score_pairs(PAIRS)
    assert np.ptp(want) > 0.3  # scores that differ, so agreement means something
    assert got == pytest.approx(want, abs=1e-4)
    assert head.describe()["runtime"]["runtime"] == runtime
    # the order a reranking gives is the same too
    ranked = [r.doc.id for r in head.rerank(QUERIES[0], DOCS).results]
    assert ranked == [r.doc.id for r in _ce(ce_dir).rerank(QUERIES[0], DOCS).results]


@pytest.fixture(scope="module")
def minilm_ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2's encoder with a seeded 1-label head scaled to score spreads of about 2: real hidden states,
    so quantization error is measured against differences that come from the texts."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from rerank.models import minilm_path

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=1)
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)
    out = tmp_path_factory.mktemp("minilm-ce") / "m"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(out)
    return out


def test_int8_scores_close_to_torch(minilm_ce_dir: Path) -> None:
    from scipy.stats import spearmanr

    want = np.array(_ce(minilm_ce_dir).score_pairs(PAIRS))
    head = _ce(minilm_ce_dir, runtime="onnx", quantize="int8")
    got = np.array(head.score_pairs(PAIRS))
    assert head.runner is not None and head.runner.path.name == "model.int8.onnx"
    assert np.ptp(want) > 1.0
    assert spearmanr(got, want).statistic >= 0.85  # 0.94 measured
    assert np.abs(got - want).max() <= 0.2 * np.ptp(want)  # 0.13 measured
    assert not np.allclose(got, want, atol=1e-3)  # it is the quantized model that ran


def test_export_is_cached_by_weights(ce_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank import runtime
    from rerank.testing import tiny_bert

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    calls = {"export": 0, "quantize": 0}
    real_export, real_quantize = runtime._export, runtime._quantize

    def counting(name, fn):  # noqa: ANN001, ANN202
        def wrapped(*a, **k):  # noqa: ANN002, ANN003, ANN202
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(runtime, "_export", counting("export", real_export))
    monkeypatch.setattr(runtime, "_quantize", counting("quantize", real_quantize))
    first = _ce(ce_dir, runtime="onnx", quantize="int8")
    assert calls == {"export": 1, "quantize": 1}
    again = _ce(ce_dir, runtime="onnx", quantize="int8")
    _ce(ce_dir, runtime="openvino")  # reads the same float export
    assert calls == {"export": 1, "quantize": 1}
    assert again.runner.path == first.runner.path and str(first.runner.path).startswith(str(tmp_path / "cache"))
    assert again.score_pairs(PAIRS) == first.score_pairs(PAIRS)
    other = tiny_bert(tmp_path / "other", num_labels=1, seed=1)  # other weights: another export
    assert _ce(other, runtime="onnx").runner.path.parent != first.runner.path.parent
    assert calls["export"] == 2


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_bi_encoder_runtimes_embed_as_torch(tiny_st_dir: Path, runtime: str) -> None:
    from rerank.retrieval.index import doc_encoding_key

    ref = BiEncoder.load(tiny_st_dir, device="cpu")
    enc = BiEncoder.load(tiny_st_dir, runtime=runtime)
    assert enc.device == torch.device("cpu") and set(enc.runners) == {"query", "doc"}
    for side, texts in (("query", QUERIES), ("doc", DOCS)):
        want = ref.encode_numpy(texts, side, batch_size=2)
        got = enc.encode_numpy(texts, side, batch_size=2)
        np.testing.assert_allclose(got, want, atol=1e-4)
    # embeddings of another runtime are cached apart from torch's; torch's key is the one of before runtimes
    assert "runtime" not in doc_encoding_key(ref, "sha")
    assert doc_encoding_key(enc, "sha")["runtime"] == [runtime, "none"]
    assert enc.describe()["runtime"] == runtime


def test_bi_encoder_head_and_dense_retriever_take_the_options(tiny_st_dir: Path, tiny_beir_dir: Path) -> None:
    from rerank.data.datasets import Dataset
    from rerank.retrieval.dense import DenseRetriever

    head = Reranker.load("bi-encoder", model=str(tiny_st_dir), runtime="onnx", quantize="int8")
    assert head.encoder.runtime == ("onnx", "int8")  # type: ignore[attr-defined]
    ref = Reranker.load("bi-encoder", model=str(tiny_st_dir))
    got = [r.doc.id for r in head.rerank(QUERIES[0], DOCS).results]
    assert sorted(got) == sorted(r.doc.id for r in ref.rerank(QUERIES[0], DOCS).results)
    ds = Dataset(tiny_beir_dir)
    queries = ds.split_queries("test", 3)
    dense = DenseRetriever.from_dataset(ds, model=str(tiny_st_dir), runtime="onnx", progress=False)
    plain = DenseRetriever.from_dataset(ds, model=str(tiny_st_dir), progress=False)
    a, b = dense.retrieve(queries, 5), plain.retrieve(queries, 5)
    assert [d for d, _ in a[next(iter(a))]] == [d for d, _ in b[next(iter(b))]]


def test_bad_runtime_options_are_one_line_errors(ce_dir: Path, tiny_beir_dir: Path, run_cli) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="runtime must be one of torch, onnx, openvino"):
        check_runtime("tensorrt", "none")
    with pytest.raises(ConfigError, match="quantize must be one of"):
        check_runtime("onnx", "int4")
    with pytest.raises(ConfigError, match="needs runtime: onnx"):
        check_runtime("torch", "int8")
    with pytest.raises(ConfigError, match="onnx only"):
        check_runtime("openvino", "int8")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        check_runtime("onnx", "none", device="cuda")
    with pytest.raises(ConfigError, match="float32"):
        _ce(ce_dir, runtime="onnx", dtype="bfloat16")
    rc, _, err = run_cli("eval", "--dataset", tiny_beir_dir, "--retriever", "bm25", "--reranker", "cross-encoder",
                         "--model", ce_dir, "--reranker-set", "runtime=tensorrt", "--output",
                         tiny_beir_dir.parent / "bad-runtime")
    assert rc == 2 and "--reranker-set runtime=tensorrt: must be one of" in err and "Traceback" not in err
