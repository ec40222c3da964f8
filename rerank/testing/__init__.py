"""Tiny models, tokenizers and datasets built in code, for tests and demos (no model hub, no downloads).

``python -m rerank.testing tiny-llm DIR`` (and ``tiny-bert``, ``tiny-st``, ``tiny-t5``, ``tiny-beir``) writes them
from the shell.
Models are random: they exercise code paths, they do not rank well until trained on the synthetic task.
"""

from rerank.testing.gguf import tiny_gguf
from rerank.testing.models import LLM_ARCHS, tiny_bert, tiny_colbert, tiny_llm, tiny_sentence_transformer, tiny_t5
from rerank.testing.paths import require_shared_data, shared_data_path
from rerank.testing.synthetic import TaskGenerator, make_tiny_beir, synthetic_ranking_examples
from rerank.testing.tokenizer import (
    build_t5_tokenizer,
    build_tokenizer,
    build_wordpiece_tokenizer,
    chat_template,
    corpus_lines,
)

__all__ = [
    "LLM_ARCHS",
    "TaskGenerator",
    "build_t5_tokenizer",
    "build_tokenizer",
    "build_wordpiece_tokenizer",
    "chat_template",
    "corpus_lines",
    "make_tiny_beir",
    "require_shared_data",
    "shared_data_path",
    "synthetic_ranking_examples",
    "tiny_bert",
    "tiny_colbert",
    "tiny_gguf",
    "tiny_llm",
    "tiny_sentence_transformer",
    "tiny_t5",
]
