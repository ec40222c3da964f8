"""The pieces ranking rewards are made of (the methods' GRPO rewards live in their packages, ``reward.py``): pure
functions of a predicted ranking / scores and the gold labels, and the reward constants: ``RewardConfig``, the
options several rewards read (:class:`SharedRewardOptions`) joined with those each method declares in its own package
(``REWARD_OPTIONS`` in its ``__init__.py``), so a method's constant is set as ``rewards.<name>`` without editing this
module.

Conventions (stated once, used everywhere):

* ``labels`` maps doc id -> graded relevance; a document is *relevant* when its grade >= ``rel_threshold`` (1).
* nDCG uses linear gains (grade) and log2(rank + 1) discounts, as trec_eval does; the ideal DCG is over all labelled
  documents of the example (the group / candidate list), so a perfect ordering scores 1.0. An example without any
  relevant document scores 0.0 on nDCG, recall and RR.
* ERank scores are on the 0–10 scale and divided by 10 inside its reward so that every term lies in [-1, 1].
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import threading
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any

from rerank.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "ExtraReward",
    "RewardConfig",
    "SharedRewardOptions",
    "check_extra_reward_signature",
    "check_penalties",
    "check_weights",
    "extra_reward_callable",
    "format_validity",
    "js_divergence",
    "ndcg_at_k",
    "ranking_from_scores",
    "rbo",
    "recall_at_k",
    "reciprocal_rank",
    "resolve_extra_rewards",
    "reward_config_class",
    "tie_aware_ndcg_at_k",
    "tie_aware_recall_at_k",
]


@dataclass
class SharedRewardOptions:
    """The reward options more than one method's reward reads; the defaults are the papers' values: GroupRank
    (AQ-MedAI, 2025) for the recall weight, ReasonRank (2025) for the bad-format penalty. A method's own options are
    declared in its package (``REWARD_OPTIONS`` in its ``__init__.py``) and joined to these in :data:`RewardConfig`."""

    k: int = 10
    rel_threshold: int = 1
    recall_weight: float = 0.2
    bad_format_penalty: float = -1.0

    def __post_init__(self) -> None:
        """Values a reward cannot compute with, or that turn it around (a penalty that rewards, a negative weight), are
        refused with the config, naming the option; every numeric option of the config must be finite."""
        v = vars(self)  # the values as given (read through the instance's dict, not attribute access)
        for f in fields(self):
            if not isinstance(v[f.name], bool) and isinstance(v[f.name], (int, float)) and not math.isfinite(v[f.name]):
                raise ConfigError(f"rewards.{f.name} must be a finite number, got {v[f.name]}")
        if v["k"] < 1:
            raise ConfigError(f"rewards.k (the cutoff of nDCG@k and Recall@k) must be >= 1, got {v['k']}")
        if v["rel_threshold"] < 1:
            raise ConfigError(f"rewards.rel_threshold (the lowest grade that counts as relevant) must be >= 1 (grade 0 "
                              f"is not relevant), got {v['rel_threshold']}")
        check_weights(self, "recall_weight")
        check_penalties(self, "bad_format_penalty")


@dataclass
class ExtraReward:
    """One ``extra_rewards`` entry of a GRPO config: a user's reward function, imported by its explicit
    ``"module:function"`` path, added to the method's reward times ``weight`` (finite, not 0). ``source_sha256`` is
    filled with the config (:func:`resolve_extra_rewards`): the sha256 of the function's source file, so the run record
    pins the code that gave the rewards."""

    function: str = ""
    weight: float = 1.0
    source_sha256: str = ""

    def __post_init__(self) -> None:
        """The path's form and the weight, checked without importing anything."""
        module, sep, attr = self.function.partition(":")
        if not sep or not module.strip() or not attr.strip() or ":" in attr:
            raise ConfigError(f"function must be 'module:function' (e.g. 'mypkg.rewards:my_reward'), got "
                              f"{self.function!r}")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"the weight of {self.function} must be a finite number, got {weight!r}")
        if weight == 0:
            raise ConfigError(f"the weight of {self.function} is 0, which adds nothing to the reward: "
                              "drop the entry, or give it a weight")


