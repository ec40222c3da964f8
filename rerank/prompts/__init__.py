"""Prompts are data: YAML template files shipped in ``rerank/prompts/templates`` or given by path.

A template has a ``system`` and a ``user`` Jinja2 text and optional extra fields a head reads (e.g. the identifier
scheme). ``load_template("first")`` loads the shipped ``first.yaml``; a path loads that file instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from rerank.errors import ConfigError

__all__ = ["PromptTemplate", "load_template", "available_templates", "TEMPLATE_DIR"]

TEMPLATE_DIR = Path(__file__).parent / "templates"
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


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
        """Render to chat messages (missing variables are errors, not empty strings)."""
        try:
            msgs = []
            if self.system:
                msgs.append({"role": "system", "content": _ENV.from_string(self.system).render(**variables)})
            msgs.append({"role": "user", "content": _ENV.from_string(self.user).render(**variables)})
        except jinja2.UndefinedError as e:
            raise ConfigError(f"prompt template {self.name!r}: {e}") from None
        return msgs


def available_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


def load_template(name_or_path: str | Path) -> PromptTemplate:
    """Load a shipped template by name, or any template file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TEMPLATE_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown prompt template {name_or_path!r}; shipped: {', '.join(available_templates())}")
    elif not path.exists():
        raise ConfigError(f"prompt template file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if "user" not in data:
        raise ConfigError(f"prompt template {path} has no 'user' text")
    known = {"name", "user", "system", "assistant_prefix"}
    return PromptTemplate(
        name=str(data.get("name", path.stem)),
        user=data["user"],
        system=data.get("system"),
        assistant_prefix=str(data.get("assistant_prefix", "")),
        extra={k: v for k, v in data.items() if k not in known},
        path=str(path),
    )
