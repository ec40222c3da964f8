"""Real inputs: a query with no readable character (zero-width spaces, NUL, a byte-order mark) is refused by the Python
API and the file readers as the server refuses it, and a document key the rank file reader does not read is an error
naming the line, as the Python API's is; a head tokenises only the part of a very long document its token budget
reaches, with the scores of the whole document."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

import rerank.heads.llm as llm
import rerank.methods.colbert.head as colbert_head
import rerank.methods.monot5.head as monot5_head
from rerank.data.io import read_query_docs_jsonl, read_queries
from rerank.errors import DataFormatError
from rerank.heads.base import Reranker
from rerank.utils.text import cut_to_tokens


class _Length(Reranker):
    method = "test-s45-length"

    def score_candidates(self, query, candidates):
        return [float(len(c.doc.text)) for c in candidates]


UNREADABLE = ["\u200b", "\x00", "\ufeff\u00ad", "\u200b \u200c"]


@pytest.mark.parametrize("query", UNREADABLE)
def test_the_python_api_refuses_a_query_nothing_reads(query: str) -> None:
    head = _Length()
    for call in (lambda: head.rerank(query, ["a", ""]), lambda: head.rerank_batch([query], [["a"]]),
                 lambda: head.rank(query, ["a"]), lambda: head.predict([(query, "a")])):
        with pytest.raises(ValueError, match=r"has only characters no model reads \(U\+"):
            call()
    assert [r.doc.text for r in head.rerank("\u200bq", ["a", "abc"]).results] == ["abc", "a"]  # readable: ranked


def test_the_file_readers_refuse_a_query_nothing_reads(tmp_path: Path) -> None:
    rank_input = tmp_path / "in.jsonl"
    rank_input.write_text(json.dumps({"query": "ok", "docs": ["a"]}) + "\n"
                          + json.dumps({"query": "\u200b\u200b", "docs": ["a"]}) + "\n")
    with pytest.raises(DataFormatError, match=r"in\.jsonl:2: query 'q2' has only characters no model reads"):
        read_query_docs_jsonl(rank_input)
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "1", "text": "\ufeff"}) + "\n")
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:1: query '1' has only characters no model reads"):
        read_queries(queries)


@pytest.mark.parametrize("key", ["titel", "metadata"])
def test_the_rank_reader_refuses_a_document_key_it_does_not_read(tmp_path: Path, key: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"query": "q", "docs": [{"id": "a", "text": "x", key: "BM25"}]}) + "\n")
    with pytest.raises(DataFormatError, match=rf"in\.jsonl:1: docs\[0\]: unknown key\(s\) '{key}'; the keys read"):
        read_query_docs_jsonl(path)
    path.write_text(json.dumps({"query": "q", "docs": [{"docid": "a", "contents": "x", "title": "t", "score": 1}]}))
    [(query, docs)] = read_query_docs_jsonl(path)
    assert docs[0][0].id == "a" and docs[0][0].title == "t" and docs[0][1] == 1.0


@pytest.mark.usefixtures("fresh")
def test_a_cli_rank_of_an_unreadable_query_is_one_line_and_exit_2(tmp_path: Path, run_cli) -> None:
    from rerank.heads.registry import register_reranker

    register_reranker("test-s45-length", _Length)
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"query": "\x00", "docs": ["a", "b"]}) + "\n")
    rc, out, err = run_cli("rank", "--reranker", "test-s45-length", "--input", str(path), "--output",
                           str(tmp_path / "out.jsonl"))
    assert rc == 2 and "has only characters no model reads (U+0000)" in err and len(err.strip().splitlines()) == 1


# Long documents: a head reads a document's first few hundred tokens, so only the part of a 200k-character document
# that its token budget reaches is tokenised, and the scores are exactly what the whole documents give.

_WORDS = "the zebra stripes 我昨天在市场买了苹果 🐼国宝 Frau Müller dogs [SEP] </s> <|im_end|> [D] a,b. x\ty".split(" ")


def _long_docs() -> list[str]:
    rng = random.Random(0)
    words = " ".join(rng.choice(_WORDS) for _ in range(25_000))
    sparse = ("a" + " " * 8) * 20 + "ab" * 75 + " "  # little text per character, and a 150-character word
    return [words[:200_000], ("苹果 " * 70_000)[:200_000], (sparse * 1000)[:200_000], "zebra stripes", ""]


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerank.testing import tiny_colbert

    return tiny_colbert(tmp_path_factory.mktemp("s45-colbert") / "model")


def _longest_text_tokenised(monkeypatch: pytest.MonkeyPatch, tokenizer: Any) -> list[int]:
    """Record the length of every text ``tokenizer`` is given (``encode`` and calls, one text or a list)."""
    seen = [0]
    cls = type(tokenizer)
    for name in ("encode", "__call__"):
        def spy(self: Any, text: Any, *args: Any, _orig: Any = getattr(cls, name), **kwargs: Any) -> Any:
            seen.extend(len(t) for t in ([text] if isinstance(text, str) else text) if isinstance(t, str))
            return _orig(self, text, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    return seen


@pytest.mark.parametrize(("method", "model", "side"), [
    ("yes-no", "tiny_llm_dir", "right"), ("monot5", "tiny_t5_dir", "right"), ("duot5", "tiny_t5_dir", "right"),
    ("colbert", "colbert_dir", "right"), ("colbert", "colbert_dir", "left"),
])
def test_a_long_document_is_tokenised_only_as_far_as_the_head_reads(
    method: str, model: str, side: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = Reranker.load(method, model=str(request.getfixturevalue(model)))
    head.tokenizer.truncation_side = side  # colbert cuts from the side its tokenizer truncates
    docs = _long_docs()
    seen = _longest_text_tokenised(monkeypatch, head.tokenizer)
    cut = {r.doc.id: r.score for r in head.rerank("zebra stripes", docs).results}
    assert max(seen) < 50_000  # never a 200k-character document whole
    for module in (llm, monot5_head, colbert_head):  # the uncut path
        monkeypatch.setattr(module, "cut_to_tokens", lambda text, *args, **kwargs: text)
    whole = {r.doc.id: r.score for r in head.rerank("zebra stripes", docs).results}
    assert max(seen) >= 200_000  # the uncut path did tokenise them whole
    assert cut == whole and len(cut) == len(docs)


def test_a_long_word_cut_at_the_piece_edge_leaves_the_budget_tokens_as_they_were(colbert_dir: Path) -> None:
    """WordPiece reads a word of at most 100 characters (a longer one is one [UNK]): a 400-character hash cut to 90
    characters at the piece's edge gives dozens of tokens where the whole word gives one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(colbert_dir / "0_Transformer")

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False, verbose=False)

    budget = 180
    start = (("a" + " " * 8) * 1000)[: 8 * (budget + 16) - 90]  # about 165 tokens
    text = start + "ab" * 200 + " " + "zebra stripes " * 10_000
    piece = cut_to_tokens(text, tok, budget)
    assert len(piece) < len(text) // 10 and ids(piece)[:budget] == ids(text)[:budget]
    assert ids(cut_to_tokens(text[::-1], tok, budget, side="left"))[-budget:] == ids(text[::-1])[-budget:]


