"""Identifier schemes of listwise prompts and robust parsing of generated permutations.

Two schemes: ``numbers`` (``[1] > [2]``, RankGPT / RankZephyr) and ``letters`` (``[A] > [B]``, FIRST: each
identifier is one token). Parsing reads the model's final answer: the last line that forms a ranking (two ids joined
by ``>``), so a ranking quoted from a passage on an earlier line is not read (that counts as a repair). Without such a
line the ids are read from the whole text (a repair), if it names at least two distinct valid ids and does not refuse:
a lone id, as in a refusal ("I cannot rank these 5 passages."), is no ranking, nor is prose that says it cannot rank
("Sorry, I cannot rank [4] and [7]: they are empty"), nor an output that only lists passages, each line an id and
then text (``[2] BM25 is a ranking function``, next line ``[3] TF-IDF weighs terms``: an echo of the prompt), and the
output is a failure (the window keeps its input order). Unbracketed letters are identifiers only next to ``>`` or
``,`` (``C > A``, ``C, A``), so the words "I" and "A" are not. On a line that is a ranking by its bracketed ids
(``[2] > 4 > [1]``), an identifier written without brackets is read in its place when it is a whole item with ``>``
on at least one side, outside parentheses, valid and not written bracketed on that line; a number inside text, in
parentheses or in a comma list (``[1] > [2] (score 4)``, ``(scores 9, 7, 5)``, ``0,9``) is not. Otherwise ids the
model forgot are appended in their input order, duplicates and unknown ids are dropped, and every repair or failure
is reported so ``metrics.json`` can count them. :func:`permutation_grammar` is the answer format as a grammar, for
constrained decoding (then no repair is ever needed).

Reasoning (``<think>…</think>``; also ``<thinking>``, ``<reasoning>``, ``<reason>``; any case, spaces allowed inside
the brackets: ``<THINK>``, ``</think >``) is never read: only the text after the last closing tag is
(:func:`outside_reasoning`). An opening tag starts reasoning where it begins a line (a tag written inside a sentence,
``Passage [2] quotes the <think> tag.``, is a mention); a closing tag with no reasoning open is a mention, and
ignored, when a ranking line comes before it and none after it. A prompt that ends inside reasoning (a chat template
whose generation prompt opens ``<think>``, as QwQ's and DeepSeek-R1's do) makes the output start inside it
(``in_reasoning``): nothing before its closing tag is read. A reasoning block left open (a thinking model cut off by
the token limit, which listwise caps at one permutation's length) hides everything after its opening tag, so a guess
written inside it is not an answer: without a ranking before that tag the output is a failure (the window keeps its
input order), whatever finish reason the backend saw, so every backend behaves alike.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from rerank.backends.grammar import Grammar, Permutation
from rerank.errors import ConfigError

__all__ = [
    "SCHEMES",
    "ParsedPermutation",
    "Scheme",
    "format_permutation",
    "identifiers",
    "outside_reasoning",
    "parse_permutation",
    "permutation_grammar",
    "reasoning_left_open",
]

Scheme = Literal["numbers", "letters"]
SCHEMES: tuple[str, ...] = ("numbers", "letters")
_LETTERS = string.ascii_uppercase

#: prose that declines to rank (without a ranking line, its ids are not a ranking)
_REFUSAL = re.compile(r"\b(?:cannot|can ?not|can't|can’t|unable to|won't|won’t|will not|sorry|apologi[sz]e)\b",
                      re.IGNORECASE)
_BRACKETED = re.compile(r"\[\s*([A-Za-z]|\d+)\s*\]")
_BARE = {"numbers": re.compile(r"(?<![\w.])(\d+)(?![\w.])"), "letters": re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")}
#: the separators of a ranking line's items: ``>``, and a comma that is not between two digits (``0,9``, ``1,004``)
_SEPARATOR = re.compile(r">|(?<!\d),|,(?!\d)")
#: an identifier without brackets that is all of its item of a ranking line
_BARE_ITEM = {"numbers": re.compile(r"\s*(\d+)\s*"), "letters": re.compile(r"\s*([A-Z])\s*")}
_ECHO = ("no ranking: the output lists passages (an identifier, then text, on each line) and does not rank them; "
         "the window keeps its input order")
_SEPARATORS = (">", ",")  # a bare letter next to one of these is an identifier
#: the tags of a model's reasoning, whose text is never read as the answer
_REASONING_TAGS: tuple[str, ...] = ("think", "thinking", "reasoning", "reason")
#: an opening (group 1 empty) or closing (group 1 ``/``) reasoning tag, in any case, with spaces inside the brackets
_REASONING_TAG = re.compile(r"<\s*(/?)\s*(" + "|".join(_REASONING_TAGS) + r")\s*>", re.IGNORECASE)


def check_scheme(scheme: str, window: int | None = None) -> Scheme:
    """Validate a scheme name (and that ``window`` ids fit it: letters allow at most 26)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"identifier scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    if scheme == "letters" and window is not None and window > len(_LETTERS):
        raise ConfigError(f"window {window} is larger than the 26 identifiers of the 'letters' scheme")
    return scheme  # type: ignore[return-value]


