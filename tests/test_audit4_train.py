"""A new method copied from a built-in (audit s41/branching): the shared training code decides by the method's
descriptor and pieces, never by its name, so the copy gets exactly the training behaviour of the built-in it copies:
the same derived defaults (``configure_train``), the same refusals of options it does not read (``train_reads``), its
own name in the trained model's ``rerank.json``, and its own teacher roles in ``rerank data build``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rerank.methods as methods_pkg
from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.methods import get_method
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from rerank.trainers.sft_trainer import SFTTrainConfig
from tests.method_support import add_method_package, forget_method_packages, kept_registries

#: the pieces a copy subclasses under its own name (the class attribute that names the method)
_CLASSES = {"head": "method", "task": "method"}


@pytest.fixture
def copy_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """``copy_method(builtin, name, pkg, files=...)`` writes a method package as docs/research.md "Writing a new
    method" says: the built-in's descriptor copied (``dataclasses.replace`` of its ``METHOD``: every field but the
    name, package, pieces and templates kept), its head and task subclassed with ``method`` renamed, its ``sft``
    function re-exported as a verbatim copy keeps it, its templates copied under the new name; then appends it to
    ``METHOD_PACKAGES`` (as tests/test_audit3_methods.py's ``add_method``). Restored afterwards."""
    root = tmp_path / "extra_methods"
    root.mkdir()
    monkeypatch.setattr(methods_pkg, "__path__", [*methods_pkg.__path__, str(root)])
    added: list[str] = []

    def copy(builtin: str, name: str, pkg: str, files: dict[str, str] | None = None, **fields: str) -> str:
        base = get_method(builtin)
        folder = root / pkg
        folder.mkdir()
        over: dict[str, str] = {"name": repr(name), "package": "__name__"}
        for piece, attr in _CLASSES.items():
            target = getattr(base, piece)
            if target is not None:
                module, cls = target.split(":")
                (folder / f"{piece}.py").write_text(f"from {module} import {cls} as Base\n"
                                                    f"class Copy(Base):\n    {attr} = {name!r}\n")
                over[piece] = repr(f"rerank.methods.{pkg}.{piece}:Copy")
        if base.sft is not None:
            module, fn = base.sft.split(":")
            (folder / "train.py").write_text(f"from {module} import {fn} as train_copy\n")
            over["sft"] = repr(f"rerank.methods.{pkg}.train:train_copy")
        templates = []
        for t in base.templates:
            new = t.replace(Path(base.folder).name, pkg, 1) if t.startswith(Path(base.folder).name) else f"{pkg}_{t}"
            text = (base.folder / t).read_text().replace(f"name: {Path(t).stem}", f"name: {Path(new).stem}", 1)
            (folder / new).write_text(text)
            templates.append(new)
        if templates:
            over["templates"] = repr(tuple(templates))
        over.update(fields)
        for file, text in (files or {}).items():
            (folder / file).write_text(text)
        body = ", ".join(f"{k}={v}" for k, v in over.items())
        (folder / "__init__.py").write_text(f"import dataclasses\nfrom {base.package} import METHOD as BASE\n"
                                            f"METHOD = dataclasses.replace(BASE, {body})\n")
        add_method_package(monkeypatch, added, pkg)
        return str(folder)

    with kept_registries():  # the registries filled while a copy exists list it as a built-in
        yield copy
    forget_method_packages(added)
    monkeypatch.setattr(methods_pkg, "_METHODS", None)


def _sft(head: str, **over: Any) -> SFTTrainConfig:
    return from_dict(SFTTrainConfig, {"model": "m", "head": head, "data": {"path": "t.jsonl"}, **over})


def _grpo(head: str, **over: Any) -> GRPOTrainConfig:
    return from_dict(GRPOTrainConfig, {"model": "m", "head": head, "data": {"path": "t.jsonl"}, "batch_size": 40,
                                       **over})


def _error(build: Callable[[], Any]) -> str | None:
    """The message of the ConfigError ``build`` raises (None when it builds)."""
    try:
        build()
    except ConfigError as e:
        return str(e)
    return None


# --- findings 3 and 4: the method's own training defaults (configure_train) ------------------------------------------


def test_a_cross_encoder_copy_derives_the_cross_encoders_defaults(copy_method: Callable[..., str]) -> None:
    """my-ce trained queries cut to 32 tokens (the cross-encoder: its head's 256) and took max_length 4, which its
    head then refused to load; unset max_length was None instead of 0 (the model's own)."""
    copy_method("cross-encoder", "my-ce", "my_ce")
    ours, theirs = _sft("my-ce"), _sft("cross-encoder")
    assert (ours.max_query_tokens, ours.max_length) == (theirs.max_query_tokens, theirs.max_length) == (256, 0)
    for bad in (4, -5):
        assert _error(lambda: _sft("my-ce", max_length=bad)) == _error(
            lambda: _sft("cross-encoder", max_length=bad)).replace("'cross-encoder'", "'my-ce'")
        with pytest.raises(ConfigError, match=rf"max_length must be >= 8 for the cross-encoder head 'my-ce' .* got "
                                              rf"{bad}$"):
            _sft("my-ce", max_length=bad)
    assert _sft("my-ce", max_length=8).max_length == 8


def test_the_query_cut_follows_the_copys_own_head_config(copy_method: Callable[..., str]) -> None:
    """The unset max_query_tokens is the method's own inference head's default, read from its config class."""
    head = ("from dataclasses import dataclass\n"
            "from rerank.methods.cross_encoder.head import CrossEncoderConfig, CrossEncoderReranker\n"
            "@dataclass\nclass ShortConfig(CrossEncoderConfig):\n    max_query_tokens: int = 100\n"
            "class Copy(CrossEncoderReranker):\n    method = 'short-ce'\n    config_class = ShortConfig\n")
    copy_method("cross-encoder", "short-ce", "short_ce", files={"head.py": head})
    assert _sft("short-ce").max_query_tokens == 100
    assert _sft("short-ce", max_query_tokens=7).max_query_tokens == 7


# --- findings 7 and 8: the options a method reads are its descriptor's train_reads -----------------------------------

_NEGATIVES = {"data": {"path": "t.jsonl", "negatives_per_positive": 3}}
#: (built-in, its copy's name and package, trainer, options): the copy accepts and refuses exactly what the built-in does
_SAME_AS_BUILTIN = [
    ("cross-encoder", "my-ce", "my_ce", "sft", {"template": "yes_no"}),
    ("cross-encoder", "my-ce", "my_ce", "sft", {"max_doc_tokens": 128}),
    ("cross-encoder", "my-ce", "my_ce", "sft", {"max_length": 4}),
    ("cross-encoder", "my-ce", "my_ce", "sft", {"loss": "bce", **_NEGATIVES}),
    ("cross-encoder", "my-ce", "my_ce", "sft", {"loss": "mnrl", **_NEGATIVES}),
    ("duot5", "pairjudge", "pairjudge", "sft", {"max_length": 512}),
    ("duot5", "pairjudge", "pairjudge", "sft", _NEGATIVES),
    ("monot5", "pointjudge", "pointjudge", "sft", {"max_length": 512}),
    ("erank", "judge", "judge", "sft", {"reasoning": True}),
    ("erank", "judge", "judge", "grpo", {"erank_reference": "zero"}),
]


@pytest.mark.parametrize(("builtin", "name", "pkg", "trainer", "options"), _SAME_AS_BUILTIN)
def test_a_copy_accepts_and_refuses_what_its_builtin_does(copy_method: Callable[..., str], builtin: str, name: str,
                                                          pkg: str, trainer: str, options: dict[str, Any]) -> None:
    """pairjudge took max_length 512 and my-ce template / max_doc_tokens, which nothing read (duot5 and the
    cross-encoder refuse them); judge's reasoning and erank_reference and pairjudge's negatives_per_positive, which
    their copied pieces read, were refused as "an option of head 'erank' only" / "not read by head 'pairjudge'"."""
    copy_method(builtin, name, pkg)
    build = {"sft": _sft, "grpo": _grpo}[trainer]
    theirs = _error(lambda: build(builtin, **options))
    ours = _error(lambda: build(name, **options))
    assert ours == (theirs.replace(repr(builtin), repr(name)) if theirs else None)


def test_options_a_method_does_not_read_are_refused_naming_what_it_reads() -> None:
    """One shared check, one message: the option, the head, what bounds its input or who reads the option, and what
    to do."""
    with pytest.raises(ConfigError, match=r"^config: max_doc_tokens is not an option of head 'cross-encoder': its input is "
                                          r"bounded by max_query_tokens and max_length; drop max_doc_tokens, or set "
                                          r"max_query_tokens / max_length$"):
        _sft("cross-encoder", max_doc_tokens=128)
    with pytest.raises(ConfigError, match=r"^config: reasoning is not an option of head 'yes-no': it is read by erank; drop "
                                          r"reasoning$"):
        _sft("yes-no", reasoning=True)
    with pytest.raises(ConfigError, match=r"^config: erank_reference is not an option of head 'grouprank': it is read by "
                                          r"erank; drop erank_reference$"):
        _grpo("grouprank", erank_reference="zero")
    assert _sft("erank", reasoning=True).reasoning and _grpo("erank", erank_reference="zero").erank_reference == "zero"


def test_train_reads_names_only_options_some_methods_read(copy_method: Callable[..., str]) -> None:
    copy_method("yes-no", "judge", "judge", train_reads="('template', 'batch_size')")
    with pytest.raises(ConfigError, match=r"method 'judge' \(.*judge/__init__.py\): train_reads: 'batch_size' is not "
                                          r"one of the options only some methods read \(template, "):
        get_method("judge")


# --- finding 5: a method's own sft function records the method trained ------------------------------------------------


def _examples(tmp_path: Path) -> Path:
    from rerank.data.io import write_jsonl
    from rerank.testing import synthetic_ranking_examples

    write_jsonl(synthetic_ranking_examples(6, num_candidates=3, seed=4), tmp_path / "t.jsonl")
    return tmp_path / "t.jsonl"


@pytest.mark.parametrize(("builtin", "name", "pkg", "model", "options"), [
    ("cross-encoder", "my-ce", "my_ce", "tiny_bert_dir", {"max_length": 64}),
    ("monot5", "pointjudge", "pointjudge", "tiny_t5_dir", {}),
    ("duot5", "pairjudge", "pairjudge", "tiny_t5_dir", {}),
])
def test_a_copied_sft_function_records_the_copy(copy_method: Callable[..., str], request: pytest.FixtureRequest,
                                                tmp_path: Path, builtin: str, name: str, pkg: str, model: str,
                                                options: dict[str, Any]) -> None:
    """my-ce's train.py (the cross-encoder's function, as a verbatim copy keeps it) wrote "method": "cross-encoder"
    into rerank.json, so the model loaded as the cross-encoder; monoT5 / duoT5 copies trained the built-in's head."""
    from rerank.methods.record import read_record
    from rerank.trainers import sft

    copy_method(builtin, name, pkg)
    out = tmp_path / "out"
    sft({"model": str(request.getfixturevalue(model)), "head": name, "max_steps": 1, "save_steps": 1,
         "batch_size": 2, "use_cpu": True, "data": {"path": str(_examples(tmp_path))}, **options}, out)
    record = read_record(out / "model")
    assert record["method"] == name
    if "template" in record["options"]:  # the rows were built by the copy's own head, with its own template
        assert record["options"]["template"]["name"] == pkg


def test_an_sft_function_recording_another_method_is_refused(copy_method: Callable[..., str],
                                                             tmp_path: Path) -> None:
    """A train.py that writes a method name of its own (a literal kept from the copied file) is a one-line error."""
    from rerank.trainers import sft

    train = ("def train_copy(cfg, train, dev, ctx):\n"
             "    from rerank.trainers.artifacts import write_model_artifacts\n"
             "    (ctx.output / 'model').mkdir(parents=True)\n"
             "    write_model_artifacts(ctx.output / 'model', method='cross-encoder', trainer='sft', config=cfg)\n"
             "    return {}\n")
    copy_method("cross-encoder", "my-ce", "my_ce", files={"train.py": train})
    with pytest.raises(ConfigError, match=r"rerank.json records method 'cross-encoder', but the model was trained as "
                                          r"'my-ce' by rerank.methods.my_ce.train:train_copy: pass cfg.head"):
        sft({"model": "m", "head": "my-ce", "data": {"path": str(_examples(tmp_path))}}, tmp_path / "out")


# --- finding 1: teacher roles and the teacher-label options come from the descriptors -------------------------------

_TEACHER = {"source": {"dataset": "scifact"}, "first_stage": {"retriever": "bm25"},
            "teacher": {"reranker": "cross-encoder", "model": "m"}}


def _teacher_labels(**spec: Any) -> Any:
    from rerank.data_recipes.mining import TeacherLabelsConfig

    return from_dict(TeacherLabelsConfig, {**_TEACHER, **spec}, where="recipe teacher_labels")


def test_a_copied_teacher_mode_reads_the_options_of_the_mode_it_copies(copy_method: Callable[..., str]) -> None:
    """judge's teacher labels with score_map: minmax were refused ("score_map only by mode erank"), although its
    copied teacher reads it and its own error for off-scale scores says to set it."""
    copy_method("erank", "judge", "judge")
    assert _teacher_labels(mode="judge", score_map="minmax").score_map == "minmax"
    with pytest.raises(ConfigError, match=r"group_size is not read by mode judge \(group_size only by mode "
                                          r"grouprank\)"):
        _teacher_labels(mode="judge", group_size=4)
    with pytest.raises(ConfigError, match=r"score_map is not read by mode first \(score_map only by mode erank or "
                                          r"judge\)"):
        _teacher_labels(mode="first", score_map="minmax")


def test_a_teacher_role_the_recipe_has_no_key_for_is_refused_in_one_line(copy_method: Callable[..., str], run_cli,
                                                                         tmp_path: Path) -> None:
    """teacher_roles=("judge_teacher",) passed the descriptor check, then rerank data build raised AttributeError
    (a traceback); the recipe has no key for it, so the descriptor is refused when it loads."""
    copy_method("erank", "judge", "judge", teacher_roles="('judge_teacher',)")
    with pytest.raises(ConfigError, match=r"method 'judge' \(.*judge/__init__.py\): teacher_roles: 'judge_teacher' "
                                          r"is not a teacher key of rerank data build's teacher_labels recipe "
                                          r"\(teacher, pointwise_teacher, listwise_teacher\)"):
        get_method("judge")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("recipe: teacher_labels\nmode: judge\nsource: {dataset: scifact}\n"
                      "first_stage: {retriever: bm25}\nteacher: {reranker: cross-encoder, model: m}\n")
    rc, _, err = run_cli("data", "build", recipe, "--output", tmp_path / "out")
    assert rc == 2 and err.count("\n") == 1 and "teacher_roles: 'judge_teacher'" in err, err


# --- rollouts: the GRPO rollouts a task draws are its own (Task.rollouts, Task.sample_completions) -------------------


def test_a_copied_first_takes_the_plackett_luce_rollout(copy_method: Callable[..., str]) -> None:
    """my-first's task (FIRST's, subclassed) draws Plackett-Luce rollouts, but the config refused them: "needs head
    'first'"."""
    copy_method("first", "my-first", "my_first")
    pl = {"rollout": "plackett-luce", "batch_size": 8}
    assert _grpo("my-first", **pl).rollout == _grpo("first", **pl).rollout == "plackett-luce"
    with pytest.raises(ConfigError, match=r"rollout 'plackett-luce' is not drawn by the task of head 'erank' \(it "
                                          r"draws generate; plackett-luce is drawn by first, my-first\)"):
        _grpo("erank", **pl)


def test_the_held_out_reward_samples_through_the_task(copy_method: Callable[..., str], tiny_llm_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """per_query_reward imported FIRST's first-identifier sampling into shared code; it asks the method's task."""
    from rerank.testing import synthetic_ranking_examples
    from rerank.trainers.evaluate import per_query_reward

    copy_method("first", "my-first", "my_first")
    task_cls = get_method("my-first").resolve("task")
    calls: list[int] = []

    def sample(self: Any, model: Any, row: dict[str, Any], samples: int, generator: Any) -> list[str]:
        calls.append(samples)
        return ["[A] > [B]"] * samples

    monkeypatch.setattr(task_cls, "sample_completions", sample)
    examples = synthetic_ranking_examples(2, num_candidates=2, seed=1)
    rewards = per_query_reward(str(tiny_llm_dir), {"head": "my-first", "window": 2, "batch_size": 8,
                                                   "data": {"path": "t.jsonl"}, "rollout": "plackett-luce"},
                               examples, samples=3)
    assert len(rewards) == 2 and calls == [3, 3]


def test_a_copied_cross_encoders_card_shows_the_cross_encoder_usage(copy_method: Callable[..., str],
                                                                    tmp_path: Path) -> None:
    """The model card's sentence-transformers CrossEncoder snippet followed the name 'cross-encoder'; it follows the
    descriptor's Hub metadata (a sentence-transformers text-ranking model), which the copy keeps."""
    from rerank.trainers.artifacts import write_model_artifacts

    copy_method("cross-encoder", "my-ce", "my_ce")
    for name in ("cross-encoder", "my-ce", "monot5"):
        (tmp_path / name).mkdir()
        write_model_artifacts(tmp_path / name, method=name, trainer="sft", config={"model": "m"}, options={})
        card = (tmp_path / name / "README.md").read_text()
        assert ("CrossEncoder(" in card) == (name != "monot5"), name
