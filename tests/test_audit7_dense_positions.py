"""Dense position ids of left-padded encoders (audit 7 review): each model family reads the positions it numbers a text
with alone (RoBERTa/MPNet past their padding row, GPT-2/Qwen2 from 0), on torch and on the ONNX runtime, and the
fingerprint names the mask-derived positions only where embeddings changed with them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rerank.retrieval.dense import BiEncoder, EncoderSettings, _text_handling, pool
from rerank.runtime import hash_weights
from rerank.testing import build_tokenizer, corpus_lines

LINES = corpus_lines()
SHORT, LONG = LINES[1], " ".join(LINES[20:40])
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def _roberta(tok: Any) -> torch.nn.Module:
    from transformers import RobertaConfig, RobertaModel

    return RobertaModel(RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, max_position_embeddings=200,
                                      **SMALL))


def _mpnet(tok: Any) -> torch.nn.Module:  # its padding row is 1 whatever the tokenizer pads with
    from transformers import MPNetConfig, MPNetModel

    return MPNetModel(MPNetConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, max_position_embeddings=200,
                                  **SMALL))


def _gpt2(tok: Any) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2Model

    return GPT2Model(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=2, n_positions=200))


def _qwen2(tok: Any) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2Model

    model = Qwen2Model(Qwen2Config(vocab_size=len(tok), num_key_value_heads=2, max_position_embeddings=200, **SMALL))
    with torch.no_grad():  # sharper weights, so rotary position offsets show above float32 noise
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(10.0)
    return model


MODELS: dict[str, Callable[[Any], torch.nn.Module]] = {"roberta": _roberta, "mpnet": _mpnet, "gpt2": _gpt2,
                                                       "qwen2": _qwen2}


def _encoder(name: str, padding_side: str = "left") -> BiEncoder:
    torch.manual_seed(0)
    tok = build_tokenizer()
    tok.padding_side = padding_side
    model = MODELS[name](tok).eval()
    return BiEncoder(model, tok, settings=EncoderSettings(pooling="mean", max_doc_tokens=120), name_or_path=name)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _plain(enc: BiEncoder, text: str) -> np.ndarray:
    """A plain transformers forward of ``text`` alone (the model numbers its positions itself), mean-pooled."""
    feats = enc.doc_tokenizer([text], truncation=True, max_length=120, return_tensors="pt")
    with torch.inference_mode():
        hidden = enc.doc_model(**feats).last_hidden_state
    return pool(hidden, feats["attention_mask"], "mean")[0].numpy()


@pytest.mark.parametrize("name", list(MODELS))
def test_left_padded_text_embeds_as_the_model_alone_and_beside_a_long_one(name: str) -> None:
    enc = _encoder(name)
    alone = enc.encode_numpy([SHORT], "doc")[0]
    batched = enc.encode_numpy([SHORT, LONG], "doc", batch_size=8)
    assert _rel(alone, _plain(enc, SHORT)) < 1e-6
    assert _rel(batched[0], alone) < 1e-5
    assert _rel(batched[1], _plain(enc, LONG)) < 1e-5
    with torch.no_grad():  # the training forward (tokenize, padded on the left too) gets the same positions
        assert _rel(enc.embed([SHORT, LONG], "doc")[0].numpy(), alone) < 1e-5


def test_padding_row_models_get_positions_past_it() -> None:
    enc, seen = _encoder("roberta"), {}
    orig = enc.doc_model.embeddings.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return orig(*args, **kwargs)

    enc.doc_model.embeddings.forward = spy  # type: ignore[method-assign]
    enc.encode_numpy([SHORT, LONG], "doc", batch_size=8)
    pad, n = enc.doc_tokenizer.pad_token_id, len(enc.doc_tokenizer(SHORT)["input_ids"])
    row = seen["position_ids"][1].tolist()
    assert row[-n:] == list(range(pad + 1, pad + 1 + n)) and set(row[:-n]) == {pad}


@pytest.mark.parametrize(("name", "runtime"), [("gpt2", "onnx"), ("roberta", "onnx"), ("qwen2", "onnx"),
                                                ("gpt2", "openvino")])
def test_runtimes_embed_left_padded_texts_as_torch(name: str, runtime: str) -> None:
    enc = _encoder(name)
    want = enc.encode_numpy([SHORT, LONG], "doc", batch_size=8)
    enc.use_runtime(runtime)  # type: ignore[arg-type]
    got = enc.encode_numpy([SHORT, LONG], "doc", batch_size=8)
    assert _rel(got, want) < 1e-4
    assert _rel(got[0], enc.encode_numpy([SHORT], "doc")[0]) < 1e-4
    assert "position_ids" in enc.runners["doc"].names


def test_onnx_runtime_of_right_padded_encoders_exports_no_positions() -> None:
    enc = _encoder("gpt2", "right").use_runtime("onnx")
    assert enc.runners["doc"].names == ("input_ids", "attention_mask")


def _old_fingerprint(enc: BiEncoder) -> str:
    """The fingerprint as computed before position ids were passed (weights, tokenizer, pad id, text handling)."""
    model, tok = enc.doc_model, enc.doc_tokenizer
    h = hashlib.sha256()
    hash_weights(h, model)
    spec = {k: v for k, v in json.loads(tok.backend_tokenizer.to_str()).items() if k not in ("truncation", "padding")}
    h.update(json.dumps(spec, sort_keys=True).encode())
    h.update(f"pad={tok.pad_token_id}".encode())
    h.update(f"text={_text_handling(tok)}".encode())
    return h.hexdigest()


def test_fingerprint_changes_only_where_positions_changed_the_embeddings(tiny_st_dir: Path) -> None:
    minilm = BiEncoder.load(str(tiny_st_dir), device="cpu")
    assert minilm.doc_tokenizer.padding_side == "right"
    assert minilm.fingerprint() == _old_fingerprint(minilm)
    for name in ("gpt2", "qwen2", "roberta"):  # right padding: run as before
        enc = _encoder(name, "right")
        assert enc.fingerprint() == _old_fingerprint(enc), name
    roberta = _encoder("roberta")  # pads with its padding row: the positions it numbered itself
    assert roberta.fingerprint() == _old_fingerprint(roberta)
    for name in ("gpt2", "qwen2", "mpnet"):  # from 0, or past a padding row the tokenizer does not pad with
        enc = _encoder(name)
        assert enc.fingerprint() != _old_fingerprint(enc), name
        assert enc.fingerprint() == _encoder(name).fingerprint()
