"""Score normalisation shared by first-stage fusion (:mod:`rerank.retrieval.hybrid`) and heads that fuse retriever
scores (GroupRank): one definition of min-max, infinities included."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["minmax_normalize"]


def minmax_normalize(pairs: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Scores mapped to [0, 1] by (s - min) / (max - min); all-equal scores map to 1.

    ``-inf`` maps to 0 and ``+inf`` to 1, each as if one finite score range (1 when the finite scores are all equal)
    beyond the finite scores, which keep their order strictly between; a NaN score is a ``ValueError``.
    """
    if not pairs:
        return {}
    finite = [s for _, s in pairs if math.isfinite(s)]
    if len(finite) < len(pairs):
        for d, s in pairs:
            if math.isnan(s):
                raise ValueError(f"document {d!r}: score is NaN")
    below = len(finite) < len(pairs) and any(s == -math.inf for _, s in pairs)
    above = len(finite) < len(pairs) and any(s == math.inf for _, s in pairs)
    if not finite:  # only infinities: all equal (1), or -inf 0 and +inf 1
        return {d: 0.0 if below and above and s < 0 else 1.0 for d, s in pairs}
    lo, hi = min(finite), max(finite)
    span = hi - lo
    if span == math.inf:  # both near the float limits: halve before subtracting (exact but for subnormals)
        lo, hi, span, half = lo / 2, hi / 2, hi / 2 - lo / 2, 0.5
    else:
        half = 1.0
    out: dict[str, float] = {}
    for d, s in pairs:
        if s == math.inf:
            out[d] = 1.0
        elif s == -math.inf:
            out[d] = 0.0
        elif span == 0:  # all finite scores equal: 1, or between the infinities present
            out[d] = 1.0 if not above else (0.5 if below else 0.0)
        else:
            out[d] = ((s * half - lo) / span + below) / (1 + below + above)
    return out
