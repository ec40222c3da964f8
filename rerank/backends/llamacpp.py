"""llama.cpp backend (extra ``llamacpp``): a quantised ``.gguf`` model run natively by ``llama-cpp-python``.

The GGUF file's own weights are used as they are (Q4_1, Q8_0, ...): nothing is de-quantised, unlike
``--backend transformers``, which converts a GGUF to float32 once. Heads still build prompts with a Hugging Face
tokenizer, read from the same GGUF file (:func:`rerank.backends.gguf.gguf_tokenizer`, cached), and pass token ids:
llama.cpp never tokenises text here, so a special-token string in a document stays the text the heads neutralised
it to. On load, llama.cpp's own tokenisation of a probe is compared with that tokenizer's; a mismatch is an error,
since ids meaning other tokens would rank silently wrong.

Every prompt is evaluated from an empty KV cache, one at a time (same prompt, same numbers, whatever ran before).
Log-probabilities are the log-softmax (float64) of the last position's logits. Generation decodes token by token
from those logits: greedy at temperature 0, else temperature and top-p sampling from ``GenerationConfig.seed`` (per
prompt, as vLLM's per-request seed); a constraint (constrained decoding) masks each step's logits to what its grammar
allows first. It stops at the model's end-of-generation tokens, at ``max_new_tokens``, or once the decoded text holds
a stop string; the text is decoded as the transformers backend decodes it.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rerank.backends.base import GenerationConfig, LogitsBackend
from rerank.backends.grammar import ConstrainedDecoding, check_budget, compile_grammar, eos_token_ids
from rerank.backends.util import check_prompts, cut_at_stop, unique_ids
from rerank.config import from_dict, to_dict
from rerank.errors import ConfigError

__all__ = ["DEFAULT_MAX_CTX", "LlamaCppBackend", "LlamaCppBackendConfig"]

log = logging.getLogger(__name__)

DEFAULT_MAX_CTX = 8192
"""Context allocated when ``n_ctx`` is unset: the model's training context, at most this (the KV cache of a 128k
context would take gigabytes; FIRST's windows of 20 passages take about 2,300 tokens)."""

_PROBE = "<|im_start|>user\nWhat is 12+7? Café, naïve — “quotes” 😀<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class LlamaCppBackendConfig:
    """Options of the llama.cpp backend.

    ``n_ctx``: tokens of context (prompt plus generated); unset = the model's training context, at most
    :data:`DEFAULT_MAX_CTX`; one above the training context is used with a warning naming both. ``n_threads``: CPU
    threads; unset = torch's intra-op thread count (``OMP_NUM_THREADS``), so one variable sizes both backends.
    ``kv_cache_type``: llama.cpp's default ``f16`` halves the KV cache and moves log-probs slightly; ``f32`` computes
    as the transformers backend does (to ~1e-4 on F32 weights).
    ``repack``: whether llama.cpp may move quantised weights into its CPU-specific layouts (its "extra buffer types":
    AVX2/AVX-512 repacking, Intel AMX tiles), as its ``--no-repack`` flag turns off; unset = on, except on a CPU
    with AMX, where llama.cpp's AMX matrix product crashes the process (ggml-org/llama.cpp#20824: a segmentation
    fault on the first multi-token batch of a Q4_1 model) and the plain AVX-512 kernels are used instead.
    ``dtype`` and ``device`` exist because every LLM head passes them: the GGUF file's quantisation is the weights'
    type and this backend runs on the CPU.
    """

    n_ctx: int | None = None
    n_threads: int | None = None
    kv_cache_type: Literal["f16", "f32"] = "f16"
    repack: bool | None = None
    dtype: str = "auto"
    device: str | None = None

    def __post_init__(self) -> None:
        for key in ("n_ctx", "n_threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if self.dtype != "auto":
            raise ConfigError(f"dtype {self.dtype!r}: the GGUF file's quantisation is the weights' "
                              "type; drop dtype (auto)")
        if self.device not in (None, "cpu"):
            raise ConfigError(f"device {self.device!r}: this backend runs on the CPU")


def _trained_context(llama_cpp: Any, gguf: Path) -> int | None:
    """The context length the GGUF file records (``<architecture>.context_length``), read by llama.cpp from the
    file's metadata without loading the weights."""
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # as Llama(verbose=False) does: no load log
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    if not model:
        raise ConfigError(f"llama.cpp cannot read {gguf} (not a GGUF model it supports)")
    try:
        buf = ctypes.create_string_buffer(64)

        def meta(key: str) -> str | None:
            found = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf)) >= 0
            return buf.value.decode() if found else None

        arch = meta("general.architecture")
        value = meta(f"{arch}.context_length") if arch else None
        return int(value) if value and value.isdigit() else None
    finally:
        llama_cpp.llama_model_free(model)


def _cpu_has_amx(llama_cpp: Any) -> bool:
    """Whether the llama.cpp build runs Intel AMX kernels on this CPU (its system info reports ``AMX_INT8 = 1``)."""
    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace")


