"""trec_eval-exact metrics through ir-measures (pytrec_eval backend).

Conventions, stated once so reports can say them:

* Measures are named in ir-measures' (``nDCG@10``) or trec_eval's (``ndcg_cut_10``, ``recip_rank``, ``map``) spelling.
* Keys are ir-measures' canonical names (``nDCG@10``, ``RR@10``, ``R@100``, ``AP``, ``P@10``, ``Judged@10``). A
  relevance level N above 1 (TREC DL: grade >= 2) binarises every measure in :data:`BINARY_MEASURES`, as trec_eval's
  ``-l N`` does (AP, P, R, RR, Bpref, infAP, IPrec, NumRel, Rprec, Success, the set measures, ...), and the count of
  relevant retrieved documents (``NumRelRet``, ``num_rel_ret``); they are named as ir-measures prints them, e.g.
  ``AP(rel=2)``, ``Bpref(rel=2)``. nDCG always uses the graded judgements, and a measure given its own ``rel=`` keeps
  it.
* Every query in the qrels is evaluated; a qrels query absent from the run scores 0 on every measure (trec_eval
  ``-c``). Run queries without judgements are ignored. Ties are broken by doc id, as trec_eval does.
* The aggregate is the mean over the qrels queries, except for the counts (``NumRet``, ``NumRel``, ``NumRelRet``,
  ``NumQ``: trec_eval's ``num_ret``, ``num_rel``, ``num_rel_ret``, ``num_q``), which are summed over them as trec_eval
  and ir-measures (its ``SumAgg`` aggregator) sum them; their per-query values are the query's own counts.
* A cutoff that is not a whole number (``nDCG@10.5``, ``P@1e3``) or a cutoff (``nDCG@0``) or relevance level
  (``AP(rel=0)``) below 1 in a measure name is a :class:`~rerank.errors.ConfigError` naming the measure (pytrec_eval
  aborts the process on cutoff 0), and so is a parameter the measure does not take (``nDCG(rel=2)@10``,
  ``Judged(rel=2)@10``), naming those it takes, one it needs but lacks (``SDCG@10`` needs ``max_rel``) or of the wrong
  type (``BPM(T=1000)@10``: ``T`` is a float), and a measure no installed ir-measures provider computes
  (``RBP(p=0.8)``; ``alpha_nDCG@10`` without pyndeval).
* Input trec_eval would misread is a ``ValueError`` naming the query (and document): a document listed twice in one
  query's ranking, a NaN score, a grade that is not an integer or lies outside the signed 32-bit range, a grade above
  :data:`EVAL_GRADE_MAX` (trec_eval allocates memory for every level up to the largest grade); an id that is
  not a string or a score that is not a number is a ``TypeError``. Integral floats and numpy integers are grades;
  ``±inf`` scores rank first / last.
"""

from __future__ import annotations

import heapq
import math
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter

import ir_measures
import pytrec_eval
from ir_measures.measures.base import SumAgg
from ir_measures.providers.base import NOT_PROVIDED

from rerank.data.io import GRADE_MAX, GRADE_MIN
from rerank.errors import ConfigError
from rerank.types import Qrels, Run, sort_ranking

__all__ = ["BINARY_MEASURES", "DEFAULT_MEASURES", "EVAL_GRADE_MAX", "MetricResult", "check_qrels", "evaluate_run",
           "parse_measures"]

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10", "RR@10", "R@100", "AP", "P@10", "Judged@10")
#: the largest grade evaluated: trec_eval allocates memory for every level up to the largest grade (~8 bytes each:
#: 2**31 - 1 takes 16 GB and half a minute), so a grade above this is refused rather than left to exhaust memory
EVAL_GRADE_MAX = 1_000_000
#: the ir-measures measures (by ``NAME``) a relevance level binarises, as trec_eval's ``-l`` does: those whose ``rel``
#: parameter defaults to 1 (AP, P, R, RR, Bpref, infAP, IPrec, NumRel, Rprec, Success, SetP, ...). Not RBP (graded
#: without ``rel``), NumRet (every retrieved document without ``rel``; ``NumRelRet`` pins ``rel=1`` and follows the
#: level) or nDCG (graded, no ``rel``)
BINARY_MEASURES: frozenset[str] = frozenset(
    m.NAME for m in ir_measures.measures.registry.values()
    if "rel" in m.SUPPORTED_PARAMS and m.SUPPORTED_PARAMS["rel"].default == 1)


