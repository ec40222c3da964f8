"""Packaging metadata and the docs' Python blocks: the licence is an SPDX expression with the unmodified Apache 2.0
text beside it, the sdist's MANIFEST.in carries all of tests/ and the example configs, and every Python block of
docs/serve.md compiles and reads no name it does not define (a pasted block does not stop on a NameError)."""

from __future__ import annotations

import ast
import builtins
import hashlib
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt, the text every Apache-2.0 project copies unchanged
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_license_is_an_spdx_expression_with_the_apache_text_shipped() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0", "PEP 639: license is an SPDX string, not a table"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_bytes()
    assert text.decode().lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256, "LICENSE is not the unmodified Apache 2.0 text"
    # setuptools refuses a License :: classifier next to a licence expression
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]


def test_build_backend_requirement_supports_pep_639_and_the_lock_satisfies_it() -> None:
    requires = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    setuptools = next(r for r in requires if r.name == "setuptools")
    assert not setuptools.specifier.contains(Version("76.1")), "license = SPDX string needs setuptools >= 77"
    locked = re.search(r"^setuptools==(\S+)", (ROOT / "requirements" / "lock.txt").read_text(), re.M)
    assert locked and setuptools.specifier.contains(Version(locked.group(1))), "the locked setuptools cannot build"


def test_python_classifiers_agree_with_requires_python() -> None:
    allowed = SpecifierSet(PYPROJECT["project"]["requires-python"])
    versions = [c.rsplit(" :: ", 1)[1] for c in PYPROJECT["project"]["classifiers"]
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert versions and all(allowed.contains(Version(v + ".0")) for v in versions), versions
    lower = re.fullmatch(r">=(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert lower and min(versions, key=Version) == lower.group(1), "the oldest supported Python has no classifier"


def test_manifest_ships_all_of_tests_and_the_examples() -> None:
    lines = {line.strip() for line in (ROOT / "MANIFEST.in").read_text().splitlines()}
    for folder in ("tests", "configs", "examples", "docs", "requirements"):
        assert f"graft {folder}" in lines, f"MANIFEST.in does not graft {folder}/"
    assert "include LICENSE README.md" in lines
    assert not [line for line in lines if line.startswith(("prune tests", "exclude tests"))]


def _unbound_names(source: str) -> set[str]:
    """Names a block reads but never binds (imports, assignments, defs, parameters) and that are not builtins."""
    tree = ast.parse(source)
    bound = set(dir(builtins))
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound


def test_unbound_names_sees_the_old_serve_block_mistake() -> None:
    assert _unbound_names('import cohere\nco = cohere.ClientV2(api_key=os.environ["K"], x=key)\nco.r(d=docs)\n') == {
        "os", "key", "docs"}
    assert _unbound_names("import os\nkey = os.environ['K']\nprint([d for d in key])\n") == set()


SERVE_BLOCKS = PYTHON_BLOCK.findall((ROOT / "docs" / "serve.md").read_text())


@pytest.mark.parametrize("index", range(len(SERVE_BLOCKS)))
def test_serve_md_python_blocks_compile_and_define_what_they_read(index: int) -> None:
    source = SERVE_BLOCKS[index]
    compile(source, f"docs/serve.md python block {index + 1}", "exec")
    assert not _unbound_names(source), f"docs/serve.md python block {index + 1} reads undefined names"


def test_serve_md_has_its_client_block() -> None:
    assert any("cohere.ClientV2" in block for block in SERVE_BLOCKS)


def test_manifest_keeps_local_secrets_and_logs_out_of_the_sdist() -> None:
    """``graft`` takes untracked files too: a ``tests/.env`` with a token must not ship."""
    text = (ROOT / "MANIFEST.in").read_text()
    excluded = {word for line in text.splitlines() if line.startswith("global-exclude") for word in line.split()[1:]}
    assert {".env", ".env.*", "*.log"} <= excluded
