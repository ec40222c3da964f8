"""bge-reranker-v2-gemma: the input is FlagEmbedding's (bos when the tokenizer has one besides its pad token, then
"A: query", "\\n", "B: passage", "\\n" and the Yes/No prompt, each tokenised apart), the score is the raw logit of
"Yes" (sigmoid = FlagEmbedding's normalised score); checked with a scripted backend, on a tiny Qwen2 against a manual
forward pass, and end to end through ``rerank eval``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank.backends.scripted import ScriptedBackend
from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.methods.bge_reranker_v2_gemma.head import BGEGemmaConfig, BGEGemmaReranker
from rerank.testing import build_tokenizer
from rerank.types import Candidate, Document, Query

# FlagEmbedding's default prompt (FlagEmbedding/inference/reranker/decoder_only/base.py)
PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by providing "
          "a prediction of either 'Yes' or 'No'.")


def flag_ids(tok: Any, query: str, passage: str, prompt: str = PROMPT) -> list[int]:
    """The ids FlagEmbedding feeds: [bos] + tok("A: q") + tok("\\n") + tok("B: p") + tok("\\n") + tok(prompt)."""
    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    bos = [tok.bos_token_id] if tok.bos_token_id is not None and tok.bos_token_id != tok.pad_token_id else []
    return bos + enc(f"A: {query}") + enc("\n") + enc(f"B: {passage}") + enc("\n") + enc(prompt)


def _head(tok: Any, logits: dict[str, float] | None = None, **options: Any) -> BGEGemmaReranker:
    def fn(text: str, ids: Any) -> list[float]:
        doc = text.split("B: ", 1)[1].split("\n", 1)[0]
        return [logits[doc] if logits else 0.0]

    return BGEGemmaReranker(BGEGemmaConfig(**options), backend=ScriptedBackend(tok, fn))


def test_input_ids_are_flagembeddings() -> None:
    tok = build_tokenizer()
    head = _head(tok)
    q, docs = Query("q", "what is a cat"), [Candidate(Document("a", "the cat sat", "Cats"))]
    ((text, ids),) = head.pair_inputs(q, docs)
    assert ids == flag_ids(tok, "what is a cat", docs[0].doc.full_text())
    assert text == f"A: what is a cat\nB: {docs[0].doc.full_text()}\n{PROMPT}"
    assert head.yes_token_id() == tok("Yes", add_special_tokens=False)["input_ids"][0]
    custom = _head(tok, prompt="Does B answer A? Say 'Yes' or 'No'.")
    assert custom.pair_inputs(q, docs)[0][1] == flag_ids(tok, "what is a cat", docs[0].doc.full_text(),
                                                         "Does B answer A? Say 'Yes' or 'No'.")
    tok_bos = build_tokenizer()
    tok_bos.bos_token = "<|im_start|>"  # a bos other than the pad token is put first
    assert _head(tok_bos).pair_inputs(q, docs)[0][1][0] == tok_bos.convert_tokens_to_ids("<|im_start|>")
    assert _head(tok_bos).pair_inputs(q, docs)[0][1] == flag_ids(tok_bos, "what is a cat", docs[0].doc.full_text())


def test_pieces_are_tokenised_apart() -> None:
    """Where the joined text would merge across a piece boundary ("the" + "re" -> "there"), the ids are the pieces'."""
    tok = build_tokenizer()
    template = {"name": "t", "user": "{{ query }}{{ document }}", "pieces": ["{{ query }}", "{{ document }}"]}
    head = _head(tok, template=template)
    ((text, ids),) = head.pair_inputs(Query("q", "the"), [Candidate(Document("a", "re is"))])
    assert text == "there is"
    assert ids == tok.encode("the", add_special_tokens=False) + tok.encode("re is", add_special_tokens=False)
    assert ids != tok.encode("there is", add_special_tokens=False)  # the case this test is about
    bad = {**template, "pieces": ["{{ query }}"]}
    with pytest.raises(ConfigError, match="`pieces` must join to `user`"):
        _head(tok, template=bad)


def test_scripted_order_and_sigmoid_relevance() -> None:
    tok = build_tokenizer()
    logits = {"d0": -2.0, "d1": 3.5, "d2": 0.25}
    head = _head(tok, logits)
    res = head.rerank("q", ["d0", "d1", "d2"])
    assert [r.doc.text for r in res.results] == ["d1", "d2", "d0"]
    assert [r.score for r in res.results] == [3.5, 0.25, -2.0]
    assert head.relevance([3.5])[0] == pytest.approx(1 / (1 + math.exp(-3.5)))
    assert {kind for kind, _ in head.backend.log} == {"next_token_logits"}  # type: ignore[attr-defined]


def test_tiny_qwen2_score_is_the_raw_yes_logit(tiny_llm_dir: Path) -> None:
    head = Reranker.load("bge-reranker-v2-gemma", model=str(tiny_llm_dir), device="cpu", batch_size=2)
    q, docs = "what is a cat", ["the cat sat on the mat", "a dog", "gene expression"]
    res = head.rerank(q, docs)
    tok = head.tokenizer  # type: ignore[attr-defined]
    model = head.backend.model  # type: ignore[attr-defined]
    yes = tok("Yes", add_special_tokens=False)["input_ids"][0]
    for r in res.results:
        with torch.no_grad():
            logits = model(torch.tensor([flag_ids(tok, q, r.doc.text)])).logits[0, -1]
        assert r.score == pytest.approx(float(logits[yes]), abs=1e-4)
        assert abs(r.score - float(torch.log_softmax(logits, -1)[yes])) > 1  # a raw logit, not a log-probability


def test_backend_without_logits_is_refused() -> None:
    from rerank.backends.openai import OpenAIBackend, OpenAIBackendConfig

    tok = build_tokenizer()
    served = OpenAIBackend("m", tok, OpenAIBackendConfig(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(ConfigError, match="raw 'Yes' logit, which the openai backend does not give"):
        BGEGemmaReranker(BGEGemmaConfig(), backend=served)


def test_cli_eval_on_dl19(tiny_llm_dir: Path, dl19_dir: Path, tmp_path: Path, run_cli: Any) -> None:
    rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec",
                         "--reranker", "bge-reranker-v2-gemma", "--model", tiny_llm_dir, "--top-k", "3",
                         "--max-queries", "1", "--output", tmp_path / "out")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["reranker"]["method"] == "bge-reranker-v2-gemma"
    assert metrics["reranker"]["config"]["max_doc_tokens"] == 512