_LOAD_LOCK = threading.Lock()


def _load(llama_cpp: Any, repack: bool, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(**kwargs)`` with llama.cpp's ``use_extra_bufts`` model parameter set to ``repack``.

    ``Llama`` takes no argument for it and loads the weights in its constructor, so the defaults it starts from are
    swapped for the call (under a lock: one load at a time swaps them)."""
    import llama_cpp.llama as llama_module

    lib = llama_module.llama_cpp
    if "use_extra_bufts" not in dict(lib.llama_model_params._fields_):
        if not repack:
            raise ConfigError("repack off (set, or the default on a CPU with AMX, whose llama.cpp kernels crash) "
                              "needs llama-cpp-python whose llama.cpp has the use_extra_bufts model parameter; "
                              f"installed: {llama_cpp.__version__}")
        return llama_cpp.Llama(**kwargs)
    defaults = lib.llama_model_default_params

    def with_repack() -> Any:
        params = defaults()
        params.use_extra_bufts = repack
        return params

    with _LOAD_LOCK:
        lib.llama_model_default_params = with_repack
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            lib.llama_model_default_params = defaults


def _gguf_file(model: str) -> Path:
    """The ``.gguf`` file ``model`` names (a file, a folder holding one, or a packaged GGUF model)."""
    from rerank.backends.gguf import find_gguf_file
    from rerank.models import local_model_path

    path = local_model_path(model)
    gguf = find_gguf_file(path) if path is not None else None
    if gguf is None:
        raise ConfigError(f"the llamacpp backend runs a .gguf file; {model} is not one (give a .gguf file, a folder "
                          "holding one, or convert the model with llama.cpp's convert_hf_to_gguf.py)")
    return gguf


class LlamaCppBackend(LogitsBackend):
    """A ``llama_cpp.Llama`` on a GGUF file, driven with token ids; one prompt at a time from an empty KV cache."""

    name = "llamacpp"
    config_class = LlamaCppBackendConfig

    def __init__(self, llm: Any, tokenizer: Any, config: LlamaCppBackendConfig, model_name: str | None = None,
                 threads: int = 1) -> None:
        super().__init__()
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llm
        self._tokenizer = tokenizer
        self.config = config
        self.model_name = model_name
        self.threads = threads
        self._lock = threading.Lock()  # one llama.cpp context: one prompt at a time, whichever thread asks
        # freed before the interpreter tears modules down (llama-cpp-python's own __del__ fails that late)
        self._free = weakref.finalize(self, llm.close)
        self.n_vocab = int(llm.n_vocab())
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        # the ids that end a generation: llama.cpp's end-of-generation tokens (end of sequence, end of turn, ...)
        # and the tokenizer's end of sequence
        eog = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        self._eos = eos_token_ids(tokenizer, eog)
        self._eog = frozenset(self._eos)
        if len(tokenizer) > self.n_vocab:
            raise ConfigError(f"{model_name}: the tokenizer has {len(tokenizer)} tokens, the model {self.n_vocab}")
        ours = tokenizer.encode(_PROBE, add_special_tokens=False)
        theirs = llm.tokenize(_PROBE.encode("utf-8"), add_bos=False, special=True)
        if list(ours) != list(theirs):
            raise ConfigError(f"{model_name}: the tokenizer transformers reads from the GGUF file tokenises "
                              f"differently from llama.cpp ({ours[:12]}... vs {theirs[:12]}...); its token ids "
                              "would mean other tokens to the model")

    @classmethod
    def from_options(cls, model: str | None, **options: Any) -> LlamaCppBackend:
        """Load ``model`` (a ``.gguf`` file, a folder with one, or a packaged GGUF model) with typed options; raises
        a one-line :class:`ConfigError` when ``llama-cpp-python`` is not installed."""
        cfg = from_dict(LlamaCppBackendConfig, options, where="llamacpp backend options")
        if not model:
            raise ConfigError("the llamacpp backend needs --model (a .gguf file)")
        gguf = _gguf_file(model)
        try:
            import llama_cpp
        except ImportError as e:
            raise ConfigError(f"the llamacpp backend needs the `llama-cpp-python` package (pip install "
                              f"'rerank[llamacpp]'; it builds llama.cpp from source): {e}") from None
        if not hasattr(llama_cpp, "llama_vocab_is_eog"):
            raise ConfigError(f"the llamacpp backend needs llama-cpp-python with llama.cpp's vocab API (0.3.7 or "
                              f"newer); installed: {llama_cpp.__version__}")
        import torch

        from rerank.backends.gguf import gguf_tokenizer

        threads = cfg.n_threads or torch.get_num_threads()
        kv = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[cfg.kv_cache_type]
        trained = _trained_context(llama_cpp, gguf)  # also: a file llama.cpp cannot read is refused here
        if cfg.n_ctx is not None and trained is not None and cfg.n_ctx > trained:
            log.warning("backend_options.n_ctx %d is above the %d tokens of context %s was trained on: positions "
                        "past %d are outside its training and may rank worse", cfg.n_ctx, trained, gguf.name, trained)
        n_ctx = cfg.n_ctx or min(trained or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX)
        repack = cfg.repack if cfg.repack is not None else not _cpu_has_amx(llama_cpp)
        tokenizer = gguf_tokenizer(gguf)  # before the weights: no `gguf` package or an unreadable file fails fast
        llm = _load(llama_cpp, repack, model_path=str(gguf), n_ctx=n_ctx, n_threads=threads,
                    n_threads_batch=threads, type_k=kv, type_v=kv, logits_all=False, verbose=False)
        return cls(llm, tokenizer, cfg, model_name=model, threads=threads)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def context_length(self) -> int | None:
        """The ``n_ctx`` asked for: llama.cpp rounds its own context up (to a multiple of 256), but llama-cpp-python
        sizes its token buffer by the requested value, so a longer prompt would overflow that buffer."""
        requested = int(self.llm.context_params.n_ctx)
        return min(requested, int(self.llm.n_ctx())) if requested > 0 else int(self.llm.n_ctx())

    def _check_length(self, prompt: Sequence[int], extra: int) -> None:
        limit = self.context_length
        if limit is not None and len(prompt) + extra > limit:
            raise ValueError(f"prompt of {len(prompt)} tokens (+{extra} to generate) exceeds n_ctx {limit}; "
                             "lower the head's max_doc_tokens or raise backend_options.n_ctx")

    def _ids(self, prompt: Sequence[int]) -> list[int]:
        ids = [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary (size {self.n_vocab})")
        return ids

    def _last_logits(self) -> np.ndarray:
        """The last evaluated position's logits over the vocabulary (float64 copy)."""
        pointer = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)

    def _last_position(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int],
                       normalise: bool) -> list[list[float]]:
        """The logits (``normalise``: log-softmax) of ``token_ids`` after each prompt, each from an empty cache."""
        check_prompts(prompts)
        unique_ids(token_ids, self.n_vocab)
        wanted = [int(t) for t in token_ids]
        out = []
        for p in prompts:
            self._check_length(p, 0)
            with self._lock:
                self.llm.reset()
                self.llm.eval(self._ids(p))
                values = self._last_logits()
            if normalise:
                top = float(values.max())
                values = values - (top + math.log(float(np.exp(values - top).sum())))
            out.append([float(values[t]) for t in wanted])
        return out

    def constraint_error(self) -> str | None:
        """None: a grammar masks the logits of every decoding step."""
        return None

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        self.check_constraint(config)
        self.calls["generate"] += 1
        check_prompts(prompts)
        automaton = None
        if config.constraint is not None:
            automaton = compile_grammar(config.constraint, self._tokenizer, self._eos)
            check_budget(automaton.min_tokens(), config.max_new_tokens)
        texts = []
        for p in prompts:
            self._check_length(p, config.max_new_tokens)
            run = ConstrainedDecoding(automaton, config.max_new_tokens) if automaton is not None else None
            with self._lock:
                new = self._decode_tokens(self._ids(p), config, run)
            texts.append(cut_at_stop(self._decode(new), config.stop))
        return texts

    def _decode_tokens(self, ids: list[int], config: GenerationConfig, run: ConstrainedDecoding | None) -> list[int]:
        """The token ids generated after the prompt ``ids`` (end-of-generation token excluded)."""
        rng = np.random.default_rng(config.seed)
        self.llm.reset()
        self.llm.eval(ids)
        new: list[int] = []
        while len(new) < config.max_new_tokens:
            token = self._next_token(run, config, rng)
            if token in self._eog:
                break
            new.append(token)
            if run is not None:
                run.advance(token)
            if config.stop and any(s in self._decode(new) for s in config.stop):
                break
            self.llm.eval([token])
        return new

    def _next_token(self, run: ConstrainedDecoding | None, config: GenerationConfig, rng: np.random.Generator) -> int:
        """The token after the last evaluated position: the grammar's mask first, then greedy, or temperature and
        top-p sampling (the smallest set of likeliest tokens whose probability reaches ``top_p``)."""
        logits = self._last_logits()
        allowed = run.allowed() if run is not None else None
        if allowed is not None:
            masked = np.full_like(logits, -np.inf)
            masked[allowed] = logits[allowed]
            logits = masked
        if config.temperature <= 0:
            return int(np.argmax(logits))
        scaled = logits / config.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), config.top_p)) + 1]
        return int(rng.choice(keep, p=probs[keep] / probs[keep].sum()))

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def describe(self) -> dict[str, Any]:
        import llama_cpp

        return {"backend": self.name, "model": self.model_name, **to_dict(self.config),
                "llama_cpp_version": llama_cpp.__version__, "resolved_n_ctx": self.context_length,
                "resolved_threads": self.threads, "resolved_repack": bool(getattr(self.llm.model_params, "use_extra_bufts", True))}

    def close(self) -> None:
        self._free()
        self.llm = None
