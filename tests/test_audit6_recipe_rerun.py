"""Building a recipe again into a folder that holds a finished build (audit s43/shipped, finding 3): the refusal
said only "choose another --output or remove it", not that the recipe's options had changed, nor which."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rerank.data_recipes.base import build
from rerank.errors import ConfigError


def _synth(dataset: Path, **changes: Any) -> dict[str, Any]:
    return {"recipe": "query_synthesis", "source": {"dataset": str(dataset)}, "generator": {"kind": "sentence"},
            "max_docs": 4, "min_doc_chars": 10, **changes}


def test_a_changed_recipe_names_the_options_that_changed(tiny_beir_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q"
    build(_synth(tiny_beir_dir), out, progress=False)
    with pytest.raises(ConfigError) as e:
        build(_synth(tiny_beir_dir, max_docs=5, min_doc_chars=12), out, resume=True, progress=False)
    message = str(e.value)
    assert "with other options (max_docs, min_doc_chars)" in message and "remove the folder" in message
    assert "\n" not in message


def test_the_same_recipe_without_resume_says_resume_reuses_it(tiny_beir_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q"
    build(_synth(tiny_beir_dir), out, progress=False)
    with pytest.raises(ConfigError, match="already holds this recipe's finished build: pass --resume to reuse it"):
        build(_synth(tiny_beir_dir), out, progress=False)
    assert build(_synth(tiny_beir_dir), out, resume=True, progress=False)["counts"]["rows"] > 0


def test_another_recipe_kind_is_named(tiny_beir_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q"
    build(_synth(tiny_beir_dir), out, progress=False)
    other = {"recipe": "hard_negatives", "source": {"dataset": str(tiny_beir_dir)}, "first_stage": {"retriever": "bm25"}}
    with pytest.raises(ConfigError, match=r"already holds a finished build of another recipe \(query_synthesis"):
        build(other, out, resume=True, progress=False)
