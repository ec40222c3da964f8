"""Audit 2 of the data recipes: ``--resume`` refuses changed inputs (the corpus, queries, qrels, a run file,
``source.queries``, a local model), and cut options past ``first_stage.depth`` are refused when the recipe is read."""

from __future__ import annotations

import glob
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rerank.config import from_dict, load_yaml
from rerank.data.datasets import resolve_dataset
from rerank.data.io import write_run
from rerank.data_recipes.base import _recipe_class, build
from rerank.data_recipes.mining import HardNegativesConfig, TeacherLabelsConfig
from rerank.data_recipes.synthesis import QuerySynthesisConfig
from rerank.errors import ConfigError
from rerank.heads.registry import get_reranker_class
from tests.test_data_recipes import OverlapTeacher
from tests.test_suites import OverlapRetriever

# ---- finding 2: --resume and changed inputs -------------------------------------------------------------------------


def _prefix_first_line(path: Path) -> None:
    """Change the file's first line (a corpus document's, a query's or a row's text; a judgement's grade)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if path.suffix == ".jsonl":
        row = json.loads(lines[0])
        key = "query" if "query" in row else "text"
        lines[0] = json.dumps({**row, key: "REVISED " + row[key]}) + "\n"
    else:  # qrels: a header line, then "qid docid grade"
        qid, doc, grade = lines[1].split()
        lines[1] = f"{qid}\t{doc}\t{int(grade) + 1}\n"
    path.write_text("".join(lines), encoding="utf-8")


@pytest.fixture
def setup(tiny_beir_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """A copy of the tiny BEIR folder (the test edits it), a run file over its train queries and a model folder."""
    ds = tmp_path / "ds"
    shutil.copytree(tiny_beir_dir, ds)
    dataset = resolve_dataset(str(ds))
    queries = dataset.split_queries("train")
    write_run(OverlapRetriever.from_dataset(dataset).retrieve(queries, 8), tmp_path / "run.trec")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    recipe = {"recipe": "teacher_labels", "mode": "erank", "source": {"dataset": str(ds), "split": "train"},
              "first_stage": {"run": str(tmp_path / "run.trec"), "depth": 8}, "candidates": 8,
              "teacher": {"reranker": "test-overlap-10", "backend": "none", "model": str(tmp_path / "model"),
                          "options": {"fail_after": 3}}}
    return {"ds": ds, "tmp": tmp_path, "recipe": recipe}


def _teacher() -> type:
    """The class registered as the overlap teacher: pytest may import test_data_recipes twice (as a test module and
    through the import above), each copy registering its own class with its own call counter."""
    return get_reranker_class(OverlapTeacher.method)


def _interrupted(recipe: dict[str, Any], out: Path) -> None:
    """Build until the teacher's 4th query interrupts it: 3 finished units stay in the progress file."""
    _teacher().calls = 0
    with pytest.raises(KeyboardInterrupt):
        build(recipe, out, progress=False)
    assert len((out / "progress.jsonl").read_text().splitlines()) == 3
    _teacher().calls = -10**9  # no more interruptions


_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "corpus": lambda s: _prefix_first_line(s["ds"] / "corpus.jsonl"),
    "queries": lambda s: _prefix_first_line(s["ds"] / "queries.jsonl"),
    "qrels": lambda s: _prefix_first_line(s["ds"] / "qrels" / "train.tsv"),
    "first_stage.run": lambda s: (s["tmp"] / "run.trec").write_text(
        "".join(line.replace(" 8 ", " 9 ") for line in (s["tmp"] / "run.trec").read_text().splitlines(True))),
    "teacher.model": lambda s: (s["tmp"] / "model" / "model.safetensors").write_bytes(b"retrained"),
}


@pytest.mark.parametrize("changed", list(_EDITS))
def test_resume_refuses_a_changed_input(setup: dict[str, Any], changed: str) -> None:
    """Before, the resume finished without a word, mixing rows of the old and the new input."""
    out = setup["tmp"] / "out"
    _interrupted(setup["recipe"], out)
    _EDITS[changed](setup)
    with pytest.raises(ConfigError, match=rf"cannot resume: {changed} \S+ changed since the unfinished build started, "
                                          r"so its 3 finished units .*remove .*\(or choose another --output\) and "
                                          r"rerun without --resume$") as e:
        build(setup["recipe"], out, resume=True, progress=False)
    assert "\n" not in str(e.value)
    assert not (out / "data.jsonl").exists() and len((out / "progress.jsonl").read_text().splitlines()) == 3


def test_resume_with_unchanged_inputs_equals_an_uninterrupted_build(setup: dict[str, Any]) -> None:
    out, fresh = setup["tmp"] / "out", setup["tmp"] / "fresh"
    _interrupted(setup["recipe"], out)
    meta = json.loads((out / "progress.meta.json").read_text())
    assert set(meta["inputs"]) == {"corpus", "queries", "qrels", "first_stage.run", "teacher.model"}
    m = build(setup["recipe"], out, resume=True, progress=False)
    assert m["resumed_units"] == 3 and meta["inputs"]["corpus"]["fingerprint"] == "sha256:" + m["source"]["corpus_sha256"]
    build(setup["recipe"], fresh, progress=False)
    assert (out / "data.jsonl").read_text() == (fresh / "data.jsonl").read_text()


