"""BM25's text analysis: Unicode normalisation, words that keep their combining marks, CJK character n-grams.

:func:`words` turns a text into the terms BM25 indexes (before stopwords and the stemmer), the same way for documents
and queries:

1. Invisible format characters are removed (soft hyphen, zero-width joiner and non-joiner, word joiner, byte order
   mark, bidi controls, variation selectors: Unicode's Default_Ignorable_Code_Point); a zero-width space is a word
   break.
2. NFKC normalisation, except that ``™`` and ``℠`` stay word breaks and vulgar fractions (``½``, also met in
   mis-decoded text: ``Ã¼``) stay word characters, as they were to bm25s' splitter (NFKC would glue ``tm`` or
   ``1⁄2`` to the word): NFD text is composed (``Mu`` + U+0308 + ``ller`` is ``Müller``), full-width and half-width
   forms, ligatures and presentation forms become their plain characters (``ＡＰＰＬＥ`` is ``APPLE``, ``ﾗｰﾒﾝ`` is
   ``ラーメン``, ``ﬁ`` is ``fi``).
3. Arabic harakat and tatweel, Hebrew niqqud and cantillation are removed: these vowel points are optional in
   writing, so a pointed and an unpointed spelling of a word become the same term (as Lucene's Arabic normaliser
   does).
4. Lowercasing, then words: a word character (Python's ``\\w``) followed by word characters and combining marks
   (Unicode categories Mn, Mc, Me), so Devanagari or Tamil vowel signs stay inside their word and a spacing accent
   (``´``, which NFKC makes a space and a combining mark) does not start one; a word must have two or more
   characters.
5. Within a word, each run of Han, Hiragana, Katakana or Hangul characters gives its characters and its overlapping
   character bigrams (``東京都`` gives ``東``, ``東京``, ``京``, ``京都``, ``都``), as Lucene's CJKAnalyzer
   with unigrams: a bigram matches a two-character word, a unigram a one-character word such as ``猫``. The rest of
   the word is a word of its own (``iPhone手机`` gives ``iphone``, ``手``, ``手机``, ``机``).

ASCII text skips steps 1-3 and 5, which cannot change it: its terms are those of bm25s' default splitter
``(?u)\\b\\w\\w+\\b`` on the lowercased text, as are those of any text without such characters.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import NamedTuple

__all__ = ["ANALYZER_VERSION", "words"]

# Bump when ``words`` gives other terms for some text: it keys the BM25 index cache.
ANALYZER_VERSION = 2

_ASCII_WORDS = re.compile(r"(?u)\b\w\w+\b").findall  # bm25s' default splitter
#: word breaks: the zero-width space, and the symbols NFKC would make letters of (™ ℠)
_BREAKS = re.compile("[\u200b\u2120\u2122]")
#: vulgar fractions, which NFKC would split into digits and a fraction slash: kept as they are (word characters)
_FRACTIONS = re.compile("([\u00bc-\u00be\u2150-\u215f\u2189]+)")

# Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties.txt), removed; ZERO WIDTH SPACE breaks words instead.
_IGNORABLE = ("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200c-\u200f\u202a-\u202e\u2060-\u206f"
              "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U000e0000-\U000e0fff")
# Arabic harakat, Quranic annotation marks and tatweel; Hebrew cantillation and niqqud.
_POINTING = ("\u0640\u064b-\u0652\u0656-\u065f\u0670\u06d6-\u06dc\u06df-\u06e4\u06e7\u06e8\u06ea-\u06ed"
             "\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7")
# Han (with the ideographic iteration marks and numerals), Hiragana, Katakana, Hangul; only their word characters
# reach the match, as it runs inside words.
_CJK_BMP = ("\u1100-\u11ff\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3031-\u3035\u3038-\u303c\u3040-\u30ff"
            "\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
            "\uff66-\uffdc")
_CJK_ASTRAL = "\U0001aff0-\U0001b16f\U00020000-\U0003ffff"
# The planes that hold combining marks: the roadmap gives planes 2-3 to ideographs alone, 4-13 are unassigned and
# 15-16 private use (a test checks this against every plane).
_MARK_PLANES = (0, 1, 14)


class _Patterns(NamedTuple):
    """The compiled patterns. A class holding characters past U+FFFF is matched range by range, one holding only
    characters of the Basic Multilingual Plane through a table, so text without such characters uses ``*_bmp``."""

    ignorable: re.Pattern[str]
    pointing: re.Pattern[str]
    astral: re.Pattern[str]
    word_bmp: re.Pattern[str]
    word: re.Pattern[str]
    cjk_bmp: re.Pattern[str]
    cjk: re.Pattern[str]


@functools.lru_cache(maxsize=1)
def _patterns() -> _Patterns:
    """The patterns, built once per process (words are runs of ``\\w`` and combining marks)."""
    ranges = mark_ranges()
    bmp = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges if b <= 0xFFFF)
    astral = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges if b > 0xFFFF)
    return _Patterns(
        ignorable=re.compile(f"[{_IGNORABLE}]"), pointing=re.compile(f"[{_POINTING}]"),
        astral=re.compile("[\U00010000-\U0010ffff]"), word_bmp=re.compile(rf"\w[\w{bmp}]*"),
        word=re.compile(rf"\w[\w{bmp}{astral}]*"), cjk_bmp=re.compile(f"[{_CJK_BMP}]+"),
        cjk=re.compile(f"[{_CJK_BMP}{_CJK_ASTRAL}]+"),
    )


def mark_ranges(planes: tuple[int, ...] = _MARK_PLANES) -> list[tuple[int, int]]:
    """The inclusive code point ranges of Unicode's combining marks (categories Mn, Mc, Me) in ``planes``."""
    ranges: list[tuple[int, int]] = []
    for plane in planes:
        for cp in range(plane << 16, (plane + 1) << 16):
            if unicodedata.category(chr(cp)) in ("Mn", "Mc", "Me"):
                if ranges and ranges[-1][1] == cp - 1:
                    ranges[-1] = (ranges[-1][0], cp)
                else:
                    ranges.append((cp, cp))
    return ranges


def words(text: str) -> list[str]:
    """The BM25 terms of ``text`` before stopwords and stemming (the module docstring gives the rules)."""
    if text.isascii():
        return _ASCII_WORDS(text.lower())
    p = _patterns()
    text = p.ignorable.sub("", _BREAKS.sub(" ", text))
    pieces = _FRACTIONS.split(text)  # the fractions at odd positions
    text = "".join(x if i % 2 else unicodedata.normalize("NFKC", x) for i, x in enumerate(pieces))
    text = p.pointing.sub("", text).lower()
    bmp = p.astral.search(text) is None
    runs = (p.word_bmp if bmp else p.word).findall(text)
    cjk = p.cjk_bmp if bmp else p.cjk
    if not cjk.search(text):
        return [w for w in runs if len(w) > 1]
    out: list[str] = []
    for run in runs:
        pos = 0
        for m in cjk.finditer(run):
            if m.start() - pos > 1:
                out.append(run[pos:m.start()])
            seg = m.group()
            for i in range(len(seg) - 1):
                out += (seg[i], seg[i:i + 2])
            out.append(seg[-1])
            pos = m.end()
        if len(run) - pos > 1:
            out.append(run[pos:])
    return out
