"""The ``rerank`` command line. Each subcommand lives in its own module with ``add_parser`` and ``run``.

Errors a user can fix (bad input, a missing file or model, an invalid option) print one line, ``error: …`` naming
the thing and the fix, and exit with status 2; ``--debug`` (or ``RERANK_DEBUG=1``) shows the traceback instead.
Output piped into a reader that stops early (``rerank evaluate … | head``) ends the command quietly, with the
status a shell gives a process that SIGPIPE ended (141). SIGTERM (``kill``, a scheduler's stop) unwinds as Ctrl-C
does, so temporary files are removed, and ends the command with one line, ``terminated``, and status 143
(``serve``, a service a supervisor stops, answers what it holds and exits 0). The log shows our own INFO messages,
and only the warnings and errors of other libraries (``-v``: everything, from DEBUG up).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from rerank.errors import USAGE_ERROR, RerankError

__all__ = ["main", "build_parser", "missing_dependency", "model_file_error", "COMMANDS", "USAGE_ERROR", "BROKEN_PIPE",
           "TERMINATED", "Terminated"]

#: exit status when stdout's reader went away: 128 + SIGPIPE, what a shell reports for a process SIGPIPE ended
BROKEN_PIPE = 141
#: exit status after SIGTERM: 128 + SIGTERM, what a shell reports for a process SIGTERM ended
TERMINATED = 128 + signal.SIGTERM
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

# subcommand name -> module under rerank.cli (explicit; the order is the order of `rerank --help`)
COMMANDS: dict[str, str] = {
    "data": "rerank.cli.data_cmd",
    "eval": "rerank.cli.eval_cmd",
    "evaluate": "rerank.cli.evaluate_cmd",
    "leaderboard": "rerank.cli.leaderboard_cmd",
    "rank": "rerank.cli.rank_cmd",
    "train": "rerank.cli.train_cmd",
    "index": "rerank.cli.index_cmd",
    "serve": "rerank.cli.serve_cmd",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one ``--help`` away), exit status 2. Options are
    matched by their whole name only (no prefix abbreviations: ``--output`` never silently means ``--output-md``),
    and its subcommands' parsers (made by ``add_subparsers``) are of this class too."""

    #: whether this parser is a subcommand's, which refuses unknown arguments itself
    _subcommand = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        """As argparse's, but a subcommand's parser refuses what it does not know itself, so the error names that
        subcommand's help (``see rerank index --help``), not the top level's."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self._subcommand:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


class _SubcommandParser(_Parser):
    """The parser of one subcommand (``rerank index``, ``rerank data build``)."""

    _subcommand = True


def build_parser() -> argparse.ArgumentParser:
    from rerank import __version__

    parser = _Parser(prog="rerank", description="Train, run and evaluate rerankers and retrievers.")
    parser.add_argument("--version", action="version", version=f"rerank {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error instead of one line (or RERANK_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_SubcommandParser)
    add = sub.add_parser

    def add_described(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))  # `rerank CMD --help` opens with its one-line summary
        command = add(name, **kwargs)
        # also after the command (`rerank eval ... -v`); SUPPRESS keeps a value given before it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error instead of one line (or RERANK_DEBUG=1)")
        return command

    sub.add_parser = add_described  # type: ignore[method-assign]
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM while a command runs: it unwinds like ``SystemExit(143)`` (``finally`` and
    ``except BaseException`` clean up, ``except Exception`` does not catch it)."""

    def __init__(self) -> None:
        super().__init__(TERMINATED)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in this process's main thread (a forked child that
    inherited the handler dies of the signal as before). A handler someone else installed is left alone, and the
    default is put back after."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    owner = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked worker: the default action, as if no handler were set
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


#: errno -> (what went wrong, what joins it to the file named): a full disk, a read-only file system, a refusal
_OS_ERRORS = {
    errno.ENOSPC: ("no space left on device", " writing "),
    errno.EDQUOT: ("disk quota exceeded", " writing "),
    errno.EROFS: ("read-only file system", ": cannot write "),
    errno.EACCES: ("permission denied", ": "),
    errno.EPERM: ("operation not permitted", ": "),
}


def _os_error_line(error: OSError) -> str | None:
    """A plain line for a full disk, a read-only file system or a refused permission (naming the file where the
    error does), else None."""
    if error.errno not in _OS_ERRORS:
        return None
    what, joiner = _OS_ERRORS[error.errno]
    if error.filename is None:
        return what
    if error.filename2 is not None:  # a copy or a rename (shutil's sendfile names the source first): the target
        return f"{what}{joiner}{os.fsdecode(error.filename2)} (from {os.fsdecode(error.filename)})"
    return f"{what}{joiner}{os.fsdecode(error.filename)}"


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (a multi-line library message is joined with ' | ')."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return " | ".join(lines) or type(error).__name__


def _user_error(error: BaseException) -> bool:
    """Errors a user fixes by changing their input: ours, bad values, files that are absent or unreadable, and model
    files that do not load (:func:`model_file_error`)."""
    if isinstance(error, (RerankError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                          PermissionError)):
        return True
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is never a bug
        return True
    return isinstance(error, OSError) and error.filename is not None or model_file_error(error) is not None


_LOADER_PACKAGES = ("transformers", "huggingface_hub")


