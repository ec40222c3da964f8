"""Property tests of every reader: corruptions of real files (slices of ../shared/data, the synthetic BEIR fixture and
a shipped config) either read to exactly the right content or raise DataFormatError naming the file (and the line)
-- never another exception type, never a silently different result.

Families, each with the content it must give when it does not raise:
* harmless (BOM, CRLF, blank lines, trailing blanks, no final newline, gzip): the original content, always;
* reordered data lines: the original content (readers do not depend on line order);
* a data line given twice: an error at the copy's line;
* a byte that is not UTF-8, or a control character, inserted: an error at that line;
* the file cut short: the content of its complete lines, or of those plus the cut one (cut inside a tag); an error
  otherwise;
* a gzip stream cut short or with a byte flipped: an error, or the original content;
* arbitrary byte edits: any content, or DataFormatError -- never another exception.
Hypothesis runs derandomized (the same examples every run), 20 per case (~20 s in all);
``RERANK_FUZZ_EXAMPLES=500`` searches deeper.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank.config import load_yaml
from rerank.data.datasets import Dataset
from rerank.data.io import read_corpus, read_qrels, read_queries, read_query_docs_jsonl, read_run
from rerank.errors import DataFormatError
from rerank.trainers.data import load_examples

FUZZ = settings(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                max_examples=int(os.environ.get("RERANK_FUZZ_EXAMPLES", "20")))
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Fmt:
    """A reader, the file name it reads, and a real file's content (its first line a header when ``header``)."""

    name: str
    filename: str
    read: Callable[[Path], Any]
    seed: bytes
    header: bool = False
    line_based: bool = True  # one record per line (not YAML)
    # the last field of a line has no end mark (TSV query text, excluded doc ids): in a file cut short without a final
    # newline it reads as a shorter value, which no reader can tell from a real one; this says whether ``got`` is
    # ``whole`` but for such a prefix
    cut_last_field: Callable[[Any, Any], bool] | None = None
    duplicates_ok: bool = False  # a repeated line is the same content (excluded ids are a set)
    gz_ok: bool = True  # the reader takes FILE.gz
    json: bool = False  # JSON lines: a raw DEL (U+007F) inside a string is valid JSON
    normalize: Callable[[Any], Any] = field(default=lambda x: x)


def _lines(path: Path, n: int, start: int = 0) -> bytes:
    with open(path, "rb") as f:
        return b"".join(line for i, line in zip(range(start + n), f) if i >= start)


def _run_slice(run: Path) -> bytes:
    """The first 15 lines of the first two queries of a TREC run."""
    out: dict[bytes, list[bytes]] = {}
    with open(run, "rb") as f:
        for line in f:
            q = line.split()[0]
            if q not in out and len(out) == 2:
                break
            out.setdefault(q, []).append(line)
    return b"".join(line for lines in out.values() for line in lines[:15])


def _excluded(path: Path) -> Any:
    return Dataset(path.parents[1]).excluded_ids("test")


def _one_text_cut(got: dict, whole: dict) -> bool:
    """Queries: equal but for one whose text is a prefix of its whole text."""
    diff = [q for q in whole if got.get(q) != whole[q]]
    return got.keys() == whole.keys() and len(diff) == 1 and whole[diff[0]].text.startswith(got[diff[0]].text)


def _one_id_cut(got: dict, whole: dict) -> bool:
    """Excluded ids: equal but for one query whose set has one id replaced by a prefix of it."""
    diff = [q for q in whole if got.get(q) != whole[q]]
    if got.keys() != whole.keys() or len(diff) != 1:
        return False
    (new,), (old,) = got[diff[0]] - whole[diff[0]], whole[diff[0]] - got[diff[0]]
    return old.startswith(new)


