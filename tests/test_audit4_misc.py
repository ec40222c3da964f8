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
