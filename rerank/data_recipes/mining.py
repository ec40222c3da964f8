"""Hard-negative mining and teacher labelling over a first-stage run of a dataset's queries.

* ``hard_negatives``: positives from the qrels; negatives from first-stage ranks ``window`` (1-based, inclusive),
  minus judged positives, optionally minus likely false negatives: a candidate the filter model scores above
  ``min(positive scores) - margin`` is dropped (RocketQA-style denoising). The filter is a registered reranker
  (a cross-encoder) or a bi-encoder (sentence-transformers cosine).
* ``teacher_labels``: the first-stage top-``candidates`` (judged positives added if missing) labelled by teachers.
  ``mode`` is a method with a teacher-label mode (its package's ``teacher.py``: ``erank`` integer 0-10 labels from a
  pointwise teacher, ``first`` the listwise teacher's permutation (``teacher_ranking``), ``grouprank`` groups of
  ``group_size`` with 0-10 ``teacher_scores``: v = -0.5*ln(pointwise rank) - 0.5*ln(listwise rank) mapped from
  [-ln n, 0] onto 0-10 over the query's n candidates, the scale GroupRank's SFT trains on), ``scores``: the raw
  teacher scores, or ``first_stage``: the first stage's own scores as teacher scores (e.g. a hybrid with
  ``fusion: interpolate``, whose scores are normalised fusions; a candidate the run does not score, a positive added
  from beyond its depth, gets the list's lowest score). ``labels`` are always the qrels grades (0 when unjudged), or
  with ``source.queries`` the labels of that file's rows.

A ``first_stage.run`` that ranks none of the recipe's queries is an error (as ``rerank eval --first-stage``), its
document ids missing from the corpus a warning with counts; a build that writes no row is an error saying why. A query
that gives no row is recorded with its reason (:meth:`~rerank.data_recipes.base.Recipe.skip`): ``no_judged_positive``,
``positive_not_in_corpus``, ``positive_without_text``, ``no_negative_in_window``, ``negatives_filtered``
(``hard_negatives``) or ``fewer_than_2_candidates`` (``teacher_labels``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rerank.config import changed_options
from rerank.data.datasets import Dataset, resolve_dataset
from rerank.data.io import check_ranked, read_run
from rerank.data_recipes.base import (
    FirstStageSpec,
    ModelSpec,
    Recipe,
    SourceSpec,
    check_reranker,
    file_input,
    path_inputs,
    unit_rng,
)
from rerank.errors import ConfigError
from rerank.methods.base import TEACHER_OPTIONS, TEACHER_ROLES
from rerank.models import check_model_path
from rerank.trainers.data import has_content
from rerank.types import Candidate, Document, Qrels, Query, Run, sort_ranking

__all__ = ["HardNegativesRecipe", "TeacherLabelsRecipe", "rank_positions", "teacher_modes"]

log = logging.getLogger(__name__)


def _cand(doc: Document, score: float | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"id": doc.id, "text": doc.text}
    if doc.title:
        c["title"] = doc.title
    if score is not None:
        c["score"] = float(score)
    return c


def _rows_queries(path: str, max_queries: int | None) -> tuple[dict[str, Query], Qrels]:
    """The queries of a built ``data.jsonl`` and their rows' labels as qrels (first ``max_queries`` rows), read with the
    trainers' reader (a duplicate qid names its line and the first one)."""
    from rerank.trainers.data import load_examples

    rows = load_examples(path)[:max_queries]
    queries = {str(r["qid"]): Query(str(r["qid"]), r["query"]) for r in rows}  # the rows may hold integer qids
    qrels = {str(r["qid"]): {str(c["id"]): int(g) for c, g in zip(r["candidates"], r["labels"], strict=True) if g > 0}
             for r in rows}
    return queries, qrels


