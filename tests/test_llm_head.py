"""Shared LLM-head plumbing: one batch size from the head config reaches the backend."""

from __future__ import annotations

import logging
from pathlib import Path

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


def test_yes_no_warns_when_the_answer_words_are_not_what_the_model_writes(tiny_llm_dir: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """SmolLM2 puts 0.3-1.2% of its probability on 'yes'/'no' (it writes 'Yes'/'No'): the scores were log-odds of rare
    tokens, with nothing said. A random tiny model spreads its probability the same way: the head warns, once."""
    rr = Reranker.load("yes-no", model=str(tiny_llm_dir))
    with caplog.at_level(logging.WARNING, logger="rerank.methods.yes_no.head"):
        rr.rerank("q", ["a", "b"])
        rr.rerank("q", ["c"])
    assert caplog.text.count("the answer words 'yes' / 'no' take") == 1