def test_atomic_write_follows_links_and_writes_streams_in_place(tmp_path: Path) -> None:
    """``rank --output`` through a link to a stream replaced the link (as root, /dev/stdout became a file)."""
    import os

    from rerank.utils.files import atomic_write

    target = tmp_path / "real.trec"
    target.write_text("old\n")
    link = tmp_path / "link.trec"
    link.symlink_to(target)
    with atomic_write(link) as f:
        f.write("new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    stream_link = tmp_path / "out.trec"
    stream_link.symlink_to(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with atomic_write(stream_link) as f:
            f.write("q1 Q0 d1 1 1.0 x\n")
        assert os.read(reader, 100) == b"q1 Q0 d1 1 1.0 x\n"
    finally:
        os.close(reader)
    assert stream_link.is_symlink() and not fifo.is_file()


@pytest.mark.usefixtures("fresh")
def test_rank_to_a_stream_keeps_stdout_for_the_run(tmp_path: Path, run_cli) -> None:
    import os

    from rerank.heads.registry import register_reranker

    register_reranker("test-s45-length", _Length)
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"query": "q", "docs": ["a", "abc"]}) + "\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        rc, out, err = run_cli("rank", "--reranker", "test-s45-length", "--input", str(path), "--output", str(fifo))
        written = os.read(reader, 1000).decode()
    finally:
        os.close(reader)
    assert rc == 0, err
    assert written.split()[:3] == ["q1", "Q0", "d1"] and "ranked 1 query" in err and "ranked" not in out
    assert not Path(f"{fifo}.meta.json").exists()


def test_train_keeps_stdout_for_its_result_line(tiny_bert_dir: Path, tiny_beir_dir: Path, tmp_path: Path,
                                                run_cli) -> None:
    """transformers' log dicts went to stdout before the JSON result, so ``rerank train ... | jq`` failed."""
    rc, out, err = run_cli("train", "sft", "--set", "head=cross-encoder", "--set", f"model={tiny_bert_dir}",
                           "--set", f"data.beir={tiny_beir_dir}", "--set", "max_steps=2", "--set", "batch_size=2",
                           "--set", "logging_steps=1", "--output", str(tmp_path / "run"))
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 1 and json.loads(out)["global_step"] == 2, out
    assert "'loss'" in err
