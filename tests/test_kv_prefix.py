"""KV-prefix reuse (transformers backend ``prefix_cache``): prompts sharing a long token prefix run it once, and the
log-probs and head scores equal the whole-prompt path within 1e-4 (float32 rounding: different matmul shapes), for
ragged documents, prompts spanning queries and calls, and every ``long_docs`` mode; a model whose cache cannot be
shared falls back to whole prompts."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank.backends.prefix import MIN_PREFIX, PrefixStore, attention_weight, common_prefix, prefix_groups
from rerank.backends.registry import build_backend
from rerank.backends.transformers import TransformersBackend, TransformersBackendConfig
from rerank.heads.base import Reranker

TOL = 1e-4


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_prefix_groups_by_hand() -> None:
    qa, qb = list(range(100, 140)), list(range(100, 120)) + list(range(300, 320))  # share 20 tokens
    prompts = [qa + [1, 2], qb + [5], qa + [3], qb + [6, 7, 8], [9] * 30, qa + [1, 2, 4]]
    groups = sorted((sorted(g), p) for g, p in prefix_groups(prompts))
    # qa's three prompts share 40 tokens (the longest link, 42, is capped by the group's shortest prompt less one);
    # qb's two share 40; merging qa with qb (20 shared) costs more than two groups; [9]*30 shares nothing.
    assert groups == [([0, 2, 5], 40), ([1, 3], 40), ([4], 0)]
    # a prompt that is a prefix of another keeps one token of its own
    assert prefix_groups([qa, qa + [7]]) == [([0, 1], 39)]
    # a common prefix shorter than MIN_PREFIX is not worth a separate forward
    short = list(range(MIN_PREFIX - 1))
    assert prefix_groups([short + [1] * 20, short + [2] * 20]) == [([0, 1], 0)]
    assert prefix_groups([]) == []


def test_prefix_groups_weigh_attention(tiny_llm_dir: Path) -> None:
    """After a cached prefix the rest of a prompt attends through an explicit mask (all pairs, not the causal half):
    with SmolLM2's sizes a 90-token instruction + query before 130-token documents is worth sharing, a 100-token
    instruction before 2,200-token FIRST windows is not."""
    from transformers import LlamaConfig

    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)
    w = attention_weight(smollm2)
    assert w == pytest.approx(4 * 576 / (2 * (576 * 64 * 15 + 576 * 576 + 3 * 576 * 1536)))
    instruction = list(range(100, 190))
    docs = [instruction + [7 + i] * (120 + i) for i in range(8)]
    assert prefix_groups(docs, attention=w) == [(list(range(8)), 90)]
    windows = [list(range(100, 200)) + [7 + i] * (2100 + 50 * i) for i in range(3)]
    assert prefix_groups(windows) == [([0, 1, 2], 100)]  # tokens alone would share it
    assert prefix_groups(windows, attention=w) == [([0, 1, 2], 0)]
    from transformers import AutoConfig

    assert attention_weight(AutoConfig.from_pretrained(tiny_llm_dir)) > 0
    assert attention_weight(object()) == 0.0  # a config without the sizes: tokens only


def test_prefix_store_cost_rule_and_lru() -> None:
    store: PrefixStore[str] = PrefixStore(size=2)
    p = list(range(50))
    store.add(p + [7], "a")
    assert store.best(p, rows=8) == (tuple(p + [7]), "a", 50)  # a longer stored prefix: cropped to 50
    assert store.best(p + [8, 9], rows=8) == (tuple(p + [7]), "a", 50)  # 8 rows x 2 tokens < 52 tokens once
    assert store.best(p + list(range(200, 210)), rows=8) is None  # 8 x 10 tokens more than running 60 once
    assert store.best(list(range(MIN_PREFIX - 1)) + [0] * 5, rows=1) is None  # too little shared
    store.add([1] * 30, "b")
    store.best(p, rows=1)  # touch "a": "b" is now the least recently used
    store.add([2] * 30, "c")
    assert store.best([1] * 30, rows=1) is None and store.best([2] * 30, rows=1) is not None


def _backends(model_dir: Path, batch_size: int = 3) -> tuple[TransformersBackend, TransformersBackend]:
    on = build_backend("transformers", str(model_dir), dtype="float32", device="cpu", batch_size=batch_size)
    off = build_backend("transformers", str(model_dir), dtype="float32", device="cpu", batch_size=batch_size,
                        prefix_cache=False)
    assert on.config.prefix_cache and not off.config.prefix_cache  # type: ignore[attr-defined]
    # batch as on a GPU, so the forward shapes below are known (on a CPU prompts of unlike lengths run apart)
    on._batching = {"max_tokens": None, "min_fill": 0.0}  # type: ignore[attr-defined]
    return on, off  # type: ignore[return-value]


def _record_forwards(backend: TransformersBackend) -> list[tuple[int, int]]:
    shapes: list[tuple[int, int]] = []
    forward = backend.model.forward

    def recording(*args: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    backend.model.forward = recording  # type: ignore[method-assign]
    return shapes


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(r) for r in a] == [len(r) for r in b]
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


@pytest.mark.parametrize("model", ["tiny_llm_dir", "tiny_llama_dir"])
def test_backend_logprobs_equal_whole_prompts(model: str, request: pytest.FixtureRequest) -> None:
    on, off = _backends(request.getfixturevalue(model))
    shapes = _record_forwards(on)
    rng = random.Random(0)
    qa = [rng.randrange(5, 200) for _ in range(40)]
    qb = qa[:10] + [rng.randrange(5, 200) for _ in range(30)]
    ragged = [qa + [rng.randrange(5, 200) for _ in range(rng.randrange(1, 30))] for _ in range(7)]
    prompts = ragged + [qb + [1, 2, 3], qb + [4] * 12, qa[:5] + [9, 9], ragged[0] + [77]]
    ids = list(range(25))
    assert _max_diff(on.next_token_logprobs(prompts, ids), off.next_token_logprobs(prompts, ids)) < TOL
    # qa's prefix once (1 x 40), its 8 prompts in 3 batches of suffixes; qb's prefix once; the lone prompt whole
    assert shapes[0] == (1, 40) and (1, 40) in shapes[1:] and (1, 7) in shapes
    assert sum(n for b, n in shapes if b > 1) < sum(len(p) - 40 for p in prompts[:8] + prompts[9:])
    # the next call on qa's documents reuses the stored prefix (no forward over it again), also when its prompts
    # happen to share a few more tokens (the stored prefix is then extended per prompt, never recomputed)
    shapes.clear()
    more = [qa + [3, 3] + [rng.randrange(5, 200) for _ in range(n)] for n in (4, 9, 1)]
    assert _max_diff(on.next_token_logprobs(more, ids), off.next_token_logprobs(more, ids)) < TOL
    assert shapes == [(3, 11)]
    # a shorter common prefix than the stored one: the stored cache is cropped
    shapes.clear()
    fewer = [qa[:30] + [7] * n for n in (2, 5)]
    assert _max_diff(on.next_token_logprobs(fewer, ids), off.next_token_logprobs(fewer, ids)) < TOL
    assert shapes == [(2, 5)]


def test_unshareable_cache_falls_back_to_whole_prompts(tiny_llm_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_llm_dir)
    config.sliding_window = 8  # sliding-window layers keep only the last 8 keys: a prefix cache cannot be shared
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, config=config)
    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    on = TransformersBackend(model, tok, TransformersBackendConfig(dtype="float32", device="cpu"))
    off = TransformersBackend(model, tok, TransformersBackendConfig(dtype="float32", device="cpu", prefix_cache=False))
    prompts = [list(range(10, 50)) + [n] * n for n in (3, 5, 8)]
    with caplog.at_level(logging.WARNING, logger="rerank.backends.transformers"):
        got = on.next_token_logprobs(prompts, [1, 2, 3])
    assert "prefix_cache is off" in caplog.text
    assert _max_diff(got, off.next_token_logprobs(prompts, [1, 2, 3])) < TOL
    caplog.clear()
    on.next_token_logprobs(prompts, [1])
    assert "prefix_cache is off" not in caplog.text  # said once


WORDS = "solar panels turn light into power while cats mostly eat meat and the market fell on a quiet monday".split()


def _docs(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Documents of very different lengths (a few words to several passages), some with a title."""
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.choice([3, 8, 25, 90])))
        out.append({"id": f"d{i}", "text": text, **({"title": "Notes"} if i % 3 == 0 else {})})
    return out