def identifiers(scheme: str, n: int) -> list[str]:
    """The ``n`` identifiers of a scheme without brackets: ``1..n`` or ``A..``."""
    check_scheme(scheme, n)
    return [str(i + 1) for i in range(n)] if scheme == "numbers" else list(_LETTERS[:n])


def format_permutation(scheme: str, order: list[int]) -> str:
    """The canonical answer string, e.g. ``[2] > [1] > [3]``, for local indices ``order``."""
    ids = identifiers(scheme, len(order))
    return " > ".join(f"[{ids[i]}]" for i in order)


@dataclass
class ParsedPermutation:
    """A complete permutation of ``range(n)`` recovered from model text, with what had to be fixed."""

    order: list[int]
    failed: bool = False
    missing: int = 0
    duplicates: int = 0
    unknown: int = 0
    unbracketed: bool = False
    skipped_rankings: int = 0
    no_ranking_line: bool = False
    echo: bool = False
    bare_in_line: int = 0
    unclosed_reasoning: str = ""

    @property
    def repaired(self) -> bool:
        return not self.failed and bool(self.fixes)

    @property
    def fixes(self) -> list[str]:
        """What parsing had to do, in words (empty: the output was a clean permutation)."""
        if self.failed:
            if self.unclosed_reasoning:
                return [f"no ranking outside the reasoning: <{self.unclosed_reasoning}> was never closed (the output "
                        "ends inside the reasoning), which holds no answer; the window keeps its input order"]
            if self.echo:
                return [_ECHO]
            if self.missing < len(self.order):  # one valid id, outside any ranking line
                return ["no ranking: one valid identifier outside a ranking line; the window keeps its input order"]
            return ["no valid identifier: the window keeps its input order"]
        out = []
        if self.unclosed_reasoning:
            out.append(f"text after an unclosed <{self.unclosed_reasoning}> ignored")
        if self.no_ranking_line:
            out.append("no ranking line: identifiers read from the text")
        if self.skipped_rankings:
            out.append(f"{self.skipped_rankings} earlier ranking line(s) skipped, the last read")
        if self.unbracketed:
            out.append("identifiers read without brackets")
        if self.bare_in_line:
            out.append(f"{self.bare_in_line} identifier(s) written without brackets among bracketed ones read in "
                       "place")
        if self.duplicates:
            out.append(f"{self.duplicates} duplicate identifier(s) dropped")
        if self.unknown:
            out.append(f"{self.unknown} unknown identifier(s) dropped")
        if self.missing:
            out.append(f"{self.missing} missing identifier(s) appended in input order")
        return out


def _index(token: str, scheme: str, n: int) -> int | None:
    if scheme == "numbers":
        if not token.isdigit():
            return None
        i = int(token) - 1
    else:
        if len(token) != 1 or not token.isalpha():
            return None
        i = ord(token.upper()) - ord("A")
    return i if 0 <= i < n else None


def _bare(text: str, scheme: str) -> list[re.Match[str]]:
    """Unbracketed ids in ``text``; a letter only next to ``>`` or ``,`` (a lone capital in prose is a word)."""
    found = list(_BARE[scheme].finditer(text))
    if scheme == "letters":
        found = [m for m in found if text[: m.start()].rstrip()[-1:] in _SEPARATORS
                 or text[m.end() :].lstrip()[:1] in _SEPARATORS]
    return found


