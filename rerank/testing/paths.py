"""Where the real evaluation data (``../shared/data``: SciFact, DL19 BM25 top-100) lives, for tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["require_shared_data", "shared_data_path"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_path() -> Path | None:
    """``$RERANK_SHARED_DATA``, else ``<repo>/../shared/data``, else ``/work/shared/data``; None when none exists."""
    env = os.environ.get("RERANK_SHARED_DATA")
    candidates = [Path(env).expanduser()] if env else [_REPO_ROOT.parent / "shared" / "data", Path("/work/shared/data")]
    for cand in candidates:
        if cand.is_dir():
            return cand
    return None


def require_shared_data() -> Path:
    """:func:`shared_data_path`, or FileNotFoundError naming the variable to set (benchmarks need the data)."""
    path = shared_data_path()
    if path is None:
        raise FileNotFoundError("../shared/data not found beside the repository or at /work/shared/data: set "
                                "RERANK_SHARED_DATA to the folder holding scifact/ and dl19-bm25-top100/")
    return path
