"""One method, one folder: code outside ``rerank/methods/<method>/`` neither imports a method's package nor branches on
a method's name, so a method added as a package (docs/research.md) gets what the built-in it copies gets. Method
specifics are read from the descriptors (``train_reads``, ``configure_train``, ``teacher_options``, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

from rerank.methods import all_methods

ROOT = Path(__file__).resolve().parents[1] / "rerank"
#: comparisons that match a method's name but do not name a method: the hard-negative filter's ``scorer`` kind
#: (``reranker``, or a sentence-transformers ``bi-encoder`` of its own)
NOT_METHODS = {("data_recipes/mining.py", "self.scorer == 'bi-encoder'"),
               ("data_recipes/mining.py", "f.scorer == 'bi-encoder'")}


def _shared_modules() -> list[Path]:
    """Every module of the package but those inside a method's own folder (``methods/base.py`` and the other
    modules directly under ``methods/`` are shared)."""
    out = []
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT)
        if not (rel.parts[0] == "methods" and len(rel.parts) > 2):
            out.append(f)
    return out


def _method_packages() -> set[str]:
    return {m.package for m in all_methods().values()}


def test_the_scan_sees_the_shared_modules_and_every_method() -> None:
    shared = {str(f.relative_to(ROOT)) for f in _shared_modules()}
    assert {"trainers/common.py", "trainers/sft_trainer.py", "data_recipes/mining.py", "heads/llm.py"} <= shared
    assert not any(s.startswith("methods/first/") for s in shared)
    assert len(all_methods()) >= 17 and "rerank.methods.first" in _method_packages()


def test_shared_code_imports_no_method_package() -> None:
    packages = _method_packages()
    found = []
    for f in _shared_modules():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            found += [f"{f.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                      if any(n == p or n.startswith(p + ".") for p in packages)]
    assert not found, "shared code imports a method's package (resolve the descriptor's piece instead):\n" + \
        "\n".join(found)


def test_shared_code_does_not_branch_on_a_method_name() -> None:
    names = set(all_methods())
    found = []
    for f in _shared_modules():
        rel = str(f.relative_to(ROOT))
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            values = []
            for side in (node.left, *node.comparators):
                elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                values += [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if names.intersection(values) and (rel, ast.unparse(node)) not in NOT_METHODS:
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "shared code compares with a method's name (declare it in the descriptor instead):\n" + \
        "\n".join(found)