def test_resume_refuses_a_changed_source_queries_file(setup: dict[str, Any]) -> None:
    rows = setup["tmp"] / "rows"
    build({**setup["recipe"], "mode": "scores", "teacher": {"reranker": "test-overlap-10", "backend": "none"}}, rows,
          progress=False)
    recipe = {**setup["recipe"], "source": {"dataset": str(setup["ds"]), "queries": str(rows / "data.jsonl")},
              "first_stage": {"retriever": "test-overlap", "depth": 8}}
    _interrupted(recipe, setup["tmp"] / "out")
    _prefix_first_line(rows / "data.jsonl")
    with pytest.raises(ConfigError, match=r"cannot resume: source.queries \S+data.jsonl changed"):
        build(recipe, setup["tmp"] / "out", resume=True, progress=False)


def test_resume_refuses_a_progress_file_without_fingerprints(setup: dict[str, Any]) -> None:
    """An unfinished build an older rerank started cannot be checked: refused, not trusted."""
    out = setup["tmp"] / "out"
    _interrupted(setup["recipe"], out)
    meta = json.loads((out / "progress.meta.json").read_text())
    del meta["inputs"]
    (out / "progress.meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"recorded no fingerprints of its inputs .*rerun without --resume$"):
        build(setup["recipe"], out, resume=True, progress=False)


def test_resume_of_a_build_stopped_before_its_first_unit_takes_the_new_inputs(setup: dict[str, Any]) -> None:
    """No finished unit: nothing was read from the old input, so the resume starts over with the new one."""
    recipe = {**setup["recipe"], "teacher": {**setup["recipe"]["teacher"], "options": {"fail_after": 0}}}
    out = setup["tmp"] / "out"
    _teacher().calls = 0
    with pytest.raises(KeyboardInterrupt):
        build(recipe, out, progress=False)
    _prefix_first_line(setup["ds"] / "corpus.jsonl")
    _teacher().calls = -10**9
    m = build(recipe, out, resume=True, progress=False)
    assert m["resumed_units"] == 0 and m["counts"]["rows"] > 0


# ---- finding 10: cut options past first_stage.depth ----------------------------------------------------------------

_FS = {"retriever": "bm25", "depth": 50}


@pytest.mark.parametrize(("cls", "spec", "message"), [
    (HardNegativesConfig, {"source": {"dataset": "scifact"}, "first_stage": _FS, "window": [40, 90]},
     r"window \[40, 90\] ends past first_stage depth 50 .*raise first_stage depth to 90"),
    (HardNegativesConfig, {"source": {"dataset": "scifact"}, "first_stage": _FS, "window": [60, 90]},
     r"window \[60, 90\] ends past first_stage depth 50"),
    (TeacherLabelsConfig, {"source": {"dataset": "scifact"}, "first_stage": _FS, "mode": "first_stage",
                           "candidates": 51}, r"candidates 51 is above first_stage depth 50 .*candidates <= 50"),
    (QuerySynthesisConfig, {"source": {"dataset": "scifact"}, "generator": {"kind": "sentence"}, "first_stage": _FS,
                            "negative_window": [5, 51]}, r"negative_window \[5, 51\] ends past first_stage depth 50"),
])
def test_cut_past_the_first_stage_depth_is_refused(cls: type, spec: dict[str, Any], message: str) -> None:
    """Before, the cut was silently shortened to the first stage's depth (12 candidates for window [40, 90])."""
    with pytest.raises(ConfigError, match=message):
        from_dict(cls, spec, where="recipe")


@pytest.mark.parametrize(("cls", "spec"), [
    (HardNegativesConfig, {"source": {"dataset": "scifact"}, "first_stage": _FS, "window": [40, 50]}),
    (HardNegativesConfig, {"source": {"dataset": "scifact"}, "first_stage": _FS}),  # the default [1, 100]: the ranking
    (TeacherLabelsConfig, {"source": {"dataset": "scifact"}, "first_stage": _FS, "mode": "first_stage",
                           "candidates": 50}),
    (TeacherLabelsConfig, {"source": {"dataset": "scifact"}, "first_stage": {"retriever": "bm25", "depth": 10},
                           "mode": "first_stage"}),  # the default 20: the first stage's 10
    (QuerySynthesisConfig, {"source": {"dataset": "scifact"}, "generator": {"kind": "sentence"}, "first_stage": _FS,
                            "negative_window": [5, 50]}),
])
def test_cut_within_the_depth_or_left_at_its_default_loads(cls: type, spec: dict[str, Any]) -> None:
    from_dict(cls, spec, where="recipe")


def test_shipped_recipe_configs_still_load() -> None:
    root = Path(__file__).resolve().parent.parent
    paths = glob.glob(f"{root}/configs/**/*.yaml", recursive=True) + glob.glob(f"{root}/rerank/data_recipes/recipes/*.yaml")
    recipes = [d for d in map(load_yaml, paths) if isinstance(d, dict) and "recipe" in d]
    assert len(recipes) >= 5
    for d in recipes:
        spec = {k: v for k, v in d.items() if k != "recipe"}
        from_dict(_recipe_class(d["recipe"]).config_class, spec, where=f"recipe {d['recipe']}")
