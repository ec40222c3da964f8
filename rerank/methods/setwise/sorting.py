"""The setwise sorts as generators, free of any model: each yields a set (positions into the candidate list) and is
sent back the index, within that set, of its most relevant member; it returns the final order (best first).

``heapsort``: a heap whose nodes have ``c - 1`` children, so a node and its children form one set of at most ``c``;
built bottom-up, then the root is taken ``k`` times. ``bubblesort``: ``k`` passes, each moving windows of ``c``
from the bottom of the list up by ``c - 1`` (consecutive windows share one passage), carrying the best passage to
position ``i`` of pass ``i``. Both as in ielab/llm-rankers. Passages below the top ``k`` keep their input order.
"""

from __future__ import annotations

from collections.abc import Generator

__all__ = ["Sort", "bubblesort", "heapsort"]

Sort = Generator[list[int], int, list[int]]


def _rest(order: list[int], top: list[int]) -> list[int]:
    taken = set(top)
    return top + sorted(i for i in order if i not in taken)


def heapsort(n: int, c: int, k: int) -> Sort:
    """Top ``k`` of ``n`` by c-ary heapsort over sets of at most ``c``."""
    arr = list(range(n))
    b = c - 1

    def sift(size: int, i: int) -> Generator[list[int], int, None]:
        while True:
            nodes = [i, *(j for j in range(b * i + 1, b * i + b + 1) if j < size)]
            if len(nodes) == 1:
                return
            best = nodes[(yield [arr[j] for j in nodes])]
            if best == i:
                return
            arr[i], arr[best] = arr[best], arr[i]
            i = best

    for i in range((n - 2) // b, -1, -1):
        yield from sift(n, i)
    top: list[int] = []
    size = n
    while len(top) < min(k, n):
        top.append(arr[0])
        size -= 1
        if len(top) == min(k, n):
            break
        arr[0] = arr[size]  # the last leaf replaces the taken root, then sinks
        yield from sift(size, 0)
    return _rest(list(range(n)), top)


def bubblesort(n: int, c: int, k: int) -> Sort:
    """Top ``k`` of ``n`` by ``k`` bubbling passes of windows of ``c``."""
    arr = list(range(n))
    step = c - 1
    for i in range(min(k, n - 1)):
        start, end = n - c, n
        while True:
            start = max(start, i)
            best = yield arr[start:end]
            if best != 0:
                arr[start], arr[start + best] = arr[start + best], arr[start]
            if start == i:
                break
            start -= step
            end -= step
    return _rest(arr, arr[: min(k, n)])
