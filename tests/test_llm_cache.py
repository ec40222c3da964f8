"""The LLM call cache: a re-run of the same prompts makes no model calls, anything that changes the answer (prompt,
requested tokens, decoding options, model files) misses, sampled generations are never cached, and the log holds
every prompt with its raw response; ``rerank eval`` run twice calls the model only the first time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rerank.backends.base import GenerationConfig
from rerank.backends.cache import CachingBackend, model_fingerprint
from rerank.backends.scripted import ScriptedBackend
from rerank.testing import build_tokenizer


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


def test_hits_misses_and_log(tok: Any, tmp_path: Path) -> None:
    inner = ScriptedBackend(tok, lambda text, ids: [float(len(text)), -1.0][: len(ids)], lambda text: text[-3:])
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    log = tmp_path / "io.jsonl"
    be = CachingBackend(inner, str(model), tmp_path / "c.sqlite", str(log))
    p = [tok.encode("a cat"), tok.encode("the mat")]
    first = be.next_token_logprobs(p, [5, 6])
    assert inner.calls["next_token_logprobs"] == 1
    assert be.next_token_logprobs(p, [5, 6]) == first and inner.calls["next_token_logprobs"] == 1  # all hits
    be.next_token_logprobs([p[0], tok.encode("new")], [5, 6])  # one hit, one miss: the model sees the miss only
    assert inner.calls["next_token_logprobs"] == 2 and inner.log[-1][1] == "new"
    be.next_token_logprobs(p, [6, 5])
    assert inner.calls["next_token_logprobs"] == 3  # other requested tokens: another answer
    greedy = GenerationConfig(max_new_tokens=4)
    assert be.generate(p, greedy) == be.generate(p, greedy) and inner.calls["generate"] == 1
    be.generate(p, GenerationConfig(max_new_tokens=5))
    sampled = GenerationConfig(temperature=1.0, seed=1)
    be.generate(p, sampled)
    be.generate(p, sampled)
    assert inner.calls["generate"] == 4  # other options miss; sampling is never cached
    be.close()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[0] == {"kind": "next_token_logprobs", "prompt": "a cat", "request": [5, 6], "response": first[0],
                        "cached": False}
    assert [x["cached"] for x in lines[2:4]] == [True, True]
    # the cache persists, and a changed model file is another model
    be2 = CachingBackend(inner, str(model), tmp_path / "c.sqlite")
    be2.next_token_logprobs(p, [5, 6])
    assert inner.calls["next_token_logprobs"] == 3
    fp = model_fingerprint(str(model))
    (model / "config.json").write_text('{"changed": 1}')
    assert model_fingerprint(str(model)) != fp
    be3 = CachingBackend(inner, str(model), tmp_path / "c.sqlite")
    be3.next_token_logprobs(p, [5, 6])
    assert inner.calls["next_token_logprobs"] == 4


def test_a_gguf_model_is_fingerprinted_by_its_own_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint hashes the .gguf file itself: no de-quantised copy is made just to name the model (the
    llamacpp backend never needs one)."""
    import rerank.backends.gguf as gguf_mod

    def no_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("fingerprinting converted the GGUF")

    monkeypatch.setattr(gguf_mod, "gguf_to_hf", no_conversion)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-one")
    fp = model_fingerprint(str(gguf))
    assert model_fingerprint(str(tmp_path)) != f"name:{tmp_path}"  # the folder holding it is hashed too
    gguf.write_bytes(b"GGUF-two")
    assert model_fingerprint(str(gguf)) != fp


def test_eval_rerun_makes_no_model_calls(tiny_llm_dir: Path, dl19_dir: Path, tmp_path: Path, run_cli: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    args = ["eval", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec", "--reranker", "yes-no",
            "--model", tiny_llm_dir, "--top-k", "3", "--max-queries", "2"]
    for run in ("a", "b"):
        rc, _, err = run_cli(*args, "--output", tmp_path / run, "--log-llm-io", tmp_path / f"{run}.jsonl")
        assert rc == 0, err
    a = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 6 and not any(x["cached"] for x in a) and all(x["cached"] for x in b)
    assert [x["response"] for x in a] == [x["response"] for x in b]
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert mb["reranker"]["backend"]["llm_cache_hits"] == 6
    assert (tmp_path / "a" / "run.trec").read_text() == (tmp_path / "b" / "run.trec").read_text()
    rc, _, err = run_cli(*args, "--output", tmp_path / "c", "--no-llm-cache")
    assert rc == 0 and json.loads((tmp_path / "c" / "metrics.json").read_text())["reranker"]["backend"].get(
        "llm_cache") is None
