"""BM25 on non-English text: NFKC, words that keep their combining marks, CJK unigrams + bigrams, the cache key, and
the warning when most queries retrieve nothing; Latin-script text tokenizes exactly as bm25s' default splitter."""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

import bm25s
import pytest
import Stemmer

import rerank.retrieval.bm25 as bm25_mod
from rerank.data.datasets import Dataset
from rerank.retrieval import build_retriever
from rerank.types import Query

BM25S_SPLIT = re.compile(r"(?u)\b\w\w+\b").findall  # bm25s' default splitter, the analysis before this change


def corpus(root: Path, texts: list[str]) -> Dataset:
    """A BEIR folder whose documents ``d0``, ``d1``, ... hold ``texts`` (one query, unused)."""
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}, ensure_ascii=False) + "\n"
                for i, t in enumerate(texts)), encoding="utf-8")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "x"}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    return Dataset(root)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def top(ds: Dataset, queries: list[str], **options: Any) -> list[str | None]:
    """The best document of each query (None when it retrieves nothing)."""
    r = build_retriever("bm25", ds, show_progress=False, **options)
    run = r.retrieve({f"q{i}": Query(f"q{i}", t) for i, t in enumerate(queries)}, 10)
    return [max(run[f"q{i}"], key=lambda h: h[1])[0] if run[f"q{i}"] else None for i in range(len(queries))]


def latin_text(rng: random.Random, n: int) -> str:
    """Random text of Latin-script letters (those NFKC keeps and whose lowercase has no combining mark: all but
    U+0130 İ), digits, spaces and punctuation."""
    letters = [c for c in map(chr, range(0x41, 0x250)) if c.isalpha() and c != "\u0130"
               and unicodedata.normalize("NFKC", c) == c]
    pool = letters * 4 + list("0123456789_") + list(" " * 30) + list(".,;:'!?-()[]\"/&")
    return "".join(rng.choice(pool) for _ in range(n))


def test_latin_text_gives_exactly_the_terms_of_bm25s_default_splitter() -> None:
    from rerank.retrieval.analysis import words

    rng = random.Random(0)
    texts = ["Loyal dogs are running in the park", "Straße, Müller's Kühlschranktür; naïve café — œuvre",
             "x_1 foo-bar 3.14 l'état ÅSA", "Ελληνικά και русский текст", ""]
    texts += [latin_text(rng, 300) for _ in range(200)]
    for t in texts:
        assert words(t) == BM25S_SPLIT(t.lower()), t


def test_index_of_latin_text_equals_the_old_tokenization(tmp_path: Path) -> None:
    texts = ["Straße und Müller", "Les châteaux de la Loire", "running dogs ran", "a b c", "naïve cafés"]
    r = build_retriever("bm25", corpus(tmp_path / "c", texts), show_progress=False)
    old = bm25s.tokenize(texts, stopwords=None, stemmer=Stemmer.Stemmer("english"), return_ids=False,
                         show_progress=False)
    assert r.tokenize_queries(texts) == old
    assert set(r.model.vocab_dict) - {""} == {t for doc in old for t in doc}


def test_combining_marks_stay_inside_words(tmp_path: Path) -> None:
    from rerank.retrieval.analysis import words

    assert words(unicodedata.normalize("NFD", "Frau Müller")) == ["frau", "müller"]
    assert words("किसान गेहूं पुस्तकालय") == ["किसान", "गेहूं", "पुस्तकालय"]  # Devanagari vowel signs (Mc/Mn)
    assert words("அரசு பள்ளி") == ["அரசு", "பள்ளி"]  # Tamil
    brahmi = "\U00011013\U0001103a\U00011013\U0001103a"  # a mark past U+FFFF, beside an emoji and a Han Ext-B char
    assert words(f"Müller 😀 𝐁𝐫𝐨𝐭 𠀋𠀋 {brahmi}") == ["müller", "brot", "𠀋", "𠀋𠀋", "𠀋", brahmi]
    nfd = [unicodedata.normalize("NFD", t) for t in ["Frau Müller kauft Brot", "Crêpes au château", "Der Hund"]]
    ds = corpus(tmp_path / "nfd", nfd)
    assert top(ds, ["Müller", "crêpes", unicodedata.normalize("NFD", "château")]) == ["d0", "d1", "d1"]


def test_hindi_with_its_stemmer_finds_whole_words(tmp_path: Path) -> None:
    ds = corpus(tmp_path / "hi", ["किसान खेत में गेहूं उगाते हैं।", "पुस्तकालय में किताबें हैं।",
                                  "दिल्ली भारत की राजधानी है।"])
    r = build_retriever("bm25", ds, show_progress=False, stemmer="hindi")
    assert all(len(t) > 0 for t in r.tokenize_queries(["किसान गेहूं", "पुस्तकालय"]))
    assert top(ds, ["किसान गेहूं", "पुस्तकालय", "राजधानी"], stemmer="hindi") == ["d0", "d1", "d2"]


