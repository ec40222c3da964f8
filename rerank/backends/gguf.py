"""GGUF checkpoints -> a normal Hugging Face folder, converted once and cached by the file's SHA-256.

``--model path.gguf`` (or a directory holding exactly one ``.gguf``) is de-quantised by transformers
(``from_pretrained(dir, gguf_file=...)``, needs the ``gguf`` package) and saved as safetensors under
``cache_root()/gguf/<sha256>/``; later runs load that folder directly. :func:`gguf_tokenizer` converts only the
tokenizer (for ``--backend llamacpp``, which runs the file itself), cached the same way. Converting needs the ``gguf``
package (the model's weights also ``accelerate``): without it, a one-line :class:`ConfigError` says what to install. A
file transformers cannot read (truncated, damaged, an architecture it does not convert) is a one-line
:class:`ConfigError` naming the file.

An entry is used only when it is complete: its config and tokenizer JSON parse and its safetensors files are whole.
A damaged one (a half-built folder a killed older version left, a deleted or emptied file, a dangling symlink) is
removed and converted again, with a warning naming it. Processes converting the same file take turns on
``.<sha256>.lock`` beside the entry (:func:`~rerank.utils.files.file_lock`): a second one waits, then reuses the
first's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rerank.data.datasets import cache_root
from rerank.errors import ConfigError
from rerank.utils.files import file_lock, publish_dir, sha256_file, temp_dir

__all__ = ["find_gguf_file", "gguf_to_hf", "gguf_tokenizer", "require_gguf"]

log = logging.getLogger(__name__)

#: the oldest ``gguf`` package transformers reads GGUF files with (its ``GGUF_MIN_VERSION``)
GGUF_MIN_VERSION = "0.10.0"


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


def require_gguf() -> None:
    """Raise a one-line :class:`ConfigError` when the ``gguf`` package that transformers converts GGUF files with is
    not installed (or older than :data:`GGUF_MIN_VERSION`)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        import gguf  # noqa: F401
        installed = version("gguf")
    except (ImportError, PackageNotFoundError):
        raise ConfigError(f"reading a .gguf model needs the `gguf` package, which is not installed: "
                          f"pip install 'gguf>={GGUF_MIN_VERSION}'") from None
    if Version(installed) < Version(GGUF_MIN_VERSION):
        raise ConfigError(f"reading a .gguf model needs the `gguf` package {GGUF_MIN_VERSION} or newer, installed: "
                          f"{installed}; pip install 'gguf>={GGUF_MIN_VERSION}'")


def _require_accelerate() -> None:
    """Raise a one-line :class:`ConfigError` when ``accelerate``, which transformers loads a GGUF model's weights
    with, is not installed (transformers' own refusal reads like a problem with the file)."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ConfigError("de-quantising a .gguf model needs the `accelerate` package, which is not installed: "
                          "pip install accelerate (or run the file as it is with --backend llamacpp)") from None


#: modules that read a GGUF file's bytes: the ``gguf`` package and transformers' GGUF readers
_READERS = ("gguf", "transformers.integrations.gguf", "transformers.modeling_gguf_pytorch_utils")


def _raised_reading(error: BaseException) -> bool:
    """Whether ``error`` was raised while a GGUF reader (:data:`_READERS`) was running."""
    tb = error.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if any(module == r or module.startswith(r + ".") for r in _READERS):
            return True
        tb = tb.tb_next
    return False


@contextlib.contextmanager
def _reading(gguf_file: Path) -> Iterator[None]:
    """Turn a GGUF reader's refusal of ``gguf_file`` in the block (``struct.error`` or ``OverflowError`` on a cut or
    damaged header, ``ValueError`` on bytes it cannot interpret or an architecture transformers does not convert) into
    a one-line :class:`ConfigError` naming the file; other errors pass unchanged."""
    try:
        yield
    except (struct.error, OverflowError, ValueError) as e:
        if not _raised_reading(e):
            raise
        detail = " ".join(str(e).split())
        if isinstance(e, (struct.error, OverflowError, UnicodeDecodeError)):
            raise ConfigError(f"the GGUF file {gguf_file} is truncated or damaged ({detail}): copy or download it "
                              "again") from e
        raise ConfigError(f"transformers cannot read the GGUF file {gguf_file} ({detail}): it is truncated or "
                          "damaged, or holds a model transformers does not convert") from e


def _safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file ``path`` is not whole (empty, a header that does not parse, tensors that run past the
    end or bytes beyond them), else None; reads its header only."""
    size = path.stat().st_size
    if size == 0:
        return f"{path.name} is empty"
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            return f"{path.name} is truncated"
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            return f"{path.name} has a damaged header"
    if not isinstance(header, dict):
        return f"{path.name} has a damaged header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2]
    if 8 + n + max(ends, default=0) != size:
        return f"{path.name} is truncated or damaged"
    return None


