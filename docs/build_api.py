"""Build the API reference of ``rerank`` from its docstrings with pdoc: ``python docs/build_api.py OUTPUT_DIR``.

Every module of the package is documented (the CLI's subcommand modules and ``__main__`` modules excluded): pdoc
would follow ``__all__`` and stop at ``rerank/__init__.py``, so the modules are listed explicitly. Docstrings are
reStructuredText-flavoured (``code``, ``:class:`X```). A module that cannot be imported, or any other pdoc warning
than an unresolvable string annotation (rendered as written), is an error: the command prints them and exits 1.
"""

from __future__ import annotations

import pkgutil
import sys
import warnings
from pathlib import Path

# pdoc warnings that are not errors: an inherited dataclass annotation pdoc cannot evaluate in the subclass's module
# (shown as its text), and our own explicit listing of submodules a package walk also finds
HARMLESS = ("Error parsing type annotation", "The module specification")


def modules() -> list[str]:
    """Every documented module name, sorted."""
    import rerank

    found = ["rerank"] + [m.name for m in pkgutil.walk_packages(rerank.__path__, "rerank.")]
    return sorted(m for m in found if not m.endswith("__main__") and not m.startswith("rerank.cli."))


def build(output: str | Path) -> list[str]:
    """Write the HTML reference into ``output``; return the errors (empty when the build is clean)."""
    import pdoc
    import pdoc.render

    out = Path(output)
    names = modules()
    pdoc.render.configure(docformat="restructuredtext", search=True, show_source=False)
    errors: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pdoc.pdoc(*names, output_directory=out)
        except Exception as e:  # noqa: BLE001 - reported as a build error, with its type
            errors.append(f"pdoc failed: {type(e).__name__}: {e}")
    errors += [str(w.message).splitlines()[0] for w in caught
               if issubclass(w.category, UserWarning) and not str(w.message).startswith(HARMLESS)]
    missing = [n for n in names if not (out / (n.replace(".", "/") + ".html")).is_file()]
    errors += [f"no page for {n}" for n in missing]
    return errors


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python docs/build_api.py OUTPUT_DIR", file=sys.stderr)
        return 2
    errors = build(args[0])
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if not errors:
        print(f"API reference: {Path(args[0]) / 'index.html'} ({len(modules())} modules)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
