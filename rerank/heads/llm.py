"""Shared plumbing of the LLM heads: typed options, backend construction, prompt building, fitting to the context.

Prompts are rendered from template files (each method's own, ``rerank/methods/<name>/*.yaml``) into chat messages,
passed through the model's chat template with the generation prompt plus the template's assistant prefix, and
tokenised once. User text (query, documents) first has its special-token strings neutralised
(:func:`rerank.heads.text.neutralise`) and is cut to ``max_query_tokens`` / ``max_doc_tokens`` tokens, so the
instruction and the chat template's tail are never cut. A prompt that still exceeds the backend's context (less the
tokens to generate) is fitted (:meth:`LLMReranker.fit`): the query to at most half the room left for text, then one
per-passage token cap for that prompt, the largest that fits; a call that fitted prompts logs one warning saying how
many, and how many passage and query cuts that took, one per passage or query per prompt it is cut in (the running
counts: ``stats``). A reranker's :attr:`~rerank.heads.base.Reranker.call_warnings` holds such per-call warnings back
for a caller that reports the totals itself or that would log them on every request. The training tasks render their
prompts with these same methods (a head on a :class:`PromptOnlyBackend`), so a trained model sees at inference exactly
the prompts it was trained on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rerank.backends.base import Backend, GenerationConfig
from rerank.backends.cache import maybe_cached
from rerank.backends.registry import available_backends, backend_accepts, backend_class, build_backend
from rerank.config import from_dict, to_dict
from rerank.errors import ConfigError
from rerank.heads.base import DocInput, Reranker, RerankerConfig
from rerank.heads.permutation import reasoning_left_open
from rerank.heads.text import neutralise
from rerank.prompts import PromptTemplate, head_template
from rerank.utils.text import cut_to_tokens
from rerank.types import Candidate, Query, RankedResult

__all__ = ["LLMHeadConfig", "LLMReranker", "PromptOnlyBackend", "Render", "check_backend_keys", "passage_texts",
           "token_cap"]

#: Renders a prompt's text from the (prepared) query and passage texts.
Render = Callable[[str, list[str]], str]
#: backend options that set the context
_CONTEXT_OPTIONS = ("max_length", "max_model_len", "n_ctx")

log = logging.getLogger(__name__)


def token_cap(lengths: Sequence[int], room: int) -> int:
    """The largest per-passage cap ``b`` with ``sum(min(l, b)) <= room``: passages shorter than their share keep all of
    it and leave the rest to the longer ones."""
    left, remaining = room, len(lengths)
    for n in sorted(lengths):
        if n * remaining <= left:
            left -= n
            remaining -= 1
        else:
            return left // remaining
    return max(lengths, default=0)


@dataclass
class LLMHeadConfig(RerankerConfig):
    """Options every LLM head has. ``template``: a shipped template name, a path, or the template itself as a mapping
    (as a trained model's ``rerank.json`` records it); '' = the method's default.

    ``batch_size`` is the number of prompts per backend call and, for backends that batch themselves (transformers,
    openai), their batch size too; ``backend_options`` go to the backend's own typed config.
    """

    template: str | dict[str, Any] = ""
    max_doc_tokens: int = 300
    max_query_tokens: int = 128
    batch_size: int = 8
    dtype: str = "auto"
    device: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_doc_tokens", "max_query_tokens", "batch_size"):  # a cut to <= 0 tokens drops the text
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")


def check_backend_keys(method: str, config_class: type, backend: str, options: Mapping[str, Any]) -> None:
    """A head option that is not the head's but the backend's (``trust_remote_code``, ``max_length``, ...) is a
    one-line :class:`ConfigError` naming its one route, ``backend_options`` (the generic unknown-key error did not)."""
    known = {f.name for f in dataclasses.fields(config_class)}
    stray = [k for k in options if k not in known]
    if not stray or backend not in available_backends():
        return
    backend_cfg = backend_class(backend).config_class
    backend_keys = {f.name for f in dataclasses.fields(backend_cfg)} if backend_cfg is not None else set()
    for key in stray:
        if key in backend_keys:
            raise ConfigError(f"{key} is an option of the {backend} backend, not of the {method} head: give it in "
                              f"backend_options (backend_options={{'{key}': ...}})")


class PromptOnlyBackend(Backend):
    """A tokenizer and no model: a head on it renders prompts and runs nothing (the training tasks use it)."""

    name = "prompt-only"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__()
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        raise RuntimeError("a prompt-only backend renders prompts; it has no model to score them")

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        raise RuntimeError("a prompt-only backend renders prompts; it has no model to generate with")


class LLMReranker(Reranker):
    """Base for heads that drive a :class:`~rerank.backends.base.Backend`."""

    config_class: ClassVar[type[RerankerConfig]] = LLMHeadConfig
    #: the head's options whose text the template holds (a long one fills the context, e.g. qwen3-reranker's
    #: instruction), which the "cannot hold this prompt" advice names beside the template (:meth:`room_options`)
    template_texts: ClassVar[tuple[str, ...]] = ()
    #: the head's options that, lowered, leave its prompt more room: passages per prompt (e.g. window) and tokens
    #: generated after it (e.g. max_new_tokens), which that advice names
    shrink_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        config: LLMHeadConfig | None = None,
        backend: Backend | None = None,
        model: str | None = None,
        backend_name: str = "transformers",
    ) -> None:
        super().__init__(config)
        cfg: LLMHeadConfig = self.config  # type: ignore[assignment]
        # checked before the model loads: a template of another method or with variables the head lacks is refused
        self.template: PromptTemplate = head_template(cfg.template or self.default_template(), self.prompt_method(),
                                                      type(self))
        built = backend is None
        if backend is None:
            if model is None:
                raise ValueError(f"{self.method}: give a model (name or path) or a backend instance")
            opts = dict(cfg.backend_options)
            opts.setdefault("dtype", cfg.dtype)
            if cfg.device is not None:
                opts.setdefault("device", cfg.device)
            if backend_accepts(backend_name, "batch_size"):
                opts.setdefault("batch_size", cfg.batch_size)  # one batch size: the head's is the model's
            if self.constrained and backend_accepts(backend_name, "constrained_decoding"):
                opts.setdefault("constrained_decoding", True)  # vLLM loads its grammar processor only when asked
            backend = maybe_cached(build_backend(backend_name, model, **opts), model)
        if self.constrained and (error := backend.constraint_error()) is not None:
            if built:
                backend.close()
            raise ConfigError(f"{self.method}: constrained: true, but {error}")
        self.backend = backend
        self.model_name = model
        self._fits = [0, 0]  # prompts fit() was given, passages it cut (the per-call warning's counts)
        self._prompt_reasoning: dict[str, str] = {}  # assistant prefix -> the reasoning tag prompts end inside

    @classmethod
    def from_options(cls, model: str | None = None, backend: str = "transformers", **options: Any) -> Reranker:
        check_backend_keys(cls.method, cls.config_class, backend, options)
        cfg = from_dict(cls.config_class, options, where=f"{cls.method} options")
        return cls(cfg, model=model, backend_name=backend)  # type: ignore[arg-type]

    def nan_hint(self) -> str:
        """The NaN-score advice for this head's backend: ``dtype=float32`` only where the backend takes it."""
        name = self.backend.name
        if name == "openai":
            return ("the server returned NaN log-probabilities; check the served model (e.g. vLLM --dtype float32), "
                    "the openai backend cannot change its dtype")
        if name == "llamacpp":
            return ("llama.cpp computed NaN; try the f32 KV cache (--reranker-set backend_options.kv_cache_type=f32) "
                    "or a less quantised GGUF file (its dtype is the file's)")
        if name in ("transformers", "vllm"):
            return super().nan_hint()
        return f"the {name} backend returned NaN; check its model"

    def override_template_field(self, name: str, value: str) -> None:
        """Replace the template's extra field ``name`` (a variable its texts use) by ``value`` unless it is empty:
        an option such as an instruction or a question that stands in for the template's default."""
        if value:
            self.template = dataclasses.replace(self.template, extra={**self.template.extra, name: value})

    @property
    def constrained(self) -> bool:
        """Whether generation is restricted to the answer format (the ``constrained`` option of the generating
        heads; see :mod:`rerank.backends.grammar`)."""
        return bool(getattr(self.config, "constrained", False))

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    def record_output(self, response: str, *, failed: bool, fixes: Sequence[str] = (),
                      example: str | None = None) -> None:
        """Count one generated output in :attr:`stats` (failed, repaired when ``fixes`` were needed, else clean)
        and hand the outcome to the backend, whose LLM-call log records it on the response's line."""
        repaired = not failed and bool(fixes)
        self.stats.record(failed=failed, repaired=repaired, example=response if example is None else example)
        outcome = "failed" if failed else "repaired" if repaired else "clean"
        self.backend.log_parse(response, {"outcome": outcome, "fixes": list(fixes)})

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut ``text`` to at most ``max_tokens`` tokens of the model's tokenizer (whole tokens, decoded back). A cut
        through a character a byte-level tokenizer spreads over several tokens would decode to U+FFFD, which the model
        would read: the cut moves back to the last whole character. Only the part of a very long text that
        ``max_tokens`` reaches is tokenised (:func:`~rerank.utils.text.cut_to_tokens`)."""
        ids = self.encode(cut_to_tokens(text, self.tokenizer, max_tokens))
        if len(ids) <= max_tokens:
            return text
        return self.decode_prefix(ids, max_tokens, text)

    def decode_prefix(self, ids: Sequence[int], end: int, text: str) -> str:
        """The first ``end`` of ``text``'s token ids ``ids`` decoded, less a trailing character they hold only part of
        (U+FFFD where ``text`` has none)."""
        cut = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        while end > 0 and cut.endswith("\ufffd") and cut.count("\ufffd") > text.count("\ufffd"):
            end -= 1
            cut = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        return cut

    def prepare(self, text: str, max_tokens: int) -> str:
        """User text as a prompt holds it: special-token strings neutralised, then cut to ``max_tokens`` tokens."""
        return self.truncate(neutralise(text, self.tokenizer), max_tokens)

    def fit(self, query: str, passages: list[str], render: Render, reserve: int = 0,
            tokenize: Callable[[str, list[str]], list[int]] | None = None) -> tuple[str, list[int]]:
        """The prompt ``render(query, passages)`` (text and token ids) fitted to the backend's context less
        ``reserve`` tokens (what will be generated or appended after it).

        ``query`` and ``passages`` come from :meth:`prepare`. When the prompt is too long, the query is cut until all
        its copies take at most half the room the template leaves, then every passage is cut to one token cap, the
        largest with which the prompt fits (shorter passages keep all their tokens). A template that leaves no room
        for one token a passage is a :class:`ConfigError` (a setting, never a document, is at fault). ``tokenize``
        gives a prompt's token ids from its query and passages when they are not the rendered text's (a head that
        tokenises the pieces of its prompt apart); by default ``encode(render(...))``.
        """

        def ids_of(q: str, ps: list[str]) -> list[int]:
            return tokenize(q, ps) if tokenize is not None else self.encode(render(q, ps))

        text = render(query, passages)
        ids = ids_of(query, passages)
        self._fits[0] += 1
        limit = self.backend.context_length
        if limit is None or len(ids) + reserve <= limit:
            return text, ids
        empty = [""] * len(passages)
        base = len(ids_of("", empty))
        free = limit - reserve - base
        if free < 2 * max(1, len(passages)):
            raise ConfigError(
                f"{self.method}: the model's context of {limit} tokens cannot hold this prompt: its template takes "
                f"{base} tokens with {len(passages)} passage(s) and {reserve} more are generated; "
                f"{self.room_options(reserve)}"
            )
        self.stats.fitted_prompts += 1
        if len(ids_of(query, empty)) - base > free // 2:
            q_ids = self.encode(query)

            def head(k: int) -> str:
                return self.decode_prefix(q_ids, k, query)

            lo, hi = 0, len(q_ids) - 1  # the longest query prefix whose copies take at most half the room
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if len(ids_of(head(mid), empty)) - base <= free // 2:
                    lo = mid
                else:
                    hi = mid - 1
            query = head(lo)
            self.stats.shortened_queries += 1
        room = limit - reserve - len(ids_of(query, empty))
        p_ids = [self.encode(p) for p in passages]
        cap = max(1, token_cap([len(p) for p in p_ids], room))
        while True:
            cut = [self.decode_prefix(p, cap, t) if len(p) > cap else t for p, t in zip(p_ids, passages, strict=True)]
            text = render(query, cut)
            ids = ids_of(query, cut)
            over = len(ids) + reserve - limit
            if over <= 0:
                break
            if cap == 1:
                raise ConfigError(f"{self.method}: the prompt does not fit the model's context of {limit} tokens even "
                                  f"with one token a passage; {self.room_options(reserve)}")
            capped = sum(len(p) > cap for p in p_ids) or 1
            cap = max(1, cap - max(1, math.ceil(over / capped)))
        cut_passages = sum(len(p) > cap for p in p_ids)
        self.stats.shortened_passages += cut_passages
        self._fits[1] += cut_passages
        return text, ids

    def _rerank_batch(self, queries: Sequence[str | Query], docs_lists: Sequence[Sequence[DocInput]],
                      top_k: int | None) -> list[RankedResult]:
        st = self.stats
        before = (*self._fits, st.fitted_prompts, st.shortened_queries)
        results = super()._rerank_batch(queries, docs_lists, top_k)
        self._warn_fitted(*before)
        return results

    def _warn_fitted(self, prompts: int, passages: int, fitted: int, queries: int) -> None:
        """Log the prompts of one call that were fitted to the context (:meth:`fit`), worded as the parse-failure
        warning and held back with it (:attr:`~rerank.heads.base.Reranker.call_warnings`); the passages ``long_docs``
        cuts have their own."""
        st = self.stats
        if st.fitted_prompts <= fitted:
            return
        held = self.call_warnings.admit("fitted")
        if held is not None:
            log.warning("%s: %d of %d prompts were fitted to the model's context of %s tokens in this call, with %d "
                        "passage cut(s) below max_doc_tokens and %d query cut(s) below max_query_tokens, one per "
                        "passage or query per prompt it is cut in (how prompts are fitted: docs/backends.md)%s",
                        self.method or type(self).__name__, st.fitted_prompts - fitted, self._fits[0] - prompts,
                        self.backend.context_length, self._fits[1] - passages, st.shortened_queries - queries, held)

    def room_options(self, reserve: int) -> str:
        """What the "cannot hold this prompt" error advises: only this head's options that make its template
        (:attr:`template_texts`), its passages per prompt or what it generates after the prompt (``reserve`` tokens;
        :meth:`lowered_options`) smaller, and a longer context (e.g. qwen3-reranker: "use a shorter instruction or
        template, or use a model with a longer context")."""
        cfg = self.config
        advice = [f"use a shorter {' or '.join([*self.template_texts, 'template'])}"]
        lower = self.lowered_options(reserve)
        if lower:
            advice.append(f"lower {' / '.join(lower)}")
        options = cfg.backend_options  # type: ignore[attr-defined]
        context = [f"backend_options.{n}" for n in _CONTEXT_OPTIONS if n in options]
        if context:
            advice.append(f"raise {' / '.join(context)}")
        return ", ".join(advice) + ", or use a model with a longer context"

    def lowered_options(self, reserve: int) -> tuple[str, ...]:
        """The options :meth:`room_options` says to lower for a prompt followed by ``reserve`` tokens:
        :attr:`shrink_options`; a head with an option read only in one mode overrides this to leave it out."""
        return self.shrink_options

    def document_token_limit(self, query: str) -> int | None:
        """``max_doc_tokens``: each document is cut to it before the prompt is rendered."""
        return self.config.max_doc_tokens  # type: ignore[attr-defined]

    def render(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        """The chat-templated prompt text with the generation prompt, plus an assistant prefix."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + assistant_prefix

    def prompt_reasoning(self, assistant_prefix: str = "") -> str:
        """The reasoning tag (``think``, ...) that rendered prompts end inside, so the output starts inside it ('' if
        none): read from what follows the last message of a probe conversation rendered with the generation prompt
        (QwQ's and DeepSeek-R1's end in ``<think>\n``) and ``assistant_prefix``
        (:func:`~rerank.heads.permutation.reasoning_left_open`). The probe has the head's own shape (a system message
        when the template has one) and falls back to the other; a chat template that renders neither opens none."""
        if assistant_prefix not in self._prompt_reasoning:
            shapes = [("system", "user"), ("user",)]
            if not self.template.system:
                shapes.reverse()
            found = ""
            for roles in shapes:
                marker = "RERANKPROBE0X"
                try:
                    text = self.render([{"role": r, "content": marker} for r in roles], assistant_prefix)
                except Exception:  # noqa: BLE001, S112 - a chat template that refuses this conversation
                    continue
                if isinstance(text, str) and marker in text:
                    found = reasoning_left_open(text[text.rindex(marker) + len(marker) :])
                    break
            self._prompt_reasoning[assistant_prefix] = found
        return self._prompt_reasoning[assistant_prefix]

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt or a piece of one (no special tokens added: the chat template has them; no
        warning for a text longer than the model: prompts are fitted to it)."""
        return self.tokenizer.encode(prompt, add_special_tokens=False, verbose=False)

    def prompt_ids(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> list[int]:
        """Token ids of :meth:`render`."""
        return self.encode(self.render(messages, assistant_prefix))

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "config": to_dict(self.config),
            "template": self.template.source,
            "backend": self.backend.describe(),
        }

    def close(self) -> None:
        self.backend.close()


def passage_texts(head: LLMReranker, candidates: list[Candidate], max_tokens: int) -> list[str]:
    """Each candidate's title and text on one line, joined by a space, every run of whitespace (``str.split``'s: line
    breaks, tabs, Unicode spaces such as U+00A0 included) one space and none at either end, so a document cannot start
    a line of the prompt that looks like another passage's label; prepared (special strings neutralised) and cut to
    ``max_tokens`` tokens (the instruction never is)."""
    return [head.prepare(" ".join(c.doc.full_text(" ").split()), max_tokens) for c in candidates]
