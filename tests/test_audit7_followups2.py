"""Audit 7 review GH follow-ups: a left-padded encoder finds where its model numbers positions by a probe forward
(I-BERT past the padding row of its quantized table, Nystromformer from its buffer's 2; none found: no positions
passed); a setwise label of several tokens is refused with that cause; GRPO names a same-named template of other
content."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dense_position_support import make_encoder, old_fingerprint, plain, rel

from rerank.backends.scripted import ScriptedBackend
from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.methods.record import RECORD_FILE, record_payload
from rerank.methods.setwise.head import SetwiseConfig, SetwiseReranker
from rerank.prompts import load_template
from rerank.retrieval.dense import BiEncoder, _position_offset
from rerank.testing import build_tokenizer, corpus_lines
from rerank.trainers.grpo_trainer import GRPOTrainConfig

LINES = corpus_lines()
SHORT, LONG = LINES[1], " ".join(LINES[20:40])
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def _ibert(tok: Any) -> torch.nn.Module:  # padding row in a QuantEmbedding, positions past it (as RoBERTa)
    from transformers import IBertConfig, IBertModel

    return IBertModel(IBertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, max_position_embeddings=200,
                                  **SMALL))


def _nystromformer(tok: Any) -> torch.nn.Module:
    """No padding row; a ``position_ids`` buffer from 2. Exact attention and a value convolution of width 1 (a wider
    one mixes the pads into a text of a batch whatever its positions)."""
    from transformers import NystromformerConfig, NystromformerModel

    return NystromformerModel(NystromformerConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                                  max_position_embeddings=200, num_landmarks=4, segment_means_seq_len=4,
                                                  conv_kernel_size=1, **SMALL))


class _FromFive(torch.nn.Module):
    """A GPT-2 that numbers a text from 5 when given no positions: no candidate offset reproduces it."""

    def __init__(self, tok: Any) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.inner = GPT2Model(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=2, n_positions=200))
        self.config = self.inner.config
        self.seen: list[torch.Tensor | None] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> Any:
        self.seen.append(position_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1])[None] + 5
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


MODELS: dict[str, Callable[[Any], torch.nn.Module]] = {"ibert": _ibert, "nystromformer": _nystromformer,
                                                       "from_five": _FromFive}


def _enc(name: str, padding_side: str = "left") -> BiEncoder:
    return make_encoder(MODELS[name], name, padding_side)










@pytest.mark.parametrize(("name", "offset"), [("ibert", 1), ("nystromformer", 2)])
def test_probed_offset_embeds_a_left_padded_text_as_the_model_alone(name: str, offset: int) -> None:
    enc = _enc(name)
    assert _position_offset(enc.doc_model, enc.doc_tokenizer) == offset  # I-BERT pads with its padding row 0
    alone = enc.encode_numpy([SHORT], "doc")[0]
    batched = enc.encode_numpy([SHORT, LONG], "doc", batch_size=8)
    assert rel(alone, plain(enc, SHORT)) < 1e-5
    assert rel(batched[0], alone) < 1e-4
    assert rel(batched[1], plain(enc, LONG)) < 1e-4
    with torch.no_grad():
        assert rel(enc.embed([SHORT, LONG], "doc")[0].numpy(), alone) < 1e-4


def test_marker_only_where_passed_positions_differ_from_the_models_own() -> None:
    ibert = _enc("ibert")  # pads with its padding row: numbers a left-padded text as the positions passed
    assert ibert.fingerprint() == old_fingerprint(ibert)
    nystromformer = _enc("nystromformer")  # counts the pads: the positions passed differ
    assert nystromformer.fingerprint() != old_fingerprint(nystromformer)
    assert nystromformer.fingerprint() == _enc("nystromformer").fingerprint()


def test_no_offset_found_passes_no_positions(caplog: pytest.LogCaptureFixture) -> None:
    enc = _enc("from_five")
    with caplog.at_level(logging.WARNING):
        assert _position_offset(enc.doc_model, enc.doc_tokenizer) is None
    assert "_FromFive numbers positions from none of [0]" in caplog.text
    enc.doc_model.seen.clear()
    enc.encode_numpy([SHORT, LONG], "doc", batch_size=8)
    assert enc.doc_model.seen == [None]
    assert enc.fingerprint() == old_fingerprint(enc)
    assert "position_ids" not in enc.use_runtime("onnx").runners["doc"].names


def test_right_padding_runs_no_probe_and_probes_keep_training_modes() -> None:
    enc = _enc("from_five", "right")
    enc.doc_model.seen.clear()
    enc.fingerprint()
    enc.encode_numpy([SHORT, LONG], "doc", batch_size=8)
    assert enc.doc_model.seen == [None]  # the encoding forward only
    left = _enc("ibert")
    left.doc_model.train()
    left.doc_model.pooler.eval()
    left.fingerprint()
    assert left.doc_model.training and left.doc_model.encoder.training and not left.doc_model.pooler.training


def _sentencepiece_without_spaced_letters() -> Any:
    """The T5-like Unigram tokenizer less ``▁A``, ``▁B``, ``▁C`` (so `` A`` is ``['▁', 'A']``), with a chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from rerank.testing.tokenizer import build_t5_tokenizer

    spec = json.loads(build_t5_tokenizer().backend_tokenizer.to_str())
    spec["model"]["vocab"] = [p for p in spec["model"]["vocab"] if p[0] not in ("\u2581A", "\u2581B", "\u2581C")]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token="<pad>",
                                  eos_token="</s>", unk_token="<unk>")
    tok.chat_template = build_tokenizer().chat_template
    return tok


def test_setwise_names_a_label_of_two_tokens_before_the_shared_first_token() -> None:
    tok = _sentencepiece_without_spaced_letters()
    assert tok.convert_ids_to_tokens(tok.encode(" A", add_special_tokens=False)) == ["\u2581", "A"]
    head = SetwiseReranker(SetwiseConfig(set_size=3, top_k=1),
                           backend=ScriptedBackend(tok, lambda text, ids: [0.0] * len(ids)))
    with pytest.raises(ConfigError, match=r"the label ' A' is 2 tokens \['▁', 'A'\] after ' Passage:'") as info:
        head.rerank("q", ["alpha passage text", "beta passage text", "gamma passage text"])
    assert "\n" not in str(info.value)


def test_grpo_warns_of_a_same_named_template_by_its_content(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = tmp_path / "sft"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    renamed = {**load_template("first-compact").to_dict(), "name": "first"}
    payload = record_payload("first", "reranker", {"template": renamed}, "sft", "base")
    (model / RECORD_FILE).write_text(json.dumps(payload), encoding="utf-8")
    base = {"model": str(model), "head": "first", "data": {"path": "x"}, "batch_size": 8}
    with caplog.at_level(logging.WARNING):
        from_dict(GRPOTrainConfig, {**base, "template": "first"})
    assert "template first (it was trained with template 'first') differs in content from the one it was trained " \
           "with (same name)" in caplog.text
    other = tmp_path / "other.yaml"  # first's content under another name
    other.write_text(yaml.safe_dump({**load_template("first").to_dict(), "name": "other"}), encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        from_dict(GRPOTrainConfig, {**base, "template": str(other)})
    assert f"template {other} (it was trained with template 'first'): the prompts differ" in caplog.text
