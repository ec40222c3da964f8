"""The Python API audit (pyapi, sixth round): ``predict`` / ``rank`` return what sentence-transformers' CrossEncoder
returns and take its common keywords, document mappings refuse keys they would drop, errors name the caller's
positions, and the NaN and plain-folder hints speak to Python users."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerank.errors import ConfigError, RerankError
from rerank.heads.base import Reranker
from rerank.types import Candidate, Document, Query

PAIRS = [("q1", "aaaa"), ("q2", "b"), ("q1", "aa"), ("q2", "bbb"), ("q1", "a")]


class Lengths(Reranker):
    """Scores a document by its length less 2; records each scoring call's batch size and list lengths."""

    method = "test-audit6-lengths"
    independent_scores = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, list[int]]] = []

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        self.calls.append((self.config.batch_size, [len(c) for c in candidate_lists]))
        return [[len(c.doc.text) - 2.0 for c in cs] for cs in candidate_lists]

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]


class Doubled(Lengths):
    """:class:`Lengths` whose sentence-transformers activation doubles a score and saturates it at 3."""

    method = "test-audit6-doubled"

    def st_activation(self) -> Callable[[np.ndarray], np.ndarray] | None:
        return lambda x: np.minimum(2.0 * x, 3.0)


# ---------------------------------------------------------------- #2 the activation sentence-transformers applies


def test_predict_and_rank_pass_raw_scores_through_st_activation() -> None:
    raw, doubled = Lengths(), Doubled()
    assert raw.st_activation() is None
    assert raw.predict(PAIRS).tolist() == [2.0, -1.0, 0.0, 1.0, -1.0]
    assert doubled.predict(PAIRS).tolist() == [3.0, -2.0, 0.0, 2.0, -2.0]
    assert doubled.predict(PAIRS[0]) == 3.0  # one pair: one value
    assert doubled.predict(PAIRS, relevance=True).tolist() == pytest.approx(raw.predict(PAIRS, relevance=True))
    docs = ["aaaaaa", "aaaa", "a", "aaaaa"]  # raw 4, 2, -1, 3: doubled and saturated 3, 3, -2, 3
    # equal activated scores keep their input order, as CrossEncoder.rank's stable sort does
    assert doubled.rank("q", docs) == [{"corpus_id": 0, "score": 3.0}, {"corpus_id": 1, "score": 3.0},
                                       {"corpus_id": 3, "score": 3.0}, {"corpus_id": 2, "score": -2.0}]
    assert raw.rank("q", docs, top_k=2, return_documents=True) == [
        {"corpus_id": 0, "score": 4.0, "text": "aaaaaa"}, {"corpus_id": 3, "score": 3.0, "text": "aaaaa"}]
    assert doubled.predict([]).shape == (0,) and doubled.rank("q", []) == []


def test_predict_and_rank_take_batch_size_for_one_call() -> None:
    head = Lengths()
    head.predict(PAIRS, batch_size=3)
    head.rank("q", ["a", "b"], batch_size=7)
    assert [size for size, _ in head.calls] == [3, 7] and head.config.batch_size == 16  # restored after the call
    for bad in (0, -1, True, 2.0, "8"):
        with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 1, got "):
            head.predict(PAIRS, batch_size=bad)
    assert head.config.batch_size == 16


