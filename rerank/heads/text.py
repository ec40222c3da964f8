"""User text as data: special-token strings and turn markers neutralised, token spans, long documents cut into passages.

A query or document may contain the tokenizer's special-token strings (``<|im_end|>``, ``[SEP]``, …); tokenised
as they stand they become real control tokens and can close the user turn or forge an assistant answer. Every head
passes user text through :func:`neutralise` before rendering, so the rendered prompt *text* holds no special string
the user wrote: that covers every backend (token ids from the local tokenizer, or text sent to a server that
tokenises it) and the training tasks, which render with the heads. Markup-like added tokens that are not flagged
special (``<think>``, ``</answer>``, ``<tool_call>``: ``<…>`` or ``[…]`` without spaces) are treated the same
way, so a document cannot write the answer tags a head's template and parser use as the model's own tokens. So are a
chat template's plain-text turn markers (:func:`template_markers`: Llama-2's ``[INST]`` / ``[/INST]``, Zephyr's
``<|user|>`` / ``<|assistant|>`` when they are not special tokens), so user text never holds the text, and so never
the token ids, of a marker the template writes. A string is defanged by a space after its first character
(``<|im_end|>`` -> ``< |im_end|>``, ``[/INST]`` -> ``[ /INST]``), which keeps it readable and makes it ordinary text.
A model's own output fed back to it (ERank's reasoning) has only its special-token strings defanged
(:func:`neutralise_control`): a decode that skips special tokens never writes them, so there they were spelled out.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["control_strings", "defang", "neutralise", "neutralise_control", "passage_windows", "special_strings",
           "template_markers", "token_spans"]

_WORD = re.compile(r"\S+")
_MARKUP = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")
_PLAIN_WORD = re.compile(r"\w+")
_SENTINEL = "RERANKSENTINEL{}X"
#: conversations rendered to find the markers: with a system turn, and without (templates that refuse one)
_CONVERSATIONS = (("system", "user", "assistant", "user"), ("user", "assistant", "user"))
_Cached = tuple[str | None, tuple[str, ...], re.Pattern[str] | None]
_CACHE: weakref.WeakKeyDictionary[Any, _Cached] = weakref.WeakKeyDictionary()
_CONTROL: weakref.WeakKeyDictionary[Any, re.Pattern[str] | None] = weakref.WeakKeyDictionary()


def control_strings(tokenizer: Any) -> tuple[str, ...]:
    """The tokenizer's special tokens only (``all_special_tokens``, added tokens flagged special), longest first: the
    strings a decode that skips special tokens never writes, so in a model's decoded output they were spelled out."""
    found = {str(t) for t in getattr(tokenizer, "all_special_tokens", ()) or ()}
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            found.add(str(getattr(tok, "content", tok)))
    return tuple(sorted((s for s in found if s), key=lambda s: (-len(s), s)))


def _token_strings(tokenizer: Any) -> set[str]:
    """The tokenizer's special tokens (:func:`control_strings`) and its markup-like added tokens."""
    found = set(control_strings(tokenizer))
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        content = str(getattr(tok, "content", tok))
        if content and _MARKUP.fullmatch(content):
            found.add(content)
    return found


def template_markers(tokenizer: Any) -> tuple[str, ...]:
    """The plain-text turn markers of ``tokenizer``'s chat template: it is rendered with sentinel messages, and of the
    literal text between (and around) them, with the tokenizer's special-token strings taken out, the first and the
    last whitespace-free piece of each stretch that is not a plain word (``[INST]``, ``[/INST]``, ``<</SYS>>``,
    ``<|assistant|>``; ChatML's ``user`` after ``<|im_start|>`` is a word, harmless without the special token), and
    the markup-like start or end of such a piece (``<start_of_turn>`` of ``<start_of_turn>user``). No chat template,
    or one that renders none of the sentinel conversations: none."""
    apply = getattr(tokenizer, "apply_chat_template", None)
    if apply is None or not getattr(tokenizer, "chat_template", None):
        return ()
    specials = sorted(_token_strings(tokenizer), key=len, reverse=True)
    special = re.compile("|".join(map(re.escape, specials))) if specials else None
    for roles in _CONVERSATIONS:
        sentinels = [_SENTINEL.format(i) for i in range(len(roles))]
        try:
            text = apply([{"role": r, "content": s} for r, s in zip(roles, sentinels, strict=True)],
                         tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001, S112 - a template that refuses this conversation: try the next
            continue
        if not isinstance(text, str) or not any(s in text for s in sentinels):
            continue
        stretches = re.split("|".join(map(re.escape, sentinels)), text)
        found: set[str] = set()
        for stretch in stretches:
            pieces = (special.sub(" ", stretch) if special is not None else stretch).split()
            for piece in pieces[:1] + pieces[-1:]:
                if len(piece) > 1 and not _PLAIN_WORD.fullmatch(piece):
                    found.add(piece)
                    found.update(m.group(0) for m in _MARKUP.finditer(piece)  # ``<start_of_turn>``user too
                                 if m.group(0) != piece and (m.start() == 0 or m.end() == len(piece)))
        return tuple(sorted(found, key=lambda s: (-len(s), s)))
    return ()


def special_strings(tokenizer: Any) -> tuple[str, ...]:
    """The strings :func:`neutralise` defangs: the tokenizer's special tokens (``all_special_tokens``, added tokens
    flagged special), its markup-like added tokens and its chat template's plain-text turn markers
    (:func:`template_markers`), longest first."""
    found = _token_strings(tokenizer) | set(template_markers(tokenizer))
    return tuple(sorted(found, key=lambda s: (-len(s), s)))


def neutralise_control(text: str, tokenizer: Any) -> str:
    """``text`` with the tokenizer's special-token strings (:func:`control_strings`) defanged, and nothing else: for
    a model's own output fed back to it, whose other added tokens (``<answer>``) and plain text are what it wrote."""
    try:
        pattern = _CONTROL[tokenizer]
    except (KeyError, TypeError):  # not cached yet, or not weak-referenceable (then computed every time)
        strings = control_strings(tokenizer)
        pattern = re.compile("|".join(map(re.escape, strings))) if strings else None
        try:
            _CONTROL[tokenizer] = pattern
        except TypeError:
            pass
    return defang(text, pattern)


def _pattern(tokenizer: Any) -> re.Pattern[str] | None:
    template = getattr(tokenizer, "chat_template", None)
    key = template if isinstance(template, str) else repr(template)  # a changed template has other markers
    try:
        cached = _CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable: compute every time
        cached = None
    if cached is None or cached[0] != key:
        strings = special_strings(tokenizer)
        cached = (key, strings, re.compile("|".join(map(re.escape, strings))) if strings else None)
        try:
            _CACHE[tokenizer] = cached
        except TypeError:
            pass
    return cached[2]


def _defang(match: re.Match[str]) -> str:
    s = match.group(0)
    return f"{s[0]} {s[1:]}"


def neutralise(text: str, tokenizer: Any) -> str:
    """``text`` with every special-token string and chat-template turn marker of ``tokenizer``
    (:func:`special_strings`) defanged (:func:`defang`)."""
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
