"""A new method copied from a built-in (audit s41/branching): the shared training code decides by the method's
descriptor and pieces, never by its name, so the copy gets exactly the training behaviour of the built-in it copies:
the same derived defaults (``configure_train``), the same refusals of options it does not read (``train_reads``), its
own name in the trained model's ``rerank.json``, and its own teacher roles in ``rerank data build``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rerank.methods as methods_pkg
from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.methods import get_method
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from rerank.trainers.sft_trainer import SFTTrainConfig

#: the pieces a copy subclasses under its own name (the class attribute that names the method)
_CLASSES = {"head": "method", "task": "method"}


@pytest.fixture
def copy_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """``copy_method(builtin, name, pkg, files=...)`` writes a method package as docs/research.md "Writing a new
    method" says: the built-in's descriptor copied (``dataclasses.replace`` of its ``METHOD``: every field but the
    name, package, pieces and templates kept), its head and task subclassed with ``method`` renamed, its ``sft``
    function re-exported as a verbatim copy keeps it, its templates copied under the new name; then appends it to
    ``METHOD_PACKAGES`` (as tests/test_audit3_methods.py's ``add_method``). Restored afterwards."""
    root = tmp_path / "extra_methods"
    root.mkdir()
    monkeypatch.setattr(methods_pkg, "__path__", [*methods_pkg.__path__, str(root)])
    added: list[str] = []

    def copy(builtin: str, name: str, pkg: str, files: dict[str, str] | None = None, **fields: str) -> str:
        base = get_method(builtin)
        folder = root / pkg
        folder.mkdir()
        over: dict[str, str] = {"name": repr(name), "package": "__name__"}
        for piece, attr in _CLASSES.items():
            target = getattr(base, piece)
            if target is not None:
                module, cls = target.split(":")
                (folder / f"{piece}.py").write_text(f"from {module} import {cls} as Base\n"
                                                    f"class Copy(Base):\n    {attr} = {name!r}\n")
                over[piece] = repr(f"rerank.methods.{pkg}.{piece}:Copy")
        if base.sft is not None:
            module, fn = base.sft.split(":")
            (folder / "train.py").write_text(f"from {module} import {fn} as train_copy\n")
            over["sft"] = repr(f"rerank.methods.{pkg}.train:train_copy")
        templates = []
        for t in base.templates:
            new = t.replace(Path(base.folder).name, pkg, 1) if t.startswith(Path(base.folder).name) else f"{pkg}_{t}"
            (folder / new).write_text((base.folder / t).read_text())
            templates.append(new)
        if templates:
            over["templates"] = repr(tuple(templates))
        over.update(fields)
        for file, text in (files or {}).items():
            (folder / file).write_text(text)
        body = ", ".join(f"{k}={v}" for k, v in over.items())
        (folder / "__init__.py").write_text(f"import dataclasses\nfrom {base.package} import METHOD as BASE\n"
                                            f"METHOD = dataclasses.replace(BASE, {body})\n")
        importlib.invalidate_caches()
        added.append(pkg)
        monkeypatch.setattr(methods_pkg, "METHOD_PACKAGES", (*methods_pkg.METHOD_PACKAGES, pkg))
        monkeypatch.setattr(methods_pkg, "_METHODS", None)
        return str(folder)

    yield copy
    for pkg in added:
        for mod in [m for m in sys.modules if m == f"rerank.methods.{pkg}" or m.startswith(f"rerank.methods.{pkg}.")]:
            del sys.modules[mod]
        if hasattr(methods_pkg, pkg):
            delattr(methods_pkg, pkg)
    monkeypatch.setattr(methods_pkg, "_METHODS", None)


def _sft(head: str, **over: Any) -> SFTTrainConfig:
    return from_dict(SFTTrainConfig, {"model": "m", "head": head, "data": {"path": "t.jsonl"}, **over})


def _grpo(head: str, **over: Any) -> GRPOTrainConfig:
    return from_dict(GRPOTrainConfig, {"model": "m", "head": head, "data": {"path": "t.jsonl"}, "batch_size": 40,
                                       **over})


def _error(build: Callable[[], Any]) -> str | None:
    """The message of the ConfigError ``build`` raises (None when it builds)."""
    try:
        build()
    except ConfigError as e:
        return str(e)
    return None


# --- findings 3 and 4: the method's own training defaults (configure_train) ------------------------------------------


def test_a_cross_encoder_copy_derives_the_cross_encoders_defaults(copy_method: Callable[..., str]) -> None:
    """my-ce trained queries cut to 32 tokens (the cross-encoder: its head's 256) and took max_length 4, which its
    head then refused to load; unset max_length was None instead of 0 (the model's own)."""
    copy_method("cross-encoder", "my-ce", "my_ce")
    ours, theirs = _sft("my-ce"), _sft("cross-encoder")
    assert (ours.max_query_tokens, ours.max_length) == (theirs.max_query_tokens, theirs.max_length) == (256, 0)
    for bad in (4, -5):
        assert _error(lambda: _sft("my-ce", max_length=bad)) == _error(
            lambda: _sft("cross-encoder", max_length=bad)).replace("'cross-encoder'", "'my-ce'")
        with pytest.raises(ConfigError, match=rf"max_length must be >= 8 for the cross-encoder head 'my-ce' .* got "
                                              rf"{bad}$"):
            _sft("my-ce", max_length=bad)
    assert _sft("my-ce", max_length=8).max_length == 8


def test_the_query_cut_follows_the_copys_own_head_config(copy_method: Callable[..., str]) -> None:
    """The unset max_query_tokens is the method's own inference head's default, read from its config class."""
    head = ("from dataclasses import dataclass\n"
            "from rerank.methods.cross_encoder.head import CrossEncoderConfig, CrossEncoderReranker\n"
            "@dataclass\nclass ShortConfig(CrossEncoderConfig):\n    max_query_tokens: int = 100\n"
            "class Copy(CrossEncoderReranker):\n    method = 'short-ce'\n    config_class = ShortConfig\n")
    copy_method("cross-encoder", "short-ce", "short_ce", files={"head.py": head})
    assert _sft("short-ce").max_query_tokens == 100
    assert _sft("short-ce", max_query_tokens=7).max_query_tokens == 7
