"""The recipe runner: strict recipe configs, per-unit resumable output, atomic finalisation and a manifest.

Every recipe turns *units* (source queries, or documents for query synthesis) into training rows of the trainer
schema ``{"qid", "query", "candidates": [{"id", "text", "title"?, "score"?}], "labels": [int], "teacher_ranking"?,
"teacher_scores"?, "reasoning"?}``. While running, each finished unit is appended (and flushed) as one line
``{"unit", "rows"}`` to ``progress.jsonl``; an interrupted build continues with ``resume=True`` from the units done
(a torn last line is dropped), unless an input the finished units were read from changed since the build started
(:meth:`Recipe.inputs`, recorded in ``progress.meta.json``). A unit that gives no row is recorded with its reason
(:meth:`Recipe.skip`); at the end one warning counts them by reason with a few example ids. ``data.jsonl``,
``skipped.jsonl`` (one ``{"unit", "reason"}`` line per unit without a row, when there is one) and ``manifest.json``
(source, input fingerprints, recipe hash, counts, those per skip reason included) are written atomically and the
progress file is removed; a resume of a
finished build keeps it only while those inputs are unchanged. The recipe hash leaves out the paths of the files
``source.queries`` and ``first_stage.run`` (inputs, compared by content) and reads a dataset folder by its resolved
path, so it does not depend on how a path is spelled. Every recipe reads its dataset as ``source.dataset``; an unknown
key that is another command's name for a recipe option (the trainers' ``data.beir``, ``negatives_per_positive``, …)
is an error naming the recipe's key (:data:`RECIPE_KEY_HINTS`) where the recipe reads it as configured, else saying
why it refuses that key, and an error about a key a ``--set`` override gave names that override.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import logging
import os
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from rerank.config import (
    build_error,
    changed_options,
    drop_key,
    from_dict,
    layered,
    option_default,
    override_source,
    plain,
    probe_value,
    to_dict,
)
from rerank.errors import ConfigError, DataFormatError, RerankError
from rerank.models import check_model_path
from rerank.utils.files import atomic_write, hash_obj, sha256_file, write_json

__all__ = [
    "RECIPE_KEY_HINTS",
    "SKIPPED_FILE",
    "FirstStageSpec",
    "ModelSpec",
    "Recipe",
    "SourceSpec",
    "build",
    "check_recipe_keys",
    "check_reranker",
    "file_input",
    "load_hf_dataset",
    "path_inputs",
    "read_rows",
    "unit_rng",
    "validate_row",
]

log = logging.getLogger(__name__)
SCHEMA_VERSION = "rerank-train-v1"
#: the file of a build's units without a row, each with its reason
SKIPPED_FILE = "skipped.jsonl"
#: the skip reasons of a unit whose recipe gave none, and of one an interrupted build finished without recording it
NO_ROW, NOT_RECORDED = "no_row", "not_recorded"
#: how many example ids the warning about skipped units names per reason
_SKIP_EXAMPLES = 3


@dataclass
class SourceSpec:
    """Where units come from: a dataset (registered name or BEIR folder), its split, optionally the first N queries.

    ``queries``: instead of the split, the queries of another build's ``data.jsonl`` (e.g. synthetic queries from
    ``query_synthesis``), with their rows' labels as the judgements; the dataset then gives only the corpus (its
    qrels are never read)."""

    dataset: str
    split: str = "train"
    max_queries: int | None = None
    queries: str | None = None

    def __post_init__(self) -> None:
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1 (or left out for every query), got {self.max_queries}")
        if self.queries is not None and changed_options(self, ("split",)):
            raise ValueError(f"split {self.split!r} is not read with 'queries' (the queries and their labels come from "
                             "that file, the dataset gives only the corpus): drop split")

    def check(self) -> None:
        """Before the build starts: a ``queries`` file exists."""
        if self.queries is not None and not Path(self.queries).is_file():
            raise ConfigError(f"source queries {self.queries} does not exist")


@dataclass
class FirstStageSpec:
    """A registered retriever (with options), or a TREC run file; ``depth`` candidates per query."""

    retriever: str | None = None
    run: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    depth: int = 100

    def __post_init__(self) -> None:
        if (self.retriever is None) == (self.run is None):
            raise ValueError("first_stage needs exactly one of 'retriever' or 'run'")
        if self.depth < 1:
            raise ValueError(f"first_stage depth must be >= 1, got {self.depth}")
        if self.run is not None and self.options:
            raise ValueError("options apply to a first_stage retriever; a run file is read as it is: drop options "
                             f"({', '.join(map(str, self.options))}) or give a retriever instead of the run")

    def check(self) -> None:
        """Before the build starts: the run file exists, and a retriever's model can be loaded."""
        if self.run is not None and not Path(self.run).is_file():
            raise ConfigError(f"first_stage run {self.run} does not exist")
        if self.options.get("model"):
            check_model_path(str(self.options["model"]), "first_stage model")


