"""Audit s38/backends: the llama.cpp context, the openai backend's malformed replies, NaN hints, secrets in logs,
the LLM-call cache key, openai concurrency and log lines beside progress bars.

The openai tests run against a tiny scripted completions server on loopback (one thread); the llama.cpp test uses
the tiny GGUF of :mod:`rerank.testing` and skips, saying why, without ``llama-cpp-python``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank.backends.registry import build_backend

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA_CPP = True
except ImportError:  # not installed, or installed without its library
    HAVE_LLAMA_CPP = False
needs_llama_cpp = pytest.mark.skipif(
    not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed (pip install 'rerank[llamacpp]'; builds from source)"
)


# ---------------------------------------------------------------- #1 llama.cpp n_ctx not a multiple of 256


@needs_llama_cpp
def test_llamacpp_fits_prompts_to_the_requested_n_ctx(tiny_llm_dir: Path, tmp_path: Path) -> None:
    """llama.cpp rounds n_ctx=300 up to 512, but llama-cpp-python's buffers hold 300 tokens: prompts are fitted to
    300 (the old context_length of 512 let a 400-token prompt through, which crashed in numpy)."""
    from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker
    from rerank.testing import tiny_gguf

    gguf = tiny_gguf(tiny_llm_dir, tmp_path / "tiny.gguf")
    backend = build_backend("llamacpp", str(gguf), n_ctx=300, n_threads=1)
    try:
        assert backend.context_length == 300
        head = YesNoReranker(YesNoConfig(max_doc_tokens=400), backend=backend)
        result = head.rerank("what do cats eat", ["cats eat meat and fish " * 60, "dogs bark"])
        assert sorted(result.doc_ids) == ["0", "1"] and head.stats.fitted_prompts >= 1
        with pytest.raises(ValueError, match="exceeds n_ctx 300"):
            backend.next_token_logprobs([[1] * 301], [1])
    finally:
        backend.close()
