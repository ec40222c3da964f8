"""Shared-prefix reuse for pointwise scoring: which prompts of a call share a prefix worth running once, and a small
store of computed prefixes that later calls reuse.

Pointwise LLM heads (yes-no, ERank, qwen3-reranker) send one prompt per (query, document): ``[instruction + query]
[document][suffix]``. The token ids are the head's own tokenisation of the whole prompt; the shared part is found on
those ids (the longest common token prefix), so the tokens the model reads are exactly the ones it reads without
reuse, whatever the tokenizer merges at the boundary. :func:`prefix_groups` partitions one call's prompts so that each
group's common prefix is run once when that saves tokens; :class:`PrefixStore` keeps the last few computed prefixes
(a head calls the backend in chunks of ``batch_size``, so one query's prefix spans several calls).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

__all__ = ["MIN_PREFIX", "PrefixStore", "attention_weight", "common_prefix", "prefix_groups"]

#: A shared prefix shorter than this many tokens is not worth a separate forward (prompts run whole).
MIN_PREFIX = 16

V = TypeVar("V")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def attention_weight(config: Any) -> float:
    """The cost of one (query, key) pair of attention relative to one token through a layer's projections and MLP:
    ``4 d / (2 (q, k, v, o and gated-MLP weights))`` from a transformers model config; 0 when it lacks the sizes."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        d, f, h = int(config.hidden_size), int(config.intermediate_size), int(config.num_attention_heads)
    except (AttributeError, TypeError):
        return 0.0
    kv = int(getattr(config, "num_key_value_heads", None) or h)
    hd = int(getattr(config, "head_dim", None) or d // h)
    linear = 2 * (d * hd * (h + 2 * kv) + h * hd * d + 3 * d * f)
    return 4 * h * hd / linear


def prefix_groups(prompts: Sequence[Sequence[int]], min_prefix: int = MIN_PREFIX,
                  attention: float = 0.0) -> list[tuple[list[int], int]]:
    """Partition prompt indices into ``(indices, prefix_length)`` groups; a group's first ``prefix_length`` tokens are
    common to its prompts and run once (0: its prompts run whole).

    Prompts are sorted by their tokens, so prompts with long common prefixes are neighbours; a run of neighbours is
    split at its weakest link whenever the parts cost less than the whole. Cost counts tokens plus ``attention`` (see
    :func:`attention_weight`) per attended (query, key) pair: a whole prompt of ``L`` tokens attends causally to
    ``L**2 / 2`` pairs, while the rest ``s`` of a prompt after a cached prefix ``p`` attends through an explicit mask,
    which computes all ``s * (p + s)`` pairs. So a short shared prefix before long prompts (FIRST's instruction before
    its window) is not worth it, and the instruction and query before short documents is. A prefix always leaves each
    prompt at least one token of its own.
    """
    order = sorted(range(len(prompts)), key=lambda i: tuple(prompts[i]))
    links = [common_prefix(prompts[order[k]], prompts[order[k + 1]]) for k in range(len(order) - 1)]
    lengths = [len(prompts[i]) for i in order]

    def cost(a: int, b: int) -> tuple[float, int]:
        whole = sum(n + attention * n * n / 2 for n in lengths[a:b])
        if b - a < 2:
            return whole, 0
        p = min(min(links[a : b - 1]), min(lengths[a:b]) - 1)
        shared = p + attention * p * p / 2 + sum(n - p + attention * (n - p) * n for n in lengths[a:b])
        return (shared, p) if p >= min_prefix and shared < whole else (whole, 0)

    def split(a: int, b: int) -> tuple[float, list[tuple[int, int, int]]]:
        whole, p = cost(a, b)
        if b - a < 2:
            return whole, [(a, b, p)]
        weakest = min(range(a, b - 1), key=lambda k: links[k])
        left, right = split(a, weakest + 1), split(weakest + 1, b)
        if left[0] + right[0] < whole:
            return left[0] + right[0], left[1] + right[1]
        return whole, [(a, b, p)]

    if not prompts:
        return []
    return [([order[k] for k in range(a, b)], p) for a, b, p in split(0, len(order))[1]]


class PrefixStore(Generic[V]):
    """The last ``size`` computed prefixes (token ids -> whatever the backend keeps, e.g. a KV cache), least recently
    used evicted first. Values are never mutated by the store's users: they copy before extending."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, ...], V] = OrderedDict()

    def best(self, prefix: Sequence[int], rows: int) -> tuple[tuple[int, ...], V, int] | None:
        """The stored prefix sharing the most leading tokens ``c`` (at least :data:`MIN_PREFIX`) with ``prefix``, as
        ``(key, value, c)``, when using its first ``c`` tokens for ``rows`` prompts (each then runs ``len(prefix) - c``
        tokens more) is cheaper than running ``prefix`` once; else None."""
        found: tuple[tuple[int, ...], V, int] | None = None
        for key, value in self._items.items():
            c = common_prefix(key, prefix)
            if c > (found[2] if found else 0):
                found = (key, value, c)
        if found is None or found[2] < MIN_PREFIX or rows * (len(prefix) - found[2]) >= len(prefix):
            return None
        self._items.move_to_end(found[0])
        return found

    def add(self, prefix: Sequence[int], value: V) -> None:
        """Store ``value`` under ``prefix``, evicting the least recently used beyond ``size``."""
        self._items[tuple(prefix)] = value
        self._items.move_to_end(tuple(prefix))
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
