"""``rerank serve``'s passages measured as the head reads them (second audit round): a document whose special
strings are defanged (``[SEP]`` becomes several tokens) still has every token read by some passage."""

from __future__ import annotations

from pathlib import Path

from rerank.heads.base import Reranker
from rerank.heads.text import neutralise
from rerank.serve.documents import Budget, Passages, TextTooLong, make_passages


def _read_lengths(rr: Reranker, passages: Passages) -> list[int]:
    return [len(rr.tokenizer("cats", neutralise(c.doc.full_text(), rr.tokenizer))["input_ids"])
            for c in passages.candidates]


def test_chunks_of_a_document_with_special_strings_fit_what_the_head_reads(tiny_bert_dir: Path) -> None:
    rr = Reranker.load("cross-encoder", model=str(tiny_bert_dir), max_length=64)
    title = " ".join(["the"] * 6)
    words = [("[SEP]" if i % 3 == 0 else "the") for i in range(120)]
    passages = make_passages(rr, "cats", [(" ".join(words), title)], Budget(max_chunks=50))
    assert max(_read_lengths(rr, passages)) <= 64
    assert sum(len(c.doc.text.split()) for c in passages.candidates) == len(words)  # every word in one passage
    rr.close()


def test_keep_end_and_no_truncate_count_defanged_tokens(tiny_bert_dir: Path) -> None:
    rr = Reranker.load("cross-encoder", model=str(tiny_bert_dir), max_length=64)
    text = " ".join(["[SEP]"] * 40 + ["end"])
    kept = make_passages(rr, "cats", [(text, "")], Budget(keep="end"))
    assert _read_lengths(rr, kept)[0] <= 64 and kept.candidates[0].doc.text.endswith("end")
    short = " ".join(["[SEP]"] * 30)  # 30 raw tokens fit the budget, defanged they do not
    try:
        make_passages(rr, "cats", [(short, "")], Budget(truncate=False))
    except TextTooLong as e:
        assert "as the model reads it" in str(e)
    else:
        raise AssertionError("a text longer than the head reads, once defanged, was let through")
    rr.close()
