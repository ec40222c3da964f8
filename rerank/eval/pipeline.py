"""``rerank eval``: dataset -> first stage -> (reranker) -> metrics -> report, written atomically.

Ranking conventions (also stated in ``report.md``):

* A first-stage run is ordered as trec_eval orders it (score descending, ties by doc id descending) and its top-k is
  taken in that order.
* When reranking, ``run.trec`` holds the reranked top-k followed by the rest of the first-stage list in its order,
  with rank-derived scores (``len - rank + 1``) so trec_eval reproduces exactly this order; the rerankers' own scores
  are in ``scores.jsonl``, and a retriever's own run is kept in ``first_stage.trec``. Without a reranker,
  ``run.trec`` is the first-stage run with its own scores (written once: there is no ``first_stage.trec`` copy).
* Documents of a given run that are not in the corpus cannot be reranked: they are reported, kept after the
  reranked top-k, and counted in ``metrics.json``.

``workers`` > 1 reranks in that many processes (:mod:`rerank.parallel`), each loading its own copy of the reranker,
with the query chunks of one process, so the run and the scores are the same as with one.

A reranker given (or shared by a suite's datasets) keeps counting over its life; ``metrics.json`` reports what this
run counted: its parse statistics and the :data:`COUNTERS` of its description (forward passes, LLM cache hits).

Everything is checked before the expensive work: the config's numbers, the measures, the dataset's queries and
qrels, a given first-stage run, and the reranker (built, options and model) all come before the first stage
retrieves. The result folder holds the files of one run only: ``metrics.json`` is removed first and written last
(it marks a complete run), and the other files this command writes (:data:`OUTPUT_FILES`) that this run does not
write are removed; other files in the folder are left alone. Secrets in the config are written as ``<redacted>``.

Reranking holds only the documents it reranks, not the corpus: one pass over ``corpus.jsonl`` checks every line (a
malformed line anywhere is an error naming it) and keeps the candidates' documents, after retrieval (a given run's
candidates are known before the reranker loads, and are read then); a corpus already in memory is not read again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import importlib.metadata
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rerank.config import redact_argv, to_dict
from rerank.data.datasets import Dataset, check_max_queries, resolve_dataset
from rerank.data.io import DUPLICATE_POLICIES, CorpusPart, check_ranked, read_run, write_run
from rerank.errors import ConfigError, DataFormatError, RerankError
from rerank.eval.metrics import DEFAULT_MEASURES, check_qrels, evaluate_run, parse_measures
from rerank.eval.report import render_report
from rerank.heads.base import CallWarnings, Reranker, RerankStats, described_model, described_value
from rerank.parallel import WorkerPool
from rerank.retrieval.base import FirstStage, build_retriever, progress_options
from rerank.types import Candidate, Qrels, Query, RankedResult, Run
from rerank.utils.files import STAMP_HASH_LIMIT, atomic_write, hash_obj, path_stamp, resolved_path, write_json

__all__ = ["COUNTERS", "OUTPUT_FILES", "EvalConfig", "check_given_reranker", "check_llm_io", "check_run_docs",
           "check_run_overlap", "command_line", "data_inputs", "file_input", "model_input", "provenance",
           "reranker_record", "rerank_run", "run_eval", "versions", "warn_rel_level"]

#: every file ``run_eval`` may write into its output folder (a re-run removes those it does not write again)
OUTPUT_FILES = ("run.trec", "first_stage.trec", "scores.jsonl", "report.md", "metrics.json")

log = logging.getLogger(__name__)

#: the registered name of the client of a rerank server (:mod:`rerank.client`): its model and backend are the server's
REMOTE = "remote"


@dataclass
class EvalConfig:
    """Everything ``rerank eval`` needs; serialised into ``metrics.json``."""

    dataset: str
    output: str | None = None
    split: str = "test"
    data_root: str | None = None
    retriever: str | None = None
    retriever_options: dict[str, Any] = field(default_factory=dict)
    first_stage: str | None = None
    reranker: str | None = None
    model: str | None = None
    backend: str = "transformers"
    reranker_options: dict[str, Any] = field(default_factory=dict)
    top_k: int = 100
    depth: int = 1000
    max_queries: int | None = None
    measures: Sequence[str] = DEFAULT_MEASURES
    rel_level: int | None = None
    batch_queries: int = 8
    qrels_duplicates: str = "error"
    llm_cache: bool = True  # LLM heads' calls are cached (rerank.backends.cache); a re-run makes no model calls
    log_llm_io: str | None = None  # JSONL of every LLM prompt and raw response
    workers: int = 1  # reranking processes, each with its own copy of the reranker (rerank.parallel)
    interpolate: float | None = None  # weight of the reranker's scores against the first stage's (rerank_run)

    def __post_init__(self) -> None:
        for name in ("top_k", "depth", "batch_queries", "workers"):
            check_positive_int(getattr(self, name), name.replace("_", "-"))
        check_max_queries(self.max_queries)
        check_interpolate(self.interpolate)  # that a reranker comes with it is checked by check_given_reranker
        if self.rel_level is not None and (not isinstance(self.rel_level, int) or self.rel_level < 1):
            raise ConfigError(f"rel-level must be an integer >= 1, got {self.rel_level!r}")
        if self.qrels_duplicates not in DUPLICATE_POLICIES:
            raise ConfigError(f"qrels_duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, "
                              f"got {self.qrels_duplicates!r}")
        if isinstance(self.measures, str):
            raise ConfigError(f"measures must be a list of names, got the string {self.measures!r}")
        parse_measures(self.measures)


def check_positive_int(value: Any, name: str) -> None:
    """``value`` is an int >= 1 (a bool is not); ``name`` is how the error names it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def check_interpolate(alpha: float | None) -> None:
    """``interpolate`` is None or a number in [0, 1]."""
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not 0.0 <= alpha <= 1.0):
        raise ConfigError(f"interpolate must be a number in [0, 1], got {alpha!r}")


def _examples(ids: Collection[str], n: int = 3) -> str:
    """The first ``n`` of ``ids`` in sorted order, for a message (``a, b, c, …``)."""
    return ", ".join(sorted(ids)[:n]) + (", …" if len(ids) > n else "")


