"""Adding a method (audit s40/contributor): a contributor's mistake in a method package is a one-line error when the
descriptors load or the name is used, never another method's prompt or trainer used silently. A template name shipped
twice, a name taken by a built-in entry, a head / task class naming another method, a descriptor field of the wrong
shape or pointing nowhere (also caught by ``rerank train --check``); ``register_reranker`` works end to end for an
LLM head from user code; an unknown template lists only the head's own."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import rerank.heads.registry as reranker_registry
import rerank.methods as methods_pkg
from rerank.errors import ConfigError
from rerank.heads.registry import register_reranker
from rerank.methods import Method, all_methods, get_method
from rerank.methods.yes_no.head import YesNoReranker
from rerank.prompts import _method_variables
from rerank.trainers.base import TRAINERS, register_trainer
from tests.method_support import add_method_package, forget_method_packages, kept_registries

YES_NO = Path(methods_pkg.__file__).parent / "yes_no"
JUDGE_YAML = (YES_NO / "yes_no.yaml").read_text().replace('"yes"', '"true"').replace('"no"', '"false"')


def _descriptor(name: str, pkg: str, **fields: str) -> str:
    """A method package's ``__init__.py``: the yes-no pieces copied under ``name`` (fields override, as source)."""
    values = {"kind": '"reranker"', "head": f'"rerank.methods.{pkg}.head:JudgeReranker"',
              "task": f'"rerank.methods.{pkg}.task:JudgeTask"', "templates": '("judge.yaml",)', **fields}
    body = ", ".join(f"{k}={v}" for k, v in values.items())
    return (f"from rerank.methods.base import GRPODefaults, Method\n"
            f"METHOD = Method(name={name!r}, package=__name__, summary='judge', sft_losses=('lm',), "
            f"grpo=GRPODefaults(num_generations=8, learning_rate=1e-5), {body})\n")


@pytest.fixture
def add_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """``add_method(pkg, init=..., head_method=..., task_method=..., files=...)`` writes a method package as a
    contributor would (head and task copied from yes_no), appends it to ``METHOD_PACKAGES`` and rebuilds the method
    list and the reranker registry; all restored afterwards."""
    root = tmp_path / "extra_methods"
    root.mkdir()
    monkeypatch.setattr(methods_pkg, "__path__", [*methods_pkg.__path__, str(root)])
    monkeypatch.setattr(methods_pkg, "_METHODS", None)
    monkeypatch.setattr(reranker_registry, "RERANKERS", reranker_registry.RERANKERS)  # restored after the reload
    added: list[str] = []

    def add(pkg: str, name: str = "judge", init: str | None = None, head_method: str | None = None,
            task_method: str | None = None, files: dict[str, str] | None = None) -> str:
        folder = root / pkg
        folder.mkdir()
        (folder / "__init__.py").write_text(init if init is not None else _descriptor(name, pkg))
        (folder / "head.py").write_text("from rerank.methods.yes_no.head import YesNoReranker\n"
                                        f"class JudgeReranker(YesNoReranker):\n    method = {head_method or name!r}\n")
        (folder / "task.py").write_text("from rerank.methods.yes_no.task import YesNoTask\n"
                                        f"class JudgeTask(YesNoTask):\n    method = {task_method or name!r}\n")
        for file, text in (files if files is not None else {"judge.yaml": JUDGE_YAML}).items():
            (folder / file).write_text(text)
        add_method_package(monkeypatch, added, pkg)
        importlib.reload(reranker_registry)
        return str(folder)

    yield add
    forget_method_packages(added)
    _method_variables.cache_clear()


@pytest.fixture
def keep_registries() -> Iterator[None]:
    """Put the reranker and trainer registries back as they were (a replaced built-in included)."""
    with kept_registries():
        yield


def test_a_template_name_shipped_twice_is_refused_naming_both_files(add_method: Callable[..., str], run_cli,
                                                                     tmp_path: Path, tiny_llm_dir: Path) -> None:
    """Finding 1: a new method's ``yes_no.yaml`` silently replaced the shipped yes-no head's prompt."""
    add_method("judge_clash", init=_descriptor("judge", "judge_clash", templates='("yes_no.yaml",)'),
               files={"yes_no.yaml": JUDGE_YAML})
    with pytest.raises(ConfigError, match=r"template name 'yes_no' is declared twice: "
                                          r"rerank/methods/yes_no/yes_no.yaml and .*judge_clash/yes_no.yaml"):
        all_methods()
    (tmp_path / "in.jsonl").write_text(json.dumps({"query": "q", "docs": ["a", "b"]}) + "\n")
    rc, _, err = run_cli("rank", "--input", tmp_path / "in.jsonl", "--reranker", "yes-no", "--model",
                         tiny_llm_dir, "--output", tmp_path / "out.jsonl")
    assert rc == 2 and err.count("\n") == 1 and "'yes_no' is declared twice" in err, err


