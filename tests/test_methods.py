"""One method, one package: every registry is derived from the method descriptors of ``rerank.methods``, each
descriptor's pieces resolve to the right classes, unknown names raise listing the known ones, and reading the
registries imports no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rerank.errors import ConfigError
from rerank.methods import METHOD_PACKAGES, all_methods, get_method, method_names, resolve, template_files


def test_every_package_declares_one_method_whose_pieces_resolve() -> None:
    methods = all_methods()
    assert len(methods) == len(METHOD_PACKAGES)
    for name, m in methods.items():
        assert m.package == f"rerank.methods.{METHOD_PACKAGES[list(methods).index(name)]}"
        assert m.kind in ("reranker", "retriever")
        if m.head:
            assert resolve(m.head).method == name
        if m.task:
            assert resolve(m.task).method == name and m.head and m.sft_losses
        if m.sft:
            assert callable(resolve(m.sft)) and m.sft_losses
        if m.trainer:
            assert resolve(m.trainer).name == name and m.kind == "retriever"
        if m.teacher_labels:
            assert callable(resolve(m.teacher_labels))
        for t in m.templates:
            assert (m.folder / t).is_file(), (name, t)
        assert (m.kind == "reranker") == (m.head is not None)


def test_registries_are_derived_from_the_descriptors() -> None:
    from rerank.data_recipes.mining import teacher_modes
    from rerank.heads.registry import available_rerankers
    from rerank.prompts import available_templates, load_template
    from rerank.trainers.base import available_trainers

    from rerank.heads.registry import get_reranker_class
    from rerank.trainers.base import TRAINERS

    rerankers = method_names("reranker")  # (other tests register extra test heads and trainers at runtime)
    assert {*rerankers, "remote"} <= set(available_rerankers())
    assert all(get_reranker_class(n) is resolve(get_method(n).head) for n in rerankers)
    assert {"sft", "grpo", *method_names("retriever")} <= set(available_trainers())
    assert all(TRAINERS.get(n) is resolve(get_method(n).trainer) for n in method_names("retriever"))
    inference_only = {"bi-encoder", "setwise", "colbert", "bge-reranker-v2-gemma"}  # no training path (yet)
    assert method_names(trains_with="sft") == [n for n in rerankers if n not in inference_only]
    # the methods each table holds (their order is METHOD_PACKAGES', wherever a method's line is: tested above)
    assert set(method_names(trains_with="grpo")) == {"yes-no", "erank", "listwise", "first", "grouprank",
                                                     "qwen3-reranker"}
    modes = teacher_modes()
    assert set(modes[:-2]) == {"erank", "first", "grouprank"} and modes[-2:] == ["scores", "first_stage"]
    assert set(template_files()) <= set(available_templates())
    for name in template_files():
        assert load_template(name).user  # every shipped template loads by name
    erank = get_method("erank")
    assert (erank.grpo.num_generations, erank.grpo.learning_rate) == (5, 1e-6)
    assert get_method("first").sft_losses[0] == "lm+ranknet" and get_method("cross-encoder").sft_losses[0] == "bce"


def _listed(message: str, before: str) -> set[str]:
    """The comma-separated names ``message`` lists after ``before``, to its end."""
    assert before in message, message
    return set(message.split(before, 1)[1].split(", "))


def test_unknown_names_raise_listing_the_known_ones() -> None:
    """Each listing holds every known name (in whatever order the methods are listed, so a method's line can go
    anywhere in ``METHOD_PACKAGES``)."""
    from rerank.heads.base import Reranker
    from rerank.prompts import available_templates, load_template
    from rerank.trainers.base import available_trainers, get_trainer
    from rerank.trainers.task import build_task

    with pytest.raises(ConfigError, match="^unknown method 'nope'; known: ") as caught:
        get_method("nope")
    assert _listed(str(caught.value), "known: ") == set(all_methods()) >= {"cross-encoder", "yes-no", "erank"}
    with pytest.raises(ConfigError, match="^unknown retriever 'erank'; known: ") as caught:
        get_method("erank", kind="retriever")
    assert _listed(str(caught.value), "known: ") == set(method_names("retriever")) >= {"contrastive", "star", "adore",
                                                                                        "pgrank"}
    with pytest.raises(ConfigError, match="unknown reranker 'nope'; known rerankers: .*grouprank"):
        Reranker.load("nope")
    with pytest.raises(ConfigError, match="unknown reranker 'cross-encodr'; known rerankers"):  # before the model
        Reranker.load("cross-encodr", model="/no/such/model")
    with pytest.raises(ConfigError, match="/no/such/model is neither a trained model folder .* known methods: "):
        Reranker.load("/no/such/model")
    with pytest.raises(ConfigError, match=r"cross-encoder needs a model \(model=\.\.\. in Python"):
        Reranker.load("cross-encoder")
    with pytest.raises(ConfigError, match="unknown backend 'foo'; known backends: .*transformers"):
        Reranker.load("cross-encoder", model="m", backend="foo")
    with pytest.raises(ConfigError, match="cross-encoder runs on the transformers backend only, not 'vllm'"):
        Reranker.load("cross-encoder", model="m", backend="vllm")
    with pytest.raises(ConfigError, match="^unknown trainer 'nope'; known trainers: ") as caught:
        get_trainer("nope")
    assert _listed(str(caught.value), "known trainers: ") == set(available_trainers()) >= {"adore", "contrastive",
                                                                                            "grpo", "sft"}
    no_task = "^method 'cross-encoder' has no LLM training task; methods with one: "
    with pytest.raises(ConfigError, match=no_task) as caught:
        build_task("cross-encoder", None, None)
    with_task = {n for n, m in all_methods().items() if m.task}
    assert _listed(str(caught.value), "methods with one: ") == with_task >= {"yes-no", "erank", "grouprank"}
    with pytest.raises(ConfigError, match="^unknown prompt template 'nope'; shipped: ") as caught:
        load_template("nope")
    assert _listed(str(caught.value), "shipped: ") == set(available_templates()) >= {"bge_reranker_v2_gemma",
                                                                                      "duot5", "erank"}


def test_reading_the_registries_imports_no_torch(repo_root: Path) -> None:
    code = ("import sys\n"
            "from rerank.methods import all_methods\n"
            "from rerank.heads.registry import available_rerankers\n"
            "from rerank.trainers.base import available_trainers\n"
            "from rerank.data_recipes.mining import teacher_modes\n"
            "from rerank.prompts import available_templates\n"
            "all_methods(); available_rerankers(); available_trainers(); teacher_modes(); available_templates()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
