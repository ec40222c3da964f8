"""What the seq2seq heads (monoT5, duoT5) need from a model: log-probabilities of given tokens at the first decoder
step for encoder inputs given as token ids, batched. :class:`TransformersSeq2Seq` runs ``AutoModelForSeq2SeqLM``;
:class:`ScriptedSeq2Seq` is the test double (answers by a function of the input text, records every input)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from rerank.errors import ConfigError

__all__ = ["PromptOnlySeq2Seq", "Seq2SeqModel", "ScriptedSeq2Seq", "TransformersSeq2Seq"]


class Seq2SeqModel(ABC):
    """An encoder-decoder behind one call; ``calls`` counts forward batches."""

    name: str = ""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.calls = 0

    @abstractmethod
    def first_step_logprobs(self, inputs: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        """For each encoder input, log P(first decoder token = t) for each ``t`` in ``token_ids`` (log-softmax over
        the vocabulary); one forward pass over the batch."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    def close(self) -> None:
        """Free the model."""


class TransformersSeq2Seq(Seq2SeqModel):
    """``AutoModelForSeq2SeqLM`` (safetensors only, no remote code unless asked); inputs padded on the right, the
    decoder given its start token only."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.start_id = int(model.config.decoder_start_token_id if model.config.decoder_start_token_id is not None
                            else model.config.pad_token_id)

    @classmethod
    def load(cls, model: str, dtype: str = "auto", device: str | None = None,
             trust_remote_code: bool = False) -> TransformersSeq2Seq:
        """Load a seq2seq checkpoint; a decoder-only or encoder-only model is a clear error, not a new random head."""
        from transformers import AutoConfig, AutoModelForSeq2SeqLM

        from rerank.backends.transformers import resolve_device, resolve_dtype
        from rerank.backends.util import check_no_new_weights, load_tokenizer, weights_errors
        from rerank.models import resolve_model_path
        from rerank.trainers.common import check_safetensors

        path = resolve_model_path(model)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if not getattr(config, "is_encoder_decoder", False):
            raise ConfigError(f"{model} is not an encoder-decoder (seq2seq) model ({config.model_type}); monot5 and "
                              f"duot5 need a T5-style checkpoint")
        check_safetensors(path, "model")
        dev = resolve_device(device)
        tok = load_tokenizer(path, "model", trust_remote_code=trust_remote_code)
        with weights_errors(path, "model"):
            net, info = AutoModelForSeq2SeqLM.from_pretrained(
                path, dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code, use_safetensors=True,
                output_loading_info=True,
            )
        check_no_new_weights(str(model), info, "load a trained seq2seq checkpoint")
        return cls(net.to(dev), tok)

    def first_step_logprobs(self, inputs: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        import torch

        if not inputs:
            return []
        self.calls += 1
        width = max(len(x) for x in inputs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(inputs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for i, x in enumerate(inputs):
            ids[i, : len(x)] = torch.tensor(list(x), dtype=torch.long)
            mask[i, : len(x)] = 1
        start = torch.full((len(inputs), 1), self.start_id, dtype=torch.long)
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                decoder_input_ids=start.to(self.device)).logits[:, 0]
            lp = torch.log_softmax(logits.float(), dim=-1)[:, list(token_ids)]
        return lp.cpu().tolist()

    def close(self) -> None:
        self.model = None


class ScriptedSeq2Seq(Seq2SeqModel):
    """Returns ``fn(input_text, token_ids)`` per input; ``log`` holds every decoded input (the tests' double)."""

    name = "scripted"

    def __init__(self, tokenizer: Any, fn: Callable[[str, Sequence[int]], Sequence[float]]) -> None:
        super().__init__(tokenizer)
        self.fn = fn
        self.log: list[str] = []

    def first_step_logprobs(self, inputs: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        self.calls += 1
        out = []
        for x in inputs:
            text = self.tokenizer.decode(list(x), skip_special_tokens=True)
            self.log.append(text)
            out.append([float(v) for v in self.fn(text, token_ids)])
        return out


class PromptOnlySeq2Seq(Seq2SeqModel):
    """A tokenizer and no model: a head on it builds encoder inputs (training renders its rows with the head)."""

    name = "prompt-only"

    def first_step_logprobs(self, inputs: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        raise RuntimeError("a prompt-only seq2seq model builds inputs; it has no model to score them")
