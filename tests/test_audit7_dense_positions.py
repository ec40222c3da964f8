"""Dense position ids of left-padded encoders (audit 7 review): each model family reads the positions it numbers a text
with alone (RoBERTa/MPNet past their padding row, GPT-2/Qwen2 from 0), on torch and on the ONNX runtime, and the
fingerprint names the mask-derived positions only where embeddings changed with them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dense_position_support import make_encoder, old_fingerprint, plain, rel

from rerank.retrieval.dense import BiEncoder
from rerank.testing import corpus_lines

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


def _enc(name: str, padding_side: str = "left") -> BiEncoder:
    return make_encoder(MODELS[name], name, padding_side)








@pytest.mark.parametrize("name", list(MODELS))
def test_left_padded_text_embeds_as_the_model_alone_and_beside_a_long_one(name: str) -> None:
    enc = _enc(name)
    alone = enc.encode_numpy([SHORT], "doc")[0]
    batched = enc.encode_numpy([SHORT, LONG], "doc", batch_size=8)
    assert rel(alone, plain(enc, SHORT)) < 1e-6
    assert rel(batched[0], alone) < 1e-5
    assert rel(batched[1], plain(enc, LONG)) < 1e-5
    with torch.no_grad():  # the training forward (tokenize, padded on the left too) gets the same positions
        assert rel(enc.embed([SHORT, LONG], "doc")[0].numpy(), alone) < 1e-5


def test_padding_row_models_get_positions_past_it() -> None:
    enc, seen = _enc("roberta"), {}
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
    enc = _enc(name)
    want = enc.encode_numpy([SHORT, LONG], "doc", batch_size=8)
    enc.use_runtime(runtime)  # type: ignore[arg-type]
    got = enc.encode_numpy([SHORT, LONG], "doc", batch_size=8)
    assert rel(got, want) < 1e-4
    assert rel(got[0], enc.encode_numpy([SHORT], "doc")[0]) < 1e-4
    assert "position_ids" in enc.runners["doc"].names


def test_onnx_runtime_of_right_padded_encoders_exports_no_positions() -> None:
    enc = _enc("gpt2", "right").use_runtime("onnx")
    assert enc.runners["doc"].names == ("input_ids", "attention_mask")




def test_fingerprint_changes_only_where_positions_changed_the_embeddings(tiny_st_dir: Path) -> None:
    minilm = BiEncoder.load(str(tiny_st_dir), device="cpu")
    assert minilm.doc_tokenizer.padding_side == "right"
    assert minilm.fingerprint() == old_fingerprint(minilm)
    for name in ("gpt2", "qwen2", "roberta"):  # right padding: run as before
        enc = _enc(name, "right")
        assert enc.fingerprint() == old_fingerprint(enc), name
    roberta = _enc("roberta")  # pads with its padding row: the positions it numbered itself
    assert roberta.fingerprint() == old_fingerprint(roberta)
    for name in ("gpt2", "qwen2", "mpnet"):  # from 0, or past a padding row the tokenizer does not pad with
        enc = _enc(name)
        assert enc.fingerprint() != old_fingerprint(enc), name
        assert enc.fingerprint() == _enc(name).fingerprint()
