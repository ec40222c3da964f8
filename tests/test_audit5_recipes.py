"""Recipe vocabulary: every recipe reads its dataset as ``source.dataset`` (a top-level ``dataset`` is refused naming
it), a recipe error caused by a ``--set`` override names the override, and other commands' names for a recipe option
get a "did you mean"; a ``--flag`` the recipe and results docs name exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rerank.config import apply_overrides, from_dict, load_yaml, to_dict
from rerank.data_recipes import RECIPE_DIR
from rerank.data_recipes.base import _recipe_class, build
from rerank.errors import ConfigError
from rerank.utils.files import hash_obj

REPO = Path(__file__).resolve().parents[1]


def _synth(dataset: Path) -> dict[str, Any]:
    return {"recipe": "query_synthesis", "source": {"dataset": str(dataset)}, "generator": {"kind": "sentence"},
            "max_docs": 4, "min_doc_chars": 10}


def _recipe(spec: dict[str, Any]) -> Any:
    """The typed config of a recipe mapping, read as ``rerank data build`` reads it."""
    from rerank.data_recipes.base import check_recipe_keys

    spec = dict(spec)
    cls = _recipe_class(spec.pop("recipe")).config_class
    check_recipe_keys(cls, spec, "recipe")
    return from_dict(cls, spec, where="recipe")


# ------------------------------------------------------------------------------------ one key for the dataset
def test_query_synthesis_reads_its_dataset_as_source_dataset(tiny_beir_dir: Path, tmp_path: Path) -> None:
    m = build(_synth(tiny_beir_dir), tmp_path / "q", progress=False)
    assert m["config"]["source"] == {"dataset": str(tiny_beir_dir)} and m["counts"]["rows"] > 0
    old = {k: v for k, v in _synth(tiny_beir_dir).items() if k != "source"}
    with pytest.raises(ConfigError, match=r"^recipe query_synthesis: unknown key 'dataset' for QuerySynthesisConfig: "
                                          r"did you mean 'source\.dataset'\? \(every recipe reads its dataset as "
                                          r"source: \{dataset: NAME\}\)$"):
        build({**old, "dataset": str(tiny_beir_dir)}, tmp_path / "old", progress=False)


@pytest.mark.parametrize("path", [*sorted(RECIPE_DIR.glob("*.yaml")),
                                  *[p for p in sorted((REPO / "configs" / "distill").glob("*.yaml"))
                                    if "recipe" in load_yaml(p)]], ids=lambda p: p.name)
def test_every_shipped_recipe_names_its_dataset_under_source(path: Path) -> None:
    raw = load_yaml(path)
    assert "dataset" not in raw and isinstance(raw["source"]["dataset"], str)
    assert _recipe(raw).source.dataset == raw["source"]["dataset"]


def test_a_query_synthesis_build_of_the_former_shape_resumes(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """A build that an earlier rerank started or finished with a top-level ``dataset`` (its recipe hash) resumes."""
    out = tmp_path / "q"
    made = build(_synth(tiny_beir_dir), out, progress=False)
    config = _recipe(_synth(tiny_beir_dir))
    former = {"recipe": "query_synthesis", **{k: v for k, v in to_dict(config).items() if k != "source"},
              "dataset": str(tiny_beir_dir.resolve())}
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["recipe_hash"] = hash_obj(former)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert build(_synth(tiny_beir_dir), out, resume=True, progress=False)["counts"] == made["counts"]
    manifest["recipe_hash"] = hash_obj({**former, "max_docs": 5})  # another recipe is still refused
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="already holds a finished build"):
        build(_synth(tiny_beir_dir), out, resume=True, progress=False)


# ------------------------------------------------------------------------------ errors name the --set override
@pytest.mark.parametrize(("recipe", "override", "message"), [
    ("scifact-hard-negatives", "dataset=scifact",
     "--set dataset=scifact: unknown key 'dataset' for HardNegativesConfig: did you mean 'source.dataset'?"),
    ("scifact-hard-negatives", "data.beir=scifact",
     "--set data.beir=scifact: unknown key 'data.beir' for HardNegativesConfig: did you mean 'source.dataset'?"),
    ("scifact-hard-negatives", "negatives_per_positive=3",
     "--set negatives_per_positive=3: unknown key 'negatives_per_positive' for HardNegativesConfig: did you mean "
     "'num_negatives'?"),
    ("scifact-hard-negatives", "rel_level=2",
     "--set rel_level=2: unknown key 'rel_level' for HardNegativesConfig: did you mean 'min_positive_grade'?"),
    ("scifact-hard-negatives", "data.bm25_depth=50",
     "--set data.bm25_depth=50: unknown key 'data.bm25_depth' for HardNegativesConfig: did you mean "
     "'first_stage.depth'?"),
    ("scifact-hard-negatives", "nope=1", "--set nope=1: unknown key 'nope' for HardNegativesConfig; known keys: "),
    ("scifact-hard-negatives", "num_negatives=0", "--set num_negatives=0: num_negatives must be >= 1"),
    ("configs/distill/ce-labels.yaml", "max_candidates=10",
     "--set max_candidates=10: unknown key 'max_candidates' for TeacherLabelsConfig: did you mean 'candidates'?"),
    ("configs/distill/ce-labels.yaml", "dataset=dl19-bm25-top100",
     "--set dataset=dl19-bm25-top100: unknown key 'dataset' for TeacherLabelsConfig: did you mean "
     "'source.dataset'?"),
    ("configs/distill/ict-queries.yaml", "dataset=dl19-bm25-top100",
     "--set dataset=dl19-bm25-top100: unknown key 'dataset' for QuerySynthesisConfig: did you mean "
     "'source.dataset'?"),
    ("configs/distill/ict-queries.yaml", "source.max_queries=5",
     "--set source.max_queries=5: unknown key 'source.max_queries' for QuerySynthesisConfig: did you mean "
     "'max_docs'?"),
])
def test_a_recipe_error_names_the_override(recipe: str, override: str, message: str, run_cli, tiny_beir_dir: Path,
                                           tmp_path: Path) -> None:
    name = str(REPO / recipe) if "/" in recipe else recipe
    rc, _out, err = run_cli("data", "build", name, "--output", tmp_path / "o", "--data-root", tiny_beir_dir.parent,
                            "--set", override)
    assert rc == 2 and err.startswith(f"error: {message}"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_hint_names_only_a_key_the_recipe_has() -> None:
    """``max_candidates`` is teacher_labels' ``candidates``; hard_negatives has no such key: the plain error."""
    from rerank.data_recipes.base import check_recipe_keys

    spec = apply_overrides(load_yaml(RECIPE_DIR / "scifact-hard-negatives.yaml"), ["max_candidates=10"])
    spec.pop("recipe")
    with pytest.raises(ConfigError, match=r"^--set max_candidates=10: unknown key 'max_candidates' for "
                                          r"HardNegativesConfig; known keys: "):
        check_recipe_keys(_recipe_class("hard_negatives").config_class, spec, "recipe")
        from_dict(_recipe_class("hard_negatives").config_class, spec, where="recipe")


# ---------------------------------------------------------------------------------- flags the docs name exist
def _cli_options() -> set[str]:
    """Every option string of ``rerank`` and its subcommands (nested ones included)."""
    import argparse

    from rerank.cli import build_parser

    out: set[str] = set()
    todo = [build_parser()]
    while todo:
        parser = todo.pop()
        out.update(parser._option_string_actions)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return out


@pytest.mark.parametrize("doc", ["results.md", "suites-leaderboard-recipes.md"])
def test_a_flag_the_doc_names_exists(doc: str) -> None:
    """A ``--flag`` in the prose is an option of ``rerank`` (some subcommand) or of a script the doc runs (a
    benchmark's or an example's): ``--batch-queries`` was neither."""
    import re

    scripts = [*sorted((REPO / "benchmarks").glob("*.py")), *sorted((REPO / "examples").glob("*.sh"))]
    known = _cli_options() | {m for p in scripts for m in re.findall(r"--[a-z][a-z0-9-]*", p.read_text())}
    prose = re.sub(r"```.*?```", "", (REPO / "docs" / doc).read_text(encoding="utf-8"), flags=re.S)
    named = set(re.findall(r"(?<![\w/-])--[a-z][a-z0-9-]+", prose))
    assert named and not sorted(named - known)