class _OverRun(Recipe):
    """Shared: dataset, queries of a split, qrels and a first-stage run computed once."""

    def _setup(self, source: SourceSpec, first_stage: FirstStageSpec) -> None:
        self.dataset: Dataset = resolve_dataset(source.dataset, self.data_root)
        self.dataset.duplicates_fix = "keep one of its lines (a recipe reads each judgement once)"
        if source.queries is None and source.split == "test" and set(self.dataset.splits()) - {"test"}:
            raise ConfigError(f"source.split test is the evaluation split of {self.dataset.name}, which training never "
                              "reads (rows built from it leak the test queries into training): set source.split to a "
                              "training split (e.g. train)")
        if source.queries is not None:
            self.queries, self.qrels = _rows_queries(source.queries, source.max_queries)
        else:
            self.queries = self.dataset.split_queries(source.split, source.max_queries)
            self.qrels = self.dataset.qrels(source.split)
        self._fs = first_stage
        self._run: Run | None = None

    def _queries_name(self) -> str:
        """The recipe's queries as a message names them."""
        src = self.config.source
        first = "first " if src.max_queries is not None else ""
        where = f"of {src.queries}" if src.queries is not None else f"{src.split} queries of dataset {self.dataset.name}"
        return f"the {first}{len(self.queries)} {where}"

    def units_name(self, count: int) -> str:
        """The queries as the warning about those without a row names them (:meth:`Recipe.units_name`)."""
        return self._queries_name()

    def _check_given_run(self, full: Run, name: str) -> None:
        """A run file that ranks none of the recipe's queries is an error (``rerank eval --first-stage``'s); queries
        it does not rank (no rows) and its documents missing from the corpus (skipped) are warned about with counts."""
        from rerank.eval.pipeline import check_run_overlap

        what = self._queries_name()
        check_run_overlap(full, self.queries, name, what)
        absent = [q for q in self.queries if q not in full]
        if absent:
            log.warning("%d of %s have no ranking in %s (e.g. %s): they get no first-stage candidates", len(absent),
                        what, name, ", ".join(sorted(absent)[:3]))
        corpus = self.dataset.corpus
        ranked = [d for q in self.queries for d, _ in sort_ranking(full.get(q, []))[: self._fs.depth]]
        unknown = sorted({d for d in ranked if d not in corpus})
        if unknown:
            log.warning("%s: %d of its %d document ids within first_stage.depth %d for %s are not in the corpus %s "
                        "(e.g. %s) and are skipped", name, len(unknown), len(set(ranked)), self._fs.depth, what,
                        self.dataset.corpus_path, ", ".join(unknown[:3]))

    @property
    def run(self) -> Run:
        if self._run is None:
            fs = self._fs
            if fs.run is not None:
                full = read_run(fs.run)
                name = f"first_stage.run {fs.run}"
                self._check_given_run(full, name)
                check_ranked(full, name,
                             cut=f"the recipe's rank cuts over it (first_stage.depth {fs.depth}, {self._cut()}) pick "
                             "arbitrary candidates: give a run that scores its candidates, or a first_stage retriever")
                self._run = {q: sort_ranking(full.get(q, []))[: fs.depth] for q in self.queries}
            else:
                from rerank.retrieval.base import build_retriever

                retriever = build_retriever(fs.retriever, self.dataset, **fs.options)  # type: ignore[arg-type]
                self._run = retriever.retrieve(self.queries, k=fs.depth)
        return self._run

    def _cut(self) -> str:
        """The recipe's own cut of each query's first-stage ranking, as its config names it."""
        return "its own cut"

    def units(self) -> list[str]:
        if self._fs.run is not None:
            self.run  # noqa: B018 - a given run file is read and checked now, before any model loads or row is written
        return list(self.queries)

    def empty_reason(self) -> str:
        """Why no unit gave a row (:meth:`Recipe.empty_reason`): the first stage ranks no usable document."""
        if not any(self.usable(d) for q in self.queries for d, _ in self.run.get(q, [])):
            return (f"the first stage ranks no document of the corpus {self.dataset.corpus_path} (with text) for "
                    f"{self._queries_name()}")
        return ""

    def source(self) -> dict[str, Any]:
        fs, src = self._fs, self.config.source
        return {
            "dataset": self.dataset.name,
            "root": str(self.dataset.root),
            **({"split": src.split} if src.queries is None else {"queries_from": src.queries}),  # what was read
            "corpus_sha256": self.dataset.corpus_hash,
            "queries": len(self.queries),
            "first_stage": {"retriever": fs.retriever, "run": fs.run, "options": fs.options, "depth": fs.depth},
        }

    def inputs(self) -> dict[str, dict[str, str]]:
        """What the rows are read from (:meth:`Recipe.inputs`): the corpus (the manifest's sha256), the queries and
        qrels of the split or the ``source.queries`` file, a ``first_stage.run`` (by content), the local models and
        files the options name."""
        src, fs, ds = self.config.source, self._fs, self.dataset
        out = {"corpus": file_input(ds.corpus_path, ds.corpus_hash)}
        if src.queries is not None:
            out["source.queries"] = file_input(src.queries)
        else:
            out["queries"] = file_input(ds.queries_path)
            out["qrels"] = file_input(ds.qrels_path(src.split))
        if fs.run is not None:
            out["first_stage.run"] = file_input(fs.run)
        return {**out, **path_inputs(self.config, skip=("source", "first_stage.run"))}

    def usable(self, doc_id: str) -> bool:
        """Whether ``doc_id`` is in the corpus with text to score (an empty document is no training candidate)."""
        doc = self.dataset.corpus.get(doc_id)
        return doc is not None and has_content(doc.text, doc.title or "")

    def positives(self, qid: str, min_grade: int = 1) -> list[str]:
        return [d for d, g in sorted(self.qrels.get(qid, {}).items()) if g >= min_grade and self.usable(d)]


