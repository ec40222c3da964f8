"""Small helpers shared by the backends (prompt checks, requested ids, stop strings)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["cut_at_stop", "check_prompts", "unique_ids"]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text before the first occurrence of any stop string (stop strings are not returned, as in OpenAI/vLLM)."""
    cut = len(text)
    for s in stop:
        j = text.find(s)
        if j != -1:
            cut = min(cut, j)
    return text[:cut]


def check_prompts(prompts: Sequence[Sequence[int]]) -> None:
    """Reject empty prompts early with a clear message (engines fail obscurely on them)."""
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")


def unique_ids(token_ids: Sequence[int], vocab_size: int | None) -> list[int]:
    """The requested ids without repeats, checked against the vocabulary size."""
    ids = [int(t) for t in token_ids]
    if not ids:
        raise ValueError("next_token_logprobs needs at least one token id")
    if vocab_size is not None:
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"token ids {bad} are outside the vocabulary (size {vocab_size})")
    return list(dict.fromkeys(ids))