def model_file_error(error: BaseException) -> str | None:
    """What is wrong with a model's files, one line naming the file where it can be found, when ``error`` is the
    weights or model loader's refusal of them: safetensors' ``SafetensorError`` (a truncated or corrupt file), or an
    ``OSError`` raised by transformers or huggingface_hub themselves (a damaged checkpoint, missing weights). Else None:
    other errors are not blamed on the files."""
    kind = type(error)
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame if tb is not None else None
    if kind.__name__ == "SafetensorError" and kind.__module__.split(".")[0] == "safetensors":
        path = next((str(v) for v in (frame.f_locals.values() if frame is not None else ())
                     if isinstance(v, (str, os.PathLike)) and str(v).endswith(".safetensors")
                     and os.path.isfile(v)), None)
        return (f"{path or 'a .safetensors file'}: {_one_line(error).removeprefix('Error while deserializing header: ')}"
                " (the weights file is truncated or corrupt: copy, download or save it again)")
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    if isinstance(error, OSError) and module.split(".")[0] in _LOADER_PACKAGES:
        return _one_line(error)
    return None


def _ours_or_warning(record: logging.LogRecord) -> bool:
    """A log filter: our own records at any level, other libraries' from WARNING up (faiss's loader alone logs 11
    INFO lines on every import)."""
    return (record.levelno >= logging.WARNING or record.name == "rerank" or record.name.startswith("rerank.")
            or record.name == "uvicorn.error")  # the server's lifecycle: running on, startup complete, shutdown


def _redact_http_urls(record: logging.LogRecord) -> bool:
    """A log filter: the credentials of a URL (:func:`rerank.config.redact_url`) in an httpx or httpcore record
    (``HTTP Request: POST http://alice:…@host``, shown with ``-v``) are written ``<redacted>``, as everywhere else."""
    if record.name.split(".")[0] in ("httpx", "httpcore"):
        from rerank.config import redact_url

        message = record.getMessage()
        redacted = redact_url(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
    return True


class _BesideProgressBars(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that clears the progress bars drawn on its stream before a record and redraws them after
    (as ``tqdm.write``), so a warning starts its own line instead of ending a bar's."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


def log_handler(verbose: bool, stream: object = None) -> logging.Handler:
    """The stderr handler of the command line: every record with ``verbose``, else :func:`_ours_or_warning`; URL
    passwords in the HTTP clients' records redacted either way; progress bars on the stream step aside."""
    handler = _BesideProgressBars(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_redact_http_urls)
    if not verbose:
        handler.addFilter(_ours_or_warning)
    return handler


def _configure_logging(verbose: bool) -> None:
    """As :func:`logging.basicConfig`: only when the root logger has no handler yet (an embedding program's win)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(log_handler(verbose))
        root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (``rerank … | head`` after head exits); False when that
    cannot be told (stdout is not a file descriptor, no ``poll`` on this platform)."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _quiet_broken_pipe() -> int:
    """Point stdout at /dev/null (so the interpreter's last flush does not fail again) and return
    :data:`BROKEN_PIPE`."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass
    return BROKEN_PIPE


#: import name -> distribution name, where they differ by more than ``-`` / ``_`` and case
_DISTRIBUTIONS = {"Stemmer": "PyStemmer", "pytrec_eval": "pytrec-eval-terrier", "faiss": "faiss-cpu", "yaml": "pyyaml"}


def missing_dependency(error: BaseException) -> str | None:
    """One line naming the package and how to install it when ``error`` is the import of one of rerank's core
    dependencies failing (a venv that installed rerank with ``--no-deps``), else None."""
    if not isinstance(error, ModuleNotFoundError) or not error.name or "." in error.name:
        return None  # a submodule missing from an installed package (an old import in a model's own code) is not this
    module = error.name
    try:
        from importlib.metadata import PackageNotFoundError, requires

        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        core = {canonicalize_name(r.name): r for r in map(Requirement, requires("rerank") or []) if r.marker is None}
    except (ImportError, PackageNotFoundError):
        return None
    requirement = core.get(canonicalize_name(_DISTRIBUTIONS.get(module, module)))
    if requirement is None:
        return None
    return (f"rerank needs the {requirement.name} package (import {module}), which is not installed: "
            f"pip install '{requirement}' (README's install brings every core dependency)")


def _debug_asked(argv: Sequence[str] | None) -> bool:
    """Whether ``--debug`` or ``RERANK_DEBUG`` asks for tracebacks (read before the parser exists)."""
    given = sys.argv[1:] if argv is None else argv
    return "--debug" in given or os.environ.get("RERANK_DEBUG", "").strip().lower() in ("1", "true", "yes")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rerank`` console script; user errors print one line and exit 2."""
    try:
        parser = build_parser()
    except ModuleNotFoundError as e:  # a subcommand's module imports a core dependency that is not installed
        line = missing_dependency(e)
        if line is None or _debug_asked(argv):
            raise
        print(f"error: {line}", file=sys.stderr)
        return USAGE_ERROR
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("RERANK_DEBUG", "").strip().lower() in ("1", "true", "yes")
    _configure_logging(args.verbose)
    try:
        with _sigterm_raises():
            from rerank.cli.common import check_data_root

            check_data_root(getattr(args, "data_root", None))  # every command's, as its help says
            rc = int(args.func(args) or 0)
            sys.stdout.flush()  # a reader that left shows here, not in the interpreter's last flush
        return rc
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        if debug:
            raise
        print("terminated", file=sys.stderr)
        return TERMINATED
    except Exception as e:
        missing = missing_dependency(e)
        if missing is not None and not debug:
            print(f"error: {missing}", file=sys.stderr)
            return USAGE_ERROR
        if debug or not _user_error(e):
            raise
        problem = None if isinstance(e, RerankError) else model_file_error(e)
        line = _os_error_line(e) if isinstance(e, OSError) and problem is None else None
        print(f"error: {'cannot load the model: ' + problem if problem else line or _one_line(e)}", file=sys.stderr)
        return USAGE_ERROR