def test_a_template_name_of_a_data_recipe_is_refused(add_method: Callable[..., str]) -> None:
    add_method("judge_recipe", init=_descriptor("judge", "judge_recipe", templates='("query_synthesis.yaml",)'),
               files={"query_synthesis.yaml": JUDGE_YAML})
    with pytest.raises(ConfigError, match=r"'query_synthesis' is declared twice: rerank/prompts/templates/"):
        all_methods()


@pytest.mark.parametrize(("name", "kind", "pieces", "taken_by"), [
    ("remote", '"reranker"', {}, "client of a served reranker"),
    ("sft", '"retriever"', {"head": "None", "task": "None", "templates": "()", "grpo": "None", "sft_losses": "()",
                            "trainer": '"rerank.methods.star.trainer:StarTrainer"'}, "shared LLM SFT trainer"),
])
def test_a_method_cannot_take_a_built_in_name(add_method: Callable[..., str], name: str, kind: str,
                                             pieces: dict[str, str], taken_by: str) -> None:
    """Finding 2: a retriever method ``sft`` became ``rerank train sft``; a reranker ``remote`` was shadowed."""
    init = _descriptor(name, f"judge_{name}", kind=kind, **pieces)
    init = init.replace("sft_losses=('lm',), grpo=GRPODefaults(num_generations=8, learning_rate=1e-5), ", "") \
        if pieces else init
    add_method(f"judge_{name}", name=name, init=init)
    with pytest.raises(ConfigError, match=f"method '{name}' .*judge_{name}/__init__.py.*taken by the {taken_by}"):
        all_methods()


def test_built_in_registry_names_are_not_replaced(keep_registries: None) -> None:
    class Other:
        name = "other"

    with pytest.raises(ConfigError, match=r"trainer name 'sft' is taken by the built-in "
                                          r"rerank.trainers.sft_trainer:SFTTrainer; .*Other cannot be registered"):
        register_trainer("sft", Other)
    with pytest.raises(ConfigError, match="reranker name 'remote' is taken by the built-in rerank.client"):
        register_reranker("remote", YesNoReranker)
    with pytest.raises(ConfigError, match="reranker name 'erank' is taken"):
        register_reranker("erank", YesNoReranker)
    register_reranker("yes-no", YesNoReranker)  # the same class again (a module imported twice): no change
    assert reranker_registry.get_reranker_class("yes-no") is YesNoReranker
    register_trainer("test-audit3-user", Other)  # a name of user code is replaced, as before
    register_trainer("test-audit3-user", YesNoReranker)
    assert TRAINERS.get("test-audit3-user") is YesNoReranker
    from rerank.methods import RESERVED_NAMES

    builtin = set(reranker_registry.RERANKERS.builtin_names()) | set(TRAINERS.builtin_names())
    assert builtin - set(all_methods()) == set(RESERVED_NAMES)


def test_a_head_or_task_naming_another_method_is_refused(add_method: Callable[..., str]) -> None:
    """Finding 3: a copied head / task still saying ``method = "yes-no"`` used the yes-no prompt silently."""
    from rerank.trainers.task import build_task

    add_method("judge_names", head_method="yes-no", task_method="yes-no")
    with pytest.raises(ConfigError, match=r"judge_names/head.py: JudgeReranker.method is 'yes-no', but it is the "
                                          r"head= of method 'judge' \(.*judge_names/__init__.py\): "
                                          r"set method = 'judge'"):
        reranker_registry.get_reranker_class("judge")
    with pytest.raises(ConfigError, match=r"judge_names/task.py: JudgeTask.method is 'yes-no', but it is the task= "
                                          r"of method 'judge'"):
        build_task("judge", None, None)