@dataclass
class FilterSpec:
    """False-negative filter: drop a candidate scored above ``min(positive scores) - margin``."""

    scorer: Literal["reranker", "bi-encoder"] = "reranker"
    model: str | None = None
    reranker: str = "cross-encoder"
    backend: str = "transformers"
    options: dict[str, Any] = field(default_factory=dict)
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.scorer == "bi-encoder":  # a sentence-transformers model of its own: no reranker, backend or options
            changed = changed_options(self, ("reranker", "backend", "options"))
            if changed:
                raise ValueError(f"{', '.join(changed)} {'apply' if len(changed) > 1 else 'applies'} to scorer: "
                                 "reranker; the bi-encoder scorer loads 'model' as a sentence-transformers model: "
                                 f"drop {'them' if len(changed) > 1 else 'it'} or set scorer: reranker")
        else:
            check_reranker(self.reranker)

    def check(self) -> None:
        """Before the build starts: the filter's model can be loaded here."""
        local = self.scorer == "bi-encoder" or (self.reranker != "remote" and self.backend != "openai")
        if local and self.model:
            check_model_path(self.model, "false_negative_filter model")
        if self.scorer == "bi-encoder" and self.model:
            from rerank.models import resolve_model_path
            from rerank.trainers.common import check_safetensors

            check_safetensors(resolve_model_path(self.model), "false_negative_filter model")


