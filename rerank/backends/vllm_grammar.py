"""Constrained decoding inside a vLLM engine: a vLLM logits processor that enforces :mod:`rerank.backends.grammar`.

vLLM's own structured outputs (regex, JSON schema, EBNF) cannot say "each identifier exactly once" without listing
every permutation, so the vLLM backend registers this processor instead (engine option ``logits_processors``, only
when started with ``constrained_decoding: true``: a custom processor makes vLLM track generated ids every step). A
request opts in with ``SamplingParams(extra_args={EXTRA_KEY: {"grammar": Grammar.to_dict(), "eos": [ids]}})``; the
processor then runs the same :class:`~rerank.backends.grammar.TokenAutomaton` as the transformers backend, on the
engine's tokenizer, with the request's ``max_tokens`` as the budget. Requests without the key are left alone.
"""

from __future__ import annotations

from typing import Any

import torch

from rerank.backends.grammar import EXTRA_KEY, ConstrainedDecoding, Grammar, compile_grammar

try:
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor
except ImportError:  # without vLLM the module still imports (API docs); only a vLLM engine ever builds the class
    AdapterLogitsProcessor = object  # type: ignore[assignment,misc]

__all__ = ["GrammarLogitsProcessor"]


class GrammarLogitsProcessor(AdapterLogitsProcessor):
    """Per request: the logits of tokens its grammar does not allow next are set to -inf."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self._model_config = vllm_config.model_config
        self._tokenizer: Any = None

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        spec = (sampling_params.extra_args or {}).get(EXTRA_KEY)
        if spec is not None:
            Grammar.from_dict(spec["grammar"])

    def is_argmax_invariant(self) -> bool:
        return False

    def tokenizer(self) -> Any:
        """The engine's tokenizer as a Hugging Face tokenizer (loaded on the first constrained request)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            mc = self._model_config
            self._tokenizer = AutoTokenizer.from_pretrained(
                mc.tokenizer, revision=getattr(mc, "tokenizer_revision", None), trust_remote_code=mc.trust_remote_code
            )
        return self._tokenizer

    def new_req_logits_processor(self, params: Any) -> Any:
        spec = (params.extra_args or {}).get(EXTRA_KEY)
        if spec is None:
            return None
        automaton = compile_grammar(Grammar.from_dict(spec["grammar"]), self.tokenizer(), spec["eos"])
        run = ConstrainedDecoding(automaton, params.max_tokens)

        def constrain(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            run.sync([t for t in output_ids if t >= 0])
            allowed = run.allowed()
            if allowed is None:
                return logits
            keep = torch.as_tensor(allowed, device=logits.device)
            keep = keep[keep < logits.shape[-1]]
            out = torch.full_like(logits, float("-inf"))
            out[keep] = logits[keep]
            return out

        return constrain
