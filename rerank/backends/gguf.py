"""GGUF checkpoints -> a normal Hugging Face folder, converted once and cached by the file's SHA-256.

``--model path.gguf`` (or a directory holding exactly one ``.gguf``) is de-quantised by transformers
(``from_pretrained(dir, gguf_file=...)``, needs the ``gguf`` package) and saved as safetensors under
``cache_root()/gguf/<sha256>/``; later runs load that folder directly. :func:`gguf_tokenizer` converts only the
tokenizer (for ``--backend llamacpp``, which runs the file itself), cached the same way.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from rerank.data.datasets import cache_root
from rerank.errors import ConfigError
from rerank.utils.files import publish_dir, sha256_file, temp_dir

__all__ = ["find_gguf_file", "gguf_to_hf", "gguf_tokenizer"]

log = logging.getLogger(__name__)


def find_gguf_file(model: str | Path) -> Path | None:
    """The GGUF file ``model`` names (a ``.gguf`` file or a directory with exactly one), else ``None``."""
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file {path} does not exist")
        return path
    if path.is_dir() and not (path / "config.json").exists():
        files = sorted(path.glob("*.gguf"))
        if len(files) > 1:
            raise ConfigError(f"{path} holds {len(files)} .gguf files ({', '.join(f.name for f in files)}); name one")
        if files:
            return files[0]
    return None


def _save_atomically(target: Path, save: Any, marker: str) -> None:
    """Run ``save(folder)`` into a temporary folder beside ``target``, then publish it as ``target``
    (:func:`~rerank.utils.files.publish_dir`: another process whose copy, with its ``marker`` file, landed first keeps
    it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, prefix=f".{target.name}.")
    try:
        save(tmp)
        publish_dir(tmp, target, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_tokenizer(gguf_file: str | Path, cache_dir: str | Path | None = None) -> Any:
    """The Hugging Face tokenizer stored in ``gguf_file`` (vocabulary, merges, special tokens, chat template), read
    by transformers once and cached by the file's SHA-256 under ``cache_root()/gguf-tokenizer/``."""
    from transformers import AutoTokenizer

    gguf_file = Path(gguf_file)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "gguf-tokenizer"
    target = root / sha256_file(gguf_file)
    if (target / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    _save_atomically(target, tokenizer.save_pretrained, "tokenizer_config.json")
    return tokenizer


def gguf_to_hf(gguf_file: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Convert ``gguf_file`` to a safetensors HF folder (model + tokenizer), cached by content hash."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "gguf"
    target = root / sha256_file(gguf_file)
    if (target / "config.json").exists():
        return target
    log.info("converting %s to a Hugging Face folder at %s (once)", gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model.hf_quantizer = None  # weights are de-quantised; save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def save(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / "SOURCE").write_text(f"converted from {gguf_file.resolve()}\n", encoding="utf-8")

    _save_atomically(target, save, "config.json")
    return target