def extra_reward_callable(entry: ExtraReward, where: str) -> Callable[..., Any]:
    """The function ``entry`` names, imported (:func:`rerank.utils.registry.import_target`); a module that is not there
    or fails to import, a missing name, one that is not callable or cannot be called with the documented keywords
    (:func:`check_extra_reward_signature`) is a one-line ``ConfigError`` starting with ``where``."""
    from rerank.utils.registry import import_target

    try:
        fn = import_target(entry.function, where)
    except ConfigError:
        raise
    except Exception as e:  # the user's module raised while it was imported
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"{where}: importing {entry.function!r} raised {type(e).__name__}: {first}") from e
    if not callable(fn):
        raise ConfigError(f"{where}: {entry.function!r} is a {type(fn).__name__}, not a function: name a callable "
                          f"{EXTRA_REWARD_SIGNATURE} -> list[float]")
    check_extra_reward_signature(fn, entry.function, where)
    return fn


#: the keyword arguments an ``extra_rewards`` function is called with, every one by keyword
EXTRA_REWARD_ARGUMENTS = ("completions", "prompts", "queries", "doc_ids", "labels", "parsed", "step")
EXTRA_REWARD_SIGNATURE = f"fn(*, {', '.join(EXTRA_REWARD_ARGUMENTS)}, **kwargs)"


def check_extra_reward_signature(fn: Callable[..., Any], name: str, where: str) -> None:
    """``fn`` accepts every one of :data:`EXTRA_REWARD_ARGUMENTS` by keyword and needs no other argument
    (``inspect.signature(fn).bind``), else a one-line ``ConfigError`` naming ``name`` and what it lacks; a callable
    whose signature Python cannot read is not checked."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or extension callable without a readable signature
        return
    try:
        signature.bind(**{a: [] for a in EXTRA_REWARD_ARGUMENTS[:-1]}, step=0)
    except TypeError:
        params = signature.parameters.values()
        keyword = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        any_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
        lacks = [] if any_keyword else [a for a in EXTRA_REWARD_ARGUMENTS if a not in keyword]
        positional = [p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
        needs = [p.name for p in params if p.name in keyword and p.default is p.empty
                 and p.name not in EXTRA_REWARD_ARGUMENTS]
        problems = ([f"does not accept {', '.join(lacks)}"] if lacks else []) + (
            [f"takes {', '.join(positional)} by position only"] if positional else []) + (
            [f"requires {', '.join(needs)}, which is not passed"] if needs else [])
        raise ConfigError(f"{where}: {name}{signature} {' and '.join(problems) or 'cannot be called'}: it is called "
                          f"as {EXTRA_REWARD_SIGNATURE}, every argument by keyword (add **kwargs to take only "
                          "some)") from None


def _source_file(fn: Any, module: str) -> str | None:
    """The file that defines ``fn`` (a class instance: its class), else the file of ``module``; None for neither."""
    for obj in (fn, fn if inspect.isroutine(fn) or inspect.isclass(fn) else type(fn), importlib.import_module(module)):
        try:
            found = inspect.getsourcefile(obj)
        except TypeError:  # a builtin has no source file
            found = None
        if found:
            return found
    return None


def resolve_extra_rewards(entries: Sequence[Any]) -> list[ExtraReward]:
    """``extra_rewards`` as checked entries, each the config's own copy: a mapping read as an :class:`ExtraReward`,
    the function imported and callable (:func:`extra_reward_callable`), a function named twice refused, and
    ``source_sha256`` set to the sha256 of its source file (a value given, a rerun from a run's record, that differs
    is warned about: the function's code changed since)."""
    import copy

    from rerank.config import from_dict
    from rerank.utils.files import sha256_file

    out: list[ExtraReward] = []
    for i, entry in enumerate(entries):
        where = f"extra_rewards[{i}]"
        if isinstance(entry, Mapping):
            entry = from_dict(ExtraReward, dict(entry), where=where)
        elif not isinstance(entry, ExtraReward):
            raise ConfigError(f"{where}: expected a mapping with 'function' (module:function) and 'weight', got "
                              f"{entry!r}")
        entry = copy.copy(entry)
        if any(e.function == entry.function for e in out):
            raise ConfigError(f"{where}: {entry.function} is named twice in extra_rewards: give it once, with the sum "
                              "of the weights")
        fn = extra_reward_callable(entry, f"{where}.function")
        source = _source_file(fn, entry.function.partition(":")[0])
        digest = sha256_file(source) if source else ""
        if not source:
            log.warning("%s: %s has no source file: a change to it is not noticed by --resume", where, entry.function)
        if entry.source_sha256 and entry.source_sha256 != digest:
            log.warning("%s: the source of %s (%s) differs from the one the config records (sha256 %s, now %s): this "
                        "run trains with the reward as it is now", where, entry.function, source, entry.source_sha256,
                        digest)
        entry.source_sha256 = digest
        out.append(entry)
    return out


def check_weights(options: Any, *names: str) -> None:
    """Each of ``names`` (a reward's weight) is >= 0 (0 turns its term off)."""
    for name in names:
        value = vars(options)[name]
        if value < 0:
            raise ConfigError(f"rewards.{name} must be >= 0 (0: the term is off), got {value}")


def check_penalties(options: Any, *names: str) -> None:
    """Each of ``names`` (the reward of a bad output) is <= 0."""
    for name in names:
        value = vars(options)[name]
        if value > 0:
            raise ConfigError(f"rewards.{name} is a penalty, the reward of a bad output: it must be <= 0, got {value}")


def reward_config_class(methods: Iterable[Any]) -> type:
    """The ``rewards`` config of these methods (:class:`~rerank.methods.base.Method` descriptors): the
    :class:`SharedRewardOptions` and each method's own options, the dataclass ``REWARD_OPTIONS`` its package's
    ``__init__.py`` declares beside ``METHOD`` (each field an option with its default; its ``__post_init__`` checks
    the values, run with the config's). An option declared twice (by two methods, or by a method and the shared
    ones), a declaration that is no dataclass or a field without a default is a one-line ``ConfigError``."""
    owner = {f.name: "rerank/trainers/rewards.py (SharedRewardOptions)" for f in fields(SharedRewardOptions)}
    specs: list[tuple[str, Any, Any]] = []
    declared: list[type] = []
    for method in methods:
        module = importlib.import_module(method.package)
        options = getattr(module, "REWARD_OPTIONS", None)
        if options is None:
            continue
        where = f"method {method.name!r} ({method.source}): REWARD_OPTIONS"
        if not (isinstance(options, type) and is_dataclass(options)):
            raise ConfigError(f"{where} must be a dataclass of the method's reward options (name: type = default), "
                              f"got {options!r}")
        hints = typing.get_type_hints(options)
        for f in fields(options):
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{where}: option {f.name!r} needs a default")
            if f.name in owner:
                raise ConfigError(f"reward option {f.name!r} is declared twice: {owner[f.name]} and {method.source}; "
                                  "rename one (every rewards option is one key of the GRPO config's rewards block)")
            owner[f.name] = method.source
            specs.append((f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory)))
        declared.append(options)

    def __post_init__(self: Any) -> None:
        SharedRewardOptions.__post_init__(self)
        v = vars(self)
        for options in declared:  # each method's own checks, on the values of its options
            options(**{f.name: v[f.name] for f in fields(options)})

    return make_dataclass("RewardConfig", specs, bases=(SharedRewardOptions,), namespace={
        "__post_init__": __post_init__, "__module__": __name__, "__doc__": _REWARD_CONFIG_DOC})


