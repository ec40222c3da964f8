"""``rerank eval --reranker bi-encoder`` checks the cache folder its corpus embeddings go to before the model loads,
unless ``corpus_cache=false``; a training config names the reranker method it trains (``head`` is required)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rerank.testing import make_tiny_beir


def _eval(run_cli: Any, beir: Path, first: Path, model: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli("eval", "--dataset", beir, "--first-stage", first, "--reranker", "bi-encoder", "--model", model,
                   "--reranker-set", "device=cpu", *extra, "--output", out)


@pytest.mark.parametrize("corpus_cache", [True, False])
def test_bi_encoder_eval_checks_the_cache_before_loading(
    tmp_path: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch, tiny_st_dir: Path, corpus_cache: bool
) -> None:
    beir = make_tiny_beir(tmp_path / "beir", num_docs=20, num_queries=3, splits=("test",), seed=1)
    first = tmp_path / "first.trec"
    first.write_text("".join(f"q{q:03d} Q0 d{d:02d} {r} {10 - r} bm25\n"
                             for q in range(3) for r, d in enumerate(range(0, 20, 2), 1)))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("RERANK_CACHE", str(blocker / "cache"))
    loaded: list[str] = []
    from rerank.methods.bi_encoder import head as head_mod

    real = head_mod.load_encoder
    monkeypatch.setattr(head_mod, "load_encoder", lambda *a, **k: loaded.append("x") or real(*a, **k))
    code, _, err = _eval(run_cli, beir, first, tiny_st_dir, tmp_path / "out",
                         "--reranker-set", f"corpus_cache={str(corpus_cache).lower()}")
    if corpus_cache:
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"cache folder {blocker / 'cache'} cannot be created" in err and not loaded
    else:
        assert code == 0, err
        assert loaded and (tmp_path / "out" / "metrics.json").is_file()


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_a_training_config_without_head_names_the_key(tmp_path: Path, run_cli: Any, kind: str) -> None:
    """``head`` defaulted to erank: a config that forgot it trained an ERank model without a word."""
    config = tmp_path / "c.yaml"
    config.write_text("model: m\ndata: {path: t.jsonl}\n")
    code, _, err = run_cli("train", kind, "--config", config, "--output", tmp_path / "o", "--check", "--inputs-later")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "key 'head' is required" in err and "erank" in err and "first" in err


def test_first_plackett_luce_rollouts_are_drawn_from_the_first_identifier_logits(tiny_llm_dir: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch
                                                                                  ) -> None:
    """FIRST's task draws ``rollout: plackett-luce`` completions from its first-identifier logits without generating
    text: near temperature 0 every draw is the logits' own order, and each draw is a complete ranking."""
    import torch

    from rerank.config import from_dict
    from rerank.heads.permutation import parse_permutation
    from rerank.methods.first.training import first_position_logits
    from rerank.testing import synthetic_ranking_examples
    from rerank.trainers.grpo_trainer import GRPOTrainConfig
    from rerank.trainers.sft_trainer import load_causal_lm
    from rerank.trainers.task import build_task

    config = {"model": str(tiny_llm_dir), "head": "first", "window": 4, "batch_size": 8, "temperature": 1e-4,
              "data": {"path": "t.jsonl"}, "rollout": "plackett-luce"}
    cfg = from_dict(GRPOTrainConfig, config, where="test")
    model, tok = load_causal_lm(str(tiny_llm_dir), cpu=True)
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("a Plackett-Luce rollout generated text"))
    task = build_task("first", tok, cfg)
    row = task.grpo_rows(synthetic_ranking_examples(1, num_candidates=4, seed=3)[0])[0]
    with torch.no_grad():
        drawn = task.sample_completions(model, row, 5, torch.Generator().manual_seed(0))
        enc = tok([row["prompt"]], return_tensors="pt", add_special_tokens=False)
        logits = first_position_logits(model, enc["input_ids"], enc["attention_mask"])[0]
    want = torch.argsort(logits[torch.tensor(task.identifier_token_ids()[:4])], descending=True).tolist()
    prefix = task.template.assistant_prefix
    parsed = [parse_permutation(prefix + c, 4, task.scheme) for c in drawn]
    assert len(drawn) == 5 and not any(p.failed or p.missing or p.duplicates for p in parsed), drawn
    assert all(p.order == want for p in parsed), ([p.order for p in parsed], want)


