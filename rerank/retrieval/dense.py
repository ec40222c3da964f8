"""Bi-encoder over any Hugging Face encoder, saved and loaded as sentence-transformers folders.

A :class:`BiEncoder` embeds queries and documents with CLS, mean or last-token pooling (the last *real* token, for
either padding side), optional L2 normalisation, per-side text prefixes and maximum lengths. Query and document text
is data: its special-token strings (``[SEP]``, ``</s>``) are neutralised (:func:`rerank.heads.text.neutralise`) before
tokenisation, as every reranker head does, so they never become control tokens. Queries and documents
share one transformer unless :meth:`BiEncoder.untie` gives documents their own copy (ADORE trains the query side only).

Saved layout (loads with ``SentenceTransformer(path)``, embeddings equal to ours for text without special-token
strings, which sentence-transformers does not neutralise: tests/test_dense.py)::

    modules.json  config_sentence_transformers.json (prompts: query / document)  rerank_biencoder.json
    0_Transformer/ (weights as safetensors, tokenizer, sentence_bert_config.json)  1_Pooling/  [2_Normalize/]

An untied model is sentence-transformers' ``Router``: ``router_config.json`` with a ``query`` and a ``document`` route,
``{query,document}_0_Transformer/`` and ``{query,document}_1_Pooling/`` (each side with its own max length), then
``[1_Normalize/]``; ``SentenceTransformer(path).encode_query`` / ``encode_document`` take the two sides.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import json
import logging
import shutil
import tempfile
import threading
import weakref
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from rerank.backends.transformers import position_limit, resolve_device
from rerank.config import Renamed, changed_options, renamed_arguments
from rerank.errors import ConfigError, RerankError
from rerank.heads.text import neutralise
from rerank.models import resolve_model_path
from rerank.retrieval.base import FirstStage, Queries, retrieve_args
from rerank.retrieval.index import RENAMED_ENCODER_KEYS, upgrade_encoder_keys
from rerank.runtime import Quantize, Runner, Runtime, check_runtime, compile_model, hash_weights
from rerank.types import Query, lone_surrogate, sort_ranking
from rerank.utils.files import staged_dir, write_json
from rerank.utils.forksafe import ForkSafeLock
from rerank.utils.text import cut_to_tokens

__all__ = [
    "BiEncoder",
    "DenseConfig",
    "DenseRetriever",
    "EncoderOptions",
    "EncoderSettings",
    "Pooling",
    "check_max_lengths",
    "encoder_pool",
    "load_encoder",
    "pool",
]

log = logging.getLogger(__name__)

Pooling = Literal["cls", "mean", "last"]
Side = Literal["query", "doc"]
ROUTER_CONFIG = "router_config.json"
SETTINGS_FILE = "rerank_biencoder.json"
_ST_POOLING = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "last": "pooling_mode_lasttoken"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: text handling (in the fingerprint): special-token strings and markup-like tokens defanged ...
_TEXT_HANDLING = "special-strings-neutralised"
#: ... and the chat template's plain-text turn markers too, for a tokenizer whose template has them
_TEXT_HANDLING_MARKERS = "special-strings-and-turn-markers-neutralised"


def _text_handling(tokenizer: Any) -> str:
    """The text handling a tokenizer's input gets, as named in the fingerprint: a tokenizer whose chat template has no
    plain-text turn markers (every BERT-style encoder) is given the text it was given before turn markers were
    defanged, so its cached embeddings and indexes stay valid; one whose template has them is named apart."""
    from rerank.heads.text import template_markers

    return _TEXT_HANDLING_MARKERS if template_markers(tokenizer) else _TEXT_HANDLING


#: why a former token-limit name is refused (:class:`~rerank.config.Renamed`)
_TOKEN_LIMITS_NOTE = "one name for the token limits everywhere"


@dataclass
class EncoderSettings(Renamed):
    """How texts become vectors; everything here changes the embeddings and so is part of the cache key (a former
    token-limit name, :data:`~rerank.retrieval.index.RENAMED_ENCODER_KEYS`, is a one-line :class:`ConfigError`)."""

    renamed_keys = RENAMED_ENCODER_KEYS  # class attributes (Renamed's), not dataclass fields
    renamed_note = _TOKEN_LIMITS_NOTE

    pooling: Pooling = "mean"
    normalize: bool = False
    query_prefix: str = ""
    doc_prefix: str = ""
    max_query_tokens: int = 512
    max_doc_tokens: int = 512
    lowercase: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in _ST_POOLING:
            raise ConfigError(f"pooling must be one of {sorted(_ST_POOLING)}, got {self.pooling!r}")
        if self.max_query_tokens < 1 or self.max_doc_tokens < 1:
            raise ConfigError("max_query_tokens and max_doc_tokens must be >= 1")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states ``[B, T, H]`` into ``[B, H]``; ``last`` takes the last unmasked token whatever the padding side."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "last":
        seq_len = attention_mask.shape[1]
        last = seq_len - 1 - attention_mask.flip(1).to(torch.int64).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ConfigError(f"unknown pooling {mode!r}; known: cls, mean, last")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise RerankError(f"{path}: invalid JSON: {e}") from None


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _model_max_length(tokenizer: Any, model: torch.nn.Module) -> int:
    """The tokenizer's limit, capped by the model's position table, 512 when neither says."""
    candidates = [int(tokenizer.model_max_length)] if tokenizer.model_max_length < 1_000_000 else []
    limit = position_limit(model)
    if limit is not None:
        candidates.append(limit)
    return min(candidates) if candidates else 512


def check_max_lengths(settings: EncoderSettings, explicit: dict[str, Any], query_model: torch.nn.Module,
                       doc_model: torch.nn.Module) -> EncoderSettings:
    """``settings`` with each side's max length within its model's position limit: an explicit one beyond it is a
    one-line :class:`ConfigError` (it would fail at the first long text), a folder's own is capped."""
    fixed = {}
    for key, model in (("max_query_tokens", query_model), ("max_doc_tokens", doc_model)):
        limit, value = position_limit(model), getattr(settings, key)
        if limit is None or value <= limit:
            continue
        if explicit.get(key) is not None:
            raise ConfigError(f"{key} {value} exceeds this model's limit of {limit} tokens (its position embeddings); "
                              f"use {key} <= {limit}")
        fixed[key] = limit
    return dataclasses.replace(settings, **fixed) if fixed else settings