def _formats(shared: Path | None, tiny: Path) -> list[Fmt]:
    by_qid = lambda rows: sorted(rows, key=lambda r: r[0].id)  # noqa: E731
    fmts = [
        Fmt("tiny corpus", "corpus.jsonl", read_corpus, _lines(tiny / "corpus.jsonl", 12), json=True),
        Fmt("tiny queries", "queries.jsonl", read_queries, _lines(tiny / "queries.jsonl", 10), json=True),
        Fmt("tiny BEIR qrels", "test.tsv", read_qrels, _lines(tiny / "qrels" / "test.tsv", 16), header=True),
        Fmt("config YAML", "c.yaml", load_yaml, (REPO / "configs/examples/scifact-cross-encoder.yaml").read_bytes(),
            line_based=False, gz_ok=False),
        Fmt("excluded ids", "excluded/test.tsv", _excluded, b"q1\td1\nq1\td7\nq2\td1\nq3\td9\n", duplicates_ok=True,
            gz_ok=False, cut_last_field=_one_id_cut),
    ]
    if shared is None:
        return fmts
    dl19, scifact = shared / "dl19-bm25-top100", shared / "scifact"
    run = _run_slice(dl19 / "bm25_top100.trec")
    ms = b"".join(b"%s\t%s\t%s\n" % (p[0], p[2], p[3]) for p in map(bytes.split, run.splitlines()))
    qrels = _lines(dl19 / "qrels" / "test.tsv", 25)
    trec_qrels = b"".join(b"%s 0 %s %s\n" % tuple(p) for p in map(bytes.split, qrels.splitlines()[1:]))
    queries = [json.loads(x) for x in _lines(dl19 / "queries.jsonl", 6).splitlines()]
    corpus = [json.loads(x) for x in _lines(dl19 / "corpus.jsonl", 12).splitlines()]
    qdocs = b"".join(json.dumps({"query": {"id": q["_id"], "text": q["text"]},
                                 "docs": [{"id": d["_id"], "text": d["text"]} for d in corpus[2 * i : 2 * i + 2]]})
                     .encode() + b"\n" for i, q in enumerate(queries))
    train = b"".join(json.dumps({"qid": q["_id"], "query": q["text"], "candidates": [
        {"id": d["_id"], "text": d["text"]} for d in corpus[2 * i : 2 * i + 2]], "labels": [1, 0]}).encode() + b"\n"
        for i, q in enumerate(queries))
    return fmts + [
        Fmt("DL19 TREC run", "run.trec", read_run, run),
        Fmt("DL19 MS MARCO run", "run.tsv", read_run, ms),
        Fmt("DL19 BEIR qrels", "test.tsv", read_qrels, qrels, header=True),
        Fmt("DL19 TREC qrels", "qrels.txt", read_qrels, trec_qrels),
        Fmt("DL19 queries", "queries.jsonl", read_queries, _lines(dl19 / "queries.jsonl", 10), json=True),
        Fmt("DL19 queries TSV", "topics.tsv", read_queries,
            b"".join(f"{q['_id']}\t{q['text']}\n".encode() for q in queries), cut_last_field=_one_text_cut),
        Fmt("SciFact corpus", "corpus.jsonl", read_corpus, _lines(scifact / "corpus.jsonl", 8), json=True),
        Fmt("SciFact queries", "queries.jsonl", read_queries, _lines(scifact / "queries.jsonl", 10, start=300),
            json=True),
        Fmt("query-docs JSONL", "in.jsonl", read_query_docs_jsonl, qdocs, json=True, normalize=by_qid),
        Fmt("training JSONL", "train.jsonl", load_examples, train, json=True, normalize=lambda r: sorted(r, key=str)),
    ]


def _all_formats() -> list[Fmt]:
    from rerank.testing import make_tiny_beir, shared_data_path

    with tempfile.TemporaryDirectory() as tmp:  # the seeds are read into memory here
        return _formats(shared_data_path(), make_tiny_beir(Path(tmp) / "tiny", num_docs=60, num_queries=12))


FORMATS = _all_formats()
IDS = [f.name for f in FORMATS]
LINE_FORMATS = [f for f in FORMATS if f.line_based]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


class Outcome:
    """What a reader made of some bytes: its content (normalised) or the DataFormatError it raised."""

    def __init__(self, fmt: Fmt, data: bytes, folder: Path, gz: bool = False) -> None:
        self.path = folder / (fmt.filename + (".gz" if gz else ""))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        self.error: DataFormatError | None = None
        self.value: Any = None
        try:
            self.value = fmt.normalize(fmt.read(self.path))
        except DataFormatError as e:  # anything else fails the test with its traceback
            assert e.path in (str(self.path), f"{self.path} row"), (e.path, self.path)
            whole_file = any(w in str(e) for w in ("empty", "no queries", "no relevance", "no training",
                                                    "invalid YAML"))
            assert e.line is not None or whole_file, str(e)
            self.error = e

    def __repr__(self) -> str:
        return f"error {self.error}" if self.error else f"content {self.value!r:.300}"


def _original(fmt: Fmt, folder: Path) -> Any:
    out = Outcome(fmt, fmt.seed, folder)
    assert out.error is None, f"the seed file of {fmt.name} must read: {out.error}"
    return out.value


def _split(data: bytes) -> list[bytes]:
    """Lines with their endings (a last line may lack one)."""
    return data.splitlines(keepends=True)


