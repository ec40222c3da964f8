"""Exceptions with enough context for a user to fix their input."""

from __future__ import annotations

from pathlib import Path

#: the exit status of an error the user can fix (one line, no traceback): the CLI's and ``rerank serve``'s workers'
USAGE_ERROR = 2


class RerankError(Exception):
    """Base class for errors the toolkit reports to users (the CLI prints them without a traceback)."""


class DataFormatError(RerankError, ValueError):
    """Malformed input data; names the file and (1-based) line."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class ConfigError(RerankError, ValueError):
    """Invalid configuration: unknown key, bad value, missing required option."""


class DatasetNotFoundError(RerankError, FileNotFoundError):
    """A dataset is neither present locally nor downloadable."""
