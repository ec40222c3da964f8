"""ColBERT reranking: MaxSim over L2-normalised token embeddings, as PyLate computes it.

The checkpoint is a PyLate folder: ``modules.json`` = Transformer -> Dense projection(s), and
``config_sentence_transformers.json`` with ``query_prefix`` / ``document_prefix`` (tokens such as ``[Q] ``, inserted
after the first special token), ``query_length`` / ``document_length``, ``do_query_expansion`` (queries padded with
the mask token to ``query_length``, those positions taking part in MaxSim), ``attend_to_expansion_tokens`` and
``skiplist_words`` (document tokens left out of MaxSim, punctuation by default). PyLate itself does not install here
(it pins older sentence-transformers, transformers and a CUDA torch), so this is an own implementation of its
scoring; :func:`maxsim` is tested against hand-computed values. A Stanford-ColBERT checkpoint (``artifact.metadata``)
is not read. Query and document text is data: its special-token strings (``[SEP]``, ``[MASK]``) are neutralised
(:func:`rerank.heads.text.neutralise`) before tokenisation, as every head does, and so are the prefix tokens
(``[Q]``, ``[D]``, in any case: PyLate adds them as plain tokens with a trailing space, which the tokenizer matches in
normalised text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from rerank.config import from_dict, to_dict
from rerank.backends.transformers import position_limit
from rerank.errors import ConfigError
from rerank.heads.base import Reranker, RerankerConfig, check_local_model, split_scores
from rerank.heads.text import defang, neutralise
from rerank.types import Candidate, Query
from rerank.utils.text import cut_to_tokens

__all__ = ["ColBERTConfig", "ColBERTEncoder", "ColBERTReranker", "maxsim"]


def maxsim(q: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
    """Late-interaction scores ``[B]``: for query tokens ``q [B, Lq, H]`` and document tokens ``d [B, Ld, H]`` (masked
    by ``d_mask [B, Ld]``, 1 = counts), the sum over query tokens of the maximum dot product with a counted document
    token. A document without counted tokens scores 0."""
    sim = torch.einsum("bqh,bdh->bqd", q, d)
    sim = sim.masked_fill(~d_mask.bool().unsqueeze(1), float("-inf"))
    best = sim.max(dim=-1).values
    return torch.where(torch.isinf(best), torch.zeros_like(best), best).sum(dim=-1)


@dataclass
class ColBERTConfig(RerankerConfig):
    """ColBERT options; ``None`` lengths mean the checkpoint's own (``query_length`` / ``document_length``)."""

    batch_size: int = 32
    query_length: int | None = None
    document_length: int | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("query_length", "document_length"):
            value = getattr(self, name)
            if value is not None and value < 3:
                raise ConfigError(f"{name} must be >= 3 (special tokens and a prefix), got {value}")