@dataclass
class MetricResult:
    """Aggregate (mean; a sum for the count measures such as ``NumRet``) and per-query values, plus which qrels queries
    the run lacked."""

    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]]
    num_queries: int
    missing_queries: list[str] = field(default_factory=list)


def _parse_one(name: str, rel_level: int) -> list[ir_measures.Measure]:
    """An ir-measures name (``nDCG@10``), else a trec_eval name (``ndcg_cut_10``, ``ndcg_cut.10,20``, ``recip_rank``,
    ``map``, ``P_10``, ``recall_100``), which may stand for several measures."""
    try:
        m = ir_measures.parse_measure(name)
    except (ValueError, NameError, SyntaxError, TypeError):
        try:
            found = list(ir_measures.parse_trec_measure(name)) if _trec_name_whole(name) else []
        except (ValueError, NameError, SyntaxError, TypeError, KeyError):
            found = []
        if not found:
            raise ConfigError(
                f"unknown measure {name!r}: give an ir-measures name (nDCG@10, RR@10, AP, R@100, P@10) or a trec_eval "
                f"one (ndcg_cut_10, recip_rank, map, recall_100, P_10)"
            ) from None
        for x in found:
            _check_params(name, x)
        # trec_eval's -l applies to every binary measure, including those its parser pins to rel=1 (num_rel_ret)
        return [_computable(name, _binary(x, rel_level, pinned=x.params.get("rel") == 1)) for x in found]
    _check_params(name, m)
    return [_computable(name, _binary(m, rel_level, pinned=_pinned_rel(name)))]


#: a trec_eval name with parameters: the measure, then ``.`` or ``_`` and numbers separated by commas
_TREC_WITH_PARAMS = re.compile(r"(?P<base>\w+?)[._][0-9]+(?:\.[0-9]+)?(?:,[0-9]+(?:\.[0-9]+)?)*")


def _trec_name_whole(name: str) -> bool:
    """Whether ``name`` is a trec_eval measure or nickname, or one followed by its numbers as a whole: ir-measures'
    parser reads a prefix and drops the rest (``P.1e3`` would be ``P@1``, ``P_10x`` ``P@10``)."""
    if name in pytrec_eval.supported_measures or name in pytrec_eval.supported_nicknames:
        return True
    match = _TREC_WITH_PARAMS.fullmatch(name)
    return match is not None and match.group("base") in pytrec_eval.supported_measures


def _pinned_rel(name: str) -> bool:
    """Whether the ir-measures name ``name`` is an alias that fixes ``rel`` itself (``NumRelRet`` is ``NumRet(rel=1)``)
    rather than naming it (``NumRet(rel=1)``, ``NumRelRet(rel=1)``): a relevance level replaces a fixed one."""
    alias = ir_measures.measures.registry.get(name.split("(")[0].split("@")[0].strip())
    return alias is not None and "rel" in alias.params and re.search(r"\brel\s*=", name) is None


def _check_params(name: str, m: ir_measures.Measure) -> None:
    """A cutoff that is not a whole number, or a cutoff or relevance level below 1, is refused: pytrec_eval aborts the
    process on cutoff 0 (a C assertion) and raises on ``rel=0``, neither means anything (``--rel-level`` is refused
    below 1 the same way) and ir-measures refuses ``@10.5``. A parameter the measure does not take (``nDCG(rel=2)@10``)
    is refused naming those it takes, and one it needs but lacks, or of the wrong type, as ir-measures' own check of
    the parameters (an ``assert`` inside its computation) would refuse it."""
    unsupported = [p for p in m.params if p not in m.SUPPORTED_PARAMS]
    if unsupported:
        takes = ", ".join(m.SUPPORTED_PARAMS) or "none"
        why = (" (nDCG always uses the graded judgements: a relevance level applies to binary measures only)"
               if m.NAME == "nDCG" and "rel" in unsupported else "")
        raise ConfigError(f"measure {name!r}: {m.NAME} does not take {', '.join(unsupported)}{why}; "
                          f"its parameters: {takes}")
    shown = name if name == str(m) else f"{name} ({m})"
    for param, what in (("cutoff", "cutoff"), ("rel", "relevance level (rel)")):
        value = m.params.get(param)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"measure {shown!r}: {what} must be a whole number, got {value!r}")
        if value < 1:
            raise ConfigError(f"measure {shown!r}: {what} must be >= 1, got {value}")
    for param, info in m.SUPPORTED_PARAMS.items():
        value = m.params.get(param, NOT_PROVIDED)
        if info.validate(value):
            continue
        if value is NOT_PROVIDED:
            raise ConfigError(f"measure {shown!r}: {m.NAME} needs {param} ({info.desc}), e.g. "
                              f"{m.NAME}({param}=...)")
        takes = (f"one of {', '.join(map(repr, info.choices))}" if info.choices is not NOT_PROVIDED
                 else f"a {getattr(info.dtype, '__name__', 'value')}")
        like = f" ({param}={float(value)!r})" if info.dtype is float and isinstance(value, int) else ""
        raise ConfigError(f"measure {shown!r}: {param}={value!r} is not valid for {m.NAME} ({info.desc}): it takes "
                          f"{takes}{like}")


