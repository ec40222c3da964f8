"""Typed, strict configuration: YAML files + ``--set key=value`` overrides -> dataclasses.

Unknown keys are errors that name the key, so a typo never silently falls back to a default; an error about a key a
``--set`` override gave names that override (``--set foo=1: unknown key 'foo' …``), not the file. A number option
must be finite (``.nan`` / ``.inf`` pass no range check, so they are refused where they are read). A config class
whose keys were renamed declares ``renamed_keys`` (former -> current, :class:`Renamed`): a former key is a one-line
error naming the current one, from :func:`from_dict` and from the class's own constructor. Secrets (API keys) are
fields made with :func:`secret_field`: :func:`to_dict`, which every writer of a config uses (``metrics.json``, run
records, leaderboard cells, model folders), writes them as ``<redacted>``, and so it does any option named in
:data:`SECRET_KEYS` inside an untyped mapping (``--reranker-set backend_options.api_key=…``), and the credentials of
a URL in any string (:func:`redact_url`: ``user:<redacted>@``, ``<redacted>@`` for a token as the user, a token in
the query string). An option the setting in
force does not read is refused where it differs from its dataclass default (:func:`option_default`,
:func:`changed_options`), with a one-line :class:`ConfigError` saying "drop" it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from rerank.errors import ConfigError, DataFormatError

__all__ = [
    "load_yaml", "apply_overrides", "from_dict", "to_dict", "secret_field", "without_secrets", "override_source",
    "layered", "option_default", "changed_options", "refuse_changed", "Renamed", "check_renamed", "renamed_arguments",
    "SECRET_KEYS", "REDACTED", "redact_url", "URL_SECRET_PARAMS", "plain", "drop_key",
    "build_error", "probe_value",
]

T = TypeVar("T")

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

#: what a secret is written as
REDACTED = "<redacted>"
#: option names that are secret wherever they appear, also inside untyped mappings; every :func:`secret_field` is
#: named here (tests/test_bad_input.py checks the typed configs that have one)
SECRET_KEYS = frozenset({"api_key"})
#: a key that looks like a secret (a misspelt ``api-key``, a ``token``, ``hf_token``): its value is not quoted in an
#: error either; token counts (``max_doc_tokens``, ``max_new_tokens``) and ``tokenizer`` are not secrets
_SECRET_LIKE = re.compile(r"api[-_ ]?key|token(?!s|iz)|secret|passw", re.IGNORECASE)
#: query-string (and fragment) parameter names whose values :func:`redact_url` writes as ``<redacted>``, compared
#: case-insensitively with ``-`` and ``.`` read as ``_`` (``X-Amz-Signature`` is ``x_amz_signature``)
URL_SECRET_PARAMS = frozenset({
    "key", "apikey", "api_key", "token", "access_token", "refresh_token", "id_token", "auth", "auth_token",
    "authorization", "password", "passwd", "pwd", "pass", "secret", "client_secret", "sig", "signature",
    "x_amz_signature", "x_amz_credential", "x_amz_security_token", "x_goog_signature", "x_goog_credential", "code",
    "credential", "credentials", "jwt", "session", "sessionid", "jsessionid", "bearer",
})
#: a parameter named ``…_key``, ``…_token``, ``…_secret``, ``…_password`` or ``…_signature`` (``hf_token``,
#: ``subscription-key``) is secret too
URL_SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password", "_signature")
#: a URL's userinfo: everything between ``://`` (or JSON's ``:\/\/``) and the last ``@`` before a ``/``, a space or a
#: quote (a ``?`` or ``#`` a password holds unencoded counts as the password's)
_URL_USERINFO = re.compile(r"(?:(?<=://)|(?<=:\\/\\/))([^/\\\s\"'`]*)@")
#: a URL from its ``://`` to its end (a space, a quote, ``<`` or ``>``; a ``<redacted>`` already in it is kept)
_URL_REST = re.compile(r"://(?:<redacted>|[^\s\"'<>`])*")
#: how deep URLs nested in parameter values (``?next=http://h/?key=K``) are followed
_URL_NESTING = 4
#: a ``name=value`` parameter of a query string, a fragment or a path's ``;`` parameters, then what follows it up to
#: the next ``&`` or ``#`` (``;``-separated parameters, or the rest of a value holding a ``;``)
_URL_PARAM = re.compile(r"(?<=[?&;#])([^=&;#?]+)=([^&;#]*)((?:;[^&#]*)?)")
#: a ``;``-separated parameter within that rest
_URL_SEMI_PARAM = re.compile(r"(?<=;)([^=&;#?]+)=([^&;#]*)")


def _secret_param(name: str) -> bool:
    from urllib.parse import unquote

    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", unquote(name))  # camelCase: accessToken is access_token
    name = name.lower().replace("-", "_").replace(".", "_")
    return name in URL_SECRET_PARAMS or name.endswith(URL_SECRET_SUFFIXES)


def _hide_userinfo(m: re.Match[str]) -> str:
    user, colon, password = m[1].partition(":")
    if colon:  # user:password: the user stays readable
        return f"{user}:{REDACTED}@" if password else m[0]
    return f"{REDACTED}@" if user else m[0]  # a bare user name cannot be told from a token (http://TOKEN@host)


def _hide_params(text: str, depth: int = 0) -> str:
    def semi(q: re.Match[str]) -> str:
        return f"{q[1]}={REDACTED}" if q[2] and _secret_param(q[1]) else q[0]

    def hide(p: re.Match[str]) -> str:
        if p[2] and _secret_param(p[1]):
            return f"{p[1]}={REDACTED}"  # with what follows up to the next & or #: a ';' may be the secret's own
        value = p[2]
        if "=" in value and "://" in value and depth < _URL_NESTING:  # a URL in a value (?next=http://h/?key=K)
            value = _hide_params(value, depth + 1)
        return f"{p[1]}={value}{_URL_SEMI_PARAM.sub(semi, p[3]) if p[3] else ''}"
    return _URL_PARAM.sub(hide, text)


def url_query_problem(url: str) -> str | None:
    """Why ``url`` cannot be an HTTP client's base URL: a query string or fragment, after which httpx would append
    each request's path (``/?token=X/v1/rerank``); None when it has neither."""
    if "?" in url or "#" in url:
        return (f"base_url {redact_url(url)} carries '?' or '#' (a query string or fragment, which the request path "
                "would be appended to, or a password's character to percent-encode): drop it (give a key as api_key)")
    return None