class ColBERTEncoder(torch.nn.Module):
    """Token embeddings of a PyLate folder: transformer, Dense projections, L2 normalisation per token."""

    def __init__(self, transformer: Any, tokenizer: Any, dense: list[torch.nn.Linear], settings: dict[str, Any]):
        super().__init__()
        self.transformer = transformer.eval()
        self.tokenizer = tokenizer
        self.dense = torch.nn.ModuleList(dense)
        self.settings = settings
        self.prefix_ids: dict[str, int] = {}
        for side, key in (("query", "query_prefix"), ("doc", "document_prefix")):
            token = settings[key]
            tid = tokenizer.convert_tokens_to_ids(token)
            if tid is None or tid == tokenizer.unk_token_id:
                raise ConfigError(f"colbert: the tokenizer has no token {token!r} ({key})")
            self.prefix_ids[side] = int(tid)
        skip = settings.get("skiplist_words") or []
        self.skip_ids = {i for w in skip for i in tokenizer.encode(w, add_special_tokens=False)[:1]}
        prefixes = sorted({settings[k].strip() for k in ("query_prefix", "document_prefix")} - {""}, key=len,
                          reverse=True)
        self._prefix_strings = re.compile("|".join(map(re.escape, prefixes)), re.IGNORECASE) if prefixes else None

    def prepare(self, text: str) -> str:
        """User ``text`` as the model reads it: special-token strings and the prefix tokens' strings defanged (a space
        after the first character, ``[Q]`` -> ``[ Q]``), so none becomes a control or prefix token."""
        return defang(neutralise(text, self.tokenizer), self._prefix_strings)

    @classmethod
    def load(cls, model: str, dtype: str = "auto", device: str | None = None) -> ColBERTEncoder:
        """Load a PyLate ColBERT folder (Transformer -> Dense...); anything else is a one-line error."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        from rerank.backends.transformers import resolve_device, resolve_dtype
        from rerank.backends.util import load_tokenizer, weights_errors
        from rerank.models import resolve_model_path

        root = Path(resolve_model_path(model))
        if not (root / "modules.json").is_file():
            raise ConfigError(f"colbert: {model} is not a PyLate / sentence-transformers ColBERT folder (no "
                              f"modules.json)")
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if kinds[:1] != ["Transformer"] or not kinds[1:] or any(k != "Dense" for k in kinds[1:]):
            raise ConfigError(f"colbert: {model}: expected Transformer -> Dense modules, found {kinds}")
        settings = {"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 32, "document_length": 180,
                    "do_query_expansion": True, "attend_to_expansion_tokens": False, "skiplist_words": []}
        cst = root / "config_sentence_transformers.json"
        if cst.is_file():
            saved = json.loads(cst.read_text(encoding="utf-8"))
            settings.update({k: saved[k] for k in settings if k in saved})
        dev = resolve_device(device)
        tpath = root / modules[0]["path"] if modules[0]["path"] else root
        tok = load_tokenizer(tpath, "colbert: model")
        with weights_errors(tpath, "colbert: model"):
            net = AutoModel.from_pretrained(str(tpath), dtype=resolve_dtype(dtype, dev), use_safetensors=True)
        dense = []
        for m in modules[1:]:
            cfg = json.loads((root / m["path"] / "config.json").read_text(encoding="utf-8"))
            act = str(cfg.get("activation_function", "Identity")).rsplit(".", 1)[-1]
            if act != "Identity":
                raise ConfigError(f"colbert: {model}: Dense activation {act} is not supported (Identity only)")
            layer = torch.nn.Linear(cfg["in_features"], cfg["out_features"], bias=bool(cfg.get("bias", True)))
            weights = root / m["path"] / "model.safetensors"
            if not weights.is_file():
                raise ConfigError(f"colbert: {model}: {weights} is missing (safetensors weights only)")
            with weights_errors(weights, "colbert: model"):
                state = load_file(str(weights))
            layer.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
            dense.append(layer.to(net.dtype))  # in the transformer's dtype (bfloat16, float16), as PyLate casts both
        return cls(net, tok, dense, settings).to(dev)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def tokenize(self, texts: Sequence[str], side: Literal["query", "doc"], length: int) -> dict[str, torch.Tensor]:
        """Ids (first token, the side's prefix token, the text cut to fit ``length``, its special-token strings
        neutralised) and the attention mask; queries with expansion are padded with the mask token to ``length``. Also
        ``score_mask``: the tokens MaxSim uses. Of a very long text only the part ``length`` reaches is tokenised."""
        tok = self.tokenizer
        texts = [cut_to_tokens(self.prepare(t), tok, length, side=tok.truncation_side) for t in texts]
        enc = tok(texts, truncation=True, max_length=length - 1, padding=False)
        rows = [[ids[0], self.prefix_ids[side], *ids[1:]] for ids in enc["input_ids"]]
        expand = side == "query" and self.settings["do_query_expansion"]
        width = length if expand else max(len(r) for r in rows)
        fill = tok.mask_token_id if expand else tok.pad_token_id
        ids = torch.full((len(rows), width), fill, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            att[i, : len(r)] = 1
        score = torch.ones_like(att) if expand else att.clone()
        if expand and self.settings["attend_to_expansion_tokens"]:
            att = torch.ones_like(att)
        if side == "doc" and self.skip_ids:
            score &= ~torch.isin(ids, torch.tensor(sorted(self.skip_ids)))
        return {"input_ids": ids, "attention_mask": att, "score_mask": score}

    def embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised token embeddings ``[B, L, dim]``."""
        with torch.inference_mode():
            h = self.transformer(input_ids=features["input_ids"].to(self.device),
                                 attention_mask=features["attention_mask"].to(self.device)).last_hidden_state
            for layer in self.dense:
                h = layer(h)
            return torch.nn.functional.normalize(h.float(), p=2, dim=-1)