_REWARD_CONFIG_DOC = """The ``rewards`` block of a GRPO config: :class:`SharedRewardOptions` and the options each method
    declares in its package (``REWARD_OPTIONS``), as :func:`reward_config_class` joins them for the registered
    methods."""
_composing = threading.local()  # set while this thread builds RewardConfig (a read then is a method package's)
_compose_lock = threading.RLock()  # one thread builds it; the others wait and read the class it made


def __getattr__(name: str) -> Any:
    """``RewardConfig``: :func:`reward_config_class` of the registered methods, made on first use (reading the
    methods' packages, which may import this module's functions) and kept."""
    if name != "RewardConfig":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if getattr(_composing, "active", False):
        raise ConfigError("RewardConfig was read while the method packages load: a method's __init__.py declares "
                          "REWARD_OPTIONS without importing its reward code (which reads RewardConfig)")
    with _compose_lock:
        if "RewardConfig" in globals():  # another thread made it while this one waited
            return globals()["RewardConfig"]
        from rerank.methods import all_methods

        _composing.active = True
        try:
            cls = reward_config_class(all_methods().values())
        finally:
            _composing.active = False
        globals()["RewardConfig"] = cls
    return cls


def ranking_from_scores(scores: Mapping[str, float]) -> list[str]:
    """Doc ids by score descending; ties keep the mapping's insertion order."""
    return sorted(scores, key=lambda d: -scores[d])


