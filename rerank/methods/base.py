"""The descriptor every method package declares once: what its name is and where its pieces live.

Pieces are ``"module:Attr"`` strings, imported on first use, so reading every descriptor imports no model code. A
descriptor checks its own fields when built (the kind, the shape of every piece and template name, which pieces go
with which kind); :meth:`Method.resolve` imports a piece, and a piece that does not import, or a head / task / trainer
class that names another method, is a one-line :class:`~rerank.errors.ConfigError` naming the descriptor field.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from rerank.errors import ConfigError
from rerank.utils.registry import import_target

__all__ = ["KINDS", "PIECES", "PROMPT_OPTIONS", "TEACHER_OPTIONS", "TEACHER_ROLES", "TRAIN_OPTIONS", "GRPODefaults",
           "Kind", "Method", "resolve"]

Kind = Literal["reranker", "retriever"]
#: the method kinds (a reranker has an inference head, a retriever its own trainer)
KINDS: tuple[str, ...] = get_args(Kind)
#: the descriptor fields that name a piece as ``"module:Attr"``
PIECES = ("head", "task", "sft", "trainer", "teacher_labels", "configure_train")
#: the shared ``sft`` / ``grpo`` options that only some methods' training reads: a method declares those it reads in
#: ``train_reads``, and the others, set to other than their defaults, are refused for it
TRAIN_OPTIONS = ("template", "max_doc_tokens", "max_query_tokens", "max_length", "reasoning", "erank_reference",
                 "data.negatives_per_positive")
#: what a method trained through its task reads (its prompt, cut by the shared LLM trainers): ``train_reads``' default
PROMPT_OPTIONS = ("template", "max_doc_tokens", "max_query_tokens", "max_length")
#: the teacher models a ``teacher_labels`` recipe can give (its keys): a method's ``teacher_roles`` are some of them
TEACHER_ROLES = ("teacher", "pointwise_teacher", "listwise_teacher")
#: the ``teacher_labels`` options only some modes read: a method's ``teacher_options`` names those its mode reads
TEACHER_OPTIONS = ("score_map", "group_size", "seed")
#: the class attribute of a head / task (``method``) or a trainer (``name``) that must equal the method's name
_NAMED_BY = {"head": "method", "task": "method", "trainer": "name"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_ROOT = Path(__file__).resolve().parents[2]


def resolve(target: str) -> Any:
    """Import ``"module:Attr"`` and return the attribute; a target that does not exist is a one-line
    :class:`ConfigError`. A method's own piece is imported with :meth:`Method.resolve`, which also checks it."""
    return import_target(target, "cannot resolve")


def shown_path(path: str | Path) -> str:
    """A file as messages show it: relative to the checkout holding ``rerank/`` when inside it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(_ROOT))
    except ValueError:
        return str(p)


@dataclass(frozen=True)
class GRPODefaults:
    """A method's GRPO defaults, used when the config leaves them unset: the paper's where it gives them (ERank, 2025:
    5 generations, lr 1e-6; GroupRank, AQ-MedAI 2025: 8, lr 1e-5), GroupRank's for the others."""

    num_generations: int
    learning_rate: float


