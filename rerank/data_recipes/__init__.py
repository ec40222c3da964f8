"""Training-data recipes: hard-negative mining, teacher labelling, query synthesis (``rerank data build``).

Recipes are YAML files with a ``recipe`` kind; the shipped ones live in ``rerank/data_recipes/recipes``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RECIPES", "RECIPE_DIR", "shipped_recipes", "recipe_path"]

# kind -> "module:Class" (imported on use)
RECIPES: dict[str, str] = {
    "hard_negatives": "rerank.data_recipes.mining:HardNegativesRecipe",
    "teacher_labels": "rerank.data_recipes.mining:TeacherLabelsRecipe",
    "query_synthesis": "rerank.data_recipes.synthesis:QuerySynthesisRecipe",
}
RECIPE_DIR = Path(__file__).parent / "recipes"


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    """A recipe file by path, or a shipped recipe by name."""
    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    from rerank.errors import ConfigError

    raise ConfigError(f"recipe {name_or_path!r}: no such file and no shipped recipe; shipped: "
                      f"{', '.join(shipped_recipes())}")
