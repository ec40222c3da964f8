"""Bottom-to-top sliding window over the top of a ranked list (RankGPT / RankZephyr / FIRST inference).

A listwise model sees at most ``window`` candidates at once. The window starts at the bottom of the top-``depth``
list and moves up by ``stride`` positions; each window's permutation is applied in place before the next window,
so strong candidates bubble up from the bottom to the top. The ranking function is generic: it receives the
windows of *many* lists at the same sliding step, so a head can batch windows of different queries into one model
call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from rerank.errors import ConfigError

__all__ = ["window_plan", "sliding_window_rerank", "WindowRanker"]

T = TypeVar("T")

# Given the windows of one sliding step, as (list index, items in current order), return one permutation per window:
# the window's local indices, best first. Permutations must be complete (see rerank.heads.permutation).
WindowRanker = Callable[[list[tuple[int, list[T]]]], list[list[int]]]


def window_plan(n: int, window: int, stride: int, depth: int | None = None) -> list[tuple[int, int]]:
    """The ``[start, end)`` windows visited over the top ``min(n, depth)`` items, bottom window first.

    The last window is the first one that reaches the top; no window is visited twice and a list no longer than
    ``window`` gets exactly one window.
    """
    if window < 1 or stride < 1:
        raise ConfigError(f"sliding window: window ({window}) and stride ({stride}) must be >= 1")
    if stride > window:
        raise ConfigError(f"sliding window: stride ({stride}) > window ({window}) would skip candidates")
    top = n if depth is None else min(n, depth)
    plan: list[tuple[int, int]] = []
    end = top
    while end > 0:
        start = max(0, end - window)
        plan.append((start, end))
        if start == 0:
            break
        end -= stride
    return plan


def _check_permutation(perm: Sequence[int], size: int) -> None:
    if sorted(perm) != list(range(size)):
        raise RuntimeError(f"window ranker returned {list(perm)!r}, not a permutation of range({size})")


def sliding_window_rerank(
    lists: Sequence[Sequence[T]],
    rank_windows: WindowRanker[T],
    window: int = 20,
    stride: int = 10,
    depth: int | None = None,
) -> list[list[T]]:
    """Rerank the top ``depth`` of each list with bottom-to-top sliding windows; items below ``depth`` keep order.

    ``rank_windows`` is called once per sliding step with the windows of every list that still has a window at
    that step (step 0 = each list's bottom window), so a head can put windows of different queries in one batch.
    """
    orders = [list(items) for items in lists]
    plans = [window_plan(len(o), window, stride, depth) for o in orders]
    steps = max((len(p) for p in plans), default=0)
    for step in range(steps):
        batch = [(i, orders[i][plans[i][step][0] : plans[i][step][1]]) for i in range(len(orders)) if step < len(plans[i])]
        perms = rank_windows(batch)
        if len(perms) != len(batch):
            raise RuntimeError(f"window ranker returned {len(perms)} permutations for {len(batch)} windows")
        for (i, items), perm in zip(batch, perms, strict=True):
            _check_permutation(perm, len(items))
            start, end = plans[i][step]
            orders[i][start:end] = [items[j] for j in perm]
    return orders