@dataclass(frozen=True)
class Method:
    """One method: a reranker (inference head, optional training pieces) or a retriever (its own trainer).

    ``head``: the inference head class (registered reranker name = ``name``). ``task``: the LLM training task
    (examples -> SFT / GRPO rows, completion parser, rewards) used by the shared ``sft`` and ``grpo`` trainers.
    ``sft``: a method's own SFT function ``(config, train, dev, ctx) -> summary`` when it does not train through a
    task (the cross-encoder). ``trainer``: a method's own trainer class, registered as ``rerank train NAME``.
    ``configure_train``: a function ``(config, trainer) -> None`` the shared ``sft`` / ``grpo`` configs call while
    they resolve their options (``trainer`` is ``"sft"`` or ``"grpo"``): it derives the method's own defaults with
    ``config._derive(name, value)`` and refuses values its training cannot take (a one-line ``ConfigError``), before
    the shared defaults fill what it left unset (``max_query_tokens`` 32, ``max_length`` 1024 for a ``task``).
    ``train_reads``: those of :data:`TRAIN_OPTIONS` its training reads (default :data:`PROMPT_OPTIONS`); the shared
    configs refuse the others when set. ``sft_losses``: the accepted SFT ``loss`` values, the first the default.
    ``grpo``: present when GRPO trains the method. ``teacher_labels``: the data recipe's teacher-label mode of the
    method (``(recipe, unit, docs, row) -> rows``), ``teacher_roles`` the teacher models it needs (of
    :data:`TEACHER_ROLES`, the recipe's keys) and ``teacher_options`` the recipe options only some modes read that
    it reads (of :data:`TEACHER_OPTIONS`). ``templates``: prompt files in the package, the first the head's default.
    ``windowed``: its training task cuts candidates into windows (``window``, ``window_order``). ``lora``: its SFT
    takes the ``lora`` options (the shared LLM trainers do; a method whose own ``sft`` fine-tunes in full says
    False, and ``lora.enabled`` is refused for it). ``pipeline_tag`` / ``library_name``: the model card's Hub
    metadata.
    """

    name: str
    kind: Kind
    package: str
    summary: str
    head: str | None = None
    task: str | None = None
    sft: str | None = None
    trainer: str | None = None
    sft_losses: tuple[str, ...] = ()
    grpo: GRPODefaults | None = None
    teacher_labels: str | None = None
    configure_train: str | None = None
    train_reads: tuple[str, ...] = PROMPT_OPTIONS
    teacher_roles: tuple[str, ...] = ("teacher",)
    teacher_options: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    windowed: bool = False
    lora: bool = True
    pipeline_tag: str | None = None
    library_name: str = "transformers"

    def __post_init__(self) -> None:
        """Check the fields that need no import: a mistake is one line naming the descriptor, not a half-registered
        method or a traceback at first use."""
        where = f"method {self.name!r} ({self.source})"
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"method {self.name!r} ({self.source}): a method name is letters, digits, '.', '_' and "
                              f"'-', starting with a letter or digit")
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for piece in PIECES:
            target = getattr(self, piece)
            if target is not None and (not isinstance(target, str) or not _TARGET.fullmatch(target)):
                raise ConfigError(f"{where}: {piece}={target!r} is not 'package.module:Attr'")
        for name in ("sft_losses", "teacher_roles", "teacher_options", "templates", "train_reads"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}: {name} must be a tuple of names, got {value!r} (one name: ('x',))")
        unknown = [o for o in self.train_reads if o not in TRAIN_OPTIONS]
        if unknown:
            raise ConfigError(f"{where}: train_reads: {unknown[0]!r} is not one of the options only some methods read "
                              f"({', '.join(TRAIN_OPTIONS)})")
        for name, known, what in (("teacher_roles", TEACHER_ROLES, "a teacher key of rerank data build's "
                                   "teacher_labels recipe"),
                                  ("teacher_options", TEACHER_OPTIONS, "an option only some teacher-label modes read")):
            unknown = [v for v in getattr(self, name) if v not in known]
            if unknown:
                raise ConfigError(f"{where}: {name}: {unknown[0]!r} is not {what} ({', '.join(known)}); use those")
        bad = [t for t in self.templates if not t.endswith(".yaml") or "/" in t or "\\" in t]
        if bad:
            raise ConfigError(f"{where}: templates: {bad[0]!r} is not a .yaml file name in the method's folder")
        if self.grpo is not None and not isinstance(self.grpo, GRPODefaults):
            raise ConfigError(f"{where}: grpo must be a GRPODefaults or None, got {self.grpo!r}")
        if self.kind == "reranker":
            if self.head is None:
                raise ConfigError(f"{where}: a reranker method needs head= (its inference head)")
            if self.trainer is not None:
                raise ConfigError(f"{where}: trainer= is a retriever method's own trainer; a reranker trains "
                                  f"through task= or sft=")
        else:
            given = [p for p in ("head", "task", "sft", "grpo", "teacher_labels", "configure_train")
                     if getattr(self, p) is not None]
            given += ["templates"] if self.templates else []
            if self.trainer is None:
                raise ConfigError(f"{where}: a retriever method needs trainer= (its own trainer class)")
            if given:
                raise ConfigError(f"{where}: {given[0]}= is a reranker method's piece; a retriever method has "
                                  f"trainer= only")
        if self.grpo is not None and self.task is None:
            raise ConfigError(f"{where}: grpo= needs task= (GRPO trains through the method's task)")

    @property
    def source(self) -> str:
        """The file that declares the method (its package's ``__init__.py``), for messages."""
        module = sys.modules.get(self.package) if isinstance(self.package, str) else None
        file = getattr(module, "__file__", None)
        return shown_path(file) if file else str(self.package)

    def resolve(self, piece: str) -> Any:
        """The descriptor's ``piece`` (head, task, sft, trainer, teacher_labels, configure_train) imported. A piece
        that does not exist, or a head / task (``method``) or trainer (``name``) class naming another method, is a
        one-line :class:`ConfigError` naming the descriptor field and, for a wrong name, the class's file and both
        names."""
        target = getattr(self, piece)
        if target is None:
            raise ConfigError(f"method {self.name!r} ({self.source}) has no {piece}")
        obj = import_target(target, f"method {self.name!r} ({self.source}): {piece}")
        attr = _NAMED_BY.get(piece)
        if attr is not None and getattr(obj, attr, None) != self.name:
            try:
                file = shown_path(inspect.getfile(obj))
            except TypeError:
                file = target
            raise ConfigError(f"{file}: {getattr(obj, '__name__', target)}.{attr} is {getattr(obj, attr, None)!r}, "
                              f"but it is the {piece}= of method {self.name!r} ({self.source}): set "
                              f"{attr} = {self.name!r} in the class")
        return obj

    @property
    def folder(self) -> Path:
        """The method's package folder (its template files live there)."""
        return Path(importlib.import_module(self.package).__file__).parent  # type: ignore[arg-type]

    @property
    def default_template(self) -> str:
        """The name of the head's default prompt template ('' for methods without prompts)."""
        return Path(self.templates[0]).stem if self.templates else ""

    def trains_with(self, trainer: str) -> bool:
        """Whether the shared trainer ``sft`` / ``grpo`` trains this method."""
        if trainer == "sft":
            return self.task is not None or self.sft is not None
        if trainer == "grpo":
            return self.task is not None and self.grpo is not None
        return False
