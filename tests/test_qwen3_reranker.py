"""qwen3-reranker: the prompt is Qwen3-Reranker's model-card prompt character for character (on a ChatML tokenizer, as
Qwen's); the instruction option replaces the default; a scripted backend gives the exact order and P(yes); on a tiny
Qwen2 the relevance equals the model card's softmax over the (no, yes) logits."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank.backends.scripted import ScriptedBackend
from rerank.heads.base import Reranker
from rerank.methods.qwen3_reranker.head import Qwen3Reranker, Qwen3RerankerConfig
from rerank.testing import build_tokenizer
from rerank.types import Candidate, Document, Query

# Qwen3-Reranker's model card (transformers usage): prefix + format_instruction(...) + suffix
PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
          'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def card_prompt(instruction: str, query: str, doc: str) -> str:
    return PREFIX + f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" + SUFFIX


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


def _head(tok: Any, lp: dict[str, tuple[float, float]] | None = None, **options: Any) -> Qwen3Reranker:
    def logprobs(text: str, ids: Any) -> list[float]:
        doc = text.split("<Document>: ", 1)[1].split("<|im_end|>", 1)[0]
        return list(lp[doc]) if lp else [0.0, 0.0]

    return Qwen3Reranker(Qwen3RerankerConfig(**options), backend=ScriptedBackend(tok, logprobs))


def test_prompt_is_the_model_card_prompt(tok: Any) -> None:
    head = _head(tok)
    q, docs = Query("q", "what is a cat"), [Candidate(Document("a", "the cat sat", "Cats"))]
    assert head.pair_prompts(q, docs) == [card_prompt(DEFAULT_INSTRUCTION, "what is a cat", docs[0].doc.full_text())]
    custom = _head(tok, instruction="Given a claim, find evidence {{ not a variable }}")
    assert custom.pair_prompts(q, docs) == [card_prompt("Given a claim, find evidence {{ not a variable }}",
                                                        "what is a cat", docs[0].doc.full_text())]
    head.rerank(q, docs)
    assert head.backend.log == [("next_token_logprobs", head.pair_prompts(q, docs)[0])]  # type: ignore[attr-defined]
    yes, no = head.answer_token_ids()
    assert tok.decode([yes]) == "yes" and tok.decode([no]) == "no"


def test_scripted_order_and_p_yes(tok: Any) -> None:
    lp = {"d0": (-2.0, -0.2), "d1": (-0.1, -3.0), "d2": (-1.0, -1.0)}
    head = _head(tok, lp)
    res = head.rerank("q", ["d0", "d1", "d2"])
    assert [r.doc.text for r in res.results] == ["d1", "d2", "d0"]
    p_yes = head.relevance([r.score for r in res.results])
    for r, p in zip(res.results, p_yes, strict=True):
        y, n = lp[r.doc.text]
        assert p == pytest.approx(math.exp(y) / (math.exp(y) + math.exp(n)))


def test_tiny_qwen2_relevance_is_softmax_over_no_yes_logits(tiny_llm_dir: Path) -> None:
    head = Reranker.load("qwen3-reranker", model=str(tiny_llm_dir), device="cpu", batch_size=2)
    q, docs = "what is a cat", ["the cat sat on the mat", "a dog", "gene expression"]
    res = head.rerank(q, docs)
    tok = head.tokenizer  # type: ignore[attr-defined]
    yes, no = head.answer_token_ids()  # type: ignore[attr-defined]
    model = head.backend.model  # type: ignore[attr-defined]
    for r in res.results:
        ids = tok.encode(card_prompt(DEFAULT_INSTRUCTION, q, r.doc.text), add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        want = torch.softmax(torch.stack([logits[no], logits[yes]]).float(), 0)[1].item()
        assert head.relevance([r.score])[0] == pytest.approx(want, abs=1e-5)


def test_cli_eval_on_dl19(tiny_llm_dir: Path, dl19_dir: Path, tmp_path: Path, run_cli: Any) -> None:
    rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec",
                         "--reranker", "qwen3-reranker", "--model", tiny_llm_dir, "--top-k", "3", "--max-queries", "1",
                         "--reranker-set", "instruction=Find passages that answer the question",
                         "--output", tmp_path / "out")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["reranker"]["method"] == "qwen3-reranker"
    assert metrics["reranker"]["config"]["instruction"] == "Find passages that answer the question"
