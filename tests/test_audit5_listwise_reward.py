"""The listwise GRPO reward reads a completion as the listwise head does: when the chat template's generation prompt
opens the reasoning (QwQ, DeepSeek-R1), a ranking written before the closing tag is a guess, not the answer."""

from __future__ import annotations

import json

from rerank.config import from_dict
from rerank.testing import build_tokenizer
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from rerank.trainers.task import build_task
from tests.test_audit5_openai2 import QWQ_TEMPLATE


def _task(chat_template: str | None) -> object:
    tok = build_tokenizer()
    if chat_template is not None:
        tok.chat_template = chat_template
    cfg = from_dict(GRPOTrainConfig, {"model": "m", "head": "listwise", "window": 4, "data": {"path": "x"},
                                      "batch_size": 8})
    return build_task("listwise", tok, cfg)


ROW = {"ids": ["a", "b", "c", "d"], "labels_json": json.dumps({"a": 0, "b": 0, "c": 1, "d": 0}),
       "teacher": ["c", "a", "b", "d"]}


def test_a_guess_inside_the_prompts_open_reasoning_is_no_answer() -> None:
    guess = "first guess [3] > [1] > [2] > [4]\nbut wait"  # cut off inside the reasoning the prompt opened
    answered = "hmm\n</think>\n\n[3] > [1] > [2] > [4]"
    task = _task(QWQ_TEMPLATE)
    assert not task.parse(guess, ROW).valid
    assert task.parse(answered, ROW).valid and task.parse(answered, ROW).order == [2, 0, 1, 3]
    reward_guess, reward_answer = task.rewards([guess, answered], [ROW, ROW])
    assert reward_guess < reward_answer
    plain = _task(None)  # ChatML opens no reasoning: the same ranking is the answer
    assert plain.parse("[3] > [1] > [2] > [4]", ROW).valid


#: chat templates that refuse the old probe (one user message, rendered without the generation prompt too)
SYSTEM_REQUIRED = ("{% if messages[0].role != 'system' %}{{ raise_exception('a system message is required') }}"
                   "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
ASSISTANT_LAST = ("{% if not add_generation_prompt and messages[-1].role != 'assistant' %}"
                  "{{ raise_exception('the last message must be the assistant\\'s') }}{% endif %}"
                  "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_prompt_reasoning_probes_the_conversation_the_head_renders() -> None:
    """A chat template that requires a system message still has its open <think> found, and one that refuses a
    render without the generation prompt opens none; neither raises (GRPO would turn that into a format penalty
    for every completion)."""
    import dataclasses

    with_system = _task(SYSTEM_REQUIRED)
    head = with_system.head  # type: ignore[attr-defined]
    if not head.template.system:  # listwise's shipped template may have none: give the probe a system message
        head.template = dataclasses.replace(head.template, system="You rank passages.")
        head._prompt_reasoning.clear()
    assert head.prompt_reasoning(head.template.assistant_prefix) == "think"
    last = _task(ASSISTANT_LAST)
    assert last.head.prompt_reasoning("") == ""  # type: ignore[attr-defined]
    assert last.parse("[3] > [1] > [2] > [4]", ROW).valid