@dataclass
class HardNegativesConfig:
    source: SourceSpec
    first_stage: FirstStageSpec
    window: list[int] = field(default_factory=lambda: [1, 100])
    num_negatives: int = 7
    sampling: Literal["top", "random"] = "top"
    min_positive_grade: int = 1
    false_negative_filter: FilterSpec | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.window) != 2 or not 1 <= self.window[0] <= self.window[1]:
            raise ValueError(f"window must be [start, end] 1-based ranks with start <= end, got {self.window}")
        if self.num_negatives < 1:
            raise ValueError("num_negatives must be >= 1")
        if self.min_positive_grade < 1:  # grade 0 is a judged non-relevant document: a negative, never a positive
            raise ValueError(f"min_positive_grade must be >= 1, got {self.min_positive_grade}")
        if self.window[1] > self.first_stage.depth and changed_options(self, ("window",)):
            raise ValueError(f"window {self.window} ends past first_stage depth {self.first_stage.depth} (the first "
                             f"stage ranks only {self.first_stage.depth} documents per query): end the window at "
                             f"{self.first_stage.depth} or below, or raise first_stage depth to {self.window[1]}")
        if self.sampling == "top" and changed_options(self, ("seed",)):
            raise ValueError(f"seed={self.seed} applies to sampling: random (sampling: top takes the window's best "
                             "negatives, with nothing drawn): set sampling: random, or drop seed")


class _BiEncoderScorer:
    """Cosine similarity of a sentence-transformers bi-encoder (normalised embeddings).

    Mined windows overlap across queries (on SciFact train each abstract recurs ~8 times), so document embeddings are
    kept by id, the least recently used dropped past ``max_cached`` (100k 384-d vectors: ~150 MB)."""

    def __init__(self, model: str, max_cached: int = 100_000) -> None:
        from sentence_transformers import SentenceTransformer

        try:  # registered packaged models (e.g. all-MiniLM-L6-v2) resolve to their installed folder
            from rerank.models import resolve_model_path

            model = resolve_model_path(model)
        except ImportError:
            pass
        from rerank.trainers.common import check_safetensors

        check_safetensors(model, "false_negative_filter model")
        # safetensors only: a pickled pytorch_model.bin is never unpickled
        self.model = SentenceTransformer(model, device="cpu", trust_remote_code=False,
                                         model_kwargs={"use_safetensors": True})
        self.max_cached = max_cached
        self._docs: OrderedDict[str, np.ndarray] = OrderedDict()

    def scores(self, query: str, docs: list[Document]) -> list[float]:
        """Cosine similarity of ``query`` with each of ``docs``; both are data, their special-token strings
        (``[SEP]``, ``</s>``) neutralised (:func:`rerank.heads.text.neutralise`) as the dense retriever does."""
        from rerank.heads.text import neutralise

        tok = self.model.tokenizer
        q = self.model.encode([neutralise(query, tok)], normalize_embeddings=True, convert_to_numpy=True)[0]
        new = {x.id: x for x in docs if x.id not in self._docs}
        if new:
            emb = self.model.encode([neutralise(x.full_text(), tok) for x in new.values()], normalize_embeddings=True,
                                    convert_to_numpy=True)
            self._docs.update(zip(new, emb, strict=True))
        out = []
        for x in docs:
            self._docs.move_to_end(x.id)
            out.append(float(self._docs[x.id] @ q))
        while len(self._docs) > self.max_cached:
            self._docs.popitem(last=False)
        return out


