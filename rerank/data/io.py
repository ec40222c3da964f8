"""Readers and writers for the IR formats our users have on disk.

BEIR folders (``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv``), TREC run files (6 columns), qrels in TREC
(4 columns) or BEIR TSV (3 columns + header) form, and JSONL of ``{"query", "docs"}``. Every reader streams, accepts
``.gz``, and raises :class:`~rerank.errors.DataFormatError` naming the file and line of a malformed record.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from rerank.errors import DataFormatError
from rerank.types import Document, Qrels, Query, Run, sort_ranking
from rerank.utils.files import atomic_write

__all__ = [
    "open_text",
    "iter_jsonl",
    "iter_corpus",
    "read_corpus",
    "read_queries",
    "read_qrels",
    "read_run",
    "write_run",
    "write_qrels",
    "write_jsonl",
    "read_query_docs_jsonl",
    "find_file",
]


def open_text(path: str | Path) -> IO[str]:
    """Open a text file for reading, transparently decompressing ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def find_file(path: str | Path) -> Path:
    """Return ``path`` or ``path.gz``, whichever exists (raises ``FileNotFoundError`` naming both)."""
    path = Path(path)
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        return gz
    raise FileNotFoundError(f"neither {path} nor {gz} exists")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line; bad JSON or a non-object is an error."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _require(obj: dict[str, Any], key: str, path: str | Path, lineno: int, *alts: str) -> Any:
    for k in (key, *alts):
        if k in obj and obj[k] is not None:
            return obj[k]
    names = " or ".join(repr(k) for k in (key, *alts))
    raise DataFormatError(path, lineno, f"missing required field {names}")


def _iter_corpus_lines(path: str | Path) -> Iterator[tuple[int, Document]]:
    for lineno, obj in iter_jsonl(path):
        doc_id = _require(obj, "_id", path, lineno, "id", "docid")
        text = _require(obj, "text", path, lineno, "contents")
        yield lineno, Document(id=str(doc_id), text=str(text), title=str(obj.get("title") or ""))


def iter_corpus(path: str | Path) -> Iterator[Document]:
    """Stream a BEIR ``corpus.jsonl`` (``_id``, ``text``, optional ``title``)."""
    for _, doc in _iter_corpus_lines(path):
        yield doc


def read_corpus(path: str | Path) -> dict[str, Document]:
    """Read a whole corpus into memory; an empty corpus or a duplicate id is an error."""
    corpus: dict[str, Document] = {}
    for lineno, doc in _iter_corpus_lines(path):
        if doc.id in corpus:
            raise DataFormatError(path, lineno, f"duplicate document id {doc.id!r}")
        corpus[doc.id] = doc
    if not corpus:
        raise DataFormatError(path, None, "empty corpus: no documents found")
    return corpus


def read_queries(path: str | Path) -> dict[str, Query]:
    """Read BEIR ``queries.jsonl`` (``_id``, ``text``) or a TSV of ``qid<TAB>text`` (TREC topics)."""
    path = Path(path)
    queries: dict[str, Query] = {}
    if ".tsv" in path.suffixes:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("\t", 1)
                if len(parts) != 2:
                    raise DataFormatError(path, lineno, "expected 'query-id<TAB>text'")
                queries[parts[0]] = Query(parts[0], parts[1])
    else:
        for lineno, obj in iter_jsonl(path):
            qid = str(_require(obj, "_id", path, lineno, "id", "qid"))
            queries[qid] = Query(qid, str(_require(obj, "text", path, lineno, "query")))
    if not queries:
        raise DataFormatError(path, None, "no queries found")
    return queries


def _parse_grade(value: str, path: str | Path, lineno: int) -> int:
    try:
        return int(value)
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            f = math.nan
        if f.is_integer():
            return int(f)
        raise DataFormatError(path, lineno, f"relevance grade {value!r} is not an integer") from None


def read_qrels(path: str | Path) -> Qrels:
    """Read qrels in TREC form (``qid iter docid grade``) or BEIR form (``query-id corpus-id score`` + header).

    The form is detected per file from the column count of the first data line.
    """
    qrels: Qrels = {}
    ncols: int | None = None
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if ncols is None:
                ncols = len(parts)
                if ncols not in (3, 4):
                    raise DataFormatError(
                        path, lineno, f"qrels need 3 (BEIR) or 4 (TREC) columns, found {ncols}"
                    )
                if ncols == 3 and parts[0].lower() in ("query-id", "query_id", "qid"):
                    continue  # BEIR header
            if len(parts) != ncols:
                raise DataFormatError(path, lineno, f"expected {ncols} columns, found {len(parts)}")
            qid, docid, grade = (parts[0], parts[1], parts[2]) if ncols == 3 else (parts[0], parts[2], parts[3])
            qrels.setdefault(qid, {})[docid] = _parse_grade(grade, path, lineno)
    if not qrels:
        raise DataFormatError(path, None, "no relevance judgements found")
    return qrels


