"""The one reranker interface every head implements (and the remote client, and the RAG adapters).

A head implements :meth:`Reranker.score_candidates` (one query) and may override
:meth:`Reranker.score_batch` to batch across queries. The base class handles input normalisation, stable sorting,
``top_k``, and the bookkeeping of LLM-output parse failures that ``metrics.json`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import numbers
import operator
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

from rerank.config import from_dict, to_dict
from rerank.errors import ConfigError, RerankError
from rerank.types import Candidate, Document, Query, RankedResult, ScoredDocument, lone_surrogate
from rerank.utils.forksafe import ForkSafeLock
from rerank.utils.text import unreadable_query

if TYPE_CHECKING:
    import numpy as np

    from rerank.prompts import PromptTemplate

__all__ = [
    "MAPPING_KEYS", "CallWarnings", "DocInput", "PositionScored", "RerankStats", "Reranker", "RerankerConfig",
    "as_candidates", "check_local_model", "described_model", "described_value", "position_scores", "sigmoid",
    "split_scores",
]

DocInput = Union[str, Document, Candidate, Mapping[str, Any]]
_LOCKS_GUARD = ForkSafeLock()  # creates each reranker's call lock once
_POLICY_GUARD = ForkSafeLock()  # guards each reranker's open warning_policy blocks
_PER_PROCESS = ("_call_lock", "_policy_blocks")  # a reranker's state that a pickle or deep copy leaves out
log = logging.getLogger(__name__)


class CallWarnings:
    """How one reranker logs its per-call warnings (model outputs that failed to parse or were repaired, prompts fitted
    to the context; its ``stats`` count them all the same). Default: each one. ``hold=True``: none, for a caller that
    reports the totals itself; ``every=s``: the first of each kind, then at most one every ``s`` seconds, which says
    how many were held back since."""

    #: the kinds of per-call warning, and what each is about
    KINDS: ClassVar[dict[str, str]] = {"outputs": "model outputs that failed to parse or were repaired",
                                       "fitted": "prompts fitted to the model's context"}

    def __init__(self, *, hold: bool = False, every: float | None = None) -> None:
        if hold and every is not None:
            raise ValueError("CallWarnings: hold or every, not both")
        self.hold, self.every = hold, every
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def admit(self, kind: str) -> str | None:
        """Whether a warning of ``kind`` is logged now: None when it is held back, else the text to end it with (how
        many of its kind were held back since the last one logged, or nothing)."""
        if not self.hold and self.every is None:
            return ""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if self.hold or (last is not None and now - last < self.every):  # type: ignore[operator]
                self._held[kind] = self._held.get(kind, 0) + 1
                return None
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        return f"; {held} more such warning(s) held back since the last one" if held else ""

    def held_back(self) -> dict[str, int]:
        """How many warnings of each kind were held back since the last of their kind was logged; counting starts
        again."""
        with self._lock:
            held, self._held = self._held, {}
        return held


_LOG_EACH = CallWarnings()  # the default policy: keeps no state


@dataclass
class RerankerConfig:
    """Options shared by every head; heads subclass this with their own typed fields."""

    batch_size: int = 16


@dataclass
class RerankStats:
    """How many model outputs a head produced, how many failed to parse, and how many were repaired; and how many
    prompts had to be fitted to the model's context (``fitted_prompts``), with how many passages of them were cut
    below ``max_doc_tokens`` (``shortened_passages``, one per passage per prompt) and how many queries below
    ``max_query_tokens`` (``shortened_queries``)."""

    outputs: int = 0
    parse_failures: int = 0
    repaired: int = 0
    failure_examples: list[str] = dataclasses.field(default_factory=list)
    fitted_prompts: int = 0
    shortened_passages: int = 0
    shortened_queries: int = 0

    def record(self, *, failed: bool = False, repaired: bool = False, example: str | None = None) -> None:
        self.outputs += 1
        self.parse_failures += int(failed)
        self.repaired += int(repaired)
        if (failed or repaired) and example is not None and len(self.failure_examples) < 5:
            self.failure_examples.append(example[:300])

    def merge(self, other: RerankStats) -> None:
        """Add ``other``'s counts (another process's) to these; failure examples up to five in all."""
        for f in dataclasses.fields(self):
            if f.name != "failure_examples":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.failure_examples.extend(other.failure_examples[: 5 - len(self.failure_examples)])

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large negative ``x``."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def split_scores(flat: Sequence[float], candidate_lists: Sequence[Sequence[Any]]) -> list[list[float]]:
    """Scores of all candidates of a batch, query-major, back into one list per query."""
    out, i = [], 0
    for c in candidate_lists:
        out.append([float(x) for x in flat[i : i + len(c)]])
        i += len(c)
    return out


def position_scores(order: Sequence[int], n: int) -> list[float]:
    """Scores of ``n`` candidates from a ranking ``order`` of their indices: n for the first, 1 for the n-th, 0 for a
    candidate the order leaves out."""
    scores = [0.0] * n
    for pos, j in enumerate(order):
        scores[j] = float(n - pos)
    return scores


class PositionScored:
    """Mixin for rerankers whose scores are positions (:func:`position_scores`)."""

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """Scores are positions (n for the first of n, 1 for the last): divided by n, so the first scores 1."""
        n = len(scores)
        return [min(max(float(s) / n, 0.0), 1.0) for s in scores]


def check_local_model(method: str, backend: str, model: str | None) -> str:
    """The model of a head that loads its own network in process (no LLM backend): ``--backend`` must be
    transformers and ``--model`` given."""
    if backend != "transformers":
        from rerank.backends.registry import available_backends

        if backend not in available_backends():
            raise ConfigError(f"unknown backend {backend!r}; known backends: {', '.join(available_backends())}")
        raise ConfigError(f"{method} runs on the transformers backend only, not {backend!r}")
    if not model:
        raise ConfigError(f"{method} needs a model (model=... in Python, --model on the command line)")
    return model


def _as_list(items: Any, name: str) -> list[Any]:
    """``items`` as a list; a string, a mapping or a set is a mistake (it would be ranked character by character,
    by key, or in no stable order), and so is anything that is not iterable."""
    if isinstance(items, (str, bytes, Mapping, AbstractSet)) or not isinstance(items, Iterable):
        raise TypeError(f"{name} must be a list (or another sequence), got {type(items).__name__}")
    return list(items)


def _positive_int(value: Any) -> int | None:
    """``value`` as an int >= 1 (numpy integers included; not a bool), or None when it is not one."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        return None
    return number if number is not None and number >= 1 else None


