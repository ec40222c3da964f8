"""Python API inputs that used to fail deep inside torch, numpy or an index, now named in one line at the call.

Covers: a cross-encoder / bi-encoder ``max_length`` beyond the model's position embeddings (BERT-style and
RoBERTa-style tables), devices that do not exist on this machine, GroupRank fusion of infinite first-stage scores, and
the queries / ``k`` arguments of the BM25, dense and hybrid retrievers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rerank.backends.scripted import ScriptedBackend
from rerank.backends.transformers import resolve_device
from rerank.data.datasets import Dataset
from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.methods.grouprank.head import GroupRankConfig, GroupRankReranker, minmax
from rerank.retrieval import build_retriever
from rerank.retrieval.base import FirstStage, Queries
from rerank.retrieval.hybrid import HybridConfig, HybridRetriever
from rerank.testing import build_tokenizer, tiny_bert
from rerank.types import Candidate, Document, Query, Run

LONG_DOC = "word " * 800


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny one-label BERT cross-encoder (512 positions)."""
    return tiny_bert(tmp_path_factory.mktemp("ce") / "bert", num_labels=1)


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory, bert_dir: Path) -> Path:
    """A tiny RoBERTa-style classifier: 66 position rows, padding index 1, so 64 usable positions."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(bert_dir)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=66, pad_token_id=1, num_labels=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ce") / "roberta"
    RobertaForSequenceClassification(cfg).save_pretrained(path, safe_serialization=True)
    tok.model_max_length = 1_000_000  # a tokenizer that states no limit: the model's table must
    tok.save_pretrained(path)
    return path


# ---------------------------------------------------------------- max_length vs the model's positions


def test_cross_encoder_max_length_beyond_the_models_positions_is_a_config_error(bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"max_length 1024 exceeds this model's limit of 512 tokens") as err:
        Reranker.load("cross-encoder", model=str(bert_dir), max_length=1024)
    assert "\n" not in str(err.value)
    head = Reranker.load("cross-encoder", model=str(bert_dir), max_length=512)
    assert len(head.rerank("q", [LONG_DOC]).results) == 1


def test_roberta_style_positions_reserve_the_padding_offset(roberta_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from rerank.backends.transformers import position_limit

    assert position_limit(AutoModelForSequenceClassification.from_pretrained(roberta_dir)) == 64
    with pytest.raises(ConfigError, match="max_length 65 exceeds this model's limit of 64 tokens"):
        Reranker.load("cross-encoder", model=str(roberta_dir), max_length=65)
    for options in ({"max_length": 64}, {}):  # unset: the tokenizer says nothing, the model's 64 apply
        head = Reranker.load("cross-encoder", model=str(roberta_dir), **options)
        assert head.max_length == 64
        score = head.rerank("q", [LONG_DOC]).results[0].score
        assert math.isfinite(score)


def test_bi_encoder_max_length_beyond_the_models_positions_is_a_config_error(bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="max_doc_tokens 1024 exceeds this model's limit of 512 tokens"):
        Reranker.load("bi-encoder", model=str(bert_dir), max_doc_tokens=1024)
    head = Reranker.load("bi-encoder", model=str(bert_dir), max_doc_tokens=512)
    assert len(head.rerank("q", [LONG_DOC]).results) == 1


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "nonsense"])
def test_unknown_device_is_a_config_error(device: str) -> None:
    with pytest.raises(ConfigError, match=f"device '{device}' is unknown; use cpu, cuda, cuda:N or mps"):
        resolve_device(device)


def test_unavailable_device_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device 'cuda' is not available here \(torch.cuda.is_available\(\) is"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="device 'cuda:2' is not available here: 2 cuda device"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device 'mps' is not available here"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="device 'meta' is not available here"):
        resolve_device("meta")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
@pytest.mark.parametrize("method", ["cross-encoder", "bi-encoder"])
def test_loading_on_a_missing_gpu_fails_before_the_model_loads(bert_dir: Path, method: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", no_load)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_load)
    for device in ("cuda", "gpu"):
        with pytest.raises(ConfigError, match=f"device '{device}' is (not available here|unknown)"):
            Reranker.load(method, model=str(bert_dir), device=device)


# ---------------------------------------------------------------- GroupRank fusion of infinite scores


def test_grouprank_minmax_places_infinities() -> None:
    inf = math.inf
    assert minmax([inf, 1.0, 2.0, 3.0]) == [1.0, 0.0, 0.25, 0.5]
    assert minmax([-inf, 1.0, 3.0]) == [0.0, 0.5, 1.0]
    assert minmax([1.0, 2.0, 3.0]) == [0.0, 0.5, 1.0]
    assert minmax([2.0, 2.0]) == [0.0, 0.0]  # constant: no ordering, as before
    assert minmax([inf, inf]) == [0.0, 0.0]


@pytest.mark.parametrize("top", [math.inf, -math.inf])
def test_grouprank_fusion_with_an_infinite_first_stage_score(top: float) -> None:
    def equal_scores(prompt: str) -> str:
        ids = [k for k in range(1, 4) if f"[{k}]" in prompt]
        return "<reason>ok</reason><answer>{" + ", ".join(f'"[{k}]": 5' for k in ids) + "}</answer>"

    head = GroupRankReranker(GroupRankConfig(group_size=3, repeats=1),
                             backend=ScriptedBackend(build_tokenizer(), generate_fn=equal_scores))
    cands = [Candidate(Document(d, f"text {d}"), score=s) for d, s in (("a", top), ("b", 2.0), ("c", 1.0))]
    scores = head.score_batch([Query("q", "query")], [cands])[0]
    assert all(math.isfinite(s) for s in scores)
    order = sorted("abc", key=lambda d: -scores["abc".index(d)])
    assert order == (["a", "b", "c"] if top > 0 else ["b", "c", "a"])


# ---------------------------------------------------------------- retriever arguments


BAD_K = [(5.0, TypeError, r"k \(the retrieval depth\) must be an integer >= 1, got 5.0 \(float\)"),
         ("5", TypeError, r"k \(the retrieval depth\) must be an integer >= 1, got '5' \(str\)"),
         (True, TypeError, r"k \(the retrieval depth\) must be an integer >= 1, got True"),
         (0, ConfigError, "retrieval depth k must be >= 1, got 0")]
BAD_QUERIES = [("zebra", "queries must be a {query id: Query or text} mapping or a list of Query, got str"),
               (Query("q", "zebra"), r"got Query \(wrap a single Query in a list\)"),
               (None, "queries must be .*, got NoneType"),
               (["zebra"], r"queries\[0\] must be a Query, got str \(texts go in a {query id: text} mapping\)"),
               ({"q": 3}, r"queries\['q'\] must be a Query or the query text, got int"),
               ({1: "zebra"}, "queries: query id 1 must be a string, got int")]


def test_retrieve_args_forms() -> None:
    from rerank.retrieval.base import retrieve_args

    q = Query("q1", "zebra")
    assert retrieve_args({"q1": q}, 5) == ({"q1": q}, 5)
    assert retrieve_args({"q1": "zebra"}, np.int64(5)) == ({"q1": q}, 5)
    assert retrieve_args([q, Query("q2", "dog")], 1)[0] == {"q1": q, "q2": Query("q2", "dog")}
    assert retrieve_args((x for x in [q]), 1)[0] == {"q1": q}
    assert retrieve_args({}, 1) == ({}, 1)
    with pytest.raises(ValueError, match="query id 'q1' appears twice"):
        retrieve_args([q, q], 1)


def test_bm25_retrieve_takes_every_query_form_and_names_bad_arguments(tiny_ds: Dataset) -> None:
    bm = build_retriever("bm25", tiny_ds, show_progress=False)
    want = bm.retrieve({"q1": Query("q1", "zebra")}, 5)
    assert [d for d, _ in want["q1"]] == ["d1", "d3"] or [d for d, _ in want["q1"]] == ["d3", "d1"]
    assert bm.retrieve({"q1": "zebra"}, 5) == want
    assert bm.retrieve([Query("q1", "zebra")], np.int32(5)) == want
    for k, kind, match in BAD_K:
        with pytest.raises(kind, match=match):
            bm.retrieve({"q1": "zebra"}, k)
    for queries, match in BAD_QUERIES:
        with pytest.raises(TypeError, match=match):
            bm.retrieve(queries, 5)


def test_dense_retrieve_takes_every_query_form_and_names_bad_arguments(tiny_ds: Dataset, bert_dir: Path) -> None:
    dense = build_retriever("dense", tiny_ds, model=str(bert_dir), progress=False)
    want = dense.retrieve({"q1": Query("q1", "zebra")}, 2)
    assert len(want["q1"]) == 2
    assert dense.retrieve({"q1": "zebra"}, 2) == want == dense.retrieve([Query("q1", "zebra")], np.int64(2))
    assert dense.retrieve([], 2) == {}
    for k, kind, match in BAD_K:
        with pytest.raises(kind, match=match):
            dense.retrieve({"q1": "zebra"}, k)
    with pytest.raises(TypeError, match=r"queries\[0\] must be a Query"):
        dense.retrieve(["zebra"], 2)


class _FixedStage(FirstStage):
    """A first stage that returns a fixed run (records what it was asked)."""

    name = "fixed-test"

    def __init__(self, run: Run) -> None:
        self.run = run
        self.asked: list[tuple[dict[str, Query], int]] = []

    @classmethod
    def from_dataset(cls, dataset: Dataset, **options: object) -> _FixedStage:
        raise NotImplementedError

    def retrieve(self, queries: Queries, k: int) -> Run:
        self.asked.append((dict(queries), k))
        return {q: self.run.get(q, [])[:k] for q in queries}


def test_hybrid_retrieve_checks_its_arguments_once_for_both_sides() -> None:
    sparse, dense = _FixedStage({"q": [("a", 2.0), ("b", 1.0)]}), _FixedStage({"q": [("b", 0.9), ("a", 0.1)]})
    hy = HybridRetriever(sparse, dense, HybridConfig())  # type: ignore[arg-type]
    run = hy.retrieve({"q": "text"}, np.int64(2))
    assert set(run) == {"q"} and {d for d, _ in run["q"]} == {"a", "b"}
    assert sparse.asked == dense.asked == [({"q": Query("q", "text")}, 2)]
    assert type(sparse.asked[0][1]) is int
    assert hy.retrieve([Query("q", "text")], 2) == run
    for k, kind, match in BAD_K:
        with pytest.raises(kind, match=match):
            hy.retrieve({"q": "text"}, k)
    with pytest.raises(TypeError, match="queries must be"):
        hy.retrieve("text", 2)
    assert len(sparse.asked) == 2  # the bad calls never reached a side