def _dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], labels: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k of ``ranking`` with linear gains; unlabelled docs have gain 0."""
    ideal = _dcg(sorted((g for g in labels.values() if g > 0), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    return _dcg([max(labels.get(d, 0.0), 0.0) for d in ranking[:k]]) / ideal


def tie_aware_ndcg_at_k(scores: Mapping[str, float], labels: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k of a score map, tie-aware (McSherry & Najork, 2008): the expectation over every order of tied docs, so
    the value never depends on the order in which tied documents were listed (an all-equal map scores as random)."""
    ideal = _dcg(sorted((g for g in labels.values() if g > 0), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    groups: dict[float, list[float]] = {}
    for d, s in scores.items():
        groups.setdefault(float(s), []).append(max(labels.get(d, 0.0), 0.0))
    dcg, start = 0.0, 0
    for s in sorted(groups, reverse=True):
        gains = groups[s]
        discount = sum(1 / math.log2(i + 2) for i in range(start, min(start + len(gains), k)))
        dcg += sum(gains) / len(gains) * discount
        start += len(gains)
    return dcg / ideal


def tie_aware_recall_at_k(scores: Mapping[str, float], labels: Mapping[str, float], k: int = 10,
                          rel_threshold: int = 1) -> float:
    """Expected Recall@k of a score map over every order of tied docs (a tied group cut by k counts pro rata)."""
    relevant = {d for d, g in labels.items() if g >= rel_threshold}
    if not relevant:
        return 0.0
    groups: dict[float, list[str]] = {}
    for d, s in scores.items():
        groups.setdefault(float(s), []).append(d)
    found, start = 0.0, 0
    for s in sorted(groups, reverse=True):
        docs = groups[s]
        inside = max(0, min(start + len(docs), k) - start)
        found += sum(d in relevant for d in docs) * inside / len(docs)
        start += len(docs)
    return found / len(relevant)


def recall_at_k(ranking: Sequence[str], labels: Mapping[str, float], k: int = 10, rel_threshold: int = 1) -> float:
    """Fraction of relevant docs found in the top-k."""
    relevant = {d for d, g in labels.items() if g >= rel_threshold}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def reciprocal_rank(ranking: Sequence[str], labels: Mapping[str, float], rel_threshold: int = 1) -> float:
    """1 / rank of the first relevant doc (0 if none is ranked)."""
    for i, d in enumerate(ranking, 1):
        if labels.get(d, 0) >= rel_threshold:
            return 1.0 / i
    return 0.0


def rbo(ranking: Sequence[str], teacher: Sequence[str], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap (Webber et al., 2010) of two rankings, evaluated to the shorter depth."""
    depth = min(len(ranking), len(teacher))
    if depth == 0:
        return 0.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    overlap = 0
    total = 0.0
    for d in range(1, depth + 1):
        a, b = ranking[d - 1], teacher[d - 1]
        if a == b:
            overlap += 1
        else:
            overlap += (a in seen_b) + (b in seen_a)
        seen_a.add(a)
        seen_b.add(b)
        total += overlap / d * p**d
    return overlap / depth * p**depth + (1 - p) / p * total


def format_validity(text: str, open_tag: str = "<answer>", close_tag: str = "</answer>") -> float:
    """1.0 when ``text`` holds exactly one well-ordered ``open_tag … close_tag`` pair, else 0.0."""
    if text.count(open_tag) != 1 or text.count(close_tag) != 1:
        return 0.0
    return 1.0 if text.index(open_tag) < text.index(close_tag) else 0.0


def js_divergence(p: Sequence[float], q: Sequence[float], eps: float = 1e-12) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) of two non-negative score vectors, each normalised to sum 1.

    An all-zero vector is treated as uniform.
    """
    if len(p) != len(q):
        raise ValueError("distributions must have the same length")

    def norm(v: Sequence[float]) -> list[float]:
        v = [max(float(x), 0.0) for x in v]
        s = sum(v)
        return [x / s for x in v] if s > 0 else [1.0 / len(v)] * len(v)

    pn, qn = norm(p), norm(q)
    m = [(a + b) / 2 for a, b in zip(pn, qn, strict=True)]

    def kl(a: list[float], b: list[float]) -> float:
        return sum(x * math.log2(x / max(y, eps)) for x, y in zip(a, b, strict=True) if x > 0)

    return 0.5 * kl(pn, m) + 0.5 * kl(qn, m)