def test_arabic_harakat_and_hebrew_niqqud_are_removed(tmp_path: Path) -> None:
    from rerank.retrieval.analysis import words

    assert words("المَكْتَبَة الوَطَنِيَّة") == words("المكتبة الوطنية") == ["المكتبة", "الوطنية"]
    assert words("שָׁלוֹם עוֹלָם") == ["שלום", "עולם"]
    ds = corpus(tmp_path / "ar", ["المكتبة الوطنية كبيرة جدا", "القطة تنام على الكرسي", "שלום לכולם מירושלים"])
    assert top(ds, ["المَكْتَبَة الوَطَنِيَّة", "القِطَّة", "שָׁלוֹם"]) == ["d0", "d1", "d2"]
    assert top(ds, ["المَكْتَبَة"], stemmer="arabic") == ["d0"]


def test_nfkc_folds_width_forms_and_drops_invisible_characters(tmp_path: Path) -> None:
    from rerank.retrieval.analysis import words

    assert words("ＡＰＰＬＥ ﾗｰﾒﾝ Soft\u00adware zero\u200bwidth") == [
        "apple", "ラ", "ラー", "ー", "ーメ", "メ", "メン", "ン", "software", "zero", "width"]
    ds = corpus(tmp_path / "w", ["I ate an apple today", "ラーメンが好きです", "Free software licences"])
    assert top(ds, ["ＡＰＰＬＥ", "ﾗｰﾒﾝ", "Soft\u00adware"]) == ["d0", "d1", "d2"]


def test_cjk_runs_give_unigrams_and_bigrams(tmp_path: Path) -> None:
    from rerank.retrieval.analysis import words

    assert words("東京都") == ["東", "東京", "京", "京都", "都"]
    assert words("猫") == ["猫"]
    assert words("iPhone手机") == ["iphone", "手", "手机", "机"]
    assert words("한국어 2023年") == ["한", "한국", "국", "국어", "어", "2023", "年"]
    ds = corpus(tmp_path / "zh", ["我昨天在市场买了苹果，味道很好。", "我的猫很可爱。", "東京都に住んでいます。",
                                  "iPhone手机的电池续航很好。", "한국어를 배우고 있어요.", "The weather is fine."])
    assert top(ds, ["苹果", "猫", "東京", "iPhone", "한국어", "weather"]) == ["d0", "d1", "d2", "d3", "d4", "d5"]
    assert top(ds, ["苹果"], stopwords="zh") == ["d0"]


def test_the_analysis_version_keys_the_index_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = corpus(tmp_path / "c", ["我的猫很可爱", "dogs run"])
    key = bm25_mod.BM25Config().index_key()
    assert key["analyzer"] >= 1 and key["unicode"] == unicodedata.unidata_version
    monkeypatch.setattr(bm25_mod, "ANALYZER_VERSION", 0)  # an index built with an earlier analysis
    before = build_retriever("bm25", ds, show_progress=False)
    monkeypatch.undo()
    after = build_retriever("bm25", ds, show_progress=False)
    assert not after.cache_hit and after.cache_path != before.cache_path
    assert build_retriever("bm25", ds, show_progress=False).cache_hit


def test_most_queries_retrieving_nothing_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rerank.retrieval.bm25")
    ds = corpus(tmp_path / "en", ["loyal dogs in the park", "a quiet library", "striped zebras"])
    r = build_retriever("bm25", ds, show_progress=False)
    r.retrieve({"a": Query("a", "dogs"), "b": Query("b", "library"), "c": Query("c", "unicorn")}, 5)
    assert caplog.text == ""  # one of three: no warning
    r.retrieve({"a": Query("a", "собаки"), "b": Query("b", "библиотека"), "c": Query("c", "a ?"),
                "d": Query("d", "dogs")}, 5)
    assert "3 of 4 queries retrieved no document" in caplog.text
    assert "1 have no term" in caplog.text and "2 share no term with the corpus" in caplog.text
    assert "stemmer='english'" in caplog.text
    caplog.clear()
    r.retrieve({"a": Query("a", "собаки")}, 5)
    assert caplog.text == ""  # once per retriever


def test_marks_are_found_in_the_planes_scanned() -> None:
    from rerank.retrieval.analysis import mark_ranges

    assert mark_ranges() == mark_ranges(tuple(range((sys.maxunicode + 1) >> 16)))


def test_research_doc_lists_every_bm25_option() -> None:
    """docs/research.md's retriever options table documents each BM25Config key (none were documented but k1)."""
    import dataclasses

    from rerank.retrieval.bm25 import BM25Config

    doc = (Path(__file__).parent.parent / "docs" / "research.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if re.match(r"\| `\w+`.*\| bm25 \|", line)]
    assert {k for row in rows for k in re.findall(r"`(\w+)`", row.split("|")[1])} == {
        f.name for f in dataclasses.fields(BM25Config)}
    assert "stemmer=german stopwords=de" in doc and "multilingual" in doc


@pytest.mark.parametrize("text", ["´Hello´ world, the ¨umlaut¨ and ¸cedilla¸", "Windows™ and Service℠ marks",
                                  "1½ cups, ¼ inch, ⅓ of it", "ZÃ¼rcher Ã¤rger (mis-decoded UTF-8)"])
def test_symbols_nfkc_would_make_letters_stay_word_breaks(text: str) -> None:
    """A spacing accent became a combining mark that started the next word (``´hello``), ``Windows™`` became
    ``windowstm`` and ``1½`` became ``11`` (review s43/reviewG): these terms are bm25s' splitter's again."""
    from rerank.retrieval.analysis import words

    assert words(text) == BM25S_SPLIT(text.lower())
