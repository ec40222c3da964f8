"""The cross-encoder and sentence-transformers' ``CrossEncoder`` on the same folder: a saved default prompt is put
before the query as its ``predict`` does, the pair length is the folder's own (above 512 where the model declares it),
a modular CrossEncoder (Transformer + Pooling + Dense) is refused without suggesting a random head, and only the part
of a very long document that ``max_length`` reaches is tokenised, with the whole document's scores."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rerank.methods.cross_encoder.head as ce_head
from rerank.errors import ConfigError
from rerank.heads.base import Reranker

PAIRS = [("zebra stripes", "the zebra has black and white stripes"), ("zebra stripes", "Frau Müller buys apples"),
         ("what do dogs eat", "dogs eat meat and bones"), ("what do dogs eat", "the zebra stripes")]


def _sharp_bert(path: Path, positions: int = 512, model_max_length: int | None = None) -> Path:
    """A tiny one-label BERT classifier whose weights are x8 (so prompts and lengths change its scores visibly)."""
    from transformers import BertConfig, BertForSequenceClassification

    from rerank.testing.tokenizer import build_wordpiece_tokenizer, save_portable

    tok = build_wordpiece_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=positions, pad_token_id=tok.pad_token_id,
                     num_labels=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" not in name:
                p.mul_(8)
    model.save_pretrained(str(path), safe_serialization=True)
    if model_max_length is not None:
        tok.model_max_length = model_max_length
    save_portable(tok, path)
    return path


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _sharp_bert(tmp_path_factory.mktemp("s45-ce") / "sharp")


def _st_save(src: Path, dest: Path, **kwargs: Any) -> Any:
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(src), **kwargs)
    ce.save(str(dest))
    return CrossEncoder(str(dest))


def test_a_saved_default_prompt_is_put_before_the_query_as_sentence_transformers_does(sharp_dir: Path,
                                                                                      tmp_path: Path) -> None:
    prompts = {"query": "query: ", "passage": "passage: "}
    st = _st_save(sharp_dir, tmp_path / "prompt", prompts=prompts, default_prompt_name="query")
    expected = st.predict(PAIRS)
    plain = st.predict(PAIRS, prompt="")
    assert np.abs(expected - plain).max() > 1e-3  # the prompt matters to this model
    head = Reranker.load("cross-encoder", model=str(tmp_path / "prompt"))
    np.testing.assert_allclose(head.predict(PAIRS), expected, atol=1e-5)
    assert head.query_text("zebra [SEP] stripes").startswith("query: zebra")
    # prompts saved with no default: sentence-transformers applies none, and neither does the head
    st = _st_save(sharp_dir, tmp_path / "no-default", prompts=prompts)
    np.testing.assert_allclose(Reranker.load("cross-encoder", model=str(tmp_path / "no-default")).predict(PAIRS),
                               st.predict(PAIRS), atol=1e-5)


def test_a_default_prompt_name_that_names_no_prompt_is_one_line(sharp_dir: Path, tmp_path: Path) -> None:
    import json

    _st_save(sharp_dir, tmp_path / "bad", prompts={"query": "query: "}, default_prompt_name="query")
    cst = tmp_path / "bad" / "config_sentence_transformers.json"
    cst.write_text(json.dumps({**json.loads(cst.read_text()), "default_prompt_name": "question"}))
    with pytest.raises(ConfigError, match="default_prompt_name 'question' is not one of its prompts"):
        Reranker.load("cross-encoder", model=str(tmp_path / "bad"))


def _long_pair() -> list[tuple[str, str]]:
    rng = random.Random(0)
    words = "the zebra stripes dogs eat meat apples Frau Müller".split()
    return [("zebra stripes", " ".join(rng.choice(words) for _ in range(900))), ("zebra stripes", "zebra stripes")]


def test_the_pair_length_is_the_folders_own_above_512(tmp_path: Path) -> None:
    src = _sharp_bert(tmp_path / "long", positions=1024, model_max_length=int(1e30))
    st = _st_save(src, tmp_path / "st-long")
    assert st.max_seq_length == 1024
    head = Reranker.load("cross-encoder", model=str(tmp_path / "st-long"))
    assert head.max_length == 1024
    np.testing.assert_allclose(head.predict(_long_pair()), st.predict(_long_pair()), atol=1e-5)
    assert Reranker.load("cross-encoder", model=str(src)).max_length == 1024  # the bare transformers folder too
    assert Reranker.load("cross-encoder", model=str(src), max_length=600).max_length == 600
    with pytest.raises(ConfigError, match="exceeds this model's limit of 1024"):
        Reranker.load("cross-encoder", model=str(src), max_length=2000)


def test_a_tokenizer_length_above_the_position_limit_is_cut_to_it(tmp_path: Path) -> None:
    src = _sharp_bert(tmp_path / "short", positions=600, model_max_length=1024)
    head = Reranker.load("cross-encoder", model=str(src))
    assert head.max_length == 600
    from sentence_transformers import CrossEncoder

    assert CrossEncoder(str(src)).max_seq_length == 600


def test_a_modular_sentence_transformers_cross_encoder_is_refused_without_suggesting_a_new_head(
    tmp_path: Path, run_cli: Any
) -> None:
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    from rerank.testing import tiny_bert

    bare = tiny_bert(tmp_path / "bare")
    t = Transformer(str(bare), transformer_task="feature-extraction")
    d = t.get_embedding_dimension()
    CrossEncoder(modules=[t, Pooling(d, pooling_mode="cls"),
                          Dense(d, 1, activation_function=torch.nn.Identity(), module_output_name="scores")]
                 ).save(str(tmp_path / "modular"))
    for options in ({}, {"allow_new_head": True}):
        with pytest.raises(ConfigError) as e:
            Reranker.load("cross-encoder", model=str(tmp_path / "modular"), **options)
        assert "modular sentence-transformers CrossEncoder (Transformer + Pooling + Dense)" in str(e.value)
        assert "Pooling, Dense modules would be dropped" in str(e.value) and "allow_new_head" not in str(e.value)
    path = tmp_path / "in.jsonl"
    path.write_text('{"query": "zebra", "docs": ["zebra stripes"]}\n')
    rc, _, err = run_cli("rank", "--reranker", "cross-encoder", "--model", str(tmp_path / "modular"),
                         "--input", str(path), "--output", str(tmp_path / "out.jsonl"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "modular sentence-transformers" in err


# Long documents: the pair holds at most max_length tokens, so only the part of a 200k-character document that reaches
# is tokenised, and the scores are exactly the whole documents'.

_WORDS = "the zebra stripes 我昨天在市场买了苹果 🐼国宝 Frau Müller dogs [SEP] [CLS] [PAD] a,b. x\ty".split(" ")


def _long_docs() -> list[str]:
    rng = random.Random(0)
    words = " ".join(rng.choice(_WORDS) for _ in range(25_000))
    sparse = ("a" + " " * 8) * 20 + "ab" * 75 + " "  # little text per character, and a 150-character word
    return [words[:200_000], ("苹果 " * 70_000)[:200_000], (sparse * 1000)[:200_000], "[SEP] " * 40_000,
            "zebra stripes", ""]


def _longest_text_tokenised(monkeypatch: pytest.MonkeyPatch, tokenizer: Any) -> list[int]:
    """Record the length of every text ``tokenizer`` is given (``encode`` and calls, one text, a list or pairs)."""
    seen = [0]
    cls = type(tokenizer)
    for name in ("encode", "__call__"):
        def spy(self: Any, text: Any, *args: Any, _orig: Any = getattr(cls, name), **kwargs: Any) -> Any:
            texts = [text] if isinstance(text, str) else list(text or [])
            texts += [t for a in args[:1] for t in ([a] if isinstance(a, str) else a or [])]
            seen.extend(len(t) for t in texts if isinstance(t, str))
            return _orig(self, text, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    return seen


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_long_document_is_tokenised_only_as_far_as_the_pair_reads(
    side: str, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = Reranker.load("cross-encoder", model=str(tiny_bert_dir), max_length=64, long_docs="truncate")
    head.tokenizer.truncation_side = side
    docs = _long_docs()
    pairs = [(q, d) for q in ("zebra stripes", "dogs " * 100) for d in docs]
    seen = _longest_text_tokenised(monkeypatch, head.tokenizer)
    cut = head.score_pairs(pairs)
    assert max(seen) < 50_000  # never a 200k-character document whole
    monkeypatch.setattr(ce_head, "cut_to_tokens", lambda text, *args, **kwargs: text)
    whole = head.score_pairs(pairs)
    assert max(seen) >= 200_000  # the uncut path did tokenise them whole
    assert cut == whole and len(cut) == len(pairs)