def check_run_overlap(run: Run, query_ids: Collection[str], run_name: str, queries_name: str) -> None:
    """A first-stage run ranking none of ``query_ids`` cannot be right (every metric would be 0, every output ranking
    empty): raise naming both, with example ids of each. ``run_name``: how the run is named (``--first-stage R``);
    ``queries_name``: the queries (``the 300 test queries of dataset scifact``)."""
    if not any(q in run for q in query_ids):
        raise ConfigError(
            f"{run_name} shares no query id with {queries_name} (the run's ids: {_examples(run)}; the queries' ids: "
            f"{_examples(query_ids)}): is it a run over another dataset?"
        )


def check_run_docs(run: Run, doc_ids: Collection[str], run_name: str, docs_name: str) -> None:
    """A run naming none of ``doc_ids`` (the judged documents, the corpus) cannot be right: every measure would be a
    silent 0. Raise naming both, with example ids of each, so a prefix or padding mismatch shows; a partial overlap
    passes. The usual run names a known document first, so the check costs nothing there."""
    for lst in run.values():
        for d, _ in lst:
            if d in doc_ids:
                return
    if not any(run.values()) or not doc_ids:
        return
    run_docs = {d for lst in run.values() for d, _ in lst}
    raise ConfigError(
        f"{run_name} shares no document id with {docs_name} (the run's ids: {_examples(run_docs)}; theirs: "
        f"{_examples(doc_ids)}): are the ids written differently (a prefix, padding), or is it a run over another "
        "collection?"
    )


def warn_rel_level(qrels: Qrels, rel_level: int, measures: Sequence[str], chosen: bool, qrels_name: str,
                   fix: str | None = None) -> bool:
    """Warn (and return True) when the relevance level of the binary measures is likely not the one meant: it was not
    ``chosen`` (no registry entry, ``irds.json`` manifest or ``--rel-level`` set it: the default 1) while the qrels
    grade above 1, as TREC DL's do (which count grade >= 2 relevant), or it lies above every grade of the qrels, so
    every binary measure is 0. Nothing is said when no measure asked for depends on the level (nDCG alone). ``fix``:
    what the warning tells the user to do, for a caller without ``--rel-level`` (default: give ``--rel-level``)."""
    if [n for n, _ in parse_measures(measures, 2)] == [n for n, _ in parse_measures(measures, 1)]:
        return False
    top = max((max(judged.values()) for judged in qrels.values() if judged), default=None)
    if top is None:
        return False
    if rel_level > top:
        log.warning("relevance level %d for binary measures%s is above every grade of %s (the largest is %s): every "
                    "binary measure (AP, RR, P, R, ...) is 0; %s", rel_level, "" if fix else " (--rel-level)",
                    qrels_name, top, fix or "give a lower --rel-level")
        return True
    if not chosen and rel_level == 1 and top > 1:
        log.warning("%s grades up to %s and no relevance level is set for it: binary measures (AP, RR, P, R, ...) "
                    "count grade >= 1 as relevant; TREC DL counts grade >= 2 (%s)", qrels_name, top,
                    fix or "give --rel-level 2 for it, or --rel-level 1 to keep this and silence the warning")
        return True
    return False


#: (dataset folder, relevance level) pairs whose level was warned about: a suite or leaderboard warns once for each
_REL_LEVEL_WARNED: set[tuple[str, int]] = set()


def _check_given_run(run: Run, queries: dict[str, Query], cfg: EvalConfig, dataset: Dataset) -> None:
    """The given first-stage run ranks at least one evaluated query (else an error); the evaluated queries it does not
    rank are counted as 0, and the log says so."""
    first = "first " if cfg.max_queries is not None else ""
    kept = f" (--max-queries {cfg.max_queries})" if cfg.max_queries is not None else ""
    what = f"the {first}{len(queries)} {cfg.split} queries of dataset {dataset.name}{kept}"
    check_run_overlap(run, queries, f"--first-stage {cfg.first_stage}", what)
    absent = [q for q in queries if q not in run]
    if absent:
        log.warning("%d of %s have no ranking in --first-stage %s (e.g. %s): they count as 0 in every measure",
                    len(absent), what, cfg.first_stage, _examples(absent))


def _select(run: Run, qids: Sequence[str]) -> Run:
    return {q: run[q] for q in qids if q in run}


def _ranked(results: list[RankedResult]) -> list[list[tuple[str, float]]]:
    return [[(r.doc.id, r.score) for r in res.results] for res in results]


def rerank_run(
    reranker: Reranker | WorkerPool,
    queries: dict[str, Query],
    run: Run,
    corpus: dict[str, Any],
    top_k: int,
    batch_queries: int = 8,
    progress: bool = True,
    stats: RerankStats | None = None,
    interpolate: float | None = None,
) -> tuple[Run, dict[str, list[tuple[str, float]]], dict[str, list[str]]]:
    """Rerank each query's top-``top_k`` candidates, ``batch_queries`` queries per call; returns (final run, reranker
    scores, unknown doc ids). ``reranker`` may be a pool of reranker workers (:func:`reranker_pool`): the same
    chunks are scored there, in parallel, and their parse statistics added to ``stats`` (the workers hold back their
    per-call warnings: :func:`run_eval` logs one with the run's totals).

    ``interpolate`` (alpha in [0, 1]): the top-k are ordered by ``alpha * minmax(reranker score) + (1 - alpha) *
    minmax(first-stage score)`` per query instead of by the reranker alone (score interpolation: a reranker that is
    good but not better than its first stage everywhere keeps what the first stage knew); the returned reranker
    scores stay the reranker's own."""
    check_positive_int(top_k, "top_k")
    check_interpolate(interpolate)
    if interpolate is not None:
        from rerank.retrieval.hybrid import interpolate_fuse
    final: Run = {}
    scores: dict[str, list[tuple[str, float]]] = {}
    unknown: dict[str, list[str]] = {}
    qids = [q for q in queries if run.get(q)]
    chunks: list[tuple[list[str], list[list[Candidate]]]] = []
    for start in range(0, len(qids), batch_queries):
        chunk = qids[start : start + batch_queries]
        cand_lists: list[list[Candidate]] = []
        for q in chunk:
            head = run[q][:top_k]
            missing = [d for d, _ in head if d not in corpus]
            if missing:
                unknown[q] = missing
            cand_lists.append([Candidate(corpus[d], s) for d, s in head if d in corpus])
        chunks.append((chunk, cand_lists))

    def finish(chunk: list[str], ranked: list[list[tuple[str, float]]]) -> None:
        for q, res in zip(chunk, ranked, strict=True):  # a NaN score is refused by Reranker.rerank_batch
            tail = unknown.get(q, []) + [d for d, _ in run[q][top_k:]]
            if interpolate is None:
                head = [d for d, _ in res]
            else:
                first = dict(run[q][:top_k])
                fused = interpolate_fuse({q: res}, {q: [(d, first[d]) for d, _ in res]}, interpolate)
                head = [d for d, _ in fused[q]]
            order = head + tail
            n = len(order)
            final[q] = [(d, float(n - i)) for i, d in enumerate(order)]
            scores[q] = res

    bar = tqdm(total=len(qids), desc="rerank", unit="q", disable=not progress)
    if isinstance(reranker, WorkerPool):
        outs = reranker.map(_rerank_chunk, [([queries[q] for q in c], cl) for c, cl in chunks],
                            done=lambda i: bar.update(len(chunks[i][0])))
        for (chunk, _), (ranked, chunk_stats) in zip(chunks, outs, strict=True):
            finish(chunk, ranked)
            if stats is not None:
                stats.merge(chunk_stats)
    else:
        for chunk, cand_lists in chunks:
            finish(chunk, _ranked(reranker.rerank_batch([queries[q] for q in chunk], cand_lists)))
            bar.update(len(chunk))
    bar.close()
    return final, scores, unknown