def url_parse_problem(url: str) -> str | None:
    """Why httpx cannot parse ``url`` (a ``/`` in a password read as the host's end), worded without the URL, whose
    credentials the parser's own message would show; None when it parses."""
    import httpx

    try:
        httpx.URL(url)
    except httpx.InvalidURL:
        return ("base_url is not a valid URL (a '/', '?', '#' or '@' in a user name or password must be "
                "percent-encoded, e.g. %2F for '/')")
    return None


def redact_url(text: str) -> str:
    """``text`` with the credentials of every ``scheme://…`` URL in it written as ``<redacted>``: the password of a
    ``user:password@`` (the user kept), a userinfo with no colon (``http://TOKEN@host``) whole, and the value of a
    query or fragment parameter named in :data:`URL_SECRET_PARAMS` or ending in :data:`URL_SECRET_SUFFIXES`; hosts,
    ports, paths and other parameters stay as they were."""
    if "://" not in text and ":\\/\\/" not in text:
        return text
    if "@" in text:
        text = _URL_USERINFO.sub(_hide_userinfo, text)
    if "=" in text:
        text = _URL_REST.sub(lambda m: _hide_params(m[0]), text)
    return text


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line as records write it: URL credentials, everything after a secret-named key's ``=`` or ``:``
    (``--reranker-set api_key=…``, ``--set=backend_options.api_key=…``, ``{api_key: …}``, a ``token`` or
    ``password`` key) and the value after a secret-named flag (``--api-key VALUE``) as ``<redacted>``."""
    out: list[str] = []
    hide_next = False
    for item in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if item.startswith("--") and "=" not in item and _SECRET_LIKE.search(item):
            out.append(item)
            hide_next = True
            continue
        out.append(_ARG_SECRET.sub(lambda m: m[1] + REDACTED, redact_url(item), count=1))
    return out


#: a secret-named key with its ``=`` or ``:`` (``api_key=``, ``--api-key=``, ``hf_token:``), then the rest of the
#: argument, which :func:`redact_argv` hides
_ARG_SECRET = re.compile(rf"((?:{_SECRET_LIKE.pattern})[\w-]*['\"]?\s*[=:]\s*).+", re.IGNORECASE | re.DOTALL)


def secret_field(default: Any = None) -> Any:
    """A dataclass field holding a secret (API key, token): left out of ``repr`` and written as :data:`REDACTED`."""
    return dataclasses.field(default=default, repr=False, metadata={"secret": True})


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges; later keys may override it
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            seen = first.get(key)
        except TypeError:  # an unhashable key: the base constructor reports it
            continue
        if seen is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen})", key_node.start_mark
            )
        first[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is an empty mapping; a leading byte-order mark is allowed).

    A syntax error or a key given twice is a :class:`DataFormatError` naming the file and line, on one line.
    """
    try:
        with open(path, "rb") as f:  # bytes: PyYAML detects the encoding and drops a BOM
            data = yaml.load(f, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise DataFormatError(path, mark.line + 1 if mark else None, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise DataFormatError(path, None, "invalid YAML: " + " ".join(str(e).split())) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


class _Overridden(dict):  # type: ignore[type-arg]
    """A config mapping that remembers which of its keys an override gave: key -> the override as typed
    (``--set lr=1``), so an error about that key names the override instead of the file."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(data or {})
        self.given: dict[str, str] = dict(getattr(data, "given", {}))


def layered(base: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` over ``base`` (a shallow merge), still naming the overrides that gave ``data``'s keys."""
    out = _Overridden({**base, **data})
    out.given = dict(getattr(data, "given", {}))
    return out


def plain(value: Any) -> Any:
    """``value`` with every mapping in it a plain dict (no record of the overrides that gave its keys)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def drop_key(spec: dict[str, Any], path: tuple[str, ...]) -> None:
    """Remove the key at dotted ``path`` (a tuple of keys) from the nested dict ``spec`` when it is there."""
    node: Any = spec
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def probe_value(default: Any, value: Any) -> Any:
    """``value``, or a value other than ``default`` (an option's default) where ``value`` is that default, so a trial
    build (:func:`build_error`) of a setting that does not read the option refuses it."""
    if value != default:
        return value
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 1
    return value


def build_error(cls: type, spec: Mapping[str, Any]) -> str | None:
    """The message of the error building ``cls`` from ``spec`` raises (without the place it names), or None when it
    builds; its log messages and warnings are not shown (this build only tests a key, for a "did you mean" hint)."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from_dict(cls, spec, where=_TRIAL)
    except Exception as e:  # noqa: BLE001 - any refusal, of whatever type, is the answer sought
        return re.sub(rf"^{_TRIAL}\S*: ", "", str(e))
    finally:
        logging.disable(disabled)
    return None


#: the place :func:`build_error` names to its builds, removed from their messages
_TRIAL = "TRIAL"


def override_source(data: Mapping[str, Any], key: str) -> str | None:
    """The override (``--set key=value``, as typed) that gave ``key`` of ``data``, or None when it came from elsewhere
    (a file); ``data`` being what :func:`apply_overrides` returned, or a mapping nested in it."""
    given = getattr(data, "given", None)
    return given.get(key) if isinstance(given, dict) else None


#: integers YAML 1.1 reads in a base the user rarely means: a leading zero is octal (``010`` is 8), colons base 60
#: (``1:30`` is 90); :func:`apply_overrides` refuses them
_YAML11_INT = re.compile(r"[-+]?0[0-7_]+|[-+]?[1-9][0-9_]*(:[0-5]?[0-9])+")


def apply_overrides(config: dict[str, Any], overrides: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML: scalars, ``[...]`` lists, ``{...}`` mappings; a value
    that YAML would read as a block mapping, such as ``query: ``, stays the text given) to a nested mapping, returning a
    copy.

    The copy remembers which keys each override gave (:func:`override_source`), so :func:`from_dict` blames an unknown
    key or a bad value on ``{flag} a.b=value`` rather than on the file the rest came from (a key in
    :data:`SECRET_KEYS` shown as ``{flag} api_key=<redacted>``).
    """
    out = _Overridden(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{flag} expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        secret = SECRET_KEYS.intersection(parts) or any(map(_SECRET_LIKE.search, parts))
        source = f"{flag} {key}={REDACTED}" if secret else f"{flag} {redact_url(item)}"  # as errors show it
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            problem = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
            raise ConfigError(f"{source}: invalid YAML value: {problem or ' '.join(str(e).split())}") from None
        if isinstance(value, int) and not isinstance(value, bool) and _YAML11_INT.fullmatch(raw.strip()):
            kind = "base-60" if ":" in raw else "octal"
            without = "colons" if kind == "base-60" else "its leading zero"
            raise ConfigError(f"{source}: YAML reads {raw.strip()} as the {kind} number {value}: write the number "
                              f"without {without} (or in quotes for text)")
        if isinstance(value, dict) and not raw.lstrip().startswith("{"):
            value = raw  # 'query: ' is text (an E5 prefix), not a block mapping: a mapping is {...}, nested keys a.b
        if "#" in raw and ("" if value is None else str(value)).count("#") < raw.count("#"):
            value = raw.strip()  # ' #' would start a YAML comment: 'out/exp #3/data' is a path, not 'out/exp'
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):  # the override makes this mapping: its name is the override's too
                node.given[p] = source
            node[p] = child = _Overridden(child if isinstance(child, dict) else None)
            node = child
        node[parts[-1]] = value
        node.given[parts[-1]] = source
    return out


def check_renamed(renamed: Mapping[str, str], given: Iterable[str], where: str, note: str = "") -> None:
    """A former key name among ``given`` (``renamed``: former -> current) is a one-line :class:`ConfigError` naming
    the current one and the override that gave it (:func:`override_source`, when ``given`` is such a mapping), else
    ``where``; ``note``: why, in brackets after it."""
    for key in given:
        if key in renamed:
            source = override_source(given, key) if isinstance(given, Mapping) else None
            why = f" ({note})" if note else ""
            raise ConfigError(f"{source or where}: key {key!r} is now {renamed[key]!r}{why}")


def renamed_arguments(renamed: Mapping[str, str], where: str, note: str = "") -> Callable[[Callable[..., T]],
                                                                                           Callable[..., T]]:
    """Decorator: a call of the function with a former keyword argument (``renamed``: former -> current) is the
    one-line :class:`ConfigError` of :func:`check_renamed` naming ``where``, not a ``TypeError``."""
    def wrap(func: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> T:
            check_renamed(renamed, kwargs, where, note)
            return func(*args, **kwargs)
        return call
    return wrap


class Renamed:
    """Base of a config dataclass whose keys were renamed: ``renamed_keys`` (former -> current, with ``renamed_note``
    saying why) makes a former key a one-line :class:`ConfigError` naming the current one, in :func:`from_dict` and
    when the class (or a subclass) is constructed with it as a keyword, instead of a ``TypeError``."""

    renamed_keys: ClassVar[Mapping[str, str]] = {}
    renamed_note: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # noqa: ARG004 - the dataclass __init__ takes them
        check_renamed(cls.renamed_keys, kwargs, cls.__name__, cls.renamed_note)
        return super().__new__(cls)


def _coerce(value: Any, tp: Any, where: str, path: str = "") -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        return _from_dict(tp, value, where, path)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads exponents without a dot ("1e-4") as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if not math.isfinite(number):  # NaN passes every range check (each comparison is false), inf most
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and ill-typed values raise :class:`ConfigError` naming
    ``where`` (the file), or the ``--set`` override that gave the key (:func:`apply_overrides`)."""
    return _from_dict(cls, data, where, "")


def _from_dict(cls: type[T], data: Mapping[str, Any], where: str, path: str) -> T:
    """:func:`from_dict` of the block at dotted ``path`` ("" at the top); ``where``: the block's own origin (the file
    and key, or the override that gave the whole block or made it)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        renamed = getattr(cls, "renamed_keys", {})
        former = next((k for k in unknown if k in renamed), None)
        if former is not None:
            check_renamed(renamed, [former], override_source(data, former) or where, getattr(cls, "renamed_note", ""))
        raise ConfigError(
            f"{override_source(data, unknown[0]) or where}: unknown key {unknown[0]!r} for {cls.__name__}; known keys: "
            f"{', '.join(sorted(fields))}"
        )
    secret = _secret_fields(cls) | SECRET_KEYS
    kwargs = {}
    for k, v in data.items():
        at = override_source(data, k) or f"{where}.{k}"
        try:
            kwargs[k] = _coerce(v, hints[k], at, f"{path}.{k}" if path else k)
        except ConfigError:
            if k in secret:  # the message would quote the value
                raise ConfigError(f"{at}: expected a string") from None
            raise
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a check of the dataclass itself: "lr must be > 0, got -1" names its key
        raise ConfigError(f"{_blamed_override(data, str(e), path) or _block_origin(data, where, path)}: {e}") from None


def _block_origin(data: Mapping[str, Any], where: str, path: str) -> str:
    """Where a block's check failed when its message names no key an override gave: the file at the top level; in a
    nested block every origin of its keys (the file's block, the override that gave it whole, each key's override)."""
    given = getattr(data, "given", None)
    if not path or not isinstance(given, dict) or not given:
        return where
    origins = [where] if not data or any(k not in given for k in data) else []
    return ", ".join(dict.fromkeys([*origins, *given.values()]))


def _given_names(data: Mapping[str, Any], path: str = "") -> dict[str, str]:
    """Dotted key name (``lora.r``) -> the override that gave it, for ``data`` and every block nested in it."""
    given = getattr(data, "given", None)
    given = given if isinstance(given, dict) else {}
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{path}.{key}" if path else str(key)
        if key in given:
            out[name] = given[key]
        if isinstance(value, Mapping):
            out.update(_given_names(value, name))
    return out


def _blamed_override(data: Mapping[str, Any], message: str, path: str = "") -> str | None:
    """The override that gave a key an error ``message`` is about: its leading name (``lr``, or ``lora.r`` in block
    ``lora`` and above it), else the key an override gave that the message names most specifically: a dotted name
    (``data.dev_fraction``) before a bare word (``model``, which may be prose), then the first named as a whole word
    (``ndcg_k must be >= 1 and temperature > 0``; the longest of names at one place: ``data.seed`` over ``data``),
    else the override whose string value the message quotes (``unknown reranker 'nope'``); None when none is."""
    names = _given_names(data)
    if path:  # in a nested block the message may name a key bare (``r``) or by its path (``lora.r``)
        names.update({f"{path}.{name}": source for name, source in list(names.items())})
    if not names:
        return None
    leading = re.match(r"[\w.]*\w", message)
    if leading and leading.group() in names:
        return names[leading.group()]
    hits = [("." not in name, m.start(), -len(name), name) for name in names
            if (m := re.search(rf"(?<![\w.'-]){re.escape(name)}(?![\w'-])", message))]
    if hits:
        return names[min(hits)[3]]
    quoted = []
    for name in names:
        value = _value_at(data, name)
        if isinstance(value, str) and len(value) > 1 and not _SECRET_LIKE.search(name) and repr(value) in message:
            quoted.append((message.index(repr(value)), name))
    return names[min(quoted)[1]] if quoted else None


def _value_at(data: Mapping[str, Any], name: str) -> Any:
    """The value at dotted ``name`` in ``data`` (None when a part is missing or not a mapping)."""
    value: Any = data
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def option_default(obj: Any, name: str) -> Any:
    """The dataclass default of field ``name`` of ``obj`` (an instance or a class: its own class, whose default may
    differ from a parent's), a fresh product of the factory for a mutable one; ``dataclasses.MISSING`` if required."""
    cls = obj if isinstance(obj, type) else type(obj)
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if f is None:
        raise KeyError(f"{cls.__name__} has no option {name!r}")
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def changed_options(obj: Any, names: Iterable[str]) -> list[str]:
    """Those of the options ``names`` of dataclass instance ``obj`` that differ from their :func:`option_default`: the
    options a user set (so a setting that does not read them can refuse them, rather than ignore them)."""
    return [name for name in names if getattr(obj, name) != option_default(obj, name)]


def refuse_changed(obj: Any, names: Iterable[str], when: str, otherwise: str) -> None:
    """A one-line :class:`ConfigError` when any of ``names`` differs from its default although it is read only
    ``when``: it names each with its value and says to do ``otherwise`` or drop it."""
    changed = [f"{name}={getattr(obj, name)}" for name in changed_options(obj, names)]
    if changed:
        many = len(changed) > 1
        raise ConfigError(f"{' and '.join(changed)} {'apply' if many else 'applies'} only {when}: {otherwise}, or "
                          f"drop {'them' if many else 'it'}")


def without_secrets(value: Any) -> Any:
    """``value`` (mappings and lists, recursively) without the keys in :data:`SECRET_KEYS`: for records that are
    read back as options (a model folder's ``rerank.json``), where a placeholder would be taken for a key."""
    if isinstance(value, Mapping):
        return {k: without_secrets(v) for k, v in value.items() if k not in SECRET_KEYS}
    if isinstance(value, (list, tuple)):
        return [without_secrets(v) for v in value]
    return value


def _secret_fields(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj) if f.metadata.get("secret")}


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass config as a plain JSON-serialisable dict (for ``metrics.json`` and saved configs), with every
    secret (a :func:`secret_field`, or a mapping key in :data:`SECRET_KEYS`) that is set written as ``<redacted>``, and so
    the credentials of any URL in a string (:func:`redact_url`)."""
    def hide(value: Any) -> Any:
        return None if value is None else REDACTED

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            secret = _secret_fields(v) | SECRET_KEYS
            return {f.name: hide(getattr(v, f.name)) if f.name in secret else conv(getattr(v, f.name))
                    for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): hide(x) if k in SECRET_KEYS else conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, str):
            return redact_url(v)
        return v
    return conv(obj)
