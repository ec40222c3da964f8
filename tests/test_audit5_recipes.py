"""Recipe vocabulary and method-owned reward options: every recipe reads its dataset as ``source.dataset`` (a
top-level ``dataset`` is refused naming it), a recipe error caused by a ``--set`` override names the override, other
commands' names for a recipe option get a "did you mean", and a method declares its own reward options in its own
package (``rewards.<name>`` works without editing ``rerank/trainers/rewards.py``), the rewards unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import fields
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


# ------------------------------------------------------------------------- a method's reward options are its own
#: rewards of fixed inputs under the defaults and under every option changed, as rerank computed them when every
#: option was a field of the shared RewardConfig (the values below were printed by that code)
_ODD = {"k": 3, "rel_threshold": 2, "recall_weight": 0.5, "js_weight": 0.3, "rbo_weight": 0.2, "rbo_p": 0.8,
        "invalid_json_penalty": -0.05, "bad_tags_penalty": -0.2, "wrong_count_reward": -0.1, "repair_incomplete": True,
        "missing_penalty": 0.5, "bad_format_penalty": -0.3, "erank_negative_above_positive_penalty": -0.5,
        "erank_scale": 5.0}
_DEFAULTS = {"k": 10, "rel_threshold": 1, "recall_weight": 0.2, "js_weight": 0.1, "rbo_weight": 0.1, "rbo_p": 0.9,
             "invalid_json_penalty": -0.1, "bad_tags_penalty": -0.5, "wrong_count_reward": 0.0,
             "repair_incomplete": False, "missing_penalty": 1.0, "bad_format_penalty": -1.0,
             "erank_negative_above_positive_penalty": -1.0, "erank_scale": 10.0}
_EXPECTED = {
    "default": [[0.5, -1.0, -1.0, -1.0, 0.2, -1.0], -0.5, -0.1, 1.15233134657194, -1.0, 1.2506954696014427, 0.0],
    "odd": [[0.5, -0.3, -0.04000000000000001, -0.5, -0.04000000000000001, -0.36], -0.2, -0.05, 1.1260464304739104,
            -0.3, 1.6091954696014428, 0.6816076927225729],
}


@pytest.mark.parametrize("case", ["default", "odd"])
def test_the_rewards_are_unchanged(case: str) -> None:
    from rerank.methods.erank.reward import erank_listwise_rewards
    from rerank.methods.grouprank.reward import grouprank_reward
    from rerank.methods.listwise.reward import permutation_reward
    from rerank.trainers.rewards import RewardConfig

    assert to_dict(RewardConfig()) == _DEFAULTS
    cfg = from_dict(RewardConfig, _ODD if case == "odd" else {})
    labels = {"a": 2, "b": 0, "c": 1, "d": 0, "e": 2}
    ids, teacher = ["a", "b", "c", "d", "e"], ["e", "a", "c", "b", "d"]
    got = [erank_listwise_rewards([7, None, 3, 9, 2, 5], [2, 1, 0, 0, 1, 0], [6, 5, 4, 8, 1, 2], cfg),
           grouprank_reward(None, labels, False, cfg), grouprank_reward(None, labels, True, cfg),
           grouprank_reward({"a": 9, "b": 1, "c": 5, "d": 5}, labels, True, cfg),
           permutation_reward(None, ids, labels, teacher, cfg),
           permutation_reward(["a", "c", "e", "b", "d"], ids, labels, teacher, cfg),
           permutation_reward(["c", "a"], ids, labels, teacher, cfg)]
    assert got == _EXPECTED[case]


@pytest.mark.parametrize(("option", "message"), [
    ({"k": 0}, "rewards.k (the cutoff of nDCG@k and Recall@k) must be >= 1, got 0"),
    ({"recall_weight": -1.0}, "rewards.recall_weight must be >= 0 (0: the term is off), got -1.0"),
    ({"js_weight": -1.0}, "rewards.js_weight must be >= 0 (0: the term is off), got -1.0"),
    ({"rbo_p": 1.0}, "rewards.rbo_p (RBO's persistence) must be in (0, 1), got 1.0"),
    ({"bad_tags_penalty": 0.1}, "rewards.bad_tags_penalty is a penalty, the reward of a bad output: it must be <= 0, "
                                "got 0.1"),
    ({"erank_negative_above_positive_penalty": 1.0}, "rewards.erank_negative_above_positive_penalty is a penalty, "
                                                     "the reward of a bad output: it must be <= 0, got 1.0"),
    ({"missing_penalty": -1.0}, "rewards.missing_penalty (subtracted per missing id) must be >= 0, got -1.0"),
    ({"erank_scale": 0.0}, "rewards.erank_scale (ERank divides a score distance by it) must be > 0, got 0.0"),
    ({"erank_scale": float("nan")}, "rewards.erank_scale must be a finite number, got nan"),
    ({"nope": 1}, "unknown key 'nope' for RewardConfig; known keys: bad_format_penalty, bad_tags_penalty, "
                  "erank_negative_above_positive_penalty, erank_scale, invalid_json_penalty, js_weight, k, "
                  "missing_penalty, rbo_p, rbo_weight, recall_weight, rel_threshold, repair_incomplete, "
                  "wrong_count_reward"),
])
def test_reward_options_are_checked_as_before(option: dict[str, Any], message: str) -> None:
    from rerank.trainers.rewards import RewardConfig

    with pytest.raises(ConfigError) as caught:
        if "nope" in option:
            from_dict(RewardConfig, option, where="rewards")
        else:
            RewardConfig(**option)
    assert str(caught.value).removeprefix("rewards: ") == message


def test_each_method_declares_the_reward_options_only_its_reward_reads() -> None:
    """The shared options are those several methods' rewards read; every other option is declared in the package of
    the method whose reward reads it (``REWARD_OPTIONS``), and that method's reward reads it."""
    import importlib

    from rerank.methods import all_methods
    from rerank.trainers.rewards import RewardConfig, SharedRewardOptions

    tasks = {m.name: m.resolve("task") for m in all_methods().values() if m.grpo is not None}
    for f in fields(SharedRewardOptions):
        assert sum(f.name in t.reward_fields for t in tasks.values()) >= 2, f.name
    declared = {}
    for m in all_methods().values():
        options = getattr(importlib.import_module(m.package), "REWARD_OPTIONS", None)
        for f in fields(options) if options is not None else ():
            assert f.name in tasks[m.name].reward_fields, (m.name, f.name)
            declared[f.name] = m.name
    assert {"erank_scale": "erank", "js_weight": "grouprank", "rbo_p": "listwise"}.items() <= declared.items()
    assert {f.name for f in fields(RewardConfig)} == {f.name for f in fields(SharedRewardOptions)} | set(declared)


