"""Shared-cache audit (caches), findings 3-6 for the GGUF conversion cache and the LLM answer cache: a damaged or
half-built GGUF entry is rebuilt with a warning naming it (never "Directory not empty", never advice to convert a
pickle), converters of one file take turns, and a damaged, misplaced or read-only ``llm-calls.sqlite`` gives one
line naming it and the fixes, or (read-only) serves its hits and stores nothing, with one warning."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rerank.backends import gguf as gguf_mod
from rerank.backends.gguf import gguf_to_hf, gguf_tokenizer
from rerank.errors import ConfigError


@pytest.fixture(scope="module")
def converted(tiny_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny GGUF file, a pristine copy of its converted cache entry)."""
    from rerank.testing import tiny_gguf

    root = tmp_path_factory.mktemp("gguf-audit4")
    gguf = tiny_gguf(tiny_llm_dir, root / "tiny.gguf")
    entry = gguf_to_hf(gguf, root / "cache")
    shutil.copytree(entry, root / "pristine")
    return gguf, root / "pristine"


def _entry(converted: tuple[Path, Path], cache: Path) -> Path:
    """A fresh copy of the pristine entry at its place under ``cache``."""
    gguf, pristine = converted
    from rerank.utils.files import sha256_file

    entry = cache / sha256_file(gguf)
    shutil.copytree(pristine, entry)
    return entry


def _complete(entry: Path, pristine: Path) -> bool:
    return entry.is_dir() and all((entry / f.name).read_bytes() == f.read_bytes() for f in pristine.iterdir()
                                  if f.name != "SOURCE")


def test_gguf_entry_without_its_marker_is_converted_again(converted: tuple[Path, Path], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Finding 3: a folder without config.json (killed older version, deleted marker) used to be converted in full,
    then fail with 'Directory not empty'; it is replaced by a new conversion, with a warning naming it."""
    gguf, pristine = converted
    entry = _entry(converted, tmp_path)
    (entry / "config.json").unlink()
    with caplog.at_level(logging.WARNING, logger="rerank.backends.gguf"):
        assert gguf_to_hf(gguf, tmp_path) == entry
    assert _complete(entry, pristine)
    assert f"GGUF cache entry {entry} is damaged (config.json is missing)" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("damage, problem", [
    ("del_weights", "it holds no .safetensors weights"),
    ("trunc_weights", "model.safetensors is truncated or damaged"),
    ("zero_tokenizer", "tokenizer.json is empty"),
    ("garbage_config", "config.json is not valid JSON"),
    ("dangling_symlink", "it is a file or a dangling symlink, not a folder"),
])
def test_damaged_gguf_entry_is_rebuilt_and_named(converted: tuple[Path, Path], tmp_path: Path, damage: str,
                                                 problem: str, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 5: a damaged entry used to be returned as is, and loading it failed naming no entry (advice to convert
    a pickle or download again, or a bare JSON error); it is detected and rebuilt, the warning naming the entry."""
    gguf, pristine = converted
    entry = _entry(converted, tmp_path)
    if damage == "del_weights":
        (entry / "model.safetensors").unlink()
    elif damage == "trunc_weights":
        (entry / "model.safetensors").write_bytes((entry / "model.safetensors").read_bytes()[:20000])
    elif damage == "zero_tokenizer":
        (entry / "tokenizer.json").write_text("")
    elif damage == "garbage_config":
        (entry / "config.json").write_text("{bad")
    else:
        shutil.rmtree(entry)
        entry.symlink_to(tmp_path / "gone")
    calls = []

    def convert(source: Path, target: Path) -> None:  # the real conversion is checked above; this one copies
        calls.append(source)
        shutil.copytree(pristine, target)

    monkeypatch.setattr(gguf_mod, "_convert", convert, raising=False)
    with caplog.at_level(logging.WARNING, logger="rerank.backends.gguf"):
        assert gguf_to_hf(gguf, tmp_path) == entry
    assert calls == [gguf] and _complete(entry, pristine) and not entry.is_symlink()
    assert f"GGUF cache entry {entry} is damaged ({problem})" in caplog.text
    caplog.clear()
    assert gguf_to_hf(gguf, tmp_path) == entry and calls == [gguf] and caplog.text == ""  # reused now


def test_damaged_gguf_entry_that_cannot_be_removed_names_it(converted: tuple[Path, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's damaged entry (no right to move it) is one error naming the entry and the fix."""
    gguf, _ = converted
    entry = _entry(converted, tmp_path)
    (entry / "config.json").unlink()

    def refuse(src: Any, dst: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gguf_mod.os, "replace", refuse)
    monkeypatch.setattr(gguf_mod.os, "rename", refuse)
    with pytest.raises(ConfigError, match=rf"GGUF cache entry {entry} is damaged \(config.json is missing\) and "
                                          r"cannot be replaced \(Permission denied\): remove that folder"):
        gguf_to_hf(gguf, tmp_path)


def test_damaged_gguf_tokenizer_entry_is_rebuilt(converted: tuple[Path, Path], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    gguf, _ = converted
    first = gguf_tokenizer(gguf, tmp_path)
    entry = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    (entry / "tokenizer_config.json").write_text("{trunc")
    with caplog.at_level(logging.WARNING, logger="rerank.backends.gguf"):
        again = gguf_tokenizer(gguf, tmp_path)
    assert again.encode("a cat sat") == first.encode("a cat sat")
    assert f"GGUF cache entry {entry} is damaged (tokenizer_config.json is not valid JSON)" in caplog.text


def test_concurrent_gguf_converters_convert_once(converted: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two converters of one file: the second waits on the entry's lock, then reuses the first's folder (each used to
    convert in full)."""
    from transformers import AutoModelForCausalLM

    gguf, pristine = converted
    real = AutoModelForCausalLM.from_pretrained
    loads = []

    def slow(*args: Any, **kwargs: Any) -> Any:
        loads.append(kwargs.get("gguf_file"))
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", slow)
    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(gguf_to_hf(gguf, tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2 and out[0] == out[1] and _complete(out[0], pristine)
    assert loads == [gguf.name]