def _id_matches(text: str, scheme: str) -> tuple[list[re.Match[str]], bool]:
    """The ids written in ``text``: bracketed ones, else bare ones (then ``True``: unbracketed)."""
    found = list(_BRACKETED.finditer(text))
    if found:
        return found, False
    found = _bare(text, scheme)
    return found, bool(found)


def _tokens(text: str, scheme: str) -> tuple[list[str], bool]:
    """The ids written in ``text`` (:func:`_id_matches`), as strings."""
    found, unbracketed = _id_matches(text, scheme)
    return [m.group(1) for m in found], unbracketed


def _line_tokens(line: str, scheme: str, n: int) -> tuple[list[str], bool, int]:
    """The ids written on a ranking line, as strings: :func:`_tokens`, and where there are bracketed ids, also each
    bare one read in place (:func:`_bare_items`), with how many those were."""
    tokens, unbracketed = _tokens(line, scheme)
    if unbracketed or not tokens:
        return tokens, unbracketed, 0
    bracketed = [(m.start(), m.group(1)) for m in _BRACKETED.finditer(line)]
    bare = _bare_items(line, scheme, n, {_index(t, scheme, n) for _, t in bracketed})
    return [t for _, t in sorted(bracketed + bare)], False, len(bare)


def _bare_items(line: str, scheme: str, n: int, written: set[int | None]) -> list[tuple[int, str]]:
    """The bare ids of a line with bracketed ones that are read in place, with their positions: each a whole item
    between separators (``>``, or a ``,`` not between two digits) with ``>`` on at least one side, outside
    parentheses, and a valid id not already written on the line."""
    cuts = [(m.start(), m.group(0)) for m in _SEPARATOR.finditer(line)]
    bounds = [(-1, "")] + cuts + [(len(line), "")]
    found: list[tuple[int, str]] = []
    for (start, before), (end, after) in zip(bounds, bounds[1:]):
        bare = _BARE_ITEM[scheme].fullmatch(line, start + 1, end)
        if bare is None or ">" not in (before, after) or line.count("(", 0, end) > line.count(")", 0, end):
            continue
        i = _index(bare.group(1), scheme, n)
        if i is not None and i not in written:
            written.add(i)
            found.append((bare.start(1), bare.group(1)))
    return found


def _echoes(text: str, scheme: str) -> bool:
    """Whether ``text`` only lists passages: every id in it opens a line, at least two lines open with one, and text
    follows the id on at least one (``[2] BM25 is…\n[3] TF-IDF…``: the prompt's passages echoed, not ranked)."""
    found, _ = _id_matches(text, scheme)
    lines = {}
    for m in found:
        line_start = text.rfind("\n", 0, m.start()) + 1
        if text[line_start : m.start()].strip() or line_start in lines:
            return False
        line_end = text.find("\n", m.end())
        lines[line_start] = bool(text[m.end() : None if line_end < 0 else line_end].strip())
    return len(lines) >= 2 and any(lines.values())


def reasoning_left_open(text: str) -> str:
    """The reasoning tag ``text`` ends inside, lower-cased ('' if none): its last reasoning tag when that one opens
    (a chat template's generation prompt such as QwQ's ``<|im_start|>assistant\n<think>\n``)."""
    tags = list(_REASONING_TAG.finditer(text))
    return tags[-1].group(2).lower() if tags and not tags[-1].group(1) else ""


def _begins_line(text: str, pos: int) -> bool:
    """Whether only whitespace precedes ``pos`` on its line."""
    return not text[text.rfind("\n", 0, pos) + 1 : pos].strip()


