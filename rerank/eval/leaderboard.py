"""``rerank leaderboard``: a matrix of (first stage, reranker, backend, model) rows x dataset columns.

Each cell is one :func:`rerank.eval.pipeline.run_eval` written to ``<results>/<row>/<column>/`` with a ``cell.json``
holding the cell's config hash; a later run reuses a cell whose hash matches (unless ``force``), and runs a cell
whose ``cell.json`` or ``metrics.json`` is damaged again, with a warning naming the file. The Markdown
leaderboard shows measured rows (primary measure per column, the average over the columns marked ``in_average``,
queries/s) and, in a separate table, published reference figures from ``published.yaml``. Significance: a paired
two-sided randomization test (sign flips of per-query differences) of every measured row against the first row that
has the column, on the queries both cells scored; ``▲`` / ``▼`` mark a row significantly above / below that baseline
(p < ``significance.p`` after ``significance.correction``: none, holm or bonferroni over the rows compared with the
baseline in one column). All pairwise p-values are written to ``leaderboard.json`` and listed in the Markdown. A cell
whose run lacks judged queries (they count as 0) carries their count in the JSON and says "n/N missing" in the table.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from rerank.config import from_dict, load_yaml, to_dict
from rerank.data.datasets import cache_root, check_max_queries, resolve_dataset
from rerank.errors import ConfigError
from rerank.eval.metrics import DEFAULT_MEASURES, parse_measures
from rerank.eval.pipeline import REMOTE, EvalConfig, check_interpolate, check_positive_int, run_eval, versions
from rerank.models import check_model_path
from rerank.utils.files import atomic_write, hash_obj, path_stamp, write_json

__all__ = [
    "CORRECTIONS",
    "ColumnSpec",
    "LeaderboardConfig",
    "RowSpec",
    "adjust_p_values",
    "load_config",
    "load_published",
    "model_label",
    "randomization_test",
    "render_markdown",
    "run_leaderboard",
]

log = logging.getLogger(__name__)
PUBLISHED_PATH = Path(__file__).with_name("published.yaml")
#: what the relevance-level warning (:func:`~rerank.eval.pipeline.warn_rel_level`) advises here: a leaderboard has no
#: ``--rel-level``
REL_LEVEL_FIX = ("a leaderboard column cannot set the relevance level: its binary measures use the dataset's own (a "
                 "registered dataset's, such as dl19-bm25-top100's 2, or an irds: dataset's), else 1; graded nDCG is "
                 "not affected, and `rerank eval --rel-level N` scores the dataset at another level")


@dataclass
class ColumnSpec:
    """A dataset column: which dataset, which slice of it, and precomputed first-stage runs by retriever name."""

    label: str
    dataset: str
    split: str = "test"
    max_queries: int | None = None
    top_k: int = 100
    depth: int = 1000
    runs: dict[str, str] = field(default_factory=dict)
    in_average: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        check_max_queries(self.max_queries)
        if self.top_k < 1 or self.depth < 1:
            raise ValueError(f"column {self.label!r}: top_k and depth must be >= 1")


@dataclass
class RowSpec:
    """A system: first stage (+ optional reranker on a backend and model); ``columns`` limits where it runs."""

    name: str
    retriever: str
    retriever_options: dict[str, Any] = field(default_factory=dict)
    reranker: str | None = None
    model: str | None = None
    backend: str = "transformers"
    reranker_options: dict[str, Any] = field(default_factory=dict)
    top_k: int | None = None
    interpolate: float | None = None  # the reranker's weight against the first stage's (rerank eval --interpolate)
    columns: list[str] | None = None
    requires: list[str] = field(default_factory=list)
    note: str = ""

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"row {self.name!r}: top_k must be >= 1")
        if self.reranker is None:  # as rerank eval refuses them, but before the first cell runs
            unused = [k for k in ("model", "reranker_options", "top_k", "interpolate")
                      if getattr(self, k) not in (None, {})] + (["backend"] if self.backend != "transformers" else [])
            if unused:
                raise ValueError(f"row {self.name!r}: {' and '.join(unused)} {'needs' if len(unused) == 1 else 'need'} "
                                 "a reranker and none is given: set reranker or drop "
                                 f"{'it' if len(unused) == 1 else 'them'}")
        check_interpolate(self.interpolate)


#: ``significance.correction``: how the p-values of the rows compared with one column's baseline are corrected
CORRECTIONS = ("none", "holm", "bonferroni")


@dataclass
class SignificanceSpec:
    """The randomization test's threshold ``p`` (a mark below it), its sign flips ``samples`` and ``seed``, and the
    multiple-comparison ``correction`` over the rows compared with one column's baseline."""

    p: float = 0.05
    samples: int = 10000
    seed: int = 0
    correction: Literal["none", "holm", "bonferroni"] = "none"

    def __post_init__(self) -> None:
        if self.correction not in CORRECTIONS:
            raise ValueError(f"significance.correction must be one of {', '.join(CORRECTIONS)}, "
                             f"got {self.correction!r}")
        if not 0 < self.p < 1:
            raise ValueError(f"significance.p must be a number between 0 and 1 (exclusive, e.g. 0.05), got {self.p}")
        if self.samples < 1:
            raise ValueError(f"significance.samples must be an integer >= 1 (sign flips, e.g. 10000), "
                             f"got {self.samples}")


@dataclass
class LeaderboardConfig:
    name: str
    columns: list[ColumnSpec]
    rows: list[RowSpec]
    measure: str = "nDCG@10"
    significance: SignificanceSpec = field(default_factory=SignificanceSpec)
    published: bool = True


