"""Tests of rerank.testing: the tiny tokenizer, models and synthetic data every other test builds on."""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rerank.data import Dataset
from rerank.eval.metrics import evaluate_run
from rerank.testing import (
    build_t5_tokenizer,
    build_tokenizer,
    make_tiny_beir,
    synthetic_ranking_examples,
    tiny_bert,
    tiny_llm,
)
from rerank.testing import __main__ as cli_module
from rerank.testing.tokenizer import _bpe_json, _wordpiece_vocab


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_digits_are_split_one_per_token(tok) -> None:
    assert tok.tokenize("10") == ["1", "0"]
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]
    assert tok.tokenize("[10]") == ["[", "1", "0", "]"]
    assert tok.decode(tok.encode("score 10 of 100", add_special_tokens=False)) == "score 10 of 100"


def test_labels_and_verdicts_are_single_tokens(tok) -> None:
    assert 1000 <= len(tok) <= 2000
    for word in [*string.ascii_uppercase, "yes", "no", "[", "]", ">"]:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
    for word in [*string.ascii_uppercase, "yes", "no", ">"]:
        assert len(tok.encode(" " + word, add_special_tokens=False)) == 1, " " + word
    ids = [tok.encode(c, add_special_tokens=False)[0] for c in string.ascii_uppercase]
    assert len(set(ids)) == 26
    # listwise identifiers stay separate from their brackets (FIRST reads the logit right after "[")
    assert tok.tokenize("[B] > [A]") == ["[", "B", "]", "Ġ>", "Ġ[", "A", "]"]
    assert tok.tokenize("(C)") == ["(", "C", ")"]


def test_special_and_reasoning_tokens(tok) -> None:
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.padding_side == "right"
    for special in ("<|im_start|>", "<|im_end|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    text = "<think>check the key</think><answer>2</answer>"
    ids = tok.encode(text, add_special_tokens=False)
    for marker in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tok.convert_tokens_to_ids(marker) in ids
    # reasoning markers are ordinary tokens: they survive skip_special_tokens, ChatML markers do not
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok.encode("<|im_start|>user", add_special_tokens=False), skip_special_tokens=True) == "user"


def test_chat_template_generation_prompt_and_assistant_mask(tok) -> None:
    msgs = [
        {"role": "system", "content": "Judge relevance."},
        {"role": "user", "content": "Is [A] relevant?"},
    ]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nJudge relevance.<|im_end|>\n<|im_start|>user\nIs [A] relevant?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not tok.apply_chat_template(msgs, tokenize=False).endswith("assistant\n")
    full = msgs + [{"role": "assistant", "content": "yes"}]
    enc = tok.apply_chat_template(full, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(masked) == "yes<|im_end|>"
    assert sum(enc["assistant_masks"]) < len(enc["input_ids"])


_VOCAB_DIGEST = (
    "import hashlib; from rerank.testing.tokenizer import _bpe_json, _wordpiece_vocab; "
    "print(hashlib.sha256((_bpe_json() + '\\n'.join(_wordpiece_vocab())).encode()).hexdigest())"
)


def test_tokenizer_training_is_deterministic_across_processes(repo_root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    digests = set()
    for hashseed in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-c", _VOCAB_DIGEST], env={**env, "PYTHONHASHSEED": hashseed},
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        digests.add(proc.stdout.strip())
    here = hashlib.sha256((_bpe_json() + "\n".join(_wordpiece_vocab())).encode()).hexdigest()
    assert digests == {here}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


_TRICKY = (
    "Query 10: is [A] > [B]?\n\n yes  no (the) \"Great\" it's DON'T <|im_start|>x<|im_end|> "
    "<think>ok</think><answer>7</answer> 2024 \u00dcn\u00efcode [10] > [2]\t end"
)


@pytest.mark.parametrize("folder", ["tiny_llm_dir", "tiny_llama_dir"])
def test_saved_tokenizer_reloads_identically(folder: str, tok, request: pytest.FixtureRequest) -> None:
    from transformers import AutoTokenizer

    # transformers 5 rebuilds a qwen2 model's tokenizer with Qwen2's own pipeline: ours must be that pipeline
    loaded = AutoTokenizer.from_pretrained(request.getfixturevalue(folder))
    assert type(loaded).__name__.removesuffix("Fast") == "Qwen2Tokenizer"
    assert loaded.encode(_TRICKY) == tok.encode(_TRICKY)
    assert loaded.decode(loaded.encode(_TRICKY), skip_special_tokens=True) == _TRICKY.replace(
        "<|im_start|>", ""
    ).replace("<|im_end|>", "")
    msgs = [{"role": "user", "content": "rank [A] [B]"}, {"role": "assistant", "content": "[B] > [A]"}]
    enc = loaded.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert loaded.decode([i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]) == "[B] > [A]<|im_end|>"
    config = json.loads((request.getfixturevalue(folder) / "tokenizer_config.json").read_text())
    assert "extra_special_tokens" not in config  # transformers 4 cannot read v5's list form


def test_tiny_llm_loads_and_generates(tiny_llm_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_llm_dir / "model.safetensors").exists()
    assert not list(tiny_llm_dir.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    cfg = model.config
    assert cfg.model_type == "qwen2"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (128, 2, 2, 256)
    assert cfg.hidden_size // cfg.num_attention_heads == 64
    assert cfg.vocab_size == len(tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "Is 10 > 9? yes or no"}], add_generation_prompt=True, return_dict=True,
        return_tensors="pt",
    )
    out = model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 4)
    assert tok.decode(out[0, enc["input_ids"].shape[1]:]) is not None