def _data_range(fmt: Fmt, lines: list[bytes]) -> range:
    return range(1 if fmt.header else 0, len(lines))


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


# --- harmless changes give the same content ----------------------------------------------------------------------


def _harmless(fmt: Fmt, data: bytes) -> Iterator[tuple[str, bytes, bool]]:
    lines = _split(data)
    yield "BOM", b"\xef\xbb\xbf" + data, False
    yield "CRLF", data.replace(b"\n", b"\r\n"), False
    yield "no final newline", data.rstrip(b"\n"), False
    if fmt.gz_ok:
        yield "gzip", data, True
        yield "gzip + BOM + CRLF", b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n"), True
    if fmt.line_based:
        yield "blank lines", b"\n  \n".join(lines[:1] + [b"".join(lines[1:])]) + b"\n\t\n", False
    if fmt.cut_last_field is None:  # (PyYAML refuses a tab after a value: an error, so YAML gets spaces)
        blanks = b" \t " if fmt.line_based else b"  "
        yield "trailing blanks", b"".join(x.rstrip(b"\n") + blanks + b"\n" for x in lines), False


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_harmless_changes_read_the_same(fmt: Fmt, workdir: Path) -> None:
    want = _original(fmt, workdir)
    for name, data, gz in _harmless(fmt, fmt.seed):
        got = Outcome(fmt, data, workdir, gz)
        assert got.error is None and got.value == want, (name, got)


@pytest.mark.parametrize("fmt", LINE_FORMATS, ids=lambda f: f.name)
@FUZZ
@given(order=st.randoms(use_true_random=False))
def test_line_order_does_not_matter(fmt: Fmt, workdir: Path, order: Any) -> None:
    want = _original(fmt, workdir)
    lines = _split(fmt.seed.rstrip(b"\n") + b"\n")
    head, body = lines[: 1 if fmt.header else 0], lines[1 if fmt.header else 0 :]
    order.shuffle(body)
    got = Outcome(fmt, b"".join(head + body), workdir)
    assert got.error is None and got.value == want, got


# --- corruptions are errors at their line ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in LINE_FORMATS if not f.duplicates_ok], ids=lambda f: f.name)
@FUZZ
@given(pick=st.integers(0, 10**6), to=st.integers(0, 10**6))
def test_a_line_given_twice_is_an_error_at_the_copy(fmt: Fmt, workdir: Path, pick: int, to: int) -> None:
    lines = _split(fmt.seed.rstrip(b"\n") + b"\n")
    rng = _data_range(fmt, lines)
    src = rng[pick % len(rng)]
    dst = rng.start + to % (len(lines) - rng.start + 1)  # insert before line dst (0-based), after the header
    new = lines[:dst] + [lines[src]] + lines[dst:]
    got = Outcome(fmt, b"".join(new), workdir)
    copy_line = max(dst, src + 1) + 1  # 1-based line of the later of the two equal lines
    assert got.error is not None, got
    assert got.error.line == copy_line and "duplicate" in str(got.error), got


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@FUZZ
@given(pos=st.integers(0, 10**6), byte=st.sampled_from([b"\xff", b"\xfe", b"\xc0", b"\x80"]))
def test_bytes_that_are_not_utf8_are_an_error_at_their_line(fmt: Fmt, workdir: Path, pos: int, byte: bytes) -> None:
    data = fmt.seed
    pos = pos % (len(data) + 1)
    if byte == b"\x80" and pos > 0 and data[pos - 1] >= 0xC0:  # would complete a multi-byte character
        return
    got = Outcome(fmt, data[:pos] + byte + data[pos:], workdir)
    assert got.error is not None, got
    assert fmt.line_based is False or got.error.line == _line_of(data, pos), (got, _line_of(data, pos))


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@FUZZ
@given(pos=st.integers(0, 10**6), char=st.sampled_from([b"\x00", b"\x01", b"\x07", b"\x08", b"\x0b", b"\x0c",
                                                        b"\x1b", b"\x1c", b"\x1f", b"\x7f"]))
def test_control_characters_are_an_error_at_their_line(fmt: Fmt, workdir: Path, pos: int, char: bytes) -> None:
    data = fmt.seed
    pos = pos % (len(data) + 1)
    if fmt.json and char == b"\x7f":
        return  # JSON forbids raw C0 controls in strings, not DEL
    got = Outcome(fmt, data[:pos] + char + data[pos:], workdir)
    assert got.error is not None, got
    assert fmt.line_based is False or got.error.line == _line_of(data, pos), (got, _line_of(data, pos))