def test_a_well_named_method_loads_and_reads_its_own_prompt(add_method: Callable[..., str],
                                                            tiny_llm_dir: Path) -> None:
    from rerank import Reranker

    add_method("judge_ok")
    rr = Reranker.load("judge", model=str(tiny_llm_dir))
    assert rr.method == "judge" and rr.template.path.endswith("judge_ok/judge.yaml")
    assert rr.template.extra["positive"] == "true"


@pytest.mark.parametrize(("fields", "error"), [
    ({"kind": "rerankers"}, "kind 'rerankers' is not one of reranker, retriever"),
    ({"head": "rerank.methods.x.head.XReranker"},
     r"head='rerank.methods.x.head.XReranker' is not 'package.module:Attr'"),
    ({"templates": "x.yaml"}, r"templates must be a tuple of names, got 'x.yaml' \(one name: \('x',\)\)"),
    ({"templates": ("x.txt",)}, "templates: 'x.txt' is not a .yaml file name"),
    ({"head": None}, "a reranker method needs head="),
    ({"kind": "retriever", "head": None}, "a retriever method needs trainer="),
    ({"kind": "retriever", "trainer": "a.b:C"}, "head= is a reranker method's piece"),
    ({"task": None}, r"grpo= needs task="),
])
def test_descriptor_fields_are_checked_when_built(fields: dict[str, object], error: str) -> None:
    """Findings 6-7: a ``kind`` typo half-registered the method, a malformed piece failed only at use."""
    from rerank.methods import GRPODefaults

    base: dict[str, object] = {"name": "x", "kind": "reranker", "package": "rerank.methods.x", "summary": "s",
                               "head": "rerank.methods.x.head:XReranker", "task": "rerank.methods.x.task:XTask",
                               "grpo": GRPODefaults(8, 1e-5), "templates": ("x.yaml",)}
    with pytest.raises(ConfigError, match=rf"method 'x' \(rerank.methods.x\): {error}"):
        Method(**{**base, **fields})  # type: ignore[arg-type]


def test_a_piece_that_does_not_exist_is_one_line_naming_the_field(add_method: Callable[..., str], run_cli,
                                                                  tmp_path: Path) -> None:
    """Finding 6: a head path typo was a ModuleNotFoundError traceback at use, and ``--check`` said 'state: train'."""
    add_method("judge_typo",
               init=_descriptor("judge", "judge_typo", head='"rerank.methods.judge_typo.heads:JudgeReranker"'))
    with pytest.raises(ConfigError, match=r"method 'judge' \(.*judge_typo/__init__.py\): head: "
                                          r"'rerank.methods.judge_typo.heads:JudgeReranker' cannot be imported: "
                                          r"there is no module 'rerank.methods.judge_typo.heads'"):
        reranker_registry.get_reranker_class("judge")
    rc, out, err = run_cli("train", "sft", "--output", tmp_path / "run", "--set", "model=m", "--set", "head=judge",
                           "--set", "data.path=d.jsonl", "--check", "--inputs-later")
    assert rc == 2 and "state:" not in out and err.count("\n") == 1 and "head: 'rerank.methods.judge_typo.heads" in err


def test_train_check_resolves_the_task_and_the_template(add_method: Callable[..., str], run_cli,
                                                        tmp_path: Path) -> None:
    add_method("judge_check", task_method="yes-no")
    args = ("train", "sft", "--output", tmp_path / "run", "--set", "model=m", "--set", "head=judge", "--set",
            "data.path=d.jsonl", "--check", "--inputs-later")
    rc, out, err = run_cli(*args)
    assert rc == 2 and "state:" not in out and "JudgeTask.method is 'yes-no'" in err, (out, err)
    rc, out, err = run_cli("train", "sft", "--output", tmp_path / "run", "--set", "model=m", "--set", "head=yes-no",
                           "--set", "template=erank", "--set", "data.path=d.jsonl", "--check", "--inputs-later")
    assert rc == 2 and "state:" not in out and "template 'erank' is the erank method's prompt" in err, (out, err)


def test_a_template_file_that_does_not_exist_is_refused_when_the_descriptors_load(
        add_method: Callable[..., str]) -> None:
    """Finding 6: a template file typo was a raw '[Errno 2]' after BM25 mining."""
    add_method("judge_nofile", init=_descriptor("judge", "judge_nofile", templates='("judg.yaml",)'))
    with pytest.raises(ConfigError, match=r"method 'judge' .*: templates: .*judge_nofile/judg.yaml does not exist"):
        all_methods()