def _check_top_k(top_k: Any) -> int | None:
    """``top_k`` as an int >= 1 (numpy integers included), or None for all documents."""
    if top_k is None:
        return None
    value = _positive_int(top_k)
    if value is None:
        raise ValueError(f"top_k must be an integer >= 1 or None (all documents), got {top_k!r}")
    return value


def as_candidates(docs: Sequence[DocInput], where: str = "documents") -> list[Candidate]:
    """Normalise user input: strings get ids ``"0".."n-1"`` (their input positions). A text, title or id of the wrong
    type, a text or title holding a lone UTF-16 surrogate (tokenizers refuse it), a mapping without ``text`` or with a
    key other than :data:`MAPPING_KEYS`, a NaN or non-numeric first-stage score, or an id given twice is an error
    naming the document as ``where[i]`` (``None`` would otherwise be ranked as the text "None", a NaN score order
    nothing)."""
    out: list[Candidate] = []
    for i, d in enumerate(docs):
        at = f"{where}[{i}]"
        if isinstance(d, Candidate):
            _check_document(d.doc, at)
            score = _first_stage_score(d.score, at, d.doc.id)
            out.append(d if score is d.score else Candidate(d.doc, score))
        elif isinstance(d, Document):
            _check_document(d, at)
            out.append(Candidate(d))
        elif isinstance(d, str):
            _check_unicode(d, f"{at}: text")
            out.append(Candidate(Document(str(i), d)))
        elif isinstance(d, Mapping):
            out.append(_mapping_candidate(d, i, at))
        else:
            raise TypeError(f"{at}: documents must be str, Document, Candidate or mapping, got {type(d).__name__}")
    ids = [c.doc.id for c in out]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for i, doc_id in enumerate(ids):
            if doc_id in seen:
                hint = (" (plain strings get their positions as ids: give every document an id, or none)"
                        if any(isinstance(d, str) for d in docs) else "")
                raise ValueError(f"{where}[{i}]: document id {doc_id!r} is given twice in one request{hint}")
            seen.add(doc_id)
    return out


def _check_document(doc: Any, at: str) -> None:
    if not isinstance(doc, Document):
        raise TypeError(f"{at}: a Candidate's doc must be a Document, got {type(doc).__name__}")
    for name in ("id", "text", "title"):
        value = getattr(doc, name)
        if not isinstance(value, str):
            raise TypeError(f"{at} (id {doc.id!r}): {name} must be a string, got {type(value).__name__}")
    _check_unicode(doc.text, f"{at} (id {doc.id!r}): text")
    _check_unicode(doc.title, f"{at} (id {doc.id!r}): title")


def _check_unicode(text: str, where: str) -> None:
    """A ``ValueError`` naming ``where`` (document or query, and field) when ``text`` holds a lone UTF-16 surrogate,
    the wording ``rerank serve`` answers with; free on ASCII text."""
    if (at := lone_surrogate(text)) is not None:
        raise ValueError(f"{where} has a lone UTF-16 surrogate at {at}: text must be valid Unicode")


#: the keys a document mapping may hold: ``text`` (required), ``id`` or ``_id`` (default: its position), ``title``
#: and the first-stage ``score``
MAPPING_KEYS = ("id", "_id", "text", "title", "score")


