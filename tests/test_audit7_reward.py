"""GRPO ``extra_rewards``: a user's reward function, named ``"module:function"``, is checked with the config (before
any model loads), called with the documented arguments, added to the method's reward times its weight (its mean
logged on its own), recorded with its source file's sha256 (a changed file refuses ``--resume``), and its failures at
run time are one-line errors naming the function and the step."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from train_support import erank_workdir

from rerank.errors import ConfigError

REWARD_SRC = '''
CALLS = []


def by_length(completions, *, prompts, queries, doc_ids, labels, parsed, step):
    CALLS.append({"completions": completions, "prompts": prompts, "queries": queries, "doc_ids": doc_ids,
                  "labels": labels, "parsed": parsed, "step": step})
    return [float(len(c) % 3) for c in completions]


def boom(completions, **kwargs):
    raise ValueError("no such doc\\nsecond line")


NOT_A_FUNCTION = 3
'''


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = erank_workdir(tmp_path_factory.mktemp("a7"), data_seed=3)
    (d / "a7_rewards.py").write_text(REWARD_SRC)
    (d / "a7_broken.py").write_text("import json\nraise RuntimeError('cannot start\\nat all')\n")
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))
    for name in ("a7_rewards", "a7_broken"):
        sys.modules.pop(name, None)


def _cfg(work: Path, **over: Any) -> dict[str, Any]:
    cfg = {"model": str(work / "llm"), "head": "erank", "template": str(work / "erank.yaml"), "max_doc_tokens": 24,
           "data": {"path": str(work / "train.jsonl"), "dev_fraction": 0.0}, "batch_size": 20, "num_generations": 5,
           "max_steps": 2, "save_steps": 1, "logging_steps": 1, "learning_rate": 1e-3}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize(("entry", "message"), [
    ({"function": "a7_rewards"}, "function must be 'module:function'"),
    ({"function": "a7_nowhere:f"}, r"extra_rewards\[0\].function: 'a7_nowhere:f' cannot be imported: there is no "
                                   "module 'a7_nowhere'"),
    ({"function": "a7_rewards:nope"}, "module 'a7_rewards' has no 'nope'"),
    ({"function": "a7_rewards:NOT_A_FUNCTION"}, "'a7_rewards:NOT_A_FUNCTION' is a int, not a function"),
    ({"function": "a7_broken:f"}, "importing 'a7_broken:f' raised RuntimeError: cannot start"),
    ({"function": "a7_rewards:by_length", "weight": 0}, "the weight of a7_rewards:by_length is 0"),
    ({"function": "a7_rewards:by_length", "weight": "x"}, "expected a number"),
])
def test_extra_rewards_are_checked_with_the_config(work: Path, entry: dict[str, Any], message: str) -> None:
    from rerank.config import from_dict
    from rerank.trainers.grpo_trainer import GRPOTrainConfig

    with pytest.raises(ConfigError, match=message) as e:
        from_dict(GRPOTrainConfig, _cfg(work, extra_rewards=[entry]))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="named twice"):
        from_dict(GRPOTrainConfig, _cfg(work, extra_rewards=[{"function": "a7_rewards:by_length"}] * 2))
    with pytest.raises(ConfigError, match="finite"):  # the Python API, past the YAML number check
        from rerank.trainers.rewards import ExtraReward
        ExtraReward("a7_rewards:by_length", math.nan)


def test_check_refuses_a_broken_extra_reward_in_one_line(work: Path, run_cli: Any, tmp_path: Path) -> None:
    import yaml

    for function, said in (("a7_rewards:nope", "has no 'nope'"), ("a7_broken:f", "raised RuntimeError")):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(_cfg(work, extra_rewards=[{"function": function}])))
        rc, _, err = run_cli("train", "grpo", "--config", tmp_path / "c.yaml", "--output", tmp_path / "o", "--check")
        assert rc == 2 and said in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_cfg(work, extra_rewards=[{"function": "a7_rewards:by_length",
                                                                               "weight": 0.5}])))
    rc, out, err = run_cli("train", "grpo", "--config", tmp_path / "c.yaml", "--output", tmp_path / "o", "--check")
    assert rc == 0, err


def test_rows_carry_each_prompts_documents_for_every_grpo_head(work: Path) -> None:
    from transformers import AutoTokenizer

    from rerank.config import from_dict
    from rerank.testing import synthetic_ranking_examples
    from rerank.trainers.grpo_trainer import GRPOTrainConfig, grpo_rows
    from rerank.trainers.task import build_task

    tok = AutoTokenizer.from_pretrained(str(work / "llm"))
    ex = synthetic_ranking_examples(1, num_candidates=4, seed=9)[0]
    grade = {str(c["id"]): float(g) for c, g in zip(ex["candidates"], ex["labels"], strict=True)}
    first_tpl = work / "first.yaml"
    first_tpl.write_text('name: first-tiny\nidentifiers: letters\nassistant_prefix: "["\nuser: "Q: {{ query }}\\n'
                         '{% for p in passages %}[{{ p.id }}] {{ p.text }}\\n{% endfor %}Rank {{ num }}:"\n')
    for head, extra in (("erank", {}), ("yes-no", {"template": ""}), ("listwise", {"template": "", "window": 4}),
                        ("grouprank", {"template": "", "window": 4}),
                        ("first", {"template": str(first_tpl), "window": 4})):
        cfg = from_dict(GRPOTrainConfig, {**_cfg(work, head=head, batch_size=8, num_generations=4), **extra})
        task = build_task(head, tok, cfg)
        plain = grpo_rows(task, [ex], 0)
        rows = grpo_rows(task, [ex], 0, context=True)
        assert "reward_query" not in plain[0]  # no extra rewards: the rows are the method's own
        assert [{k: v for k, v in r.items() if not k.startswith("reward_")} for r in rows] == plain
        for j, r in enumerate(rows):
            docs = [str(d) for d in r["ids"]] if "ids" in r else [str(ex["candidates"][j]["id"])]
            assert r["reward_query"] == ex["query"] and r["reward_doc_ids"] == docs, head
            assert r["reward_labels"] == [grade[d] for d in docs], head
        if head == "erank":
            assert [r["reward_labels"][0] for r in rows] == [float(r["label"]) for r in rows]


def test_a_rerun_from_a_record_warns_when_the_reward_source_changed(work: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from rerank.config import from_dict
    from rerank.trainers.grpo_trainer import GRPOTrainConfig

    entry = {"function": "a7_rewards:by_length", "weight": 0.5, "source_sha256": "0" * 64}
    cfg = from_dict(GRPOTrainConfig, _cfg(work, extra_rewards=[entry]))
    now = hashlib.sha256((work / "a7_rewards.py").read_bytes()).hexdigest()
    assert cfg.extra_rewards[0].source_sha256 == now
    assert "the source of a7_rewards:by_length" in caplog.text and f"now {now}" in caplog.text


def _call(fn: Any, n: int = 3) -> Any:
    rows = {"qid": ["q"] * n, "label": [1] * n, "reference": [0.0] * n, "reward_query": ["what"] * n,
            "reward_doc_ids": [["d"]] * n, "reward_labels": [[1.0]] * n}
    return fn(prompts=["p"] * n, completions=["7</answer>"] * n, trainer_state=SimpleNamespace(global_step=7), **rows)


@pytest.mark.parametrize(("body", "message"), [
    ("return [1.0]", r"returned 1 rewards for 3 completions"),
    ("return [1.0, float('nan'), 0.0]", r"returned nan for completion 1: every reward must be a finite number"),
    ("return [1.0, None, 0.0]", r"must return a list of 3 numbers"),
    ("return 1.0", r"must return a list of 3 numbers"),
    ("raise ValueError('bad doc\\nmore')", r"raised ValueError: bad doc$"),
])
def test_a_failing_extra_reward_is_one_line_naming_it_and_the_step(work: Path, body: str, message: str) -> None:
    from transformers import AutoTokenizer

    from rerank.config import from_dict
    from rerank.trainers.grpo_trainer import GRPOTrainConfig, extra_reward_function
    from rerank.trainers.rewards import ExtraReward
    from rerank.trainers.task import build_task

    name = f"a7_fail_{hashlib.sha256(body.encode()).hexdigest()[:8]}"
    (work / f"{name}.py").write_text(f"def f(completions, **kwargs):\n    {body}\n")
    cfg = from_dict(GRPOTrainConfig, _cfg(work))
    task = build_task("erank", AutoTokenizer.from_pretrained(str(work / "llm")), cfg)
    columns = ["qid", "label", "reference", "reward_query", "reward_doc_ids", "reward_labels"]
    fn = extra_reward_function(task, columns, ExtraReward(f"{name}:f", 0.5), 2)
    assert fn.__name__ == f"{name}:f"  # the name TRL logs its mean under
    with pytest.raises(ConfigError, match=rf"^extra_rewards\[2\] {name}:f at step 7 .*" + message) as e:
        _call(fn)
    assert "\n" not in str(e.value)


def test_extra_reward_is_called_as_documented_weighted_logged_and_recorded(work: Path) -> None:
    from rerank.trainers.api import run_trainer
    from rerank.trainers.task import Parsed

    user = __import__("a7_rewards")
    user.CALLS.clear()
    weight = 0.5
    out = work / "run"
    run_trainer("grpo", _cfg(work, extra_rewards=[{"function": "a7_rewards:by_length", "weight": weight}]), out)
    examples = {e["query"]: e for e in map(json.loads, (work / "train.jsonl").read_text().splitlines())}
    assert [c["step"] for c in user.CALLS] == [0, 1]
    for call in user.CALLS:
        n = len(call["completions"])
        assert n == 20 and all(len(call[k]) == n for k in ("prompts", "queries", "doc_ids", "labels", "parsed"))
        assert all(isinstance(p, Parsed) for p in call["parsed"]) and all(isinstance(c, str) for c in call["completions"])
        for q, docs, labels, prompt in zip(call["queries"], call["doc_ids"], call["labels"], call["prompts"],
                                           strict=True):
            ex = examples[q]
            grade = {str(c["id"]): float(g) for c, g in zip(ex["candidates"], ex["labels"], strict=True)}
            assert len(docs) == 1 and labels == [grade[docs[0]]]
            text = next(c["text"] for c in ex["candidates"] if str(c["id"]) == docs[0])
            assert text[:20] in prompt
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "reward" in h]
    assert len(logged) == 2 and any(h["rewards/a7_rewards:by_length/mean"] for h in logged)
    for h, call in zip(logged, user.CALLS, strict=True):
        mine = h["rewards/a7_rewards:by_length/mean"]
        assert mine == pytest.approx(sum(len(c) % 3 for c in call["completions"]) / 20, abs=1e-5)
        assert h["reward"] == pytest.approx(h["rewards/ranking_reward/mean"] + weight * mine, abs=1e-5)
    record = json.loads((out / "rerank_train.json").read_text())
    src = (work / "a7_rewards.py").read_bytes()
    assert record["config"]["extra_rewards"] == [{"function": "a7_rewards:by_length", "weight": weight,
                                                  "source_sha256": hashlib.sha256(src).hexdigest()}]
    # a changed weight or source file is refused by --resume, as another option's value is; the same reward resumes
    with pytest.raises(ConfigError, match=r"--resume: the config differs.*extra_rewards"):
        run_trainer("grpo", _cfg(work, max_steps=3, extra_rewards=[{"function": "a7_rewards:by_length",
                                                                     "weight": 0.25}]), out, resume=True)
    (work / "a7_rewards.py").write_text(REWARD_SRC + "\n# changed\n")
    try:
        with pytest.raises(ConfigError, match=r"--resume: the config differs.*extra_rewards.*source_sha256"):
            run_trainer("grpo", _cfg(work, max_steps=3, extra_rewards=[{"function": "a7_rewards:by_length",
                                                                         "weight": weight}]), out, resume=True)
    finally:
        (work / "a7_rewards.py").write_text(REWARD_SRC)
    resumed = run_trainer("grpo", _cfg(work, max_steps=3, extra_rewards=[{"function": "a7_rewards:by_length",
                                                                           "weight": weight}]), out, resume=True)
    assert resumed["global_step"] == 3 and [c["step"] for c in user.CALLS] == [0, 1, 2]


def test_a_raising_extra_reward_stops_training_in_one_line(work: Path, run_cli: Any, tmp_path: Path) -> None:
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_cfg(work, extra_rewards=[{"function": "a7_rewards:boom"}])))
    rc, _, err = run_cli("train", "grpo", "--config", tmp_path / "c.yaml", "--output", tmp_path / "o")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and lines == ["error: extra_rewards[0] a7_rewards:boom at step 0 raised ValueError: no such doc"], err
    assert "Traceback" not in err
