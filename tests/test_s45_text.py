"""``rerank.utils.text``: a very long text is tokenised only as far as a token budget reaches, with the same tokens
as the whole text's within that budget; readable-text detection as the server uses it."""

from __future__ import annotations

import random

import pytest

from rerank.utils.text import cut_to_tokens, has_readable_text


class _Counting:
    """A whitespace tokenizer that records how many characters it was given."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def encode(self, text: str, add_special_tokens: bool = False, verbose: bool = True) -> list[int]:
        self.seen.append(len(text))
        return [hash(w) % 1000 for w in text.split()]


def test_a_long_text_is_cut_to_a_piece_with_the_same_first_tokens() -> None:
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randrange(1, 12))) for _ in range(40_000)]
    text = " ".join(words)
    tok = _Counting()
    piece = cut_to_tokens(text, tok, 512)
    assert len(piece) < len(text) // 20 and max(tok.seen) < len(text) // 20  # the whole text was never tokenised
    assert tok.encode(piece)[:512] == tok.encode(text)[:512]
    tail = cut_to_tokens(text, tok, 512, side="left")
    assert text.endswith(tail) and tok.encode(tail)[-512:] == tok.encode(text)[-512:]


def test_a_text_with_few_tokens_per_character_is_kept_whole() -> None:
    text = "word " + " " * 200_000 + "end"  # a run of spaces holds no token: no cut may drop the last word
    assert cut_to_tokens(text, _Counting(), 64) == text
    assert cut_to_tokens("short text", _Counting(), 64) == "short text"


@pytest.mark.parametrize(("text", "readable"), [("\u200b\ufeff\u00ad\x00", False), (" \t\n", False),
                                                ("\u200ba", True), ("日本", True), ("🙂", True)])
def test_readable_text(text: str, readable: bool) -> None:
    assert has_readable_text(text) is readable


class _WordPieceLike:
    """A word over 100 characters is one unknown token, a shorter one a token per 4 characters (as WordPiece reads a
    hash or base64 run): cut in two, a long word gives dozens of tokens instead of one."""

    def encode(self, text: str, add_special_tokens: bool = False, verbose: bool = True) -> list[int]:
        ids: list[int] = []
        for w in text.split():
            ids += [0] if len(w) > 100 else [hash(w[i:i + 4]) % 997 + 1 for i in range(0, len(w), 4)]
        return ids


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_piece_ends_at_whitespace_so_no_long_word_is_split(side: str) -> None:
    text = " ".join(["x" * 150] + ["ab"] * 3) * 4000  # every edge of a fixed-size piece can fall inside a long word
    tok = _WordPieceLike()
    for budget in range(20, 400, 7):
        piece = cut_to_tokens(text, tok, budget, side=side, margin=1)
        assert len(piece) < len(text)
        whole, cut = tok.encode(text), tok.encode(piece)
        assert (cut[:budget] == whole[:budget]) if side == "right" else (cut[-budget:] == whole[-budget:])
