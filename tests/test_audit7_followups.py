"""Review AF follow-ups: an ``extra_rewards`` function is called with every argument by keyword, so TRL's own shape
``f(prompts, completions, **kwargs)`` works, and a signature that cannot take the documented keywords is a one-line
error with the config (``--check``), not after the model loads; GRPO compares a given template with the starting
model's recorded one by content, not by name; setwise needs exactly one token a label."""

from __future__ import annotations

import json
import logging
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from rerank.backends.scripted import ScriptedBackend
from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.methods.record import RECORD_FILE, record_payload
from rerank.methods.setwise.head import SetwiseConfig, SetwiseReranker
from rerank.prompts import load_template
from rerank.testing import build_tokenizer
from rerank.trainers.grpo_trainer import GRPOTrainConfig, extra_reward_function
from rerank.trainers.task import Parsed

REPO = Path(__file__).resolve().parents[1]

REWARDS_SRC = '''
CALLS = []


def trl_style(prompts, completions, **kwargs):
    CALLS.append(("trl_style", prompts, completions, sorted(kwargs)))
    return [float(len(c)) for c in completions]


def some_with_kwargs(labels, completions, **kwargs):
    CALLS.append(("some_with_kwargs", labels, completions))
    return [labels[i][0] for i in range(len(completions))]


def all_seven(completions, prompts, queries, doc_ids, labels, parsed, step):
    CALLS.append(("all_seven", step, [p.valid for p in parsed]))
    return [0.0 for _ in completions]


def strict_subset(completions, labels):
    return [0.0 for _ in completions]


def needs_more(completions, threshold, **kwargs):
    return [0.0 for _ in completions]


def positional_only(completions, /, **kwargs):
    return [0.0 for _ in completions]


class Scorer:
    def __call__(self, *, completions, **kwargs):
        return [1.0 for _ in completions]


scorer = Scorer()
'''

BASE = {"model": "m", "head": "first", "data": {"path": "x"}, "batch_size": 8}


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    d = tmp_path_factory.mktemp("af_rewards")
    (d / "af_rewards.py").write_text(REWARDS_SRC)
    sys.path.insert(0, str(d))
    yield __import__("af_rewards")
    sys.path.remove(str(d))
    sys.modules.pop("af_rewards", None)


def _call_as_trl(fn: Any) -> list[float]:
    """Call a reward function the way TRL's GRPOTrainer does: everything by keyword, dataset columns included."""
    return fn(prompts=["p1", "p2"], completions=["yes", "no!"], completion_ids=[[1], [2]],
              trainer_state=SimpleNamespace(global_step=7), label=[1, 0], reward_query=["q1", "q2"],
              reward_doc_ids=[["d1"], ["d9"]], reward_labels=[[2.0], [0.0]])


@pytest.mark.parametrize("name", ["trl_style", "some_with_kwargs", "all_seven", "scorer"])
def test_extra_rewards_of_any_documented_shape_pass_the_check_and_run(user_module: Any, name: str) -> None:
    cfg = from_dict(GRPOTrainConfig, {**BASE, "extra_rewards": [{"function": f"af_rewards:{name}", "weight": 0.5}]})
    task = SimpleNamespace(safe_parse=lambda text, row: Parsed(valid=text == "yes", scores=[1.0]), method="yes-no")
    columns = ["label", "reward_query", "reward_doc_ids", "reward_labels"]
    fn = extra_reward_function(task, columns, cfg.extra_rewards[0], 0)
    user_module.CALLS.clear()
    values = _call_as_trl(fn)
    assert len(values) == 2
    if name == "trl_style":
        assert values == [3.0, 3.0]
        assert user_module.CALLS == [("trl_style", ["p1", "p2"], ["yes", "no!"],
                                      ["doc_ids", "labels", "parsed", "queries", "step"])]
    elif name == "some_with_kwargs":
        assert values == [2.0, 0.0] and user_module.CALLS == [("some_with_kwargs", [[2.0], [0.0]], ["yes", "no!"])]
    elif name == "all_seven":
        assert user_module.CALLS == [("all_seven", 7, [True, False])]


@pytest.mark.parametrize(("name", "said"), [
    ("strict_subset", r"af_rewards:strict_subset\(completions, labels\) does not accept prompts, queries, doc_ids, "
                      r"parsed, step: it is called as fn\(\*, completions, prompts"),
    ("needs_more", r"af_rewards:needs_more\(completions, threshold, \*\*kwargs\) requires threshold, which is not "
                   r"passed"),
    ("positional_only", r"af_rewards:positional_only\(completions, /, \*\*kwargs\) takes completions by position "
                        r"only"),
])
def test_an_extra_reward_that_cannot_take_the_keywords_is_refused_with_the_config(user_module: Any, name: str,
                                                                                   said: str) -> None:
    with pytest.raises(ConfigError, match=r"extra_rewards\[0\]\.function: " + said) as e:
        from_dict(GRPOTrainConfig, {**BASE, "extra_rewards": [{"function": f"af_rewards:{name}"}]})
    assert "\n" not in str(e.value)


