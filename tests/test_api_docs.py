"""The API reference builds from the docstrings (``python docs/build_api.py DIR``, pdoc): every module imports and
gets a page, and pdoc reports no error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _builder():
    spec = importlib.util.spec_from_file_location("build_api", REPO / "docs" / "build_api.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_api_reference_builds(tmp_path: Path) -> None:
    builder = _builder()
    errors = builder.build(tmp_path / "api")
    assert errors == []
    names = builder.modules()
    assert {"rerank", "rerank.heads.base", "rerank.methods", "rerank.trainers.retriever", "rerank.client"} <= set(names)
    page = (tmp_path / "api" / "rerank" / "heads" / "base.html").read_text(encoding="utf-8")
    assert "Reranker" in page and "rerank_batch" in page  # the docstring-bearing API, not an empty page
    assert (tmp_path / "api" / "index.html").is_file()


def test_a_module_that_does_not_import_is_an_error(tmp_path: Path, monkeypatch) -> None:
    """The build fails loudly on a broken module instead of leaving its page out."""
    builder = _builder()
    monkeypatch.setattr(builder, "modules", lambda: ["rerank.types", "rerank.no_such_module"])
    errors = builder.build(tmp_path / "api")
    assert errors and any("no_such_module" in e for e in errors)