def test_a_reward_option_declared_twice_or_without_default_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import types
    from dataclasses import dataclass

    from rerank.trainers.rewards import reward_config_class

    @dataclass
    class Twice:
        js_weight: float = 0.3

    @dataclass
    class NoDefault:
        my_weight: float

    def method(name: str, options: Any) -> Any:
        module = types.ModuleType(f"fake_method_{name}")
        module.REWARD_OPTIONS = options
        monkeypatch.setitem(sys.modules, module.__name__, module)
        return types.SimpleNamespace(name=name, package=module.__name__, source=f"{name}/__init__.py")

    from rerank.methods import get_method

    with pytest.raises(ConfigError, match=r"^reward option 'js_weight' is declared twice: .*grouprank.* and "
                                          r"twice/__init__\.py"):
        reward_config_class([get_method("grouprank"), method("twice", Twice)])
    with pytest.raises(ConfigError, match=r"^method 'k' \(k/__init__\.py\): REWARD_OPTIONS: option 'my_weight' "
                                          "needs a default"):
        reward_config_class([method("k", NoDefault)])
    with pytest.raises(ConfigError, match="REWARD_OPTIONS must be a dataclass"):
        reward_config_class([method("d", {"my_weight": 1.0})])


_MY_HEAD = {
    "__init__.py": '''
        from dataclasses import dataclass

        from rerank.errors import ConfigError
        from rerank.methods.base import GRPODefaults, Method

        METHOD = Method(name="my-head", kind="reranker", package=__name__, summary="yes-no, its reward scaled",
                        head="rerank.methods.my_head.head:MyHeadReranker",
                        task="rerank.methods.my_head.task:MyHeadTask",
                        sft_losses=("lm",), grpo=GRPODefaults(num_generations=8, learning_rate=1e-5),
                        templates=("my_head.yaml",))


        @dataclass
        class MyRewardOptions:
            my_weight: float = 1.0

            def __post_init__(self) -> None:
                if self.my_weight <= 0:
                    raise ConfigError(f"rewards.my_weight must be > 0, got {self.my_weight}")


        REWARD_OPTIONS = MyRewardOptions
        ''',
    "head.py": '''
        from rerank.methods.yes_no.head import YesNoReranker


        class MyHeadReranker(YesNoReranker):
            method = "my-head"
        ''',
    "task.py": '''
        from rerank.methods.yes_no.task import REWARD_FIELDS, YesNoTask


        class MyHeadTask(YesNoTask):
            method = "my-head"
            reward_fields = REWARD_FIELDS | {"my_weight"}

            def rewards(self, completions, rows):
                return [self.reward_config.my_weight * r for r in super().rewards(completions, rows)]
        ''',
}
_RUN_MY_HEAD = '''
import sys
import rerank.methods as methods
methods.__path__.append(sys.argv[1])
methods.METHOD_PACKAGES = (*methods.METHOD_PACKAGES, "my_head")
from rerank.errors import ConfigError
from rerank.testing import build_tokenizer
from rerank.trainers.base import load_train_config
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from rerank.trainers.task import build_task

base = ["model=m", "data.path=t.jsonl", "batch_size=16"]
cfg = load_train_config(GRPOTrainConfig, None, [*base, "head=my-head", "rewards.my_weight=0.5"])
plain = load_train_config(GRPOTrainConfig, None, [*base, "head=my-head"])
assert (cfg.rewards.my_weight, plain.rewards.my_weight) == (0.5, 1.0)
task = build_task("my-head", build_tokenizer(), cfg)
rows = [{"label": 1}, {"label": 0}, {"label": 1}]
assert task.rewards([task.positive, task.positive, "maybe"], rows) == [0.5, 0.0, -0.5]
for overrides in (["head=my-head", "rewards.my_weight=-1"], ["head=erank", "rewards.my_weight=0.5"],
                  ["head=my-head", "rewards.my_wieght=0.5"]):
    try:
        load_train_config(GRPOTrainConfig, None, [*base, *overrides])
    except ConfigError as e:
        print(e)
'''


