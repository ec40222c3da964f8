"""The one training-data schema of the reranker trainers: load, validate, carve a dev split, or build from BEIR.

A training example (a JSONL line, or a row of an HF dataset saved with ``save_to_disk``)::

    {"qid": str, "query": str,
     "candidates": [{"id": str, "text": str, "title"?: str, "score"?: float}],
     "labels": [int, ...],                  # graded relevance, aligned with candidates (required)
     "teacher_ranking"?: [candidate id, ...],   # best first (listwise / FIRST SFT target)
     "teacher_scores"?: [float, ...],           # aligned with candidates (ERank / GroupRank SFT targets)
     "reasoning"?: str}                         # optional reasoning text (ERank SFT with reasoning)

Every row is validated before training starts; an error names the file and line (or dataset row).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rerank.config import changed_options
from rerank.data.io import DUPLICATE_POLICIES, Duplicates
from rerank.errors import ConfigError, DataFormatError

__all__ = [
    "BEIR_ONLY",
    "DataConfig",
    "build_from_beir",
    "has_content",
    "load_examples",
    "load_training_data",
    "split_dev",
    "teacher_order",
    "validate_example",
]

_OPTIONAL = {"teacher_ranking", "teacher_scores", "reasoning"}
_KNOWN = {"qid", "query", "candidates", "labels", *_OPTIONAL}
_CANDIDATE_KEYS = ("id", "text", "title", "score")


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
        if self.negatives not in ("top", "random"):
            raise ConfigError(f"data.negatives must be 'top' or 'random', got {self.negatives!r}")
        if self.qrels_duplicates not in DUPLICATE_POLICIES:
            raise ConfigError(f"data.qrels_duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, "
                              f"got {self.qrels_duplicates!r}")
        if self.negatives_per_positive < 0 or self.bm25_depth < 1 or self.max_candidates < 2:
            raise ConfigError("data: negatives_per_positive >= 0, bm25_depth >= 1 and max_candidates >= 2 required")
        if self.max_queries is not None and self.max_queries < 1:  # a slice [:-1] or [:0] would drop queries silently
            raise ConfigError(f"data.max_queries must be >= 1 (or unset for all), got {self.max_queries}")


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


def has_content(text: str, title: str = "") -> bool:
    """Whether a document has any text to score (its text or its title is not blank)."""
    return bool(text.strip() or title.strip())


def validate_example(obj: Any, path: str | Path, line: int | None) -> dict[str, Any]:
    """Check one row against the schema and return it normalised (ids as str); errors name ``path:line``."""

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
        cand = {"id": str(c["id"]), "text": c["text"], "title": str(c.get("title") or "")}
        if not has_content(cand["text"], cand["title"]):
            raise fail(f"candidates[{i}] ({cand['id']!r}) has an empty 'text' (and no title)")
        if c.get("score") is not None:
            if not _num(c["score"]):
                raise fail(f"candidates[{i}].score must be a finite number, got {c['score']!r}")
            cand["score"] = float(c["score"])
        out_cands.append(cand)
    ids = [c["id"] for c in out_cands]
    if len(set(ids)) != len(ids):
        raise fail("duplicate candidate ids")
    labels = obj["labels"]
    if not isinstance(labels, list) or len(labels) != len(cands):
        raise fail(f"'labels' must be a list aligned with candidates ({len(cands)} entries)")
    if not all(_grade(v) for v in labels):
        raise fail("'labels' must be non-negative integers (graded relevance)")
    out: dict[str, Any] = {"qid": str(obj["qid"]), "query": obj["query"], "candidates": out_cands,
                           "labels": [int(v) for v in labels]}
    if obj.get("teacher_ranking") is not None:
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
        out["teacher_scores"] = [float(v) for v in ts]
    if obj.get("reasoning") is not None:
        if not isinstance(obj["reasoning"], str):
            raise fail("'reasoning' must be a string")
        out["reasoning"] = obj["reasoning"]
    return out


def _rows(path: Path) -> Iterable[tuple[int, Any]]:
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise DataFormatError(path, None, f"is a DatasetDict ({list(ds)}); point at one split's folder")
        # HF rows are 0-based; report them 1-based like lines
        return ((i + 1, {k: v for k, v in row.items() if v is not None}) for i, row in enumerate(ds))
    from rerank.data.io import iter_jsonl

    return iter_jsonl(path)


def load_examples(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate every row of a JSONL file (``.gz`` ok) or an HF dataset folder."""
    p = Path(path)
    if not p.exists():
        raise DataFormatError(p, None, "training data not found")
    where = f"{p} row" if p.is_dir() else p
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, obj in _rows(p):
        ex = validate_example(obj, where, line)
        if ex["qid"] in seen:
            raise DataFormatError(where, line, f"duplicate qid {ex['qid']!r} (first at line {seen[ex['qid']]})")
        seen[ex["qid"]] = line
        out.append(ex)
    if not out:
        raise DataFormatError(p, None, "no training examples")
    return out


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
    qids = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())]
    if max_queries is not None:
        qids = qids[:max_queries]
    if not qids:
        raise DataFormatError(ds.qrels_path(split), None, "no query with a positive judgement")
    run = build_retriever("bm25", ds).retrieve({q: queries[q] for q in qids}, bm25_depth)
    corpus = ds.corpus

    def usable(d: str) -> bool:  # in the corpus, with text to score (an empty document is no training candidate)
        return d in corpus and has_content(corpus[d].text, corpus[d].title or "")

    rng = random.Random(seed)
    out = []
    for q in qids:
        judged = qrels[q]
        pos = [d for d, g in sorted(judged.items()) if g > 0 and usable(d)]
        if not pos:
            continue
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


def load_training_data(cfg: DataConfig, data_root: str | None = None
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The (train, dev) examples a config names, validated before any model is loaded."""
    if cfg.path:
        examples = load_examples(cfg.path)
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
