"""The default backend: a Hugging Face causal LM run in-process (CPU or GPU), batched.

Prompts are token ids; batches are formed from length-sorted prompts (less padding) and results are returned in
input order. Log-prob batches are right-padded and run without a padding mask: under causal attention a token never
sees the pads after it, so each row computes exactly what it computes alone, and attention keeps its causal kernel
(an explicit mask makes it compute every block, twice the causal work: a left-padded batch of three 2,200-token
FIRST windows took 1.4x as long as the three alone on CPU, a right-padded one 1.1x). Each row's logits are read at its
own last token. On a CPU a log-prob batch holds at most :data:`CPU_BATCH_TOKENS` tokens and only prompts of similar
length (:data:`CPU_MIN_FILL`): long prompts run one at a time, since they gain nothing from a shared forward there.
Generation is left-padded (what ``generate`` needs), position ids derived from the attention mask, and keeps the same
CPU limits: three SmolLM2 listwise windows of ~1,100 tokens generated as one left-padded batch took 1.14x their time
one at a time (the masked prefill costs more than batched decoding of ~40 tokens saves).

With ``prefix_cache`` (default on), log-prob calls whose prompts share a long token prefix (a pointwise head's
instruction and query, one prompt per document) run that prefix once and reuse its KV cache for every prompt
(:mod:`rerank.backends.prefix`): the rest of each prompt follows the cached prefix at the positions it has in the
whole prompt, so every prompt reads the same tokens at the same positions as without reuse. Models whose cache is not
a plain growing per-layer cache (sliding-window or linear-attention layers) run whole prompts (logged once).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rerank.backends.base import GenerationConfig, LogitsBackend
from rerank.backends.grammar import ConstrainedDecoding, check_budget, compile_grammar, eos_token_ids
from rerank.backends.prefix import PrefixStore, attention_weight, prefix_groups
from rerank.backends.util import (
    architectures,
    check_causal_lm,
    check_no_new_weights,
    cut_at_stop,
    load_tokenizer,
    weights_errors,
)
from rerank.config import from_dict, to_dict
from rerank.errors import ConfigError
from rerank.models import resolve_model_path

__all__ = ["TransformersBackend", "TransformersBackendConfig", "position_limit", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)


@dataclass
class TransformersBackendConfig:
    """Options of the transformers backend (``max_length`` = longest prompt accepted, None = the model's limit;
    ``prefix_cache``: run the common token prefix of scored prompts once and reuse its KV cache)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = None
    batch_size: int = 8
    max_length: int | None = None
    trust_remote_code: bool = False
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU. A named device must exist here, else a one-line :class:`ConfigError`
    before any model loads (torch itself fails later, with an assertion deep in ``.to()`` or a list of every device
    type it knows)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {device!r} is unknown; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        available = mps is not None and mps.is_available()
    else:
        module = getattr(torch, dev.type, None)  # torch.cuda, torch.xpu, ...: a type without one cannot run a model
        available = callable(getattr(module, "is_available", None)) and bool(module.is_available())
    if not available:
        why = "torch.cuda.is_available() is False" if dev.type == "cuda" else f"this torch build cannot use {dev.type}"
        raise ConfigError(f"device {device!r} is not available here ({why}); use device cpu")
    count = getattr(getattr(torch, dev.type, None), "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        raise ConfigError(f"device {device!r} is not available here: {count()} {dev.type} device(s), "
                          f"{dev.type}:0 to {dev.type}:{count() - 1}")
    return dev