@dataclass
class ModelSpec:
    """A registered reranker on a model and backend."""

    reranker: str
    model: str | None = None
    backend: str = "transformers"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_reranker(self.reranker)

    def check(self) -> None:
        """Before the build starts: the model can be loaded here (a served one, remote or openai, is not checked)."""
        if self.model and self.reranker != "remote" and self.backend != "openai":
            check_model_path(self.model, f"{self.reranker} model")

    def load(self) -> Any:
        from rerank.heads.base import Reranker

        return Reranker.load(self.reranker, model=self.model, backend=self.backend, **self.options)


def check_reranker(name: str) -> None:
    """A reranker name the registry knows, checked when the config is read (not when the model loads, after the data
    work); an unknown one raises the registry's error listing the known names."""
    from rerank.heads.registry import available_rerankers, get_reranker_class

    if name not in available_rerankers():
        get_reranker_class(name)  # raises "unknown reranker ...; known rerankers: ..."


def _check_models(config: Any) -> None:
    """Call ``check()`` on every part of a recipe's config that has one (model specs, the first stage), so a missing
    model or run file fails before any retrieval or mining."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        if callable(getattr(config, "check", None)):
            config.check()
        for f in dataclasses.fields(config):
            _check_models(getattr(config, f.name))


def unit_rng(seed: int, unit: str) -> random.Random:
    """A random generator that depends only on (seed, unit), so a resumed build makes the same choices."""
    return random.Random(f"{seed}:{unit}")


def validate_row(row: dict[str, Any], where: str = "row") -> None:
    """Check one row against the trainers' schema (:func:`rerank.trainers.data.validate_example`), plus: a
    ``teacher_ranking`` written by a recipe ranks every candidate. A mistake raises ``DataFormatError``."""
    from rerank.trainers.data import validate_example

    validate_example(row, where, None)
    ids = [str(c["id"]) for c in row["candidates"]]
    if "teacher_ranking" in row and sorted(map(str, row["teacher_ranking"])) != sorted(ids):
        raise DataFormatError(where, None, "teacher_ranking must be a permutation of the candidate ids")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a recipe's ``data.jsonl``."""
    from rerank.data.io import iter_jsonl

    rows = []
    for lineno, row in iter_jsonl(path):
        validate_row(row, f"{path}:{lineno}")
        rows.append(row)
    return rows


def load_hf_dataset(path: str | Path) -> Any:
    """The rows as a Hugging Face ``datasets.Dataset`` (JSON loader)."""
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train")


def file_input(path: str | Path, sha256: str | None = None) -> dict[str, str]:
    """The fingerprint of a data file a recipe reads (corpus, queries, qrels, run): its sha256 (``sha256`` when the
    caller has it already, e.g. the dataset's cached corpus hash), with its path for messages."""
    return {"path": str(path), "fingerprint": "sha256:" + (sha256 or sha256_file(path))}


#: options whose value names a model or index even as a bare relative name (other values count as paths when they
#: look like one: a ``/`` in them, or a leading ``~``)
_PATH_OPTIONS = ("model", "index")


