"""Readers and writers for the IR formats our users have on disk.

BEIR folders (``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv``), TREC run files (6 columns, or the 3-column
``qid docid rank`` MS MARCO form Pyserini writes), qrels in TREC (4 columns) or BEIR TSV (3 columns + header) form,
and JSONL of ``{"query", "docs"}``. Every reader streams, accepts ``.gz`` and a leading UTF-8 byte-order mark, and
raises :class:`~rerank.errors.DataFormatError` naming the file and line of anything it cannot read exactly: undecodable
bytes, a corrupt or truncated ``.gz``, a control character or a byte-order mark after the file's start (two files
joined with ``cat``) in a whitespace-separated format, a malformed record (in JSONL, a lone UTF-16 surrogate escape
such as ``\\ud800``: valid JSON, but no character, and tokenizers crash on it), a relevance grade outside the signed
32-bit range trec_eval reads, a query without text, and a record given twice (a qrels pair, a query or document id, a run's
document) -- an id twice is ambiguous, so it is never resolved silently.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Set
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from rerank.errors import DataFormatError
from rerank.types import Document, Qrels, Query, Run, lone_surrogate, sort_ranking
from rerank.utils.files import atomic_write
from rerank.utils.text import unreadable_query

__all__ = [
    "DUPLICATES_FIX",
    "DUPLICATE_POLICIES",
    "GRADE_MAX",
    "GRADE_MIN",
    "gzipped",
    "open_text",
    "iter_lines",
    "iter_jsonl",
    "iter_corpus",
    "read_corpus",
    "CorpusPart",
    "read_corpus_part",
    "count_records",
    "read_queries",
    "read_qrels",
    "read_run",
    "check_ranked",
    "check_rank_column",
    "write_run",
    "write_qrels",
    "write_jsonl",
    "read_query_docs_jsonl",
    "find_file",
]

log = logging.getLogger(__name__)

#: What ``read_qrels`` does with a (query, document) pair judged twice: ``error`` (default), keep the ``last``
#: grade, or the ``max`` grade.
DUPLICATE_POLICIES = ("error", "last", "max")
Duplicates = Literal["error", "last", "max"]
#: the fix a duplicate judgement's error names (the eval commands' flag); callers that take the policy from another
#: option (the trainers' ``qrels_duplicates`` key) replace it with theirs
DUPLICATES_FIX = "keep one grade with --allow-duplicates last|max"

_BOM = "\ufeff"
_GZIP_MAGIC = b"\x1f\x8b"
# the 3-column forms are tab-separated: a line of 3 space-separated fields is more likely a 4- or 6-column line cut
# short than a record
_THREE_COLUMNS = "{form} are tab-separated ({cols}); this line has 3 fields and no tab"
# C0 controls but tab, line feed and carriage return (separators), and DEL: never part of an id, a grade or a score
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NOT_CONTROL = bytes(b for b in range(256) if not _CONTROL.match(chr(b)))
_MID_BOM = ("byte-order mark (U+FEFF) in the line: only the very start of a file may hold one (files joined with cat? "
            "remove it)")
#: relevance grades trec_eval (pytrec_eval) reads exactly: a C int; outside it a query's measures are silently wrong
GRADE_MIN, GRADE_MAX = -(2**31), 2**31 - 1


def gzipped(path: str | Path) -> bool:
    """Whether ``path`` names a gzip file: its name ends in ``.gz``, in any case (``run.TREC.GZ``), as every reader and
    writer decides."""
    return Path(path).suffix.lower() == ".gz"


def open_text(path: str | Path) -> IO[str]:
    """Open a text file for reading (``.gz`` decompressed, a leading byte-order mark dropped)."""
    path = Path(path)
    if gzipped(path):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def find_file(path: str | Path) -> Path:
    """Return ``path`` or ``path.gz``, whichever exists (raises ``FileNotFoundError`` naming both)."""
    path = Path(path)
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        return gz
    raise FileNotFoundError(f"neither {path} nor {gz} exists")


def _decode(path: Path, block: bytes, lineno: int) -> str:
    """UTF-8 text of ``block``, whose first line is line ``lineno + 1``; a bad byte is an error naming its line."""
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = block.rfind(b"\n", 0, e.start) + 1
        at = lineno + block.count(b"\n", 0, e.start) + 1
        hint = ("this is gzip data: name the file *.gz" if at == 1 and block.startswith(_GZIP_MAGIC)
                else "save the file as UTF-8")
        raise DataFormatError(path, at, f"invalid UTF-8 at byte {e.start - line_start + 1} of the line ({hint})")\
            from None


def iter_lines(
    path: str | Path, controls: bool = False, block_size: int = 1 << 20
) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line without its line ending)`` of a text file, ``.gz`` decompressed.

    A leading UTF-8 byte-order mark is dropped. Bytes that are not UTF-8, a file named ``.gz`` that is not gzip, and
    a corrupt or truncated gzip stream raise :class:`DataFormatError` naming the file and the line, and so do a
    control character (C0 but tab, line feed and carriage return; DEL) and a byte-order mark anywhere but at the
    file's start (two files joined with ``cat``) when ``controls`` is true: in the whitespace-separated formats either
    would silently become part of an id. Lines end at ``\\n`` only (a ``\\r`` before it is dropped); the file is
    decoded a block at a time.
    """
    path = Path(path)
    lineno = 0
    gz = gzipped(path)
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            read = f.read1 if gz else f.read  # read1: what one inflate gives, so a cut stream
            pending = b""                                       # fails after the lines that came before the cut
            while True:
                block = read(block_size)
                if block:
                    block = pending + block
                    cut = block.rfind(b"\n") + 1
                    block, pending = block[:cut], block[cut:]
                    if not block:
                        continue
                elif pending:
                    block, pending = pending, b""
                else:
                    break
                text = _decode(path, block, lineno)
                if lineno == 0 and text.startswith(_BOM):
                    text = text[1:]
                lines = (text[:-1] if text.endswith("\n") else text).split("\n")
                if "\r" in text:
                    lines = [line.rstrip("\r") for line in lines]
                bad = _bad_character(text, block) if controls else None
                if bad is not None:  # the lines before it first, so an earlier error is reported first
                    n = text.count("\n", 0, bad[0])
                    yield from zip(range(lineno + 1, lineno + 1 + n), lines[:n])
                    raise DataFormatError(path, lineno + n + 1, bad[1])
                yield from zip(range(lineno + 1, lineno + 1 + len(lines)), lines)
                lineno += len(lines)
    except gzip.BadGzipFile as e:
        raise DataFormatError(path, lineno + 1, f"not a valid gzip file ({e}); if it is plain text, drop the .gz")\
            from None
    except EOFError:
        raise DataFormatError(path, lineno + 1, "truncated gzip file: the compressed data ends in or after this line")\
            from None
    except zlib.error as e:
        raise DataFormatError(path, lineno + 1, f"corrupt gzip data ({e})") from None