class HardNegativesRecipe(_OverRun):
    """Positives + mined hard negatives per training query."""

    kind = "hard_negatives"
    config_class = HardNegativesConfig

    def __init__(self, config: HardNegativesConfig, data_root: str | None = None) -> None:
        super().__init__(config, data_root)
        self._setup(config.source, config.first_stage)
        self._scorer: Any = None
        self.filtered = 0
        self._unit_filtered: dict[str, int] = {}

    def _filter_scores(self, qid: str, docs: list[Document]) -> list[float]:
        f = self.config.false_negative_filter
        if self._scorer is None:
            if f.scorer == "bi-encoder":
                if not f.model:
                    raise ConfigError("false_negative_filter: the bi-encoder scorer needs 'model'")
                self._scorer = _BiEncoderScorer(f.model)
            else:
                self._scorer = ModelSpec(f.reranker, f.model, f.backend, f.options).load()
        q = self.queries[qid]
        if isinstance(self._scorer, _BiEncoderScorer):
            return self._scorer.scores(q.text, docs)
        return self._scorer.score_candidates(q, [Candidate(d) for d in docs])

    def _cut(self) -> str:
        return f"window {self.config.window}"

    def skip_reasons(self) -> dict[str, str]:
        """Why a query gives no row (:meth:`Recipe.skip_reasons`); the corpus reasons in the words of the trainers'
        ``data.beir`` warning."""
        cfg = self.config
        return {
            **super().skip_reasons(),
            "no_judged_positive": f"have no positive judgement of grade >= {cfg.min_positive_grade}",
            "positive_not_in_corpus": "with a positive judgement have no positive left in the corpus: the judged "
                                      "documents are not in it",
            "positive_without_text": "with a positive judgement have no positive left in the corpus: the judged "
                                     "documents have no text",
            "no_negative_in_window": f"have no negative in window {cfg.window} of their first-stage ranking once "
                                     "judged positives and documents without text are removed",
            "negatives_filtered": "had every negative of their window removed by the false_negative_filter",
        }

    def _no_positive(self, unit: str) -> str:
        """Why ``unit`` has no positive: no judgement of grade >= ``min_positive_grade``, or none of its judged
        positives in the corpus with text."""
        judged = [d for d, g in self.qrels.get(unit, {}).items() if g >= self.config.min_positive_grade]
        if not judged:
            return "no_judged_positive"
        corpus = self.dataset.corpus
        return "positive_without_text" if any(d in corpus for d in judged) else "positive_not_in_corpus"

    def rows_for(self, unit: str) -> list[dict[str, Any]]:
        cfg = self.config
        corpus = self.dataset.corpus
        pos = self.positives(unit, cfg.min_positive_grade)
        if not pos:
            return self.skip(unit, self._no_positive(unit))
        judged_pos = {d for d, g in self.qrels.get(unit, {}).items() if g >= 1}
        ranked = sort_ranking(self.run.get(unit, []))
        lo, hi = cfg.window
        window = [(d, s) for d, s in ranked[lo - 1 : hi] if d not in judged_pos and self.usable(d)]
        if not window:
            return self.skip(unit, "no_negative_in_window")
        if cfg.false_negative_filter is not None:
            docs = [corpus[d] for d in pos] + [corpus[d] for d, _ in window]
            scores = self._filter_scores(unit, docs)
            threshold = min(scores[: len(pos)]) - cfg.false_negative_filter.margin
            keep = [w for w, s in zip(window, scores[len(pos) :], strict=True) if s <= threshold]
            self.filtered += len(window) - len(keep)
            self._unit_filtered[unit] = len(window) - len(keep)
            window = keep
            if not window:
                return self.skip(unit, "negatives_filtered")
        if cfg.sampling == "random":
            rng = unit_rng(cfg.seed, unit)
            negs = sorted(rng.sample(window, min(cfg.num_negatives, len(window))), key=lambda x: window.index(x))
        else:
            negs = window[: cfg.num_negatives]
        fs_scores = dict(ranked)
        cands = [_cand(corpus[d], fs_scores.get(d)) for d in pos] + [_cand(corpus[d], s) for d, s in negs]
        labels = [int(self.qrels[unit][d]) for d in pos] + [0] * len(negs)
        return [{"qid": unit, "query": self.queries[unit].text, "candidates": cands, "labels": labels}]

    def empty_reason(self) -> str:
        """Why no query gave a row: no first-stage document, no judged positive, or no negative left in the window."""
        reason = super().empty_reason()
        if reason:
            return reason
        cfg = self.config
        if not any(self.positives(q, cfg.min_positive_grade) for q in self.queries):
            return (f"no query of {self._queries_name()} has a judged positive (grade >= {cfg.min_positive_grade}) "
                    f"in the corpus {self.dataset.corpus_path} (do the judgements' document ids match the corpus's?)")
        filtered = " and the false_negative_filter" if cfg.false_negative_filter is not None else ""
        return (f"no query with a positive has a negative left in window {cfg.window} of its first-stage ranking after "
                f"removing judged positives{filtered}")

    def unit_stats(self, unit: str) -> dict[str, int]:
        """What ``unit`` added to the manifest's counts (kept with its rows, so a resumed build can add it back)."""
        n = self._unit_filtered.pop(unit, 0)
        return {"false_negatives_filtered": n} if n else {}

    def restore_stats(self, stats: Iterable[Mapping[str, int]]) -> None:
        """Add back the counts of the units an interrupted build finished (:meth:`unit_stats`)."""
        self.filtered += sum(int(s.get("false_negatives_filtered", 0)) for s in stats)

    def source(self) -> dict[str, Any]:
        return {**super().source(), "false_negatives_filtered": self.filtered}

    def close(self) -> None:
        if self._scorer is not None and hasattr(self._scorer, "close"):
            self._scorer.close()


