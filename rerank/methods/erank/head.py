"""ERank: pointwise 0-10 integer relevance read from the answer-token probabilities.

The prompt ends with the answer tag (``<answer>``) as assistant prefix, so the next tokens are the integer.
P(s) is the probability of the integer's whole token sequence *and* of the answer closing after it: in Qwen/SmolLM
tokenizers "10" is "1","0", so P(10) = P("1")·P("0"|"1") and P(1) = P("1")·P(end|"1") where end is the token that
opens the closing tag (or eos). This needs a second forward on prompt+"1" (batched), one backend call per prefix
depth. Score (``scoring``): ``paper`` = s·P(s) for the predicted integer s (ERank §3.2: the generated integer; here the
argmax, or the integer generated in reasoning mode), or ``expectation`` = Σ s·P(s).

Reasoning mode generates ``<think>…</think><answer>`` within ``max_reasoning_tokens``. The answer read is the last
``<answer>`` after the reasoning closes (``</think>``); an ``<answer>`` inside the reasoning (e.g. quoted from the
document) is never read. An output whose reasoning does not close, or that closes without an answer, is closed by
appending the missing tags (counted as repaired; so is an answer after an ``<answer>`` inside the reasoning); an answer
that is not an integer in 0-10 is a parse failure (counted) and falls back to the argmax integer. The scoring prompt
is the generation prompt's token ids, the generated text's (a special-token string in it, which the model spelled
out of plain tokens, defanged: a spelled ``<|im_end|>`` stays text) and the closing tags. With
``constrained: true`` (reasoning mode only: without reasoning nothing is generated, and the score is read from the
probabilities of exactly the integers 0-10) the generation is restricted to free reasoning without ``<answer>``, then
``</think><answer>``, an integer 0-10 and ``</answer>``, closed within ``max_reasoning_tokens``; it then always parses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from rerank.backends.base import GenerationConfig
from rerank.backends.grammar import Exact, FreeText, Grammar, OneOf
from rerank.config import changed_options
from rerank.errors import ConfigError
from rerank.heads.base import RerankerConfig
from rerank.heads.pointwise import PointwiseConfig, PointwiseLLMReranker, continuation_ids
from rerank.heads.text import neutralise_control
from rerank.types import Candidate, Query

__all__ = ["ERankConfig", "ERankReranker", "IntegerDistribution"]

SCORES = range(11)
_INT = re.compile(r"\s*(\d+)")


def _answer_integer(answer: str, close: str) -> int | None:
    """The integer the answer (the text after the answer tag) opens with, or None: it must be followed by whitespace,
    the closing tag ``close`` or the end of the text, so "7.5", "0.9" or "7/10" are not read as 7, 0 or 7."""
    match = _INT.match(answer)
    if match is None:
        return None
    rest = answer[match.end() :]
    if rest and not rest[0].isspace() and not (close and rest.startswith(close)):
        return None
    return int(match.group(1))


@dataclass
class ERankConfig(PointwiseConfig):
    """ERank options: ``scoring`` paper (s·P(s)) or expectation (Σ s·P(s)); optional reasoning within a token budget;
    ``constrained``: the reasoning generation writes only answers in the template's format (transformers, vllm or
    llamacpp)."""

    scoring: Literal["paper", "expectation"] = "paper"
    reasoning: bool = False
    max_reasoning_tokens: int = 256
    constrained: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_reasoning_tokens < 1:
            raise ValueError("max_reasoning_tokens must be >= 1")
        if changed_options(self, ("max_reasoning_tokens",)) and not self.reasoning:
            raise ConfigError(f"erank: max_reasoning_tokens={self.max_reasoning_tokens} applies to reasoning: true "
                              "(without reasoning nothing is generated): set reasoning: true, or drop it")
        if self.constrained and not self.reasoning:
            raise ConfigError("erank: constrained applies to reasoning: true (without reasoning nothing is generated: "
                              "the score is read from the probabilities of the integers 0-10, always valid)")


class IntegerDistribution:
    """Token sequences of the integers 0-10 after the answer tag, and the prefix contexts needed to score them."""

    def __init__(self, tokenizer: object, context: str, close: str) -> None:
        self.seqs = {s: tuple(continuation_ids(tokenizer, context, str(s))) for s in SCORES}
        if close:
            self.end = {s: continuation_ids(tokenizer, context + str(s), close)[0] for s in SCORES}
        else:
            eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
            self.end = {s: int(eos) for s in SCORES}
        prefixes = {seq[:k] for seq in self.seqs.values() for k in range(len(seq))}
        self.needed: dict[tuple[int, ...], list[int]] = {}
        for ctx in sorted(prefixes, key=len):
            ids = {seq[len(ctx)] for seq in self.seqs.values() if len(seq) > len(ctx) and seq[: len(ctx)] == ctx}
            ids |= {self.end[s] for s, seq in self.seqs.items() if seq == ctx}
            self.needed[ctx] = sorted(ids)
        self.depths = sorted({len(c) for c in self.needed})

    def probabilities(self, logprobs: dict[tuple[int, ...], dict[int, float]]) -> list[float]:
        """P(s) for s = 0..10 from log-probs read at each context (context -> token id -> log-prob)."""
        out = []
        for s in SCORES:
            seq = self.seqs[s]
            lp = sum(logprobs[seq[:k]][seq[k]] for k in range(len(seq)))
            if seq in self.needed:  # the integer's tokens are a prefix of another integer's: it must end here
                lp += logprobs[seq][self.end[s]]
            out.append(math.exp(lp))
        return out


class ERankReranker(PointwiseLLMReranker):
    """0-10 integer relevance from answer-token probabilities (multi-token integers handled exactly)."""

    method = "erank"
    config_class: ClassVar[type[RerankerConfig]] = ERankConfig
    shrink_options = ("max_reasoning_tokens",)

    def __init__(self, config: ERankConfig | None = None, **kwargs: object) -> None:
        super().__init__(config if config is not None else ERankConfig(), **kwargs)  # type: ignore[arg-type]
        self._dist: IntegerDistribution | None = None

    def lowered_options(self, reserve: int) -> tuple[str, ...]:
        """``max_reasoning_tokens`` in reasoning mode only (without reasoning nothing is generated)."""
        return self.shrink_options if self.config.reasoning else ()  # type: ignore[attr-defined]

    def default_template(self) -> str:
        """``erank``, or ``erank_reasoning`` in reasoning mode."""
        return "erank_reasoning" if self.config.reasoning else "erank"  # type: ignore[attr-defined]

    @property
    def distribution(self) -> IntegerDistribution:
        """Integer token sequences for this tokenizer and template (computed once)."""
        if self._dist is None:
            answer_open = str(self.template.extra.get("answer_open", "<answer>"))
            context = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
            ) + answer_open
            self._dist = IntegerDistribution(self.tokenizer, context, str(self.template.extra.get("answer_close", "")))
        return self._dist

    def integer_probabilities(self, prompts: list[list[int]]) -> list[list[float]]:
        """P(0..10) per prompt (each ending at the answer tag): one backend call per prefix depth."""
        dist = self.distribution
        read: list[dict[tuple[int, ...], dict[int, float]]] = [{} for _ in prompts]
        for depth in dist.depths:
            ctxs = [c for c in dist.needed if len(c) == depth]
            jobs = [(i, c) for i in range(len(prompts)) for c in ctxs]
            wanted = sorted({t for c in ctxs for t in dist.needed[c]})
            values = self.backend.next_token_logprobs([prompts[i] + list(c) for i, c in jobs], wanted)
            for (i, c), v in zip(jobs, values, strict=True):
                read[i][c] = dict(zip(wanted, v, strict=True))
        return [dist.probabilities(r) for r in read]

    def _tags(self) -> tuple[str, str, str]:
        extra = self.template.extra
        return (str(extra.get("think_close", "</think>")), str(extra.get("answer_open", "<answer>")),
                str(extra.get("answer_close", "</answer>")))

    def reserve_digits(self) -> int:
        """The most tokens an integer 0-10 takes after the answer tag (read after the scoring prompt)."""
        return max(len(seq) for seq in self.distribution.seqs.values())

    def reserve(self) -> int:
        """The integer's tokens read after the prompt; in reasoning mode also the reasoning budget, the closing tags
        and a margin for re-tokenising the generated text."""
        digits = self.reserve_digits()
        if not self.config.reasoning:  # type: ignore[attr-defined]
            return digits
        think_close, answer_open, _ = self._tags()
        tags = len(self.tokenizer.encode(think_close + answer_open, add_special_tokens=False))
        return self.config.max_reasoning_tokens + tags + digits + 16  # type: ignore[attr-defined]

    def grammar(self) -> Grammar:
        """The reasoning-mode answer: reasoning without an answer tag, the closing tag, ``<answer>``, an integer
        0-10, ``</answer>`` (after the template's assistant prefix)."""
        think_close, answer_open, answer_close = self._tags()
        return Grammar((FreeText(think_close, (answer_open,)), Exact(answer_open), OneOf(tuple(map(str, SCORES))),
                        Exact(answer_close)), self.template.assistant_prefix)

    def _reason(self, prompts: list[tuple[str, list[int]]]) -> tuple[list[list[int]], list[int | None]]:
        """Generate the reasoning, close it if needed, and return prompts ending at the answer tag + parsed integers.

        A scoring prompt is the generation prompt's token ids, then the generated text's, then the closing tags. The
        backends decode without special tokens, so a special-token string in the text was spelled out of plain
        tokens: it is defanged (:func:`~rerank.heads.text.neutralise_control`) and the text tokenised on its own, so
        a spelled ``<|im_end|>`` never becomes the control token, nor does the prompt's text merge with the
        reasoning; the model's other added tokens (``<answer>`` in its reasoning) stay its own."""
        think_close, answer_open, answer_close = self._tags()
        gen = GenerationConfig(max_new_tokens=self.config.max_reasoning_tokens,  # type: ignore[attr-defined]
                               stop=(answer_close,) if answer_close else (),
                               constraint=self.grammar() if self.constrained else None)
        texts = self.backend.generate([ids for _, ids in prompts], gen)
        out, parsed = [], []
        for (_, ids), text in zip(prompts, texts, strict=True):
            k = text.rfind(think_close)
            final = text[k + len(think_close) :] if k >= 0 else ""
            j = final.rfind(answer_open)
            value: int | None = None
            fixes: list[str] = []
            reasoning = text[:k] if k >= 0 else text  # the model's, before the tags the scoring prompt ends with
            between = ""  # the model's, from the closing tag to the answer tag read
            failed = False
            if j >= 0:
                between = final[:j]
                value = _answer_integer(final[j + len(answer_open) :], answer_close)
                failed = value is None or value not in SCORES
                if answer_open in text[:k]:
                    fixes.append(f"{answer_open} inside the reasoning ignored")
                if final.count(answer_open) > 1:
                    fixes.append(f"{final.count(answer_open)} {answer_open} after the reasoning, the last read")
                if failed:
                    fixes.append("the answer is not an integer in 0-10: the most probable integer scores")
                    value = None
            else:  # the reasoning never closed or no answer followed it: any <answer> so far is not the final one
                fixes.append(f"no {answer_open} after the reasoning: " +
                             (f"{answer_open} appended" if k >= 0 else f"{think_close}{answer_open} appended"))
            said = self.encode(neutralise_control(reasoning, self.tokenizer))
            tags = self.encode(think_close + neutralise_control(between, self.tokenizer) + answer_open)
            room = (self.backend.context_length or 0) - len(ids) - len(tags) - self.reserve_digits()
            if self.backend.context_length is not None and len(said) > room:  # defanged strings take more tokens
                said = said[: max(0, room)]
                fixes.append(f"the reasoning cut to {len(said)} tokens to fit the context")
            self.record_output(text, failed=failed, fixes=fixes)
            out.append(list(ids) + said + tags)
            parsed.append(value)
        return out, parsed

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """Both scorings lie in [0, 10] (s·P(s), or the expected integer): divided by 10."""
        return [min(max(float(s) / 10.0, 0.0), 1.0) for s in scores]

    def score_passages(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        cfg: ERankConfig = self.config  # type: ignore[assignment]
        inputs = self.flat_inputs(queries, candidate_lists)
        flat: list[float] = []
        for idx in self.chunks(len(inputs)):
            chunk = [inputs[i] for i in idx]
            if cfg.reasoning:
                prompts, generated = self._reason(chunk)
            else:
                prompts = [ids for _, ids in chunk]
                generated = [None] * len(chunk)
            for probs, gen_s in zip(self.integer_probabilities(prompts), generated, strict=True):
                if cfg.scoring == "expectation":
                    flat.append(sum(s * p for s, p in zip(SCORES, probs)))
                else:
                    s = gen_s if gen_s is not None else max(SCORES, key=lambda k: probs[k])
                    flat.append(s * probs[s])
        return self.split(flat, candidate_lists)