def test_check_refuses_a_strict_extra_reward_in_one_line(user_module: Any, run_cli: Any, tmp_path: Path) -> None:
    config = {**BASE, "extra_rewards": [{"function": "af_rewards:strict_subset"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    rc, _, err = run_cli("train", "grpo", "--config", tmp_path / "c.yaml", "--output", tmp_path / "o", "--check")
    assert rc == 2 and "does not accept prompts" in err and len(err.strip().splitlines()) == 1, err


def test_training_docs_state_the_keyword_call_and_trl_shape() -> None:
    text = " ".join((REPO / "docs/training.md").read_text(encoding="utf-8").split())
    call = "`fn(completions=…, prompts=…, queries=…, doc_ids=…, labels=…, parsed=…, step=…)`"
    assert f"{call}, every argument by keyword" in text
    assert "`def f(prompts, completions, **kwargs)`" in text


def _recorded_model(path: Path, template: dict[str, Any]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    payload = record_payload("first", "reranker", {"template": template}, "sft", "base")
    (path / RECORD_FILE).write_text(json.dumps(payload), encoding="utf-8")
    return path


def test_grpo_compares_the_template_by_content_not_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    renamed = {**load_template("first-compact").to_dict(), "name": "first"}  # recorded before the rename
    model = _recorded_model(tmp_path / "sft", renamed)
    with caplog.at_level(logging.WARNING):
        from_dict(GRPOTrainConfig, {**BASE, "model": str(model), "template": "first-compact"})
    assert "prompts differ" not in caplog.text
    with caplog.at_level(logging.WARNING):
        from_dict(GRPOTrainConfig, {**BASE, "model": str(model), "template": "first"})
    assert "template first (it was trained with template 'first')" in caplog.text


def test_setwise_refuses_a_label_of_two_tokens(tmp_path: Path) -> None:
    """' A', ' B' are one token each, ' é' three (first 'Ġ', distinct from theirs): reading 'Ġ' would misjudge it."""
    tok = build_tokenizer()
    assert [len(tok.encode(f" {lab}", add_special_tokens=False)) for lab in "ABé"] == [1, 1, 3]
    data = yaml.safe_load((REPO / "rerank/methods/setwise/setwise.yaml").read_text(encoding="utf-8"))
    data["labels"] = "ABé" + string.ascii_uppercase[2:]
    path = tmp_path / "accent.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    head = SetwiseReranker(SetwiseConfig(set_size=3, top_k=1, template=str(path)),
                           backend=ScriptedBackend(tok, lambda text, ids: [0.0] * len(ids)))
    with pytest.raises(ConfigError, match=r"the label ' é' is 3 tokens \['Ġ', 'Ã', '©'\] after ' Passage:'") as e:
        head.rerank("q", ["a", "b", "c"])
    assert "\n" not in str(e.value)
    ok = SetwiseReranker(SetwiseConfig(set_size=2, top_k=1, template=str(path)),
                         backend=ScriptedBackend(tok, lambda text, ids: [0.0] * len(ids)))
    assert ok.label_ids() == [tok.encode(f" {lab}", add_special_tokens=False)[0] for lab in "AB"]


def test_methods_page_states_where_the_passages_differ_and_the_qwen3_score() -> None:
    from rerank.methods.first.head import FirstReranker
    from rerank.methods.qwen3_reranker.head import Qwen3Reranker

    text = (REPO / "docs/methods.md").read_text(encoding="utf-8")
    qwen3 = text[text.index("### `qwen3-reranker`"):text.index("### `bge-reranker-v2-gemma`")]
    assert "Score: log P(yes) − log P(no)" in qwen3 and "Score: P(yes)" not in qwen3
    assert "log P(yes) - log P(no)" in (Qwen3Reranker.__doc__ or "")
    setwise_default = SetwiseConfig().max_doc_tokens
    first_default = FirstReranker.config_class().max_doc_tokens  # type: ignore[attr-defined]
    assert (setwise_default, first_default) == (300, 300)
    assert (f"| `setwise` | passages (`title text`) cut to 128 tokens (llm-rankers' `--passage_length` default, used "
            f"by its setwise runs) | cut to `max_doc_tokens` {setwise_default} tokens | "
            "`--reranker-set max_doc_tokens=128` |") in text
    for said in ("`title. text`", "`Title: title Content: text`", "`[n]` inside a passage is rewritten `(n)`",
                 "a causal LM generates one greedy token after ` Passage:`"):
        assert said in text


def test_per_query_reward_leaves_extra_rewards_out_without_importing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """It measures the method's own reward: a config's extra_rewards (here a module that does not exist) are not read."""
    import rerank.trainers.sft_trainer as sft_trainer
    from rerank.trainers.evaluate import per_query_reward

    class Loaded(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Loaded

    monkeypatch.setattr(sft_trainer, "load_causal_lm", stop)
    config = {"head": "erank", "data": {"path": "unused.jsonl"}, "batch_size": 5,
              "extra_rewards": [{"function": "no_such_module_a7:reward", "weight": 1.0}]}
    with pytest.raises(Loaded):  # the config was accepted and the model load reached
        per_query_reward("unused-model-dir", config, [])