def read_run(path: str | Path) -> Run:
    """Read a 6-column TREC run (``qid Q0 docid rank score tag``), sorted as trec_eval sorts it.

    A document listed twice for one query is an error (trec_eval would silently count it twice).
    """
    run: Run = {}
    seen: dict[str, dict[str, int]] = {}
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise DataFormatError(path, lineno, f"TREC run lines need 6 columns, found {len(parts)}")
            qid, _, docid, _, score, _ = parts
            try:
                value = float(score)
            except ValueError:
                raise DataFormatError(path, lineno, f"score {score!r} is not a number") from None
            if math.isnan(value):
                raise DataFormatError(path, lineno, "score is NaN")
            first = seen.setdefault(qid, {})
            if docid in first:
                raise DataFormatError(
                    path, lineno, f"duplicate document {docid!r} for query {qid!r} (first at line {first[docid]})"
                )
            first[docid] = lineno
            run.setdefault(qid, []).append((docid, value))
    if not run:
        raise DataFormatError(path, None, "empty run: no lines found")
    return {qid: sort_ranking(pairs) for qid, pairs in run.items()}


def format_run(run: Run, tag: str = "rerank") -> Iterator[str]:
    """TREC run lines in the run's own order (ranks 1..n)."""
    for qid in sorted(run):
        for rank, (docid, score) in enumerate(run[qid], 1):
            yield f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n"  # shortest exact repr: ties stay ties


def write_run(run: Run, path: str | Path, tag: str = "rerank") -> None:
    """Write a TREC run atomically; queries in sorted id order, each list in its given order."""
    with atomic_write(path) as f:
        f.writelines(format_run(run, tag))


def write_qrels(qrels: Qrels, path: str | Path, beir: bool = False) -> None:
    """Write qrels atomically in TREC (default) or BEIR TSV form."""
    with atomic_write(path) as f:
        if beir:
            f.write("query-id\tcorpus-id\tscore\n")
        for qid in sorted(qrels):
            for docid, grade in qrels[qid].items():
                f.write(f"{qid}\t{docid}\t{grade}\n" if beir else f"{qid} 0 {docid} {grade}\n")


def write_jsonl(records: Iterable[dict[str, Any]], path: str | Path) -> None:
    """Write JSON lines atomically."""
    with atomic_write(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def read_query_docs_jsonl(path: str | Path) -> list[tuple[Query, list[tuple[Document, float | None]]]]:
    """Read plain JSONL of ``{"query": str|{"id","text"}, "docs": [str | {"id"?, "text", "title"?, "score"?}]}``.

    Missing ids are filled with the line number (``q{line}``) and position (``d{i}``).
    """
    out: list[tuple[Query, list[tuple[Document, float | None]]]] = []
    for lineno, obj in iter_jsonl(path):
        q = _require(obj, "query", path, lineno)
        if isinstance(q, dict):
            query = Query(str(q.get("id", q.get("_id", f"q{lineno}"))), str(_require(q, "text", path, lineno)))
        else:
            query = Query(str(obj.get("qid", f"q{lineno}")), str(q))
        docs_raw = _require(obj, "docs", path, lineno)
        if not isinstance(docs_raw, list):
            raise DataFormatError(path, lineno, "'docs' must be a list")
        docs: list[tuple[Document, float | None]] = []
        for i, d in enumerate(docs_raw):
            if isinstance(d, str):
                docs.append((Document(f"d{i}", d), None))
            elif isinstance(d, dict):
                text = d.get("text", d.get("contents"))
                if text is None:
                    raise DataFormatError(path, lineno, f"docs[{i}] has no 'text'")
                did = str(d.get("id", d.get("_id", d.get("docid", f"d{i}"))))
                score = d.get("score")
                if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
                    raise DataFormatError(path, lineno, f"docs[{i}].score must be a number, got {score!r}")
                docs.append((Document(did, str(text), str(d.get("title") or "")), None if score is None else float(score)))
            else:
                raise DataFormatError(path, lineno, f"docs[{i}] must be a string or an object")
        ids = [d.id for d, _ in docs]
        if len(set(ids)) != len(ids):
            raise DataFormatError(path, lineno, "duplicate document ids in 'docs'")
        out.append((query, docs))
    return out
