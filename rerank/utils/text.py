"""Text helpers shared by the heads, the file readers and the server: whether a text has anything a model reads, and
the part of a very long text that a token budget can reach (so a 200k-character document is not tokenised whole to
keep its first 512 tokens)."""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["cut_to_tokens", "has_readable_text", "unread_characters", "unreadable_query"]

#: Unicode categories no model reads: controls (NUL, tabs), format characters (zero-width spaces and joiners, the
#: byte-order mark, the soft hyphen, direction marks) and separators (spaces, line and paragraph separators)
UNREAD_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def has_readable_text(text: str) -> bool:
    """Whether ``text`` has a character a model reads: one that is not a control, format or separator character."""
    return any(unicodedata.category(ch) not in UNREAD_CATEGORIES for ch in text)


def unreadable_query(text: str) -> str | None:
    """Why a query ``text`` cannot rank anything (``"is empty"``, or ``"has only characters no model reads (U+200B,
    ...)"``), or None when it has a readable character: a query of zero-width spaces or NULs would rank documents by
    nothing but their own text."""
    if not text.strip():
        return "is empty"
    if has_readable_text(text):
        return None
    return f"has only characters no model reads ({unread_characters(text)})"


def unread_characters(text: str) -> str:
    """The first five distinct characters of ``text`` other than whitespace, as code points (``U+200B, U+0000``): how
    an error shows a text made of characters no model reads."""
    return ", ".join(list(dict.fromkeys(f"U+{ord(ch):04X}" for ch in text if not ch.isspace()))[:5])


def cut_to_tokens(text: str, tokenizer: Any, budget: int, *, side: str = "right", margin: int = 128) -> str:
    """A part of ``text`` (its start, or its end with ``side="left"``) whose tokens hold the same first (last)
    ``budget`` tokens as the whole text's, so truncating it to ``budget`` tokens gives what truncating the whole text
    would: the piece ends at whitespace where there is some near its edge (a word cut in two may tokenise to many
    pieces: WordPiece reads a 100-character word as one unknown token, its 90-character half as dozens, which the
    ``margin`` covers), and it is grown (x4) until it holds ``budget + margin`` tokens of ``tokenizer`` (its
    ``encode``, without transformers' warning about a text longer than the model reads); the whole text is returned
    when it never does. Only the piece is tokenised, never the whole."""
    if budget <= 0 or len(text) <= 8 * (budget + margin):
        return text
    size = 8 * (budget + margin)
    while size < len(text):
        piece = _at_whitespace(text[:size] if side == "right" else text[-size:], side)
        if len(tokenizer.encode(piece, add_special_tokens=False, verbose=False)) >= budget + margin:
            return piece
        size *= 4
    return text


def _at_whitespace(piece: str, side: str, reach: int = 256) -> str:
    """``piece`` cut back to its last (``side="left"``: from its first) whitespace within ``reach`` characters of the
    edge where the whole text goes on, so no word is split; as it is when there is none there."""
    if side == "right":
        at = max(piece.rfind(" ", len(piece) - reach), piece.rfind("\n", len(piece) - reach))
        return piece[:at] if at > 0 else piece
    ends = [i for i in (piece.find(" ", 0, reach), piece.find("\n", 0, reach)) if i >= 0]
    return piece[min(ends) + 1:] if ends else piece
