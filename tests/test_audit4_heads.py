"""Heads of user code (audit s41/branching): a monoT5 / duoT5 subclass registered under its own name reads the
templates of the method whose head it subclasses, as LLM heads do (one ``Reranker.prompt_method``);
``register_reranker`` refuses a class whose ``method`` is not the name it is registered under (that ``method`` is what
``describe()`` and ``metrics.json`` record); the "cannot hold this prompt" advice names the options each head declares
(``template_texts``, ``shrink_options``), so a new head's message names its own."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rerank.heads.registry as reranker_registry
from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.heads.llm import LLMReranker
from rerank.heads.registry import get_reranker_class, register_reranker
from rerank.methods import all_methods, get_method
from rerank.methods.duot5.head import DuoT5Config, DuoT5Reranker
from rerank.methods.monot5.head import MonoT5Config, MonoT5Reranker, Seq2SeqConfig, Seq2SeqReranker
from rerank.methods.monot5.seq2seq import ScriptedSeq2Seq
from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker
from rerank.testing import build_t5_tokenizer, build_tokenizer


@pytest.fixture()
def keep_registry() -> Iterator[None]:
    """Put the reranker registry back as it was."""
    registry = reranker_registry.RERANKERS
    saved = {k: (v.copy() if isinstance(v, (dict, set)) else v) for k, v in vars(registry).items()}
    yield
    vars(registry).clear()
    vars(registry).update(saved)


def _scripted_t5() -> ScriptedSeq2Seq:
    """A scripted seq2seq model: P(true) grows with the document's length."""

    def fn(text: str, ids: Any) -> list[float]:
        p = min(0.9, 0.1 + 0.01 * len(text))
        return [math.log(p), math.log(1.0 - p)]

    return ScriptedSeq2Seq(build_t5_tokenizer(), fn)


class UserMonoT5(MonoT5Reranker):
    method = "test-audit4-monot5"


class UserDuoT5(DuoT5Reranker):
    method = "test-audit4-duot5"


# ---------------------------------------------------------------- finding 2: seq2seq subclasses find their templates


@pytest.mark.parametrize(("cls", "config", "owner"), [(UserMonoT5, MonoT5Config, "monot5"),
                                                      (UserDuoT5, DuoT5Config, "duot5")])
def test_a_seq2seq_subclass_reads_its_base_methods_templates(cls: type[Seq2SeqReranker], config: type, owner: str
                                                             ) -> None:
    """It was "unknown method 'test-audit4-monot5'" (get_method(self.method)), raised after the weights loaded."""
    assert cls.prompt_method() == owner
    head = cls(config(), _scripted_t5())
    assert head.template.path == str(get_method(owner).folder / get_method(owner).templates[0])
    assert len(head.rerank("q", ["a", "bb", "ccc"]).results) == 3
    assert head.describe()["method"] == cls.method
    other = "duot5" if owner == "monot5" else "monot5"  # another method's template is refused, as for the built-in
    with pytest.raises(ConfigError, match=f"template '{other}' is the {other} method's prompt, not one the {owner} "
                                          f"head reads"):
        cls(config(template=other), _scripted_t5())


def test_a_registered_monot5_subclass_loads_by_its_own_name(tiny_t5_dir: Path, keep_registry: None) -> None:
    register_reranker(UserMonoT5.method, UserMonoT5)
    head = Reranker.load(UserMonoT5.method, model=str(tiny_t5_dir))
    assert isinstance(head, UserMonoT5) and head.template.source == MonoT5Reranker(
        MonoT5Config(), _scripted_t5()).template.source
    assert len(head.rerank("what is a zebra", ["zebras are striped", "paris", "a cat"]).results) == 3
    assert head.describe()["method"] == UserMonoT5.method
    with pytest.raises(ConfigError, match="template 'duot5' is the duot5 method's prompt"):
        Reranker.load(UserMonoT5.method, model=str(tiny_t5_dir), template="duot5")  # refused before the model loads


def test_a_seq2seq_head_of_no_method_asks_for_a_template() -> None:
    class Bare(Seq2SeqReranker):
        method = "test-audit4-bare-seq2seq"

        def score_candidates(self, query: Any, candidates: list[Any]) -> list[float]:
            return [0.0] * len(candidates)

    with pytest.raises(ConfigError, match="^test-audit4-bare-seq2seq: the head subclasses no method's head, so it has "
                                          "no default prompt template: give template="):
        Bare(Seq2SeqConfig(), _scripted_t5())


