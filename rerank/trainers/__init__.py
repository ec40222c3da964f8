"""Training: SFT -> GRPO for reranker heads, and retriever trainers.

``rerank.trainers.sft(config, output)`` and ``rerank.trainers.grpo(config, output)`` run the registered trainers; an
``output`` that holds a run is continued with ``resume=True``, replaced with ``overwrite=True``, else refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sft(config: Any, output: str | Path, data_root: str | None = None, resume: bool = False,
        overwrite: bool = False) -> dict[str, Any]:
    """Supervised training of any head (config object, dict or YAML path); the model is written to ``output``."""
    from rerank.trainers.api import run_trainer

    return run_trainer("sft", config, output, data_root, resume, overwrite)


def grpo(config: Any, output: str | Path, data_root: str | None = None, resume: bool = False,
         overwrite: bool = False) -> dict[str, Any]:
    """GRPO on ranking rewards for an LLM head (config object, dict or YAML path)."""
    from rerank.trainers.api import run_trainer

    return run_trainer("grpo", config, output, data_root, resume, overwrite)
