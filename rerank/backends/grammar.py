"""Constrained decoding: the answer format a head expects as a small grammar, enforced token by token.

A head describes its answer as a :class:`Grammar`: a sequence of segments, each one of

- :class:`Exact` text (tags, separators),
- :class:`OneOf` a few strings (the integers 0-10),
- :class:`Permutation` of items, each exactly once, joined by a separator (``[2] > [1] > [3]``),
- :class:`FreeText` up to an end delimiter, never containing given strings (a ``<reason>`` block).

A grammar is plain data (frozen dataclasses; :meth:`Grammar.to_dict` is its JSON form, part of the LLM cache key and
what the vLLM engine receives). :meth:`Grammar.matches` checks a text against it character by character (a
non-deterministic automaton over segment positions).

:class:`TokenAutomaton` lifts the grammar to a tokenizer: the vocabulary's token strings form a trie, and the tokens
allowed in a state are found by walking the trie and the character automaton together (computed once per state).
Every state has a cost: an upper bound on the tokens still needed to finish (the fewest tokens that spell the rest of
each segment, found by dynamic programming over the vocabulary), with the property that some allowed token lowers it
by one. A token is allowed only if its successor's cost fits the tokens left (``max_new_tokens`` minus those
generated), so every constrained generation ends complete within its budget: free text is closed in time, and end of
sequence is allowed exactly in accepting states. :class:`ConstrainedDecoding` follows one sequence; the
transformers backend wraps it in a ``LogitsProcessor`` and the vLLM backend in a vLLM logits processor
(:mod:`rerank.backends.vllm_grammar`), so both enforce the same language.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np

__all__ = [
    "EXTRA_KEY",
    "ConstrainedDecoding",
    "Exact",
    "FreeText",
    "Grammar",
    "OneOf",
    "Permutation",
    "TokenAutomaton",
    "Vocabulary",
    "check_budget",
    "compile_grammar",
    "eos_token_ids",
    "vocabulary",
]

EXTRA_KEY = "rerank_grammar"
"""The key of a constrained request's grammar in vLLM's ``SamplingParams.extra_args``."""

_DONE = "\x00done"  # FreeText's local state once its end delimiter is written


@dataclass(frozen=True)
class Exact:
    """Exactly ``text``."""

    text: str
    kind: ClassVar[str] = "exact"

    def start(self) -> Any:
        return 0

    def step(self, k: int, c: str) -> list[Any]:
        return [k + 1] if k < len(self.text) and self.text[k] == c else []

    def complete(self, k: int) -> bool:
        return k == len(self.text)

    def can_continue(self, k: int) -> bool:
        return k < len(self.text)

    def cost(self, k: int, mt: Any) -> float:
        return mt(self.text[k:])


@dataclass(frozen=True)
class OneOf:
    """One of ``options`` (an empty option makes the segment optional)."""

    options: tuple[str, ...]
    kind: ClassVar[str] = "one_of"

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError("OneOf needs at least one option")

    def start(self) -> Any:
        return ""

    def step(self, s: str, c: str) -> list[Any]:
        t = s + c
        return [t] if any(o.startswith(t) for o in self.options) else []

    def complete(self, s: str) -> bool:
        return s in self.options

    def can_continue(self, s: str) -> bool:
        return any(len(o) > len(s) and o.startswith(s) for o in self.options)

    def cost(self, s: str, mt: Any) -> float:
        return min(mt(o[len(s) :]) for o in self.options if o.startswith(s))


@dataclass(frozen=True)
class Permutation:
    """Every item exactly once, in any order, joined by ``separator``. Local state: (items written, item being
    written or -1, characters of it written); the separator is written as part of every item after the first."""

    items: tuple[str, ...]
    separator: str
    kind: ClassVar[str] = "permutation"

    def __post_init__(self) -> None:
        if not self.items or len(set(self.items)) != len(self.items) or not all(self.items):
            raise ValueError("Permutation needs distinct, non-empty items")

    def _piece(self, used: frozenset[int], j: int) -> str:
        return (self.separator if used else "") + self.items[j]

    def start(self) -> Any:
        return (frozenset(), -1, 0)

    def _advance(self, used: frozenset[int], j: int, k: int) -> Any:
        return (used | {j}, -1, 0) if k == len(self._piece(used, j)) else (used, j, k)

    def step(self, local: Any, c: str) -> list[Any]:
        used, j, k = local
        if j >= 0:
            return [self._advance(used, j, k + 1)] if self._piece(used, j)[k] == c else []
        return [self._advance(used, i, 1) for i in range(len(self.items))
                if i not in used and self._piece(used, i)[0] == c]

    def complete(self, local: Any) -> bool:
        return local[1] < 0 and len(local[0]) == len(self.items)

    def can_continue(self, local: Any) -> bool:
        return not self.complete(local)

    def cost(self, local: Any, mt: Any) -> float:
        """Tokens to spell the rest with the remaining items in index order (one completion, so an upper bound; the
        first token of its spelling leads to a state whose own such completion is the rest of it)."""
        used, j, k = local
        text = self._piece(used, j)[k:] if j >= 0 else ""
        done = used | {j} if j >= 0 else used
        rest = [i for i in range(len(self.items)) if i not in done]
        text += "".join((self.separator if done or n else "") + self.items[i] for n, i in enumerate(rest))
        return mt(text)


@dataclass(frozen=True)
class FreeText:
    """Any text up to and including ``end``, never containing a string of ``forbid``. Local state: the longest
    suffix of the text so far that begins ``end`` or a forbidden string (an Aho-Corasick state)."""

    end: str
    forbid: tuple[str, ...] = ()
    kind: ClassVar[str] = "free_text"

    def __post_init__(self) -> None:
        if not self.end or not all(self.forbid) or any(f in self.end for f in self.forbid):
            raise ValueError("FreeText needs a non-empty end that contains no forbidden string")

    def start(self) -> Any:
        return ""

    def step(self, s: str, c: str) -> list[Any]:
        if s == _DONE:
            return []
        t = s + c
        if t.endswith(self.end):
            return [_DONE]
        if any(t.endswith(f) for f in self.forbid):
            return []
        patterns = (self.end, *self.forbid)
        while t and not any(p.startswith(t) for p in patterns):
            t = t[1:]
        return [t]

    def complete(self, s: str) -> bool:
        return s == _DONE

    def can_continue(self, s: str) -> bool:
        return s != _DONE

    def cost(self, s: str, mt: Any) -> float:
        if s == _DONE:
            return 0
        p = next((s[i:] for i in range(len(s) + 1) if self.end.startswith(s[i:])), "")
        return mt(self.end[len(p) :])


Segment = Union[Exact, OneOf, Permutation, FreeText]
_KINDS: dict[str, type] = {cls.kind: cls for cls in (Exact, OneOf, Permutation, FreeText)}
State = frozenset  # of (segment index, local state); index len(segments) = accepted
_ACCEPT_LOCAL = None


@dataclass(frozen=True)
class Grammar:
    """The answer language: ``segments`` in order. ``prefix`` is text the prompt already ends with (a template's
    assistant prefix), read before the first generated token."""

    segments: tuple[Segment, ...]
    prefix: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"prefix": …, "segments": [{"kind": …, …}]}`` (lists for tuples)."""
        segs = []
        for s in self.segments:
            d: dict[str, Any] = {"kind": s.kind}
            for name, value in vars(s).items():
                d[name] = list(value) if isinstance(value, tuple) else value
            segs.append(d)
        return {"prefix": self.prefix, "segments": segs}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grammar:
        """Inverse of :meth:`to_dict`."""
        segs = []
        for d in data["segments"]:
            kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "kind"}
            segs.append(_KINDS[d["kind"]](**kw))
        return cls(tuple(segs), str(data.get("prefix", "")))

    # -- the character automaton -------------------------------------------------------------------------------

    def closure(self, positions: Iterable[tuple[int, Any]]) -> State:
        """Positions plus those reached through completed segments (a completed segment that can go on stays)."""
        n = len(self.segments)
        out: set[tuple[int, Any]] = set()
        stack = list(positions)
        while stack:
            i, local = stack.pop()
            if i == n:
                out.add((n, _ACCEPT_LOCAL))
                continue
            seg = self.segments[i]
            if seg.complete(local):
                stack.append((i + 1, self.segments[i + 1].start() if i + 1 < n else _ACCEPT_LOCAL))
                if seg.can_continue(local):
                    out.add((i, local))
            else:
                out.add((i, local))
        return frozenset(out)

    def start(self) -> State | None:
        """The state after :attr:`prefix` (None: the prefix is not a beginning of the language)."""
        state: State | None = self.closure([(0, self.segments[0].start())] if self.segments else [(0, None)])
        for c in self.prefix:
            if state is None:
                return None
            state = self.step(state, c)
        return state

    def step(self, state: State, c: str) -> State | None:
        """The state after character ``c`` (None: ``c`` leaves the language)."""
        n = len(self.segments)
        nxt = [(i, loc) for i, local in state if i < n for loc in self.segments[i].step(local, c)]
        return self.closure(nxt) if nxt else None

    def accepting(self, state: State) -> bool:
        return any(i == len(self.segments) for i, _ in state)

    def matches(self, text: str) -> bool:
        """Whether :attr:`prefix` + ``text`` is a complete answer of the language."""
        state = self.start()
        for c in text:
            if state is None:
                return False
            state = self.step(state, c)
        return state is not None and self.accepting(state)