def _package_dir(name: str) -> str:
    """The folder of installed package ``name`` (dotted: a subpackage), found without importing anything (a config
    naming ``{pkg:a.b}`` must not run package ``a``'s code)."""
    import importlib.util
    from importlib.machinery import PathFinder

    search: list[str] | None = None
    for i, part in enumerate(name.split(".")):  # a top-level find_spec imports nothing; a dotted one its parents
        spec = (importlib.util.find_spec(part) if i == 0 else PathFinder.find_spec(part, search)) if part else None
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"{{pkg:{name}}}: package {name!r} is not installed")
        search = list(spec.submodule_search_locations)
    return str(search[0])  # type: ignore[index]


def _expand(value: str, config_dir: Path) -> str:
    """Expand ``{cache}``, ``{config_dir}``, ``{pkg:NAME}`` (an installed package's folder) and ``~``."""
    value = value.replace("{cache}", str(cache_root())).replace("{config_dir}", str(config_dir))
    value = re.sub(r"\{pkg:([A-Za-z0-9_.]+)\}", lambda m: _package_dir(m.group(1)), value)
    return os.path.expanduser(value)


def load_config(path: str | Path) -> tuple[LeaderboardConfig, Path]:
    """Read and validate a leaderboard YAML; placeholders (see :func:`_expand`) expand in ``model``,
    ``retriever_options.model`` and ``requires``."""
    path = Path(path)
    cfg = from_dict(LeaderboardConfig, load_yaml(path), where=str(path))
    labels = [c.label for c in cfg.columns]
    if len(set(labels)) != len(labels) or not labels:
        raise ConfigError(f"{path}: column labels must be unique and non-empty, got {labels}")
    names = [r.name for r in cfg.rows]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"{path}: row names must be unique and non-empty, got {names}")
    for r in cfg.rows:
        bad = [c for c in (r.columns or []) if c not in labels]
        if bad:
            raise ConfigError(f"{path}: row {r.name!r} names unknown column(s) {bad}; columns: {labels}")
        requires = []
        for p in r.requires:
            try:
                requires.append(_expand(p, path.parent.resolve()))
            except ConfigError as e:  # an absent package skips the row (with this note) instead of the board
                requires.append(str(e))
        if r.model:
            try:
                r.model = _expand(r.model, path.parent.resolve())
            except ConfigError as e:
                requires.append(str(e))
        if isinstance(r.retriever_options.get("model"), str):  # a trained retriever's folder, as a reranker's model
            try:
                r.retriever_options["model"] = _expand(r.retriever_options["model"], path.parent.resolve())
            except ConfigError as e:
                requires.append(str(e))
        r.requires = requires
    for kind, given in (("column labels", labels), ("row names", names)):
        _check_folder_names(path, kind, given)
    for r in cfg.rows:
        retrieves = _check_runs(path, r, [c for c in cfg.columns if r.columns is None or c.label in r.columns])
        if _runnable(r):  # a skipped row's names may come from the package it requires
            _check_row_names(path, r, retrieves)
    return cfg, path


def _check_folder_names(path: Path, kind: str, given: list[str]) -> None:
    """Two rows (or columns) whose names give one result folder (:func:`_slug`; letter case aside, as some file
    systems ignore it) would write each other's cells: refused when the config is read, naming both."""
    seen: dict[str, str] = {}
    for name in given:
        folder = _slug(name)
        other = seen.setdefault(folder.casefold(), name)
        if other != name:
            raise ConfigError(f"{path}: {kind} {other!r} and {name!r} give one result folder {folder!r}: rename one "
                              "(letters, digits, '.', '_' and '-' name the folder; the rest becomes '_')")


def _check_runs(path: Path, row: RowSpec, columns: list[ColumnSpec]) -> bool:
    """A row's ``retriever_options`` cannot act where a column gives its retriever's run (read as it is, as ``rerank
    eval`` refuses ``--retriever-set`` beside ``--first-stage``): refused naming the row and column. Returns whether
    the row retrieves anywhere (a column of it without such a run)."""
    for col in columns:
        if row.retriever in col.runs and row.retriever_options:
            raise ConfigError(f"{path}: row {row.name!r}: retriever_options ({', '.join(map(str, row.retriever_options))}"
                              f") cannot act in column {col.label!r}, whose runs read {row.retriever} from "
                              f"{col.runs[row.retriever]} as it is: drop them, or leave that column out of the "
                              "row's columns (a row without them reads the run)")
    return any(row.retriever not in col.runs for col in columns)


def _runnable(row: RowSpec) -> bool:
    """Whether every path the row ``requires`` exists (else it is skipped with a note)."""
    return all(Path(p).exists() for p in row.requires)


def _check_row_names(path: Path, row: RowSpec, retrieves: bool) -> None:
    """Before the first cell runs: the row's reranker name and its options (as ``rerank eval`` checks them, over a
    trained model folder's recorded options), and, where it retrieves, its retriever name and option keys."""
    from rerank.cli.common import check_reranker_options
    from rerank.data_recipes.base import check_reranker

    try:
        if retrieves:
            _check_retriever_options(row.retriever, row.retriever_options, "retriever_options")
        if row.reranker is not None:
            check_reranker(row.reranker)
            check_reranker_options(row.reranker, row.model, row.reranker_options, row.backend)
    except ConfigError as e:
        raise ConfigError(f"{path}: row {row.name!r}: {e}") from None


def _check_retriever_options(name: str, options: dict[str, Any], where: str) -> None:
    """The registered retriever ``name`` exists (else the registry's error listing the known ones) and ``options``
    fill its typed config (the ``config`` argument of its ``__init__``, which ``from_dataset`` builds), checked
    without building it; a retriever without such a config is not checked."""
    from rerank.retrieval.base import retriever_config_class

    config_class = retriever_config_class(name)
    if config_class is not None:
        from_dict(config_class, options, where=f"{where} of {name}")