def test_register_reranker_works_for_an_llm_head_of_user_code(tiny_llm_dir: Path, keep_registries: None) -> None:
    """Finding 8: a head registered with the exported ``register_reranker`` was 'unknown method' to Reranker.load."""
    from rerank import Reranker
    from rerank.heads.pointwise import PointwiseLLMReranker

    class MyYesNo(YesNoReranker):
        method = "test-audit3-my-yes-no"

    class Bare(PointwiseLLMReranker):
        method = "test-audit3-bare"

    register_reranker(MyYesNo.method, MyYesNo)
    register_reranker(Bare.method, Bare)
    rr = Reranker.load(MyYesNo.method, model=str(tiny_llm_dir))
    assert isinstance(rr, MyYesNo) and rr.template.path == str(YES_NO / "yes_no.yaml")
    assert len(rr.rerank("q", ["a", "b"]).results) == 2
    with pytest.raises(ConfigError, match="template 'erank' is the erank method's prompt"):
        Reranker.load(MyYesNo.method, model=str(tiny_llm_dir), template="erank")
    with pytest.raises(ConfigError, match="test-audit3-bare: the head subclasses no method's head, so it has no "
                                          "default prompt template: give template="):
        Reranker.load(Bare.method, model=str(tiny_llm_dir))


def test_an_unknown_template_lists_the_heads_own_only(tiny_llm_dir: Path) -> None:
    """Finding 9: ``template=nope`` listed erank, first, … which the yes-no head then refuses."""
    from rerank import Reranker

    with pytest.raises(ConfigError, match=r"^yes-no: unknown prompt template 'nope'; the yes-no head's own: yes_no "
                                          r"\(or a template file written for it\)$"):
        Reranker.load("yes-no", model=str(tiny_llm_dir), template="nope")
    with pytest.raises(ConfigError, match=r"the listwise head's own: listwise, listwise-letters, listwise-compact, "
                                          r"listwise-letters-compact \("):
        Reranker.load("listwise", model=str(tiny_llm_dir), template="nope")
    assert get_method("yes-no").default_template == "yes_no"


def test_a_method_package_line_naming_no_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(methods_pkg, "METHOD_PACKAGES", (*methods_pkg.METHOD_PACKAGES, "no_such_method"))
    monkeypatch.setattr(methods_pkg, "_METHODS", None)
    with pytest.raises(ConfigError, match=r"METHOD_PACKAGES \(rerank/methods/__init__.py\) names 'no_such_method', "
                                          r"but there is no package rerank/methods/no_such_method"):
        all_methods()


def test_builtin_retriever_and_backend_names_cannot_be_replaced() -> None:
    """register_retriever("bm25", X) / register_backend("vllm", X) refuse another class (a silent replacement would
    send every bm25 run or vllm head to X); the same target again is a no-op."""
    from rerank.backends.registry import backend_class, register_backend
    from rerank.retrieval.base import RETRIEVERS, register_retriever

    class Other:
        pass

    with pytest.raises(ConfigError, match=r"retriever name 'bm25' is taken by the built-in "
                                          r"rerank\.retrieval\.bm25:BM25Retriever"):
        register_retriever("bm25", Other)
    with pytest.raises(ConfigError, match=r"backend name 'vllm' is taken by the built-in"):
        register_backend("vllm", Other)
    register_retriever("bm25", "rerank.retrieval.bm25:BM25Retriever")  # the same target: a no-op
    assert RETRIEVERS.get("bm25").__name__ == "BM25Retriever"
    assert backend_class("transformers").__name__ == "TransformersBackend"


def test_threads_looking_up_a_reranker_first_all_find_it() -> None:
    """The registries fill on first use: a second thread looking a name up while the first fills waited for nothing
    and found only 'remote' ("unknown reranker 'yes-no'"); now every thread finds the built-in names."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from rerank.heads.registry import get_reranker_class\n"
        "from rerank.trainers.base import get_trainer\n"
        "errors = []\n"
        "def look(i):\n"
        "    try:\n"
        "        get_reranker_class('yes-no') if i % 2 else get_trainer('sft')\n"
        "        get_reranker_class('cross-encoder')\n"
        "    except Exception as e:\n"
        "        errors.append(repr(e))\n"
        "ts = [threading.Thread(target=look, args=(i,)) for i in range(8)]\n"
        "[t.start() for t in ts]\n"
        "[t.join() for t in ts]\n"
        "print(errors)\n"
    )
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]", out
