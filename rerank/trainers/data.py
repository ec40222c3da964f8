"""The one training-data schema of the reranker trainers: load, validate, carve a dev split, or build from BEIR.

A training example (a JSONL line, or a row of an HF dataset saved with ``save_to_disk``)::

    {"qid": str, "query": str,
     "candidates": [{"id": str, "text": str, "title"?: str, "score"?: float}],
     "labels": [int, ...],                  # graded relevance, aligned with candidates (required)
     "teacher_ranking"?: [candidate id, ...],   # best first (listwise / FIRST SFT target)
     "teacher_scores"?: [float, ...],           # aligned with candidates (ERank / GroupRank SFT targets)
     "reasoning"?: str}                         # optional reasoning text (ERank SFT with reasoning)

Rows in two other common shapes are read too, converted on read into rows of this schema:

* FlagEmbedding's ``{"query", "pos": [text, ...], "neg": [text, ...], "pos_scores"?, "neg_scores"?}``: qid the
  row's ``qid`` if it has one, else ``line-N`` (``row-N`` in an HF dataset), candidates the ``pos`` texts (ids
  ``pos-0``, ``pos-1``, …; label 1) then the ``neg`` texts (``neg-0``, …; label 0), ``pos_scores`` + ``neg_scores``
  (both, aligned) as ``teacher_scores`` (for a head that reads them as 0-10 grades, only integers 0-10: FlagEmbedding's
  scores are a teacher's raw logits); a text in both ``pos`` and ``neg`` is an error;
* Tevatron's ``{"query_id"?, "query", "positive_passages": [{"docid", "title"?, "text"}], "negative_passages": [...]}``:
  qid ``query_id`` (else as above), candidates the positive passages (label 1) then the negative ones (label 0), id
  ``docid``.

Converted rows list their positives first and carry no first-stage score: they hold no first-stage order
(:func:`rerank.trainers.task.task_rows` refuses ``window_order: first_stage`` on such data). Their fields no trainer
reads (FlagEmbedding's ``prompt`` and ``type``, Tevatron's ``answers``) are named in a warning, once per file. A row
of none of the three shapes, a row mixing two of them, or a tab- or comma-separated file, is an error naming the
shapes read.
Every row is validated before training starts; an error names the file and line (or dataset row).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rerank.config import changed_options
from rerank.data.io import DUPLICATE_POLICIES, Duplicates
from rerank.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)

__all__ = [
    "BEIR_ONLY",
    "SHAPES",
    "DataConfig",
    "TeacherScale",
    "build_from_beir",
    "has_content",
    "load_examples",
    "load_training_data",
    "row_shape",
    "split_dev",
    "teacher_order",
    "teacher_scale",
    "validate_example",
]

_OPTIONAL = {"teacher_ranking", "teacher_scores", "reasoning"}
_KNOWN = {"qid", "query", "candidates", "labels", *_OPTIONAL}
_CANDIDATE_KEYS = ("id", "text", "title", "score")

#: the training-row shapes :func:`load_examples` reads, as its errors name them
SHAPES = ("rerank's {qid, query, candidates, labels}, FlagEmbedding's {query, pos, neg} and Tevatron's {query_id, "
          "query, positive_passages, negative_passages}")
#: where the docs describe them
_SHAPES_DOC = "docs/train-your-own.md#other-row-shapes-and-tsv"
#: the fields of each other shape (a row's other fields are an error), and those of them no trainer reads -> what
#: they are (a warning names them)
_FLAG_FIELDS = ("query", "pos", "neg", "pos_scores", "neg_scores", "qid")
_TEVATRON_FIELDS = ("query_id", "query", "positive_passages", "negative_passages")
_PASSAGE_KEYS = ("docid", "title", "text")
#: the fields that tell each shape's rows apart (a row holding those of two shapes is an error naming both)
_SHAPE_KEYS = {"rerank": ("candidates", "labels"), "FlagEmbedding": ("pos", "neg"),
               "Tevatron": ("positive_passages", "negative_passages")}
_UNREAD: dict[str, dict[str, str]] = {
    "FlagEmbedding": {"prompt": "an instruction: the trained head's template gives the prompt", "type": "a task type"},
    "Tevatron": {"answers": "answer strings"},
}


#: the options that build examples from a BEIR dataset (``beir``); a file (``path``) is used as it is
BEIR_ONLY = ("split", "bm25_depth", "max_candidates", "negatives", "qrels_duplicates")


@dataclass
class DataConfig:
    """Where training examples come from: a file/HF dataset (``path``) or a BEIR dataset built inline (``beir``:
    ``split``, ``bm25_depth``, ``max_candidates``, ``negatives`` and ``negatives_per_positive`` say how;
    ``qrels_duplicates`` what a (query, document) pair judged twice does: ``error``, keep the ``last`` or ``max``).
    ``dev_fraction`` unset (None) is decided by the trainer's config: 0.1 with ``eval_steps`` > 0, else 0."""

    path: str = ""
    beir: str = ""
    split: str = "train"
    negatives_per_positive: int = 4
    bm25_depth: int = 30
    max_candidates: int = 20
    max_queries: int | None = None
    negatives: Literal["top", "random"] = "top"
    qrels_duplicates: Duplicates = "error"
    dev_fraction: float | None = None
    dev_max: int | None = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if bool(self.path) == bool(self.beir):
            raise ConfigError("data: give exactly one of 'path' (JSONL / HF dataset) or 'beir' (dataset to build from)")
        if self.dev_fraction is not None and not 0.0 <= self.dev_fraction < 1.0:
            raise ConfigError(f"data.dev_fraction must be in [0, 1), got {self.dev_fraction}")
        if self.path:
            changed = changed_options(self, BEIR_ONLY)
            if changed:
                raise ConfigError(f"data.{changed[0]} is an option of data.beir (building examples from a BEIR "
                                  f"dataset); data.path's examples are used as the file holds them: drop "
                                  f"data.{changed[0]} (on the command line, replace the whole block: "
                                  f"--set 'data={{path: {self.path}}}')")
        if self.beir and self.split == "test":
            raise ConfigError("data.split test is the evaluation split, which training never reads (a model trained "
                              "on it scores meaninglessly there): set data.split to a training split (e.g. train)")
        if self.negatives not in ("top", "random"):
            raise ConfigError(f"data.negatives must be 'top' or 'random', got {self.negatives!r}")
        if self.qrels_duplicates not in DUPLICATE_POLICIES:
            raise ConfigError(f"data.qrels_duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, "
                              f"got {self.qrels_duplicates!r}")
        if self.negatives_per_positive < 0 or self.bm25_depth < 1 or self.max_candidates < 2:
            raise ConfigError("data: negatives_per_positive >= 0, bm25_depth >= 1 and max_candidates >= 2 required")
        if self.max_queries is not None and self.max_queries < 1:  # a slice [:-1] or [:0] would drop queries silently
            raise ConfigError(f"data.max_queries must be >= 1 (or unset for all), got {self.max_queries}")