def load_published(path: str | Path = PUBLISHED_PATH) -> list[dict[str, Any]]:
    """Published reference entries (name, kind, model, first_stage, figures, source)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    entries = data.get("entries", [])
    for e in entries:
        missing = [k for k in ("name", "figures", "source") if k not in e]
        if missing:
            raise ConfigError(f"{path}: published entry {e.get('name')!r} lacks {missing}")
    return entries


def randomization_test(a: list[float], b: list[float], samples: int = 10000, seed: int = 0) -> float:
    """Two-sided paired randomization test of mean(a) = mean(b): p = (#|flipped mean| >= |observed| + 1)/(samples + 1)."""
    if len(a) != len(b):
        raise ValueError("paired samples must have equal length")
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ConfigError(f"samples must be an integer >= 1 (sign flips), got {samples!r}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        return 1.0
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, min(samples, 2_000_000 // max(1, d.size)))
    done = 0
    while done < samples:
        n = min(chunk, samples - done)
        signs = rng.integers(0, 2, size=(n, d.size), dtype=np.int8) * 2 - 1
        hits += int((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).sum())
        done += n
    return (hits + 1) / (samples + 1)


def adjust_p_values(p_values: list[float], correction: str) -> list[float]:
    """``p_values`` (one family, in their order) corrected for multiple comparisons: ``none`` as they are,
    ``bonferroni`` min(1, m·p), ``holm`` Holm's step-down (the i-th smallest: max over j <= i of min(1, (m-j+1)·p_j))."""
    m = len(p_values)
    if correction == "none":
        return list(p_values)
    if correction == "bonferroni":
        return [min(1.0, m * p) for p in p_values]
    if correction == "holm":
        adjusted = [0.0] * m
        running = 0.0
        for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
            running = max(running, min(1.0, (m - rank) * p_values[i]))
            adjusted[i] = running
        return adjusted
    raise ConfigError(f"unknown p-value correction {correction!r}; known: {', '.join(CORRECTIONS)}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _stamp(path: Path, model: bool = False) -> list[Any]:
    """What a cell's key records of a file or folder (:func:`~rerank.utils.files.path_stamp`). Data: the content of a
    file or of a folder's top-level files, so the same bytes written again at the same path (a dataset downloaded or
    copied again in place, new file times) keep their cells. A ``model``: every file under the folder, subfolders
    included (a saved bi-encoder's weights are in ``0_Transformer/``), files over 16 MiB by size and mtime so that a
    multi-GB model is not read on every run. The path itself is in the cell's config (:func:`_cell_hash`), so a copy
    elsewhere or a moved model reruns."""
    stamp = path_stamp(path) if model else path_stamp(path, recursive=False, hash_limit=None)
    return stamp[0] if stamp and path.is_file() else stamp


def _cell_config(row: RowSpec, col: ColumnSpec, dataset_root: Path) -> EvalConfig:
    first_stage = str(dataset_root / col.runs[row.retriever]) if row.retriever in col.runs else None
    return EvalConfig(
        dataset=str(dataset_root),
        split=col.split,
        retriever=None if first_stage else row.retriever,
        retriever_options=dict(row.retriever_options) if not first_stage else {},
        first_stage=first_stage,
        reranker=row.reranker,
        model=row.model,
        backend=row.backend,
        reranker_options=dict(row.reranker_options),
        top_k=row.top_k or col.top_k,
        interpolate=row.interpolate,
        depth=col.depth,
        max_queries=col.max_queries,
        measures=DEFAULT_MEASURES,
    )


def _cell_hash(cfg: EvalConfig, dataset_root: Path) -> str:
    """The key a cell is reused by: its eval options, paths included (the dataset folder and its run resolved, model
    folders as the row gives them once placeholders expand: the same files elsewhere are another key); the
    :func:`_stamp` of every top-level file of the dataset folder (any of them, even a run only another retriever
    reads, reruns every cell of that dataset), of ``qrels/``, ``excluded/``, the first-stage run, and of every file
    under a local model folder; the content (:meth:`~rerank.prompts.PromptTemplate.sha256`) of the prompt template
    the row's head renders (:func:`~rerank.eval.suites.reranker_template`: the one its ``template`` option names, a
    file, a shipped name or a mapping, else the head's default), in place of the ``template`` option, so a template
    file edited in place or a reworded default reruns its cells and a template named or left to the default is one
    key; the rerank version; and, for a head or retriever class from outside rerank, its :func:`_code_stamp` (so a
    plugin whose code changed, or another package's class of the same name, reruns its cells; a built-in's key holds
    none). A model named by its hub id is keyed by the name alone."""
    from rerank import __version__
    from rerank.eval.suites import reranker_template
    from rerank.prompts import load_template

    key = {k: v for k, v in to_dict(cfg).items() if k != "output"}
    key["measures"] = list(cfg.measures)
    stamps: dict[str, Any] = {
        "dataset": _stamp(dataset_root) + _stamp(dataset_root / "qrels") + _stamp(dataset_root / "excluded"),
        "version": __version__,
    }
    if cfg.first_stage:  # a precomputed run may live in a subfolder, or outside the dataset
        stamps["first_stage"] = _stamp(Path(cfg.first_stage))
    for name, model in (("model", cfg.model), ("retriever_model", cfg.retriever_options.get("model"))):
        if model and Path(str(model)).exists():
            stamps[name] = _stamp(Path(str(model)), model=True)
    template = reranker_template(cfg) if cfg.reranker else None
    named = cfg.reranker_options.get("template") if cfg.reranker else None
    if template is not None:
        stamps["template"] = template.sha256()
        key["reranker_options"] = {k: v for k, v in key["reranker_options"].items() if k != "template"}
    elif named:  # a head that sets its template itself: the one its option names
        stamps["template"] = load_template(named).sha256()
    stamps.update(_user_code_stamps(cfg))
    return hash_obj({"config": key, "stamps": stamps})


def _user_code_stamps(cfg: EvalConfig) -> dict[str, Any]:
    """``{"reranker_code": ..., "retriever_code": ...}`` (:func:`_code_stamp`) for the head and the retriever of
    ``cfg`` whose classes come from outside the ``rerank`` package; empty for built-ins."""
    from rerank.eval.suites import _reranker_class
    from rerank.retrieval.base import RETRIEVERS

    out: dict[str, Any] = {}
    head = _reranker_class(cfg)[0] if cfg.reranker else None
    retriever = RETRIEVERS.get(cfg.retriever) if cfg.retriever else None
    for name, cls in (("reranker_code", head), ("retriever_code", retriever)):
        if cls is not None and not _is_rerank_module(cls.__module__):
            out[name] = _code_stamp(cls)
    return out


def _is_rerank_module(module: str) -> bool:
    return module == "rerank" or module.startswith("rerank.")


def _code_stamp(cls: type) -> dict[str, Any]:
    """A user class's identity (``module:qualname``) and the fingerprint of its code: for each class of its MRO from
    outside rerank, the sha256 of the module's source file (:func:`inspect.getsourcefile`), or, where that cannot be
    read, the version of the installed distribution holding the module (``"?"`` when none is known)."""
    import importlib.metadata
    import inspect
    import sys

    from rerank.utils.files import sha256_file
    from rerank.utils.registry import target_path

    code: dict[str, str] = {}
    for klass in cls.__mro__:
        module = klass.__module__
        if module in code or module == "builtins" or _is_rerank_module(module):
            continue
        try:
            source = inspect.getsourcefile(sys.modules[module])
            code[module] = "sha256:" + sha256_file(source) if source else ""
        except (KeyError, TypeError, OSError):
            code[module] = ""
        if not code[module]:
            dists = importlib.metadata.packages_distributions().get(module.partition(".")[0], [])
            versions = []
            for dist in sorted(dists):
                try:
                    versions.append(f"{dist}=={importlib.metadata.version(dist)}")
                except importlib.metadata.PackageNotFoundError:
                    continue
            code[module] = ",".join(versions) or "?"
    return {"class": target_path(cls), "code": code}


def _cell_summary(metrics: dict[str, Any], measure: str, cell: str) -> dict[str, Any]:
    """What the table reads of a cell's ``metrics.json``: ``measure`` under the name the cell's metrics gave it (a
    binary measure at the dataset's relevance level 2 is ``AP(rel=2)``); a cell lacking it is a ConfigError."""
    t = metrics["timing_s"]
    n = metrics["num_queries"]
    secs = t.get("first_stage_s", 0.0) + t.get("rerank_s", 0.0)
    key = parse_measures(measure, metrics.get("rel_level", 1))[0][0]
    if key not in metrics["metrics"] or not all(key in v for v in metrics["per_query"].values()):
        raise ConfigError(f"cell {cell}: its metrics.json holds no {key!r} (the leaderboard's measure {measure!r} at "
                          f"relevance level {metrics.get('rel_level', 1)}; a damaged file?): rerun with --force")
    per_query = {q: v[key] for q, v in metrics["per_query"].items()}
    missing = metrics.get("missing_queries")  # absent from a cell's metrics.json written before it was recorded
    return {
        "value": metrics["metrics"][key],
        "measure_key": key,
        "per_query": per_query,
        "num_queries": n,
        "missing_queries": len(missing) if isinstance(missing, list) else None,
        "seconds": secs,
        "queries_per_s": (n / secs) if secs > 0 else None,
        "parse": metrics.get("parse"),
    }


#: what a cached cell's files must hold to be reused: key -> JSON type (``_cell_summary`` reads these)
_CELL_KEYS = {"cell.json": {"hash": str}, "metrics.json": {"metrics": dict, "per_query": dict, "timing_s": dict,
                                                           "num_queries": int}}
_JSON_TYPE = {dict: "object", str: "string", int: "integer"}


def _read_cell_file(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``path`` (a cell's ``cell.json`` or ``metrics.json``) as a dict, or None and what is wrong with it."""
    try:
        data = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        return None, f"not valid JSON ({e})"
    if not isinstance(data, dict):
        return None, f"holds a JSON {type(data).__name__}, not an object"
    for key, kind in _CELL_KEYS[path.name].items():
        if not isinstance(data.get(key), kind):
            return None, f"no {key!r}" if key not in data else f"{key!r} is not a JSON {_JSON_TYPE[kind]}"
    if path.name == "metrics.json" and not all(isinstance(v, dict) for v in data["per_query"].values()):
        return None, "a 'per_query' entry is not a JSON object"
    return data, ""


def _cached_cell(out: Path, h: str, cell: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A finished cell's ``cell.json`` and ``metrics.json`` when its hash is ``h``, else ``(None, None)``. A cell is
    derived from its inputs, so a damaged file of it is a miss: one warning names the file and the cell runs again."""
    files = [out / "cell.json", out / "metrics.json"]
    if not all(f.exists() for f in files):
        return None, None
    loaded = []
    for f in files:
        data, why = _read_cell_file(f)
        if data is None:
            log.warning("%s: damaged cached result, %s; running cell %s again", f, why, cell)
            return None, None
        if f.name == "cell.json" and data["hash"] != h:  # another config or other inputs: not this cell's result
            return None, None
        loaded.append(data)
    return loaded[0], loaded[1]


def run_leaderboard(
    config_path: str | Path,
    data_root: str | Path | None = None,
    results_dir: str | Path | None = None,
    force: bool = False,
    output_md: str | Path | None = None,
    progress: bool = True,
    only_cached: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Run (or reuse) every cell, then write ``leaderboard.json``, the Markdown leaderboard and its PNG plot.

    ``only_cached``: run nothing; cells without results of the same hash are listed as not run. ``workers`` > 1:
    each reranking cell reranks in that many processes (``rerank eval --workers``: the same run and scores as one, so
    the cell hash does not include it and a cell is reused whatever the count it ran with); recorded per cell.
    """
    if only_cached and force:
        raise ConfigError("--only-cached and --force contradict each other")
    check_positive_int(workers, "workers")
    cfg, cfg_path = load_config(config_path)
    results = Path(results_dir) if results_dir is not None else cache_root() / "leaderboard" / _slug(cfg.name)
    results.mkdir(parents=True, exist_ok=True)
    if cfg.measure not in DEFAULT_MEASURES:
        raise ConfigError(f"leaderboard measure {cfg.measure!r} must be one of {', '.join(DEFAULT_MEASURES)}")
    roots = {c.label: resolve_dataset(c.dataset, data_root).root.resolve() for c in cfg.columns}
    for col in cfg.columns:  # every input is checked before the first cell runs
        for name, run_file in col.runs.items():
            if not (roots[col.label] / run_file).is_file():
                raise ConfigError(f"column {col.label!r}: the {name} run {roots[col.label] / run_file} does not exist")
    runnable = [r for r in cfg.rows if _runnable(r)]
    for row in runnable:
        if row.reranker is not None and row.reranker != "remote" and row.backend != "openai" and row.model:
            check_model_path(row.model, f"row {row.name!r}: model")
        if row.retriever_options.get("model"):
            check_model_path(str(row.retriever_options["model"]), f"row {row.name!r}: retriever model")
    cells: dict[str, dict[str, dict[str, Any]]] = {r.name: {} for r in cfg.rows}
    notes: list[str] = []
    for row in cfg.rows:
        if row not in runnable:
            missing = [p for p in row.requires if not Path(p).exists()]
            how = f" ({row.note})" if row.note else ""  # e.g. "train it first: …"
            notes.append(f"row '{row.name}' skipped: required path(s) absent: {', '.join(missing)}{how}")
            continue
        reranker = None
        for col in cfg.columns:
            if row.columns is not None and col.label not in row.columns:
                continue
            ecfg = _cell_config(row, col, roots[col.label])
            h = _cell_hash(ecfg, roots[col.label])
            out = results / _slug(row.name) / _slug(col.label)
            cell_file = out / "cell.json"
            saved, metrics = (None, None) if force else _cached_cell(out, h, f"'{row.name}' x '{col.label}'")
            if metrics is not None:
                log.info("reusing %s / %s (hash %s)", row.name, col.label, h)
            reused = metrics is not None
            if metrics is None and only_cached:
                notes.append(f"cell '{row.name}' x '{col.label}' not run (no cached result for its config)")
                continue
            if metrics is None:
                if row.reranker is not None and workers > 1:
                    ecfg.workers = workers  # after the hash: the run does not depend on it
                    ecfg.llm_cache = False  # as in one process: a cell's queries/s are its model calls' own
                elif reranker is None and row.reranker is not None:
                    from rerank.heads.base import Reranker

                    reranker = Reranker.load(row.reranker, model=row.model, backend=row.backend,
                                             **row.reranker_options)
                ecfg.output = str(out)
                cell_file.unlink(missing_ok=True)  # a kill before the new one is written must not pair it with new metrics
                log.info("running %s / %s", row.name, col.label)
                load0 = os.getloadavg()[0]
                metrics = run_eval(ecfg, reranker=reranker, progress=progress, rel_level_fix=REL_LEVEL_FIX)
                saved = {"hash": h, "row": to_dict(row), "column": to_dict(col),
                         "load_avg_1min": [load0, os.getloadavg()[0]], "cpus": os.cpu_count(),
                         "workers": ecfg.workers}
                write_json(saved, cell_file)
            load = saved.get("load_avg_1min") if saved else None
            cells[row.name][col.label] = {**_cell_summary(metrics, cfg.measure, f"'{row.name}' x '{col.label}'"),
                                          "reused": reused, "dir": str(out),
                                          "load_avg_1min": load, "workers": (saved or {}).get("workers", 1),
                                          "computed": _computed(metrics)}
        if reranker is not None:
            reranker.close()
    report = _assemble(cfg, cells, notes)
    write_json(report, results / "leaderboard.json")
    md_path = Path(output_md) if output_md is not None else results / "leaderboard.md"
    png_path = md_path.with_suffix(".png")
    _plot(cfg, cells, png_path)
    with atomic_write(md_path) as f:
        f.write(render_markdown(report, cfg_path, png_path.name))
    report["markdown"] = str(md_path)
    report["plot"] = str(png_path)
    return report


#: the versions compared with this run's (:func:`~rerank.eval.pipeline.versions`): a cell's hash holds only rerank's
VERSION_KEYS = ("rerank", "torch", "transformers")
#: what ``leaderboard.json`` records of when, where and with what each cell was computed (its ``metrics.json``'s)
_COMPUTED_KEYS = ("date", "machine", *VERSION_KEYS, "git_hash")


def _computed(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """When, on which machine and with which versions and code a cell was computed (its ``metrics.json``'s
    ``provenance``); None for a cell written before that was recorded."""
    p = metrics.get("provenance")
    return {k: p.get(k) for k in _COMPUTED_KEYS} if isinstance(p, dict) else None


def _version_note(cells: dict[str, dict[str, dict[str, Any]]], current: dict[str, Any]) -> str | None:
    """One note naming the cells computed under other versions than ``current`` (this run's), with theirs, or None.
    A reused cell keeps its result while torch or transformers changed (its hash holds only rerank's version)."""
    other = []
    for rname, d in cells.items():
        for cname, c in d.items():
            if "computed" not in c:
                continue
            computed = c["computed"]
            if computed is None:
                other.append(f"'{rname}' x '{cname}' (versions not recorded)")
                continue
            differ = [f"{k} {computed.get(k)}" for k in VERSION_KEYS if computed.get(k) != current.get(k)]
            if differ:
                other.append(f"'{rname}' x '{cname}' ({', '.join(differ)})")
    if not other:
        return None
    now = ", ".join(f"{k} {current.get(k)}" for k in VERSION_KEYS)
    return f"cells computed under other versions than this run's ({now}): {'; '.join(other)}"


def _assemble(cfg: LeaderboardConfig, cells: dict[str, dict[str, dict[str, Any]]], notes: list[str]) -> dict:
    sig = cfg.significance
    rows_out = []
    pairwise: dict[str, list[dict[str, Any]]] = {}
    for col in cfg.columns:
        have = [r.name for r in cfg.rows if col.label in cells.get(r.name, {})]
        pairs = []
        for i, a in enumerate(have):
            for b in have[i + 1 :]:
                ca, cb = cells[a][col.label]["per_query"], cells[b][col.label]["per_query"]
                common = sorted(set(ca) & set(cb))
                p = randomization_test([ca[q] for q in common], [cb[q] for q in common], sig.samples, sig.seed)
                pairs.append({"a": a, "b": b, "queries": len(common), "p": p})
        pairwise[col.label] = pairs
    base = {c.label: next((n for n in cells if c.label in cells[n]), None) for c in cfg.columns}
    versus: dict[str, dict[str, dict[str, Any]]] = {}  # column -> row -> its pair with the column's baseline
    for col in cfg.columns:
        family = [x for x in pairwise[col.label] if base[col.label] in (x["a"], x["b"])]
        for x in pairwise[col.label]:
            x["p_adjusted"] = None  # only the pairs with the baseline form the corrected family
        for x, q in zip(family, adjust_p_values([x["p"] for x in family], sig.correction), strict=True):
            x["p_adjusted"] = q
        versus[col.label] = {x["b"] if x["a"] == base[col.label] else x["a"]: x for x in family}
    avg_cols = [c.label for c in cfg.columns if c.in_average]
    for r in cfg.rows:
        rc = cells.get(r.name, {})
        if not rc:
            continue
        values = {}
        for col in cfg.columns:
            if col.label not in rc:
                continue
            b = base[col.label]
            pair = versus[col.label].get(r.name)
            diff = direction = None
            if pair is not None:
                mine, theirs = rc[col.label]["per_query"], cells[b][col.label]["per_query"]
                common = set(mine) & set(theirs)
                diff = (sum(mine[q] - theirs[q] for q in common) / len(common)) if common else 0.0
                if pair["p_adjusted"] < sig.p and diff != 0:
                    direction = "above" if diff > 0 else "below"
            values[col.label] = {"value": rc[col.label]["value"], "baseline": b,
                                 "p_vs_baseline": pair["p"] if pair else None,
                                 "p_adjusted": pair["p_adjusted"] if pair else None,
                                 "mean_difference": diff, "significant": direction is not None,
                                 "direction": direction, "num_queries": rc[col.label]["num_queries"],
                                 "missing_queries": rc[col.label].get("missing_queries"),
                                 "top_k": (r.top_k or col.top_k) if r.reranker else None}
        avg = (sum(rc[c]["value"] for c in avg_cols) / len(avg_cols)) if avg_cols and all(c in rc for c in avg_cols) \
            else None
        secs = sum(v["seconds"] for v in rc.values())
        nq = sum(v["num_queries"] for v in rc.values())
        rows_out.append({
            "name": r.name, "first_stage": r.retriever, "reranker": r.reranker,
            "backend": r.backend if r.reranker and r.reranker != REMOTE else None,  # remote: the server's
            "model": r.model or r.retriever_options.get("model"), "top_k": r.top_k,
            "interpolate": r.interpolate, "columns": values, "average": avg,
            "queries_per_s": (nq / secs) if secs > 0 else None, "note": r.note,
        })
    for rname, d in cells.items():
        for cname, c in d.items():
            if c.get("missing_queries"):
                notes.append(f"'{rname}' x '{cname}': {c['missing_queries']} of {c['num_queries']} judged queries are "
                             f"absent from the run and count as 0 in its {cfg.measure}, its average and its p-values")
            p = c.get("parse") or {}
            if p.get("parse_failures"):
                notes.append(f"'{rname}' x '{cname}': {p['parse_failures']} of {p['outputs']} model outputs failed "
                             "to parse (scored as the head's documented fallback)")
    current = versions()
    version_note = _version_note(cells, current)
    if version_note is not None:
        notes.append(version_note)
    published = load_published() if cfg.published else []
    return {
        "name": cfg.name,
        "measure": cfg.measure,
        "columns": [to_dict(c) for c in cfg.columns],
        "average_over": avg_cols,
        "rows": rows_out,
        "cells": {r: {c: {k: v for k, v in x.items() if k != "per_query"} for c, x in d.items()}
                  for r, d in cells.items()},
        "pairwise": pairwise,
        "significance": to_dict(sig),
        "published": published,
        "notes": notes,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU(s), {platform.system()}",
        "versions": current,
    }


#: a cell's mark by its direction against the column's baseline (significant only)
_MARKS = {"above": " ▲", "below": " ▼"}
_CORRECTION_WORDS = {
    "none": "p-values not corrected for multiple comparisons (`significance.correction: holm` or `bonferroni` "
            "corrects them)",
    "holm": "p-values Holm-corrected over the rows compared with that baseline in the column",
    "bonferroni": "p-values Bonferroni-corrected over the rows compared with that baseline in the column",
}


def _direction(cell: dict[str, Any], values: dict[str, float]) -> str | None:
    """``above`` / ``below`` where a cell is significantly better / worse than its baseline, else None. A cell of a
    ``leaderboard.json`` written before directions were recorded is compared by value with its baseline's
    (``values``: row name -> value in the cell's column)."""
    if not cell.get("significant"):
        return None
    if "direction" in cell:
        return cell["direction"]
    theirs = values.get(cell.get("baseline"))
    return None if theirs is None or theirs == cell["value"] else ("above" if cell["value"] > theirs else "below")


def _fmt(v: float | None, digits: int = 4) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _fmt_p(p: float, alpha: float) -> str:
    """``p`` to 4 decimals, or more where those would put it on the other side of ``alpha`` than the ``▲``/``▼`` mark
    (0.049975 is 0.04998, not 0.0500, beside p < 0.05)."""
    digits = 4
    while (float(f"{p:.{digits}f}") < alpha) != (p < alpha) and digits < 17:
        digits += 1
    return f"{p:.{digits}f}"


def _qps(v: float | None) -> str:
    return "—" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.3g}")


def model_label(model: str) -> str:
    """A model's name for the table: its folder, with the folder above when it is a training output's ``model``
    (``scifact-cross-encoder/model`` says which training; ``model`` alone says nothing)."""
    path = Path(model)
    return f"{path.parent.name}/{path.name}" if path.name == "model" and path.parent.name else path.name


def _own_top_k(row: dict[str, Any], cols: list[dict[str, Any]]) -> list[str]:
    """The column labels where ``row`` reranks another top-k than the column's (its own ``top_k``)."""
    col_k = {c["label"]: c["top_k"] for c in cols}
    return [label for label, v in row["columns"].items()
            if v.get("top_k") is not None and v["top_k"] != col_k.get(label)]


def _reranker_cell(row: dict[str, Any], cols: list[dict[str, Any]]) -> str:
    """The reranker's name, with its own ``top-N`` where it differs from a column's and its interpolation weight
    ``α=A``: two rows of one model that rerank differently must not read the same."""
    if not row["reranker"]:
        return "—"
    setting = [f"top-{row['top_k']}"] if row.get("top_k") is not None and _own_top_k(row, cols) else []
    if row.get("interpolate") is not None:
        setting.append(f"α={row['interpolate']:g}")
    return row["reranker"] + (f" ({', '.join(setting)})" if setting else "")


def _reused_sentence(report: dict[str, Any]) -> str:
    """How many cells were reused from earlier runs and when those were computed: the date above is this run's."""
    cells = [x for d in report["cells"].values() for x in d.values()]
    reused = [x for x in cells if x.get("reused")]
    if not reused:
        return ""
    dates = sorted(x["computed"]["date"] for x in reused if (x.get("computed") or {}).get("date"))
    when = (f", computed {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else "")) if dates else ""
    return (f" {len(reused)} of {len(cells)} cells were reused from earlier runs{when} (each cell's date, machine and "
            "versions are in `leaderboard.json`).")


def render_markdown(report: dict[str, Any], config_path: str | Path, plot_name: str | None) -> str:
    """The leaderboard as Markdown: measured table, cost, notes, published figures, pairwise p-values."""
    m = report["measure"]
    cols = report["columns"]
    sig = report["significance"]
    own_k = {label for r in report["rows"] for label in _own_top_k(r, cols)}
    interpolated = any(r.get("interpolate") is not None for r in report["rows"])
    lines = [
        f"# Leaderboard: {report['name']}",
        "",
        (f"Generated {report['generated']} on {report['machine']} by "
         f"`rerank leaderboard --config {config_path}`. Measure: **{m}** (mean over each column's judged queries)."
         + _reused_sentence(report)),
        "",
        "## Measured",
        "",
        "| # | system | first stage | reranker | backend | model | "
        + " | ".join(c["label"] for c in cols) + " | avg | queries/s |",
        "|---|---|---|---|---|---|" + "---|" * (len(cols) + 2),
    ]
    correction = sig.get("correction", "none")  # a leaderboard.json written before corrections were offered
    missing = False
    by_column = {c["label"]: {r["name"]: r["columns"][c["label"]]["value"] for r in report["rows"]
                              if c["label"] in r["columns"]} for c in cols}
    for i, r in enumerate(report["rows"], 1):
        cells = []
        for c in cols:
            v = r["columns"].get(c["label"])
            if v is None:
                cells.append("—")
                continue
            cells.append(_fmt(v["value"]) + _MARKS.get(_direction(v, by_column[c["label"]]) or "", ""))
            if v.get("missing_queries"):
                missing = True
                cells[-1] += f" ({v['missing_queries']}/{v['num_queries']} missing)"
        model = f"`{model_label(r['model'])}`" if r["model"] else "—"
        lines.append(
            f"| {i} | {r['name']} | {r['first_stage']} | {_reranker_cell(r, cols)} | {r['backend'] or '—'} | {model} | "
            + " | ".join(cells) + f" | {_fmt(r['average'])} | {_qps(r['queries_per_s'])} |"
        )
    lines += [
        "",
        (f"▲ / ▼: significantly above / below (better / worse than) the first row that has the column (row 1 where "
         f"present): p < {sig['p']} in a paired two-sided randomization test on per-query {m} ({sig['samples']} "
         f"sign flips, seed {sig['seed']}), {_CORRECTION_WORDS[correction]}; no mark: not significant. "
         + ("(n/N missing): n of the column's N judged queries are absent from the row's run and count as 0 "
            "(see Notes). " if missing else "")
         + f"avg: mean over {', '.join(report['average_over']) or 'no columns'} (only rows with all of them). "
         "queries/s: judged queries / (first-stage + rerank seconds) over the row's cells, model loading excluded; "
         "where a column gives a precomputed run, its first-stage time is reading that run file."
         + (" reranker (top-N): it reranks the first stage's top N, not the column's top-k." if own_k else "")
         + (" α=A: the reranked top-k ordered by A × the reranker's scores + (1 − A) × the first stage's, each "
            "min-max normalised per query (`rerank eval --interpolate`)." if interpolated else "")),
        "",
        "Columns:",
        "",
    ]
    for c in cols:
        sl = f"first {c['max_queries']} queries" if c["max_queries"] else "all queries"
        runs = ", ".join(f"{k} = `{v}`" for k, v in c["runs"].items())
        own = " (rows marked top-N: their N)" if c["label"] in own_k else ""
        keys = sorted({x.get("measure_key", m) for d in report["cells"].values() for label, x in d.items()
                       if label == c["label"]} - {m})
        scored = (f"; {m} is scored as {', '.join(f'`{k}`' for k in keys)} (the dataset's relevance level)"
                  if keys else "")
        lines.append(f"- **{c['label']}**: `{c['dataset']}` ({c['split']}), {sl}, rerank top-{c['top_k']}{own}{scored}"
                     + (f"; precomputed runs: {runs}" if runs else "") + (f". {c['note']}" if c["note"] else ""))
    loads = [x["load_avg_1min"] for d in report["cells"].values() for x in d.values() if x.get("load_avg_1min")]
    if loads:
        hi = max(max(x) for x in loads)
        lines += ["", (f"Machine load while cells ran: 1-minute load average up to {hi:.1f} on {os.cpu_count()} "
                       "CPU(s) (per cell in `leaderboard.json`); queries/s measured under different loads are not "
                       "comparable.")]
    pooled: dict[str, int] = {}
    for rname, d in report["cells"].items():
        for x in d.values():
            if x.get("workers", 1) > 1:
                pooled[rname] = max(pooled.get(rname, 1), x["workers"])
    if pooled:
        lines += ["", "Reranked in worker processes (`--workers`: the rankings of one process; queries/s counts them "
                  "all): " + "; ".join(f"{r} ({n})" for r, n in pooled.items()) + "."]
    row_notes = [f"- {r['name']}: {r['note']}" for r in report["rows"] if r["note"]]
    if row_notes or report["notes"]:
        lines += ["", "Notes:", "", *row_notes, *(f"- {n}" for n in report["notes"])]
    if plot_name:
        lines += ["", f"![{m} vs cost]({plot_name})"]
    if report["published"]:
        full = {c["dataset"] for c in cols if not c["max_queries"]}
        lines += ["", "## Published reference figures (not measured here)", "",
                  ("Reported by the cited sources, under their own setups; shown for orientation, not ranked with "
                   "the measured rows."), "",
                  "| system (published) | kind | model | first stage | dataset | measure | value | source |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in report["published"]:
            for f in e["figures"]:
                here = " (a column here)" if f["dataset"] in full else ""
                lines.append(f"| *{e['name']}* | {e.get('kind', '')} | {e.get('model') or '—'} | "
                             f"{e.get('first_stage') or '—'} | {f['dataset']}{here} | {f['measure']} | "
                             f"{f['value']:.4f} | {e['source']} |")
    pw = [(c, p) for c, ps in report["pairwise"].items() for p in ps]
    if pw:
        corrected = correction != "none"
        name = correction.capitalize()
        lines += ["", "## Pairwise significance (p-values)", "",
                  ("p: every pair tested alone (uncorrected)"
                   + (f"; p ({name}): corrected over the rows compared with the column's baseline, which the marks "
                      "use" if corrected else "") + "."), "",
                  "| column | row A | row B | queries | p |" + (f" p ({name}) |" if corrected else ""),
                  "|---|---|---|---|---|" + ("---|" if corrected else "")]
        for c, p in pw:
            adjusted = p.get("p_adjusted")
            extra = (f" {'—' if adjusted is None else _fmt_p(adjusted, sig['p'])} |" if corrected else "")
            lines.append(f"| {c} | {p['a']} | {p['b']} | {p['queries']} | {_fmt_p(p['p'], sig['p'])} |{extra}")
    lines.append("")
    return "\n".join(lines)


def _plot(cfg: LeaderboardConfig, cells: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=90)
    markers = "osD^v<>px*"
    order = [r.name for r in cfg.rows if cells.get(r.name)]  # numbered as the measured table
    for j, col in enumerate(cfg.columns):
        xs, ys, idx = [], [], []
        for i, name in enumerate(order, 1):
            c = cells.get(name, {}).get(col.label)
            if c is None or c["value"] is None or not c["seconds"]:
                continue
            xs.append(1000.0 * c["seconds"] / max(1, c["num_queries"]))
            ys.append(c["value"])
            idx.append(i)
        if not xs:
            continue
        ax.scatter(xs, ys, marker=markers[j % len(markers)], label=col.label, s=40)
        for x, y, i in zip(xs, ys, idx, strict=True):
            ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ms per query (first stage + rerank, log scale)")
    ax.set_ylabel(cfg.measure)
    ax.set_title(f"{cfg.name}: {cfg.measure} vs cost (numbers = table rows)")
    ax.grid(True, alpha=0.3)
    if ax.collections:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
