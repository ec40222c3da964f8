"""Shared pieces of the dense position-id tests: an encoder over a tiny model built in code, a plain transformers
forward to compare with, and the fingerprint as computed without the positions marker."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rerank.retrieval.dense import BiEncoder, EncoderSettings, _text_handling, pool
from rerank.runtime import hash_weights
from rerank.testing import build_tokenizer


def make_encoder(build: Callable[[Any], torch.nn.Module], name: str, padding_side: str = "left") -> BiEncoder:
    """A mean-pooling encoder over ``build(tokenizer)`` (seeded), its tokenizer padding on ``padding_side``."""
    torch.manual_seed(0)
    tok = build_tokenizer()
    tok.padding_side = padding_side
    model = build(tok).eval()
    return BiEncoder(model, tok, settings=EncoderSettings(pooling="mean", max_doc_tokens=120), name_or_path=name)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference relative to ``b``'s largest magnitude."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def plain(enc: BiEncoder, text: str) -> np.ndarray:
    """A plain transformers forward of ``text`` alone (the model numbers its positions itself), mean-pooled."""
    feats = enc.doc_tokenizer([text], truncation=True, max_length=120, return_tensors="pt")
    with torch.inference_mode():
        hidden = enc.doc_model(**feats).last_hidden_state
    return pool(hidden, feats["attention_mask"], "mean")[0].numpy()


def old_fingerprint(enc: BiEncoder) -> str:
    """The fingerprint without the positions marker (weights, tokenizer, pad id, text handling)."""
    model, tok = enc.doc_model, enc.doc_tokenizer
    h = hashlib.sha256()
    hash_weights(h, model)
    spec = {k: v for k, v in json.loads(tok.backend_tokenizer.to_str()).items() if k not in ("truncation", "padding")}
    h.update(json.dumps(spec, sort_keys=True).encode())
    h.update(f"pad={tok.pad_token_id}".encode())
    h.update(f"text={_text_handling(tok)}".encode())
    return h.hexdigest()
