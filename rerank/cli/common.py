"""Options shared by every subcommand, so the conventions are defined once."""

from __future__ import annotations

import argparse
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from rerank.config import apply_overrides, load_yaml
from rerank.errors import ConfigError

log = logging.getLogger(__name__)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` (checked when the command line is parsed)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)


def int_between(low: int, high: int | None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in [``low``, ``high``] (``high`` None: no upper bound)."""
    if high is None:
        return int_at_least(low)

    def parse(text: str) -> int:
        value = int_at_least(low)(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    return parse


def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding datasets by name (default: $RERANK_DATA or ~/.cache/rerank/data); it must exist. A "
        "bare name found there wins over a same-named folder in the current directory (write ./NAME for that one)",
    )


def check_data_root(path: str | os.PathLike[str] | None) -> None:
    """Before any work: a ``--data-root`` given is an existing folder, as its help says, whether or not the dataset
    is looked up under it (one given as a path is not): else a one-line error naming it."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        return
    if symlink_loop(p):
        raise ConfigError(f"--data-root {path} is a symlink loop; give the folder holding datasets by name")
    if p.exists():
        raise ConfigError(f"--data-root {path} is a file, not the folder holding datasets by name")
    raise ConfigError(f"--data-root {path} does not exist: fix the path, create the folder, or leave --data-root out "
                      "for the default")


def warn_unused_rel_level(measures: list[str] | tuple[str, ...], rel_level: int | None) -> None:
    """A ``--rel-level`` given while no measure asked for is binary (nDCG alone grades) changes nothing: say so."""
    from rerank.eval.metrics import parse_measures

    if rel_level is None or rel_level == 1:
        return
    if [n for n, _ in parse_measures(measures, rel_level)] == [n for n, _ in parse_measures(measures, 1)]:
        log.warning("--rel-level %d changes nothing: it is the grade that binary measures (AP, RR, P, R, ...) count "
                    "as relevant, and no measure asked for (%s) is binary", rel_level, ", ".join(measures))


def add_max_queries(
    p: argparse.ArgumentParser,
    help_text: str = "keep the first N >= 1 queries in sorted query-id order; metrics are over those N only",
) -> None:
    p.add_argument("--max-queries", type=positive_int, default=None, help=help_text)


def add_allow_duplicates(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-duplicates",
        choices=("last", "max"),
        default=None,
        help="a (query, document) pair judged twice in the qrels is an error naming both lines; with this, keep "
        "the last grade or the max grade instead",
    )


def add_dataset(p: argparse.ArgumentParser, required: bool = True, group: argparse._ActionsContainer | None = None) -> None:
    (group or p).add_argument(
        "--dataset", required=required,
        help="a BEIR-layout folder, a dataset name under the data root, or irds:ID (an ir_datasets id)",
    )
    p.add_argument("--split", default="test",
                   help="qrels split to evaluate (default: test; a suite scores each dataset on its own split)")
    add_max_queries(p)
    add_data_root(p)


def add_reranker(
    p: argparse.ArgumentParser,
    model_help: str = "reranker model: name or path (a trained reranker's folder needs no --reranker)",
) -> None:
    p.add_argument("--reranker", default=None,
                   help="registered reranker method (e.g. cross-encoder, first); default: the method a trained "
                        "--model folder records in its rerank.json")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--backend", default="transformers", help="model backend (default: transformers)")
    p.add_argument("--base-url", default=None, help="server URL for --backend openai (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--reranker-config", default=None, help="YAML file of reranker options")
    p.add_argument("--reranker-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one reranker option (an API key is better given as $RERANK_API_KEY or "
                   "$OPENAI_API_KEY: a command line is visible to every user of the machine)")
    p.add_argument("--allow-new-head", action="store_true",
                   help="cross-encoder: accept a --model without a trained classification head (a bare encoder); "
                        "the new head starts random (the option allow_new_head)")


def reranker_options(args: argparse.Namespace) -> dict:
    """The reranker's options: ``--reranker-config`` (a relative ``template`` file path in it read against the file's
    folder), then ``--reranker-set``, ``--allow-new-head``, ``--base-url``."""
    if args.reranker_config:
        check_input_file(args.reranker_config, "--reranker-config")
    opts = _config_template_beside(load_yaml(args.reranker_config), args.reranker_config) \
        if args.reranker_config else {}
    opts = apply_overrides(opts, args.reranker_set, flag="--reranker-set")
    if getattr(args, "allow_new_head", False):
        opts["allow_new_head"] = True
        opts.given["allow_new_head"] = "--allow-new-head"  # an error about the key names the flag typed
    if getattr(args, "base_url", None):
        check_base_url(getattr(args, "reranker", None), getattr(args, "backend", None) or "transformers")
        opts["backend_options"] = {**opts.get("backend_options", {}), "base_url": args.base_url}
    return opts


def _config_template_beside(opts: dict, config: str) -> dict:
    """``opts`` of the ``--reranker-config`` file ``config`` with a relative ``template`` file path resolved against
    that file's folder (a shipped template name or an inline mapping stays); a missing file is a one-line error naming
    the path tried."""
    spec = opts.get("template")
    if not isinstance(spec, str) or not Path(spec).suffix:
        return opts
    given = Path(os.path.expanduser(spec))
    path = given if given.is_absolute() else Path(config).parent / given
    if not path.is_file():
        raise ConfigError(f"--reranker-config {config}: template {spec}: {path} is not a file (a relative template "
                          f"path in a config file is read against the file's folder)")
    return {**opts, "template": str(path)}


def check_base_url(method: str | None, backend: str) -> None:
    """``--base-url`` is the openai backend's server: with another backend, or a head that runs no LLM backend, it
    is a one-line error naming the flag and the fix (it became ``backend_options.base_url``, which the config check
    named instead)."""
    from rerank.backends.cache import uses_llm_backend

    if method == "remote":
        raise ConfigError("--base-url applies to --backend openai; the remote reranker's server is "
                          "--reranker-set base_url=URL: give it there, and drop --base-url")
    if method is not None and not uses_llm_backend(method):
        raise ConfigError(f"--base-url applies to --backend openai, and reranker {method} runs on the transformers "
                          "backend only (it is not an LLM head): drop --base-url")
    if backend != "openai":
        raise ConfigError(f"--base-url applies to --backend openai (the backend is {backend}): add --backend openai, "
                          "or drop --base-url")


def check_reranker_options(method: str, model: str | None, options: dict, backend: str = "transformers") -> None:
    """Before any model loads: ``options`` (over the options a trained ``model`` folder records) fit ``method``'s
    typed config; a mistake names the ``--reranker-set`` override or the ``--reranker-config`` file, and a ``backend``
    option given as a head option names its route (``--reranker-set backend_options.KEY=VALUE``)."""
    from rerank.config import from_dict, layered
    from rerank.heads.llm import LLMReranker, check_backend_keys
    from rerank.heads.registry import get_reranker_class, recorded_reranker_class
    from rerank.methods.record import read_record

    record = read_record(model)
    # a method the folder's rerank.json gave (method_from_model) is a registered name, never an import
    recorded = record is not None and record.get("method") == method
    cls = recorded_reranker_class(method, model) if recorded else get_reranker_class(method)
    if issubclass(cls, LLMReranker):
        try:
            check_backend_keys(method, cls.config_class, backend, options)
        except ConfigError as e:
            raise ConfigError(f"{e}; on the command line: --reranker-set backend_options.KEY=VALUE") from None
    if record is not None and record.get("kind") == "reranker" and record.get("method") != method:
        raise ConfigError(f"{model} was trained as {record.get('method')!r}; load it with that method or none "
                          f"(--reranker {record.get('method')}, or no --reranker)")
    trained = record.get("options", {}) if record is not None and record.get("kind") == "reranker" else {}
    from_dict(cls.config_class, layered(trained, options), where=f"{method} options")


def check_llm_flags(method: str, given: list[str]) -> None:
    """Before the model loads: the LLM-call flags ``given`` (``--no-llm-cache``, ``--log-llm-io``) act on an LLM
    head's backend only (:func:`rerank.backends.cache.uses_llm_backend`); with any other reranker they would do
    nothing, so they are refused naming it."""
    from rerank.backends.cache import uses_llm_backend

    if given and not uses_llm_backend(method):
        one = len(given) == 1
        raise ConfigError(f"{', '.join(given)} appl{'ies' if one else 'y'} to an LLM reranker's model calls, and "
                          f"reranker {method} makes none (it is not an LLM head): drop {'it' if one else 'them'}")


def method_from_model(args: argparse.Namespace) -> dict | None:
    """Fill ``args.reranker`` from a trained ``--model`` folder's ``rerank.json`` when no ``--reranker`` is given;
    returns that record (None when ``--model`` is not such a folder). Without either, a LoRA adapter folder (a
    training run's ``OUTPUT/adapter``) is a one-line :class:`ConfigError` naming the merged ``OUTPUT/model``."""
    from rerank.methods.record import RECORD_FILE, read_record

    model = getattr(args, "model", None)
    record = read_record(model)
    if record is None and model is not None and (Path(model).expanduser() / "model" / RECORD_FILE).is_file():
        raise ConfigError(f"--model {model} is a training run folder; give the trained model in it: "
                          f"--model {Path(model) / 'model'}")
    if record is not None and args.reranker is None and record.get("kind") == "reranker":
        args.reranker = record["method"]  # a plain name (read_record refuses a 'module:Class'): never an import
    if record is None and model is not None and getattr(args, "reranker", None) is None:
        from rerank.models import check_adapter, check_model_path

        name = str(model)
        path = Path(name).expanduser()
        if path.is_dir():
            check_adapter(path, name)  # a LoRA OUTPUT/adapter names the merged OUTPUT/model, not --reranker
        elif ("/" in name or name.startswith((".", "~"))) and not path.exists():
            check_model_path(name)  # a mistyped folder is named as missing, not as a --model that needs --reranker
    return record


def check_reranker_model(reranker: str | None, model: str | None, backend: str) -> None:
    """Before any expensive work: ``--model`` must be a model this machine can load, unless it names a model on a
    server (``--reranker remote``, ``--backend openai``)."""
    from rerank.models import check_model_path

    if model and reranker != "remote" and backend != "openai":
        check_model_path(model)


def check_distinct_files(outputs: list[tuple[str, str | None]], inputs: list[tuple[str, str | None]]) -> None:
    """Before any work: no output file (option, path) is one of the input files, nor another output (the same file
    through a link counts), which writing it would replace; a one-line error naming both options (or the option
    whose path is a symbolic link loop)."""
    for option, path in [*outputs, *inputs]:
        if path is not None and symlink_loop(path):
            raise ConfigError(f"{option} {path} is a symlink loop; give another path")
    given_outputs = [(o, p) for o, p in outputs if p is not None]
    for i, (option, path) in enumerate(given_outputs):
        for other, other_path in [*(x for x in inputs if x[1] is not None), *given_outputs[i + 1:]]:
            if _same_file(path, other_path):  # type: ignore[arg-type]
                role = "input" if (other, other_path) in inputs else "output"
                raise ConfigError(f"{option} {path} is the {other} file {other_path}: writing it would replace that "
                                  f"{role}; give another file name")


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file: both exist and are the same file (a symbolic or hard link included),
    or neither exists yet and they resolve to one path (a symbolic link loop resolves to itself, never raising)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return os.path.realpath(pa) == os.path.realpath(pb)


def symlink_loop(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is, or passes through, a symbolic link loop (``ln -s loop loop``): it neither exists nor can
    be created, so it is named as a loop, not as missing."""
    try:
        os.stat(Path(path).expanduser())
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def check_input_file(path: str | os.PathLike[str], option: str) -> None:
    """Before any work: the file ``option`` names exists and is a file (else a one-line error naming ``option``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file")
    if symlink_loop(p):
        raise ConfigError(f"{option} {path} is a symlink loop; give a file")
    if not p.exists():
        raise ConfigError(f"{option} {path} does not exist")


def _check_creatable(path: Path, shown: str | os.PathLike[str], option: str) -> None:
    """``path`` (a folder, existing or not) is one this process can write into, or create and write into."""
    if symlink_loop(path):
        raise ConfigError(f"{option} {shown}: {path} is a symlink loop")
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{option} {shown}: {path} is a broken link")
    from rerank.utils.files import nearest_existing

    existing = nearest_existing(path)
    if not existing.is_dir():
        raise ConfigError(f"{option} {shown}: {existing} is a file, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path:
            raise ConfigError(f"{option} {shown} is not writable")
        raise ConfigError(f"{option} {shown} cannot be created: {existing} is not writable")


def check_output_dir(path: str | os.PathLike[str], option: str = "--output") -> None:
    """Before any work: ``path`` is a folder this process can write into, or can create (else a one-line error
    naming ``option``); nothing is created."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a folder")
    _check_creatable(p, path, option)


def check_output_file(path: str | os.PathLike[str], option: str = "--output") -> None:
    """Before any work: ``path`` can be written as a file (it is not a folder, and its folder is writable or can be
    created), else a one-line error naming ``option``; nothing is created."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    if p.is_symlink() and symlink_loop(p):
        raise ConfigError(f"{option} {path} is a symlink loop; give another file name")
    _check_creatable(p.parent, path, option)


def check_cache_writable() -> None:
    """Before any expensive work: the cache folder (``$RERANK_CACHE``, :func:`rerank.data.datasets.cache_root`) can
    be created, else a one-line error naming it and the variable that moves it; one that exists read-only is a
    warning (a run that finds everything cached there needs no write; a new entry then fails naming its file)."""
    from rerank.data.datasets import cache_root
    from rerank.utils.files import nearest_existing

    root = cache_root()
    fix = "(set RERANK_CACHE to a writable folder)"
    existing = nearest_existing(root)
    if root.is_symlink() and not root.exists():
        raise ConfigError(f"cache folder {root} is a broken link {fix}")
    if not existing.is_dir():
        raise ConfigError(f"cache folder {root} cannot be created: {existing} is a file {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == root:  # what is cached there is read; only something new would fail to be saved
            log.warning("cache folder %s is not writable: what it holds is read, but anything new (an index, "
                        "embeddings) cannot be saved %s", root, fix)
            return
        raise ConfigError(f"cache folder {root} is not writable: it would be made in {existing}, which is not "
                          f"writable {fix}")