def position_limit(model: Any) -> int | None:
    """The longest input (in tokens, special ones included) ``model``'s position embeddings can encode; None when it
    has no fixed limit.

    A learned position table of ``n`` rows holds ``n`` positions, less ``padding_idx + 1`` where positions start after
    the padding index (RoBERTa, XLM-R, MPNet: 514 rows, padding index 1 -> 512, the tokenizers' ``model_max_length``);
    no table (relative positions, as DeBERTa-v2) -> None; a model without the usual ``embeddings.position_embeddings``
    (rotary ones) -> ``config.max_position_embeddings``."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    table = getattr(embeddings, "position_embeddings", ...)
    if isinstance(table, torch.nn.Embedding):
        return table.num_embeddings - (table.padding_idx + 1 if table.padding_idx is not None else 0)
    if table is None:
        return None
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on a GPU that supports it, float32 otherwise."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


#: On a CPU a log-prob or generation batch holds at most ``CPU_BATCH_TOKENS`` tokens, padding included, and a prompt
#: joins a batch only when it is at least ``CPU_MIN_FILL`` of the batch's longest: a shared forward gains little there
#: (its matrix products are large already) and padding is pure cost. On the 2-core box three ~2,300-token FIRST
#: windows took 1.2x their time alone as one batch; SmolLM2 yes-no over 30 DL19 passages (160-320 tokens, batches of
#: 8) ran 1.2x faster with these limits than padded to each batch's longest.
CPU_BATCH_TOKENS = 2048
CPU_MIN_FILL = 0.85


def _length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None,
                    min_fill: float = 0.0) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first): at most ``batch_size`` a batch, with
    ``max_tokens`` at most that many tokens padded to the batch's longest, and each at least ``min_fill`` times the
    longest's length (a prompt that fits none of these starts a batch of its own)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        last = batches[-1] if batches else None
        if last is not None and len(last) < batch_size and lengths[i] >= min_fill * lengths[last[0]] and (
            max_tokens is None or (len(last) + 1) * lengths[last[0]] <= max_tokens
        ):
            last.append(i)
        else:
            batches.append([i])
    return batches


def apply_allowed(scores: torch.Tensor, allowed: Any) -> None:
    """Set every logit of the 1-d ``scores`` to -inf except at the ``allowed`` token ids (a numpy array)."""
    keep = torch.as_tensor(allowed, device=scores.device)
    keep = keep[keep < scores.shape[-1]]
    kept = scores[keep].clone()
    scores.fill_(float("-inf"))
    scores[keep] = kept


class GrammarLogitsProcessor:
    """A transformers logits processor: each row of a left-padded batch generates only its grammar's answers."""

    def __init__(self, runs: list[ConstrainedDecoding], prompt_width: int) -> None:
        self.runs = runs
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.prompt_width:
            last = input_ids[:, -1].tolist()
            for run, token in zip(self.runs, last, strict=True):
                run.advance(token)
        for row, run in enumerate(self.runs):
            allowed = run.allowed()
            if allowed is not None:
                apply_allowed(scores[row], allowed)
        return scores