def load_reranker(cfg: EvalConfig) -> Reranker:
    """The reranker ``cfg`` names, its LLM calls cached (and logged) as ``cfg`` says."""
    from rerank.backends.cache import llm_cache_scope

    with llm_cache_scope(cfg.llm_cache, cfg.log_llm_io):
        return Reranker.load(cfg.reranker, model=cfg.model, backend=cfg.backend, **cfg.reranker_options)


def _rerank_chunk(reranker: Reranker, chunk: tuple[list[Query], list[list[Candidate]]]
                  ) -> tuple[list[list[tuple[str, float]]], RerankStats]:
    """A worker's part of :func:`rerank_run`: one chunk's rankings and the parse statistics it added."""
    reranker.stats = RerankStats()
    with reranker.warning_policy(CallWarnings(hold=True)):  # the parent warns once with the run's totals (run_eval)
        return _ranked(reranker.rerank_batch(*chunk)), reranker.stats


def _warn_run_outputs(method: str, stats: RerankStats) -> None:
    """One warning for a run's model outputs that failed to parse or were repaired and its prompts fitted to the
    context, the per-call warnings' totals (held back while it reranks)."""
    parts = []
    if stats.parse_failures or stats.repaired:
        first = f" (first: {stats.failure_examples[0][:120]!r})" if stats.failure_examples else ""
        parts.append(f"{stats.parse_failures} of {stats.outputs} model outputs failed to parse and {stats.repaired} "
                     f"were repaired{first}")
    if stats.fitted_prompts:
        parts.append(f"{stats.fitted_prompts} prompts were fitted to the model's context, with "
                     f"{stats.shortened_passages} passage cut(s) below max_doc_tokens and {stats.shortened_queries} "
                     "query cut(s) below max_query_tokens, one per passage or query per prompt it is cut in")
    if parts:
        log.warning("%s in this run: %s (metrics.json 'parse' and report.md count them; how heads repair and fit "
                    "prompts: docs/backends.md)", method, "; ".join(parts))


def _prepare(reranker: Reranker, job: tuple[EvalConfig, AbstractSet[str]]) -> None:
    """A worker's :meth:`Reranker.prepare_corpus` (it reads the dataset itself)."""
    cfg, doc_ids = job
    dataset = resolve_dataset(cfg.dataset, cfg.data_root, qrels_duplicates=cfg.qrels_duplicates)  # type: ignore[arg-type]
    reranker.prepare_corpus(dataset, doc_ids)


def _describe(reranker: Reranker, _: Any) -> dict[str, Any]:
    """A worker's :meth:`Reranker.describe`, taken after reranking (it counts the run's LLM cache hits)."""
    return reranker.describe()


#: the counters a reranker's :meth:`~Reranker.describe` reports (key paths): setwise forward passes, LLM cache hits.
#: They run over the reranker's life; a run reports its own part (:func:`_counted_since`).
COUNTERS: tuple[tuple[str, ...], ...] = (("forward_passes",), ("backend", "llm_cache_hits"))


def _counter(desc: dict[str, Any], path: tuple[str, ...]) -> int | None:
    """The counter at ``path`` of a description, None when it has none."""
    value: Any = desc
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _with_counter(desc: dict[str, Any], path: tuple[str, ...], value: int) -> dict[str, Any]:
    """A copy of ``desc`` with the counter at ``path`` set to ``value`` (``desc`` and its sub-dicts unchanged)."""
    head, *rest = path
    return {**desc, head: _with_counter(desc[head], tuple(rest), value) if rest else value}


