"""Parsing of LLM answers that look like answers but are not: NaN, infinite, boolean or repeated GroupRank scores,
listwise refusals and prose, ERank decimals; and a yes-no tokenizer that merges the answer word with the prompt's
last token, refused when the head loads rather than at its first rerank."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pytest

from rerank.backends.scripted import ScriptedBackend
from rerank.errors import ConfigError
from rerank.heads.permutation import parse_permutation
from rerank.methods.erank.head import ERankConfig, ERankReranker, _answer_integer
from rerank.methods.grouprank.head import GroupRankConfig, GroupRankReranker, parse_group_scores
from rerank.methods.listwise.head import ListwiseConfig, ListwiseReranker
from rerank.methods.qwen3_reranker.head import Qwen3Reranker, Qwen3RerankerConfig
from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker
from rerank.testing import build_tokenizer


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


# ---------------------------------------------------------------- GroupRank scores


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "true", "false", '"NaN"', '"inf"', "[7]"])
def test_grouprank_non_finite_or_non_numeric_score_is_a_missing_score(bad: str) -> None:
    g = parse_group_scores(f'<reason>r</reason><answer>{{"[1]": {bad}, "[2]": 3}}</answer>', 2)
    assert g.scores == [0.0, 3.0] and g.repaired and all(math.isfinite(s) for s in g.scores)
    assert any(f.startswith("non-numeric") for f in g.fixes) and "1 ids missing, scored 0" in g.fixes


def test_grouprank_only_bad_scores_fail() -> None:
    for answer in ('{"[1]": NaN, "[2]": Infinity}', '{"[1]": true, "[2]": false}'):
        g = parse_group_scores(f"<reason>r</reason><answer>{answer}</answer>", 2)
        assert g.failed and g.scores == [0.0, 0.0]


def test_grouprank_duplicate_key_keeps_the_first_and_counts_a_repair() -> None:
    g = parse_group_scores('<reason>r</reason><answer>{"[1]": 7, "[2]": 3, "[1]": 0}</answer>', 2)
    assert g.scores == [7.0, 3.0] and g.repaired and g.fixes == ["duplicate id '[1]'"]
    g = parse_group_scores("<reason>r</reason><answer>{'[1]': 7, '[2]': 3, '[1]': 0,}</answer>", 2)  # repaired JSON
    assert g.scores == [7.0, 3.0] and "duplicate id '[1]'" in g.fixes
    g = parse_group_scores('<reason>r</reason><answer>{"[1]": {"a": 1, "a": 2}, "[2]": 3}</answer>', 2)
    assert g.scores == [0.0, 3.0]  # a nested object is no score, whatever its keys


def test_grouprank_nan_answer_ranks_and_counts(tok: Any) -> None:
    backend = ScriptedBackend(tok, generate_fn=lambda p: '<reason>r</reason><answer>{"[1]": NaN, "[2]": 9, "[3]": 4}'
                                                          "</answer>")
    head = GroupRankReranker(GroupRankConfig(group_size=3, repeats=1, fusion_weight=1.0), backend=backend)
    res = head.rerank("q", ["a", "b", "c"])
    scores = [r.score for r in res.results]
    assert all(math.isfinite(s) for s in scores) and scores == sorted(scores, reverse=True)
    assert scores == pytest.approx([0.9, 0.4, 0.0])  # the NaN document scores 0, whichever the shuffle put first
    assert (head.stats.outputs, head.stats.parse_failures, head.stats.repaired) == (1, 0, 1)
    json.dumps(scores, allow_nan=False)  # what JSONL output writes: no NaN


# ---------------------------------------------------------------- listwise permutations


@pytest.mark.parametrize(("text", "n", "scheme"), [
    ("I am sorry, but I cannot rank these 5 passages.", 5, "numbers"),
    ("I'm sorry, but I can't help with ranking these 3 passages.", 3, "numbers"),
    ("I am sorry, but I cannot rank these passages. I think they are all fine.", 10, "letters"),  # 'I' is an id
    ("Passage 4 is about cats.", 5, "numbers"),
    ("Sorry, I cannot rank [4] and [2]: both are empty.", 5, "numbers"),  # two ids moved [4] and [2] to the top
    ("I'm unable to compare [C], [A] and [B].", 4, "letters"),
])
def test_listwise_refusal_is_a_failure(text: str, n: int, scheme: str) -> None:
    p = parse_permutation(text, n, scheme)
    assert p.failed and not p.repaired and p.order == list(range(n)) and p.fixes


@pytest.mark.parametrize(("text", "order"), [
    ("Passage [1] is irrelevant; [3] is the most relevant, then [2].", [0, 2, 1]),
    ("The ranking is: [3], [1], [2]", [2, 0, 1]),
    ("Answer: 2, 3, 1", [1, 2, 0]),
])
def test_listwise_ids_without_a_ranking_line_are_a_repair(text: str, order: list[int]) -> None:
    p = parse_permutation(text, 3, "numbers")
    assert p.order == order and p.repaired and "no ranking line: identifiers read from the text" in p.fixes


@pytest.mark.parametrize(("text", "order"), [
    ("[2] > [1] > [3]", [1, 0, 2]),
    ("[3]>[1]>[2]", [2, 0, 1]),
    ("Here is the ranking of the passages:\n[2] > [3] > [1]", [1, 2, 0]),
    ("[2] > [1] > [3]\nI put [2] first.", [1, 0, 2]),
])
def test_listwise_ranking_lines_stay_clean(text: str, order: list[int]) -> None:
    p = parse_permutation(text, 3, "numbers")
    assert p.order == order and not p.failed and not p.repaired


def test_listwise_refusal_keeps_the_window_order(tok: Any) -> None:
    backend = ScriptedBackend(tok, generate_fn=lambda p: "I am sorry, but I cannot rank these 4 passages.")
    head = ListwiseReranker(ListwiseConfig(window=4, stride=2), backend=backend)
    assert head.rerank("q", ["a", "b", "c", "d"]).doc_ids == ["0", "1", "2", "3"]
    assert (head.stats.outputs, head.stats.parse_failures, head.stats.repaired) == (1, 1, 0)


# ---------------------------------------------------------------- ERank reasoning answers


@pytest.mark.parametrize(("answer", "value"), [
    ("7", 7), (" 7 ", 7), ("7</answer>", 7), ("10\n", 10), ("0", 0),
    ("7.5", None), ("0.9", None), ("7/10", None), ("7,", None), ("7a", None), ("seven", None), ("", None),
])
def test_erank_answer_integer(answer: str, value: int | None) -> None:
    assert _answer_integer(answer, "</answer>") == value


def test_erank_decimal_answers_are_parse_failures(tok: Any) -> None:
    answers = {"d0": "3</answer>", "d1": "3.5</answer>", "d2": "0.9"}
    probs = {"7": 0.6, "3": 0.4}

    def logprobs(prompt: str, ids: Sequence[int]) -> list[float]:
        if not prompt.endswith("<answer>"):
            return [-30.0] * len(ids)
        return [math.log(probs[t]) if (t := tok.decode([i])) in probs else -30.0 for i in ids]

    def generate(prompt: str) -> str:
        doc = next(d for d in answers if d in prompt)
        return f"hmm</think><answer>{answers[doc]}"

    head = ERankReranker(ERankConfig(reasoning=True, max_reasoning_tokens=16),
                         backend=ScriptedBackend(tok, logprobs, generate))
    res = head.rerank("q", list(answers))
    scores = {r.doc.text: r.score for r in res.results}
    assert scores["d0"] == pytest.approx(3 * 0.4)  # the generated 3
    assert scores["d1"] == scores["d2"] == pytest.approx(7 * 0.6)  # not 3 and 0: the argmax fallback
    assert (head.stats.outputs, head.stats.parse_failures, head.stats.repaired) == (3, 2, 0)


# ---------------------------------------------------------------- yes-no answer tokens


def merging_tokenizer() -> Any:
    """The test tokenizer with SmolLM2's trait: "\\n\\n" is one token, but GPT-2's pre-tokenizer splits "\\n\\nyes"
    into "\\n", "\\n", "yes", so a prompt ending with "\\n\\n" merges with the answer word."""
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rerank.testing.tokenizer import EOS_TOKEN, IM_END, IM_START, REASONING_TOKENS, _bpe_json, chat_template

    spec = json.loads(_bpe_json())
    spec["model"]["vocab"]["ĊĊ"] = len(spec["model"]["vocab"])
    spec["model"]["merges"].append(["Ċ", "Ċ"])
    tk = Tokenizer.from_str(json.dumps(spec))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                  additional_special_tokens=[IM_START, IM_END])
    tok.add_tokens(REASONING_TOKENS)
    tok.chat_template = chat_template()
    assert len(tok.encode("</think>\n\n")) == 2 and len(tok.encode("</think>\n\nyes")) == 4
    return tok


def test_qwen3_reranker_refuses_a_merging_tokenizer_at_load() -> None:
    backend = ScriptedBackend(merging_tokenizer(), lambda p, ids: [0.0] * len(ids))
    with pytest.raises(ConfigError, match="cannot isolate the tokens of 'yes'"):
        Qwen3Reranker(Qwen3RerankerConfig(), backend=backend)
    assert backend.calls["next_token_logprobs"] == 0
    YesNoReranker(YesNoConfig(), backend=backend)  # its prompt does not end with "\n\n": loads


def test_qwen3_reranker_loads_on_a_tokenizer_that_keeps_the_answer_apart(tok: Any) -> None:
    head = Qwen3Reranker(Qwen3RerankerConfig(), backend=ScriptedBackend(tok, lambda p, ids: [0.0] * len(ids)))
    yes, no = head.answer_token_ids()
    assert tok.decode([yes]) == "yes" and tok.decode([no]) == "no"
