"""The Python API's contract under real use: threads, ``top_k`` cuts, bad documents, unparsable LLM outputs."""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from rerank import Reranker
from rerank.errors import RerankError
from rerank.types import Candidate, Document, Query
from tests.serve_support import OverlapReranker

QUERY = "what is bm25?"
DOCS = ["BM25 ranks documents by term frequency.", "Paris.", "cats are mammals and so are dogs", "bm25 for search",
        "search engines rank", "a", "b c", "bm25 bm25"]


def test_threads_share_one_llm_head(sharp_llm_dir: Path) -> None:
    """A yes-no head on transformers reads the last position through a forward hook on the shared LM head: calls from
    several threads (a web framework's pool) each got the other's hook and failed; they now run one at a time."""
    rr = Reranker.load("yes-no", model=str(sharp_llm_dir))
    cases = {"a": (QUERY, DOCS[:3]), "b": ("capital of france", ["Paris is the capital.", "BM25 is a function", "x"])}
    want = {k: [(r.id, r.score) for r in rr.rerank(*v).results] for k, v in cases.items()}
    errors: list[BaseException] = []
    got: list[bool] = []

    def job(k: str) -> None:
        for _ in range(6):
            try:
                got.append([(r.id, r.score) for r in rr.rerank(*cases[k]).results] == want[k])
            except Exception as e:  # noqa: BLE001 - every failure is collected and asserted on below
                errors.append(e)

    threads = [threading.Thread(target=job, args=(k,)) for k in ("a", "b", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == [True] * 24


def test_relevance_is_over_the_whole_list_not_the_top_k_cut(sharp_llm_dir: Path) -> None:
    """Position heads score n..1: their relevance (score / n) read on a ``top_k`` cut gave 1.0 to every kept
    document; each ranked document now carries the relevance computed before the cut."""
    rr = Reranker.load("first", model=str(sharp_llm_dir))
    full = rr.rerank(QUERY, DOCS)
    top = rr.rerank(QUERY, DOCS, top_k=3)
    expected = rr.relevance([r.score for r in full.results])
    assert [r.relevance for r in full.results] == expected == [1.0 - i / len(DOCS) for i in range(len(DOCS))]
    assert [r.relevance for r in top.results] == expected[:3]


def test_pointwise_relevance_is_the_heads_mapping() -> None:
    rr = OverlapReranker()
    res = rr.rerank("bm25 ranking", ["bm25 ranking", "x", "bm25"], top_k=2)
    assert [r.relevance for r in res.results] == rr.relevance([r.score for r in res.results])


@pytest.mark.parametrize(
    ("docs", "error", "match"),
    [
        ([{"id": "d1", "text": None}], TypeError, r"documents\[0\] \(id 'd1'\): text must be a string, got NoneType"),
        ([{"id": None, "text": "x"}], TypeError, r"documents\[0\]: id must be a string or an integer"),
        ([{"id": "d1", "body": "x"}], ValueError, r"documents\[0\] \(id 'd1'\): a document mapping needs a 'text' key"),
        (["a", Document("d1", None)], TypeError, r"documents\[1\] \(id 'd1'\): text must be a string"),  # type: ignore[arg-type]
        ([Document("d1", "x", None)], TypeError, r"title must be a string"),  # type: ignore[arg-type]
        ([Candidate("x")], TypeError, r"a Candidate's doc must be a Document, got str"),  # type: ignore[arg-type]
        ([Candidate(Document("d1", "x"), math.nan)], ValueError, r"documents\[0\] \(id 'd1'\): first-stage score is NaN"),
        ([Candidate(Document("d1", "x"), "3")], TypeError, r"first-stage score '3' is not a number"),  # type: ignore[arg-type]
        ([{"id": "d1", "text": "x", "score": math.nan}], ValueError, r"first-stage score is NaN"),
        (["a", "b", Document("1", "c")], ValueError,
         r"documents\[2\]: document id '1' is given twice in one request \(plain strings get their positions as ids"),
        ([Document("d", "a"), Document("d", "b")], ValueError, r"documents\[1\]: document id 'd' is given twice"),
    ],
)
def test_bad_documents_are_named(docs: list, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        OverlapReranker().rerank("q", docs)


def test_documents_of_other_number_types_and_infinite_scores_pass() -> None:
    docs = [Candidate(Document("a", "bm25"), np.float32(2.0)), Candidate(Document("b", "x"), math.inf),
            {"id": 7, "text": "bm25", "score": np.int64(1)}]
    res = OverlapReranker().rerank("bm25", docs)
    assert [(r.id, r.first_stage_score) for r in res.results] == [("a", 2.0), ("7", 1.0), ("b", math.inf)]
    assert all(type(r.first_stage_score) is float for r in res.results)


def test_top_k_takes_numpy_integers_and_refuses_others() -> None:
    rr = OverlapReranker()
    assert len(rr.rerank("bm25", DOCS, top_k=np.int64(2)).results) == 2
    for bad in (0, 2.0, "2", True):
        with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
            rr.rerank("bm25", DOCS, top_k=bad)  # type: ignore[arg-type]


class _NaNHead(OverlapReranker):
    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        return [[math.nan if c.doc.id == "1" else 1.0 for c in cands] for cands in candidate_lists]


def test_a_nan_score_is_an_error_not_an_order() -> None:
    with pytest.raises(RerankError, match=r"scored 1 of 3 documents of query '0' NaN \(e.g. '1'\)"):
        _NaNHead().rerank("q", ["a", "b", "c"])


class _Garbled(OverlapReranker):
    """Records one unparsable and one repaired model output per call, as an LLM head does."""

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        self.stats.record(failed=True, example="I am sorry, I cannot rank these.")
        self.stats.record(repaired=True, example="[2] > [1]")
        return super().score_batch(queries, candidate_lists)


def test_parse_failures_of_a_call_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    rr = _Garbled()
    with caplog.at_level(logging.WARNING, logger="rerank.heads.base"):
        rr.rerank("q", ["a", "b"])
    assert ("1 of 2 model outputs failed to parse and 1 were repaired in this call" in caplog.text
            and "I am sorry" in caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rerank.heads.base"):
        OverlapReranker().rerank("q", ["a", "b"])
    assert caplog.text == ""


def test_python_errors_name_the_argument_not_a_cli_flag(tmp_path: Path) -> None:
    from rerank.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^model .*no-such-model does not exist"):
        Reranker.load("cross-encoder", model=str(tmp_path / "no-such-model"))


def test_a_model_folder_cannot_choose_what_runs_or_where_data_goes(tiny_bert_dir: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A downloaded folder's rerank.json setting trust_remote_code ran the folder's own code; one naming the remote
    reranker and a base_url sent queries, documents and $RERANK_API_KEY to that host."""
    import json
    import shutil

    from rerank.errors import ConfigError
    from rerank.methods.record import read_record

    folder = tmp_path / "downloaded"
    shutil.copytree(tiny_bert_dir, folder)
    record = {"format": "rerank-model", "version": 1, "method": "cross-encoder", "kind": "reranker",
              "options": {"max_length": 64, "trust_remote_code": True, "backend_options": {"base_url": "http://x"}}}
    (folder / "rerank.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="rerank.methods.record"):
        assert read_record(folder)["options"] == {"max_length": 64, "backend_options": {}}
        read_record(folder)
    assert caplog.text.count("sets trust_remote_code, backend_options.base_url, which only the user may choose") == 1
    (folder / "rerank.json").write_text(json.dumps({**record, "options": {"max_length": 64, "trust_remote_code": True}}))
    rr = Reranker.load(str(folder), allow_new_head=True)
    assert rr.config.trust_remote_code is False and rr.config.max_length == 64
    (folder / "rerank.json").write_text(json.dumps({**record, "method": "remote",
                                                    "options": {"base_url": "http://attacker"}}))
    with pytest.raises(ConfigError, match="a model folder cannot name the remote reranker"):
        Reranker.load(str(folder))


def test_a_new_cross_encoder_head_is_the_same_every_load(tiny_st_dir: Path) -> None:
    """allow_new_head on a bare encoder drew a different random head each load: two runs of one command differed
    (and each exported a new ONNX cache entry). The caller's random state is left as it was."""
    import torch

    enc = next(p for p in tiny_st_dir.rglob("config.json")).parent
    state = torch.get_rng_state()
    a = Reranker.load("cross-encoder", model=str(enc), allow_new_head=True).rerank("q", ["a b", "c d e"])
    b = Reranker.load("cross-encoder", model=str(enc), allow_new_head=True).rerank("q", ["a b", "c d e"])
    assert [(r.id, r.score) for r in a.results] == [(r.id, r.score) for r in b.results]
    assert torch.equal(torch.get_rng_state(), state)


def test_an_empty_query_is_an_error() -> None:
    for query in ("", "  \n", Query("q7", " ")):
        with pytest.raises(ValueError, match="query 0 is empty"):
            OverlapReranker().rerank(query, ["a"])