def _pooled_description(descs: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' descriptions as one: the first worker's, with its :data:`COUNTERS` summed over all of them, as
    each worker counts only its own chunks."""
    desc = dict(descs[0])
    for path in COUNTERS:
        values = [_counter(d, path) for d in descs]
        if all(v is not None for v in values):
            desc = _with_counter(desc, path, sum(values))  # type: ignore[arg-type]
    return desc


@contextlib.contextmanager
def _counting_into(reranker: Reranker, stats: RerankStats) -> Iterator[None]:
    """Inside the block ``reranker`` records its parse statistics into ``stats`` (one run's); after it, its running
    counts (:attr:`Reranker.stats`) go on with them added."""
    running, reranker.stats = reranker.stats, stats
    try:
        yield
    finally:
        running.merge(stats)
        reranker.stats = running


def _counted_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after`` with each of its :data:`COUNTERS` less its value in ``before``: what one run counted, when the
    reranker (a suite's, a leaderboard row's) ran before it."""
    desc = after
    for path in COUNTERS:
        start, end = _counter(before, path), _counter(after, path)
        if start is not None and end is not None:
            desc = _with_counter(desc, path, end - start)
    return desc


def reranker_pool(cfg: EvalConfig) -> WorkerPool:
    """``cfg.workers`` processes, each holding :func:`load_reranker` (``cfg``)."""
    return WorkerPool(cfg.workers, load_reranker, (cfg,))


EXACTLY_ONE = "give exactly one of --retriever NAME or --first-stage RUN"


def folder_run(dataset: Dataset) -> str:
    """The first-stage run a dataset folder holds (the first of :data:`~rerank.eval.suites.RUN_FILES` in it, as
    ``--suite dl`` reranks), for an evaluation given no first stage; none there is the error asking for one."""
    from rerank.eval.suites import RUN_FILES  # suites imports this module

    for name in RUN_FILES:
        if (dataset.root / name).is_file():
            return str(dataset.root / name)
    raise ConfigError(f"{EXACTLY_ONE} (dataset {dataset.name} holds no first-stage run of its own: "
                      f"{' or '.join(RUN_FILES)} in {dataset.root})")


def _check_used(cfg: EvalConfig, has_reranker: bool) -> None:
    """Refuse settings of ``cfg`` this run would ignore: the reranker's without a reranker (``has_reranker``: one is
    named or given), retriever options without a retriever (a ``first_stage`` run, or the dataset folder's own)."""
    if not has_reranker:
        unused = [name for name, value in (("model", cfg.model), ("reranker_options", cfg.reranker_options),
                                           ("log_llm_io", cfg.log_llm_io)) if value]
        unused += ["workers"] if cfg.workers > 1 else []
        if unused:
            raise ConfigError(f"{', '.join(unused)} configure a reranker and none is given: set reranker (or pass "
                              "a loaded one) or drop them")
    if cfg.retriever is None and cfg.retriever_options:
        read = (f"the first_stage run {cfg.first_stage} is read as it is" if cfg.first_stage is not None
                else "without one the dataset folder's own run is read as it is")
        raise ConfigError(f"retriever_options configure a retriever; {read}: drop them")


def check_given_reranker(cfg: EvalConfig, reranker: Reranker | WorkerPool | None) -> None:
    """The reranker given (or none) fits ``cfg``: it is a :class:`Reranker` or a pool of them; ``interpolate`` has a
    reranker (given, or ``cfg.reranker``); a loaded reranker is refused with ``workers`` > 1 (the workers load their
    own copies from the method and model, not from an object in this process), and so are ``cfg.reranker``,
    ``model``, ``backend`` and ``reranker_options`` that differ from the given reranker's own (they would be recorded
    but unused; a suite or leaderboard passes the reranker it loaded from them, which agrees)."""
    if reranker is not None and not isinstance(reranker, (Reranker, WorkerPool)):
        hint = (f": set cfg.reranker={reranker!r} to load it by name, or pass Reranker.load({reranker!r}, ...)"
                if isinstance(reranker, str) else "")
        raise TypeError(f"reranker must be a loaded Reranker (Reranker.load(...)) or None, got "
                        f"{type(reranker).__name__}{hint}")
    if cfg.interpolate is not None and reranker is None and cfg.reranker is None:
        raise ConfigError("interpolate weighs a reranker's scores against the first stage's: give a reranker")
    if isinstance(reranker, Reranker) and cfg.workers > 1:
        raise ConfigError("workers > 1 loads the reranker in each worker: give its method and model, not a reranker")
    if isinstance(reranker, Reranker):
        differ = _given_differs(cfg, reranker)
        if differ:
            raise ConfigError(f"{'; '.join(differ)}: with a loaded reranker given these would be recorded but unused; "
                              "drop them (the given reranker is what ranks, and metrics.json records its own)")


def _same_model(given: str, own: str | None) -> bool:
    """Whether ``given`` (a model name or folder) is the model ``own`` a reranker reports."""
    return own is not None and (given == own or resolved_path(given) == resolved_path(own))


def _option_matches(given: Any, own: Any) -> bool:
    """Whether option value ``given`` is what the reranker's config holds (``own``): equal, or, for a mapping, each
    of its keys matching ``own``'s (a nested config, a dict of backend options) in the same way."""
    if isinstance(given, Mapping):
        if dataclasses.is_dataclass(own) and not isinstance(own, type):
            own = {f.name: getattr(own, f.name) for f in dataclasses.fields(own)}
        return isinstance(own, Mapping) and all(k in own and _option_matches(v, own[k]) for k, v in given.items())
    if isinstance(own, Path) or isinstance(given, Path):
        return str(given) == str(own)
    if isinstance(own, (list, tuple)) and isinstance(given, (list, tuple)):
        return len(own) == len(given) and all(map(_option_matches, given, own))
    return bool(given == own)


def _names_class(name: str, reranker: Reranker) -> bool:
    """Whether the reranker name the user gave (a registered name or a ``"module:Class"``) resolves to the given
    ``reranker``'s class."""
    from rerank.heads.registry import get_reranker_class

    try:
        return get_reranker_class(name) is type(reranker)
    except RerankError:  # not a name (a trained folder) or unknown: the caller tells which
        return False


def _given_differs(cfg: EvalConfig, reranker: Reranker) -> list[str]:
    """The settings of ``cfg`` that configure a reranker and differ from the given ``reranker``'s own, each with
    what the reranker has; a method, model or backend its description does not name cannot be compared, and passes
    (a test reranker ignores the backend it was loaded with)."""
    from rerank.methods.record import read_record

    method = reranker.method or type(reranker).__name__
    own_model, own_backend = described_model(reranker.describe())
    out: list[str] = []
    model = cfg.model
    if cfg.reranker is not None and reranker.method and cfg.reranker != reranker.method \
            and not _names_class(cfg.reranker, reranker):
        record = read_record(cfg.reranker) if cfg.model is None else None  # a trained folder, as Reranker.load reads it
        if record is not None and record.get("method") == reranker.method:
            model = cfg.reranker
        else:
            out.append(f"reranker {cfg.reranker!r} is not the given reranker's method ({method})")
    if model is not None and own_model is not None and not _same_model(str(model), own_model):
        out.append(f"model {model} is not the given reranker's ({own_model})")
    default_backend = next(f.default for f in dataclasses.fields(EvalConfig) if f.name == "backend")
    if cfg.backend != default_backend and own_backend is not None and cfg.backend != own_backend:
        out.append(f"backend {cfg.backend!r} is not the given reranker's ({own_backend})")
    config = getattr(reranker, "config", None)
    wrong = [k for k, v in cfg.reranker_options.items()
             if not hasattr(config, k) or not _option_matches(v, getattr(config, k))]
    if wrong:
        out.append(f"reranker_options {', '.join(wrong)} differ from the given reranker's config")
    return out


def check_llm_io(cfg: EvalConfig, reranker: Reranker | WorkerPool | None = None) -> None:
    """Refuse ``log_llm_io`` where no log would be written: the reranker (``cfg.reranker``, or the loaded one given)
    is not an LLM head (:func:`~rerank.backends.cache.uses_llm_backend`), or the loaded one given does not log there.
    ``llm_cache`` is not checked: off is what a run without LLM calls does anyway."""
    from rerank.backends.cache import CachingBackend, uses_llm_backend

    if cfg.log_llm_io is None:
        return
    if isinstance(reranker, Reranker):
        name, llm = reranker.method or type(reranker).__name__, uses_llm_backend(type(reranker))
    elif cfg.reranker is not None:
        name, llm = cfg.reranker, uses_llm_backend(cfg.reranker)
    else:
        return
    if not llm:
        raise ConfigError(f"log_llm_io logs an LLM reranker's model calls, and reranker {name} makes none (it is not "
                          "an LLM head): drop it")
    if isinstance(reranker, Reranker):
        backend = getattr(reranker, "backend", None)
        path = backend.log_path if isinstance(backend, CachingBackend) else None
        if path is None or Path(path).resolve() != Path(cfg.log_llm_io).resolve():
            raise ConfigError(f"log_llm_io {cfg.log_llm_io}: the given {name} reranker does not log there (it was "
                              "loaded outside llm_cache_scope(log_path=...)); give its method and model instead, or "
                              "load it inside that scope")


def run_eval(cfg: EvalConfig, reranker: Reranker | WorkerPool | None = None, progress: bool = True,
             rel_level_fix: str | None = None) -> dict[str, Any]:
    """Run one evaluation and write ``run.trec``, ``metrics.json`` and ``report.md`` under ``cfg.output``.

    ``reranker``: a loaded reranker to use instead of loading ``cfg.reranker``, or a pool of them
    (:func:`reranker_pool`, as a suite shares one over its datasets). With neither ``retriever`` nor ``first_stage``
    the dataset folder's own run (:func:`folder_run`) is the first stage, recorded as ``first_stage``.
    ``rel_level_fix``: the advice of :func:`warn_rel_level` for a caller that has no ``--rel-level`` to give."""
    if cfg.retriever is not None and cfg.first_stage is not None:
        raise ConfigError(EXACTLY_ONE)
    _check_used(cfg, reranker is not None or cfg.reranker is not None)
    check_given_reranker(cfg, reranker)
    check_llm_io(cfg, reranker)
    given = reranker is not None
    given_pool = reranker if isinstance(reranker, WorkerPool) else None
    if given_pool is not None:
        reranker = None
    if cfg.output and Path(cfg.output).exists() and not Path(cfg.output).is_dir():
        raise ConfigError(f"output {cfg.output} is a file; give a folder")
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    dataset: Dataset = resolve_dataset(
        cfg.dataset, cfg.data_root, qrels_duplicates=cfg.qrels_duplicates  # type: ignore[arg-type]
    )
    if cfg.retriever is None and cfg.first_stage is None:
        cfg = replace(cfg, first_stage=folder_run(dataset))
        log.info("first stage: %s, the dataset folder's own run (--retriever NAME retrieves instead)", cfg.first_stage)
    _check_output_keeps_input(cfg)
    queries = dataset.split_queries(cfg.split, cfg.max_queries)
    qrels_all = dataset.qrels(cfg.split)
    qrels: Qrels = {q: qrels_all[q] for q in queries}
    try:  # a grade trec_eval cannot hold fails here, not after retrieval and reranking
        check_qrels(qrels)
    except ValueError as e:
        raise ConfigError(f"dataset {cfg.dataset}: {e}") from None
    rel_level = cfg.rel_level if cfg.rel_level is not None else dataset.rel_level
    given_run = read_run(cfg.first_stage) if cfg.first_stage is not None else None
    reranking = reranker is not None or given_pool is not None or cfg.reranker is not None
    if given_run is not None:
        _check_given_run(given_run, queries, cfg, dataset)
        check_ranked(given_run, f"--first-stage {cfg.first_stage}", cfg.top_k if reranking else None)
        # one checked pass over the corpus, before the reranker loads, holds the candidates' documents and notes which
        # of the run's documents exist (its unknown ones are counted): a run naming none of them fails now
        selected = _select(given_run, list(queries))
        keep = _candidate_ids(_drop_excluded(selected, dataset, cfg.split), queries, cfg.top_k) if reranking else set()
        given_docs = dataset.documents(keep, {d for lst in selected.values() for d, _ in lst})
        check_run_docs(selected, given_docs.found or {d.id for d in dataset.iter_corpus()},
                       f"--first-stage {cfg.first_stage}", f"the {given_docs.size} documents of {dataset.corpus_path}")
    else:
        given_docs = None
    if (str(dataset.root), rel_level) not in _REL_LEVEL_WARNED and warn_rel_level(
            qrels, rel_level, cfg.measures, cfg.rel_level is not None or dataset.info is not None,
            f"the {cfg.split} qrels of dataset {dataset.name}", rel_level_fix):
        _REL_LEVEL_WARNED.add((str(dataset.root), rel_level))
    timing["load_s"] = time.perf_counter() - t0

    with contextlib.ExitStack() as stack:
        pool = given_pool
        # before retrieval: a bad option or model fails in seconds
        if cfg.reranker is not None and reranker is None and pool is None:
            t = time.perf_counter()
            if cfg.workers > 1:
                pool = stack.enter_context(reranker_pool(cfg))
            else:
                reranker = load_reranker(cfg)
            timing["reranker_load_s"] = time.perf_counter() - t
        return _evaluate(cfg, dataset, queries, qrels, rel_level, given_run, given_docs, reranker, pool, timing, t0,
                         progress, given)


def _version(package: str) -> str | None:
    """The installed version of ``package``, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """The rerank, torch and transformers versions installed (None: not installed), as records write them."""
    from rerank import __version__

    return {"rerank": __version__, "torch": _version("torch"), "transformers": _version("transformers")}


def command_line(argv: Sequence[str] | None = None) -> list[str]:
    """``argv`` (default ``sys.argv``) as records write it (:func:`rerank.config.redact_argv`: URL credentials and
    secret option values as ``<redacted>``)."""
    return redact_argv(sys.argv if argv is None else argv)


@functools.cache
def _code_revision() -> str | None:
    """The git commit (``-dirty`` with local changes) of the rerank checkout this process imported, as training
    records it; None outside a checkout. Taken once per process: the code that runs is the code imported."""
    from rerank.trainers.base import git_hash

    return git_hash()


def file_input(path: str | Path, whole: bool = True, sha256: str | None = None) -> dict[str, str] | None:
    """A data file's path and fingerprint, for a record: ``sha256:HEX`` of its content (``sha256`` when the caller
    has it; ``whole`` false: only up to 16 MiB, else ``size:N,mtime_ns:M``, as cache keys stamp large files);
    None when it is not a file. Each file is read once per process and change (:func:`path_stamp`)."""
    p = Path(path)
    if not p.is_file():
        return None
    if sha256 is None:
        _, *stamp = path_stamp(p, hash_limit=None if whole else STAMP_HASH_LIMIT)[0]
        fingerprint = f"sha256:{stamp[0]}" if len(stamp) == 1 else f"size:{stamp[0]},mtime_ns:{stamp[1]}"
    else:
        fingerprint = f"sha256:{sha256}"
    return {"path": str(p.resolve()), "fingerprint": fingerprint}


def data_inputs(dataset: Dataset, split: str | None, first_stage: str | None = None) -> dict[str, dict[str, str]]:
    """:func:`file_input` of each data file an evaluation reads: the dataset's queries, the ``split``'s qrels and
    excluded ids (none without a split: ``rerank rank``), a given first-stage run (each read whole, so hashed whole)
    and its corpus (hashed whole when the first stage computed its sha256, as BM25 and dense retrieval do; else up to
    16 MiB, a larger one by size and modification time, so a multi-GB corpus is not read again for its record)."""
    files: dict[str, dict[str, str] | None] = {
        "corpus": file_input(dataset.corpus_path, whole=False, sha256=vars(dataset).get("corpus_hash")),
        "queries": file_input(dataset.queries_path),
        "qrels": file_input(dataset.qrels_path(split)) if split is not None else None,
        "excluded": file_input(dataset.root / "excluded" / f"{split}.tsv") if split is not None else None,
        "first_stage": file_input(first_stage) if first_stage is not None else None,
    }
    return {name: entry for name, entry in files.items() if entry is not None}


def model_input(model: str) -> dict[str, Any]:
    """What a record holds of the model a reranker loaded: a local folder or file its resolved path and a
    ``fingerprint`` (``stamp:HEX``) over the :func:`path_stamp` of its files (each up to 16 MiB by content, larger
    ones, the weights, by size and modification time: the stamp the leaderboard keys its cells by, so multi-GB weights
    are not read on every run); a hub id its name and the revision (commit) of its snapshot in the local hub cache,
    where there is one (read offline)."""
    from rerank.backends.cache import hub_snapshot
    from rerank.models import local_model_path

    try:
        path = local_model_path(model)
    except ConfigError:  # a name no local model has: a hub id
        path = None
    if path is not None and path.exists():
        return {"model": model, "path": str(path.resolve()), "fingerprint": f"stamp:{hash_obj(path_stamp(path))}"}
    snapshot = hub_snapshot(model)
    return {"model": model, "hub_revision": snapshot.name if snapshot is not None else None}


def template_input(template: Any) -> dict[str, str] | None:
    """What a record holds of the prompt template a reranker rendered (its ``template``): its name, where it came
    from (a file, or the name of one given inline) and a ``fingerprint`` (``sha256:HEX``,
    :meth:`~rerank.prompts.PromptTemplate.sha256`); None for a head that renders none."""
    from rerank.prompts import PromptTemplate

    if not isinstance(template, PromptTemplate):
        return None
    return {"name": template.name, "source": template.source, "fingerprint": f"sha256:{template.sha256()}"}


def reranker_template_input(reranker: Reranker) -> dict[str, str] | None:
    """:func:`template_input` of the template ``reranker`` rendered, with ``probe: differs`` where its head's
    :meth:`~rerank.heads.base.Reranker.configured_template` (what ``--resume`` and leaderboard cell keys read, without
    loading a model) does not tell that template's content under the head's config (a head that sets its own template
    when it loads: its template cannot be told before it loads)."""
    out = template_input(getattr(reranker, "template", None))
    if out is None:
        return None
    probe = None
    if hasattr(reranker, "config"):
        try:
            probe = type(reranker).configured_template(reranker.config)
        except RerankError:  # options the probe refuses: it tells nothing of this template
            probe = None
    if probe is None or f"sha256:{probe.sha256()}" != out["fingerprint"]:
        out["probe"] = "differs"
    return out


def _template_of(reranker: Reranker, _: Any) -> dict[str, str] | None:
    """A worker's :func:`reranker_template_input` of its reranker."""
    return reranker_template_input(reranker)


def provenance(reranker_desc: dict[str, Any] | None = None,
               data: dict[str, dict[str, str]] | None = None,
               template: dict[str, str] | None = None) -> dict[str, Any]:
    """How and where a result was computed, for ``metrics.json``: the UTC date-time, the machine (as the leaderboard
    writes it, plus the GPU's name where torch sees CUDA), the Python, rerank, torch and transformers versions, the
    code revision (``git_hash``, from a checkout), the command line (:func:`command_line`), torch's threads and
    ``OMP_NUM_THREADS``, and from the reranker's description its device, the dtype its backend resolved
    (``resolved_dtype``) and its model's :func:`model_input` (``model_inputs``; not for a served model, whose files
    are the server's); ``data``: the :func:`data_inputs` read (``data_inputs``); ``template``: the
    :func:`template_input` of the prompt template the reranker rendered (``template_input``; an eval's also says
    whether its head's probe tells it, :func:`reranker_template_input`)."""
    machine = f"{platform.machine()} {os.cpu_count()} CPU(s), {platform.system()}"
    torch = sys.modules.get("torch")  # not imported: nothing ran on a GPU (and importing it here costs seconds)
    if torch is not None and torch.cuda.is_available():
        machine += f", GPU {torch.cuda.get_device_name()}"
    out: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine,
        "python": platform.python_version(),
        **versions(),
        "git_hash": _code_revision(),
        "command": command_line(),
        "threads": {"torch": torch.get_num_threads() if torch is not None else None,
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }
    dtype = described_value(reranker_desc, "resolved_dtype")
    if dtype is not None:
        out["resolved_dtype"] = str(dtype)
    if reranker_desc is not None:
        device = described_value(reranker_desc, "resolved_device") or described_value(reranker_desc, "device")
        out["device"] = str(device) if device is not None else None
        model = reranker_desc.get("model")
        if model is not None and described_value(reranker_desc, "base_url") is None:
            out["model_inputs"] = {"model": model_input(str(model))}
    if data is not None:
        out["data_inputs"] = data
    if template is not None:
        out["template_input"] = template
    return out


def reranker_record(desc: dict[str, Any], model: str | None, backend: str, own: bool = False) -> dict[str, Any]:
    """A reranker's :meth:`~Reranker.describe` as records write it (secrets and URL credentials redacted, as
    :func:`~rerank.config.to_dict` writes the config), with the ``model`` and ``backend`` (``backend_name``) it was
    loaded with; ``own``: a reranker given loaded, whose own model and backend are recorded where it names them. A
    ``remote`` reranker records the model it asks the server for (None: the server's own) and no backend (the
    server's)."""
    own_model, own_backend = described_model(desc)
    if desc.get("method") == REMOTE:
        record = {**desc, "model": own_model, "backend_name": None}
    elif own:
        record = {**desc, "model": own_model if own_model is not None else model,
                  "backend_name": own_backend or backend}
    else:
        record = {**desc, "model": model, "backend_name": backend}  # describe() has details
    return to_dict(record)


def _plugin_class(obj: Any) -> dict[str, str]:
    """``{"class": "module:Class"}`` for a reranker or first stage whose class comes from outside rerank (a plugin, a
    ``module:Class`` name, a user registration), so a record names the code behind its method name; empty for rerank's
    own."""
    from rerank.utils.registry import target_path

    cls = type(obj)
    return {} if cls.__module__.split(".")[0] == "rerank" else {"class": target_path(cls)}


def _class_of(reranker: Reranker, _: Any) -> dict[str, str]:
    """A worker's :func:`_plugin_class` of its reranker."""
    return _plugin_class(reranker)


def _drop_excluded(run: Run, dataset: Dataset, split: str) -> Run:
    """``run`` without the documents a query may not rank: the query itself where the dataset ignores identical ids,
    and BRIGHT's excluded ids (they leave the ranking before reranking and scoring)."""
    if dataset.info is not None and dataset.info.ignore_identical_ids:
        run = {q: [(d, s) for d, s in lst if d != q] for q, lst in run.items()}
    excluded = dataset.excluded_ids(split)
    if excluded:
        run = {q: [(d, s) for d, s in lst if d not in excluded.get(q, ())] for q, lst in run.items()}
    return run


def _candidate_ids(run: Run, queries: Collection[str], top_k: int) -> set[str]:
    """The ids of the documents reranking reads: each query's top ``top_k``."""
    return {d for q in queries for d, _ in run.get(q, [])[:top_k]}


def _evaluate(cfg: EvalConfig, dataset: Dataset, queries: dict[str, Query], qrels: Qrels, rel_level: int,
              given_run: Run | None, given_docs: CorpusPart | None, reranker: Reranker | None,
              pool: WorkerPool | None, timing: dict[str, float], t0: float, progress: bool,
              given: bool) -> dict[str, Any]:
    """:func:`run_eval` once the dataset is read and the reranker (or its worker pool) is loaded; ``given_docs``: what
    the pass over the corpus for a given run kept (its candidates' documents, which of its documents exist);
    ``given``: the caller passed the reranker (its own description names the model), rather than ``cfg`` naming it."""

    t = time.perf_counter()
    first_stage_desc: dict[str, Any]
    if given_run is not None:
        run = _select(given_run, list(queries))
        first_stage_desc = {"name": "run", "path": str(cfg.first_stage)}
    else:
        options = progress_options(cfg.retriever, cfg.retriever_options, progress)  # type: ignore[arg-type]
        retriever: FirstStage = build_retriever(cfg.retriever, dataset, **options)  # type: ignore[arg-type]
        reranking = reranker is not None or pool is not None  # it needs top_k candidates; else depth is the run's
        depth = max(cfg.depth, cfg.top_k) if reranking else cfg.depth
        run = retriever.retrieve(queries, k=depth)
        # the depth retrieved per query (--depth, at least --top-k); hybrid's own "depth" is each of its two stages'
        first_stage_desc = to_dict({**retriever.describe(), **_plugin_class(retriever),
                                    "retrieval_depth": depth})  # secrets redacted
    run = _drop_excluded(run, dataset, cfg.split)
    timing["first_stage_s"] = time.perf_counter() - t

    corpus_ids_unknown: dict[str, list[str]] = {}
    rerank_scores: dict[str, list[tuple[str, float]]] | None = None
    reranker_desc: dict[str, Any] | None = None
    template: dict[str, str] | None = None
    final = run
    stats = RerankStats()
    if reranker is not None or pool is not None:
        t = time.perf_counter()
        doc_ids = _candidate_ids(run, queries, cfg.top_k)

        def describe() -> dict[str, Any]:
            return (_pooled_description(pool.broadcast(_describe, None)) if pool is not None
                    else reranker.describe())  # type: ignore[union-attr]

        before = describe()  # a shared reranker (a suite's) has counted earlier runs: this run reports its own
        with _counting_into(reranker, stats) if pool is None else contextlib.nullcontext():  # type: ignore[arg-type]
            if pool is not None:
                pool.broadcast(_prepare, (cfg, doc_ids))
            else:
                reranker.prepare_corpus(dataset, doc_ids)  # type: ignore[union-attr]
            # only the candidates' documents are held (read after prepare_corpus: a head that read the whole corpus
            # there is not read twice)
            docs = given_docs.docs if given_docs is not None else dataset.documents(doc_ids).docs
            held = (reranker.warning_policy(CallWarnings(hold=True)) if pool is None  # type: ignore[union-attr]
                    else contextlib.nullcontext())
            with held:  # one warning with the run's totals below, not one per chunk (pool workers hold their own)
                final, rerank_scores, corpus_ids_unknown = rerank_run(
                    pool if pool is not None else reranker, queries, run, docs,  # type: ignore[arg-type]
                    cfg.top_k, cfg.batch_queries, progress, stats, cfg.interpolate,
                )
        desc = _counted_since(before, describe())
        _warn_run_outputs(str(desc.get("method") or cfg.reranker), stats)
        timing["rerank_s"] = time.perf_counter() - t
        plugin = pool.broadcast(_class_of, None)[0] if pool is not None else _plugin_class(reranker)
        reranker_desc = {**reranker_record(desc, cfg.model, cfg.backend, own=given), **plugin}
        template = (pool.broadcast(_template_of, None)[0] if pool is not None
                    else reranker_template_input(reranker))
        if pool is not None:
            reranker_desc["workers"] = {"processes": pool.workers, "threads_each": pool.threads}
    elif given_docs is not None:
        for q, lst in run.items():
            missing = [d for d, _ in lst if d not in given_docs.found]
            if missing:
                corpus_ids_unknown[q] = missing

    _check_judged_in_corpus(final, qrels, dataset, cfg.split)
    t = time.perf_counter()
    result = evaluate_run(final, qrels, cfg.measures, rel_level)
    timing["metrics_s"] = time.perf_counter() - t
    timing["total_s"] = time.perf_counter() - t0
    n_reranked = sum(1 for q in queries if run.get(q))

    metrics: dict[str, Any] = {
        "dataset": dataset.name,
        "dataset_root": str(dataset.root.resolve()),  # the folder read (a bare name resolves under the data root)
        "split": cfg.split,
        "first_stage": first_stage_desc,
        "reranker": reranker_desc,
        "metrics": result.aggregate,
        "per_query": result.per_query,
        "num_queries": result.num_queries,
        "missing_queries": result.missing_queries,
        "rel_level": rel_level,
        "unknown_doc_ids": {
            "count": sum(len(v) for v in corpus_ids_unknown.values()),
            "examples": {q: v[:5] for q, v in list(corpus_ids_unknown.items())[:5]},
        },
        "timing_s": timing,
        "throughput": {
            "queries_per_s": (n_reranked / timing["rerank_s"]) if timing.get("rerank_s") else None,
        },
        "config": to_dict(cfg),
        "provenance": provenance(reranker_desc, data_inputs(dataset, cfg.split, cfg.first_stage), template),
    }
    if reranker is not None or pool is not None:
        metrics["parse"] = stats.as_dict()  # this run's outputs only
        metrics["unranked_queries"] = _unranked_queries(rerank_scores or {})
    if corpus_ids_unknown:
        log.warning(
            "%d doc ids in the first-stage run are not in the corpus (e.g. %s); %s",
            metrics["unknown_doc_ids"]["count"],
            next(iter(corpus_ids_unknown.values()))[:3],
            "they were not reranked" if reranker is not None or pool is not None else "they stay in the run",
        )
    if cfg.output:
        _write_outputs(Path(cfg.output), cfg, metrics, final, run, rerank_scores)
    return metrics


def _unranked_queries(scores: dict[str, list[tuple[str, float]]]) -> dict[str, Any]:
    """The queries whose candidates (two or more) the reranker scored all the same: their order is the first stage's,
    so the metrics are the first stage's there; a warning says how many (a model that learned a constant, a head whose
    outputs all failed to parse)."""
    tied = [q for q, lst in scores.items() if len(lst) > 1 and len({sc for _, sc in lst}) == 1]
    scored = sum(1 for lst in scores.values() if len(lst) > 1)
    if tied:
        log.warning("the reranker scored every candidate the same in %d of %d queries (e.g. %s): their order is the "
                    "first stage's, and so are their metrics", len(tied), scored, tied[:3])
    return {"count": len(tied), "of": scored, "examples": tied[:5]}


def _check_judged_in_corpus(run: Run, qrels: Qrels, dataset: Dataset, split: str) -> None:
    """A run holding no judged document at all is checked against the corpus: when none of the judged documents is
    in it, qrels and corpus name documents differently (every measure would be a silent 0), an error. The usual run
    holds a judged document in its first query, so the check costs nothing there."""
    if not any(d in qrels.get(q, ()) for q, lst in run.items() for d, _ in lst) and any(run.values()):
        judged = {d for docs in qrels.values() for d in docs}
        if not judged:
            return
        corpus_ids = set(dataset.corpus) if "corpus" in vars(dataset) else {d.id for d in dataset.iter_corpus()}
        if judged.isdisjoint(corpus_ids):
            raise DataFormatError(dataset.qrels_path(split), None, f"none of the {len(judged)} documents it judges "
                                  f"(e.g. {sorted(judged)[:3]}) is in {dataset.corpus_path.name} (e.g. "
                                  f"{sorted(corpus_ids)[:3]}): the two name documents differently, and every measure "
                                  "would be 0")


def _check_output_keeps_input(cfg: EvalConfig) -> None:
    """Refuse an output folder where this run would replace or remove its own first-stage run (``--first-stage
    runs/x/run.trec --output runs/x``): the input would be lost and ``metrics.json`` would name a changed file."""
    if cfg.first_stage is None or not cfg.output:
        return
    given = Path(cfg.first_stage)
    for name in OUTPUT_FILES:
        target = Path(cfg.output) / name
        if target.exists() and given.exists() and os.path.samefile(target, given):
            raise ConfigError(f"--output {cfg.output} would replace the --first-stage run {cfg.first_stage} (this "
                              f"command writes or removes {name} there): give another --output folder")


def _write_outputs(
    out: Path, cfg: EvalConfig, metrics: dict[str, Any], final: Run, run: Run,
    rerank_scores: dict[str, list[tuple[str, float]]] | None,
) -> None:
    """Write this run's files; ``metrics.json`` (the mark of a complete run) goes first and comes back last, and the
    command's files this run does not write are removed, so no file of an earlier run is left beside the new ones."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"run.trec", "report.md", "metrics.json"}
    if rerank_scores is not None:
        written.add("scores.jsonl")
        if cfg.retriever is not None:  # without a reranker run.trec is this run: it is not written twice
            written.add("first_stage.trec")
    (out / "metrics.json").unlink(missing_ok=True)
    for name in set(OUTPUT_FILES) - written:
        (out / name).unlink(missing_ok=True)
    method = (metrics.get("reranker") or {}).get("method")
    write_run(final, out / "run.trec", tag=cfg.reranker or method or cfg.retriever or "run")
    if "first_stage.trec" in written:
        write_run(run, out / "first_stage.trec", tag=cfg.retriever)
    if rerank_scores is not None:
        with atomic_write(out / "scores.jsonl") as f:
            for q in sorted(rerank_scores):
                f.write(json.dumps({"qid": q, "scores": rerank_scores[q]}) + "\n")
    with atomic_write(out / "report.md") as f:
        f.write(render_report(metrics))
    write_json(metrics, out / "metrics.json")