def test_tiny_llama_head_dim(tiny_llama_dir: Path) -> None:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_llama_dir)
    assert cfg.model_type == "llama"
    assert cfg.head_dim == 64 == cfg.hidden_size // cfg.num_attention_heads


def test_tiny_llm_is_deterministic_by_seed(tiny_llm_dir: Path, tmp_path: Path) -> None:
    base = _weights(tiny_llm_dir)
    same = _weights(tiny_llm(tmp_path / "same", seed=0))
    other = _weights(tiny_llm(tmp_path / "other", seed=1))
    assert base.keys() == same.keys() == other.keys()
    assert all(torch.equal(base[k], same[k]) for k in base)
    assert not torch.equal(base["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
    assert (tmp_path / "same" / "tokenizer.json").read_bytes() == (tiny_llm_dir / "tokenizer.json").read_bytes()


def test_unknown_arch_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known: qwen2, llama"):
        tiny_llm(tmp_path / "x", arch="gpt2")


def test_tiny_bert_is_a_cross_encoder(tiny_bert_dir: Path) -> None:
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    assert model.config.num_labels == 1 and model.config.hidden_size == 64
    ce = CrossEncoder(str(tiny_bert_dir), device="cpu")
    scores = ce.predict([("what causes rain", "warm moist air rises"), ("what causes rain", "the bank raised rates")])
    assert scores.shape == (2,)
    assert all(0.0 < s < 1.0 for s in scores)
    assert scores[0] != scores[1]


def test_tiny_bert_encoder_and_seed(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from transformers import AutoModel

    enc_dir = tiny_bert(tmp_path / "enc", seed=0)
    assert AutoModel.from_pretrained(enc_dir).config.architectures == ["BertModel"]
    again = _weights(tiny_bert(tmp_path / "ce", num_labels=1, seed=0))
    base = _weights(tiny_bert_dir)
    assert all(torch.equal(base[k], again[k]) for k in base)


def test_tiny_sentence_transformer_loads(tiny_st_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_st_dir), device="cpu")
    emb = st.encode(["relevant passage", "another one"], convert_to_numpy=True)
    assert emb.shape == (2, 64)
    assert (tiny_st_dir / "modules.json").exists()


def _key_of(query: str) -> str:
    """The one query word that is not filler vocabulary: the made-up key word."""
    from rerank.testing import TaskGenerator

    filler = set(TaskGenerator(0).filler)
    keys = [w for w in query.split() if w not in filler]
    assert len(keys) == 1, query
    return keys[0]


def _count(word: str, text: str) -> int:
    return re.findall(r"[a-z]+", text.lower()).count(word)


def test_tiny_beir_reads_and_lines_up(tiny_beir_dir: Path) -> None:
    ds = Dataset(tiny_beir_dir)
    assert ds.splits() == ["dev", "test", "train"]
    assert len(ds.corpus) == 200 and len(ds.queries) == 30
    seen: set[str] = set()
    for split in ds.splits():
        qrels = ds.qrels(split)
        assert len(ds.split_queries(split)) == len(qrels) == 10
        assert not seen & set(qrels)
        seen |= set(qrels)
        for qid, judged in qrels.items():
            assert sorted(judged.values()) == [0, 1, 2]
            key = _key_of(ds.queries[qid].text)
            for docid, grade in judged.items():
                doc = ds.corpus[docid]
                # grade 2: key in the title and twice in the text; grade 1: once in the text; grade 0: never
                assert _count(key, f"{doc.title} {doc.text}") == {2: 3, 1: 1, 0: 0}[grade]
                # every judged doc, the hard negative included, has the topic words: only the key separates them
                topics = [w for w in ds.queries[qid].text.split() if w != key]
                assert all(_count(t, doc.text) >= 1 for t in topics)
            holders = {d for d, doc in ds.corpus.items() if _count(key, f"{doc.title} {doc.text}")}
            assert holders == {d for d, g in judged.items() if g > 0}
    assert seen == set(ds.queries)


def test_tiny_beir_is_learnable_by_key_match(tiny_beir_dir: Path) -> None:
    ds = Dataset(tiny_beir_dir)
    run = {}
    for qid, q in ds.split_queries("test").items():
        key = _key_of(q.text)
        scores = {d: _count(key, f"{doc.title} {doc.text}") for d, doc in ds.corpus.items()}
        run[qid] = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    assert evaluate_run(run, ds.qrels("test"), ["nDCG@10"]).aggregate["nDCG@10"] == pytest.approx(1.0)


def test_tiny_beir_is_deterministic(tiny_beir_dir: Path, tmp_path: Path) -> None:
    again = make_tiny_beir(tmp_path / "again", seed=0)
    other = make_tiny_beir(tmp_path / "other", seed=1)
    for rel in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        assert (again / rel).read_bytes() == (tiny_beir_dir / rel).read_bytes()
    assert (other / "queries.jsonl").read_bytes() != (tiny_beir_dir / "queries.jsonl").read_bytes()
    with pytest.raises(ValueError, match="too small"):
        make_tiny_beir(tmp_path / "small", num_docs=10, num_queries=5)


def test_tiny_beir_documents_of_a_fixed_length(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """``--doc-chars N``: every text is N characters, starting with the document's own words (its grade kept)."""
    assert cli_module.main(["tiny-beir", str(tmp_path / "long"), "--doc-chars", "3000"]) == 0
    short, long = Dataset(tiny_beir_dir).corpus, Dataset(tmp_path / "long").corpus
    assert long.keys() == short.keys()
    for i, d in long.items():
        assert len(d.text) == 3000 and d.text.startswith(short[i].text + " ") and d.title == short[i].title
    assert (tmp_path / "long" / "qrels" / "test.tsv").read_bytes() == (tiny_beir_dir / "qrels/test.tsv").read_bytes()
    cut = make_tiny_beir(tmp_path / "cut", num_docs=30, num_queries=5, doc_chars=40)
    assert {len(d.text) for d in Dataset(cut).corpus.values()} == {40}
    with pytest.raises(ValueError, match="doc_chars must be >= 1"):
        make_tiny_beir(tmp_path / "bad", doc_chars=0)


def test_synthetic_ranking_examples() -> None:
    examples = synthetic_ranking_examples(12, num_candidates=6, seed=3)
    assert len(examples) == 12
    assert len({ex["qid"] for ex in examples}) == 12
    for ex in examples:
        assert set(ex) == {"qid", "query", "candidates", "labels"}
        assert len(ex["candidates"]) == len(ex["labels"]) == 6
        assert sorted(ex["labels"]) == [0, 0, 0, 0, 1, 2]
        key = _key_of(ex["query"])
        counts = [_count(key, c["text"]) for c in ex["candidates"]]
        assert [min(c, 2) for c in counts] == ex["labels"]
    assert examples == synthetic_ranking_examples(12, num_candidates=6, seed=3)
    assert examples != synthetic_ranking_examples(12, num_candidates=6, seed=4)
    assert [sorted(ex["labels"]) for ex in synthetic_ranking_examples(2, num_candidates=2)] == [[1, 2], [1, 2]]


def test_cli_writes_folders(tmp_path: Path) -> None:
    assert cli_module.main(["tiny-beir", str(tmp_path / "beir"), "--num-docs", "30", "--num-queries", "5"]) == 0
    assert Dataset(tmp_path / "beir").splits() == ["dev", "test", "train"]
    assert cli_module.main(["tiny-bert", str(tmp_path / "bert"), "--num-labels", "1"]) == 0
    assert json.loads((tmp_path / "bert" / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"
    ]
    assert cli_module.main(["tiny-llm", str(tmp_path / "llm"), "--arch", "llama", "--seed", "2"]) == 0
    cfg = json.loads((tmp_path / "llm" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["head_dim"] == 64
    assert cli_module.main(["tiny-t5", str(tmp_path / "t5"), "--seed", "0"]) == 0
    assert json.loads((tmp_path / "t5" / "config.json").read_text())["architectures"] == ["T5ForConditionalGeneration"]


def test_tiny_t5_tokenizer_is_t5_like(tiny_t5_dir: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("Query: a cat Document: true Relevant:")["input_ids"]
    assert ids[-1] == 1 and tok.convert_ids_to_tokens(ids[:2]) == ["\u2581Query:", "\u2581a"]
    assert [len(tok.encode(w, add_special_tokens=False)) for w in ("true", "false")] == [1, 1]
    assert tok.decode(ids, skip_special_tokens=True) == "Query: a cat Document: true Relevant:"
    again = build_t5_tokenizer()
    assert again.get_vocab() == tok.get_vocab()
    assert AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).config.decoder_start_token_id == 0


def test_cli_runs_as_module(tmp_path: Path, repo_root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.run(
        [sys.executable, "-m", "rerank.testing", "tiny-beir", str(tmp_path / "b"), "--splits", "test"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b" / "qrels").iterdir()) == ["test.tsv"]


def test_run_cli_fixture_captures_errors(run_cli, tmp_path: Path) -> None:
    rc, out, err = run_cli("evaluate", "--run", tmp_path / "missing.trec", "--qrels", tmp_path / "missing.tsv")
    assert rc == 2 and "missing" in err and out == ""
    rc, out, _ = run_cli("--version")
    assert rc == 0 and out.startswith("rerank ")


def test_shared_data_fixture(scifact_dir: Path) -> None:
    assert (scifact_dir / "corpus.jsonl").exists()
    assert (scifact_dir / "qrels" / "test.tsv").exists()
