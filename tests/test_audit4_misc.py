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
