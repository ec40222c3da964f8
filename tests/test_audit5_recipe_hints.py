"""A recipe's "did you mean" names only a key the recipe config reads as it stands (checked by building it with the
key), else says why that key is refused; a count option of a recipe out of range is a one-line error naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rerank.config import apply_overrides, from_dict, load_yaml
from rerank.data_recipes import RECIPE_DIR
from rerank.data_recipes.base import RECIPE_KEY_HINTS, _recipe_class, build, check_recipe_keys
from rerank.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
ICT = REPO / "configs" / "distill" / "ict-queries.yaml"  # query_synthesis without a first_stage
LLM = REPO / "configs" / "distill" / "llm-queries.yaml"  # query_synthesis with an LLM generator
RECIPES = [*sorted(RECIPE_DIR.glob("*.yaml")),
           *[p for p in sorted((REPO / "configs" / "distill").glob("*.yaml")) if "recipe" in load_yaml(p)]]


def _check(path: Path, overrides: list[str]) -> Any:
    """The typed config of the recipe at ``path`` with ``overrides``, read as ``rerank data build`` reads it."""
    spec = apply_overrides(load_yaml(path), overrides)
    cls = _recipe_class(spec.pop("recipe")).config_class
    check_recipe_keys(cls, spec, "recipe")
    return from_dict(cls, spec, where="recipe")


# ------------------------------------------------------------------------- a hint names a key the recipe reads
@pytest.mark.parametrize(("override", "message"), [
    ("negatives_per_positive=3", "--set negatives_per_positive=3: unknown key 'negatives_per_positive' for "
     "QuerySynthesisConfig (a recipe's negatives per query are num_negatives); this recipe refuses 'num_negatives': "
     "num_negatives needs a first_stage retriever"),
    ("negatives_per_positive=-3", "this recipe refuses 'num_negatives': num_negatives needs a first_stage retriever"),
    ("data.negatives_per_positive=7", "this recipe refuses 'num_negatives': num_negatives needs a first_stage"),
    ("depth=50", "--set depth=50: unknown key 'depth' for QuerySynthesisConfig (the first stage ranks "
     "first_stage.depth documents per query); this recipe refuses 'first_stage.depth': it needs a first_stage block, "
     "which this recipe does not have"),
    ("data.bm25_depth=50", "this recipe refuses 'first_stage.depth': it needs a first_stage block"),
])
def test_a_hint_the_recipe_would_refuse_says_why(override: str, message: str, run_cli, tmp_path: Path) -> None:
    rc, _out, err = run_cli("data", "build", ICT, "--output", tmp_path / "o", "--set", override)
    assert rc == 2 and message in err and "did you mean" not in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("override", "use"), [("negatives_per_positive=3", "num_negatives"),
                                                ("depth=50", "first_stage.depth"),
                                                ("data.bm25_depth=50", "first_stage.depth")])
def test_with_a_first_stage_the_same_hint_names_the_key(override: str, use: str) -> None:
    with pytest.raises(ConfigError, match=rf"did you mean '{use}'\?"):
        _check(ICT, ["first_stage={retriever: bm25}", override])
    _check(ICT, ["first_stage={retriever: bm25}", f"{use}={override.split('=')[1]}"])  # and the hint is read


def test_a_hint_to_an_option_the_source_does_not_read_says_why() -> None:
    """With ``source.queries`` the split is not read: ``split`` names that refusal, not ``source.split``."""
    over = ["source.queries=OUT/q/data.jsonl", "split=dev"]
    with pytest.raises(ConfigError, match=r"^--set split=dev: unknown key 'split' for HardNegativesConfig \(a recipe "
                                          r"reads the queries of source\.split\); this recipe refuses 'source\.split': "
                                          r"split 'dev' is not read with 'queries'.*drop split$"):
        _check(RECIPE_DIR / "scifact-hard-negatives.yaml", over)
    with pytest.raises(ConfigError, match=r"did you mean 'source\.split'\?"):
        _check(RECIPE_DIR / "scifact-hard-negatives.yaml", ["split=dev"])


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_suggested_key_is_read_by_that_recipe(path: Path) -> None:
    """For every hinted key on every shipped recipe: following a "did you mean" is not refused as an option the
    recipe does not read (it builds, or fails only on the value)."""
    for key, (uses, _why) in RECIPE_KEY_HINTS.items():
        value = "dev" if "split" in uses[0] else ("random" if uses == ("sampling",) else "5")
        try:
            _check(path, [f"{key}={value}"])
        except ConfigError as e:
            suggested = str(e).partition("did you mean '")[2].partition("'")[0]
        else:
            continue  # a key of this recipe (source.max_queries)
        if not suggested:
            continue
        try:
            _check(path, [f"{suggested}={value}"])
        except ConfigError as e:
            assert "drop" not in str(e) and "needs" not in str(e), (key, suggested, str(e))


# ----------------------------------------------------------------------------- count options are range-checked
@pytest.mark.parametrize(("path", "override", "message"), [
    (ICT, "max_docs=-3", "max_docs must be >= 1, got -3"),
    (ICT, "max_docs=0", "max_docs must be >= 1, got 0"),
    (ICT, "min_doc_chars=-1", "min_doc_chars must be >= 0, got -1"),
    (ICT, "min_query_words=0", "min_query_words must be >= 1, got 0"),
    (LLM, "generator.max_new_tokens=0", "max_new_tokens must be >= 1, got 0"),
    (LLM, "generator.max_doc_tokens=-2", "max_doc_tokens must be >= 1, got -2"),
    (RECIPE_DIR / "scifact-hard-negatives.yaml", "source.max_queries=-2", "max_queries must be >= 1"),
    (RECIPE_DIR / "scifact-hard-negatives.yaml", "min_positive_grade=0", "min_positive_grade must be >= 1, got 0"),
], ids=lambda x: x if isinstance(x, str) and "=" in x and " " not in x else "")
def test_a_count_option_out_of_range_is_one_line_naming_it(path: Path, override: str, message: str, run_cli,
                                                           tiny_beir_dir: Path, tmp_path: Path) -> None:
    rc, _out, err = run_cli("data", "build", path, "--output", tmp_path / "o", "--set", override,
                            "--set", f"source.dataset={tiny_beir_dir}")
    assert rc == 2 and err.startswith(f"error: --set {override}: {message}"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not (tmp_path / "o").exists()


def test_negatives_of_query_synthesis_are_range_checked(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """``num_negatives: -1`` took all but the last negative of the window; 0 (rows of the positive alone) is kept."""
    spec = {"recipe": "query_synthesis", "source": {"dataset": str(tiny_beir_dir)}, "generator": {"kind": "sentence"},
            "max_docs": 3, "min_doc_chars": 10, "first_stage": {"retriever": "bm25", "depth": 10}}
    with pytest.raises(ConfigError, match=r"^recipe query_synthesis: num_negatives must be >= 0, got -1$"):
        build({**spec, "num_negatives": -1}, tmp_path / "bad", progress=False)
    rows = build({**spec, "num_negatives": 0}, tmp_path / "ok", progress=False)["counts"]
    assert rows["rows"] > 0 and rows["candidates"] == rows["rows"]