# ---------------------------------------------------------------- finding 6: the registered name is the recorded one


def test_register_reranker_refuses_a_class_whose_method_is_another_name(keep_registry: None) -> None:
    """A subclass registered under a new name but keeping ``method = "monot5"`` recorded 'monot5' in metrics.json."""

    class Inherited(MonoT5Reranker):
        pass

    with pytest.raises(ConfigError, match=r"^reranker .*Inherited has method 'monot5' but is registered as "
                                          r"'test-audit4-inherited': set method = 'test-audit4-inherited' in the class"):
        register_reranker("test-audit4-inherited", Inherited)
    assert "test-audit4-inherited" not in reranker_registry.available_rerankers()
    with pytest.raises(ConfigError, match="reranker name 'monot5' is taken by the built-in"):
        register_reranker("monot5", Inherited)  # a built-in name is refused as before, not as a name mismatch
    register_reranker("monot5", MonoT5Reranker)  # the built-in class again: no change
    register_reranker(UserMonoT5.method, UserMonoT5)
    assert get_reranker_class(UserMonoT5.method) is UserMonoT5


def test_a_module_class_target_is_checked_when_it_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              keep_registry: None) -> None:
    (tmp_path / "audit4_user_heads.py").write_text(
        "from rerank.methods.monot5.head import MonoT5Reranker\n"
        "class Mine(MonoT5Reranker):\n    method = 'test-audit4-mine'\n"
        "class Copied(MonoT5Reranker):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "audit4_user_heads", raising=False)
    register_reranker("test-audit4-mine", "audit4_user_heads:Mine")
    register_reranker("test-audit4-copied", "audit4_user_heads:Copied")
    assert "audit4_user_heads" not in sys.modules  # registering imports nothing
    assert get_reranker_class("test-audit4-mine").method == "test-audit4-mine"
    with pytest.raises(ConfigError, match="audit4_user_heads:Copied has method 'monot5' but is registered as "
                                          "'test-audit4-copied'"):
        get_reranker_class("test-audit4-copied")


# ---------------------------------------------------------------- item 7: each head names its own options


@pytest.mark.parametrize("name", sorted(m.name for m in all_methods().values() if m.kind == "reranker"
                                         and issubclass(m.resolve("head"), LLMReranker)))
def test_the_options_a_head_names_in_its_advice_are_its_own(name: str) -> None:
    cls = get_method(name).resolve("head")
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    declared = set(cls.template_texts) | set(cls.shrink_options)
    assert declared <= fields
    # a built-in head with one of the options the advice named from a fixed list before declares it (none forgotten)
    assert fields & {"instruction", "prompt", "window", "group_size", "set_size", "max_new_tokens",
                     "max_reasoning_tokens"} <= declared


@dataclasses.dataclass
class PoolConfig(YesNoConfig):
    pool_size: int = 4
    note: str = ""


class PoolYesNo(YesNoReranker):
    method = "test-audit4-pool"
    config_class = PoolConfig
    template_texts = ("note",)
    shrink_options = ("pool_size",)


def test_a_new_heads_advice_names_its_own_options() -> None:
    """The advice listed window / group_size / set_size and instruction / prompt by name: a new head got none."""
    from rerank.backends.scripted import ScriptedBackend

    head = PoolYesNo(PoolConfig(), backend=ScriptedBackend(build_tokenizer(), context_length=64))
    assert head.room_options(0) == ("use a shorter note or template, lower pool_size, or use a model with a longer "
                                    "context")


def test_erank_names_its_reasoning_budget_in_reasoning_mode_only() -> None:
    from rerank.backends.scripted import ScriptedBackend
    from rerank.methods.erank.head import ERankConfig, ERankReranker

    tok = build_tokenizer()
    plain = ERankReranker(ERankConfig(), backend=ScriptedBackend(tok, context_length=64))
    assert plain.room_options(3) == "use a shorter template, or use a model with a longer context"
    reasoning = ERankReranker(ERankConfig(reasoning=True), backend=ScriptedBackend(tok, context_length=64))
    assert reasoning.room_options(300) == ("use a shorter template, lower max_reasoning_tokens, or use a model with a "
                                           "longer context")