def _mapping_candidate(d: Mapping[str, Any], i: int, at: str) -> Candidate:
    """A ``{"id"/"_id", "text", "title", "score"}`` mapping as a Candidate; an int id is read as its string; an id
    that is None gives way to the other key's (alone, it is refused). ``id`` and ``_id`` holding different ids is
    refused, as the file readers refuse it; so is another key, not dropped: a :class:`Document` holds no metadata, and
    a misspelt key would be lost."""
    given = [(k, d[k]) for k in ("id", "_id") if d.get(k) is not None]
    if len({str(v) for _, v in given}) > 1:  # as the file readers refuse it: a row number beside the real id
        shown = " and ".join(f"{k!r} ({json.dumps(v, default=str)[:40]})" for k, v in given)
        raise ValueError(f"{at}: fields {shown} disagree: which is the document id? keep one of them")
    doc_id = given[0][1] if given else d.get("id", d.get("_id", str(i)))  # an id given only as None is refused
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise TypeError(f"{at}: id must be a string or an integer, got {type(doc_id).__name__}")
    if "text" not in d:
        raise ValueError(f"{at} (id {doc_id!r}): a document mapping needs a 'text' key "
                         f"(it has {', '.join(map(repr, d)) or 'none'})")
    other = [k for k in d if k not in MAPPING_KEYS]
    if other:
        keep = (" (a Document carries no metadata: keep it by id and join it back on result.doc.id)"
                if "metadata" in other else "")
        raise ValueError(f"{at} (id {doc_id!r}): unknown key(s) {', '.join(map(repr, other))} in a document mapping; "
                         f"the keys read are {', '.join(MAPPING_KEYS)}{keep}")
    text, title = d["text"], d.get("title") or ""
    for name, value in (("text", text), ("title", title)):
        if not isinstance(value, str):
            raise TypeError(f"{at} (id {doc_id!r}): {name} must be a string, got {type(value).__name__}")
        _check_unicode(value, f"{at} (id {doc_id!r}): {name}")
    doc = Document(str(doc_id), text, title)
    return Candidate(doc, _first_stage_score(d.get("score"), at, doc.id))


def _first_stage_score(score: Any, at: str, doc_id: str) -> float | None:
    """A first-stage score as a float (None: unknown); ±inf is defined wherever scores are fused, NaN orders nothing."""
    if score is None:
        return None
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        raise TypeError(f"{at} (id {doc_id!r}): first-stage score {score!r} is not a number")
    value = float(score)
    if math.isnan(value):
        raise ValueError(f"{at} (id {doc_id!r}): first-stage score is NaN")
    return value


#: the keywords of sentence-transformers' ``CrossEncoder.predict`` that :meth:`Reranker.predict` takes (``rank``: the
#: first two)
_ST_KEYWORDS = ("batch_size", "show_progress_bar", "convert_to_numpy")


def _refuse_keywords(call: str, given: Mapping[str, Any], supported: Sequence[str]) -> None:
    """A one-line ``TypeError`` for keywords ``call`` does not take, naming those it does."""
    if given:
        raise TypeError(f"{call}() does not take {', '.join(map(repr, given))}; its keywords are "
                        f"{', '.join(supported)} (the raw scores of any head: rerank())")


def _folder_hint(path: str) -> str:
    """For a model folder without rerank.json, the method that loads it, from its config.json ('' when unknown)."""
    try:
        archs = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return ""
    names = [a for a in archs if isinstance(a, str)]
    if any(a.endswith("ForSequenceClassification") for a in names):
        return (f"it holds a sequence-classification model: load it with Reranker.load('cross-encoder', "
                f"model={path!r}); ")
    if any(a.endswith("ForCausalLM") for a in names):
        return f"it holds a causal LM: load it with an LLM head, e.g. Reranker.load('yes-no', model={path!r}); "
    return ""


class _CheckedTemplate:
    """A head's ``template`` attribute: a prompt template set on a head whose class declares
    :attr:`Reranker.ranked_inputs` must read each of them (:func:`rerank.prompts.require_reads`), else the head
    refuses it with a one-line :class:`ConfigError`. A head that has set none has no ``template``."""

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__["template"]
        except KeyError:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute 'template'") from None

    def __set__(self, obj: Any, value: Any) -> None:
        needs = type(obj).ranked_inputs
        if needs:
            from rerank.prompts import PromptTemplate, require_reads

            if isinstance(value, PromptTemplate):
                method = type(obj).prompt_method()
                require_reads(value, needs, obj.method or type(obj).__name__, method)
        obj.__dict__["template"] = value

    def __delete__(self, obj: Any) -> None:
        obj.__dict__.pop("template", None)


