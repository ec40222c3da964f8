"""cross-encoder: ``AutoModelForSequenceClassification`` over (query, document) pairs, batched and length-sorted.

All pairs of a batch of queries are tokenised once, sorted by length so each forward batch carries little padding,
and scored in one pass; identical pairs are scored once, so they tie. A pair longer than ``max_length`` is cut as
sentence-transformers cuts it (``longest_first``: the longer of query and document loses tokens first, so a long
document is cut and a long query keeps at most half the pair); the query is first cut to ``max_query_tokens``, and a
sentence-transformers folder's default prompt (``prompts`` / ``default_prompt_name``) is put before it, as its
``predict`` does; only the part of a very long document that ``max_length`` reaches is tokenised. Special-token
strings in the texts (``[SEP]``, …) are neutralised, so a text can never end its segment. One label -> that logit;
two labels -> ``two_label_score`` (diff = logit[1] - logit[0], positive = logit[1], softmax = P(label 1));
``sigmoid`` maps the score to (0, 1) (rank-preserving). For every query of at most ``max_query_tokens`` tokens, a
one-label model's scores equal sentence-transformers' ``CrossEncoder`` logits on the same model, and
:meth:`~CrossEncoderReranker.st_activation` maps them to what its ``predict`` returns (the activation the model folder
declares). Long documents can be scored by passages (``long_docs``, :mod:`rerank.heads.passages`). ``runtime``
(``torch`` | ``onnx`` | ``openvino``) and ``quantize`` (``none`` | ``int8``, onnx only) pick what runs the forward pass
on the CPU (:mod:`rerank.runtime`); tokenisation and batching stay these.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from rerank.backends.transformers import position_limit, resolve_device, resolve_dtype
from rerank.backends.util import (
    ALLOW_NEW_HEAD,
    architectures,
    check_classifier,
    check_no_new_weights,
    load_tokenizer,
    weights_errors,
)
from rerank.config import changed_options, from_dict, to_dict
from rerank.errors import ConfigError
from rerank.heads.base import Reranker, RerankerConfig, check_local_model, split_scores
from rerank.heads.passages import LongDocs, ScoresByPassages, check_long_docs
from rerank.heads.text import neutralise, token_spans
from rerank.models import resolve_model_path
from rerank.runtime import Quantize, Runner, Runtime, check_runtime, compile_model
from rerank.types import Candidate, Query
from rerank.utils.text import cut_to_tokens

__all__ = ["CrossEncoderConfig", "CrossEncoderReranker", "declared_activations", "declared_prompt", "pair_query"]

log = logging.getLogger(__name__)

_NO_LENGTH = 10**9  # a tokenizer's model_max_length at or above this is transformers' "unset" (int(1e30))


@dataclass
class CrossEncoderConfig(RerankerConfig):
    """Cross-encoder options; ``long_docs``, ``passage_tokens`` and ``stride`` as for the pointwise LLM heads
    (:mod:`rerank.heads.passages`); ``runtime`` and ``quantize`` as :mod:`rerank.runtime` says."""

    batch_size: int = 32
    max_length: int = 0  # 0: the model's own (its tokenizer's model_max_length, at most its position limit)
    max_query_tokens: int = 256
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = None
    two_label_score: Literal["diff", "positive", "softmax"] = "diff"
    sigmoid: bool = False
    trust_remote_code: bool = False
    allow_new_head: bool = False  # accept a model without a trained classification head (it starts random)
    long_docs: LongDocs = "truncate"
    passage_tokens: int = 200
    stride: int = 100
    runtime: Runtime = "torch"
    quantize: Quantize = "none"

    def __post_init__(self) -> None:
        check_runtime(self.runtime, self.quantize, self.device, self.dtype)
        if self.batch_size < 1 or (self.max_length and self.max_length < 8):
            raise ValueError("batch_size must be >= 1 and max_length 0 (the model's own) or >= 8")
        if self.max_query_tokens < 1:
            raise ConfigError("max_query_tokens must be >= 1")
        check_long_docs(self, self.max_length - 3 if self.max_length else None)


def pair_query(query: str, tokenizer: Any, max_query_tokens: int) -> str:
    """``query`` as a pair holds it: special-token strings neutralised, cut to ``max_query_tokens`` tokens (the head
    scores, and the trainer trains on, exactly this text)."""
    text = neutralise(query, tokenizer)
    spans = token_spans(tokenizer, text)
    return text[: spans[max_query_tokens - 1][1]] if len(spans) > max_query_tokens else text


def _st_config(folder: Path) -> dict[str, Any]:
    """``folder``'s ``config_sentence_transformers.json`` when it is a sentence-transformers folder (``modules.json``:
    how sentence-transformers 6 saves one, and the only case where it reads that file), else ``{}``."""
    cst = folder / "config_sentence_transformers.json"
    if not (folder.name and (folder / "modules.json").is_file() and cst.is_file()):
        return {}
    try:
        saved = json.loads(cst.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cst}: not valid JSON ({e})") from None
    return saved if isinstance(saved, dict) else {}


def declared_prompt(model: Any) -> str:
    """The prompt sentence-transformers' ``CrossEncoder.predict`` puts before each query of ``model`` (loaded from a
    local folder): its saved ``prompts[default_prompt_name]``; ``""`` when no default prompt is named (a prompt that is
    not the default applies only when asked for by name, which rerank does not)."""
    folder = Path(str(getattr(model, "name_or_path", "") or ""))
    saved = _st_config(folder)
    name = saved.get("default_prompt_name")
    if name is None:
        return ""
    prompts = saved.get("prompts")
    if not isinstance(prompts, dict) or name not in prompts:
        raise ConfigError(f"{folder / 'config_sentence_transformers.json'}: default_prompt_name {name!r} is not one of "
                          f"its prompts ({sorted(prompts) if isinstance(prompts, dict) else 'none'})")
    prompt = prompts[name]
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError(f"{folder / 'config_sentence_transformers.json'}: prompt {name!r} is not a string")
    return prompt or ""


def check_st_modules(path: str | Path, shown: str) -> None:
    """Refuse a modular sentence-transformers CrossEncoder (a Transformer followed by Pooling, Dense, … modules): the
    head loads only a sequence-classification checkpoint, so its trained scoring modules would be dropped."""
    folder = Path(path)
    if _st_config(folder).get("model_type") != "CrossEncoder":
        return
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{folder / 'modules.json'}: not valid JSON ({e})") from None
    if isinstance(modules, list) and len(modules) > 1:
        names = [str(m.get("type", "?")).rpartition(".")[2] if isinstance(m, dict) else "?" for m in modules]
        raise ConfigError(f"{shown} is a modular sentence-transformers CrossEncoder ({' + '.join(names)}), which the "
                          f"cross-encoder head does not load (its {', '.join(names[1:])} modules would be dropped); "
                          f"score it with sentence-transformers, or use a sequence-classification checkpoint")


def declared_activations(model: Any) -> list[str]:
    """The activations sentence-transformers' ``CrossEncoder`` would try on ``model``'s output, first to last, as dotted
    class paths: the ``activation_fn`` of the folder's ``config_sentence_transformers.json`` when it is a
    sentence-transformers folder (``modules.json``: how sentence-transformers 6 saves one), then ``config.json``'s
    ``sentence_transformers.activation_fn`` (versions 4 and 5) or else ``sbert_ce_default_activation_function``
    (older); the folder is the one the model was loaded from, if local."""
    found: list[str] = []
    saved = _st_config(Path(str(getattr(model, "name_or_path", "") or "")))
    if isinstance(saved.get("activation_fn"), str):
        found.append(saved["activation_fn"])
    config = model.config
    st = getattr(config, "sentence_transformers", None)
    if isinstance(st, dict) and "activation_fn" in st:
        found += [st["activation_fn"]] if isinstance(st["activation_fn"], str) else []
    elif isinstance(getattr(config, "sbert_ce_default_activation_function", None), str):
        found.append(config.sbert_ce_default_activation_function)
    return found


def pair_length(max_length: int, model: Any, tokenizer: Any) -> int:
    """The pair length scored: ``max_length`` when set (a one-line :class:`ConfigError` when the model's position
    embeddings cannot encode that many tokens: it would fail at the first long pair), else the tokenizer's
    ``model_max_length`` as sentence-transformers' CrossEncoder takes it (a model trained at 256 tokens is scored at
    256, one declaring 1024 at 1024), at most the config's ``max_position_embeddings`` and the model's limit; 512
    when neither the tokenizer nor the model gives a length."""
    limit = position_limit(model)
    if max_length:
        if limit is not None and max_length > limit:
            raise ConfigError(f"cross-encoder: max_length {max_length} exceeds this model's limit of {limit} tokens "
                              f"(its position embeddings); use max_length <= {limit}, or 0 for the model's own")
        return max_length
    own = int(getattr(tokenizer, "model_max_length", 0) or 0)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    bounds = [n for n in (own, positions, limit) if isinstance(n, int) and 0 < n < _NO_LENGTH]
    return min(bounds) if bounds else 512


class CrossEncoderReranker(ScoresByPassages, Reranker):
    """Sequence-classification relevance model (no Backend: it is not a causal LM)."""

    method = "cross-encoder"
    config_class: ClassVar[type[RerankerConfig]] = CrossEncoderConfig
    independent_scores = True

    def __init__(self, config: CrossEncoderConfig | None = None, model: Any = None, tokenizer: Any = None,
                 model_name: str | None = None, runner: Runner | None = None) -> None:
        super().__init__(config)
        if model is None or tokenizer is None:
            raise ValueError("cross-encoder: give a model and its tokenizer (or use Reranker.load)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.runner = runner  # the compiled forward (runtime onnx / openvino); None: the torch model runs
        self.declared_activations = declared_activations(model)
        self.prompt = declared_prompt(model)  # what sentence-transformers' predict puts before each query
        self._activation: torch.nn.Module | None = None
        self.device = next(model.parameters()).device
        self.num_labels = int(model.config.num_labels)
        self.max_length: int = pair_length(self.config.max_length, model, tokenizer)  # type: ignore[attr-defined]
        if self.num_labels not in (1, 2):
            raise ValueError(f"cross-encoder: expected a model with 1 or 2 labels, got {self.num_labels}")
        if self.num_labels == 1 and changed_options(self.config, ("two_label_score",)):
            raise ConfigError(f"cross-encoder: two_label_score={self.config.two_label_score} applies to a model with "  # type: ignore[attr-defined]
                              f"two labels; {model_name or 'this model'} has one (its logit is the score): drop it")
        check_long_docs(self.config, self.max_length - 3)

    @classmethod
    def from_options(cls, model: str | None = None, backend: str = "transformers", **options: Any) -> Reranker:
        from transformers import AutoModelForSequenceClassification

        from rerank.trainers.common import check_safetensors

        cfg = from_dict(CrossEncoderConfig, options, where="cross-encoder options")
        path = resolve_model_path(check_local_model(cls.method, backend, model))
        device = resolve_device(cfg.device if cfg.runtime == "torch" else cfg.device or "cpu")
        archs = architectures(path, cfg.trust_remote_code)
        check_st_modules(path, f"cross-encoder: {model}")
        if not cfg.allow_new_head:
            check_classifier(f"cross-encoder: {model}", archs)
        # a new head (allow_new_head on a bare encoder) has one label, as sentence-transformers' CrossEncoder builds it
        new_head = {} if any(a.endswith("ForSequenceClassification") for a in archs) else {"num_labels": 1}
        check_safetensors(path, "cross-encoder: model")
        tok = load_tokenizer(path, "cross-encoder: model", trust_remote_code=cfg.trust_remote_code)
        with torch.random.fork_rng(devices=[]), weights_errors(path, "cross-encoder: model"):
            # a new head is drawn the same every load (and the ONNX cache reused)
            torch.manual_seed(0)
            net, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=resolve_dtype(cfg.dtype, device), trust_remote_code=cfg.trust_remote_code,
                use_safetensors=True, output_loading_info=True, **new_head,
            )
        if not cfg.allow_new_head:
            check_no_new_weights(f"cross-encoder: {model}", info, f"load a trained cross-encoder, or {ALLOW_NEW_HEAD}")
        head = cls(cfg, net.to(device), tok, model_name=model)  # checks max_length before any export
        head.runner = compile_model(head.model, tok, "sequence-classification", cfg.runtime, cfg.quantize)
        return head

    def st_activation(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """What sentence-transformers' ``CrossEncoder.predict`` applies to this model's output, as a function of a
        numpy array (None: the identity): the activation the model folder declares (:func:`declared_activations`; a
        class outside ``torch.`` only with ``trust_remote_code``, as there), else Sigmoid for one label, the identity
        for two. With the ``sigmoid`` option the scores are probabilities already and pass unchanged, and a two-label
        model's one score a pair (``two_label_score``) has no sentence-transformers counterpart (its two columns): both
        give None. The activation is applied to each pair's score alone, as to each row of sentence-transformers'
        logits."""
        if self.config.sigmoid or self.num_labels != 1:  # type: ignore[attr-defined]
            return None
        if self._activation is None:
            self._activation = self._resolve_activation()
        act = self._activation
        if isinstance(act, torch.nn.Identity):
            return None

        def apply(scores: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                column = torch.as_tensor(np.asarray(scores, dtype=np.float64)).reshape(-1, 1)
                return act(column).reshape(np.shape(scores)).numpy()

        return apply

    def _resolve_activation(self) -> torch.nn.Module:
        trusted: bool = self.config.trust_remote_code  # type: ignore[attr-defined]
        for dotted in self.declared_activations:
            if not (trusted or dotted.startswith("torch.")):
                log.warning("cross-encoder: %s declares the activation %s, which sentence-transformers applies only "
                            "with trust_remote_code; it uses its default", self.model_name, dotted)
                continue
            module, _, name = dotted.rpartition(".")
            try:
                activation = getattr(importlib.import_module(module), name)()
                if not callable(activation):
                    raise TypeError("not a callable module")
                return activation
            except (ImportError, AttributeError, ValueError, TypeError) as e:
                raise ConfigError(f"cross-encoder: {self.model_name}: its declared activation {dotted!r} cannot be "
                                  f"imported ({e})") from None
        return torch.nn.Sigmoid() if self.num_labels == 1 else torch.nn.Identity()

    def query_text(self, query: str) -> str:
        """The query as the pair holds it: special strings neutralised, cut to ``max_query_tokens`` tokens, after the
        model folder's default prompt (:func:`declared_prompt`)."""
        cfg: CrossEncoderConfig = self.config  # type: ignore[assignment]
        return self.prompt + pair_query(query, self.tokenizer, cfg.max_query_tokens)

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Scores of (query, document) text pairs, in input order; each distinct pair is scored once, so identical
        pairs tie."""
        cfg: CrossEncoderConfig = self.config  # type: ignore[assignment]
        if not pairs:
            return []
        keys = [(q, d) for q, d in pairs]
        distinct = list(dict.fromkeys(keys))  # each pair scored once: identical pairs get identical scores (ties)
        queries: dict[str, str] = {}
        for q, _ in distinct:
            if q not in queries:
                queries[q] = self.query_text(q)
        side = getattr(self.tokenizer, "truncation_side", "right")  # the end of a document the pair keeps
        docs = [cut_to_tokens(neutralise(d, self.tokenizer), self.tokenizer, self.max_length, side=side)
                for _, d in distinct]
        enc = self.tokenizer(
            [queries[q] for q, _ in distinct], docs,
            truncation="longest_first", max_length=self.max_length,
        )
        features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(distinct))]
        order = sorted(range(len(distinct)), key=lambda i: -len(features[i]["input_ids"]))
        scores: dict[tuple[str, str], float] = {}
        with torch.inference_mode():
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                batch = self.tokenizer.pad([features[i] for i in idx], return_tensors="pt")
                if self.runner is not None:
                    logits = self.runner(batch)
                else:
                    logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits.float()
                for i, s in zip(idx, self._reduce(logits).tolist(), strict=True):
                    scores[distinct[i]] = s
        return [scores[k] for k in keys]

    def _reduce(self, logits: torch.Tensor) -> torch.Tensor:
        cfg: CrossEncoderConfig = self.config  # type: ignore[assignment]
        if self.num_labels == 1:
            score = logits[:, 0]
        elif cfg.two_label_score == "diff":
            score = logits[:, 1] - logits[:, 0]
        elif cfg.two_label_score == "positive":
            score = logits[:, 1]
        else:
            score = torch.softmax(logits, dim=-1)[:, 1]
        return torch.sigmoid(score) if cfg.sigmoid else score

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def score_passages(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        """Scores of the candidates as given (each pair cut to ``max_length``)."""
        pairs = [(q.text, c.doc.full_text()) for q, cs in zip(queries, candidate_lists, strict=True) for c in cs]
        return split_scores(self.score_pairs(pairs), candidate_lists)

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """Scores that are probabilities already (``sigmoid``, two-label ``softmax``) stay; a logit (one label,
        ``diff``, ``positive``) goes through the sigmoid: for ``diff`` that is exactly P(label 1)."""
        cfg: CrossEncoderConfig = self.config  # type: ignore[assignment]
        if cfg.sigmoid or (self.num_labels == 2 and cfg.two_label_score == "softmax"):
            return [min(max(float(s), 0.0), 1.0) for s in scores]
        return super().relevance(scores)

    def document_token_limit(self, query: str) -> int | None:
        """``max_length`` less the pair's three special tokens and the query's tokens (at most half of the rest, rounded
        up: all a long query keeps under ``longest_first``)."""
        room = self.max_length - 3
        q = len(self.tokenizer.encode(self.query_text(query), add_special_tokens=False))
        return max(1, room - min(q, (room + 1) // 2))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "config": to_dict(self.config), "model": self.model_name,
                "num_labels": self.num_labels, "max_length": self.max_length, "device": str(self.device),
                **({"runtime": self.runner.describe()} if self.runner is not None else {})}

    def close(self) -> None:
        self.model = None
        self.runner = None