def _mask_positions(attention_mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position ids ``[B, L]`` counted over each row's real tokens, from ``offset`` at its first one, as the model
    numbers a text alone: a left-padded row reads the positions it has alone. Pads get 0 (``offset`` 0, as
    ``generate`` does) or ``offset - 1``, the padding row of a table that has one (RoBERTa's own rule)."""
    mask = attention_mask.long()
    if offset == 0:
        return (mask.cumsum(-1) - 1).clamp(min=0)
    return mask.cumsum(-1) * mask + (offset - 1)


def _takes_position_ids(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward names a ``position_ids`` argument (decoders, BERT; not T5's relative positions)."""
    return "position_ids" in inspect.signature(model.forward).parameters


def _offset_candidates(model: torch.nn.Module) -> list[int]:
    """Where a text's first position may be numbered from: 0, past the padding row of any position table that has one
    (RoBERTa, MPNet, I-BERT's quantized table), and the start of a ``position_ids`` buffer (Nystromformer)."""
    found = [0]
    for module in model.modules():
        table = getattr(module, "position_embeddings", None)
        if isinstance(table, torch.nn.Module) and getattr(table, "padding_idx", None) is not None:
            found.append(int(table.padding_idx) + 1)
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor) and ids.numel():
            found.append(int(ids.reshape(-1)[0]))
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def _probing(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) without autograd for a probe forward; every module's own mode is restored after it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def _probe_states(model: torch.nn.Module, tokenizer: Any, pad: int = 0,
                  offset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of a short probe text behind ``pad`` left pads, by the model's own numbering (``offset`` None) or
    with mask-derived positions from ``offset``, and the mask of its real tokens."""
    dev = next(model.parameters()).device
    feats = {k: v for k, v in tokenizer(["rerank position probe"], return_tensors="pt").items()
             if k in ("input_ids", "attention_mask", "token_type_ids")}
    if pad:
        fill = {"input_ids": tokenizer.pad_token_id or 0, "attention_mask": 0, "token_type_ids": 0}
        feats = {k: torch.cat([torch.full((1, pad), fill[k], dtype=v.dtype), v], dim=1) for k, v in feats.items()}
    feats = {k: v.to(dev) for k, v in feats.items()}
    if offset is not None:
        feats["position_ids"] = _mask_positions(feats["attention_mask"], offset)
    return model(**feats).last_hidden_state, feats["attention_mask"].bool()


#: per model, what its probe forwards found: the offset it numbers a text from and, per pad id, the positions marker
_NUMBERING: weakref.WeakKeyDictionary[torch.nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()
#: held while a probe runs and its finding is stored: a thread's first call waits for another's probe to finish
_NUMBERING_LOCK = ForkSafeLock(threading.RLock)


def _position_offset(model: torch.nn.Module, tokenizer: Any) -> int | None:
    """The position ``model`` numbers an unpadded text's first token with: the first candidate (0, past a padding row,
    a ``position_ids`` buffer's start) whose positions reproduce its own forward of a probe text, found once per model
    (stored only once found: a probe that raises is tried again at the next call); None when none does (then it is
    given no position ids and numbers them itself)."""
    cache = _NUMBERING.get(model)
    if cache is not None and "offset" in cache:
        return cache["offset"]
    with _NUMBERING_LOCK:
        cache = _NUMBERING.setdefault(model, {})
        if "offset" not in cache:
            found = None
            with _probing(model):
                own, _ = _probe_states(model, tokenizer)
                scale = float(own.abs().max()) or 1.0
                for offset in _offset_candidates(model):
                    got, _ = _probe_states(model, tokenizer, offset=offset)
                    if float((got - own).abs().max()) <= 1e-4 * scale:
                        found = offset
                        break
            if found is None:
                log.warning("%s numbers positions from none of %s; left-padded texts get its own position numbering",
                            type(model).__name__, _offset_candidates(model))
            cache["offset"] = found
        return cache["offset"]


def _passed_offset(model: torch.nn.Module, tokenizer: Any) -> int | None:
    """Where the mask-derived position ids the encoder passes ``model`` start, None when it passes none: its tokenizer
    pads on the right (pads follow the text and the model's own positions are already right), its forward takes no
    position ids, or no probed offset reproduces its own numbering."""
    if tokenizer.padding_side != "left" or not _takes_position_ids(model):
        return None
    return _position_offset(model, tokenizer)


def _positions_changed(model: torch.nn.Module, tokenizer: Any) -> bool:
    """Whether the passed positions differ from the model's own numbering of a left-padded text (then embeddings
    differ from those before position ids were passed): a probe text behind two pads, compared bit for bit."""
    offset = _passed_offset(model, tokenizer)
    if offset is None:
        return False
    cache, key = _NUMBERING[model], ("changed", tokenizer.pad_token_id)
    if key not in cache:
        with _NUMBERING_LOCK, _probing(model):
            own, real = _probe_states(model, tokenizer, pad=2)
            passed, _ = _probe_states(model, tokenizer, pad=2, offset=offset)
            cache[key] = not torch.equal(own[real], passed[real])
    return cache[key]


def _is_causal_lm(config: Any) -> bool:
    """Sentence-transformers' rule for a plain checkpoint: a ``*ForCausalLM`` architecture gets last-token pooling."""
    archs = getattr(config, "architectures", None) or []
    return bool(archs) and archs[0].endswith("ForCausalLM") and getattr(config, "is_causal", True)


class BiEncoder(torch.nn.Module):
    """Query and document encoder; ``encode_*`` give numpy at inference and grad-carrying tensors in train mode."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        settings: EncoderSettings | None = None,
        doc_model: torch.nn.Module | None = None,
        doc_tokenizer: Any | None = None,
        name_or_path: str = "",
    ) -> None:
        super().__init__()
        self.query_model = model
        self.doc_model = doc_model if doc_model is not None else model
        self.query_tokenizer = tokenizer
        self.doc_tokenizer = doc_tokenizer if doc_tokenizer is not None else tokenizer
        self.settings = settings if settings is not None else EncoderSettings()
        self.name_or_path = name_or_path
        self.runtime: tuple[str, str] = ("torch", "none")  # (runtime, quantize) of inference (encode_numpy)
        self.runners: dict[str, Runner] = {}  # side -> compiled forward, when the runtime is not torch
        self.load_spec: tuple[str, dict[str, Any]] | None = None  # how load() built it: data-parallel workers rebuild
        for tok in {id(self.query_tokenizer): self.query_tokenizer, id(self.doc_tokenizer): self.doc_tokenizer}.values():
            if tok.pad_token is None:
                if tok.eos_token is None:
                    raise RerankError(f"{name_or_path}: tokenizer has neither a pad nor an eos token to pad with")
                tok.pad_token = tok.eos_token

    # ------------------------------------------------------------------ properties
    @property
    def tied(self) -> bool:
        """Whether queries and documents share one transformer."""
        return self.doc_model is self.query_model

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.query_model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.query_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.doc_model.parameters()).dtype

    def untie(self) -> BiEncoder:
        """Give documents their own copy of the transformer (the query side can then train alone)."""
        if self.tied:
            self.doc_model = copy.deepcopy(self.query_model)
        return self

    def _side(self, side: Side) -> tuple[torch.nn.Module, Any, int, str]:
        s = self.settings
        if side == "query":
            return self.query_model, self.query_tokenizer, s.max_query_tokens, s.query_prefix
        if side == "doc":
            return self.doc_model, self.doc_tokenizer, s.max_doc_tokens, s.doc_prefix
        raise ValueError(f"side must be 'query' or 'doc', got {side!r}")

    def _prepare(self, texts: Sequence[str], side: Side) -> list[str]:
        """The side's prefix + each text (lowercased when the model is uncased) with its special-token strings
        neutralised: user text is data, never ``[SEP]`` or ``</s>``; the configured prefix is kept as it is."""
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        _, tok, _, prefix = self._side(side)
        if self.settings.lowercase:  # first: lowercasing could make a special string ("<PAD>" -> "<pad>")
            prefix, texts = prefix.lower(), [t.lower() for t in texts]
        return [prefix + neutralise(t, tok) for t in texts]

    def _truncatable(self, texts: Sequence[str], side: Side) -> list[str]:
        """:meth:`_prepare`'s texts, each cut to the part its side's max length can reach
        (:func:`~rerank.utils.text.cut_to_tokens`), so truncating them gives the same tokens as truncating the whole
        texts without tokenising all of a very long one."""
        _, tok, max_len, _ = self._side(side)
        cut = "left" if getattr(tok, "truncation_side", "right") == "left" else "right"
        return [cut_to_tokens(t, tok, max_len, side=cut) for t in self._prepare(texts, side)]

    # ------------------------------------------------------------------ encoding
    def tokenize(self, texts: Sequence[str], side: Side) -> dict[str, torch.Tensor]:
        """Prefixed, truncated, padded model inputs for one side (for trainers that tokenize in a collator)."""
        _, tok, max_len, _ = self._side(side)
        enc = tok(self._truncatable(texts, side), truncation=True, max_length=max_len, padding=True,
                  return_tensors="pt")
        return dict(enc)

    def forward_features(self, features: dict[str, torch.Tensor], side: Side) -> torch.Tensor:
        """Pooled (and normalised) embeddings ``[B, dim]`` of tokenized inputs, with autograd when enabled. Left-padded
        inputs get position ids counted from each row's first real token, so a text's embedding does not depend on the
        longer texts beside it; right-padded ones run as they are."""
        model, tok, _, _ = self._side(side)
        dev = next(model.parameters()).device
        feats = {k: v.to(dev) for k, v in features.items()}
        offset = None if "position_ids" in feats else _passed_offset(model, tok)
        if offset is not None:
            feats["position_ids"] = _mask_positions(feats["attention_mask"], offset)
        return self._pool(model(**feats).last_hidden_state, feats["attention_mask"])

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = pool(hidden, attention_mask, self.settings.pooling)
        return torch.nn.functional.normalize(emb, p=2, dim=-1) if self.settings.normalize else emb

    def _infer(self, features: dict[str, torch.Tensor], side: Side) -> torch.Tensor:
        """Inference embeddings of tokenized inputs: the compiled runtime's hidden states when there is one."""
        runner = self.runners.get(side)
        if runner is None:
            return self.forward_features(features, side)
        feats = dict(features)
        model, tok, _, _ = self._side(side)
        offset = _passed_offset(model, tok) if "position_ids" in runner.names else None  # exported when left-padded
        if offset is not None and "position_ids" not in feats:
            feats["position_ids"] = _mask_positions(feats["attention_mask"], offset)
        return self._pool(runner(feats), feats["attention_mask"])

    def use_runtime(self, runtime: Runtime = "torch", quantize: Quantize = "none") -> BiEncoder:
        """Run inference (:meth:`encode_numpy`) on ``runtime`` (:mod:`rerank.runtime`); training stays on torch."""
        dtype = str(self.dtype).removeprefix("torch.")
        check_runtime(runtime, quantize, str(self.device), dtype)
        self.runners = {}
        for side in ("query", "doc"):
            model, tok, _, _ = self._side(side)  # type: ignore[arg-type]
            if side == "doc" and self.tied and "query" in self.runners:
                self.runners["doc"] = self.runners["query"]
            else:
                runner = compile_model(model, tok, "feature-extraction", runtime, quantize,
                                       position_ids=_passed_offset(model, tok) is not None)
                if runner is not None:
                    self.runners[side] = runner
        self.runtime = (runtime, quantize)
        return self

    def embed(self, texts: Sequence[str], side: Side) -> torch.Tensor:
        """One forward pass over ``texts`` as a tensor with autograd (training batches)."""
        return self.forward_features(self.tokenize(texts, side), side)

    def forward(self, queries: Sequence[str], docs: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A training step's query and document embeddings in one call, with autograd (one forward of a wrapped,
        e.g. distributed, model per step); ``docs`` empty gives ``None`` for the documents."""
        return self.embed(queries, "query"), (self.embed(docs, "doc") if len(docs) else None)

    def encode_queries(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray | torch.Tensor:
        """Query embeddings: float32 numpy ``[n, dim]`` at inference, a grad-carrying tensor in train mode."""
        return self._encode(texts, "query", batch_size, progress)

    def encode_docs(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray | torch.Tensor:
        """Document embeddings: float32 numpy ``[n, dim]`` at inference, a grad-carrying tensor in train mode."""
        return self._encode(texts, "doc", batch_size, progress)

    def _encode(self, texts: Sequence[str], side: Side, batch_size: int, progress: bool) -> np.ndarray | torch.Tensor:
        model = self._side(side)[0]
        if model.training and torch.is_grad_enabled():
            return self.embed(texts, side)
        return self.encode_numpy(texts, side, batch_size, progress)

    def encode_numpy(
        self,
        texts: Sequence[str],
        side: Side,
        batch_size: int = 64,
        progress: bool = False,
        desc: str | None = None,
        bar: Any | None = None,
        pool: Any | None = None,
    ) -> np.ndarray:
        """Inference encoding: tokenize once, batch by token length (longest first), pad per batch, keep input order.

        ``bar``: an outer tqdm bar to advance per batch instead of opening one. ``pool``: a
        :class:`~rerank.parallel.WorkerPool` of this encoder's copies (:func:`encoder_pool`) that encodes the same
        batches, so the embeddings are those of one process.
        """
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        _, tok, max_len, _ = self._side(side)
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        enc = tok(self._truncatable(texts, side), truncation=True, max_length=max_len, padding=False)
        input_ids: list[list[int]] = enc["input_ids"]
        type_ids: list[list[int]] | None = enc.get("token_type_ids") if "token_type_ids" in tok.model_input_names else None
        lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")
        batches = [order[start : start + batch_size] for start in range(0, n, batch_size)]
        own_bar = bar is None
        if own_bar:
            bar = tqdm(total=n, desc=desc or f"encode {side}s", unit=side, disable=not progress)

        def inputs(idx: np.ndarray) -> tuple[list[list[int]], list[list[int]] | None]:
            return [input_ids[i] for i in idx], None if type_ids is None else [type_ids[i] for i in idx]

        if pool is None:
            for idx in batches:
                out[idx] = self.embed_ids(*inputs(idx), side)
                bar.update(len(idx))
        else:  # tasks of whole batches, longest first, about sixteen per worker, so the last ones are short
            per_task = max(1, -(-len(batches) // (16 * pool.workers)))
            tasks = [batches[i : i + per_task] for i in range(0, len(batches), per_task)]
            results = pool.map(_encode_task, [(side, [inputs(idx) for idx in task]) for task in tasks],
                               done=lambda i: bar.update(sum(len(idx) for idx in tasks[i])))
            for task, embs in zip(tasks, results, strict=True):
                for idx, emb in zip(task, embs, strict=True):
                    out[idx] = emb
        if own_bar:
            bar.close()
        return out

    def embed_ids(self, input_ids: list[list[int]], type_ids: list[list[int]] | None, side: Side) -> np.ndarray:
        """Float32 embeddings of one batch of token ids, padded to its longest row on the tokenizer's side."""
        tok = self._side(side)[1]
        width = max(len(x) for x in input_ids)
        left = tok.padding_side == "left"
        ids = torch.full((len(input_ids), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(input_ids), width), dtype=torch.long)
        types = torch.zeros((len(input_ids), width), dtype=torch.long) if type_ids is not None else None
        for row, seq in enumerate(input_ids):
            sl = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, sl] = torch.tensor(seq)
            mask[row, sl] = 1
            if types is not None:
                types[row, sl] = torch.tensor(type_ids[row])  # type: ignore[index]
        feats = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            feats["token_type_ids"] = types
        with torch.inference_mode():
            return self._infer(feats, side).float().cpu().numpy()

    # ------------------------------------------------------------------ identity
    def fingerprint(self, side: Side = "doc") -> str:
        """SHA-256 of one side's weights (as float32, so storage dtype does not matter), tokenizer, and how text is
        given to it (special-token strings and chat-template turn markers neutralised, and the mask-derived positions a
        left-padded model is given where they differ from its own).

        The model part of index manifests and embedding-cache keys; independent of where or how the folder was saved.
        """
        model, tok, _, _ = self._side(side)
        h = hashlib.sha256()
        hash_weights(h, model)
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:  # its JSON minus the run-time truncation/padding state
            spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        else:
            spec = tok.get_vocab()
        h.update(json.dumps(spec, sort_keys=True).encode())
        h.update(f"pad={tok.pad_token_id}".encode())
        h.update(f"text={_text_handling(tok)}".encode())
        if _positions_changed(model, tok):  # left-padded: mask-derived positions (right-padded keys stay as they were)
            h.update(b"positions=mask")
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """Model path, tying, settings and a runtime other than torch (for manifests and ``metrics.json``)."""
        runtime = {} if self.runtime == ("torch", "none") else {"runtime": self.runtime[0], "quantize": self.runtime[1]}
        return {"model": self.name_or_path, "tied": self.tied, "dim": self.dim, **dataclasses.asdict(self.settings),
                **runtime}

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """Write a sentence-transformers folder (``SentenceTransformer(path)`` loads it; untied: a ``Router`` with a
        ``query`` and a ``document`` route); replaces ``path`` atomically."""
        path = Path(path)
        with staged_dir(path) as tmp:
            self.save_into(tmp)
        return path

    def save_into(self, folder: str | Path) -> None:
        """Write the sentence-transformers files into ``folder`` (created if needed; other files there are kept)."""
        folder = Path(folder)
        s = self.settings
        modules: list[dict[str, Any]] = []
        if self.tied:
            _save_transformer(folder / "0_Transformer", self.query_model, self.query_tokenizer, s.max_doc_tokens, s)
            _save_pooling(folder / "1_Pooling", self.query_model, s.pooling)
            modules += [_module(0, "0_Transformer", "Transformer"), _module(1, "1_Pooling", "Pooling")]
        else:
            routes = {"query": (self.query_model, self.query_tokenizer, s.max_query_tokens),
                      "document": (self.doc_model, self.doc_tokenizer, s.max_doc_tokens)}
            types, structure = {}, {}
            for route, (model, tok, max_len) in routes.items():
                _save_transformer(folder / f"{route}_0_Transformer", model, tok, max_len, s)
                _save_pooling(folder / f"{route}_1_Pooling", model, s.pooling)
                types.update({f"{route}_0_Transformer": f"{_ST_MODULES}.Transformer",
                              f"{route}_1_Pooling": f"{_ST_MODULES}.Pooling"})
                structure[route] = [f"{route}_0_Transformer", f"{route}_1_Pooling"]
            write_json({"types": types, "structure": structure,
                        "parameters": {"default_route": "document", "allow_empty_key": True, "route_mappings": {}}},
                       folder / ROUTER_CONFIG)
            modules.append(_module(0, "", "Router"))
        if s.normalize:
            write_json({}, folder / f"{len(modules)}_Normalize" / "config.json")
            modules.append(_module(len(modules), f"{len(modules)}_Normalize", "Normalize"))
        write_json(modules, folder / "modules.json")
        write_json(
            {"prompts": {"query": s.query_prefix, "document": s.doc_prefix}, "default_prompt_name": None,
             "similarity_fn_name": "cosine" if s.normalize else "dot"},
            folder / "config_sentence_transformers.json",
        )
        write_json({"format": "rerank-biencoder-settings", "version": 1, **dataclasses.asdict(s)}, folder / SETTINGS_FILE)

    @classmethod
    @renamed_arguments(RENAMED_ENCODER_KEYS, "BiEncoder.load", _TOKEN_LIMITS_NOTE)
    def load(
        cls,
        name_or_path: str | Path,
        *,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        query_prefix: str | None = None,
        doc_prefix: str | None = None,
        max_query_tokens: int | None = None,
        max_doc_tokens: int | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        runtime: Runtime = "torch",
        quantize: Quantize = "none",
        weights: bool = True,
    ) -> BiEncoder:
        """Load a sentence-transformers folder (an untied one as a query/document ``Router``) or a plain HF encoder.

        Settings come from the folder (pooling, Normalize module, prompts, max lengths); explicit arguments override.
        A plain checkpoint gets mean pooling (last-token for ``*ForCausalLM`` architectures) and no normalisation.
        ``runtime`` / ``quantize``: what runs inference (:meth:`use_runtime`). ``weights`` false: each transformer is
        built from its config on the meta device (no weights read, nothing placed on a device): an encoder for checks
        of its settings and position limits (``rerank train --check``), which cannot encode.
        """
        spec = {"pooling": pooling, "normalize": normalize, "query_prefix": query_prefix, "doc_prefix": doc_prefix,
                "max_query_tokens": max_query_tokens, "max_doc_tokens": max_doc_tokens, "device": device,
                "dtype": dtype if dtype is None or isinstance(dtype, str) else str(dtype).removeprefix("torch."),
                "runtime": runtime, "quantize": quantize}
        path = resolve_model_path(name_or_path)
        torch_dtype = _resolve_dtype(dtype)
        dev = resolve_device(device) if device else torch.device(
            "cuda" if torch.cuda.is_available() and runtime == "torch" else "cpu")
        root = Path(path)
        if (root / "modules.json").is_file():
            (qmodel, qtok), doc, base = _load_st_folder(root, torch_dtype, weights)
            dmodel, dtok = doc if doc is not None else (None, None)
        else:
            qmodel, qtok, base = _load_plain(root if root.exists() else path, torch_dtype, weights)
            dmodel, dtok = None, None
        explicit = {
            "pooling": pooling, "normalize": normalize, "query_prefix": query_prefix, "doc_prefix": doc_prefix,
            "max_query_tokens": max_query_tokens, "max_doc_tokens": max_doc_tokens,
        }
        base.update({k: v for k, v in explicit.items() if v is not None})
        fields = {f.name for f in dataclasses.fields(EncoderSettings)}
        settings = EncoderSettings(**{k: v for k, v in base.items() if k in fields})
        settings = check_max_lengths(settings, explicit, qmodel, dmodel if dmodel is not None else qmodel)
        enc = cls(qmodel, qtok, settings, dmodel, dtok, name_or_path=str(name_or_path))
        if not weights:
            return enc
        enc.to(dev)
        enc.eval()
        enc.use_runtime(runtime, quantize)
        enc.load_spec = (str(name_or_path), spec)
        return enc


def _load_for_worker(name_or_path: str, spec: dict[str, Any]) -> BiEncoder:
    return BiEncoder.load(name_or_path, **spec)


def _encode_task(encoder: BiEncoder, task: tuple[str, list[tuple[list[list[int]], list[list[int]] | None]]]
                 ) -> list[np.ndarray]:
    side, batches = task
    return [encoder.embed_ids(ids, types, side) for ids, types in batches]  # type: ignore[arg-type]


def encoder_pool(encoder: BiEncoder, workers: int) -> Any:
    """A :class:`~rerank.parallel.WorkerPool` of ``workers`` copies of ``encoder`` (each loaded as it was), for
    :meth:`BiEncoder.encode_numpy`'s ``pool``."""
    from rerank.parallel import WorkerPool

    if encoder.load_spec is None:
        raise ConfigError("workers need an encoder made by BiEncoder.load (each worker loads its own copy)")
    return WorkerPool(workers, _load_for_worker, encoder.load_spec)


_ST_MODULES = "sentence_transformers.models"


def _module(idx: int, path: str, kind: str) -> dict[str, Any]:
    return {"idx": idx, "name": str(idx), "path": path, "type": f"{_ST_MODULES}.{kind}"}


def _save_transformer(folder: Path, model: torch.nn.Module, tokenizer: Any, max_len: int, s: EncoderSettings) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    write_json({"max_seq_length": max_len, "do_lower_case": s.lowercase}, folder / "sentence_bert_config.json")


def _save_pooling(folder: Path, model: torch.nn.Module, pooling: str) -> None:
    cfg: dict[str, Any] = {"word_embedding_dimension": int(model.config.hidden_size)}
    for mode, key in _ST_POOLING.items():
        cfg[key] = mode == pooling
    cfg.update({"pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
    write_json(cfg, folder / "config.json")


def _kind(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def _load_st_folder(root: Path, dtype: torch.dtype | None,
                    weights: bool = True) -> tuple[tuple[Any, Any], tuple[Any, Any] | None, dict[str, Any]]:
    """A sentence-transformers folder: Transformer -> Pooling -> [Normalize], or a Router of a ``query`` and a
    ``document`` route of that shape followed by [Normalize]. Returns (query side, document side or None, settings)."""
    modules = _read_json(root / "modules.json")
    kinds = [_kind(m["type"]) for m in modules]
    settings: dict[str, Any] = {"normalize": "Normalize" in kinds}
    if kinds and kinds[0] == "Router":
        if any(k != "Normalize" for k in kinds[1:]):
            raise RerankError(f"{root / 'modules.json'}: only Router -> [Normalize] is supported after a Router; "
                              f"found {[m['type'] for m in modules]}")
        rdir = root / modules[0]["path"] if modules[0]["path"] else root
        cfg_file = rdir / ROUTER_CONFIG if (rdir / ROUTER_CONFIG).is_file() else rdir / "config.json"
        router = _read_json(cfg_file)
        structure, types = router.get("structure", {}), router.get("types", {})
        if set(structure) != {"query", "document"} or router.get("parameters", {}).get("route_mappings"):
            raise RerankError(f"{cfg_file}: only a Router with exactly a 'query' and a 'document' route is supported; "
                              f"found routes {sorted(structure)}")
        sides = {}
        for route in ("query", "document"):
            sides[route] = _load_pipeline(rdir, [(mid, _kind(types[mid])) for mid in structure[route]], dtype, root,
                                          weights)
        (qm, qt, qset), (dm, dt, dset) = sides["query"], sides["document"]
        if qset["pooling"] != dset["pooling"]:
            raise RerankError(f"{cfg_file}: the query and document routes pool differently "
                              f"({qset['pooling']} / {dset['pooling']}); one pooling for both sides is supported")
        settings["normalize"] = settings["normalize"] or (qset["normalize"] and dset["normalize"])
        settings.update(pooling=qset["pooling"], lowercase=qset["lowercase"], max_query_tokens=qset["max_length"],
                        max_doc_tokens=dset["max_length"])
        query, doc = (qm, qt), (dm, dt)
    else:
        m, t, side = _load_pipeline(root, [(m["path"], k) for m, k in zip(modules, kinds, strict=True)], dtype, root,
                                    weights)
        settings.update(pooling=side["pooling"], lowercase=side["lowercase"], max_query_tokens=side["max_length"],
                        max_doc_tokens=side["max_length"])
        settings["normalize"] = settings["normalize"] or side["normalize"]
        query, doc = (m, t), None
    cst = root / "config_sentence_transformers.json"
    if cst.is_file():
        declared = _read_json(cst)
        similarity = declared.get("similarity_fn_name")
        if similarity not in (None, "cosine", "dot", "dot_product"):
            raise RerankError(f"{cst}: similarity_fn_name {similarity!r} is not supported (the bi-encoder and the "
                              "dense retriever rank by dot product or cosine)")
        prompts = declared.get("prompts") or {}
        settings["query_prefix"] = prompts.get("query", "")
        settings["doc_prefix"] = prompts.get("document", prompts.get("passage", ""))
    if (root / SETTINGS_FILE).is_file():
        saved = upgrade_encoder_keys(_read_json(root / SETTINGS_FILE))  # a folder saved before the rename too
        settings.update({k: saved[k] for k in ("max_query_tokens", "max_doc_tokens") if k in saved})
    return query, doc, settings


def _load_pipeline(base: Path, parts: list[tuple[str, str]], dtype: torch.dtype | None,
                   root: Path, weights: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """One encoder from its modules ``[(path under base, kind)]``: Transformer -> Pooling -> [Normalize]."""
    kinds = [k for _, k in parts]
    if kinds[:1] != ["Transformer"] or any(k not in ("Pooling", "Normalize") for k in kinds[1:]):
        raise RerankError(f"{root}: only Transformer -> Pooling -> [Normalize] models are supported; found {kinds}")
    tpath = base / parts[0][0] if parts[0][0] else base
    model, tok, side = _load_plain(tpath, dtype, weights)
    side["normalize"] = "Normalize" in kinds
    pool_parts = [p for p, k in parts if k == "Pooling"]
    if pool_parts:
        side["pooling"] = _read_st_pooling(base / pool_parts[0] / "config.json")
    return model, tok, side


def _load_plain(path: str | Path, dtype: torch.dtype | None,
                weights: bool = True) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """An HF encoder folder (or hub id): model, tokenizer, and what it says about pooling, case and max length
    (``weights`` false: the model built from its config on the meta device, no weights read)."""
    from transformers import AutoConfig, AutoModel

    from rerank.backends.util import load_tokenizer, weights_errors

    settings: dict[str, Any] = {}
    st_max_len: int | None = None
    sb = Path(path) / "sentence_bert_config.json"
    if sb.is_file():
        sbc = _read_json(sb)
        st_max_len = sbc.get("max_seq_length")
        settings["lowercase"] = bool(sbc.get("do_lower_case", False))
    _check_plain_folder(Path(path), weights)
    try:
        tokenizer = load_tokenizer(path, "encoder", trust_remote_code=False)
        kwargs: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True}  # never unpickle weights
        if dtype is not None:
            kwargs["dtype"] = dtype
        if weights:
            with weights_errors(path, "encoder"):
                model = AutoModel.from_pretrained(str(path), **kwargs)
        else:
            with torch.device("meta"):
                model = AutoModel.from_config(AutoConfig.from_pretrained(str(path), trust_remote_code=False))
    except OSError as e:
        raise RerankError(f"cannot load encoder {path}: {e}") from None
    except ValueError as e:
        if "trust_remote_code" in str(e):  # a hub id whose config asks for custom code: transformers' advice misleads
            raise ConfigError(f"encoder {path} needs custom code to load (config.json auto_map); {_NO_REMOTE_CODE}") \
                from None
        raise
    settings.setdefault("lowercase", False)
    settings["max_length"] = int(st_max_len) if st_max_len else _model_max_length(tokenizer, model)
    settings["pooling"] = "last" if _is_causal_lm(model.config) else "mean"
    settings["normalize"] = False
    settings["max_query_tokens"] = settings["max_doc_tokens"] = settings["max_length"]
    return model, tokenizer, settings


#: why a model that needs its own code is refused, and what to do instead
_NO_REMOTE_CODE = ("the bi-encoder and the dense retriever never run a model's own code (they have no "
                   "trust_remote_code option): use an encoder whose architecture transformers has built in")


def _check_plain_folder(folder: Path, weights: bool) -> None:
    """Refuse, in one line, a local encoder folder that needs its own code (``auto_map`` with a model type transformers
    lacks; a known one is a warning that the code is not run) or, when ``weights`` are read, holds only pickled ones."""
    from rerank.backends.util import custom_code
    from rerank.trainers.common import check_safetensors

    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    declared_code = custom_code(config if isinstance(config, dict) else None)
    if declared_code is not None:
        entries, model_type, known = declared_code
        declared = f"encoder {folder} declares custom code (config.json auto_map: {entries})"
        if not known:
            raise ConfigError(f"{declared} and transformers has no built-in class for its model type {model_type!r}; "
                              f"{_NO_REMOTE_CODE}")
        log.warning("%s, which is NOT run: it loads with transformers' built-in %r classes", declared, model_type)
    if weights:
        check_safetensors(folder, "cannot load encoder")


def _read_st_pooling(path: Path) -> str:
    """Our pooling name from a sentence-transformers Pooling config (legacy booleans or the newer ``pooling_mode``)."""
    cfg = _read_json(path)
    mode = cfg.get("pooling_mode")
    if mode is None:
        active = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
        names = {v: k for k, v in _ST_POOLING.items()}
        modes = [names.get(a, a) for a in active] or ["mean"]
        mode = modes[0] if len(modes) == 1 else tuple(modes)
    else:
        mode = {"lasttoken": "last"}.get(mode, mode) if isinstance(mode, str) else tuple(mode)
    if isinstance(mode, tuple) or mode not in _ST_POOLING:
        raise RerankError(f"{path}: pooling {mode!r} is not supported (cls, mean, lasttoken)")
    if cfg.get("include_prompt") is False:
        raise RerankError(f"{path}: include_prompt=false (prompt tokens excluded from pooling) is not supported")
    return mode


# ---------------------------------------------------------------------- first stage


@dataclass
class EncoderOptions(Renamed):
    """How to load a bi-encoder (the dense retriever's and the bi-encoder reranker's options); ``None`` means: as the
    model (or the index) says. A former token-limit name (``doc_max_length``) is a one-line :class:`ConfigError`
    naming the current one, and the override that gave it (``--reranker-set doc_max_length=…``)."""

    renamed_keys = RENAMED_ENCODER_KEYS  # class attributes (Renamed's), not dataclass fields
    renamed_note = _TOKEN_LIMITS_NOTE

    pooling: Pooling | None = None
    normalize: bool | None = None
    query_prefix: str | None = None
    doc_prefix: str | None = None
    max_query_tokens: int | None = None
    max_doc_tokens: int | None = None
    device: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    runtime: Runtime = "torch"
    quantize: Quantize = "none"

    def __post_init__(self) -> None:
        check_runtime(self.runtime, self.quantize, self.device, self.dtype)


@dataclass
class DenseConfig(EncoderOptions):
    """Options of ``--retriever dense`` (``--retriever-set KEY=VALUE``); ``None`` means: as the model/index says."""

    model: str | None = None
    index: str | None = None
    batch_size: int = 64
    cache: bool = True
    shard_size: int = 8192
    ef_search: int | None = None
    nprobe: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        changed = changed_options(self, ("cache", "shard_size")) if self.index else []
        if changed:  # a saved index is searched as it is: no corpus is encoded, so nothing is cached or sharded
            given = " and ".join(f"{name}={getattr(self, name)}" for name in changed)
            raise ConfigError(f"{given} appl{'y' if len(changed) > 1 else 'ies'} only when the corpus is encoded, and "
                              f"the index {self.index} is searched as saved: drop {given}, or drop the index to "
                              "encode the corpus")


_ENCODER_KEYS = ("pooling", "normalize", "query_prefix", "doc_prefix", "max_query_tokens", "max_doc_tokens")


def _encoder_overrides(cfg: EncoderOptions, manifest: dict[str, Any] | None, model: str | None = None,
                       dataset: str | None = None, fill: bool = True) -> dict[str, Any]:
    """Encoder settings and ``dtype``: explicit options, else the index's recorded ones (the settings with ``fill``;
    the dtype always, as no model folder states the one its documents were encoded in); an explicit doc-side value (or
    ``dtype``) must match it, else a one-line error naming the ``rerank index`` command (for ``model`` and
    ``dataset``) that builds an index with it."""
    from rerank.retrieval.index import rebuild_command

    out: dict[str, Any] = {k: getattr(cfg, k) for k in (*_ENCODER_KEYS, "dtype") if getattr(cfg, k) is not None}
    if manifest is None:
        return out
    recorded = manifest.get("encoder")
    recorded = recorded if isinstance(recorded, dict) else {}
    for k in (*_ENCODER_KEYS, "dtype"):
        if k not in recorded or k not in out or k in ("query_prefix", "max_query_tokens"):
            continue
        if out[k] != recorded[k]:
            index = getattr(cfg, "index", None) or "?"
            redo = rebuild_command(index, manifest, model=model, dataset=dataset, settings=out)
            raise RerankError(f"index {index}: built with {k}={recorded[k]!r}, but {k}={out[k]!r} was given; drop "
                              f"the option, or rebuild the index with it: {redo}")
    for k in _ENCODER_KEYS:
        if k in recorded and fill:
            out.setdefault(k, recorded[k])
    if recorded.get("dtype") in _DTYPES:
        out.setdefault("dtype", recorded["dtype"])
    return out


def load_encoder(model: str, options: EncoderOptions, manifest: dict[str, Any] | None = None,
                 dataset: str | None = None, own: bool = False) -> BiEncoder:
    """The bi-encoder ``model`` with ``options`` over its own settings (and, unless ``own``, an index manifest's, when
    given; its dtype in any case; a mismatch names the ``rerank index`` command for ``dataset``)."""
    return BiEncoder.load(model, device=options.device, runtime=options.runtime, quantize=options.quantize,
                          **_encoder_overrides(options, manifest, model, dataset, fill=not own))


def _check_model_settings(index: str, manifest: dict[str, Any], cfg: EncoderOptions, encoder: BiEncoder,
                          model: str, dataset: str | None) -> None:
    """Refuse an index whose recorded encoder settings differ from those of the model folder searched with (its own,
    and the options given), in one line naming both and the ``rerank index`` command that rebuilds it with the
    model's: the index's would otherwise silently replace the model's, query side included."""
    from rerank.retrieval.index import rebuild_command

    recorded = manifest.get("encoder")
    recorded = recorded if isinstance(recorded, dict) else {}
    own = dataclasses.asdict(encoder.settings)
    differ = [k for k in _ENCODER_KEYS if k in recorded and getattr(cfg, k) is None and recorded[k] != own[k]]
    st_folder = (Path(resolve_model_path(model)) / "modules.json").is_file()
    diff = [k for k in differ if _model_records(k, own, st_folder)]
    if not diff:  # what the model does not record itself is the index's, as documented
        if differ:
            encoder.settings = dataclasses.replace(encoder.settings, **{k: recorded[k] for k in differ})
        return
    built = ", ".join(f"{k}={recorded[k]!r}" for k in diff)
    says = ", ".join(f"{k}={own[k]!r}" for k in diff)
    redo = rebuild_command(index, manifest, model=model, dataset=dataset, settings=own)
    raise RerankError(f"index {index}: built with {built}, but the model {model} says {says}: the index's settings "
                      f"would replace the model's; set {built} (--retriever-set KEY=VALUE) to search with the "
                      f"index's, or rebuild the index with the model's own: {redo}")


def _model_records(key: str, own: Mapping[str, Any], st_folder: bool) -> bool:
    """Whether a model folder states encoder setting ``key`` itself (so an index's other value is a conflict, not a
    default to fill): pooling and normalisation in a sentence-transformers folder, a prefix when it has one (its
    prompts); lengths never (an index may record shorter ones)."""
    if key in ("pooling", "normalize"):
        return st_folder
    if key in ("query_prefix", "doc_prefix"):
        return bool(own[key])
    return False


def _tmp_work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="rerank-emb-"))


def searchable_queries(queries: Mapping[str, Query]) -> list[str]:
    """The ids of the queries an encoder is given: the blank ones left out (they get ``[]``, as with BM25); a text
    holding a lone UTF-16 surrogate is a ``ValueError`` naming the query (tokenizers refuse it)."""
    qids = [q for q, query in queries.items() if query.text.strip()]
    for q in qids:
        if (at := lone_surrogate(queries[q].text)) is not None:
            raise ValueError(f"queries[{q!r}]: text has a lone UTF-16 surrogate at {at}: text must be valid Unicode")
    return qids


def blank_doc_ids(dataset: Any, ids: set[str] | None = None) -> frozenset[str]:
    """The ids of ``dataset``'s empty documents (no title or text, or whitespace only), which dense retrieval leaves
    out (BM25 never returns them); logs a warning with their count when there are any. ``ids``: a set that every
    document id is added to in the same pass."""
    from rerank.retrieval.index import doc_text

    docs = dataset.corpus.values() if "corpus" in vars(dataset) else dataset.iter_corpus()
    found: set[str] = set()
    for d in docs:
        if ids is not None:
            ids.add(d.id)
        if not doc_text(d):
            found.add(d.id)
    blank = frozenset(found)
    if blank:
        log.warning("%d documents are empty (no title or text, e.g. %r): dense retrieval never returns them, as BM25 "
                    "does not", len(blank), min(blank))
    return blank


class DenseRetriever(FirstStage):
    """Bi-encoder first stage over a FAISS index: a saved ``--index`` folder, or the corpus encoded (cached) into flat IP."""

    name = "dense"

    def __init__(self, encoder: BiEncoder, index: Any, config: DenseConfig, blank: Collection[str] = ()) -> None:
        self.encoder = encoder
        self.index = index
        self.config = config
        self.blank = frozenset(blank)  # ids of empty documents: never returned (see :meth:`retrieve`)

    @classmethod
    def from_dataset(cls, dataset: Any, **options: Any) -> DenseRetriever:
        from rerank.config import from_dict

        return cls.from_config(dataset, from_dict(DenseConfig, options, "retriever options"))

    @classmethod
    def from_config(cls, dataset: Any, cfg: DenseConfig) -> DenseRetriever:
        """Load the encoder and the index (saved, or built from cached embeddings) for ``dataset``."""
        from rerank.retrieval.index import DenseIndex, IndexConfig, encode_corpus_cached, set_search_params

        root = getattr(dataset, "root", None)
        where = str(root) if root is not None else None  # for the `rerank index` command an error names
        manifest = DenseIndex.read_manifest(cfg.index, model=cfg.model, dataset=where) if cfg.index else None
        model = cfg.model or (manifest or {}).get("model")
        if not model:
            raise ConfigError("the dense retriever needs a model (--model M or --retriever-set model=M) or an --index")
        own = manifest is not None and bool(cfg.model)  # a model named: its own settings, checked against the index's
        encoder = load_encoder(model, cfg, manifest, where, own=own)
        blank = None
        if cfg.index:
            corpus_ids: set[str] = set()  # one streamed pass finds the ids and the empty documents; nothing is held
            blank = blank_doc_ids(dataset, corpus_ids)
            index = DenseIndex.load(
                cfg.index,
                corpus_sha256=dataset.corpus_hash,
                corpus_ids=corpus_ids,
                model_hash=encoder.fingerprint("doc"),
                dim=encoder.dim,
                model=str(model),
                dataset=where,
            )
            if own:
                _check_model_settings(cfg.index, index.manifest, cfg, encoder, str(model), where)
        else:
            work = None if cfg.cache else _tmp_work_dir()
            try:
                emb = encode_corpus_cached(
                    encoder, dataset, cfg.cache, work, cfg.shard_size, cfg.batch_size, cfg.progress
                )
                index = DenseIndex.build(emb, encoder, IndexConfig("flat"), model=str(model))
                if work is not None:
                    index.embeddings = np.array(index.embeddings)
            finally:
                if work is not None:
                    shutil.rmtree(work, ignore_errors=True)
        set_search_params(index.index, cfg.ef_search, cfg.nprobe)
        return cls(encoder, index, cfg, blank if blank is not None else blank_doc_ids(dataset))

    def retrieve(self, queries: Queries, k: int) -> dict[str, list[tuple[str, float]]]:
        """Top-``k`` per query in trec_eval order. An empty or whitespace-only query gets ``[]``, as with BM25 (its
        embedding is no question, yet would rank the corpus); an empty document (no title or text) is never returned,
        as with BM25 (its embedding holds no content, yet can outscore every document); a query text holding a lone
        UTF-16 surrogate is a ``ValueError`` naming the query (tokenizers refuse it)."""
        queries, k = retrieve_args(queries, k)
        qids = searchable_queries(queries)
        run: dict[str, list[tuple[str, float]]] = {q: [] for q in queries}
        if not qids:
            return run
        emb = self.encoder.encode_numpy(
            [queries[q].text for q in qids], "query", self.config.batch_size, self.config.progress, "encode queries"
        )
        hits = self.index.search(emb, k + len(self.blank))  # enough for k once the empty documents are dropped
        run.update((q, sort_ranking([h for h in hit if h[0] not in self.blank])[:k])
                   for q, hit in zip(qids, hits, strict=True))
        return run

    def describe(self) -> dict[str, Any]:
        m = self.index.manifest
        return {
            "name": self.name,
            "model": str(self.config.model or m.get("model")),
            "index": self.config.index,
            "index_type": m.get("index_type"),
            "num_docs": m.get("num_docs"),
            "model_hash": m.get("model_hash"),
            "encoder": dataclasses.asdict(self.encoder.settings),
            "ef_search": self.config.ef_search,
            "nprobe": self.config.nprobe,
        }
