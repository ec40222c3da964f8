"""``rerank data build RECIPE.yaml [--output DIR] [--data-root DIR] [--resume] [--set key=value]``."""

from __future__ import annotations

import argparse

from rerank.cli.common import add_data_root, check_cache_writable, check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build training data with a recipe (hard negatives, teacher labels, queries)")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    summary = "run a recipe into JSONL in the training schema + manifest.json"
    b = dsub.add_parser("build", help=summary, description=summary)
    b.add_argument("recipe", help="recipe YAML path, or the name of a shipped recipe")
    b.add_argument("--output", default=None,
                   help="output folder (data.jsonl, manifest.json; default: <cache>/data/<recipe name>)")
    b.add_argument("--resume", action="store_true", help="continue an interrupted build in --output")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (dotted keys for nested options)")
    add_data_root(b)
    b.set_defaults(func=run_build)
    ls = dsub.add_parser("recipes", help="list the shipped recipes", description="list the shipped recipes")
    ls.set_defaults(func=run_list)


def run_build(args: argparse.Namespace) -> int:
    from rerank.config import apply_overrides, load_yaml
    from rerank.data.datasets import cache_root
    from rerank.data_recipes import recipe_path
    from rerank.data_recipes.base import build

    path = recipe_path(args.recipe)
    out = args.output or str(cache_root() / "data" / path.stem)
    check_output_dir(out)
    check_cache_writable()  # the recipe's BM25 index and LLM teacher answers are cached
    recipe = apply_overrides(load_yaml(path), args.overrides)
    manifest = build(recipe, out, data_root=args.data_root, resume=args.resume)
    c = manifest["counts"]
    print(f"{manifest['recipe']}: {c['rows']} rows ({c['candidates']} candidates) from {c['units']} units "
          f"-> {out}/data.jsonl (recipe hash {manifest['recipe_hash']})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from rerank.data_recipes import RECIPE_DIR, shipped_recipes

    for name in shipped_recipes():
        print(f"{name}\t{RECIPE_DIR / (name + '.yaml')}")
    return 0