def _local_path(value: str, option: str) -> Path | None:
    """The local file or folder the value of ``option`` names (a packaged model's folder included), or None (a hub
    id, a served model's name, a retriever or mode name, any other text)."""
    from rerank.models import PACKAGED_MODELS, packaged_model_path

    if not value.strip() or (option not in _PATH_OPTIONS and "/" not in value and os.sep not in value
                             and not value.startswith("~")):
        return None
    if value in PACKAGED_MODELS:
        try:
            return packaged_model_path(value)
        except RerankError:  # not installed: the model check names it; nothing here to fingerprint
            return None
    try:
        path = Path(value).expanduser()
        return path if path.exists() else None
    except (OSError, ValueError):  # a long prompt text or one with a NUL is no path
        return None


def _stat_fingerprint(path: Path) -> str:
    """Sizes and modification times of a file or of every file under a folder: cheap for model weights, which a
    rewrite (a retrained model saved to the same folder) changes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return "stat:" + hash_obj([(p.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns)
                               for p in files for st in [p.stat()]])


def path_inputs(config: Any, skip: Iterable[str] = ()) -> dict[str, dict[str, str]]:
    """Fingerprints of the local files and folders a recipe's options name (models, a template file, a saved index),
    keyed by the dotted option name; ``skip``: options the recipe fingerprints by content itself (its data files)."""
    out: dict[str, dict[str, str]] = {}
    skipped = set(skip)

    def walk(value: Any, name: str) -> None:
        if name in skipped:
            return
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{name}.{f.name}" if name else f.name)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{name}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{name}[{i}]")
        elif isinstance(value, str) and (path := _local_path(value, name.rpartition(".")[2])) is not None:
            out[name] = {"path": str(path), "fingerprint": _stat_fingerprint(path)}

    walk(config, "")
    return out


def _check_inputs(out: Path, old: Mapping[str, Any], new: Mapping[str, Any], built: str) -> None:
    """Refuse a resume whose inputs differ from those recorded when the build in ``out`` started (one line naming
    each); ``built``: what of that build would be stale ("the unfinished build started, so its 4 finished units")."""
    changed = [name for name in sorted(set(old) | set(new))
               if (old.get(name) or {}).get("fingerprint") != (new.get(name) or {}).get("fingerprint")]
    if changed:
        what = ", ".join(f"{name} {(new.get(name) or old.get(name))['path']}" for name in changed)
        raise ConfigError(f"{out}: cannot resume: {what} changed since {built} were built from other data; remove "
                          f"{out} (or choose another --output) and rerun without --resume")


def _recorded_inputs(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The input fingerprints a finished build's manifest holds; a manifest of an older rerank records only its
    corpus's sha256 (in ``source``)."""
    if isinstance(manifest.get("inputs"), dict):
        return dict(manifest["inputs"])
    source = manifest.get("source") or {}
    if source.get("corpus_sha256"):
        return {"corpus": {"path": f"{source.get('root', '?')}/corpus.jsonl",
                           "fingerprint": f"sha256:{source['corpus_sha256']}"}}
    return {}


def _spelling_free(kind: str, config: Any) -> dict[str, Any]:
    """The config as the recipe hash covers it, whatever the spelling of its paths: a dataset given as a folder path by
    its resolved path, the files ``source.queries`` and ``first_stage.run`` not at all (their content is an input the
    resume checks compare, :meth:`Recipe.inputs`), so ``./OUT/x``, ``OUT/x`` and a copied OUT hash the same."""
    from rerank.data.datasets import is_dataset_name

    view = {"recipe": kind, **to_dict(config)}
    for block, key in (("source", "queries"), ("first_stage", "run"), ("source", "dataset")):
        holder = view.get(block)
        value = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(value, str):
            continue
        if key == "dataset":
            path = Path(value).expanduser()
            if not is_dataset_name(value) and path.is_dir():  # a name is looked up under the data root
                holder[key] = str(path.resolve())
        else:
            holder[key] = "(a file, compared by content)"
    return view


