"""Prompts are data: YAML template files shipped in the method packages (``rerank/methods/<name>/*.yaml``), a file
given by path, or a template given inline as a mapping (how a trained model's ``rerank.json`` stores it).

A template has a ``system`` and a ``user`` Jinja2 text and optional extra fields a head reads (e.g. the identifier
scheme), which the texts may use as variables. ``load_template("first")`` loads the shipped ``first.yaml``; a path
loads that file instead. The shipped names are every method's templates plus the data recipes' ones in
``rerank/prompts/templates``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from rerank.errors import ConfigError

__all__ = ["PromptTemplate", "load_template", "available_templates", "shipped_templates", "TEMPLATE_DIR"]

TEMPLATE_DIR = Path(__file__).parent / "templates"
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
_KNOWN = ("name", "system", "user", "assistant_prefix")


@dataclass
class PromptTemplate:
    """A chat prompt: system + user messages rendered from Jinja2, plus head-specific settings in ``extra``."""

    name: str
    user: str
    system: str | None = None
    assistant_prefix: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def messages(self, **variables: Any) -> list[dict[str, str]]:
        """Render to chat messages (missing variables are errors, not empty strings). The template's own extra fields
        are variables too (e.g. ``{{ instruction }}`` with an ``instruction:`` default); given variables win."""
        variables = {**self.extra, **variables}
        try:
            msgs = []
            if self.system:
                msgs.append({"role": "system", "content": _ENV.from_string(self.system).render(**variables)})
            msgs.append({"role": "user", "content": _ENV.from_string(self.user).render(**variables)})
        except jinja2.UndefinedError as e:
            raise ConfigError(f"prompt template {self.name!r}: {e}") from None
        return msgs

    def render_text(self, source: str, **variables: Any) -> str:
        """Render one more Jinja2 text of the template (e.g. a piece of a prompt a head tokenises apart) with the
        template's extra fields and ``variables``, as :meth:`messages` renders ``user``."""
        try:
            return _ENV.from_string(source).render(**{**self.extra, **variables})
        except jinja2.UndefinedError as e:
            raise ConfigError(f"prompt template {self.name!r}: {e}") from None

    @property
    def source(self) -> str:
        """Where the template came from, for messages: its file, or its name when it was given inline."""
        return self.path or f"{self.name!r} (inline)"

    def to_dict(self) -> dict[str, Any]:
        """The whole template as a mapping (``load_template`` of it gives an equal template, without ``path``)."""
        out: dict[str, Any] = {"name": self.name}
        if self.system is not None:
            out["system"] = self.system
        out["user"] = self.user
        out["assistant_prefix"] = self.assistant_prefix
        out.update(self.extra)
        return out


def shipped_templates() -> dict[str, Path]:
    """Shipped template name -> file: every method's templates and the data recipes' ones."""
    from rerank.methods import template_files

    out = {p.stem: p for p in sorted(TEMPLATE_DIR.glob("*.yaml"))}
    out.update(template_files())
    return out


def available_templates() -> list[str]:
    """Names of the shipped templates, sorted."""
    return sorted(shipped_templates())


def _from_mapping(data: Mapping[str, Any], where: str, path: str | None) -> PromptTemplate:
    if "user" not in data:
        raise ConfigError(f"prompt template {where} has no 'user' text")
    return PromptTemplate(
        name=str(data.get("name", Path(where).stem)),
        user=str(data["user"]),
        system=data.get("system"),
        assistant_prefix=str(data.get("assistant_prefix", "")),
        extra={k: v for k, v in data.items() if k not in _KNOWN},
        path=path,
    )


def load_template(spec: str | Path | Mapping[str, Any]) -> PromptTemplate:
    """Load a shipped template by name, any template file by path, or an inline template mapping."""
    if isinstance(spec, Mapping):
        return _from_mapping(spec, str(spec.get("name", "inline template")), None)
    path = Path(spec)
    if not path.suffix:
        shipped = shipped_templates()
        if str(spec) not in shipped:
            raise ConfigError(f"unknown prompt template {str(spec)!r}; shipped: {', '.join(sorted(shipped))}")
        path = shipped[str(spec)]
    elif not path.exists():
        raise ConfigError(f"prompt template file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"prompt template {path}: expected a mapping")
    return _from_mapping(data, str(path), str(path))
