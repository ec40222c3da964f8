"""The llama.cpp backend (``--backend llamacpp``) against the transformers backend on the same GGUF weights.

Without ``llama-cpp-python`` (the extra ``llamacpp``, built from source; CI installs it from
``requirements/llamacpp.txt``) only the checks that need no model run (registration, options, the one-line error
naming the extra); the rest skip and say why. With it:

* a tiny Qwen2 written as an F32 GGUF (``rerank.testing.gguf``): llama.cpp and transformers read identical weights,
  so log-probs agree within :data:`F32_ATOL`, greedy text is identical and every head ranks identically;
* the same model as Q4_1: llama.cpp computes with the quantised blocks (and 8-bit activations), transformers with
  their float32 de-quantisation, so the log-probs agree within :data:`Q4_ATOL` only;
* special-token strings in ranked text reach llama.cpp as the plain text the heads neutralised them to;
* (``-m slow``) SmolLM2-135M-Instruct Q4_1 on three DL19 queries: FIRST's order within :data:`MIN_TAU` Kendall tau of
  the transformers backend's, and the same order on a clear-cut case.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from rerank.backends.base import GenerationConfig
from rerank.backends.registry import available_backends, build_backend
from rerank.errors import ConfigError

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA_CPP = True
except ImportError:  # not installed, or installed without its library
    HAVE_LLAMA_CPP = False
needs_llama_cpp = pytest.mark.skipif(
    not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed (pip install 'rerank[llamacpp]'; builds from source)"
)

# F32 weights on both sides, F32 KV cache: only the summation order differs (measured max |diff| over the whole
# vocabulary, sharpened tiny model: 6.5e-5 nats). llama.cpp's default F16 KV cache: 2.7e-2 measured.
F32_ATOL = 1e-3
F16_KV_ATOL = 0.1
# Q4_1 weights: llama.cpp quantises activations to 8 bits for its Q4_1 dot products, transformers multiplies the
# de-quantised float32 weights: 0.46 nats measured at most (0.24 among each prompt's 10 likeliest tokens), the top
# token the same. An id or position mixed up costs several nats on this sharpened model.
Q4_ATOL = 1.0
MIN_TAU = 0.8  # measured: 0.94, 0.97, 0.97 on the three queries, top-5 overlap 5 of 5

QUERIES = ["how do solar panels make electricity", "what do cats eat"]
DOCS = [
    "Solar panels turn sunlight into electricity with photovoltaic cells.",
    "Cats are carnivores and eat mostly meat.",
    "The stock market fell on Monday.",
    "A panel of judges met in the city.",
    "Dogs and cats are common pets.",
    "Electric cars need batteries.",
]


# ---------------------------------------------------------------- without llama.cpp


def test_registered_and_options_checked(tmp_path: Path) -> None:
    assert "llamacpp" in available_backends()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-not-really")
    for bad, match in [({"dtype": "bfloat16"}, "quantisation"), ({"device": "cuda"}, "CPU"),
                       ({"n_ctx": 0}, "n_ctx must be >= 1"), ({"n_threads": 0}, "n_threads"),
                       ({"batch_size": 4}, "unknown key 'batch_size'")]:
        with pytest.raises(ConfigError, match=match):
            build_backend("llamacpp", str(gguf), **bad)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="runs a .gguf file"):
        build_backend("llamacpp", str(folder))
    with pytest.raises(ConfigError, match="needs --model"):
        build_backend("llamacpp", None)


def test_missing_package_is_one_line_naming_the_extra(tmp_path: Path, run_cli: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-not-really")
    queries = tmp_path / "in.jsonl"
    queries.write_text('{"query": "q", "docs": ["a", "b"]}\n')
    rc, out, err = run_cli("rank", "--reranker", "yes-no", "--backend", "llamacpp", "--model", gguf,
                           "--input", queries, "--output", tmp_path / "out.jsonl")
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "rerank[llamacpp]" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


def test_tiny_gguf_tokenizer_reads_back_and_is_cached(tiny_llm_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The tokenizer the llamacpp backend builds prompts with: read from the GGUF file as the original tokenises,
    then loaded from the cache without reading the GGUF again."""
    from transformers import AutoTokenizer

    from rerank.backends.gguf import gguf_tokenizer
    from rerank.testing import tiny_gguf

    gguf = tiny_gguf(tiny_llm_dir, tmp_path / "tiny.gguf")
    original = AutoTokenizer.from_pretrained(tiny_llm_dir)
    text = "<|im_start|>user\nWhat do cats eat? 42 <think> Café<|im_end|>"
    first = gguf_tokenizer(gguf, tmp_path / "tok")
    assert first.encode(text) == original.encode(text) and first.chat_template == original.chat_template
    real = AutoTokenizer.from_pretrained

    def no_gguf(*args: Any, **kwargs: Any) -> Any:
        assert "gguf_file" not in kwargs, "the cached tokenizer was not used"
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_gguf)
    assert gguf_tokenizer(gguf, tmp_path / "tok").encode(text) == original.encode(text)