#: other commands' names for a recipe option (the reranker trainers' ``data.beir``, ``data.negatives_per_positive``,
#: …, the retriever trainers' ``dataset``, eval's ``--rel-level``) -> (the recipe keys it may be, why): an unknown key
#: among them is an error naming the first of those keys the recipe has; a recipe with none gets the plain error
RECIPE_KEY_HINTS: dict[str, tuple[tuple[str, ...], str]] = {
    **{key: (("source.dataset",), "every recipe reads its dataset as source: {dataset: NAME}")
       for key in ("dataset", "beir", "data.beir", "data.dataset")},
    **{key: (("source.split",), "a recipe reads the queries of source.split") for key in ("split", "data.split")},
    **{key: (("source.max_queries", "max_docs"), "a recipe's first N queries are source.max_queries; query_synthesis "
             "samples max_docs documents") for key in ("max_queries", "data.max_queries", "source.max_queries")},
    **{key: (("source.queries",), "the rows of another build's data.jsonl are read as queries with source.queries")
       for key in ("queries", "data.path")},
    **{key: (("num_negatives",), "a recipe's negatives per query are num_negatives")
       for key in ("negatives_per_positive", "data.negatives_per_positive", "hard_negatives")},
    **{key: (("candidates",), "teacher_labels labels the first stage's top candidates of each query")
       for key in ("max_candidates", "data.max_candidates", "num_candidates")},
    **{key: (("first_stage.depth",), "the first stage ranks first_stage.depth documents per query")
       for key in ("depth", "bm25_depth", "data.bm25_depth", "negatives_depth")},
    **{key: (("sampling",), "hard_negatives takes the window's top negatives or a random draw with sampling: "
             "top|random") for key in ("negatives", "data.negatives")},
    **{key: (("min_positive_grade",), "the lowest grade hard_negatives counts as a positive is min_positive_grade")
       for key in ("rel_level", "rel_threshold")},
}


def _has_key(cls: type, dotted: str) -> bool:
    """Whether the config class ``cls`` has the (dotted) key: ``source.dataset`` is a key of the block ``source``."""
    import typing

    head, _, rest = dotted.partition(".")
    names = {f.name: f for f in dataclasses.fields(cls)}
    if head not in names:
        return False
    if not rest:
        return True
    hint = typing.get_type_hints(cls)[head]
    blocks = [t for t in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(t)]
    return any(_has_key(t, rest) for t in blocks)


def check_recipe_keys(cls: type, spec: Mapping[str, Any], where: str) -> None:
    """An unknown key of a recipe (at the top, in a block of the recipe or in a block it does not have, such as the
    trainers' ``data``) that :data:`RECIPE_KEY_HINTS` knows is an error naming the recipe's key for it and ``where``
    (the recipe) or the ``--set`` override that gave it; other unknown keys are left to :func:`from_dict`. A key is
    suggested only where this recipe config reads it (built with it in place of the unknown key, it is not refused);
    a key it refuses (``num_negatives`` without a ``first_stage``) is named with the reason instead."""
    import typing

    def walk(block_cls: type | None, block: Mapping[str, Any], prefix: str, origin: str) -> None:
        fields = {f.name for f in dataclasses.fields(block_cls)} if block_cls is not None else set()
        hints = typing.get_type_hints(block_cls) if block_cls is not None else {}
        for key, value in block.items():
            name = f"{prefix}{key}"
            at = override_source(block, key) or origin
            if key in fields:
                inner = [t for t in (typing.get_args(hints[key]) or (hints[key],)) if dataclasses.is_dataclass(t)]
                if inner and isinstance(value, Mapping):
                    walk(inner[0], value, f"{name}.", at)
                continue
            uses, why = RECIPE_KEY_HINTS.get(name, ((), ""))
            use, refused = _first_read(cls, spec, tuple(name.split(".")), [u for u in uses if _has_key(cls, u)],
                                       value)
            unknown = f"{at}: unknown key {name!r} for {cls.__name__}"
            if use is not None:
                raise ConfigError(f"{unknown}: did you mean {use!r}? ({why})")
            if refused is not None:
                raise ConfigError(f"{unknown} ({why}); this recipe refuses {refused[0]!r}: {refused[1]}")
            if block_cls is not None and isinstance(value, Mapping) and not prefix:  # a block the recipe has not
                walk(None, value, f"{name}.", at)

    walk(cls, spec, "", where)