@pytest.mark.parametrize(("kind", "head", "message"), [
    ("grpo", "monot5", "grpo trains the generative LLM heads (yes-no, erank, listwise, first, grouprank, "
                       "qwen3-reranker); 'monot5' trains with 'sft'"),
    ("grpo", "bge-reranker-v2-gemma", "'bge-reranker-v2-gemma' is trained by neither sft nor grpo"),
    ("sft", "setwise", "sft does not train 'setwise'; it trains: "),
])
def test_a_head_the_trainer_does_not_train_is_named_before_its_options(tmp_path: Path, run_cli: Any, kind: str,
                                                                       head: str, message: str) -> None:
    """With an option the head does not read also set, the error was about the option; dropping it then gave the
    real one: the trainer does not train the head."""
    config = tmp_path / "c.yaml"
    config.write_text(f"model: m\nhead: {head}\nmax_length: 512\nmax_doc_tokens: 99\ndata: {{path: t.jsonl}}\n")
    code, _, err = run_cli("train", kind, "--config", config, "--output", tmp_path / "o", "--check", "--inputs-later")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_predict_and_rank_are_sentence_transformers_cross_encoders(tiny_bert_dir: Path) -> None:
    """Code written against sentence-transformers' ``CrossEncoder.predict`` / ``.rank`` runs on a reranker: the same
    scores (in input order, pairs of several queries interleaved) and the same ranking dicts."""
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    from rerank.heads.base import Reranker, sigmoid

    head = Reranker.load("cross-encoder", model=str(tiny_bert_dir), max_length=64)
    st = CrossEncoder(str(tiny_bert_dir), max_length=64, device="cpu")
    docs = ["rain falls on the plain", "a cat sat", "the rain in spain stays mainly in the plain", "dogs bark"]
    pairs = [(q, d) for d in docs for q in ("rain in spain", "cats and dogs")]  # the two queries interleaved
    want, logits = st.predict(pairs), st.predict(pairs, activation_fn=torch.nn.Identity())  # ST's default: Sigmoid
    got = head.predict(pairs)
    assert isinstance(got, np.ndarray) and got.shape == (8,)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-5)
    assert head.predict(pairs[3]) == pytest.approx(float(want[3]), abs=1e-5)  # one pair: one value
    assert head.predict(pairs, relevance=True).tolist() == pytest.approx([sigmoid(s) for s in logits], abs=1e-5)
    assert head.predict([]).shape == (0,)
    ranked = head.rank("rain in spain", docs, top_k=3, return_documents=True)
    expect = st.rank("rain in spain", docs, top_k=3, return_documents=True)
    assert [(r["corpus_id"], r["text"]) for r in ranked] == [(r["corpus_id"], r["text"]) for r in expect]
    assert [r["score"] for r in ranked] == pytest.approx([float(r["score"]) for r in expect], abs=1e-5)
    assert set(head.rank("rain in spain", docs)[0]) == {"corpus_id", "score"}


def test_predict_scores_each_querys_pairs_as_one_list_and_names_a_bad_pair() -> None:
    from rerank.heads.base import Reranker
    from tests.serve_support import LongestFirst

    class ShareOfList(LongestFirst):
        """A list-dependent score: the document's length over its list's total."""

        method = "test-audit4-share"

        def score_candidates(self, query: Any, candidates: list[Any]) -> list[float]:
            total = sum(len(c.doc.text) for c in candidates)
            return [len(c.doc.text) / total for c in candidates]

    head = ShareOfList()
    got = head.predict([("q1", "aaa"), ("q2", "b"), ("q1", "a"), ("q2", "bbb")]).tolist()
    assert got == pytest.approx([0.75, 0.25, 0.25, 0.75])
    assert isinstance(head, Reranker)
    for bad in ([("q", "d", "x")], [("q", 3)], ["q d"]):
        with pytest.raises(TypeError, match=r"pairs\[0\]: expected a \(query, document\) pair of strings"):
            head.predict(bad)
    with pytest.raises(TypeError, match="rank takes a query string and a list of document strings"):
        head.rank("q", [{"text": "d"}])