def test_batch_size_per_call_is_refused_where_calls_run_side_by_side() -> None:
    from rerank.client import RemoteReranker, RemoteRerankerConfig

    class SideBySide(Lengths):
        method = "test-audit6-side-by-side"
        serialise_calls = False

    with pytest.raises(ConfigError, match="batch_size cannot be set per call"):
        SideBySide().predict(PAIRS, batch_size=4)
    remote = RemoteReranker(RemoteRerankerConfig(base_url="http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="not read by the remote reranker"):
        remote.predict(PAIRS, batch_size=4)


def test_show_progress_bar_shows_a_bar_over_the_pairs(capsys: pytest.CaptureFixture[str]) -> None:
    head = Lengths()
    quiet = head.predict(PAIRS, batch_size=2)
    assert head.predict(PAIRS, batch_size=2, show_progress_bar=True).tolist() == quiet.tolist()
    err = capsys.readouterr().err
    assert "predict" in err and "5/5" in err and err.count("predict: 100%") == 1
    # without a bar one call scores every list; with one, calls of at least batch_size pairs, each query's list in
    # pieces of batch_size for a head whose scores are independent (q1's 3 pairs: 2 + 1, q2's 2 pairs: 2)
    assert [lens for _, lens in head.calls] == [[3, 2], [2], [1, 2]]
    head.rank("q", ["a", "bb", "ccc"], batch_size=1, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "rank: 100%" in err and "3/3" in err and [lens for _, lens in head.calls[3:]] == [[1], [1], [1]]


def test_show_progress_bar_keeps_a_list_dependent_heads_lists_whole(capsys: pytest.CaptureFixture[str]) -> None:
    class Share(Lengths):
        method = "test-audit6-share"
        independent_scores = False

        def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
            self.calls.append((self.config.batch_size, [len(c) for c in candidate_lists]))
            return [[len(c.doc.text) / sum(len(x.doc.text) for x in cs) for c in cs] for cs in candidate_lists]

    head = Share()
    quiet = head.predict(PAIRS, batch_size=1)
    assert head.predict(PAIRS, batch_size=1, show_progress_bar=True).tolist() == quiet.tolist()
    assert "5/5" in capsys.readouterr().err
    assert [lens for _, lens in head.calls] == [[3, 2], [3], [2]]


def test_convert_to_numpy_false_gives_floats() -> None:
    got = Doubled().predict(PAIRS, convert_to_numpy=False)
    assert got == [3.0, -2.0, 0.0, 2.0, -2.0] and all(type(x) is float for x in got)
    one = Doubled().predict(PAIRS[1], convert_to_numpy=False)
    assert one == -2.0 and type(one) is float
    assert isinstance(Doubled().predict(PAIRS, convert_to_numpy=True), np.ndarray)


@pytest.mark.parametrize(("call", "keyword"), [
    ("predict", "activation_fn"), ("predict", "apply_softmax"), ("predict", "convert_to_tensor"),
    ("predict", "batchsize"), ("rank", "convert_to_numpy"), ("rank", "activation_fn"),
])
def test_other_keywords_are_a_one_line_type_error_naming_the_supported_ones(call: str, keyword: str) -> None:
    head = Lengths()
    with pytest.raises(TypeError) as e:
        if call == "predict":
            head.predict(PAIRS, **{keyword: None})
        else:
            head.rank("q", ["a"], **{keyword: None})
    msg = str(e.value)
    assert "\n" not in msg and f"{call}() does not take {keyword!r}" in msg
    supported = "relevance, batch_size, show_progress_bar, convert_to_numpy" if call == "predict" else \
        "batch_size, show_progress_bar"
    assert f"its keywords are {supported} (" in msg


def _st_folders(root: Path) -> dict[str, Path]:
    """A tiny one-label BERT cross-encoder declaring no activation, and a copy declaring Identity (as
    cross-encoder/ms-marco-MiniLM-L6-v2 does)."""
    from rerank.testing import tiny_bert

    plain = tiny_bert(root / "plain", num_labels=1, seed=3)
    ident = root / "identity"
    shutil.copytree(plain, ident)
    config = json.loads((ident / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (ident / "config.json").write_text(json.dumps(config))
    return {"sigmoid": plain, "identity": ident}


def test_predict_and_rank_equal_sentence_transformers_on_a_cross_encoder_folder(tmp_path: Path) -> None:
    """Needs the cross-encoder head's ``st_activation`` (the activation the folder declares, Sigmoid by default):
    with the base's None this test fails on the folder that declares none."""
    from sentence_transformers import CrossEncoder

    docs = ["rain falls on the plain", "a cat sat", "the rain in spain stays mainly in the plain", "dogs bark"]
    pairs = [(q, d) for d in docs for q in ("rain in spain", "cats and dogs")]
    for activation, folder in _st_folders(tmp_path).items():
        head = Reranker.load("cross-encoder", model=str(folder))
        st = CrossEncoder(str(folder), device="cpu")
        want = st.predict(pairs)
        got = head.predict(pairs, batch_size=3)
        assert got.tolist() == pytest.approx(want.tolist(), abs=1e-6), activation
        logit = head.rerank(pairs[0][0], [pairs[0][1]]).results[0].score  # the raw score
        assert got[0] == pytest.approx(logit if activation == "identity" else 1.0 / (1.0 + math.exp(-logit)))
        assert head.predict(pairs, convert_to_numpy=False) == pytest.approx(
            [float(x) for x in st.predict(pairs, convert_to_numpy=False)], abs=1e-6)
        ranked, expect = head.rank("rain in spain", docs, return_documents=True), st.rank(
            "rain in spain", docs, return_documents=True)
        assert [(r["corpus_id"], r["text"]) for r in ranked] == [(r["corpus_id"], r["text"]) for r in expect]
        assert [r["score"] for r in ranked] == pytest.approx([r["score"] for r in expect], abs=1e-6)


# ---------------------------------------------------------------- #4 document mappings


def test_a_mapping_with_metadata_or_a_misspelt_key_is_refused_naming_the_keys_read() -> None:
    head = Lengths()
    with pytest.raises(ValueError) as e:
        head.rerank("q", [{"id": "a", "text": "x"}, {"id": "b", "text": "y", "metadata": {"page": 3}}])
    msg = str(e.value)
    assert msg.startswith("documents[1] (id 'b'): unknown key(s) 'metadata' in a document mapping; the keys read "
                          "are id, _id, text, title, score") and "join it back on result.doc.id" in msg
    with pytest.raises(ValueError, match=r"^documents\[0\] \(id 'a'\): unknown key\(s\) 'titel' in a document "
                                         r"mapping; the keys read are id, _id, text, title, score$"):
        head.rerank("q", [{"id": "a", "text": "x", "titel": "Geography"}])
    got = head.rerank("q", [{"_id": "a", "text": "xxx", "title": "T", "score": 1.5}, {"text": "y"}])
    assert [(r.doc, r.first_stage_score) for r in got.results] == [(Document("a", "xxx", "T"), 1.5),
                                                                  (Document("1", "y"), None)]


# ---------------------------------------------------------------- #6 error positions


def test_predict_errors_name_the_pair_and_rerank_batch_errors_the_list() -> None:
    head = Lengths()
    with pytest.raises(ValueError, match=r"^pairs\[2\]: the query is empty"):
        head.predict([("a", "d1"), ("a", "d2"), ("", "d3")])
    with pytest.raises(ValueError, match=r"^pairs\[3\]: document has a lone UTF-16 surrogate"):
        head.predict([("a", "d1"), ("a", "d2"), ("b", "d3"), ("b", "x\ud800")])
    with pytest.raises(ValueError, match=r"^pairs\[1\]: query has a lone UTF-16 surrogate"):
        head.predict([("a", "d1"), ("b\ud800", "d2")])
    with pytest.raises(TypeError, match=r"^docs_lists\[2\]\[1\]: documents must be str, Document, Candidate or "):
        head.rerank_batch(["q0", "q1", "q2"], [["x"], ["y"], ["z", None]])
    with pytest.raises(ValueError, match=r"^docs_lists\[1\]\[1\]: document id 'a' is given twice"):
        head.rerank_batch(["q0", "q1"], [["x"], [Document("a", "y"), Document("a", "z")]])
    with pytest.raises(TypeError, match=r"^documents\[1\]: documents must be str"):  # one list: no list index
        head.rerank("q", ["z", None])
    with pytest.raises(ValueError, match=r"^the query is empty"):
        head.rank(" ", ["x"])
    with pytest.raises(ValueError, match=r"^documents\[1\]: text has a lone UTF-16 surrogate"):
        head.rank("q", ["x", "y\udc00"])


# ---------------------------------------------------------------- #7 hints for Python users


def test_the_nan_hint_names_the_python_option_too() -> None:
    class NaN(Lengths):
        method = "test-audit6-nan"

        def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
            return [[math.nan for _ in cs] for cs in candidate_lists]

    with pytest.raises(RerankError) as e:
        NaN().rerank("q", ["a", "b"])
    assert "Reranker.load(..., dtype='float32') in Python" in str(e.value)
    assert "--reranker-set dtype=float32" in str(e.value)


def test_loading_a_plain_model_folder_without_a_method_names_the_method_that_loads_it(
        tiny_bert_dir: Path, tiny_llm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        Reranker.load(str(tiny_bert_dir))
    assert f"load it with Reranker.load('cross-encoder', model={str(tiny_bert_dir)!r})" in str(e.value)
    with pytest.raises(ConfigError, match=r"causal LM: load it with an LLM head, e.g. Reranker.load\('yes-no'"):
        Reranker.load(str(tiny_llm_dir))
    with pytest.raises(ConfigError) as e:
        Reranker.load(str(tmp_path))  # an empty folder: no guess
    assert "load it with" not in str(e.value) and "known methods: " in str(e.value)