def outside_reasoning(text: str, in_reasoning: str = "",
                      is_answer: Callable[[str], bool] | None = None) -> tuple[str, str]:
    """The part of ``text`` that can hold the answer, and the name of a reasoning tag left open ('' if none): the
    text after the last closing reasoning tag, cut at a reasoning tag opened after it and never closed.

    ``in_reasoning``: the tag the prompt left open, so ``text`` starts inside it. An opening tag counts where it
    begins a line (elsewhere it is a mention); inside reasoning only a closing tag counts. A closing tag with no
    reasoning open is a mention, and ignored, when a line ``is_answer`` holds comes before it and none after it."""
    has_answer = is_answer if is_answer is not None else (lambda line: False)

    def answers(part: str) -> bool:
        return any(has_answer(line) for line in part.splitlines())

    opened, opened_at, start = in_reasoning.lower(), 0, 0
    for tag in _REASONING_TAG.finditer(text):
        closing, name = bool(tag.group(1)), tag.group(2).lower()
        if closing and (opened or answers(text[tag.end() :]) or not answers(text[: tag.start()])):
            opened, start = "", tag.end()
        elif not closing and not opened and _begins_line(text, tag.start()):
            opened, opened_at = name, tag.start()
    if not opened:
        return text[start:], ""
    return text[start : max(start, opened_at)], opened


def _forms_ranking(line: str, n: int, scheme: str) -> bool:
    """Whether ``line`` is a ranking: at least two distinct valid ids joined by ``>`` (one id when ``n`` is 1)."""
    valid = {i for i in (_index(t, scheme, n) for t in _tokens(line, scheme)[0]) if i is not None}
    return len(valid) >= min(2, n) and (n == 1 or ">" in line)


def parse_permutation(text: str, n: int, scheme: str, in_reasoning: str = "") -> ParsedPermutation:
    """Parse ``text`` into a permutation of ``n`` local indices (input order for anything the model left out).

    The last line that forms a ranking is read (earlier ones are skipped and counted as a repair); without one the
    whole text is, as a repair, and needs as many distinct valid ids as a ranking line (two; one when ``n`` is 1),
    so a refusal naming one number is not taken for a ranking, and prose that says it cannot rank (``cannot``,
    ``unable to``, ``sorry``, …) is none either, whatever ids it names, nor an echo of the passages (every id opens a
    line, text after it). Bracketed ids (``[3]``, ``[C]``) are read first; if there are none, bare ids (``3 > 1``,
    ``C > A``; a letter only next to ``>`` or ``,``) are read and the output counts as repaired. On a line that is
    a ranking by its bracketed ids, a bare id that is a whole item next to ``>``, outside parentheses
    (``[2] > 4 > [1]``), is read in its place, as a repair (:func:`_bare_items`). Too few valid ids is a failure (the
    window keeps its input order). Only the text outside reasoning is read (:func:`outside_reasoning`): a ranking
    inside ``<think>…</think>``, or after a ``<think>`` never closed, is not the answer; ``in_reasoning`` names the
    reasoning tag the prompt left open (:func:`reasoning_left_open`), so ``text`` starts inside it.
    """
    check_scheme(scheme)
    text, unclosed = outside_reasoning(text, in_reasoning, lambda line: _forms_ranking(line, n, scheme))
    rankings = [line for line in text.splitlines() if _forms_ranking(line, n, scheme)]
    tokens, unbracketed, bare = _line_tokens(rankings[-1], scheme, n) if rankings else (*_tokens(text, scheme), 0)
    no_line = not rankings
    seen: set[int] = set()
    order: list[int] = []
    duplicates = unknown = 0
    for tok in tokens:
        i = _index(tok, scheme, n)
        if i is None:
            unknown += 1
        elif i in seen:
            duplicates += 1
        else:
            seen.add(i)
            order.append(i)
    echo = no_line and n > 1 and _echoes(text, scheme)
    if not order or len(order) < min(2, n) or (no_line and n > 1 and _REFUSAL.search(text)) or echo:
        return ParsedPermutation(list(range(n)), failed=True, missing=n - len(order), unknown=unknown,
                                 no_ranking_line=no_line, echo=echo, unclosed_reasoning=unclosed)
    missing = [i for i in range(n) if i not in seen]
    return ParsedPermutation(order + missing, False, len(missing), duplicates, unknown, unbracketed,
                             max(0, len(rankings) - 1), no_line, bare_in_line=bare, unclosed_reasoning=unclosed)


def permutation_grammar(scheme: str, n: int, prefix: str = "") -> Grammar:
    """The answer language of a window of ``n``: every identifier exactly once, bracketed, joined by `` > `` (what
    :func:`format_permutation` writes), after the prompt's ``prefix``."""
    return Grammar((Permutation(tuple(f"[{i}]" for i in identifiers(scheme, n)), " > "),), prefix)