def _entry_problem(entry: Path, required: tuple[str, ...], weights: bool) -> str | None:
    """Why the cache entry ``entry`` (which exists, or is a symlink) cannot be used: not a folder, a ``required`` file
    missing, a JSON file empty or unparsable, (with ``weights``) no or damaged safetensors; None when complete."""
    if not entry.is_dir():
        return "it is a file or a dangling symlink, not a folder"
    try:
        for name in required:
            if not (entry / name).is_file():
                return f"{name} is missing"
        for f in sorted(entry.glob("*.json")):
            try:
                json.loads(f.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                return f"{f.name} is empty" if f.stat().st_size == 0 else f"{f.name} is not valid JSON"
        if weights:
            shards = sorted(entry.glob("*.safetensors"))
            index = entry / "model.safetensors.index.json"
            named = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()) \
                if index.is_file() else set()
            if missing := sorted(named - {f.name for f in shards}):
                return f"{missing[0]} is missing"
            if not shards:
                return "it holds no .safetensors weights"
            for f in shards:
                if problem := _safetensors_problem(f):
                    return problem
    except OSError as e:
        return f"{e.filename or entry}: {e.strerror or e}"
    return None


@contextlib.contextmanager
def _building(entry: Path, required: tuple[str, ...], weights: bool, source: Path) -> Iterator[bool]:
    """Hold the entry's lock (``.<name>.lock`` beside it) for the block and yield whether ``entry`` is complete now
    (another process built it while this one waited); a damaged entry is removed first, with a warning, so that the
    block builds it again. An entry that cannot be removed raises :class:`ConfigError` naming it."""

    def waiting() -> None:
        log.info("another process is converting %s into %s; waiting for it to finish", source, entry)

    with file_lock(entry.parent / f".{entry.name}.lock", on_wait=waiting):
        if not os.path.lexists(entry):
            yield False
            return
        problem = _entry_problem(entry, required, weights)
        if problem is None:
            yield True
            return
        log.warning("the GGUF cache entry %s is damaged (%s); converting %s into it again", entry, problem, source)
        try:
            if entry.is_symlink() or not entry.is_dir():
                entry.unlink()
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.damaged.", dir=entry.parent))
                os.replace(entry, old / "x")
                shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            raise ConfigError(f"the GGUF cache entry {entry} is damaged ({problem}) and cannot be replaced "
                              f"({e.strerror or e}): remove that folder (or have its owner remove it), then run again; "
                              "it is converted again from the .gguf file") from e
        yield False


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


_TOKENIZER_FILES = ("tokenizer_config.json",)
_MODEL_FILES = ("config.json", "tokenizer_config.json")


def gguf_tokenizer(gguf_file: str | Path, cache_dir: str | Path | None = None) -> Any:
    """The Hugging Face tokenizer stored in ``gguf_file`` (vocabulary, merges, special tokens, chat template), read
    by transformers once and cached by the file's SHA-256 under ``cache_root()/gguf-tokenizer/``."""
    from transformers import AutoTokenizer

    gguf_file = Path(gguf_file)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "gguf-tokenizer"
    target = root / sha256_file(gguf_file)
    if target.is_dir() and _entry_problem(target, _TOKENIZER_FILES, weights=False) is None:
        return AutoTokenizer.from_pretrained(target)
    with _building(target, _TOKENIZER_FILES, weights=False, source=gguf_file) as ready:
        if ready:
            return AutoTokenizer.from_pretrained(target)
        require_gguf()
        with _reading(gguf_file):
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        _save_atomically(target, tokenizer.save_pretrained, "tokenizer_config.json")
    return tokenizer


def gguf_to_hf(gguf_file: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Convert ``gguf_file`` to a safetensors HF folder (model + tokenizer), cached by content hash."""
    gguf_file = Path(gguf_file)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "gguf"
    target = root / sha256_file(gguf_file)
    if target.is_dir() and _entry_problem(target, _MODEL_FILES, weights=True) is None:
        return target
    with _building(target, _MODEL_FILES, weights=True, source=gguf_file) as ready:
        if not ready:
            _convert(gguf_file, target)
    return target


def _convert(gguf_file: Path, target: Path) -> None:
    """De-quantise ``gguf_file`` with transformers and save model and tokenizer as the cache entry ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_gguf()
    _require_accelerate()
    log.info("converting %s to a Hugging Face folder at %s (once)", gguf_file, target)
    with _reading(gguf_file):
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
