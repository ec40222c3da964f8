"""Prompts are data: YAML template files shipped in the method packages (``rerank/methods/<name>/*.yaml``), a file
given by path, or a template given inline as a mapping (how a trained model's ``rerank.json`` stores it).

A template has a ``system`` and a ``user`` Jinja2 text and optional extra fields a head reads (e.g. the identifier
scheme), which the texts may use as variables. ``load_template("first")`` loads the shipped ``first.yaml``; a path
loads that file instead. The shipped names are every method's templates plus the data recipes' ones in
``rerank/prompts/templates``. A template file is read as a YAML config is (:func:`rerank.config.load_yaml`): a key
given twice, invalid YAML or a byte that is not UTF-8 is a one-line error naming the file. A head loads its template
with :func:`head_template`, which refuses another method's shipped template (and lists only the head's own for an
unknown name), any template reading a variable the head does not give, any leaving out one the head ranks by, and any
key that neither the head's own templates have, nor its class declares (``template_keys``), nor its texts read (a
misspelt ``positve:`` would be dropped). A template a trained model folder's ``rerank.json`` records
(:func:`mark_recorded`) is loaded as recorded: such a key is a warning naming that file (the model was trained with it),
and any other refusal names the file. :meth:`PromptTemplate.sha256` is the content hash results record and are reused
by.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml

from rerank.config import load_yaml
from rerank.errors import ConfigError

__all__ = [
    "RANKED_INPUTS",
    "TEMPLATE_DIR",
    "PromptTemplate",
    "RecordedKey",
    "available_templates",
    "head_template",
    "load_template",
    "mark_recorded",
    "require_reads",
    "shipped_templates",
    "template_file",
    "template_variables",
]

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "templates"
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
_KNOWN = ("name", "system", "user", "assistant_prefix")
#: the variables that carry what a head ranks: the query and the candidates' text (a document, a pair of them, a
#: window's passages). A head needs those of them that every one of its own shipped templates reads
#: (:func:`head_template`): a template without one gives every candidate (or every query) the same prompt
RANKED_INPUTS = frozenset({"query", "document", "document0", "document1", "passages"})


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

    def sha256(self) -> str:
        """The sha256 of what shapes the prompts and their answers: :meth:`to_dict` without ``name``, which only labels
        it, as sorted JSON (training's ``template_digest``, formula 2): the key a result is recorded and reused by."""
        content = {k: v for k, v in self.to_dict().items() if k != "name"}
        text = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shipped_templates() -> dict[str, Path]:
    """Shipped template name -> file: every method's templates and the data recipes' ones (each name is one file:
    loading the method descriptors refuses a name shipped twice, naming both files)."""
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
        extra={str(k): v for k, v in data.items() if k not in _KNOWN},  # plain keys: no recorded mark
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
    elif not path.is_file():
        raise ConfigError(f"prompt template {path} is not a file: give a template YAML file")
    return _from_mapping(load_yaml(path), str(path), str(path))


def template_file(spec: str | Path | Mapping[str, Any]) -> Path | None:
    """The file a template ``spec`` is read from (a shipped name's file, a path as given), or None for an inline
    mapping or an unknown name."""
    if isinstance(spec, Mapping):
        return None
    path = Path(spec)
    return shipped_templates().get(str(spec)) if not path.suffix else path


def _read_variables(template: PromptTemplate) -> set[str]:
    """Every variable the template's system and user texts read (its extra fields included)."""
    found: set[str] = set()
    for text in (template.system or "", template.user):
        try:
            found |= jinja2.meta.find_undeclared_variables(_ENV.parse(text))
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(f"prompt template {template.source}: line {e.lineno}: {e.message}") from None
    return found


def template_variables(template: PromptTemplate) -> set[str]:
    """The variables the template's system and user texts read that its own extra fields do not define (what the
    head must give when rendering); a text that is not valid Jinja2 is a one-line :class:`ConfigError`."""
    return _read_variables(template) - set(template.extra)


@cache
def _method_variables(method: str) -> tuple[frozenset[str], frozenset[str]]:
    """(variables the method's own templates read, their extra fields): what its head gives a template to render."""
    from rerank.methods import get_method

    own = [load_template(Path(t).stem) for t in get_method(method).templates]
    return frozenset().union(*map(template_variables, own)), frozenset().union(*(t.extra for t in own))


@cache
def _method_needs(method: str) -> frozenset[str]:
    """The :data:`RANKED_INPUTS` every one of the method's own templates reads: what its head ranks by, so what any
    template for it must read (a head whose own prompts leave out the query needs none)."""
    from rerank.methods import get_method

    own = [_read_variables(load_template(Path(t).stem)) for t in get_method(method).templates]
    return frozenset(RANKED_INPUTS.intersection(*own))


#: a Jinja2 loop over one variable, ``{% for p in passages %}…{% endfor %}`` (group 1: the variable looped over)
_LOOP = re.compile(r"\{%-?\s*for\s+\w+\s+in\s+(\w+)\s*-?%\}.*?\{%-?\s*endfor\s*-?%\}", re.DOTALL)


@cache
def _method_loops(method: str) -> dict[str, str]:
    """Variable -> the loop over it in the method's own templates, on one line (``{% for p in passages %}[{{ p.id }}]
    {{ p.text }} {% endfor %}``): how a template of that head reads a list."""
    from rerank.methods import get_method

    loops: dict[str, str] = {}
    for t in get_method(method).templates:
        own = load_template(Path(t).stem)
        for text in (own.system or "", own.user):
            for m in _LOOP.finditer(text):
                loops.setdefault(m.group(1), " ".join(m.group(0).split()))
    return loops


def _missing_hint(template: PromptTemplate, names: list[str], method: str) -> str:
    """How to read the left-out variables ``names``: those written Python-style (``{query}``, which Jinja2 leaves as
    text) in Jinja2's style, a list the ``method``'s own templates loop over by that loop, the others added as
    ``{{ name }}`` to the template's text."""
    texts = (template.system or "", template.user)
    slips = [n for n in names
             if any(re.search(r"(?<!\{)\{\s*" + re.escape(n) + r"\s*\}(?!\})", text) for text in texts)]
    shown = names if not slips else slips
    loops = _method_loops(method) if method else {}
    jinja = ", ".join(loops.get(n, f"{{{{ {n} }}}}") for n in shown)
    lists = [n for n in shown if n in loops]
    how = f" ({', '.join(lists)}: a list, looped over as the {method} head's own template does)" if lists else ""
    if slips:
        return (f"it writes {', '.join(f'{{{n}}}' for n in slips)} in Python's style, which Jinja2 leaves as text: "
                f"write {jinja}{how}")
    return f"add {jinja} to its system or user text{how}"


#: the (rerank.json, key) pairs already warned about
_WARNED_KEYS: set[tuple[str, str]] = set()
_WARNED_LOCK = threading.Lock()


class RecordedKey(str):
    """A key of a template mapping a model folder's ``rerank.json`` records, carrying that file and the key's
    recorded value: a config's copy of the mapping keeps its keys, a user's own mapping of the same content has none."""

    record_file: str
    value: Any

    def __new__(cls, key: str, record_file: str, value: Any) -> RecordedKey:
        self = super().__new__(cls, key)
        self.record_file, self.value = record_file, copy.deepcopy(value)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return RecordedKey, (str(self), self.record_file, self.value)


def _represent_recorded(dumper: yaml.representer.SafeRepresenter, key: RecordedKey) -> yaml.Node:
    """A :class:`RecordedKey` as the plain string it is (libyaml's emitter takes only a plain ``str``)."""
    return dumper.represent_str(str(key))


# on the base class the safe dumpers share (``yaml.safe_dump``, libyaml's too): registering on each dumper would give
# each its own table, which representers another library adds to the base later would no longer reach
yaml.representer.SafeRepresenter.add_representer(RecordedKey, _represent_recorded)


def mark_recorded(spec: Any, record_file: str | Path) -> Any:
    """The template mapping ``spec`` marked as the one the trained model folder's ``record_file`` (its
    ``rerank.json``) records (each key a :class:`RecordedKey`): :func:`head_template` loads it as recorded (a key its
    head does not read is a warning naming the file, not an error). Anything but a mapping is returned as is."""
    if not isinstance(spec, Mapping):
        return spec
    return {RecordedKey(str(k), str(record_file), v): v for k, v in spec.items()}


def _recorded_in(spec: Any) -> str | None:
    """The ``rerank.json`` that records the template mapping ``spec`` (:func:`mark_recorded`): every key marked by
    that one file and holding its recorded value; else None (a user's mapping, or a recorded one changed)."""
    if not isinstance(spec, Mapping) or not spec:
        return None
    files = {k.record_file if isinstance(k, RecordedKey) and k.value == v else None for k, v in spec.items()}
    return next(iter(files)) if len(files) == 1 else None


def head_template(spec: str | Path | Mapping[str, Any], method: str, head: type | None = None) -> PromptTemplate:
    """The template of a ``method`` head (a shipped name, a file or a mapping, as :func:`load_template`). Another
    method's shipped template is refused (its answer format is not what the head reads: ERank on the yes/no prompt
    scored silently, yes-no on the listwise one failed at its first call), and so is a template reading a variable
    the head does not give or leaving out one it ranks by (:data:`RANKED_INPUTS` its own templates all read: a
    Python-style ``{query}`` is text to Jinja2, and every candidate then gets the same prompt and score), and so is a
    key none of its own templates has that the texts do not read (a typo the head would silently not read). A head of
    no registered method with prompts is checked by the variables it declares (:attr:`Reranker.ranked_inputs
    <rerank.heads.base.Reranker.ranked_inputs>`), when it sets its template. ``head`` (the head class, optional) is
    named in the messages, and the keys its :attr:`~rerank.heads.base.Reranker.template_keys` declares are accepted.
    A mapping a model folder's ``rerank.json`` records (:func:`mark_recorded`) keeps a stray key with a warning
    naming that file, and any other refusal of it names the file."""
    from rerank.methods import all_methods

    methods = all_methods()
    if method not in methods or not methods[method].templates:
        return load_template(spec)
    own = [Path(t).stem for t in methods[method].templates]
    if isinstance(spec, (str, Path)) and not Path(spec).suffix and str(spec) not in own:
        owner = next((m.name for m in methods.values() if str(spec) in {Path(t).stem for t in m.templates}), None)
        if owner is not None or str(spec) in shipped_templates():
            whose = f"the {owner} method's prompt" if owner else "a data recipe's prompt"
            raise ConfigError(f"{method}: template {str(spec)!r} is {whose}, not one the {method} head reads; use its "
                              f"own ({', '.join(own)}) or a template file written for it")
        raise ConfigError(f"{method}: unknown prompt template {str(spec)!r}; the {method} head's own: "
                          f"{', '.join(own)} (or a template file written for it)")
    recorded = _recorded_in(spec)
    template = load_template({str(k): v for k, v in spec.items()} if isinstance(spec, Mapping) else spec)
    who = (getattr(head, "method", "") or head.__name__) if head is not None else method
    try:
        gives, extras = _method_variables(method)
        unknown = sorted(template_variables(template) - gives - extras)
        if unknown:
            raise ConfigError(f"{who}: template {template.source} reads {', '.join(unknown)}, which the {who} head "
                              f"does not give (it gives {', '.join(sorted(gives))}); define them in the template or "
                              f"remove them")
        require_reads(template, _method_needs(method), who, method)
        _check_keys(template, who, extras | frozenset(getattr(head, "template_keys", ())), recorded)
    except ConfigError as e:
        if recorded is None:
            raise
        raise ConfigError(f"{recorded}: the template this model was trained with: {e}") from None
    return template


def _check_keys(template: PromptTemplate, who: str, extras: frozenset[str], recorded: str | None = None) -> None:
    """Refuse a key of ``template`` that the ``who`` head does not read (``extras``: its method's own templates'
    fields besides ``name/system/user/assistant_prefix``, and its class's ``template_keys``) and that its texts do not
    read: a misspelt ``positve:`` or ``identifier:`` would be dropped and the head's default used. Names the closest
    valid key. A template ``recorded`` in a model folder's ``rerank.json`` is only warned about, once per file and key,
    naming that file: the model was trained with it as it is."""
    read = _read_variables(template)
    for key in template.extra:
        if key in extras or key in read:
            continue
        valid = sorted({*_KNOWN, *extras})
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        guess = f"did you mean {close[0]!r}? " if close else ""
        if recorded is not None:
            with _WARNED_LOCK:
                if (recorded, str(key)) in _WARNED_KEYS:
                    continue
                _WARNED_KEYS.add((recorded, str(key)))
            log.warning("%s: its template has key %r, which the %s head does not read and its texts do not use; "
                        "loaded as recorded (the model was trained with it)", recorded, key, who)
            continue
        raise ConfigError(f"{who}: template {template.source} has key {key!r}, which the {who} head does not "
                          f"read and its texts do not use; {guess}its keys: {', '.join(valid)} (or read it in the "
                          f"system or user text; a head class that reads it declares it in template_keys)")


def require_reads(template: PromptTemplate, names: Iterable[str], head: str, method: str = "") -> None:
    """Refuse ``template`` when its texts leave out one of ``names``, the variables the ``head`` ranks by (without
    one, each candidate or query gets the same prompt and score), saying how to read it (by ``method``'s own
    templates where the head has one)."""
    missing = sorted(set(names) - _read_variables(template))
    if missing:
        raise ConfigError(f"{head}: template {template.source} never reads {', '.join(missing)}, which the {head} "
                          f"head ranks by (without it each candidate or query gets the same prompt); "
                          f"{_missing_hint(template, missing, method)}")