class TransformersBackend(LogitsBackend):
    """``AutoModelForCausalLM`` + tokenizer; safetensors only, no remote code unless asked."""

    name = "transformers"
    config_class = TransformersBackendConfig

    def __init__(self, model: Any, tokenizer: Any, config: TransformersBackendConfig | None = None,
                 model_name: str | None = None) -> None:
        super().__init__()
        self.config = config or TransformersBackendConfig()
        self.model = model.eval()
        self._tokenizer = tokenizer
        self.model_name = model_name
        self.device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        self.pad_id = int(pad)
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_length = self.config.max_length or limit
        self._reuse = self.config.prefix_cache
        self._prefixes: PrefixStore[Any] = PrefixStore()
        self._attention = attention_weight(model.config)
        cpu = self.device.type == "cpu"
        self._batching = {"max_tokens": CPU_BATCH_TOKENS if cpu else None, "min_fill": CPU_MIN_FILL if cpu else 0.0}
        # transformers 5.x names the KV-cache argument ``cache``; earlier versions ``past_key_values``
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @classmethod
    def from_options(cls, model: str | None, **options: Any) -> TransformersBackend:
        """Load ``model`` (hub name, folder, ``.gguf`` file or a folder with one) with typed options."""
        from transformers import AutoModelForCausalLM

        cfg = from_dict(TransformersBackendConfig, options, where="transformers backend options")
        if not model:
            raise ValueError("the transformers backend needs --model (a name, folder or .gguf file)")
        path = resolve_model_path(model)
        device = resolve_device(cfg.device)
        check_causal_lm(model, architectures(path, cfg.trust_remote_code))
        from rerank.trainers.common import check_safetensors

        check_safetensors(path, "model")
        tokenizer = load_tokenizer(path, "model", trust_remote_code=cfg.trust_remote_code)
        with weights_errors(path, "model"):
            lm, info = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=resolve_dtype(cfg.dtype, device),
                trust_remote_code=cfg.trust_remote_code,
                use_safetensors=True,
                output_loading_info=True,
            )
        check_no_new_weights(model, info, "an LLM reranker needs a causal LM checkpoint with its language-model head")
        return cls(lm.to(device), tokenizer, cfg, model_name=model)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def context_length(self) -> int | None:
        """``max_length``: the option, else the model's ``max_position_embeddings``."""
        return self.max_length

    def _check_length(self, prompt: Sequence[int], extra: int = 0) -> None:
        if not prompt:
            raise ValueError("empty prompt")
        if self.max_length is not None and len(prompt) + extra > self.max_length:
            raise ValueError(
                f"prompt of {len(prompt)} tokens (+{extra} to generate) exceeds max_length {self.max_length}; "
                "lower the head's max_doc_tokens"
            )

    def _pad_left(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[row, width - len(p) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _last_values(self, rows: Sequence[Sequence[int]], wanted: torch.Tensor, normalise: bool,
                     cache: Any = None) -> torch.Tensor:
        """The logits (``normalise``: log-softmax) at each row's last token, for the ``wanted`` ids (on the CPU). Rows
        are right-padded with no padding mask (see the module docstring); ``cache``: a KV cache the rows continue (one
        copy per row)."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        last = torch.tensor([len(r) - 1 for r in rows], device=self.device)
        keep = torch.unique(last)  # sorted: the positions whose logits are computed
        pick = torch.searchsorted(keep, last)  # each row's own position among them
        reach = torch.arange(len(rows), device=self.device)

        def own_position(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (args[0][reach, pick].unsqueeze(1), *args[1:])  # the LM head sees each row's last token only

        past = {self._cache_arg: cache, "use_cache": True} if cache is not None else {"use_cache": False}
        head = self.model.get_output_embeddings()
        hook = head.register_forward_pre_hook(own_position) if head is not None else None
        try:
            logits = self.model(input_ids=ids.to(self.device), logits_to_keep=keep, **past).logits
        finally:
            if hook is not None:
                hook.remove()
        logits = (logits[:, 0] if logits.shape[1] == 1 else logits[reach, pick]).float()  # [rows, kept, vocab]: no hook
        return (torch.log_softmax(logits, dim=-1) if normalise else logits).index_select(-1, wanted).cpu()

    def _prefix_kv(self, prefix: Sequence[int], rows: int) -> tuple[Any, int] | None:
        """A KV cache holding at least the first ``n`` tokens of ``prefix`` and that ``n``: a stored one when that is
        cheaper for ``rows`` prompts, else ``prefix`` run now (and stored). Never to be mutated: copy it first. None
        when the model's cache cannot be reused (reuse is then off for this backend)."""
        hit = self._prefixes.best(prefix, rows)
        if hit is not None:
            return hit[1], hit[2]
        try:
            from transformers.cache_utils import DynamicLayer
        except ImportError:  # transformers < 4.56: no per-layer cache objects to check
            DynamicLayer = None  # noqa: N806
        out = self.model(input_ids=torch.tensor([list(prefix)], device=self.device), use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        layers = getattr(cache, "layers", None)
        if DynamicLayer is None or not layers or any(type(layer) is not DynamicLayer for layer in layers):
            log.warning("transformers backend: this model's KV cache (%s) cannot be shared across prompts; "
                        "prefix_cache is off and prompts run whole", type(cache).__name__)
            self._reuse = False
            return None
        self._prefixes.add(prefix, cache)
        return cache, len(prefix)

    def _score_shared(self, prompts: Sequence[Sequence[int]], group: list[int], shared: int, wanted: torch.Tensor,
                      normalise: bool, out: list[list[float]]) -> bool:
        """Score the prompts ``group`` whose first ``shared`` tokens are common, running those once; False (nothing
        scored) when the model's cache cannot be reused."""
        found = self._prefix_kv(prompts[group[0]][:shared], len(group))
        if found is None:
            return False
        base, n = found
        for batch in _length_batches([len(prompts[i]) - n for i in group], self.config.batch_size, **self._batching):
            rows = [group[k] for k in batch]
            cache = copy.deepcopy(base)
            if cache.get_seq_length() > n:
                cache.crop(n - cache.get_seq_length())  # a negative count removes that many tokens (every version)
            cache.batch_repeat_interleave(len(rows))
            values = self._last_values([prompts[i][n:] for i in rows], wanted, normalise, cache)
            for row, i in enumerate(rows):
                out[i] = values[row].tolist()
        return True

    @torch.inference_mode()
    def _last_position(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int],
                       normalise: bool) -> list[list[float]]:
        """The logits (``normalise``: log-softmax) of ``token_ids`` after each prompt, batched (a shared prefix once)."""
        for p in prompts:
            self._check_length(p)
        wanted = torch.tensor(list(token_ids), dtype=torch.long, device=self.device)
        out: list[list[float]] = [[] for _ in prompts]
        whole: list[int] = []
        groups = prefix_groups(prompts, attention=self._attention) if self._reuse else [(list(range(len(prompts))), 0)]
        for group, shared in groups:
            if not (shared and self._reuse and self._score_shared(prompts, group, shared, wanted, normalise, out)):
                whole.extend(group)
        for batch in _length_batches([len(prompts[i]) for i in whole], self.config.batch_size, **self._batching):
            rows = [whole[k] for k in batch]
            values = self._last_values([prompts[i] for i in rows], wanted, normalise)
            for row, i in enumerate(rows):
                out[i] = values[row].tolist()
        return out

    def constraint_error(self) -> str | None:
        """None: any grammar is enforced by a logits processor."""
        return None

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        from transformers import GenerationConfig as HFGenerationConfig
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        self.calls["generate"] += 1
        for p in prompts:
            self._check_length(p, config.max_new_tokens)
        sample = config.temperature > 0
        constrained = config.constraint is not None
        eos = self.model.generation_config.eos_token_id or self._tokenizer.eos_token_id
        gen = HFGenerationConfig(
            max_new_tokens=config.max_new_tokens,
            do_sample=sample,
            temperature=config.temperature if sample and not constrained else None,
            top_p=config.top_p if sample and not constrained else None,
            top_k=None,
            eos_token_id=eos,
            pad_token_id=self.pad_id,
            stop_strings=list(config.stop) or None,
        )
        automaton = None
        if config.constraint is not None:
            automaton = compile_grammar(config.constraint, self._tokenizer, eos_token_ids(self._tokenizer, eos))
            check_budget(automaton.min_tokens(), config.max_new_tokens)
        if sample:
            torch.manual_seed(config.seed)
        out: list[str] = [""] * len(prompts)
        for batch in _length_batches([len(p) for p in prompts], self.config.batch_size, **self._batching):
            ids, mask = self._pad_left([prompts[i] for i in batch])
            processors = LogitsProcessorList()
            if automaton is not None:  # the grammar first, then temperature and top-p over what it allows
                runs = [ConstrainedDecoding(automaton, config.max_new_tokens) for _ in batch]
                processors.append(GrammarLogitsProcessor(runs, ids.shape[1]))
                if sample:
                    processors.extend([TemperatureLogitsWarper(config.temperature), TopPLogitsWarper(config.top_p)])
            seqs = self.model.generate(
                input_ids=ids, attention_mask=mask, generation_config=gen, tokenizer=self._tokenizer,
                logits_processor=processors,
            )
            for row, i in enumerate(batch):
                text = self._tokenizer.decode(seqs[row, ids.shape[1] :], skip_special_tokens=True)
                out[i] = cut_at_stop(text, config.stop)
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name, **to_dict(self.config),
                "resolved_dtype": str(next(self.model.parameters()).dtype), "resolved_device": str(self.device)}

    def close(self) -> None:
        self._prefixes.clear()
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