def test_a_new_method_declares_its_reward_option_in_its_own_folder(tmp_path: Path) -> None:
    """A method package added as docs/research.md says (its line in METHOD_PACKAGES) with its own ``REWARD_OPTIONS``
    sets ``rewards.my_weight`` in a GRPO config, its reward reads it, its own check runs, and another head and a
    misspelling are refused, with no edit of rerank/trainers/rewards.py."""
    folder = tmp_path / "my_head"
    folder.mkdir()
    for name, text in _MY_HEAD.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    yes_no = (Path(__file__).resolve().parents[1] / "rerank" / "methods" / "yes_no" / "yes_no.yaml").read_text()
    (folder / "my_head.yaml").write_text(yes_no.replace("name: yes_no", "name: my_head"))
    p = subprocess.run([sys.executable, "-c", _RUN_MY_HEAD, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "--set rewards.my_weight=-1: rewards.my_weight must be > 0, got -1.0",
        "--set rewards.my_weight=0.5: rewards.my_weight is not read by the reward of head 'erank' (it reads "
        "bad_format_penalty, "
        "erank_negative_above_positive_penalty, erank_scale, rel_threshold): drop rewards.my_weight",
        "--set rewards.my_wieght=0.5: unknown key 'my_wieght' for RewardConfig; known keys: bad_format_penalty, "
        "bad_tags_penalty, erank_negative_above_positive_penalty, erank_scale, invalid_json_penalty, js_weight, k, "
        "missing_penalty, my_weight, rbo_p, rbo_weight, recall_weight, rel_threshold, repair_incomplete, "
        "wrong_count_reward"]