def _binary(m: ir_measures.Measure, rel_level: int, pinned: bool) -> ir_measures.Measure:
    """``m`` at relevance level ``rel_level`` when that is above 1 and ``m`` is binary (:data:`BINARY_MEASURES`)
    without a ``rel`` of its own, or its ``rel`` is ``pinned`` by the name (``NumRelRet``, trec_eval's names)."""
    if rel_level > 1 and (pinned or (m.NAME in BINARY_MEASURES and "rel" not in m.params)):
        return m(rel=rel_level)
    return m


def _computable(name: str, m: ir_measures.Measure) -> ir_measures.Measure:
    """``m`` when it is computed here (pytrec_eval directly, ``Judged@k``) or an installed ir-measures provider
    computes it (at its relevance level); else a :class:`ConfigError` before any work, naming a provider to install
    where ir-measures knows one."""
    if _trec_spec(m) is not None or _is_judged_at(m) or ir_measures.DefaultPipeline.supports(m):
        return m
    shown = name if name == str(m) else f"{name} ({m})"
    would = [p for p in ir_measures.DefaultPipeline.providers if not p.is_available() and p.supports(m)]
    hint = "; ".join(f"{p.NAME}: {p.install_instructions() or 'install it'}" for p in would)
    raise ConfigError(f"measure {shown!r}: no installed ir-measures provider computes it"
                      f"{f' ({hint})' if hint else ''}: drop it or use another")


def parse_measures(names: Sequence[str], rel_level: int = 1) -> list[tuple[str, ir_measures.Measure]]:
    """Parse measure names (ir-measures or trec_eval spelling) into (canonical ir-measures name, measure), without
    repeats; binary measures get ``rel=rel_level`` when it is above 1. A single string is one name (``"nDCG@10"``)."""
    if isinstance(names, str):
        names = [names]
    if isinstance(rel_level, bool) or not isinstance(rel_level, int) or rel_level < 1:
        raise ConfigError(f"rel_level must be an integer >= 1 (the lowest grade counted relevant), got {rel_level!r}")
    out: dict[str, ir_measures.Measure] = {}
    for name in names:
        for m in _parse_one(name.strip() if isinstance(name, str) else name, rel_level):
            out.setdefault(str(m), m)
    return list(out.items())