MODES = ("truncate", "maxp", "firstp")
CASES = [("yes-no", {}, mode) for mode in MODES] + [("erank", {"scoring": "expectation"}, mode) for mode in MODES] + [
    ("qwen3-reranker", {}, "truncate"),
    ("qwen3-reranker", {}, "maxp"),
    ("erank", {"scoring": "paper", "reasoning": True, "max_reasoning_tokens": 6}, "truncate"),
]


@pytest.mark.parametrize(("method", "options", "long_docs"), CASES)
def test_head_scores_equal_without_reuse(tiny_llm_dir: Path, method: str, options: dict[str, Any],
                                         long_docs: str) -> None:
    rng = random.Random(1)
    queries = ["how do solar panels make power", "what do cats eat on a quiet monday"]
    doc_lists = [_docs(rng, 5), _docs(rng, 3)]
    passages = {} if long_docs == "truncate" else {"passage_tokens": 24, "stride": 12}  # truncate reads no passages
    common = dict(model=str(tiny_llm_dir), device="cpu", dtype="float32", batch_size=3, long_docs=long_docs,
                  max_doc_tokens=48, **passages, **options)
    on = Reranker.load(method, **common)
    off = Reranker.load(method, backend_options={"prefix_cache": False}, **common)
    assert off.backend.config.prefix_cache is False  # type: ignore[attr-defined]
    shapes_on, shapes_off = _record_forwards(on.backend), _record_forwards(off.backend)  # type: ignore[attr-defined]
    got, want = on.rerank_batch(queries, doc_lists), off.rerank_batch(queries, doc_lists)
    for g, w in zip(got, want):
        scores = {r.doc.id: r.score for r in w.results}
        assert max(abs(r.score - scores[r.doc.id]) for r in g.results) < TOL
        assert [r.metadata for r in sorted(g.results, key=lambda r: r.doc.id)] == \
            [r.metadata for r in sorted(w.results, key=lambda r: r.doc.id)]
    assert sum(b * n for b, n in shapes_on) < 0.8 * sum(b * n for b, n in shapes_off)  # fewer tokens run


def test_vllm_prefix_cache_is_one_option() -> None:
    """vLLM's own prefix caching is the ``prefix_cache`` option (tests/test_vllm_backend.py checks it reaches the
    engine); the same switch through ``engine_args`` is refused rather than silently overridden."""
    from rerank.backends.vllm import VLLMBackendConfig
    from rerank.errors import ConfigError

    assert VLLMBackendConfig().prefix_cache is True
    with pytest.raises(ConfigError, match="prefix_cache option"):
        build_backend("vllm", "some/model", engine_args={"enable_prefix_caching": False})