@pytest.mark.parametrize("fmt", LINE_FORMATS, ids=lambda f: f.name)
@FUZZ
@given(cut=st.integers(1, 10**6), gz=st.booleans())
def test_a_file_cut_short_reads_its_complete_lines_or_is_an_error(
    fmt: Fmt, workdir: Path, cut: int, gz: bool
) -> None:
    data = fmt.seed
    cut = 1 + cut % (len(data) - 1)
    prefix = data[:cut]
    complete = Outcome(fmt, prefix[: prefix.rfind(b"\n") + 1], workdir / "a")  # the lines before the cut
    whole = Outcome(fmt, prefix + data[cut:].split(b"\n", 1)[0], workdir / "b")  # the cut line restored
    got = Outcome(fmt, prefix, workdir, gz and fmt.gz_ok)
    if got.error is not None or any(a.error is None and a.value == got.value for a in (complete, whole)):
        return
    assert fmt.cut_last_field is not None and whole.error is None, (got, complete, whole)
    assert fmt.cut_last_field(got.value, whole.value), (got, whole)


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@FUZZ
@given(pos=st.integers(0, 10**6), flip=st.integers(1, 255), truncate=st.booleans())
def test_a_damaged_gzip_stream_is_an_error(fmt: Fmt, workdir: Path, pos: int, flip: int, truncate: bool) -> None:
    if not fmt.gz_ok:
        return
    want = _original(fmt, workdir)
    packed = bytearray(gzip.compress(fmt.seed, mtime=0))
    pos = pos % len(packed)
    if truncate:
        del packed[pos:]
    else:
        packed[pos] ^= flip
    path = workdir / "damaged" / (fmt.filename + ".gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(packed))
    try:
        got = fmt.normalize(fmt.read(path))
    except DataFormatError as e:
        assert e.path in (str(path), f"{path} row")
        return
    assert got == want  # a flip in the header's unused fields changes nothing


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["insert", "replace", "delete"]),
                                st.binary(min_size=1, max_size=3)), min_size=1, max_size=4))
def test_any_edit_reads_or_is_a_data_format_error(fmt: Fmt, workdir: Path, edits: list) -> None:
    data = bytearray(fmt.seed)
    for pos, op, blob in edits:
        pos %= len(data) + 1
        if op == "insert":
            data[pos:pos] = blob
        elif op == "replace":
            data[pos : pos + len(blob)] = blob
        else:
            del data[pos : pos + len(blob)]
        if not data:
            data = bytearray(b"\n")
    Outcome(fmt, bytes(data), workdir)  # raises (failing the test) on any exception but DataFormatError


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.name in ("DL19 TREC run", "tiny BEIR qrels")],
                         ids=lambda f: f.name)
def test_every_byte_of_a_gzip_stream_flipped(fmt: Fmt, workdir: Path) -> None:
    """Exhaustively: each byte of the compressed file inverted gives the same content or a DataFormatError (header
    fields, deflate blocks, the CRC and the length all covered)."""
    want = _original(fmt, workdir)
    packed = gzip.compress(fmt.seed, mtime=0)
    path = workdir / "flipped" / (fmt.filename + ".gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = set()
    for pos in range(len(packed)):
        path.write_bytes(packed[:pos] + bytes([packed[pos] ^ 0xFF]) + packed[pos + 1 :])
        try:
            assert fmt.normalize(fmt.read(path)) == want, pos
            kinds.add("same")
        except DataFormatError as e:
            kinds.add(str(e).split(": ", 1)[1].split(" ")[0])
    assert {"corrupt", "not"} <= kinds, kinds  # zlib's errors and a bad header both reached the reader's message


@FUZZ
@given(fmt=st.sampled_from(LINE_FORMATS), block=st.integers(1, 64), pos=st.integers(0, 10**6),
       insert=st.sampled_from([b"", b"\xff", b"\x01", b"\r\n", b"\xef\xbb\xbf"]), gz=st.booleans())
def test_lines_do_not_depend_on_the_block_size(fmt: Fmt, block: int, pos: int, insert: bytes, gz: bool) -> None:
    """iter_lines decodes a block at a time: any block size gives the same lines, and the same error line."""
    from rerank.data.io import iter_lines

    def read(size: int) -> Any:
        try:
            return list(iter_lines(path, controls=True, block_size=size))
        except DataFormatError as e:
            return str(e)

    data = b"\xef\xbb\xbf" + fmt.seed
    pos %= len(data) + 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("f.gz" if gz else "f")
        raw = data[:pos] + insert + data[pos:]
        path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
        assert read(block) == read(1 << 20)