def evaluate_run(
    run: Run,
    qrels: Qrels,
    measures: Sequence[str] = DEFAULT_MEASURES,
    rel_level: int = 1,
) -> MetricResult:
    """Score ``run`` against ``qrels``; the mean is over all qrels queries (missing ones count 0).

    trec_eval's measures go to pytrec_eval in one call per relevance level, fed the run's own scores (trec_eval
    orders by score, ties by doc id descending, as :func:`sort_ranking` does); ``RR@k`` is cut from its reciprocal
    rank and ``Judged@k`` counted against the k-th largest score, so the whole costs little more than one pytrec_eval
    call. Any other measure goes through ir-measures, on scores replaced by ``n, n - 1, ..., 1`` in trec_eval order
    (its RR/Judged providers would break ties by doc id ascending; Compat scores a document the run lacks 0). Input
    that trec_eval would misread raises ``ValueError`` (or, for a wrong type, ``TypeError``) naming the query and
    document (see the module notes). ``measures`` may be a single name (``"nDCG@10"``); the count measures
    (``NumRet``) are summed over the queries, not averaged.
    """
    parsed = parse_measures(measures, rel_level)
    names = [name for name, _ in parsed]
    for what, value, form in (("run", run, "{query id: [(doc id, score), ...]}"),
                              ("qrels", qrels, "{query id: {doc id: grade}}")):
        if not isinstance(value, Mapping):
            raise TypeError(f"{what} must be a mapping {form}, got {type(value).__name__}")
    if not qrels:
        raise ValueError("qrels: no judged queries: every measure would be undefined (is it the wrong split, or were "
                         "the queries filtered by ids of another type?)")
    _check_ids(qrels, "qrels")
    qids = sorted(qrels)
    zeros = dict.fromkeys(names, 0.0)
    per_query: dict[str, dict[str, float]] = {q: zeros.copy() for q in qids}
    qrels_dict = {q: qrels[q] for q in qids}
    _check_grades(qrels_dict)
    lists = {q: run[q] for q in qids if run.get(q)}
    if len(lists) < len(run):  # queries the qrels lack: an int id among them would silently never match
        _check_ids(run, "run")
    trec: dict[int, dict[str, tuple[str, str, int | None]]] = {}  # relevance level -> name -> (measure, key, RR cut)
    judged: dict[str, int] = {}
    other: list[tuple[str, ir_measures.Measure]] = []
    for name, m in parsed:
        spec = _trec_spec(m)
        if spec is not None:  # nDCG does not depend on the relevance level: it joins the binary measures' call
            trec.setdefault(rel_level if m.NAME == "nDCG" else int(m.params.get("rel", 1)), {})[name] = spec
        elif _is_judged_at(m):
            judged[name] = m.params["cutoff"]
        else:
            other.append((name, m))
    if lists:
        run_dict, judged_values = _run_rows(lists, qrels_dict, judged)
        for level, specs in trec.items():
            results = _pytrec_eval(qrels_dict, {request for request, _, _ in specs.values()}, level, run_dict)
            plain = [(name, key) for name, (_, key, cut) in specs.items() if cut is None]
            cut = [(name, key, c) for name, (_, key, c) in specs.items() if c is not None]
            plain_names, plain_values = [n for n, _ in plain], itemgetter(*[key for _, key in plain]) if plain else None
            for q, values in results.items():
                row = per_query[q]
                if plain_values is not None:
                    got = plain_values(values)
                    row.update(zip(plain_names, got if len(plain) > 1 else (got,)))
                for name, key, c in cut:  # RR@k: the reciprocal rank of a first relevant document within the top k
                    v = values[key]
                    row[name] = v if v > 0 and round(1.0 / v) <= c else 0.0
        for name, values in judged_values.items():
            for q, v in values.items():
                per_query[q][name] = v
        if other:
            _other_measures(other, qrels_dict, lists, per_query)
    missing = [q for q in qids if q not in lists]
    if missing:
        _count_missing(parsed, missing, qrels_dict, per_query)
    n = len(qids)
    summed = {name for name, m in parsed if isinstance(m.aggregator(), SumAgg)}  # counts: trec_eval sums them
    aggregate = {name: sum(map(itemgetter(name), per_query.values())) / (1 if name in summed else n)
                 for name in names}
    return MetricResult(aggregate=aggregate, per_query=per_query, num_queries=n, missing_queries=missing)


def _count_missing(parsed: list[tuple[str, ir_measures.Measure]], missing: list[str], qrels: Qrels,
                   per_query: dict[str, dict[str, float]]) -> None:
    """A qrels query the run lacks still counts as a query (``NumQ`` 1) with its relevant documents (``NumRel``), as
    trec_eval ``-c`` counts it; its other measures stay 0."""
    for name, m in parsed:
        if m.NAME == "NumQ":
            for q in missing:
                per_query[q][name] = 1.0
        elif m.NAME == "NumRel":
            level = int(m.params.get("rel", 1))
            for q in missing:
                per_query[q][name] = float(sum(1 for g in qrels[q].values() if int(g) >= level))


