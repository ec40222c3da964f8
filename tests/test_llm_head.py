"""Shared LLM-head plumbing: one batch size from the head config reaches the backend."""

from __future__ import annotations

import pytest

from rerank import Reranker
from rerank.backends.registry import backend_accepts
from rerank.errors import ConfigError


def test_head_batch_size_is_the_backend_batch_size(tiny_llm_dir) -> None:  # noqa: ANN001
    rr = Reranker.load("yes-no", model=str(tiny_llm_dir), batch_size=3)
    assert rr.backend.config.batch_size == 3
    rr = Reranker.load("yes-no", model=str(tiny_llm_dir), batch_size=5, backend_options={"batch_size": 2})
    assert rr.backend.config.batch_size == 2  # an explicit backend option wins
    assert backend_accepts("transformers", "batch_size")
    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        backend_accepts("nope", "batch_size")
