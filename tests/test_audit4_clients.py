"""``rerank serve`` as rerank client libraries read it (wire level, no client packages): ``POST /rerank`` takes TEI's
body (``texts``) or Infinity's Cohere-shaped one (``documents``, as LiteLLM's ``infinity/`` provider and
``infinity_client`` send it) and answers each in its own shape."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from serve_support import OverlapReranker
from test_serve import assert_error, local_ranking, running

from rerank.serve import ServeConfig

QUERY = "what is bm25 ranking"
DOCS = ["BM25 is a ranking function used by search engines", "the cat sat quietly", "ranking ranking ranking",
        "dense vectors and sparse vectors"]


def _ranked(results: list[dict]) -> tuple[list[int], list[float]]:
    return [x["index"] for x in results], [x["relevance_score"] for x in results]


def _want(ranking: list[tuple[int, float]]) -> tuple[list[int], object]:
    return [i for i, _ in ranking], pytest.approx([s for _, s in ranking])


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with running(OverlapReranker(), ServeConfig(api_key="k", model_name="served")) as url:
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": "Bearer k"}) as c:
            yield c


def test_rerank_answers_infinitys_shape_to_a_documents_body(client: httpx.Client) -> None:
    """LiteLLM's ``infinity/`` body (it always asks for documents) gets Infinity's response: ``document`` a plain
    string (LiteLLM wraps it as ``{"text": ...}``, ``infinity_client`` types it ``str``), ``usage`` and ``model``
    present (``infinity_client`` requires them), the ranking and relevance the head gives."""
    r = client.post("/rerank", json={"model": "served", "query": QUERY, "documents": DOCS, "top_n": 3,
                                     "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"object", "results", "model", "usage", "id", "created"}
    assert body["object"] == "rerank" and body["model"] == "served"
    assert isinstance(body["id"], str) and body["id"] and isinstance(body["created"], int)
    words = len(QUERY.split()) + sum(len(d.split()) for d in DOCS)
    assert body["usage"] == {"prompt_tokens": words, "total_tokens": words}
    assert _ranked(body["results"]) == _want(local_ranking(QUERY, DOCS)[:3])
    for x in body["results"]:
        assert set(x) == {"index", "relevance_score", "document"}
        assert x["document"] == DOCS[x["index"]]  # a string, not {"text": ...}


def test_infinity_body_without_documents_and_with_raw_scores(client: httpx.Client) -> None:
    """``infinity_client``'s defaults (``return_documents: false``, ``raw_scores: false``) give no ``document``;
    ``raw_scores: true`` puts the head's own score in ``relevance_score``, as Infinity does."""
    plain = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": False,
                                         "raw_scores": False, "model": "default/not-specified"})
    assert plain.status_code == 200, plain.text
    results = plain.json()["results"]
    assert [set(x) for x in results] == [{"index", "relevance_score"}] * len(DOCS)
    assert _ranked(results) == _want(local_ranking(QUERY, DOCS))
    raw = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "raw_scores": True}).json()["results"]
    assert _ranked(raw) == _want(local_ranking(QUERY, DOCS, raw=True))


def test_tei_body_at_rerank_and_cohere_v1_keep_their_shapes(client: httpx.Client) -> None:
    """TEI's clients (haystack, LlamaIndex, ``rerankers``) still get TEI's bare list; ``/v1/rerank`` (Jina's, vLLM's
    and Together's clients) still echoes ``{"text": ...}``."""
    tei = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True, "top_n": 2})
    assert tei.status_code == 200, tei.text
    assert tei.json() == [{"index": i, "score": pytest.approx(s), "text": DOCS[i]}
                          for i, s in local_ranking(QUERY, DOCS)[:2]]
    v1 = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": True})
    assert v1.status_code == 200, v1.text
    assert all(x["document"] == {"text": DOCS[x["index"]]} for x in v1.json()["results"])


@pytest.mark.parametrize(("extra", "found"), [({"texts": DOCS, "documents": DOCS}, "both 'texts' and 'documents'"),
                                              ({}, "neither 'texts' nor 'documents'")])
def test_rerank_body_with_both_or_neither_form_is_a_422_naming_them(
    client: httpx.Client, extra: dict, found: str
) -> None:
    body = assert_error(client.post("/rerank", json={"query": QUERY, **extra}), 422, "invalid_request")
    assert body["message"] == ("POST /rerank takes TEI's body {query, texts, ...} or Infinity's {query, documents, "
                               f"...}}; this body has {found}")


def test_infinity_body_errors_name_the_field(client: httpx.Client) -> None:
    """A documents body is validated as the Cohere body it is: a wrong field is a 422 naming it."""
    body = assert_error(client.post("/rerank", json={"query": QUERY, "documents": DOCS, "return_text": True}), 422)
    assert body["message"] == "unknown field 'return_text'"


ROUTES = "POST /v1/rerank, /v2/rerank, /rerank (and GET /info, GET /metrics, GET or HEAD /health)"


@pytest.mark.parametrize("path", ["/v1/v2/rerank", "/v1/v1/rerank", "/nope"])
def test_a_wrong_path_is_a_404_naming_it_and_the_routes_served(client: httpx.Client, path: str) -> None:
    """A base URL one path too deep (``cohere.ClientV2(base_url=URL + "/v1")`` posts to ``/v1/v2/rerank``) is told
    what it asked for and what is served, not a bare "Not Found"."""
    body = assert_error(client.post(path, json={"query": "a", "documents": ["a"]}), 404, "not_found")
    assert body["message"] == f"no route POST {path}; this server answers {ROUTES}"


def test_a_wrong_method_is_a_405_naming_it_and_what_the_path_answers(client: httpx.Client) -> None:
    resp = client.get("/v1/rerank")
    body = assert_error(resp, 405, "method_not_allowed")
    assert body["message"] == f"no route GET /v1/rerank (/v1/rerank answers POST only); this server answers {ROUTES}"
    assert resp.headers["allow"] == "POST"


def test_a_404_repeats_at_most_200_characters_of_the_path(client: httpx.Client) -> None:
    path = "/" + "x" * 500
    body = assert_error(client.get(path), 404, "not_found")
    assert body["message"] == f"no route GET {path[:200]}...; this server answers {ROUTES}"


def test_serve_docs_give_each_litellm_provider_its_base_url() -> None:
    """docs/serve.md's "Clients" lists LiteLLM's providers with the base URL each needs (Infinity's at the root, where
    ``/rerank`` answers its shape), and the server's per-call warnings interval as the code has it."""
    from rerank.serve.app import CALL_WARNINGS_EVERY_S

    doc = (HERE.parent / "docs" / "serve.md").read_text()
    section = doc.split("## Clients", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in section.splitlines() if line.startswith("| `")}
    assert {"`cohere/`", "`jina_ai/`", "`huggingface/` (TEI)", "`infinity/`", "`hosted_vllm/`, `together_ai/`",
            "`voyage/`"} <= set(rows)
    assert "server root" in rows["`infinity/`"] and "/v1" in rows["`hosted_vllm/`, `together_ai/`"]
    assert "not supported" in rows["`voyage/`"]
    assert "Infinity-shaped requests are Cohere v1's" not in doc
    assert CALL_WARNINGS_EVERY_S == 600 and "at most once every 10 minutes" in doc