def _first_read(cls: type, spec: Mapping[str, Any], given: tuple[str, ...], uses: list[str],
                value: Any) -> tuple[str | None, tuple[str, str] | None]:
    """The first of the (dotted) keys ``uses`` that the recipe config ``cls`` built from ``spec`` reads when it
    replaces the key at ``given`` with ``value``; and the first one refused (its name, why), for the message."""
    refused = None
    for use in uses:
        why = _refusal(cls, spec, given, tuple(use.split(".")), value)
        if why is None:
            return use, refused
        refused = refused or (use, why)
    return None, refused


def _refusal(cls: type, spec: Mapping[str, Any], given: tuple[str, ...], target: tuple[str, ...],
             value: Any) -> str | None:
    """Why ``cls`` built from ``spec`` with the key at ``given`` replaced by ``target`` refuses ``target``, or None
    when it reads it: a key of an optional block the recipe does not set (``first_stage.depth`` without a
    ``first_stage``) whose block is refused, or an option the settings do not read (the error that says to drop it).
    ``target`` is set to ``value`` (another value where that is its default: a default is never refused) and, when
    that value is out of range (the value's fault, not the key's), to a value next to its default. Keys ``cls`` does
    not take are left out of the builds."""
    base = _known_part(cls, spec)
    drop_key(base, given)
    owner = cls
    for part in target[:-1]:
        owner = _block_class(owner, part)
    default = option_default(owner, target[-1])
    probes = [probe_value(default, plain(value))]
    neutral = probe_value(default, default)
    if neutral is not dataclasses.MISSING and neutral != probes[0]:
        probes.append(neutral)
    for probe in probes:
        trial = copy.deepcopy(base)
        node = trial
        for part in target[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[target[-1]] = probe
        error = build_error(cls, trial)
        if error is None:
            return None
        if len(target) > 1 and not isinstance(base.get(target[0]), dict):
            return f"it needs a {target[0]} block, which this recipe does not have ({error})"
        if re.search(r"\bdrop\b", error) and error != build_error(cls, base):
            return error
    return None


def _block_class(cls: type, name: str) -> type:
    """The dataclass of the block ``name`` of the config class ``cls`` (``FirstStageSpec`` for ``first_stage``)."""
    import typing

    hint = typing.get_type_hints(cls)[name]
    return next(t for t in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(t))


def _known_part(cls: type, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy of ``spec`` holding only the keys the config class ``cls`` and its blocks take."""
    import typing

    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key not in fields:
            continue
        hint = typing.get_type_hints(cls)[key]
        inner = [t for t in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(t)]
        out[key] = _known_part(inner[0], value) if inner and isinstance(value, Mapping) else plain(value)
    return out


def _load_recipe(recipe: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A recipe mapping (one from :func:`~rerank.config.apply_overrides` still names the override of each key it
    gave), or a shipped recipe's name or a YAML path read as ``rerank data build`` reads it."""
    if isinstance(recipe, Mapping):
        return layered({}, recipe)
    if isinstance(recipe, (str, Path)):
        from rerank.config import load_yaml
        from rerank.data_recipes import recipe_path

        return dict(load_yaml(recipe_path(str(recipe))))
    raise TypeError(f"recipe must be a mapping (a parsed recipe YAML), a shipped recipe's name or a YAML path, got "
                    f"{type(recipe).__name__}")


#: skip reasons every recipe may record -> how the warning counts them (:meth:`Recipe.skip_reasons`)
_GENERIC_SKIPS = {
    NO_ROW: "gave no row (the recipe gives no reason)",
    NOT_RECORDED: "gave no row in the interrupted build, which recorded no reason (an earlier rerank started it)",
}


class Recipe(ABC):
    """One recipe kind: a typed config, the ordered units, and rows per unit."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type]

    def __init__(self, config: Any, data_root: str | None = None) -> None:
        self.config = config
        self.data_root = data_root
        self._skips: dict[str, str] = {}

    @abstractmethod
    def units(self) -> list[str]:
        """Unit keys in processing order (query ids, or document ids for query synthesis)."""

    @abstractmethod
    def rows_for(self, unit: str) -> list[dict[str, Any]]:
        """Training rows for one unit (may be empty: the unit is recorded as skipped, with :meth:`skip`'s reason)."""

    def skip(self, unit: str, reason: str) -> list[dict[str, Any]]:
        """Record why ``unit`` gives no row (a key of :meth:`skip_reasons`); returns no rows, for ``rows_for`` to
        return."""
        self._skips[unit] = reason
        return []

    def skip_reason(self, unit: str) -> str:
        """Why ``unit`` gave no row, asked once after :meth:`rows_for` returned none (``no_row``: the recipe did not
        say)."""
        return self._skips.pop(unit, NO_ROW)

    def skip_reasons(self) -> dict[str, str]:
        """Each reason a unit of this recipe can give no row -> how the build's warning counts it, after "N of the M
        queries" ("have no positive judgement")."""
        return dict(_GENERIC_SKIPS)

    def units_name(self, count: int) -> str:
        """The ``count`` units as a message names them ("the 253 train queries of dataset mybeir")."""
        return f"the {count} units"

    def restore(self, rows: Iterable[dict[str, Any]]) -> None:
        """Re-establish state from rows already written (e.g. the de-duplication set) before resuming."""

    def unit_stats(self, unit: str) -> dict[str, int]:
        """Counts ``unit`` added to the manifest's ``source`` (filtered, dropped), kept with its rows in the progress."""
        return {}

    def restore_stats(self, stats: Iterable[Mapping[str, int]]) -> None:
        """Add back the :meth:`unit_stats` of the units an interrupted build finished, before resuming."""

    def source(self) -> dict[str, Any]:
        """What the data came from, for the manifest."""
        return {}

    def inputs(self) -> dict[str, dict[str, str]]:
        """Fingerprints of everything the rows are read from by path, by name (``{"path", "fingerprint"}``): a
        resumed build refuses when one changed since the build started. Here: the local paths the options name
        (:func:`path_inputs`); recipes add their data files by content."""
        return path_inputs(self.config)

    def empty_reason(self) -> str:
        """Why every unit gave no row, for the error of a build that wrote none ("" when the recipe cannot tell)."""
        return ""

    @classmethod
    def former_views(cls, view: dict[str, Any]) -> list[dict[str, Any]]:
        """The recipe hash's ``view`` of a config (``{"recipe": kind, **options}``) in the shapes earlier rerank
        versions gave the same recipe, so a build started under them resumes (none by default)."""
        return []

    @classmethod
    def record(cls, config: Any) -> dict[str, Any]:
        """The config as the manifest records it: every option, unless a recipe leaves out those its settings do not
        read (defaults that would suggest they were used)."""
        return to_dict(config)

    def close(self) -> None:
        """Release models."""


def _recipe_class(kind: str) -> type[Recipe]:
    from rerank.data_recipes import RECIPES

    if kind not in RECIPES:
        raise ConfigError(f"unknown recipe {kind!r}; recipes: {', '.join(sorted(RECIPES))}")
    import importlib

    module, _, attr = RECIPES[kind].partition(":")
    return getattr(importlib.import_module(module), attr)


def _read_progress(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Completed units from ``progress.jsonl``; returns them and the byte length of the intact prefix."""
    done: list[dict[str, Any]] = []
    good = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                done.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good += len(raw)
    return done, good


def _write_skipped(skipped: list[tuple[str, str]], path: Path) -> dict[str, int]:
    """Write the ``(unit, reason)`` of each unit without a row to ``path`` (atomically; a build without any leaves no
    such file) and return the count per reason."""
    if not skipped:
        path.unlink(missing_ok=True)
        return {}
    with atomic_write(path) as f:
        for unit, reason in skipped:
            f.write(json.dumps({"unit": unit, "reason": reason}, ensure_ascii=False) + "\n")
    by_reason: dict[str, int] = {}
    for _, reason in skipped:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    return by_reason


def _warn_skipped(kind: str, skipped: list[tuple[str, str]], units_name: str, phrases: Mapping[str, str],
                  path: Path) -> None:
    """One warning for the units that gave no row: how many, per reason (the recipe's phrase, its code and a few
    example ids), and the file listing each."""
    ids: dict[str, list[str]] = {}
    for unit, reason in skipped:
        ids.setdefault(reason, []).append(unit)
    parts = []
    for reason, units in ids.items():
        examples = ", ".join(units[:_SKIP_EXAMPLES]) + (", …" if len(units) > _SKIP_EXAMPLES else "")
        parts.append(f"{len(units)} {phrases.get(reason, 'gave no row')} ({reason}: {examples})")
    log.warning("recipe %s: %d of %s gave no row and are skipped (each with its reason in %s): %s", kind,
                len(skipped), units_name, path, "; ".join(parts))


def build(
    recipe: Mapping[str, Any] | str | Path,
    output: str | Path,
    data_root: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    recipe_obj: Recipe | None = None,
) -> dict[str, Any]:
    """Run ``recipe`` (a parsed YAML mapping with a ``recipe`` kind, a shipped recipe's name or a YAML path) into
    ``output``; returns the manifest. With ``resume`` a finished build is kept when its recipe and inputs are the same."""
    spec = _load_recipe(recipe)
    data_root = str(data_root) if data_root is not None else None
    kind = spec.pop("recipe", None)
    if not kind:
        raise ConfigError("a recipe needs a 'recipe' key naming its kind")
    cls = _recipe_class(str(kind))
    check_recipe_keys(cls.config_class, spec, f"recipe {kind}")
    config = from_dict(cls.config_class, spec, where=f"recipe {kind}")
    _check_models(config)
    view = _spelling_free(kind, config)
    rhash = hash_obj(view)
    # and the hashes of the same recipe as earlier rerank versions hashed it: before paths were resolved, in the
    # recipe's former shape (Recipe.former_views), so a build they started or finished resumes
    hashes = {hash_obj(v) for base in (view, {"recipe": kind, **to_dict(config)})
              for v in (base, *cls.former_views(base))}
    out = Path(output)
    prog, meta_path = out / "progress.jsonl", out / "progress.meta.json"
    manifest_path = out / "manifest.json"
    if (out / "data.jsonl").exists() and not manifest_path.exists() and not prog.exists():
        raise ConfigError(f"{out} holds a data.jsonl that no build there wrote (no manifest.json); choose another "
                          "--output, or move that file")
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if resume and old.get("recipe_hash") in hashes:
            r = recipe_obj if recipe_obj is not None else cls(config, data_root)
            try:
                now = r.inputs()
            finally:
                r.close()
            recorded = _recorded_inputs(old)  # an older manifest's corpus hash only: compared alone
            _check_inputs(out, recorded, now if "inputs" in old else {k: now.get(k) for k in recorded},
                          f"the finished build was made, so its {old.get('counts', {}).get('rows', '?')} rows")
            log.info("%s is already complete (recipe hash %s)", out, old.get("recipe_hash"))
            return old
        if old.get("recipe_hash") in hashes:
            raise ConfigError(f"{out} already holds this recipe's finished build: pass --resume to reuse it, or remove "
                              "the folder (or choose another --output) to build it again")
        from rerank.trainers.resume import config_differences  # "key: old -> new" per option that differs

        changed = ([d.split(":", 1)[0] for d in config_differences(old.get("config"), cls.record(config), config)]
                   if old.get("recipe") == kind else [])
        what = (f"with other options ({', '.join(changed)})" if changed
                else f"of another recipe ({old.get('recipe')}, hash {old.get('recipe_hash')} vs {rhash})")
        raise ConfigError(f"{out} already holds a finished build {what}; remove the folder to build this config there, "
                          "or choose another --output")
    done_units: list[dict[str, Any]] = []
    if prog.exists():
        if not resume:
            raise ConfigError(f"{out} holds an unfinished build; pass --resume to continue it or remove the folder")
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        if meta.get("recipe_hash") not in hashes:
            raise ConfigError(f"{out}: the unfinished build is of another recipe (hash {meta.get('recipe_hash')} "
                              f"vs {rhash}); remove the folder to start again")
        done_units, good = _read_progress(prog)
        if done_units and not isinstance(meta.get("inputs"), dict):
            raise ConfigError(f"{out}: cannot resume: the unfinished build recorded no fingerprints of its inputs (an "
                              f"older rerank started it), so its {len(done_units)} finished units cannot be checked "
                              f"against the data now; remove {out} (or choose another --output) and rerun without "
                              "--resume")
    r = recipe_obj if recipe_obj is not None else cls(config, data_root)
    try:
        units = r.units()  # reads the recipe's sources: a missing dataset fails here, before anything is written
        if len(set(units)) != len(units):
            raise ConfigError(f"recipe {kind}: duplicate unit keys")
        inputs = r.inputs()  # the corpus hash is the manifest's (cached): hashed once per build
        if done_units:
            _check_inputs(out, meta["inputs"], inputs,
                          f"the unfinished build started, so its {len(done_units)} finished units")
            with open(prog, "r+b") as f:  # drop a torn last line
                f.truncate(good)
        made = not out.exists()
        if not done_units:  # a new build, or one stopped before its first unit: nothing read yet to compare with
            out.mkdir(parents=True, exist_ok=True)
            prog.unlink(missing_ok=True)
            write_json({"recipe_hash": rhash, "recipe": kind, "inputs": inputs}, meta_path)
        done = {d["unit"] for d in done_units}
        r.restore(row for d in done_units for row in d["rows"])
        r.restore_stats(d["stats"] for d in done_units if d.get("stats"))
        todo = [u for u in units if u not in done]
        bar = tqdm(total=len(units), initial=len(units) - len(todo), desc=f"data {kind}", unit="unit",
                   disable=not progress)
        with open(prog, "a", encoding="utf-8") as f:
            for u in todo:
                rows = r.rows_for(u)
                for i, row in enumerate(rows):
                    validate_row(row, f"recipe {kind}, unit {u}, row {i}")
                stats = r.unit_stats(u)
                done_unit = {"unit": u, "rows": rows, **({} if rows else {"skipped": r.skip_reason(u)})}
                f.write(json.dumps({**done_unit, **({"stats": stats} if stats else {})}, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                done_units.append(done_unit)
                bar.update(1)
        bar.close()
        if not any(d["rows"] for d in done_units):
            why = (r.empty_reason() if units else "") or ("the source has no units" if not units else
                                                          "every unit was skipped")
            prog.unlink(missing_ok=True)  # nothing to resume: a fixed recipe reruns into the same --output
            meta_path.unlink(missing_ok=True)
            if made and not any(out.iterdir()):
                out.rmdir()
            raise ConfigError(f"recipe {kind} wrote no row from its {len(units)} units: {why}")
        source = r.source()
        reasons = r.skip_reasons()
        units_name = r.units_name(len(units))
    finally:
        r.close()
    order = {u: i for i, u in enumerate(units)}
    done_units.sort(key=lambda d: order.get(d["unit"], len(order)))
    rows = [row for d in done_units for row in d["rows"]]
    with atomic_write(out / "data.jsonl") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    skipped = [(str(d["unit"]), str(d.get("skipped") or NOT_RECORDED)) for d in done_units if not d["rows"]]
    by_reason = _write_skipped(skipped, out / SKIPPED_FILE)
    if skipped:
        _warn_skipped(kind, skipped, units_name, reasons, out / SKIPPED_FILE)
    manifest = {
        "recipe": kind,
        "recipe_hash": rhash,
        "config": cls.record(config),
        "source": source,
        "schema": SCHEMA_VERSION,
        "data": "data.jsonl",
        "inputs": inputs,
        "counts": {
            "units": len(units),
            "units_without_rows": len(skipped),
            "skipped_by_reason": by_reason,
            "rows": len(rows),
            "candidates": sum(len(x["candidates"]) for x in rows),
            "positive_labels": sum(1 for x in rows for g in x["labels"] if g > 0),
        },
        **({"skipped": SKIPPED_FILE} if skipped else {}),
        "resumed_units": len(done),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(manifest, manifest_path)
    prog.unlink()
    meta_path.unlink(missing_ok=True)
    return manifest
