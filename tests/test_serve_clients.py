"""``rerank serve`` driven by the real clients RAG stacks use (extra ``clients``), on loopback: the official ``cohere``
SDK (``Client`` and ``ClientV2``), ``langchain-cohere``'s ``CohereRerank`` inside a ``ContextualCompressionRetriever``,
the ``rerankers`` library's Cohere, Jina and TEI providers, and LlamaIndex's TEI rerank postprocessor. Each must
return the order (and the [0, 1] relevance) of the head called in process, with an API key, sending every field it
sends by default and the optional ones it offers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from serve_support import OverlapReranker  # noqa: E402
from test_serve import DOCS, QUERIES, local_ranking, running  # noqa: E402

from rerank.serve import ServeConfig  # noqa: E402

KEY = "client-test-key"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running(OverlapReranker(), ServeConfig(api_key=KEY, model_name="served-overlap")) as u:
        yield u


def test_cohere_sdk_client_v1(url: str) -> None:
    import cohere

    co = cohere.Client(api_key=KEY, base_url=url)
    for q in QUERIES:
        res = co.rerank(model="rerank-english-v3.0", query=q, documents=DOCS)
        assert [(r.index, r.relevance_score) for r in res.results] == local_ranking(q, DOCS)
        assert res.meta.api_version.version == "1" and res.meta.billed_units.search_units == 1
        assert res.id
    top = co.rerank(model="m", query=QUERIES[0], documents=DOCS, top_n=2, return_documents=True, max_chunks_per_doc=10)
    want = local_ranking(QUERIES[0], DOCS)[:2]
    assert [(r.index, r.relevance_score) for r in top.results] == want
    assert [r.document.text for r in top.results] == [DOCS[i] for i, _ in want]
    objs = [{"title": d.split()[0], "body": d, "url": f"u{i}"} for i, d in enumerate(DOCS)]
    ranked = co.rerank(model="m", query=QUERIES[2], documents=objs, rank_fields=["title", "body"],
                       return_documents=True)
    texts = [f"title: {o['title']}\nbody: {o['body']}" for o in objs]
    assert [(r.index, r.relevance_score) for r in ranked.results] == local_ranking(QUERIES[2], texts)
    assert ranked.results[0].document.url == objs[ranked.results[0].index]["url"]  # v1 echoes the whole object
    with pytest.raises(cohere.UnauthorizedError):
        cohere.Client(api_key="wrong", base_url=url).rerank(model="m", query="a", documents=["a"])


def test_cohere_sdk_client_v2(url: str) -> None:
    import cohere

    co = cohere.ClientV2(api_key=KEY, base_url=url)
    for q in QUERIES:
        res = co.rerank(model="rerank-v3.5", query=q, documents=DOCS, top_n=3, max_tokens_per_doc=4096, priority=0)
        assert [(r.index, r.relevance_score) for r in res.results] == local_ranking(q, DOCS)[:3]
        assert res.meta.api_version.version == "2"
        assert all(0.0 <= r.relevance_score <= 1.0 for r in res.results)
    cut = co.rerank(model="m", query="bm25 ranking", documents=["x y z bm25 ranking", "bm25 ranking"],
                    max_tokens_per_doc=3)  # the first document is cut to "x y z": the second ranks first
    assert [r.index for r in cut.results] == [1, 0]
    assert cut.results[1].relevance_score == local_ranking("bm25 ranking", ["x y z"])[0][1]
    page = "bm25 ranking " * 2000  # 26,000 characters: cut to the server's 20,000, not refused
    long = co.rerank(model="m", query="bm25 ranking", documents=["cats", page])
    assert [r.index for r in long.results] == [1, 0] and "documents 1" in long.meta.warnings[0]


def test_langchain_cohere_rerank_in_a_compression_retriever(url: str) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_cohere import CohereRerank
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class Fixed(BaseRetriever):
        def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
            return [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCS)]

    reranker = CohereRerank(model="served-overlap", base_url=url, cohere_api_key=KEY, top_n=3)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=Fixed())
    for q in QUERIES:
        got = retriever.invoke(q)
        want = local_ranking(q, DOCS)[:3]
        assert [(d.metadata["i"], d.metadata["relevance_score"]) for d in got] == want
    direct = reranker.rerank(DOCS, QUERIES[1], top_n=None, max_tokens_per_doc=512)
    assert [(r["index"], r["relevance_score"]) for r in direct] == local_ranking(QUERIES[1], DOCS)


@pytest.mark.parametrize(("provider", "path"), [("cohere", "/v1/rerank"), ("jina", "/v1/rerank"),
                                                ("text-embeddings-inference", "/rerank")])
def test_rerankers_api_providers(url: str, provider: str, path: str) -> None:
    from rerankers import Reranker as ApiReranker

    ranker = ApiReranker(provider, api_key=KEY, url=url + path, verbose=0)
    assert ranker is not None, f"rerankers could not build its {provider} provider"
    for q in QUERIES:
        res = ranker.rank(query=q, docs=DOCS)
        got = [(r.document.doc_id, r.score) for r in res.results]
        assert got == local_ranking(q, DOCS)
        assert [r.document.text for r in res.results] == [DOCS[i] for i, _ in got]


def test_llamaindex_tei_rerank_postprocessor(url: str) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    post = TextEmbeddingInference(base_url=url, top_n=4, auth_token=f"Bearer {KEY}", model_name="served-overlap")
    for q in QUERIES:
        nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i)), score=0.0) for i, d in enumerate(DOCS)]
        got = post.postprocess_nodes(nodes, query_str=q)
        assert [(int(n.node.id_), n.score) for n in got] == local_ranking(q, DOCS)[:4]


def test_huggingface_hub_inference_client_reads_tei_info_and_errors(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # HF_HUB_OFFLINE=1 (the tests' setting) blocks loopback too

    client = InferenceClient(model=url, token=KEY, provider="hf-inference")
    assert client.health_check()
    info = client.get_endpoint_info()
    assert info["model_id"] == "served-overlap" and "reranker" in info["model_type"]
    with pytest.raises(HfHubHTTPError, match="unauthorized|invalid bearer token"):
        InferenceClient(model=url, token="wrong", provider="hf-inference").get_endpoint_info()