# -- the vocabulary -----------------------------------------------------------------------------------------------


class _Node:
    __slots__ = ("children", "ids")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.ids: list[int] = []


@dataclass
class Vocabulary:
    """What each token id writes (None: never generated under a grammar: special, empty or not decodable alone),
    as a trie of token strings."""

    strings: list[str | None]
    root: _Node

    @classmethod
    def from_strings(cls, strings: Sequence[str | None]) -> Vocabulary:
        root = _Node()
        for i, s in enumerate(strings):
            if not s:
                continue
            node = root
            for c in s:
                child = node.children.get(c)
                if child is None:
                    child = node.children[c] = _Node()
                node = child
            node.ids.append(i)
        return cls(list(strings), root)


_VOCABS: weakref.WeakKeyDictionary[Any, Vocabulary] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def vocabulary(tokenizer: Any) -> Vocabulary:
    """The token strings of ``tokenizer`` (computed once per tokenizer object).

    A token's string is what it adds after an anchor token (``decode([anchor, id])`` minus ``decode([anchor])``),
    so SentencePiece word-initial spaces are kept; special tokens and tokens that add nothing are excluded.
    """
    with _LOCK:
        found = _VOCABS.get(tokenizer)
        if found is not None:
            return found
        anchor = tokenizer.encode("0", add_special_tokens=False)[-1:]
        base = tokenizer.decode(anchor, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        special = {int(i) for i in getattr(tokenizer, "all_special_ids", ()) or ()}
        for tid, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(tok, "special", False):
                special.add(int(tid))
        size = len(tokenizer)
        texts = tokenizer.batch_decode([anchor + [i] for i in range(size)], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        strings: list[str | None] = []
        for i, t in enumerate(texts):
            ok = i not in special and t.startswith(base) and len(t) > len(base)
            strings.append(t[len(base) :] if ok else None)
        vocab = Vocabulary.from_strings(strings)
        _VOCABS[tokenizer] = vocab
        return vocab


def eos_token_ids(tokenizer: Any, extra: Any = None) -> tuple[int, ...]:
    """The ids that end a generation: ``extra`` (an id or a list, e.g. a generation config's) and the tokenizer's."""
    ids: list[int] = []
    for value in (extra, getattr(tokenizer, "eos_token_id", None)):
        if value is None:
            continue
        ids.extend(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return tuple(dict.fromkeys(ids))


# -- the token automaton ------------------------------------------------------------------------------------------


class TokenAutomaton:
    """A grammar over a vocabulary: allowed tokens and costs per state, each computed once."""

    def __init__(self, grammar: Grammar, vocab: Vocabulary, eos_ids: Sequence[int]) -> None:
        self.grammar = grammar
        self.vocab = vocab
        self.eos_ids = np.array(sorted(set(eos_ids)), dtype=np.int64)
        if not len(self.eos_ids):
            raise ValueError("constrained decoding needs an end-of-sequence token id")
        self._intern: dict[State, State] = {}
        self._steps: dict[tuple[State, str], State | None] = {}
        self._moves: dict[State, list[tuple[float, np.ndarray]]] = {}
        self._costs: dict[State, float] = {}
        self._spell: dict[str, float] = {}
        segs = grammar.segments
        self._tail = [0.0] * (len(segs) + 1)
        for i in range(len(segs) - 1, -1, -1):
            self._tail[i] = self._tail[i + 1] + segs[i].cost(segs[i].start(), self.min_tokens_to_spell)
        start = grammar.start()
        if start is None:
            raise ValueError(f"the prompt's assistant prefix {grammar.prefix!r} does not begin a valid answer")
        self.start = self._interned(start)
        if math.isinf(self.cost(self.start)):
            raise ValueError("the tokenizer has no tokens to spell a valid answer")

    def _interned(self, state: State) -> State:
        return self._intern.setdefault(state, state)

    def min_tokens_to_spell(self, text: str) -> float:
        """The fewest vocabulary tokens whose strings concatenate to ``text`` (inf: none do)."""
        if text in self._spell:
            return self._spell[text]
        best = [math.inf] * (len(text) + 1)
        best[len(text)] = 0.0
        for i in range(len(text) - 1, -1, -1):
            node = self.vocab.root
            for j in range(i, len(text)):
                node = node.children.get(text[j])  # type: ignore[assignment]
                if node is None:
                    break
                if node.ids:
                    best[i] = min(best[i], 1.0 + best[j + 1])
        self._spell[text] = best[0]
        return best[0]

    def cost(self, state: State) -> float:
        """An upper bound on the tokens needed to finish from ``state`` that some allowed token lowers by one."""
        found = self._costs.get(state)
        if found is None:
            segs = self.grammar.segments
            found = min((0.0 if i == len(segs) else segs[i].cost(local, self.min_tokens_to_spell) + self._tail[i + 1])
                        for i, local in state)
            self._costs[state] = found
        return found

    def min_tokens(self) -> int:
        """Tokens a generation needs at most to reach a complete answer when it writes the shortest one (the budget
        ``max_new_tokens`` must allow)."""
        return int(self.cost(self.start))

    def step_char(self, state: State, c: str) -> State | None:
        key = (state, c)
        if key not in self._steps:
            if len(self._steps) > 1_000_000:  # bounded memory over a long run
                self._steps.clear()
            nxt = self.grammar.step(state, c)
            self._steps[key] = None if nxt is None else self._interned(nxt)
        return self._steps[key]

    def next_state(self, state: State, token_id: int) -> State | None:
        """The state after ``token_id`` (None: the token is not allowed there)."""
        text = self.vocab.strings[token_id] if 0 <= token_id < len(self.vocab.strings) else None
        if not text:
            return None
        cur: State | None = state
        for c in text:
            cur = self.step_char(cur, c)
            if cur is None:
                return None
        return cur

    def _successors(self, state: State) -> list[tuple[float, np.ndarray]]:
        """(cost of the next state, token ids leading there) for every token allowed after ``state``, cheapest
        first: the trie and the character automaton walked together."""
        found = self._moves.get(state)
        if found is not None:
            return found
        groups: dict[State, list[int]] = {}
        stack = [(self.vocab.root, state)]
        while stack:
            node, st = stack.pop()
            for c, child in node.children.items():
                nxt = self.step_char(st, c)
                if nxt is None:
                    continue
                if child.ids:
                    groups.setdefault(nxt, []).extend(child.ids)
                if child.children:
                    stack.append((child, nxt))
        found = sorted(((self.cost(s), np.array(sorted(ids), dtype=np.int64)) for s, ids in groups.items()),
                       key=lambda x: x[0])
        if len(self._moves) > 20000:  # a long run over many windows: keep memory bounded
            self._moves.clear()
        self._moves[state] = found
        return found

    def allowed(self, state: State, left: float) -> np.ndarray:
        """Token ids allowed in ``state`` with ``left`` tokens still to generate (this one included): those after
        which the answer can still be completed in time, and end of sequence once the answer is complete."""
        parts = [ids for cost, ids in self._successors(state) if 1.0 + cost <= left]
        if self.grammar.accepting(state) or not parts:
            parts.append(self.eos_ids)  # with no way on (the budget is spent), ending is all that is left
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class ConstrainedDecoding:
    """One sequence under a grammar: fed the tokens it generates, it says which token ids may come next."""

    def __init__(self, automaton: TokenAutomaton, max_new_tokens: int | None) -> None:
        self.automaton = automaton
        self.budget = math.inf if max_new_tokens is None else float(max_new_tokens)
        self.state = automaton.start
        self.generated = 0
        self.finished = False

    def advance(self, token_id: int) -> None:
        """Take the next generated token. A token the grammar does not allow ends the sequence: it is end of
        sequence, or the padding a batched generator appends to a finished row."""
        self.generated += 1
        if self.finished:
            return
        nxt = self.automaton.next_state(self.state, int(token_id))
        if nxt is None:
            self.finished = True
        else:
            self.state = nxt

    def sync(self, output_ids: Sequence[int]) -> None:
        """Advance over the tokens of ``output_ids`` not yet taken (an engine's running list of generated ids)."""
        for t in output_ids[self.generated :]:
            self.advance(int(t))

    def allowed(self) -> np.ndarray | None:
        """Token ids allowed next (None once the sequence has finished: no constraint)."""
        if self.finished:
            return None
        return self.automaton.allowed(self.state, self.budget - self.generated)


_COMPILED: dict[tuple[Grammar, int, tuple[int, ...]], TokenAutomaton] = {}


def compile_grammar(grammar: Grammar, tokenizer: Any, eos_ids: Sequence[int]) -> TokenAutomaton:
    """The :class:`TokenAutomaton` of ``grammar`` on ``tokenizer`` (the last 64 kept, so windows of one size share
    one)."""
    key = (grammar, id(tokenizer), tuple(eos_ids))
    with _LOCK:
        found = _COMPILED.get(key)
    if found is not None and found.vocab is vocabulary(tokenizer):
        return found
    automaton = TokenAutomaton(grammar, vocabulary(tokenizer), eos_ids)
    with _LOCK:
        if len(_COMPILED) >= 64:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = automaton
    return automaton


def check_budget(needed: int, max_new_tokens: int) -> None:
    """A constrained generation must be able to finish its shortest valid answer within ``max_new_tokens``."""
    if needed > max_new_tokens:
        from rerank.errors import ConfigError

        raise ConfigError(f"constrained decoding: the shortest valid answer takes {needed} tokens, more than "
                          f"max_new_tokens {max_new_tokens}")