def teacher_modes() -> list[str]:
    """The ``mode`` values of ``teacher_labels``: every method with a teacher-label mode, and ``scores``."""
    from rerank.methods import method_names

    return [*method_names(teacher_labels=True), "scores", "first_stage"]


def _option_modes(option: str) -> tuple[str, ...]:
    """The modes that read ``teacher_labels`` option ``option``: the methods whose descriptor's ``teacher_options``
    name it (the modes ``scores`` and ``first_stage`` read none)."""
    from rerank.methods import all_methods

    return tuple(m.name for m in all_methods().values() if m.teacher_labels is not None and option in m.teacher_options)


def _roles(mode: str) -> tuple[str, ...]:
    from rerank.methods import get_method

    if mode == "first_stage":
        return ()
    return ("teacher",) if mode == "scores" else get_method(mode).teacher_roles


@dataclass
class TeacherLabelsConfig:
    source: SourceSpec
    first_stage: FirstStageSpec
    mode: str
    teacher: ModelSpec | None = None
    pointwise_teacher: ModelSpec | None = None
    listwise_teacher: ModelSpec | None = None
    candidates: int = 20
    include_positives: bool = True
    score_map: Literal["round", "minmax"] = "round"
    group_size: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in teacher_modes():
            raise ValueError(f"mode must be one of {teacher_modes()}, got {self.mode!r}")
        missing = [r for r in _roles(self.mode) if getattr(self, r) is None]
        if missing:
            raise ValueError(f"mode {self.mode} needs {' and '.join(repr(r) for r in missing)}")
        unused = [r for r in TEACHER_ROLES if r not in _roles(self.mode) and getattr(self, r) is not None]
        if unused:
            raise ValueError(f"{' and '.join(unused)} {'are' if len(unused) > 1 else 'is'} not used by mode "
                             f"{self.mode} (it uses {' and '.join(_roles(self.mode)) or 'no teacher'}): drop "
                             f"{'them' if len(unused) > 1 else 'it'}")
        changed = changed_options(self, [name for name in TEACHER_OPTIONS if self.mode not in _option_modes(name)])
        if changed:
            many = len(changed) > 1
            only = "; ".join(f"{name} only by mode {' or '.join(_option_modes(name))}" for name in changed)
            raise ValueError(f"{', '.join(changed)} {'are' if many else 'is'} not read by mode {self.mode} ({only}): "
                             f"drop {'them' if many else 'it'}")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2")
        if self.candidates < 2:
            raise ValueError("candidates must be >= 2")
        if self.candidates > self.first_stage.depth and changed_options(self, ("candidates",)):
            raise ValueError(f"candidates {self.candidates} is above first_stage depth {self.first_stage.depth} (the "
                             f"first stage ranks only {self.first_stage.depth} documents per query): give candidates "
                             f"<= {self.first_stage.depth}, or raise first_stage depth to {self.candidates}")


