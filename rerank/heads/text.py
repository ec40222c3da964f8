"""User text as data: special-token strings neutralised, token spans, and long documents cut into passages.

A query or document may contain the tokenizer's special-token strings (``<|im_end|>``, ``[SEP]``, …); tokenised
as they stand they become real control tokens and can close the user turn or forge an assistant answer. Every head
passes user text through :func:`neutralise` before rendering, so the rendered prompt *text* holds no special string
the user wrote: that covers every backend (token ids from the local tokenizer, or text sent to a server that
tokenises it) and the training tasks, which render with the heads. Markup-like added tokens that are not flagged
special (``<think>``, ``</answer>``, ``<tool_call>``: ``<…>`` or ``[…]`` without spaces) are treated the same
way, so a document cannot write the answer tags a head's template and parser use as the model's own tokens. A string is
defanged by a space after its first character (``<|im_end|>`` -> ``< |im_end|>``), which keeps it readable and makes
it ordinary text.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["defang", "neutralise", "passage_windows", "special_strings", "token_spans"]

_WORD = re.compile(r"\S+")
_MARKUP = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")
_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple[str, ...], re.Pattern[str] | None]] = weakref.WeakKeyDictionary()


def special_strings(tokenizer: Any) -> tuple[str, ...]:
    """The strings :func:`neutralise` defangs: the tokenizer's special tokens (``all_special_tokens``, added tokens
    flagged special) and its markup-like added tokens, longest first."""
    found = {str(t) for t in getattr(tokenizer, "all_special_tokens", ()) or ()}
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        content = str(getattr(tok, "content", tok))
        if getattr(tok, "special", False) or _MARKUP.fullmatch(content):
            found.add(content)
    return tuple(sorted((s for s in found if s), key=lambda s: (-len(s), s)))


def _pattern(tokenizer: Any) -> re.Pattern[str] | None:
    try:
        cached = _CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable: compute every time
        cached = None
    if cached is None:
        strings = special_strings(tokenizer)
        cached = (strings, re.compile("|".join(map(re.escape, strings))) if strings else None)
        try:
            _CACHE[tokenizer] = cached
        except TypeError:
            pass
    return cached[1]


def _defang(match: re.Match[str]) -> str:
    s = match.group(0)
    return f"{s[0]} {s[1:]}"


def neutralise(text: str, tokenizer: Any) -> str:
    """``text`` with every special-token string of ``tokenizer`` defanged (:func:`defang`)."""
    return defang(text, _pattern(tokenizer))


def defang(text: str, pattern: re.Pattern[str] | None) -> str:
    """``text`` with every match of ``pattern`` defanged (a space after its first character), repeated until none is
    left (defanging one string cannot hide another for long; after 8 passes any rest is deleted)."""
    if pattern is None:
        return text
    for _ in range(8):
        if pattern.search(text) is None:
            return text
        text = pattern.sub(_defang, text)
    while pattern.search(text) is not None:
        text = pattern.sub("", text)
    return text


def token_spans(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """Character spans of ``text``'s tokens under a fast tokenizer (offsets), else of its whitespace words."""
    if tokenizer is not None and getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(int(a), int(b)) for a, b in enc["offset_mapping"] if b > a]
    return [m.span() for m in _WORD.finditer(text)]


def passage_windows(spans: Sequence[tuple[int, int]], size: int, stride: int) -> list[tuple[int, int]]:
    """Character spans of overlapping windows of ``size`` tokens starting every ``stride`` tokens, up to the window
    that reaches the last token (a text of at most ``size`` tokens is one window; no tokens, one empty window)."""
    if not spans:
        return [(0, 0)]
    out = []
    for start in range(0, len(spans), stride):
        end = min(start + size, len(spans))
        out.append((spans[start][0], spans[end - 1][1]))
        if end == len(spans):
            break
    return out