@dataclass(frozen=True)
class TeacherScale:
    """The range a head's SFT reads ``teacher_scores`` on (ERank / GroupRank: integer 0-10 targets): a row outside it
    is an error, since rounding and clipping it would train on wrong targets."""

    head: str
    lo: int = 0
    hi: int = 10

    def fix(self) -> str:
        """What to do about scores on another scale."""
        return (f"map the teacher's scores to {self.lo}-{self.hi} (rerank data build's teacher_labels with mode: "
                f"{self.head} writes such targets)")


def teacher_scale(head: str) -> TeacherScale | None:
    """The :class:`TeacherScale` of ``head``'s SFT targets (its training task's ``teacher_scores_range``), or None
    when the head reads ``teacher_scores`` on any scale (the cross-encoder's distillation) or not at all."""
    from rerank.methods import get_method

    method = get_method(head)
    if method.task is None:
        return None
    rng = getattr(method.resolve("task"), "teacher_scores_range", None)
    return TeacherScale(head, *rng) if rng is not None else None


def _num(x: Any) -> bool:
    """A finite number (JSON's NaN / Infinity literals and bools are not)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond the float range
        return False


def _grade(x: Any) -> bool:
    """A non-negative integral number a float holds exactly (``2`` or ``2.0``; not NaN, an infinity or 10**30)."""
    return _num(x) and x >= 0 and float(x).is_integer() and float(x) == x  # _num: float(x) cannot overflow


def _id(x: Any) -> bool:
    """An id as rows give one: a string, or an integer (``7`` and ``"7"`` are the same id); not a bool, a float, a
    list or a mapping, which ``str()`` would turn into an id silently."""
    return isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool))


def has_content(text: str, title: str = "") -> bool:
    """Whether a document has any text to score (its text or its title is not blank)."""
    return bool(text.strip() or title.strip())


def validate_example(obj: Any, path: str | Path, line: int | None, scale: TeacherScale | None = None
                     ) -> dict[str, Any]:
    """Check one row against the schema and return it normalised (ids as str); errors name ``path:line``. ``scale``:
    the range the training head reads ``teacher_scores`` on (a score outside it is an error)."""

    def fail(msg: str) -> DataFormatError:
        return DataFormatError(path, line, msg)

    if not isinstance(obj, Mapping):
        raise fail(f"expected an object, got {type(obj).__name__}")
    unknown = sorted(k for k in obj if k not in _KNOWN)
    if unknown:
        raise fail(f"unknown field {unknown[0]!r}; known fields: {', '.join(sorted(_KNOWN))}")
    for key in ("qid", "query", "candidates", "labels"):
        if obj.get(key) is None:
            raise fail(f"missing required field {key!r}")
    if not _id(obj["qid"]):
        raise fail(f"'qid' must be a string (or an integer), got {type(obj['qid']).__name__}")
    if not isinstance(obj["query"], str) or not obj["query"].strip():
        raise fail("'query' must be a non-empty string")
    cands = obj["candidates"]
    if not isinstance(cands, list) or not cands:
        raise fail("'candidates' must be a non-empty list")
    out_cands = []
    for i, c in enumerate(cands):
        if not isinstance(c, Mapping) or c.get("id") is None or not isinstance(c.get("text"), str):
            raise fail(f"candidates[{i}] must be an object with 'id' and a string 'text'")
        extra = sorted(k for k, v in c.items() if k not in _CANDIDATE_KEYS and v is not None)
        if extra:
            raise fail(f"candidates[{i}]: unknown field {extra[0]!r}; known fields: {', '.join(_CANDIDATE_KEYS)}")
        if not _id(c["id"]):
            raise fail(f"candidates[{i}].id must be a string (or an integer), got {type(c['id']).__name__}")
        if c.get("title") is not None and not isinstance(c["title"], str):
            raise fail(f"candidates[{i}].title must be a string, got {type(c['title']).__name__}")
        cand = {"id": str(c["id"]), "text": c["text"], "title": str(c.get("title") or "")}
        if not has_content(cand["text"], cand["title"]):
            raise fail(f"candidates[{i}] ({cand['id']!r}) has an empty 'text' (and no title)")
        if c.get("score") is not None:
            if not _num(c["score"]):
                raise fail(f"candidates[{i}].score must be a finite number, got {c['score']!r}")
            cand["score"] = float(c["score"])
        out_cands.append(cand)
    ids = [c["id"] for c in out_cands]
    first: dict[str, int] = {}
    for i, d in enumerate(ids):
        if d in first:
            raise fail(f"duplicate candidate id {d!r} (candidates[{first[d]}] and candidates[{i}])")
        first[d] = i
    labels = obj["labels"]
    if not isinstance(labels, list) or len(labels) != len(cands):
        raise fail(f"'labels' must be a list aligned with candidates ({len(cands)} entries)")
    if not all(_grade(v) for v in labels):
        raise fail("'labels' must be non-negative integers (graded relevance)")
    out: dict[str, Any] = {"qid": str(obj["qid"]), "query": obj["query"], "candidates": out_cands,
                           "labels": [int(v) for v in labels]}
    if obj.get("teacher_ranking") is not None:
        if not isinstance(obj["teacher_ranking"], list) or not all(_id(x) for x in obj["teacher_ranking"]):
            raise fail("'teacher_ranking' must be a list of candidate ids (best first), got "
                       f"{type(obj['teacher_ranking']).__name__}"
                       + (" holding other values" if isinstance(obj["teacher_ranking"], list) else ""))
        tr = [str(x) for x in obj["teacher_ranking"]]
        bad = [x for x in tr if x not in set(ids)]
        if bad or len(set(tr)) != len(tr):
            raise fail(f"'teacher_ranking' must list distinct candidate ids (unknown: {bad[:3]})")
        out["teacher_ranking"] = tr
    if obj.get("teacher_scores") is not None:
        ts = obj["teacher_scores"]
        if not isinstance(ts, list) or len(ts) != len(cands):
            raise fail("'teacher_scores' must be numbers aligned with candidates")
        if not all(_num(v) for v in ts):
            raise fail("'teacher_scores' must be finite numbers")
        if scale is not None:
            bad_at = next((i for i, v in enumerate(ts) if not scale.lo <= v <= scale.hi), None)
            if bad_at is not None:
                raise fail(f"teacher_scores[{bad_at}] is {ts[bad_at]}, outside {scale.lo}-{scale.hi}: head "
                           f"{scale.head} trains on integer {scale.lo}-{scale.hi} targets (a score is rounded, "
                           f"never clipped); {scale.fix()}")
        out["teacher_scores"] = [float(v) for v in ts]
    if obj.get("reasoning") is not None:
        if not isinstance(obj["reasoning"], str):
            raise fail("'reasoning' must be a string")
        out["reasoning"] = obj["reasoning"]
    return out


def row_shape(obj: Any) -> str | None:
    """The shape of a training row: ``"rerank"`` (this module's schema), ``"FlagEmbedding"``, ``"Tevatron"``, or None
    for a row of none of them."""
    if not isinstance(obj, Mapping):
        return None
    shape = next((s for s, keys in _SHAPE_KEYS.items() if any(k in obj for k in keys)), None)
    return shape or ("rerank" if "qid" in obj else None)


def _convert_row(obj: Any, path: str | Path, line: int, qid: str, scale: TeacherScale | None = None
                 ) -> tuple[Any, str, list[str]]:
    """A row of a shape :func:`load_examples` reads -> (the row in this module's schema, its shape, the fields of its
    shape no trainer reads); ``qid``: the id a row without one gets; ``scale``: as :func:`validate_example`'s. A row of
    no shape read, or one mixing two shapes' fields, is an error naming them."""
    if isinstance(obj, Mapping):
        mixed = {s: [k for k in keys if k in obj] for s, keys in _SHAPE_KEYS.items()}
        mixed = {s: keys for s, keys in mixed.items() if keys}
        if len(mixed) > 1:
            said = " and ".join(f"{s}'s ({', '.join(keys)})" for s, keys in mixed.items())
            raise DataFormatError(path, line, f"the row mixes the fields of {said}: a row has one shape; rerank reads "
                                  f"{SHAPES}: see {_SHAPES_DOC}")
    shape = row_shape(obj)
    if shape == "rerank" or not isinstance(obj, Mapping):
        return obj, "rerank", []
    if shape is None:
        fields = ", ".join(sorted(map(str, obj))[:8]) or "none"
        raise DataFormatError(path, line, f"not a training row of a shape rerank reads (its fields: {fields}); it "
                              f"reads {SHAPES}: see {_SHAPES_DOC}")
    unread = [k for k in obj if k in _UNREAD[shape]]
    known = _FLAG_FIELDS if shape == "FlagEmbedding" else _TEVATRON_FIELDS
    extra = sorted(str(k) for k in obj if k not in known and k not in unread and obj[k] is not None)
    if extra:
        raise DataFormatError(path, line, f"unknown field {extra[0]!r} of a {shape} row; its fields: "
                              f"{', '.join(known)} ({', '.join(_UNREAD[shape])}: not read)")

    def fail(msg: str) -> DataFormatError:
        return DataFormatError(path, line, f"{shape} row: {msg}")

    out: dict[str, Any] = {"query": obj.get("query")}
    if shape == "FlagEmbedding":
        lists = {}
        for key in ("pos", "neg"):
            texts = obj.get(key) or []
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise fail(f"{key!r} must be a list of passage texts")
            empty = next((i for i, t in enumerate(texts) if not has_content(t)), None)
            if empty is not None:
                raise fail(f"{key}[{empty}] is an empty text")
            lists[key] = texts
        in_pos = {t: i for i, t in reversed(list(enumerate(lists["pos"])))}
        both = next((j for j, t in enumerate(lists["neg"]) if t in in_pos), None)
        if both is not None:
            raise fail(f"neg[{both}] is the text of pos[{in_pos[lists['neg'][both]]}]: a passage cannot be both "
                       "relevant and not; drop it from one of the lists")
        out["qid"] = obj["qid"] if obj.get("qid") is not None else qid
        out["candidates"] = [{"id": f"{key}-{i}", "text": text}
                             for key in ("pos", "neg") for i, text in enumerate(lists[key])]
        out["labels"] = [1] * len(lists["pos"]) + [0] * len(lists["neg"])
        scores = {key: obj.get(f"{key}_scores") for key in ("pos", "neg")}
        if any(v is not None for v in scores.values()):
            for key, values in scores.items():
                if values is None and lists[key]:
                    raise fail(f"{key}_scores is missing: give both pos_scores and neg_scores (the teacher's scores "
                               "of every passage), or neither")
                values = values or []
                if not isinstance(values, list) or len(values) != len(lists[key]) or not all(_num(v) for v in values):
                    raise fail(f"{key}_scores must be finite numbers aligned with {key!r} ({len(lists[key])})")
                if scale is not None:
                    bad = next((i for i, v in enumerate(values)
                                if not (scale.lo <= v <= scale.hi and float(v).is_integer())), None)
                    if bad is not None:
                        raise fail(f"{key}_scores[{bad}] is {values[bad]}, not a {scale.lo}-{scale.hi} grade: head "
                                   f"{scale.head} trains on pos_scores / neg_scores as integer {scale.lo}-{scale.hi} "
                                   f"targets, and FlagEmbedding's scores are a teacher's raw logits, which it would "
                                   f"round into wrong grades; map them to {scale.lo}-{scale.hi} grades, or drop "
                                   "pos_scores and neg_scores to train on the labels")
            out["teacher_scores"] = [*(scores["pos"] or []), *(scores["neg"] or [])]
    else:
        out["qid"] = obj["query_id"] if obj.get("query_id") is not None else qid
        out["candidates"], out["labels"] = [], []
        for key, label in (("positive_passages", 1), ("negative_passages", 0)):
            passages = obj.get(key) or []
            if not isinstance(passages, list):
                raise fail(f"{key!r} must be a list of passages {{docid, title, text}}")
            for i, p in enumerate(passages):
                if not isinstance(p, Mapping) or p.get("docid") is None or not isinstance(p.get("text"), str):
                    raise fail(f"{key}[{i}] must be an object with 'docid' and a string 'text' (a Tevatron passage: "
                               f"{{{', '.join(_PASSAGE_KEYS)}}})")
                bad = sorted(str(k) for k, v in p.items() if k not in _PASSAGE_KEYS and v is not None)
                if bad:
                    raise fail(f"{key}[{i}]: unknown field {bad[0]!r}; known fields: {', '.join(_PASSAGE_KEYS)}")
                if not _id(p["docid"]):
                    raise fail(f"{key}[{i}].docid must be a string (or an integer), got {type(p['docid']).__name__}")
                if p.get("title") is not None and not isinstance(p["title"], str):
                    raise fail(f"{key}[{i}].title must be a string, got {type(p['title']).__name__}")
                if not has_content(p["text"], p.get("title") or ""):
                    raise fail(f"{key}[{i}] (docid {str(p['docid'])!r}) has an empty 'text' (and no title)")
                out["candidates"].append({"id": p["docid"], "text": p.get("text"), "title": p.get("title")})
                out["labels"].append(label)
    return out, shape, unread


def _rows(path: Path) -> Iterable[tuple[int, Any]]:
    if path.is_dir():
        beir = [n for n in ("corpus.jsonl", "queries.jsonl") if (path / n).is_file() or (path / f"{n}.gz").is_file()]
        if beir:
            raise ConfigError(f"data.path {path} is a BEIR dataset folder (it holds {' and '.join(beir)}), not "
                              f"training rows: build the examples from it with data.beir "
                              f"(--set 'data={{beir: {path}}}')")
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise DataFormatError(path, None, f"is a DatasetDict ({list(ds)}); point at one split's folder")
        # HF rows are 0-based; report them 1-based like lines
        return ((i + 1, {k: v for k, v in row.items() if v is not None}) for i, row in enumerate(ds))
    return _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """The objects of a JSONL file; a file whose first line is tab- or comma-separated text (or a ``.csv`` file that
    is not JSONL) is an error saying how to make training rows of it."""
    from rerank.data.io import iter_jsonl, iter_lines

    rows = iter_jsonl(path)
    try:
        first = next(rows, None)
    except DataFormatError as e:
        if e.line is not None and "invalid JSON" in str(e):
            text = next((t for n, t in iter_lines(path) if n == e.line), "")
            kind = _separated(path, text)
            if kind is not None:
                raise DataFormatError(path, e.line, f"{kind[0]}, and {kind[1]} is not a training format: "
                                      "convert its (query, passage, label) lines to JSONL training rows with the "
                                      f"snippet in {_SHAPES_DOC}, or give a BEIR folder as data.beir") from None
        raise
    if first is not None:
        yield first
        yield from rows


def _separated(path: Path, text: str) -> tuple[str, str] | None:
    """What a training file whose line ``text`` is no JSON holds, and the format's name: tab-separated text (TSV),
    comma-separated text (CSV: a ``.csv`` name, or a line of 2 or more comma-separated fields), or None (broken
    JSON)."""
    import csv

    if text.lstrip().startswith(("{", "[")):
        return None
    if "\t" in text:
        return "tab-separated text", "TSV"
    suffixes = [s.lower() for s in path.suffixes]
    if ".csv" in suffixes[-2:] or len(next(csv.reader([text]), [])) >= 2:
        return "comma-separated text", "CSV"
    return None


def load_examples(path: str | Path, scale: TeacherScale | None = None) -> list[dict[str, Any]]:
    """Read and validate every row of a JSONL file (``.gz`` ok) or an HF dataset folder (FlagEmbedding's and
    Tevatron's rows converted, as the module docstring says). ``scale``: the range the
    training head reads ``teacher_scores`` on (:func:`teacher_scale`); scores outside it are an error, and a file
    whose scores all lie in [0, 1] (probabilities) is warned about once."""
    p = Path(path)
    if not p.exists():
        raise DataFormatError(p, None, "training data not found")
    where = f"{p} row" if p.is_dir() else p
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    unread: dict[tuple[str, str], int] = {}
    for line, obj in _rows(p):
        row, shape, fields = _convert_row(obj, where, line, f"{'row' if p.is_dir() else 'line'}-{line}", scale)
        for name in fields:
            unread[shape, name] = unread.get((shape, name), 0) + 1
        try:
            ex = validate_example(row, where, line, scale)
        except DataFormatError as e:
            if shape == "rerank":
                raise
            said = str(e).removeprefix(f"{where}:{line}: ")
            raise DataFormatError(where, line, f"{said} (in this {shape} row read as rerank's: see "
                                  f"{_SHAPES_DOC})") from None
        if ex["qid"] in seen:
            raise DataFormatError(where, line, f"duplicate qid {ex['qid']!r} (first at line {seen[ex['qid']]})")
        seen[ex["qid"]] = line
        out.append(ex)
    if not out:
        raise DataFormatError(p, None, "no training examples")
    for (shape, name), count in unread.items():
        log.warning("%s: %d %s rows hold the field %r (%s), which no trainer reads", p, count, shape, name,
                    _UNREAD[shape][name])
    if scale is not None:
        _warn_probabilities(out, p, scale)
    return out


def _warn_probabilities(examples: list[dict[str, Any]], path: Path, scale: TeacherScale) -> None:
    """Warn once when every teacher score lies in [0, 1] and some are fractions: probabilities (a sigmoid's), which
    round to 0 or 1 on a 0-10 target scale."""
    scores = [s for e in examples for s in e.get("teacher_scores") or ()]
    if scores and all(0.0 <= s <= 1.0 for s in scores) and any(not s.is_integer() for s in scores):
        log.warning("%s: every teacher_scores value lies in [0, 1] (probabilities?), but head %s trains on integer "
                    "%d-%d targets: they round to 0 or 1; scale them to %d-%d (e.g. x %d)", path, scale.head,
                    scale.lo, scale.hi, scale.lo, scale.hi, scale.hi)


def split_dev(examples: list[dict[str, Any]], fraction: float, seed: int, dev_max: int | None = None
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded split of whole queries into (train, dev); the dev split drives model selection, never the test set."""
    if fraction <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_dev = max(1, round(fraction * len(examples)))
    if dev_max is not None:
        n_dev = min(n_dev, dev_max)
    dev_idx = set(order[:n_dev])
    return ([e for i, e in enumerate(examples) if i not in dev_idx], [e for i, e in enumerate(examples) if i in dev_idx])


def build_from_beir(
    name: str,
    data_root: str | None = None,
    split: str = "train",
    negatives_per_positive: int = 4,
    bm25_depth: int = 30,
    max_candidates: int = 20,
    max_queries: int | None = None,
    seed: int = 0,
    negatives: str = "top",
    qrels_duplicates: Duplicates = "error",
) -> list[dict[str, Any]]:
    """Examples from a BEIR dataset: judged positives from qrels plus BM25 hard negatives mined on the fly.

    Each query gets its positives (grade > 0) and up to ``negatives_per_positive`` BM25 top-``bm25_depth`` documents
    per positive that are not positives (judged-0 documents count as negatives), capped at ``max_candidates``:
    the highest-ranked ones (``negatives="top"``, the hardest) or a seeded random draw from the window
    (``"random"``, easier on average).
    Candidates are shuffled (seeded) so position carries no label. A (query, document) pair judged twice is an error
    naming ``data.qrels_duplicates`` unless ``qrels_duplicates`` is ``last`` or ``max``.
    """
    from rerank.data.datasets import resolve_dataset
    from rerank.retrieval.base import build_retriever

    ds = resolve_dataset(name, data_root, qrels_duplicates=qrels_duplicates)
    ds.duplicates_fix = "keep one grade with data.qrels_duplicates: last|max (or --set data.qrels_duplicates=max)"
    qrels = ds.qrels(split)
    queries = ds.split_queries(split)
    qrels_path = ds.qrels_path(split)
    judged_qids = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())]
    if not judged_qids:
        raise DataFormatError(qrels_path, None, "no query with a positive judgement")
    corpus = ds.corpus

    def usable(d: str) -> bool:  # in the corpus, with text to score (an empty document is no training candidate)
        return d in corpus and has_content(corpus[d].text, corpus[d].title or "")

    positives = {q: [d for d, g in sorted(qrels[q].items()) if g > 0 and usable(d)] for q in judged_qids}
    qids = [q for q in judged_qids if positives[q]]
    _warn_unusable_judgements(ds, split, judged_qids, qrels, len(judged_qids) - len(qids))
    if not qids:
        raise DataFormatError(qrels_path, None, f"none of the {len(judged_qids)} queries with a positive judgement has "
                              f"a judged positive in {ds.corpus_path} with text (do the qrels' document ids match "
                              "the corpus's?): no training example is left")
    if max_queries is not None:
        qids = qids[:max_queries]
    run = build_retriever("bm25", ds).retrieve({q: queries[q] for q in qids}, bm25_depth)

    rng = random.Random(seed)
    out = []
    for q in qids:
        judged = qrels[q]
        pos = positives[q]
        negs = [d for d, _ in run.get(q, []) if judged.get(d, 0) <= 0 and usable(d)]
        n_neg = min(len(negs), negatives_per_positive * len(pos), max(0, max_candidates - len(pos)))
        chosen = rng.sample(negs, n_neg) if negatives == "random" else negs[:n_neg]
        ids = pos[:max_candidates] + chosen
        rng.shuffle(ids)
        out.append({
            "qid": q,
            "query": queries[q].text,
            "candidates": [{"id": d, "text": corpus[d].text, "title": corpus[d].title} for d in ids],
            "labels": [max(0, int(judged.get(d, 0))) for d in ids],
        })
    return out


def _warn_unusable_judgements(ds: Any, split: str, qids: list[str], qrels: Mapping[str, Mapping[str, int]],
                              dropped: int) -> None:
    """Log, with counts, the judged documents of ``qids`` that cannot be candidates (not in the corpus, or without
    text) and the ``dropped`` queries left without a positive (in the retriever trainers' words)."""
    corpus = ds.corpus
    judged = [d for q in qids for d in qrels[q]]
    unknown = sum(1 for d in judged if d not in corpus)
    empty = sum(1 for d in judged if d in corpus and not has_content(corpus[d].text, corpus[d].title or ""))
    if unknown:
        log.warning("%s/%s: %d judged documents are not in the corpus and were ignored", ds.name, split, unknown)
    if empty:
        log.warning("%s/%s: %d judged documents have no text and were ignored", ds.name, split, empty)
    if dropped:
        log.warning("%s/%s: %d of %d queries with a positive judgement have no positive left in the corpus and are "
                    "skipped", ds.name, split, dropped, len(qids))


def load_training_data(cfg: DataConfig, data_root: str | None = None, scale: TeacherScale | None = None
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The (train, dev) examples a config names, validated before any model is loaded; ``scale``: the range the
    training head reads ``teacher_scores`` on (:func:`teacher_scale`)."""
    if cfg.path:
        examples = load_examples(cfg.path, scale)
        if cfg.max_queries is not None:
            examples = examples[: cfg.max_queries]
    else:
        examples = build_from_beir(cfg.beir, data_root, cfg.split, cfg.negatives_per_positive, cfg.bm25_depth,
                                   cfg.max_candidates, cfg.max_queries, cfg.seed, cfg.negatives,
                                   cfg.qrels_duplicates)
    return split_dev(examples, cfg.dev_fraction or 0.0, cfg.seed, cfg.dev_max)


def teacher_order(example: Mapping[str, Any]) -> list[int]:
    """Candidate indices best first: the teacher ranking if given, else teacher scores, else labels (stable)."""
    cands = example["candidates"]
    if example.get("teacher_ranking"):
        pos = {c["id"]: i for i, c in enumerate(cands)}
        order = [pos[d] for d in example["teacher_ranking"]]
        return order + [i for i in range(len(cands)) if i not in set(order)]
    key = example.get("teacher_scores") or example["labels"]
    return sorted(range(len(cands)), key=lambda i: -key[i])