# ---------------------------------------------------------------- tiny GGUF models


@pytest.fixture(scope="module")
def sharp_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 of seed 0 with every non-norm weight x10: sharp next-token distributions, varied greedy text
    and clear score gaps (at the initial std 0.02 the comparisons would be vacuous)."""
    from rerank.testing import tiny_llm

    return tiny_llm(tmp_path_factory.mktemp("sharp-qwen2") / "model", arch="qwen2", seed=0, weight_scale=10.0)


def _pair(sharp_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory, qtype: str) -> tuple[Any, Any]:
    """(llamacpp backend on the ``qtype`` GGUF, transformers backend on that GGUF's float32 de-quantisation)."""
    from rerank.backends.gguf import gguf_to_hf
    from rerank.testing import tiny_gguf

    root = tmp_path_factory.mktemp(f"gguf-{qtype}")
    gguf = tiny_gguf(sharp_llm_dir, root / f"tiny-{qtype}.gguf", qtype)
    reference = build_backend("transformers", str(gguf_to_hf(gguf, root / "hf")), dtype="float32", device="cpu")
    return build_backend("llamacpp", str(gguf), n_ctx=1024, n_threads=1, kv_cache_type="f32"), reference


@pytest.fixture(scope="module")
def f32_pair(sharp_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    if not HAVE_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed (pip install 'rerank[llamacpp]'; builds from source)")
    return _pair(sharp_llm_dir, tmp_path_factory, "F32")


@pytest.fixture(scope="module")
def q4_pair(sharp_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    if not HAVE_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed (pip install 'rerank[llamacpp]'; builds from source)")
    return _pair(sharp_llm_dir, tmp_path_factory, "Q4_1")


def chat_prompts(tok: Any) -> list[list[int]]:
    out = []
    for q in QUERIES:
        for d in DOCS[:3]:
            text = f"Query: {q}\nDocument: {d}\nIs the document relevant? Answer yes or no."
            rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True)
            out.append(tok.encode(rendered, add_special_tokens=False))
    return out


def max_logprob_diff(a: Any, b: Any) -> float:
    """Largest |difference| of the two backends' log-probs over the whole vocabulary; their top tokens must agree."""
    prompts = chat_prompts(b.tokenizer)
    vocab = list(range(len(b.tokenizer)))
    ours, theirs = a.next_token_logprobs(prompts, vocab), b.next_token_logprobs(prompts, vocab)
    for r1, r2 in zip(ours, theirs, strict=True):
        assert max(vocab, key=r1.__getitem__) == max(vocab, key=r2.__getitem__)
    return max(abs(x - y) for r1, r2 in zip(ours, theirs, strict=True) for x, y in zip(r1, r2, strict=True))


@needs_llama_cpp
def test_f32_logprobs_match_transformers(f32_pair: tuple[Any, Any]) -> None:
    ours, reference = f32_pair
    assert ours.context_length == 1024 and ours.describe()["resolved_threads"] == 1
    assert max_logprob_diff(ours, reference) < F32_ATOL
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.next_token_logprobs(chat_prompts(reference.tokenizer)[:1], [ours.n_vocab])
    with pytest.raises(ValueError, match="exceeds n_ctx 1024"):
        ours.next_token_logprobs([[5] * 1025], [5])
    bad = Path(ours.model_name).with_name("bad.gguf")
    bad.write_bytes(b"GGUF-not-a-model")
    with pytest.raises(ConfigError, match="llama.cpp cannot read"):
        build_backend("llamacpp", str(bad))
    default_kv = build_backend("llamacpp", ours.model_name, n_ctx=1024, n_threads=1)
    assert max_logprob_diff(default_kv, reference) < F16_KV_ATOL
    default_kv.close()


@needs_llama_cpp
def test_repack_defaults_off_on_amx_cpus_and_can_be_set(q4_pair: tuple[Any, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp's AMX matrix product segfaults on a Q4_1 batch (ggml-org/llama.cpp#20824); unset, ``repack`` is
    off exactly where llama.cpp reports AMX, so test_q4_1_logprobs_are_close_to_the_dequantised_model runs there."""
    import llama_cpp

    from rerank.backends.llamacpp import _cpu_has_amx

    ours, reference = q4_pair
    assert ours.describe()["resolved_repack"] is (not _cpu_has_amx(llama_cpp))
    for repack in (False, True):  # loading only: a batch with AMX tiles could crash this process
        loaded = build_backend("llamacpp", ours.model_name, n_ctx=64, n_threads=1, repack=repack)
        assert loaded.describe()["resolved_repack"] is repack and loaded.describe()["repack"] is repack
        loaded.close()
    without = build_backend("llamacpp", ours.model_name, n_ctx=1024, n_threads=1, kv_cache_type="f32", repack=False)
    assert max_logprob_diff(without, reference) < Q4_ATOL
    without.close()
    with pytest.raises(ConfigError, match="repack"):
        build_backend("llamacpp", ours.model_name, repack="no")
    import llama_cpp.llama as llama_module

    class OldParams:  # a llama.cpp without the parameter: repack off cannot be honoured, so it is refused
        _fields_ = [(name, kind) for name, kind in llama_module.llama_cpp.llama_model_params._fields_
                    if name != "use_extra_bufts"]

    monkeypatch.setattr(llama_module.llama_cpp, "llama_model_params", OldParams)
    with pytest.raises(ConfigError, match="repack off .* use_extra_bufts"):
        build_backend("llamacpp", ours.model_name, n_ctx=64, n_threads=1, repack=False)


@needs_llama_cpp
def test_raw_logits_match_transformers(f32_pair: tuple[Any, Any]) -> None:
    ours, reference = f32_pair
    assert ours.gives_logits
    prompts = chat_prompts(reference.tokenizer)
    ids = [5, 17, 300, len(reference.tokenizer) - 1]
    got, want = ours.next_token_logits(prompts, ids), reference.next_token_logits(prompts, ids)
    assert max(abs(a - b) for r1, r2 in zip(got, want, strict=True) for a, b in zip(r1, r2, strict=True)) < F32_ATOL
    assert max(abs(v) for row in want for v in row) > 1.0  # raw logits, not log-probabilities near 0


@needs_llama_cpp
def test_calls_from_several_threads_get_each_prompts_own_numbers(f32_pair: tuple[Any, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ours, reference = f32_pair
    prompts = chat_prompts(reference.tokenizer)
    alone = [ours.next_token_logprobs([p], [5, 17])[0] for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: ours.next_token_logprobs([p], [5, 17])[0], prompts * 3))
    assert together == alone * 3


@needs_llama_cpp
def test_q4_1_logprobs_are_close_to_the_dequantised_model(q4_pair: tuple[Any, Any]) -> None:
    assert max_logprob_diff(*q4_pair) < Q4_ATOL


@needs_llama_cpp
def test_greedy_generation_matches_transformers(f32_pair: tuple[Any, Any]) -> None:
    ours, reference = f32_pair
    prompts = chat_prompts(reference.tokenizer)[:3]
    config = GenerationConfig(max_new_tokens=16)
    texts = ours.generate(prompts, config)
    assert texts == reference.generate(prompts, config)
    assert any(texts)  # the sharp model writes something
    cut = next(t for t in texts if len(t) > 4)
    stop = cut[2:4]
    assert ours.generate(prompts, GenerationConfig(max_new_tokens=16, stop=[stop])) == \
        reference.generate(prompts, GenerationConfig(max_new_tokens=16, stop=[stop]))
    sampled = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=3)
    assert ours.generate(prompts, sampled) == ours.generate(prompts, sampled)  # the seed fixes the sample
    assert ours.generate(prompts, sampled) != ours.generate(prompts, GenerationConfig(max_new_tokens=8,
                                                                                      temperature=1.0, seed=4))
    nucleus_of_one = GenerationConfig(max_new_tokens=8, temperature=1.0, top_p=1e-9, seed=5)
    assert ours.generate(prompts, nucleus_of_one) == ours.generate(prompts, GenerationConfig(max_new_tokens=8))


HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "yes-no": {}, "erank": {}, "setwise": {}, "bge-reranker-v2-gemma": {}, "first": {"window": 6, "stride": 3},
    "listwise": {"window": 6, "stride": 3}, "grouprank": {"group_size": 3, "repeats": 1, "max_new_tokens": 12},
}
CONSTRAINED_OPTIONS: dict[str, dict[str, Any]] = {
    "listwise": {"window": 6, "stride": 3, "constrained": True},
    "grouprank": {"group_size": 3, "repeats": 1, "max_new_tokens": 40, "constrained": True},
    "erank": {"reasoning": True, "max_reasoning_tokens": 16, "constrained": True},
}


@needs_llama_cpp
@pytest.mark.parametrize("method", list(HEAD_OPTIONS))
def test_heads_rank_as_on_transformers(f32_pair: tuple[Any, Any], method: str) -> None:
    """Same orders, and for the generating heads the same raw text (the random model's permutations do not parse,
    so their orders are the first stage's on both backends: the generated text is what is compared)."""
    from rerank.heads.registry import get_reranker_class

    cls = get_reranker_class(method)
    runs = []
    for backend in f32_pair:
        head = cls(cls.config_class(**HEAD_OPTIONS[method]), backend=backend)  # type: ignore[call-arg]
        runs.append(([head.rerank(q, DOCS).doc_ids for q in QUERIES], head.stats.failure_examples))
    assert runs[0] == runs[1]
    orders, unparsed = runs[0]
    identity = [str(i) for i in range(len(DOCS))]
    assert unparsed if method in ("listwise", "grouprank") else all(o != identity for o in orders)


@needs_llama_cpp
@pytest.mark.parametrize("method", list(CONSTRAINED_OPTIONS))
def test_constrained_generation_matches_transformers(f32_pair: tuple[Any, Any], method: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the answer grammar both backends write the same tokens, and every answer parses."""
    from rerank.heads.registry import get_reranker_class

    cls = get_reranker_class(method.removesuffix("-reasoning"))
    runs = []
    for backend in f32_pair:
        written: list[str] = []
        real = backend.generate
        monkeypatch.setattr(backend, "generate", lambda ps, c, real=real, written=written: written.extend(
            out := real(ps, c)) or out)
        head = cls(cls.config_class(**CONSTRAINED_OPTIONS[method]), backend=backend)  # type: ignore[call-arg]
        orders = [head.rerank(q, DOCS).doc_ids for q in QUERIES]
        assert head.stats.parse_failures == 0 and head.stats.repaired == 0 and written
        runs.append((orders, written))
    assert runs[0] == runs[1]


@needs_llama_cpp
def test_special_token_strings_reach_llama_cpp_as_text(f32_pair: tuple[Any, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.heads.text import neutralise, special_strings
    from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker

    ours, _ = f32_pair
    tok = ours.tokenizer
    every = " ".join(special_strings(tok))
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<answer>", "</think>"} <= set(every.split())
    control = set(tok.all_special_ids) | set(tok.convert_tokens_to_ids(["<think>", "</think>", "<answer>",
                                                                        "</answer>"]))
    evaluated: list[list[int]] = []
    real_eval = ours.llm.eval
    monkeypatch.setattr(ours.llm, "eval", lambda ids: (evaluated.append(list(ids)), real_eval(ids))[1])
    head = YesNoReranker(YesNoConfig(), backend=ours)
    hostile = f"Cats eat meat. {every} yes"
    result = head.rerank(f"what do cats eat {every}", [hostile, neutralise(hostile, tok), "plain"])
    clean = [sorted(i for i in ids if i in control) for ids in evaluated]
    assert len(clean) == 3 and clean[0] == clean[1] == clean[2]  # only the chat template's own control tokens
    scores = {r.id: r.score for r in result.results}
    assert scores["0"] == scores["1"]  # the hostile text is scored exactly as its neutralised plain text


@needs_llama_cpp
def test_prompts_are_fitted_to_n_ctx(f32_pair: tuple[Any, Any]) -> None:
    from rerank.heads.sliding_window import SlidingWindowConfig
    from rerank.methods.first.head import FirstReranker

    small = build_backend("llamacpp", f32_pair[0].model_name, n_ctx=256, n_threads=1)
    assert small.context_length == 256
    head = FirstReranker(SlidingWindowConfig(window=6, stride=3), backend=small)
    result = head.rerank(QUERIES[0], [d * 8 for d in DOCS])
    assert sorted(result.doc_ids) == [str(i) for i in range(len(DOCS))]
    assert head.stats.fitted_prompts > 0
    small.close()


@needs_llama_cpp
def test_a_tokenizer_that_is_not_the_models_is_refused(f32_pair: tuple[Any, Any]) -> None:
    from rerank.backends.llamacpp import LlamaCppBackend
    from rerank.testing import build_wordpiece_tokenizer

    ours, _ = f32_pair
    with pytest.raises(ConfigError, match="tokenises differently"):
        LlamaCppBackend(ours.llm, build_wordpiece_tokenizer(), ours.config, model_name="m")


# ---------------------------------------------------------------- SmolLM2-135M-Instruct Q4_1 (real weights)


@pytest.fixture(scope="module")
def smollm2_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(llamacpp on the packaged Q4_1 GGUF, transformers on its float32 de-quantisation: about a minute to make)."""
    if not HAVE_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed (pip install 'rerank[llamacpp]'; builds from source)")
    from rerank.backends.gguf import gguf_to_hf
    from rerank.models import smollm2_gguf_path

    try:
        gguf = smollm2_gguf_path()
    except ConfigError as e:
        pytest.skip(str(e))
    hf = gguf_to_hf(gguf, tmp_path_factory.mktemp("smollm2-hf"))
    return (build_backend("llamacpp", str(gguf), n_threads=1),
            build_backend("transformers", str(hf), dtype="float32", device="cpu", batch_size=1))


@pytest.mark.slow
@pytest.mark.shared_data
def test_smollm2_first_ranks_dl19_as_transformers(smollm2_pair: tuple[Any, Any], dl19_dir: Path) -> None:
    from rerank.data.io import read_corpus, read_queries, read_run
    from rerank.heads.sliding_window import SlidingWindowConfig
    from rerank.methods.first.head import FirstReranker
    from rerank.types import Candidate

    queries, run, corpus = (read_queries(dl19_dir / "queries.jsonl"), read_run(dl19_dir / "bm25_top100.trec"),
                            read_corpus(dl19_dir / "corpus.jsonl"))
    qids = sorted(q for q in queries if q in run)[:3]
    cands = [[Candidate(corpus[d], s) for d, s in run[q][:20]] for q in qids]
    orders = []
    for backend in smollm2_pair:
        head = FirstReranker(SlidingWindowConfig(window=20, stride=10, depth=20, batch_size=1), backend=backend)
        orders.append([r.doc_ids for r in head.rerank_batch([queries[q] for q in qids], cands)])
    from scipy.stats import kendalltau

    taus = [kendalltau([a.index(d) for d in b], range(len(b))).statistic for a, b in zip(*orders, strict=True)]
    top5 = [len(set(a[:5]) & set(b[:5])) for a, b in zip(*orders, strict=True)]
    print(f"kendall tau {taus}, top-5 overlap {top5}")
    assert min(taus) >= MIN_TAU and min(top5) >= 4
    assert orders[0] != [[c.doc.id for c in cs] for cs in cands]  # it reranked


@pytest.mark.slow
def test_smollm2_clear_cases_rank_identically(smollm2_pair: tuple[Any, Any]) -> None:
    from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker

    docs = ["Paris is the capital of France.", "Bananas are yellow.", "The stock market fell on Monday."]
    orders = []
    for backend in smollm2_pair:
        head = YesNoReranker(YesNoConfig(), backend=backend)
        orders.append(head.rerank("what is the capital of france?", docs).doc_ids)
    assert orders[0] == orders[1] and orders[0][0] == "0"