def _other_measures(other: list[tuple[str, ir_measures.Measure]], qrels: Qrels,
                    lists: Mapping[str, Sequence[tuple[str, float]]], per_query: dict[str, dict[str, float]]) -> None:
    """The measures pytrec_eval does not compute here, through ir-measures, into ``per_query``. Query ids are passed
    as numbers (``1``, ``2``, ...) and mapped back, as some providers (gdeval's ``ERR@k``) read only numeric ids; a
    provider that fails anyway (perl missing, a grade gdeval refuses, Accuracy's division by zero when the top k hold
    no non-relevant document) is a :class:`ConfigError` naming the measures."""
    by_measure = {m: name for name, m in other}
    number = {q: str(i) for i, q in enumerate(sorted(qrels), 1)}
    back = {v: q for q, v in number.items()}
    ranked = {number[q]: _rank_scores(lst) for q, lst in lists.items()}
    judged = {number[q]: docs for q, docs in qrels.items()}
    try:
        for metric in ir_measures.iter_calc([m for _, m in other], judged, ranked):
            per_query[back[metric.query_id]][by_measure[metric.measure]] = float(metric.value)
    except _PROVIDER_ERRORS as e:
        failing = [(name, m) for name, m in other if _fails(m, judged, ranked)] if len(other) > 1 else other
        failing = failing or other
        shown = (f"{e.cmd[0]} exited with status {e.returncode}" if isinstance(e, subprocess.CalledProcessError)
                 else (str(e).splitlines() or [type(e).__name__])[0])
        gdeval = any(m.NAME == "ERR" or m["dcg"] == "exp-log2" for _, m in failing if m.NAME in ("ERR", "nDCG"))
        why = "; gdeval's ERR and nDCG take grades 0-4 and need perl" if gdeval else ""
        them = "them" if len(failing) > 1 else "it"
        raise ConfigError(f"measure {', '.join(name for name, _ in failing)}: ir-measures could not compute {them} "
                          f"({shown}{why}): drop {them} or use another") from None


_PROVIDER_ERRORS = (subprocess.CalledProcessError, OSError, RuntimeError, ZeroDivisionError)


def _fails(m: ir_measures.Measure, qrels: Mapping[str, Mapping[str, int]],
           run: Mapping[str, Mapping[str, float]]) -> bool:
    """Whether ir-measures fails to compute ``m`` alone (to name the measure that failed among several)."""
    try:
        for _ in ir_measures.iter_calc([m], qrels, run):
            pass
    except _PROVIDER_ERRORS:
        return True
    return False