def rank_positions(ids: list[str], scores: list[float]) -> dict[str, int]:
    """1-based ranks by score, ties in input order (as the reranker interface sorts)."""
    order = sorted(range(len(ids)), key=lambda j: -scores[j])
    return {ids[j]: r for r, j in enumerate(order, 1)}


class TeacherLabelsRecipe(_OverRun):
    """Candidate lists labelled by teacher rerankers, for ERank / FIRST / GroupRank SFT."""

    kind = "teacher_labels"
    config_class = TeacherLabelsConfig

    def __init__(self, config: TeacherLabelsConfig, data_root: str | None = None) -> None:
        super().__init__(config, data_root)
        self._setup(config.source, config.first_stage)
        self._models: dict[str, Any] = {}

    def _model(self, role: str) -> Any:
        if role not in self._models:
            self._models[role] = getattr(self.config, role).load()
        return self._models[role]

    def _cut(self) -> str:
        return f"candidates {self.config.candidates}"

    def _candidates(self, unit: str) -> list[Document]:
        corpus = self.dataset.corpus
        ids = [d for d, _ in sort_ranking(self.run.get(unit, [])) if self.usable(d)][: self.config.candidates]
        if self.config.include_positives:
            missing = [d for d in self.positives(unit) if d not in ids]
            if missing:  # replace the lowest-ranked candidates so the list keeps its size
                keep = max(0, self.config.candidates - len(missing))
                ids = ids[:keep] + missing
        return [corpus[d] for d in ids]

    def scores(self, role: str, unit: str, docs: list[Document]) -> list[float]:
        """The teacher ``role``'s scores of ``docs`` for query ``unit``, aligned with ``docs``."""
        res = self._model(role).rerank(self.queries[unit], [Candidate(d) for d in docs])
        by_id = {r.doc.id: r.score for r in res.results}
        return [float(by_id[d.id]) for d in docs]

    def empty_reason(self) -> str:
        """Why no query gave a row: no first-stage document, or fewer than 2 candidates for every query."""
        return super().empty_reason() or (f"every query has fewer than 2 candidates (its first-stage top "
                                          f"{self.config.candidates} documents in the corpus, with positives added)")

    def skip_reasons(self) -> dict[str, str]:
        """Why a query gives no row (:meth:`Recipe.skip_reasons`)."""
        with_pos = ", with positives added" if self.config.include_positives else ""
        return {**super().skip_reasons(),
                "fewer_than_2_candidates": f"have fewer than 2 candidates: their first-stage top "
                                           f"{self.config.candidates} documents in the corpus with text{with_pos}"}

    def rows_for(self, unit: str) -> list[dict[str, Any]]:
        docs = self._candidates(unit)
        if len(docs) < 2:
            return self.skip(unit, "fewer_than_2_candidates")
        grades = self.qrels.get(unit, {})
        fs = dict(self.run.get(unit, []))
        row: dict[str, Any] = {"qid": unit, "query": self.queries[unit].text,
                               "candidates": [_cand(d, fs.get(d.id)) for d in docs],
                               "labels": [int(grades.get(d.id, 0)) for d in docs]}
        if self.config.mode == "scores":
            return [{**row, "teacher_scores": self.scores("teacher", unit, docs)}]
        if self.config.mode == "first_stage":
            known = [fs[d.id] for d in docs if d.id in fs]
            floor = min(known) if known else 0.0
            return [{**row, "teacher_scores": [float(fs.get(d.id, floor)) for d in docs]}]
        from rerank.methods import get_method

        return get_method(self.config.mode).resolve("teacher_labels")(self, unit, docs, row)

    def source(self) -> dict[str, Any]:
        from rerank.config import to_dict

        return {**super().source(), "teachers": {r: to_dict(getattr(self.config, r)) for r in _roles(self.config.mode)}}

    def close(self) -> None:
        for m in self._models.values():
            m.close()