def _bad_character(text: str, block: bytes) -> tuple[int, str] | None:
    """(offset in ``text``, message) of its first control character or byte-order mark, if it holds one."""
    # a control byte is never part of a multi-byte UTF-8 character; deleting every other byte (C speed) finds one far
    # faster than a regular expression
    control = _CONTROL.search(text) if block.translate(None, _NOT_CONTROL) else None
    # a byte-order mark that starts a line (``text`` starts at one): where ``cat`` joined a second file; inside a
    # line it is a zero-width no-break space of the text itself
    if text.startswith(_BOM):
        bom = 0
    else:
        joined = text.find("\n" + _BOM)
        bom = joined + 1 if joined >= 0 else -1
    if control is not None and (bom < 0 or control.start() < bom):
        return control.start(), f"control character {control.group()!r} in the line"
    return (bom, _MID_BOM) if bom >= 0 else None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line; bad JSON, a non-object or a lone UTF-16 surrogate
    (``\\ud800`` unpaired: ``json.loads`` accepts it, but it is no character and every tokenizer fails on it) is an
    error naming the line and field."""
    for lineno, line in iter_lines(path):
        if not line.strip(" \t"):  # blank; other whitespace (form feed, U+001C, ...) is an error below
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
        except RecursionError:
            raise DataFormatError(path, lineno, "invalid JSON: nested too deeply") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        if "\\ud" in line or "\\uD" in line:  # the escapes of U+D000-DFFF: only then can a surrogate be in it
            where = _surrogate_at(obj)
            if where is not None:
                raise DataFormatError(path, lineno, f"lone UTF-16 surrogate in {where} (an unpaired \\ud800-\\udfff "
                                      "escape is no character): fix or drop the record")
        yield lineno, obj



def _surrogate_at(value: Any, where: str = "") -> str | None:
    """Where in a decoded JSON value a lone surrogate is (``field 'text'``, ``field 'docs'[1]``), None if nowhere
    (paired escapes decode to one character)."""
    if isinstance(value, str):
        return (f"field {where}" if where else "the record") if lone_surrogate(value) is not None else None
    if isinstance(value, dict):
        for k, v in value.items():
            if lone_surrogate(k) is not None:
                return f"a field name{' in ' + where if where else ''}"
            found = _surrogate_at(v, f"{where}[{k!r}]" if where else repr(k))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_at(v, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _require(obj: dict[str, Any], key: str, path: str | Path, lineno: int, *alts: str) -> Any:
    for k in (key, *alts):
        if k in obj and obj[k] is not None:
            return obj[k]
    names = " or ".join(repr(k) for k in (key, *alts))
    raise DataFormatError(path, lineno, f"missing required field {names}")


def _record_id(obj: dict[str, Any], keys: tuple[str, ...], what: str, path: str | Path, lineno: int) -> str:
    """The id of a JSONL record from the first of ``keys`` it holds; two of them holding different ids is an error
    (a table export's row number beside the real id would otherwise silently become the id)."""
    _ids_agree(obj, keys, what, path, lineno)
    return _id(_require(obj, keys[0], path, lineno, *keys[1:]), what, path, lineno)


def _ids_agree(obj: dict[str, Any], keys: tuple[str, ...], what: str, path: str | Path, lineno: int) -> None:
    """Refuse a record whose id fields (``keys``) hold different ids."""
    present = [(k, obj[k]) for k in keys if obj.get(k) is not None]
    if len({str(v) for _, v in present}) > 1:
        shown = " and ".join(f"{k!r} ({json.dumps(v)[:40]})" for k, v in present)
        raise DataFormatError(path, lineno, f"fields {shown} disagree: which is the {what}? keep one of them")


def _id(value: Any, what: str, path: str | Path, lineno: int) -> str:
    """An id field: a non-empty string or an integer without whitespace (run and qrels files could not hold it)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(path, lineno, f"{what} must be a string or an integer, got {json.dumps(value)[:40]}")
    text = str(value)
    if not text or any(c.isspace() for c in text) or _CONTROL.search(text):
        raise DataFormatError(path, lineno, f"{what} {text!r} is empty or holds whitespace or control characters")
    return text


def _text(obj: dict[str, Any], key: str, path: str | Path, lineno: int, *alts: str) -> str:
    value = _require(obj, key, path, lineno, *alts)
    if not isinstance(value, str):
        raise DataFormatError(path, lineno, f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _duplicate(path: str | Path, lineno: int, what: str, first: int | None, hint: str = "") -> DataFormatError:
    where = f" (first at line {first})" if first is not None else ""
    return DataFormatError(path, lineno, f"duplicate {what}{where}{'; ' + hint if hint else ''}")


def _first_line(lines: Iterable[tuple[int, Any]], match: Callable[[Any], bool]) -> int | None:
    """Line number of the first record that ``match``es (re-reads a file only to report a duplicate)."""
    return next((lineno for lineno, rec in lines if match(rec)), None)


def _iter_corpus_lines(path: str | Path) -> Iterator[tuple[int, Document]]:
    for lineno, obj in iter_jsonl(path):
        doc_id = _record_id(obj, ("_id", "id", "docid"), "document id", path, lineno)
        text = _text(obj, "text", path, lineno, "contents")
        title = obj.get("title")
        if title is not None and not isinstance(title, str):
            raise DataFormatError(path, lineno, f"field 'title' must be a string, got {type(title).__name__}")
        yield lineno, Document(id=doc_id, text=text, title=title or "")


def _corpus_duplicate(path: str | Path, lineno: int, doc_id: str) -> DataFormatError:
    first = _first_line(_iter_corpus_lines(path), lambda d: d.id == doc_id)
    return _duplicate(path, lineno, f"document id {doc_id!r}", first)


def iter_corpus(path: str | Path) -> Iterator[Document]:
    """Stream a BEIR ``corpus.jsonl`` (``_id``, ``text``, optional ``title``); a duplicate id is an error."""
    seen: set[str] = set()
    for lineno, doc in _iter_corpus_lines(path):
        if doc.id in seen:
            raise _corpus_duplicate(path, lineno, doc.id)
        seen.add(doc.id)
        yield doc


def read_corpus(path: str | Path) -> dict[str, Document]:
    """Read a whole corpus into memory; an empty corpus or a duplicate id is an error."""
    corpus: dict[str, Document] = {}
    for lineno, doc in _iter_corpus_lines(path):
        if doc.id in corpus:
            raise _corpus_duplicate(path, lineno, doc.id)
        corpus[doc.id] = doc
    if not corpus:
        raise DataFormatError(path, None, "empty corpus: no documents found")
    return corpus


@dataclass(frozen=True)
class CorpusPart:
    """What one pass of :func:`read_corpus_part` kept of a corpus."""

    docs: dict[str, Document]  #: the documents asked for that the corpus holds
    found: frozenset[str]  #: the ids asked for or about that the corpus holds
    size: int  #: how many documents the corpus holds


def read_corpus_part(path: str | Path, keep: Set[str], ask: Set[str] = frozenset()) -> CorpusPart:
    """Read a corpus once, every line checked as :func:`read_corpus` checks it (a malformed record anywhere, a
    duplicate id, an empty corpus are errors), holding only the documents in ``keep``; ``ask``: ids whose presence
    is recorded too (``found``), without their documents."""
    docs: dict[str, Document] = {}
    asked: set[str] = set()
    size = 0
    for doc in iter_corpus(path):  # each line checked, a duplicate id refused
        size += 1
        if doc.id in keep:
            docs[doc.id] = doc
        if doc.id in ask:
            asked.add(doc.id)
    if not size:
        raise DataFormatError(path, None, "empty corpus: no documents found")
    return CorpusPart(docs, frozenset(docs).union(asked), size)


def count_records(path: str | Path) -> int:
    """The non-blank lines of a JSONL file (``.gz`` decompressed), read as bytes and not parsed: a cheap count of
    its records, e.g. for a progress bar's total."""
    path = Path(path)
    with gzip.open(path, "rb") if gzipped(path) else open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


#: first fields of a BEIR-style header line (qrels: ``query-id corpus-id score``; queries TSV: ``query-id text``)
_QUERY_ID_HEADERS = ("query-id", "query_id", "qid")
#: a queries TSV header may also be ``id<TAB>text``: these second fields mark it
_QUERY_TEXT_HEADERS = ("text", "query", "query-text", "query_text", "title", "question")


def _is_queries_header(parts: list[str]) -> bool:
    """Whether the fields of a queries TSV's first line are a header (``query-id<TAB>text``, ``id<TAB>query``)."""
    first, second = parts[0].strip().lower(), parts[1].strip().lower()
    return first in _QUERY_ID_HEADERS or (first in ("id", "_id") and second in _QUERY_TEXT_HEADERS)


def _iter_query_lines(path: Path) -> Iterator[tuple[int, Query]]:
    if ".tsv" in (s.lower() for s in path.suffixes):
        first = True
        for lineno, line in iter_lines(path, controls=True):
            if not line.strip():
                continue
            parts = line.split("\t", 1)
            if len(parts) != 2:
                raise DataFormatError(path, lineno, "expected 'query-id<TAB>text'")
            if first:
                first = False
                if _is_queries_header(parts):
                    continue  # a header, as the qrels reader skips BEIR's
            qid = _id(parts[0], "query id", path, lineno)
            yield lineno, Query(qid, _query_text(parts[1], qid, path, lineno))
    else:
        for lineno, obj in iter_jsonl(path):
            qid = _record_id(obj, ("_id", "id", "qid"), "query id", path, lineno)
            yield lineno, Query(qid, _query_text(_text(obj, "text", path, lineno, "query"), qid, path, lineno))


def _query_text(text: str, qid: str, path: str | Path, lineno: int) -> str:
    """A query's text, which must hold more than whitespace (a document's may be empty; a query's never ranks)."""
    if not text.strip():
        raise DataFormatError(path, lineno, f"query {qid!r} has no text (empty or only whitespace)")
    if (why := unreadable_query(text)) is not None:
        raise DataFormatError(path, lineno, f"query {qid!r} {why}: it would rank the documents by nothing")
    return text


def read_queries(path: str | Path) -> dict[str, Query]:
    """Read BEIR ``queries.jsonl`` (``_id``, ``text``) or a TSV of ``qid<TAB>text`` (TREC topics).

    A query id given twice is an error naming both lines; so is a query whose text is empty or only whitespace.
    """
    path = Path(path)
    queries: dict[str, Query] = {}
    lines: dict[str, int] = {}
    for lineno, query in _iter_query_lines(path):
        if query.id in queries:
            raise _duplicate(path, lineno, f"query id {query.id!r}", lines[query.id])
        queries[query.id] = query
        lines[query.id] = lineno
    if not queries:
        raise DataFormatError(path, None, "no queries found")
    return queries


#: what a non-integer grade on a qrels file's first data line may be, by column count: a header line
_HEADER_HINTS = {
    3: " (a BEIR header line starts with 'query-id')",
    4: " (TREC qrels are 4 columns, qid iter docid grade, with no header line: if this line is one, delete it)",
}


def _parse_grade(value: str, path: str | Path, lineno: int, header_hint: str = "") -> int:
    """An integral grade (``1``, ``+1``, ``1.0``, ``1e0``) in trec_eval's signed 32-bit range; ``header_hint``
    follows the error when the value is not one (the file's first line: a header?)."""
    try:
        grade = int(value)
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            f = math.nan
        if not f.is_integer():
            raise DataFormatError(path, lineno, f"relevance grade {value!r} is not an integer{header_hint}") from None
        grade = int(f)
    if not GRADE_MIN <= grade <= GRADE_MAX:
        raise DataFormatError(path, lineno, f"relevance grade {value!r} is outside the signed 32-bit range "
                              f"[{GRADE_MIN}, {GRADE_MAX}] trec_eval reads")
    return grade


def _iter_qrels(path: Path) -> Iterator[tuple[int, str, str, int]]:
    """``(line, query id, doc id, grade)`` of a qrels file, its form detected from the first data line."""
    ncols = 0
    grade_col = doc_col = 0
    for lineno, line in iter_lines(path, controls=True):
        parts = line.split()
        if not parts:
            continue
        first = not ncols
        if first:
            ncols = len(parts)
            if ncols not in (3, 4):
                raise DataFormatError(path, lineno, f"qrels need 3 (BEIR) or 4 (TREC) columns, found {ncols}")
            doc_col, grade_col = (1, 2) if ncols == 3 else (2, 3)
            if ncols == 3 and parts[0].lower() in _QUERY_ID_HEADERS:
                continue  # BEIR header
        if len(parts) != ncols:
            raise DataFormatError(path, lineno, f"expected {ncols} columns, found {len(parts)}")
        if ncols == 3 and "\t" not in line:
            raise DataFormatError(path, lineno,
                                  _THREE_COLUMNS.format(form="BEIR qrels", cols="query-id corpus-id score"))
        grade = parts[grade_col]
        fast = grade.isdigit() and grade.isascii() and len(grade) < 10  # at most 999999999: in range
        value = int(grade) if fast else _parse_grade(grade, path, lineno, _HEADER_HINTS[ncols] if first else "")
        yield lineno, parts[0], parts[doc_col], value


def read_qrels(path: str | Path, duplicates: Duplicates = "error") -> Qrels:
    """Read qrels in TREC form (``qid iter docid grade``) or BEIR form (``query-id<TAB>corpus-id<TAB>score`` + header).

    The form is detected per file from the column count of the first data line. A (query, document) pair judged
    twice is an error naming both lines, unless ``duplicates`` is ``last`` (the later grade wins) or ``max``.
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {duplicates!r}")
    path = Path(path)
    qrels: Qrels = {}
    for lineno, qid, docid, value in _iter_qrels(path):
        judged = qrels.get(qid)
        if judged is None:
            judged = qrels[qid] = {}
        elif docid in judged:
            if duplicates == "error":
                first = _first_line(((ln, (q, d)) for ln, q, d, _ in _iter_qrels(path)), (qid, docid).__eq__)
                raise _duplicate(path, lineno, f"judgement of document {docid!r} for query {qid!r}", first,
                                 DUPLICATES_FIX)
            if duplicates == "max":
                value = max(value, judged[docid])
        judged[docid] = value
    if not qrels:
        raise DataFormatError(path, None, "no relevance judgements found")
    return qrels


def read_run(path: str | Path) -> Run:
    """Read a TREC run (``qid Q0 docid rank score tag``), sorted as trec_eval sorts it.

    The tab-separated 3-column MS MARCO form (``qid docid rank``, as Pyserini writes it) is read too, with score
    ``-rank``; its rank must be a positive integer, unique within a query. When in nearly every query of 3 lines or
    more (2 such queries at least) that rank falls from each line to the next (scores listed best first, where the
    form holds ranks), a warning says the run is read upside down; ranks listed in any other order (by doc id, as
    merged runs are) are not warned of. The form is detected from the first line's column count. A document listed
    twice for one query is an error (trec_eval would silently count it twice).
    """
    path = Path(path)
    run: Run = {}
    seen: dict[str, dict[str, int]] = {}
    ranks: dict[str, dict[int, int]] = {}
    ncols: int | None = None
    for lineno, line in iter_lines(path, controls=True):
        parts = line.split()
        if not parts:
            continue
        if ncols is None:
            ncols = len(parts)
            if ncols not in (3, 6):
                raise DataFormatError(
                    path, lineno, f"run lines need 6 columns (TREC: qid Q0 docid rank score tag) or 3 (MS MARCO: "
                    f"qid docid rank), found {ncols}"
                )
        if len(parts) != ncols:
            form = "TREC run lines need 6" if ncols == 6 else "MS MARCO run lines need 3"
            raise DataFormatError(path, lineno, f"{form} columns, found {len(parts)}")
        if ncols == 6:
            qid, _, docid, _, score, _ = parts
            try:
                value = float(score)
            except ValueError:
                raise DataFormatError(path, lineno, f"score {score!r} is not a number") from None
            if math.isnan(value):
                raise DataFormatError(path, lineno, "score is NaN")
        else:
            if "\t" not in line:
                raise DataFormatError(path, lineno, _THREE_COLUMNS.format(form="MS MARCO runs", cols="qid docid rank"))
            qid, docid, rank_text = parts
            rank = int(rank_text) if rank_text.isdigit() and rank_text.isascii() else 0
            if rank < 1:
                raise DataFormatError(path, lineno, f"rank {rank_text!r} is not a positive integer (MS MARCO run: "
                                      "qid docid rank)")
            at = ranks.setdefault(qid, {})
            if rank in at:
                raise _duplicate(path, lineno, f"rank {rank} for query {qid!r}", at[rank],
                                 "a 3-column run holds ranks (qid docid rank); scores need the 6-column TREC form "
                                 "(qid Q0 docid rank score tag)")
            at[rank] = lineno
            value = float(-rank)
        first = seen.setdefault(qid, {})
        if docid in first:
            raise _duplicate(path, lineno, f"document {docid!r} for query {qid!r}", first[docid])
        first[docid] = lineno
        run.setdefault(qid, []).append((docid, value))
    if not run:
        raise DataFormatError(path, None, "empty run: no lines found")
    if ncols == 3:
        _check_rank_order(path, ranks)
    return {qid: sort_ranking(pairs) for qid, pairs in run.items()}


#: a query counts for the upside-down warning from this many lines (2 fall by chance half the time when ranks are
#: listed by doc id, 3 a sixth of it), and the warning needs this many such queries
_RANK_ORDER_LINES = 3
_RANK_ORDER_QUERIES = 2


def _check_rank_order(path: Path, ranks: dict[str, dict[int, int]]) -> None:
    """Warn when in at least 9 of 10 queries of a 3-column run (``ranks``: query -> rank -> line, in file order) with
    3 lines or more, 2 such queries at least, the rank falls from each line to the next (n, ..., 1): scores written
    best first where the form holds ranks, so rank 1 (read as best) is the lowest score and the run is read upside
    down (as :func:`check_rank_column` warns for 6 columns). Ranks in any other order (by doc id, as text) pass, and
    so does a run too small to tell (a docid-sorted correct run falls in a query of n lines once in n!)."""
    listed = [list(at) for at in ranks.values() if len(at) >= _RANK_ORDER_LINES]
    falling = sum(all(a > b for a, b in zip(order, order[1:])) for order in listed)
    if len(listed) >= _RANK_ORDER_QUERIES and 10 * falling >= 9 * len(listed):
        log.warning("%s: in %d of %d queries (of those with %d lines or more) the third column falls as the file goes "
                    "on, line after line: it looks like scores (higher is better) listed best first, but a 3-column "
                    "run holds ranks (qid docid rank, 1 = best), so this run is read upside down; write scores as a "
                    "6-column TREC run (qid Q0 docid rank score tag)", path, falling, len(listed), _RANK_ORDER_LINES)


def check_ranked(run: Run, what: str, top_k: int | None = None, cut: str | None = None) -> bool:
    """Whether ``run`` ranks: one that scores every document of each query the same ranks nothing (MS MARCO's
    top-1000 candidate files, an ir_datasets dataset's unscored scoreddocs), its order being doc ids', so the log says
    so, naming it ``what`` (``--first-stage RUN``), and what taking its first candidates does: with a reranker's
    ``top_k`` below its candidates, how many to take; else ``cut``, when given (a recipe's depth or window).
    ``rerank eval``, ``rerank rank``, the recipes over a run and the ``irds:`` conversion all check with it."""
    if not any(len(v) > 1 for v in run.values()) or any(len({s for _, s in v}) > 1 for v in run.values()):
        return True
    deepest = max(len(v) for v in run.values())
    if top_k is not None and top_k < deepest:
        cut = (f"--top-k {top_k} reranks an arbitrary {top_k} of each query's up to {deepest} candidates: give "
               f"--top-k {deepest}")
    log.warning("%s scores every document of a query the same: its order is trec_eval's tie order (doc id "
                "descending), not a ranking%s", what, f"; {cut}" if cut else "")
    return False


def check_rank_column(path: str | Path, what: str, max_lines: int = 20_000) -> bool:
    """Whether a 6-column run's rank column (4th field) agrees with its scores; when, in most queries of its first
    ``max_lines`` lines (a cheap sample: a second read of the file), the smallest rank holds a smaller score than the
    largest rank (a distance, where rank 1 is the smallest), warn once naming it ``what`` (``--run RUN``): trec_eval
    orders by score, not by rank, so that run is scored upside down. Other forms, ties and malformed lines pass."""
    ends: dict[str, list[float]] = {}  # query -> [smallest rank, its score, largest rank, its score]
    lines = iter_lines(path)
    try:
        for lineno, line in lines:
            if lineno > max_lines:
                break
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                return True
            try:
                rank, score = int(parts[3]), float(parts[4])
            except ValueError:
                continue
            end = ends.get(parts[0])
            if end is None:
                ends[parts[0]] = [rank, score, rank, score]
            elif rank < end[0]:
                end[0], end[1] = rank, score
            elif rank > end[2]:
                end[2], end[3] = rank, score
    finally:
        lines.close()
    inverted = sum(1 for first, low, last, high in ends.values() if last > first and low < high)
    agreeing = sum(1 for first, low, last, high in ends.values() if last > first and low > high)
    if inverted <= agreeing:
        return True
    log.warning("%s: in %d of %d queries rank 1 has a lower score than the last rank (distances, not similarities?): "
                "trec_eval, and this evaluation, order each query by score, not by the rank column, so its ranking "
                "is scored upside down; negate the scores, or write scores that fall with the rank", what, inverted,
                inverted + agreeing)
    return False


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


def write_jsonl(records: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write JSON lines atomically; how many records were written."""
    n = 0
    with atomic_write(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def _score(value: Any, where: str, path: str | Path, lineno: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataFormatError(path, lineno, f"{where} must be a finite number, got {value!r}")
    return float(value)


#: the keys a document object of :func:`read_query_docs_jsonl` may hold
_DOC_KEYS = ("id", "_id", "docid", "text", "contents", "title", "score")


def read_query_docs_jsonl(path: str | Path) -> list[tuple[Query, list[tuple[Document, float | None]]]]:
    """Read plain JSONL of ``{"query": str|{"id","text"}, "docs": [str | {"id"?, "text", "title"?, "score"?}]}``.

    Missing ids are filled with the line number (``q{line}``) and position (``d{i}``); a query id given twice, a
    query without readable text and a document key that is not read (a misspelt ``titel``, ``metadata``) are errors
    naming the line, and a file without records is an error.
    """
    out: list[tuple[Query, list[tuple[Document, float | None]]]] = []
    lines: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        q = _require(obj, "query", path, lineno)
        if isinstance(q, dict):
            _ids_agree(q, ("id", "_id"), "query id", path, lineno)
            qid = _id(q.get("id", q.get("_id", f"q{lineno}")), "query id", path, lineno)
            query = Query(qid, _query_text(_text(q, "text", path, lineno), qid, path, lineno))
        elif isinstance(q, str):
            qid = _id(obj.get("qid", f"q{lineno}"), "qid", path, lineno)
            query = Query(qid, _query_text(q, qid, path, lineno))
        else:
            raise DataFormatError(path, lineno, "'query' must be a string or an object")
        docs_raw = _require(obj, "docs", path, lineno)
        if not isinstance(docs_raw, list):
            raise DataFormatError(path, lineno, "'docs' must be a list")
        docs: list[tuple[Document, float | None]] = []
        for i, d in enumerate(docs_raw):
            if isinstance(d, str):
                docs.append((Document(f"d{i}", d), None))
            elif isinstance(d, dict):
                other = [k for k in d if k not in _DOC_KEYS]
                if other:  # a misspelt "titel" would never be read; a Document carries no metadata
                    raise DataFormatError(path, lineno, f"docs[{i}]: unknown key(s) {', '.join(map(repr, other))}; "
                                                        f"the keys read are {', '.join(_DOC_KEYS)}")
                text = d.get("text", d.get("contents"))
                if text is None:
                    raise DataFormatError(path, lineno, f"docs[{i}] has no 'text'")
                if not isinstance(text, str):
                    raise DataFormatError(path, lineno, f"docs[{i}].text must be a string")
                _ids_agree(d, ("id", "_id", "docid"), f"docs[{i}] id", path, lineno)
                did = _id(d.get("id", d.get("_id", d.get("docid", f"d{i}"))), f"docs[{i}] id", path, lineno)
                title = d.get("title")
                if title is not None and not isinstance(title, str):
                    raise DataFormatError(path, lineno, f"docs[{i}].title must be a string")
                score = _score(d.get("score"), f"docs[{i}].score", path, lineno)
                docs.append((Document(did, text, title or ""), score))
            else:
                raise DataFormatError(path, lineno, f"docs[{i}] must be a string or an object")
        ids = [d.id for d, _ in docs]
        if len(set(ids)) != len(ids):
            raise DataFormatError(path, lineno, "duplicate document ids in 'docs'")
        if query.id in lines:
            raise _duplicate(path, lineno, f"query id {query.id!r}", lines[query.id])
        lines[query.id] = lineno
        out.append((query, docs))
    if not out:
        raise DataFormatError(path, None, 'no queries found: expected JSON lines {"query": ..., "docs": [...]}')
    return out