class ColBERTReranker(Reranker):
    """MaxSim of the query's and each candidate's token embeddings."""

    method = "colbert"
    config_class: ClassVar[type[RerankerConfig]] = ColBERTConfig
    independent_scores = True

    def __init__(self, config: ColBERTConfig | None = None, encoder: ColBERTEncoder | None = None,
                 model_name: str | None = None) -> None:
        super().__init__(config)
        if encoder is None:
            raise ValueError("colbert: give an encoder (or use Reranker.load)")
        self.encoder = encoder
        self.model_name = model_name
        cfg: ColBERTConfig = self.config  # type: ignore[assignment]
        self.query_length = int(cfg.query_length or encoder.settings["query_length"])
        self.document_length = int(cfg.document_length or encoder.settings["document_length"])
        limit = position_limit(getattr(encoder, "transformer", None))  # a scripted encoder has none
        for name in ("query_length", "document_length"):
            if limit is not None and getattr(self, name) > limit:
                raise ConfigError(f"colbert: {name} {getattr(self, name)} exceeds this model's limit of {limit} tokens "
                                  f"(its position embeddings); use {name} <= {limit}")

    @classmethod
    def from_options(cls, model: str | None = None, backend: str = "transformers", **options: Any) -> Reranker:
        cfg = from_dict(ColBERTConfig, options, where="colbert options")
        model = check_local_model(cls.method, backend, model)
        return cls(cfg, ColBERTEncoder.load(model, cfg.dtype, cfg.device), model_name=model)

    @property
    def tokenizer(self) -> Any:
        """The encoder's tokenizer (what :meth:`document_token_limit` counts in)."""
        return self.encoder.tokenizer

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        cfg: ColBERTConfig = self.config  # type: ignore[assignment]
        enc = self.encoder
        qf = enc.tokenize([q.text for q in queries], "query", self.query_length)
        q_emb = enc.embed(qf) * qf["score_mask"].unsqueeze(-1).to(enc.device)
        pairs = [(qi, c.doc.full_text()) for qi, cs in enumerate(candidate_lists) for c in cs]
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][1]))  # similar lengths share a batch
        flat = [0.0] * len(pairs)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            df = enc.tokenize([pairs[i][1] for i in idx], "doc", self.document_length)
            d_emb = enc.embed(df)
            qs = q_emb[[pairs[i][0] for i in idx]]
            for i, s in zip(idx, maxsim(qs, d_emb, df["score_mask"].to(enc.device)).tolist(), strict=True):
                flat[i] = float(s)
        return split_scores(flat, candidate_lists)

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """MaxSim over the query length (each token's best cosine is at most 1), mapped from [-1, 1] to [0, 1]."""
        return [min(max((float(s) / self.query_length + 1.0) / 2.0, 0.0), 1.0) for s in scores]

    def document_token_limit(self, query: str) -> int | None:
        """``document_length`` less the first, prefix and last tokens."""
        return max(1, self.document_length - 3)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "config": to_dict(self.config), "model": self.model_name,
                "query_length": self.query_length, "document_length": self.document_length}

    def close(self) -> None:
        self.encoder = None  # type: ignore[assignment]