class Reranker(ABC):
    """Rerank candidate documents for a query; construct with :meth:`Reranker.load` by method name."""

    method: ClassVar[str] = ""
    #: the template variables a prompt-rendering head ranks by (e.g. ``frozenset({"query", "document"})``): a
    #: template set on the head (``self.template = ...``, as :class:`~rerank.heads.llm.LLMReranker` does) that leaves
    #: one of them out is refused, naming it. A method's head is also checked against its method's own templates
    #: (:func:`rerank.prompts.head_template`); a head registered from user code that subclasses no method's head is
    #: checked only by these. Default: none.
    ranked_inputs: ClassVar[frozenset[str]] = frozenset()
    #: template keys the head reads besides those of its method's own templates (e.g. a subclass of ``YesNoReranker``
    #: reading ``self.template.extra["answer_language"]`` declares ``frozenset({"answer_language"})``): a template key
    #: that neither its method's templates have nor this declares, and that its texts do not read, is refused as a
    #: typo (:func:`rerank.prompts.head_template`). Default: none.
    template_keys: ClassVar[frozenset[str]] = frozenset()
    template = _CheckedTemplate()
    config_class: ClassVar[type[RerankerConfig]] = RerankerConfig
    #: True when a document's score does not depend on the other documents of its list (pointwise heads): a server
    #: may then score an oversized list in parts, or a long document by passages, and merge by score.
    independent_scores: ClassVar[bool] = False
    #: False when concurrent ``arerank`` calls may run side by side (the remote reranker's HTTP client).
    serialise_calls: ClassVar[bool] = True

    def __init__(self, config: RerankerConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.stats = RerankStats()

    def __getstate__(self) -> dict[str, Any]:
        """The state a pickle or deep copy keeps: all but the call lock and the open ``warning_policy`` blocks (the
        copy makes its own lock and follows the policy set on it)."""
        return {k: v for k, v in self.__dict__.items() if k not in _PER_PROCESS}

    def __copy__(self) -> Reranker:
        """A shallow copy shares the model, so it shares the call lock too (calls into one model stay one at a
        time); it leaves out the open ``warning_policy`` blocks."""
        new = object.__new__(type(self))
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_policy_blocks"})
        return new

    @property
    def call_warnings(self) -> CallWarnings:
        """How this reranker logs its per-call warnings (:class:`CallWarnings`): the policy of the last entered
        :meth:`warning_policy` block still open (from any thread), else the one set here; default: each one."""
        blocks = self.__dict__.get("_policy_blocks")
        if blocks:
            with _POLICY_GUARD:
                if blocks:
                    return next(reversed(blocks.values()))
        return self.__dict__.get("_call_warnings", _LOG_EACH)

    @call_warnings.setter
    def call_warnings(self, policy: CallWarnings) -> None:
        self.__dict__["_call_warnings"] = policy

    @contextlib.contextmanager
    def warning_policy(self, policy: CallWarnings) -> Iterator[CallWarnings]:
        """Inside the block this reranker's per-call warnings follow ``policy`` (blocks overlapping from several threads:
        the last entered still open); after every block has exited, the policy set on the reranker again."""
        token = object()
        with _POLICY_GUARD:
            self.__dict__.setdefault("_policy_blocks", {})[token] = policy
        try:
            yield policy
        finally:
            with _POLICY_GUARD:
                self.__dict__["_policy_blocks"].pop(token, None)

    @staticmethod
    def load(method: str | None = None, model: str | None = None, backend: str = "transformers",
             **options: Any) -> Reranker:
        """Build a reranker: the registered method ``method`` on ``model``, or a trained model folder on its own
        (``Reranker.load("path/to/model")``), whose ``rerank.json`` names the method (a registered name, never code to
        import) and the options it was trained with (prompt template included); options given here fill the typed
        config over those."""
        from rerank.heads.registry import available_rerankers, get_reranker_class, recorded_reranker_class
        from rerank.methods.record import read_record

        if method is not None and model is None and method not in available_rerankers() and read_record(method):
            method, model = None, method
        if method is not None and method not in available_rerankers():
            if model is None and ("/" in method or Path(method).exists()):
                raise ConfigError(f"{method} is neither a trained model folder (one holding rerank.json) nor a "
                                  f"registered method; {_folder_hint(method)}known methods: "
                                  f"{', '.join(available_rerankers())}")
            get_reranker_class(method)  # raises: unknown name, listing the known ones
        record = read_record(model)
        recorded = record is not None
        if record is not None:
            if record.get("kind") != "reranker":
                raise ConfigError(f"{model} is a trained {record.get('kind')} ({record['method']}), not a reranker; "
                                  f"use it as a first stage (--retriever dense --model {model})")
            if method is not None and method != record["method"]:
                raise ConfigError(f"{model} was trained as {record['method']!r}; load it with that method or none")
            method = record["method"]
            options = {**record.get("options", {}), **options}
        if method is None:
            raise ConfigError("give a registered method name or a trained model folder (one holding rerank.json)")
        cls = recorded_reranker_class(method, model) if recorded else get_reranker_class(method)
        reranker = cls.from_options(model=model, backend=backend, **options)
        if not isinstance(reranker, Reranker):
            raise ConfigError(f"reranker {method!r}: {cls.__module__}:{cls.__qualname__}.from_options returned "
                              f"{type(reranker).__name__}, not a Reranker (does it return the reranker it builds?)")
        return reranker

    @classmethod
    def from_options(cls, model: str | None = None, backend: str = "transformers", **options: Any) -> Reranker:
        """Default construction: typed config from ``options``. Model-backed heads override this."""
        return cls(from_dict(cls.config_class, options, where=f"{cls.method or cls.__name__} options"))

    @classmethod
    def prompt_method(cls) -> str:
        """The method whose templates the head reads: its own, or for a head registered from user code
        (``register_reranker``) the method of the nearest base class that is a method's head ('' for none)."""
        from rerank.methods import all_methods

        methods = all_methods()
        names = (getattr(k, "method", "") for k in cls.__mro__)
        return next((n for n in names if n in methods), "")

    @classmethod
    def configured_template(cls, config: Any) -> PromptTemplate | None:
        """The template a head of this class renders under its typed ``config``, found without a model: the config's
        ``template``, else the head's default for that config (which may follow options such as listwise's
        ``identifiers``), with the options standing in for template fields (``template_texts``) applied. None where
        it cannot be told: a head of no method given no template (it sets its own when it loads), or a default that
        reads more of the head than its config (a user head's ``default_template`` reading what ``__init__`` sets)."""
        from rerank.prompts import head_template

        chosen = getattr(config, "template", None)
        if not chosen:
            if not cls.prompt_method():
                return None
            probe = object.__new__(cls)  # the default is read on an instance holding only its config
            probe.config = config
            try:
                chosen = probe.default_template()
            except RerankError:
                raise
            except Exception:  # noqa: BLE001 - a user head's default reads what only __init__ sets: cannot tell
                if cls.__module__.split(".")[0] == "rerank":  # a built-in head's default reads its config only
                    raise
                return None
        template = head_template(chosen, cls.prompt_method(), cls)
        for name in getattr(cls, "template_texts", ()):
            value = getattr(config, name, "")
            if value:
                template = dataclasses.replace(template, extra={**template.extra, name: value})
        return template

    def default_template(self) -> str:
        """The template a prompt-rendering head uses when its config names none: the first shipped template of
        :meth:`prompt_method`; a head of no method with templates is a one-line error asking for ``template=``."""
        from rerank.methods import get_method

        owner = self.prompt_method()
        if not owner:
            raise ConfigError(f"{self.method}: the head subclasses no method's head, so it has no default prompt "
                              f"template: give template= (a template file or mapping)")
        method = get_method(owner)
        if not method.templates:
            raise ConfigError(f"{owner}: the method declares no prompt template (templates= in {method.source})")
        return method.default_template

    @abstractmethod
    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        """Scores aligned with ``candidates``; higher is better. Listwise heads return position-derived scores."""

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        """Score many queries; heads that can batch across queries override this."""
        return [self.score_candidates(q, c) for q, c in zip(queries, candidate_lists, strict=True)]

    def score_with_metadata(
        self, queries: list[Query], candidate_lists: list[list[Candidate]]
    ) -> tuple[list[list[float]], list[list[dict[str, Any] | None]] | None]:
        """:meth:`score_batch` plus, per candidate, what the head adds about its score (None: nothing). Heads that
        score long documents by passages override this to name the passage that scored."""
        return self.score_batch(queries, candidate_lists), None

    def rerank(self, query: str | Query, docs: Sequence[DocInput], top_k: int | None = None) -> RankedResult:
        """Rank ``docs`` for ``query``; every input doc appears once (``top_k`` truncates the returned list). Equal
        scores keep their input order, not trec_eval's (doc id descending): to evaluate the order shown, pass
        ``result.to_run()`` (rank-derived scores) to ``evaluate_run``, not the raw scores."""
        return self.rerank_batch([query], [_as_list(docs, "docs")], top_k=top_k)[0]

    def st_activation(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """What sentence-transformers' ``CrossEncoder`` applies to this head's raw scores on the same model folder, as a
        function of a numpy array; :meth:`predict` and :meth:`rank` apply it. None (the default): their scores are
        raw."""
        return None

    def predict(self, pairs: Sequence[tuple[str, str]] | tuple[str, str], *, relevance: bool = False,
                batch_size: int | None = None, show_progress_bar: bool | None = None, convert_to_numpy: bool = True,
                **unsupported: Any) -> Any:
        """sentence-transformers' ``CrossEncoder.predict`` for any head: a numpy array (``convert_to_numpy=False``: a
        list of floats) of the score of each (query, document) pair in input order (one pair: one value). The score is
        the head's raw score through :meth:`st_activation` (on a cross-encoder folder: what ``CrossEncoder.predict``
        returns), or with ``relevance=True`` in [0, 1] (:attr:`ScoredDocument.relevance`, what Cohere clients get).
        ``batch_size`` sets the head's ``batch_size`` for this call; ``show_progress_bar`` shows a bar over the pairs;
        another keyword is a ``TypeError``. The pairs of one query are scored as one list, so a head whose scores
        depend on the list (listwise) scores each document among that query's others."""
        _refuse_keywords("predict", unsupported, ("relevance", *_ST_KEYWORDS))
        single = isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs)
        items = [pairs] if single else _as_list(pairs, "pairs")
        for i, pair in enumerate(items):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise TypeError(f"pairs[{i}]: expected a (query, document) pair of strings, got {pair!r}")
        checked: set[str] = set()
        for i, (query, doc) in enumerate(items):
            if query not in checked:
                checked.add(query)
                if (why := unreadable_query(query)) is not None:
                    raise ValueError(f"pairs[{i}]: the query {why}: there is nothing to rank the document against")
                _check_unicode(query, f"pairs[{i}]: query")
            _check_unicode(doc, f"pairs[{i}]: document")
        raw, rel = self._pair_scores(items, batch_size, bool(show_progress_bar), "predict")
        out = rel if relevance else self._st_scores(raw)
        result: Any = out if convert_to_numpy else [float(x) for x in out]
        return result[0] if single else result

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             *, batch_size: int | None = None, show_progress_bar: bool | None = None,
             **unsupported: Any) -> list[dict[str, Any]]:
        """sentence-transformers' ``CrossEncoder.rank``: ``{"corpus_id": position in documents, "score": score}`` (plus
        ``"text"`` with ``return_documents``) best first, equal scores in input order, cut to ``top_k``; the score is
        :meth:`predict`'s (on a cross-encoder folder: what ``CrossEncoder.rank`` returns). ``batch_size`` and
        ``show_progress_bar`` as for :meth:`predict`; :meth:`rerank` gives the full result (raw score, relevance,
        metadata)."""
        _refuse_keywords("rank", unsupported, _ST_KEYWORDS[:2])
        docs = _as_list(documents, "documents")
        if not isinstance(query, str) or any(not isinstance(d, str) for d in docs):
            raise TypeError("rank takes a query string and a list of document strings (rerank() takes documents "
                            "with ids, titles or Document objects)")
        top_k = _check_top_k(top_k)
        if (why := unreadable_query(query)) is not None:
            raise ValueError(f"the query {why}: there is nothing to rank the documents against")
        _check_unicode(query, "query")
        for i, d in enumerate(docs):
            _check_unicode(d, f"documents[{i}]: text")
        raw, _ = self._pair_scores([(query, d) for d in docs], batch_size, bool(show_progress_bar), "rank")
        scores = self._st_scores(raw).tolist()
        order = sorted(range(len(docs)), key=lambda j: -scores[j])  # stable: ties keep input order, as ST's
        return [{"corpus_id": j, "score": scores[j], **({"text": docs[j]} if return_documents else {})}
                for j in order[:top_k]]

    def _st_scores(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores through :meth:`st_activation` (unchanged where it is None)."""
        import numpy as np

        act = self.st_activation()
        return raw if act is None or not len(raw) else np.asarray(act(raw), dtype=np.float64).reshape(raw.shape)

    def _pair_scores(self, items: list[Sequence[str]], batch_size: Any, progress: bool,
                     desc: str) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores and relevance of checked (query, document) pairs, each query's pairs ranked as one list (a
        head with :attr:`independent_scores` in pieces of ``batch_size`` when a bar named ``desc`` shows progress)."""
        import numpy as np
        from tqdm.auto import tqdm

        groups: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(items):
            groups.setdefault(query, []).append(i)
        raw, rel = np.zeros(len(items), dtype=np.float64), np.zeros(len(items), dtype=np.float64)
        with self._call_batch_size(batch_size) as size, \
                tqdm(total=len(items), desc=desc, unit="pair", disable=not progress) as bar:
            units = list(groups.values())
            if progress and self.independent_scores:
                units = [at[s : s + size] for at in units for s in range(0, len(at), size)]
            calls, call = [], []
            for at in units:  # one call without a bar; with one, calls of at least batch_size pairs each
                call.append(at)
                if progress and sum(map(len, call)) >= size:
                    calls.append(call)
                    call = []
            calls += [call] if call else []
            for call in calls:
                ranked = self.rerank_batch([items[at[0]][0] for at in call],
                                           [[items[i][1] for i in at] for at in call])
                for at, result in zip(call, ranked, strict=True):
                    for r in result.results:  # string documents get their positions in the list as ids
                        raw[at[int(r.doc.id)]], rel[at[int(r.doc.id)]] = r.score, r.relevance
                bar.update(sum(map(len, call)))
        return raw, rel

    @contextlib.contextmanager
    def _call_batch_size(self, batch_size: Any) -> Iterator[int]:
        """Inside the block the head's ``batch_size`` option is ``batch_size`` (None: its own), its calls from other
        threads waiting; yields the batch size in force."""
        if batch_size is None:
            yield int(getattr(self.config, "batch_size", 1) or 1)
            return
        size = _positive_int(batch_size)
        if size is None:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        config = dataclasses.replace(self.config, batch_size=size)  # the head's own checks run on it
        if not self.serialise_calls:
            raise ConfigError(f"{self.method or type(self).__name__}: batch_size cannot be set per call (calls run "
                              f"side by side); set it when loading")
        with self._serialising_lock():
            before, self.config = self.config, config
            try:
                yield size
            finally:
                self.config = before

    def _serialising_lock(self) -> threading.RLock:
        """The lock that runs this reranker's calls one at a time (created once per process: a forked child makes its
        own, as a call in another thread of the parent may have held it at the fork)."""
        pid = os.getpid()
        held = self.__dict__.get("_call_lock")
        if held is None or held[0] != pid:
            with _LOCKS_GUARD:
                held = self.__dict__.get("_call_lock")
                if held is None or held[0] != pid:
                    held = self.__dict__["_call_lock"] = (pid, threading.RLock())
        return held[1]

    def rerank_batch(
        self, queries: Sequence[str | Query], docs_lists: Sequence[Sequence[DocInput]], top_k: int | None = None
    ) -> list[RankedResult]:
        """Rank several queries' candidate lists at once. Calls from several threads on one in-process model run one
        at a time (a model, its forward hooks and its fast tokenizer are not thread-safe); the remote reranker's run
        side by side. Model outputs that failed to parse or were repaired in the call are logged as a warning (the
        running counts: :attr:`stats`)."""
        if not self.serialise_calls:
            return self._rerank_batch(queries, docs_lists, top_k)
        with self._serialising_lock():
            return self._rerank_batch(queries, docs_lists, top_k)

    def _rerank_batch(
        self, queries: Sequence[str | Query], docs_lists: Sequence[Sequence[DocInput]], top_k: int | None
    ) -> list[RankedResult]:
        top_k = _check_top_k(top_k)
        queries, docs_lists = _as_list(queries, "queries"), _as_list(docs_lists, "docs_lists")
        if len(queries) != len(docs_lists):
            raise ValueError(f"{len(queries)} queries but {len(docs_lists)} document lists")
        for i, q in enumerate(queries):
            if not isinstance(q, (str, Query)):
                raise TypeError(f"a query must be a str or a Query, got {type(q).__name__}")
            text = q if isinstance(q, str) else q.text
            if (why := unreadable_query(text)) is not None:
                raise ValueError(f"query {i} {why}: there is nothing to rank the documents against")
            _check_unicode(text, f"query {i}" if isinstance(q, str) else f"query {i} (id {q.id!r})")
        qs = [q if isinstance(q, Query) else Query(str(i), q) for i, q in enumerate(queries)]
        one = len(docs_lists) == 1  # several lists: an error names the list too (docs_lists[k][i])
        cands = [as_candidates(_as_list(d, "docs" if one else f"docs_lists[{k}]"), "documents" if one else
                               f"docs_lists[{k}]") for k, d in enumerate(docs_lists)]
        todo = [i for i, c in enumerate(cands) if c]
        scores: list[list[float]] = [[] for _ in cands]
        meta: list[list[dict[str, Any] | None]] = [[None] * len(c) for c in cands]
        before = (self.stats.outputs, self.stats.parse_failures, self.stats.repaired, len(self.stats.failure_examples))
        if todo:
            got, got_meta = self.score_with_metadata([qs[i] for i in todo], [cands[i] for i in todo])
            for k, (i, s) in enumerate(zip(todo, got, strict=True)):
                scores[i] = s
                if got_meta is not None:
                    if len(got_meta[k]) != len(s):
                        raise RuntimeError(f"{type(self).__name__} returned {len(got_meta[k])} metadata entries for "
                                           f"{len(s)} scores")
                    meta[i] = got_meta[k]
        self._warn_parse_failures(*before)
        results = []
        for q, c, s, m in zip(qs, cands, scores, meta, strict=True):
            if len(s) != len(c):
                raise RuntimeError(f"{type(self).__name__} returned {len(s)} scores for {len(c)} documents")
            if any(map(math.isnan, s)):  # NaN compares false both ways: the order it gave would be arbitrary
                nan = [c[j].doc.id for j, v in enumerate(s) if math.isnan(v)]
                raise RerankError(f"the reranker scored {len(nan)} of {len(s)} documents of query {q.id!r} NaN (e.g. "
                                  f"{nan[0]!r}), so its ranking is undefined: {self.nan_hint()}")
            rel = self.list_relevance(s, m) if s else []
            order = sorted(range(len(c)), key=lambda j: -s[j])  # stable: ties keep input order (RankedResult.to_run)
            ranked = [
                ScoredDocument(c[j].doc, float(s[j]), r, c[j].score, m[j], float(rel[j]))
                for r, j in enumerate(order, 1)
            ]
            results.append(RankedResult(q, ranked if top_k is None else ranked[:top_k]))
        return results

    def _warn_parse_failures(self, outputs: int, failures: int, repaired: int, examples: int) -> None:
        """Log the model outputs of one call that failed to parse or were repaired (heads say how they repair), as
        :attr:`call_warnings` says."""
        st = self.stats
        failed, fixed = st.parse_failures - failures, st.repaired - repaired
        if not (failed or fixed):
            return
        held = self.call_warnings.admit("outputs")
        if held is not None:
            shown = st.failure_examples[examples:examples + 1]
            log.warning("%s: %d of %d model outputs failed to parse and %d were repaired in this call (how each head "
                        "repairs: docs/backends.md)%s%s", self.method or type(self).__name__, failed,
                        st.outputs - outputs, fixed, f"; first: {shown[0][:120]!r}" if shown else "", held)

    async def arerank(self, query: str | Query, docs: Sequence[DocInput], top_k: int | None = None) -> RankedResult:
        """:meth:`rerank` for asyncio code: the same ranking, computed without blocking the event loop."""
        return (await self.arerank_batch([query], [_as_list(docs, "docs")], top_k=top_k))[0]

    async def arerank_batch(
        self, queries: Sequence[str | Query], docs_lists: Sequence[Sequence[DocInput]], top_k: int | None = None
    ) -> list[RankedResult]:
        """:meth:`rerank_batch` in a worker thread; concurrent calls on one in-process model run one at a time (a
        model and its fast tokenizer are not thread-safe), the remote reranker's run side by side."""
        return await asyncio.to_thread(self.rerank_batch, queries, docs_lists, top_k)

    def nan_hint(self) -> str:
        """What the NaN-score error suggests; heads whose model runs elsewhere (a server) or cannot take
        ``dtype=float32`` say so instead."""
        return ("a float16 overflow? try dtype=float32 (--reranker-set dtype=float32) on the command line, "
                "Reranker.load(..., dtype='float32') in Python")

    @classmethod
    def writes_cache(cls, options: Mapping[str, Any]) -> bool:
        """Whether this head, built with ``options``, may save into the cache folder (``$RERANK_CACHE``) during
        ``eval``, so the CLI checks that folder before the model loads. Default: no (LLM heads' answers are checked
        through their backend)."""
        return False

    def prepare_corpus(self, dataset: Any, doc_ids: AbstractSet[str]) -> None:
        """Called by ``eval`` with the dataset and the ids of every document it will rerank, before it reranks: heads
        whose document side does not depend on the query (the bi-encoder) embed them here, once. Default: nothing."""

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """One whole list's raw scores mapped to relevance in [0, 1] (order kept), what Cohere clients expect: give all
        of a query's scores, not a ``top_k`` cut (position scores are read against the list's length); each ranked
        document carries its own as ``ScoredDocument.relevance``. Default: the logistic sigmoid, reading the score as a
        logit; heads whose scores mean something else override this."""
        return [sigmoid(s) for s in scores]

    def list_relevance(self, scores: Sequence[float], metadata: Sequence[dict[str, Any] | None]) -> list[float]:
        """Relevance of one query's scored documents; ``metadata`` is what the head returned beside the scores (the
        remote reranker reads the server's relevance there). Default: :meth:`relevance` of the scores."""
        return self.relevance(scores)

    def ranked_depth(self) -> int | None:
        """How many of a list's documents the head orders (the rest follow in their input order); None: all."""
        return None

    def document_token_limit(self, query: str) -> int | None:
        """Tokens of one document the head reads alongside ``query`` (the rest is cut); None when it has no limit."""
        return None

    def describe(self) -> dict[str, Any]:
        """What produced a ranking (method, model, backend, typed config) for ``metrics.json``."""
        return {"method": self.method, "config": to_dict(self.config)}

    def close(self) -> None:
        """Release model resources (backends with servers or GPU memory override this)."""


def described_value(desc: Any, key: str) -> Any:
    """The first non-None value of ``key`` in a reranker's :meth:`~Reranker.describe` (nested dicts, depth first),
    e.g. the ``resolved_dtype`` its backend reports; None when there is none."""
    if isinstance(desc, dict):
        if desc.get(key) is not None:
            return desc[key]
        for v in desc.values():
            if (hit := described_value(v, key)) is not None:
                return hit
    return None


def described_model(desc: dict[str, Any]) -> tuple[str | None, str | None]:
    """(model, backend name) of a reranker's :meth:`~Reranker.describe`: its own ``model``, else its backend's, and
    the backend's name (None where the description has none: a cross-encoder names no backend)."""
    model, backend = desc.get("model"), desc.get("backend")
    if isinstance(backend, dict):
        model = model if model is not None else backend.get("model")
        backend = backend.get("backend")
    return (str(model) if model is not None else None), (backend if isinstance(backend, str) else None)