def _rank_scores(lst: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Scores ``n, n - 1, ..., 1`` down one ranking in trec_eval order: positive, so a document the run lacks, which
    a provider scores 0 (Compat's ideal ranking), ranks below every retrieved one, as in the run itself."""
    ranked = sort_ranking(lst)
    return {d: float(len(ranked) - i) for i, (d, _) in enumerate(ranked)}


#: ir-measures name -> (trec_eval measure with a cutoff, without one); RR's cutoff is applied to ``recip_rank``.
#: NumRel is here as ir-measures computes it at rel=1 only (pytrec_eval's num_rel follows the relevance level)
_TREC_NAMES = {"nDCG": ("ndcg_cut", "ndcg"), "P": ("P", None), "R": ("recall", None), "AP": ("map_cut", "map"),
               "RR": (None, "recip_rank"), "NumRel": (None, "num_rel")}


def _trec_spec(m: ir_measures.Measure) -> tuple[str, str, int | None] | None:
    """(pytrec_eval measure, its result key, RR cutoff) for a measure pytrec_eval computes as ir-measures does."""
    if m.NAME not in _TREC_NAMES or not set(m.params) <= {"cutoff", "rel"} or (m.NAME == "nDCG" and "rel" in m.params):
        return None
    with_cut, without = _TREC_NAMES[m.NAME]
    cutoff = m.params.get("cutoff")
    if m.NAME == "RR":
        return "recip_rank", "recip_rank", (int(cutoff) if cutoff is not None else None)
    if cutoff is None:
        return (without, without, None) if without else None
    return f"{with_cut}.{int(cutoff)}", f"{with_cut}_{int(cutoff)}", None


def _is_judged_at(m: ir_measures.Measure) -> bool:
    return m.NAME == "Judged" and set(m.params) == {"cutoff"} and isinstance(m.params["cutoff"], int)


def check_qrels(qrels: Qrels) -> None:
    """The checks :func:`evaluate_run` makes of ``qrels`` (string query ids, integral grades trec_eval can hold), for
    callers that want them before expensive work: the same ``TypeError`` / ``ValueError`` naming the judgement."""
    _check_ids(qrels, "qrels")
    _check_grades(qrels)


def _check_ids(mapping: Iterable[object], what: str) -> None:
    """Query ids are strings (trec_eval's are; an int id would never match a string one)."""
    if set(map(type, mapping)) <= {str}:
        return
    for q in mapping:
        if not isinstance(q, str):
            raise TypeError(f"{what}: query id {q!r} is {type(q).__name__}, not a string")


def _grade(q: str, d: object, g: object) -> int:
    """Grade ``g`` of document ``d`` for query ``q`` as an int: integral, in the signed 32-bit range and at most
    :data:`EVAL_GRADE_MAX`."""
    try:
        value = int(g)  # type: ignore[call-overload]
        integral = value == g
    except (TypeError, ValueError, OverflowError):
        integral = False
    shown = repr(g) if isinstance(g, (str, bytes)) else str(g)  # numpy's repr is np.float64(0.5)
    if not integral:
        raise ValueError(f"qrels: query {q!r}, document {d!r}: relevance grade {shown} is not an integer")
    if not GRADE_MIN <= value <= GRADE_MAX:
        raise ValueError(f"qrels: query {q!r}, document {d!r}: relevance grade {shown} is outside the signed 32-bit "
                         f"range [{GRADE_MIN}, {GRADE_MAX}] trec_eval reads")
    if value > EVAL_GRADE_MAX:
        raise ValueError(f"qrels: query {q!r}, document {d!r}: relevance grade {shown} is above {EVAL_GRADE_MAX:,}: "
                         f"trec_eval allocates memory for every grade level up to the largest (2**31 - 1 takes 16 GB); "
                         f"rescale the judgements to small integers")
    return value


def _grade_ok(g: object) -> bool:
    """Whether ``g`` is an integral grade :func:`_grade` accepts (without naming where it is)."""
    if type(g) is int:
        return GRADE_MIN <= g <= EVAL_GRADE_MAX
    try:
        _grade("", "", g)
    except ValueError:
        return False
    return True


def _check_grades(qrels: Mapping[str, Mapping[str, object]]) -> None:
    """Every grade integral, within trec_eval's signed 32-bit range (0.5 would be truncated, and beyond the range
    pytrec_eval silently scores 0, or crashes) and at most :data:`EVAL_GRADE_MAX`: the distinct grades are checked,
    and only when one fails are the judgements scanned to name it. A grade of another number type that is equal to
    one checked (``1.0``, numpy's ``1``) is converted where pytrec_eval refuses it (:func:`_pytrec_eval`)."""
    try:
        distinct = set(chain.from_iterable(map(dict.values, qrels.values())))  # type: ignore[arg-type]
    except TypeError:  # not dicts, or an unhashable grade
        distinct = None
    if distinct is not None and all(map(_grade_ok, distinct)):
        return
    for q, judged in qrels.items():
        if not isinstance(judged, Mapping):
            raise TypeError(f"qrels: query {q!r}: expected a mapping {{doc id: grade}}, got {type(judged).__name__}")
        for d, g in judged.items():
            _grade(q, d, g)


def _run_rows(lists: Mapping[str, Sequence[tuple[str, float]]], qrels: Qrels,
              judged: Mapping[str, int]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Each ranked list as the ``{doc id: score}`` pytrec_eval takes, and each ``Judged@k`` of ``judged`` (name -> k)
    per query, computed while the row is in cache (a second pass over 10k+ rows costs half again: it is memory-bound).

    A document listed twice (the dicts hold fewer entries than the lists) or a NaN score (the sum of the scores is
    NaN) is a ``ValueError`` naming the query and document, a score that is not a number a ``TypeError``. ``+inf``
    with ``-inf`` also sums to NaN: the scan that names the document finds none and lets them pass."""
    rows: dict[str, dict[str, float]] = {}
    shares: dict[str, dict[str, float]] = {name: {} for name in judged}
    total = 0.0
    try:
        for q, lst in lists.items():
            rows[q] = row = dict(lst)
            total = sum(row.values(), total)
            relevant = qrels.get(q)
            if relevant:
                for name, k in judged.items():
                    shares[name][q] = _judged_share(row, relevant, k)
    except (TypeError, ValueError):  # a score that does not add up or compare (the scan below names it, or it is
        _check_pairs(lists)  # another number), or an entry that is not a (doc id, score) pair
        rows, total, shares = {q: dict(lst) for q, lst in lists.items()}, math.nan, {}
    if sum(map(len, rows.values())) != sum(map(len, lists.values())):
        _check_pairs(lists)
        for q, lst in lists.items():
            if len(rows[q]) != len(lst):
                _raise_duplicate(q, lst)
    if math.isnan(total):
        _check_pairs(lists)
        for q, lst in lists.items():
            for d, s in lst:
                try:
                    nan = math.isnan(s)
                except TypeError:
                    raise TypeError(f"run: query {q!r}, document {d!r}: score {s!r} is not a number") from None
                if nan:
                    raise ValueError(f"run: query {q!r}, document {d!r}: score is NaN")
    if len(shares) < len(judged):  # the scores passed the scan but not the sum: another number type (Decimal)
        shares = {name: {q: _judged_share(row, qrels[q], k) for q, row in rows.items() if qrels.get(q)}
                  for name, k in judged.items()}
    return rows, shares


def _check_pairs(lists: Mapping[str, Sequence[tuple[str, float]]]) -> None:
    """Each query's ranking is ``(doc id, score)`` pairs (or a ``{doc id: score}`` mapping): a bare doc id string
    would be read as a pair of its characters, naming a document that does not exist; a ``TypeError`` says so."""
    for q, lst in lists.items():
        if isinstance(lst, Mapping):
            continue
        if isinstance(lst, (str, bytes)) or not isinstance(lst, Iterable):
            raise TypeError(f"run: query {q!r}: expected a ranking of (doc id, score) pairs, got {lst!r}")
        for item in lst:
            if isinstance(item, (str, bytes)):
                raise TypeError(f"run: query {q!r}: expected (doc id, score) pairs, got the string {item!r} (give "
                                "each document its score, e.g. RankedResult.to_run())")
            if not isinstance(item, Sequence) or len(item) != 2:
                raise TypeError(f"run: query {q!r}: expected (doc id, score) pairs, got {item!r}")


def _raise_duplicate(q: str, lst: Sequence[tuple[str, float]]) -> None:
    seen: set[str] = set()
    for d, _ in lst:
        if d in seen:
            raise ValueError(f"run: query {q!r}: document {d!r} is listed twice")
        seen.add(d)


def _pytrec_eval(qrels: Qrels, wanted: set[str], level: int, run: dict[str, dict[str, float]]) -> dict:
    """pytrec_eval on the qrels as given; grades or scores of other number types (numpy's) are converted first (the
    grades were checked by :func:`_check_grades`); a document id that is not a string is a ``TypeError``."""
    try:
        return pytrec_eval.RelevanceEvaluator(qrels, wanted, relevance_level=level).evaluate(run)
    except TypeError:
        qrels = {q: {d: _grade(q, d, g) for d, g in j.items()} for q, j in qrels.items()}
        run = {q: {d: float(s) for d, s in r.items()} for q, r in run.items()}
        for what, table in (("qrels", qrels), ("run", run)):
            for q, docs in table.items():
                for d in docs:
                    if not isinstance(d, str):
                        raise TypeError(f"{what}: query {q!r}: document id {d!r} is {type(d).__name__}, "
                                        "not a string") from None
        return pytrec_eval.RelevanceEvaluator(qrels, wanted, relevance_level=level).evaluate(run)


def _judged_share(row: dict[str, float], judged: Mapping[str, object], k: int) -> float:
    """ir-measures' ``Judged@k`` of one query: the share of judged documents among the top ``min(k, len)`` of ``row``
    in trec_eval order.

    Only the top-k *set* matters: the documents scoring at least the k-th largest score (a float sort, linear on a
    list already in score order), unless that score is shared beyond the top k; then, among the tied, the largest doc
    ids (trec_eval's tie order)."""
    if len(row) <= k:
        return sum(map(row.__contains__, judged)) / len(row)
    scores = sorted(row.values(), reverse=True)
    kth = scores[k - 1]
    if scores[k] < kth:
        return sum(1 for v in map(row.get, judged) if v is not None and v >= kth) / k
    above = [d for d, v in row.items() if v > kth]
    top = above + heapq.nlargest(k - len(above), [d for d, v in row.items() if v == kth])
    return sum(map(judged.__contains__, top)) / k
