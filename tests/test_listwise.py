"""Listwise heads (listwise, first) and GroupRank with a scripted backend: exact orders, calls, parsing, repairs.

The scripted backend reads the rendered prompt, finds which document sits behind which identifier, and answers as
an oracle with a hidden relevance that differs from the input order, so a head that returned the first-stage order
(or ignored the model) fails. Expected orders are worked out by hand in the comments.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import pytest

from rerank.backends.base import GenerationConfig
from rerank.backends.scripted import ScriptedBackend
from rerank.errors import ConfigError
from rerank.heads.base import Reranker, as_candidates
from rerank.heads.permutation import format_permutation, identifiers, parse_permutation
from rerank.heads.registry import get_reranker_class
from rerank.heads.sliding_window import SlidingWindowConfig, sliding_window_rerank, window_plan
from rerank.methods.first.head import FirstReranker
from rerank.methods.grouprank.head import GroupRankConfig, GroupRankReranker, minmax, parse_group_scores
from rerank.methods.listwise.head import ListwiseConfig, ListwiseReranker
from rerank.testing import build_tokenizer, tiny_llm
from rerank.types import Query


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny Qwen2-style BPE of rerank.testing (digits one token each, letters and brackets single tokens)."""
    return build_tokenizer()


# Seven documents a..g in first-stage order; the hidden relevance the oracle uses differs from that order.
REL = {"a": 1, "b": 5, "c": 3, "d": 7, "e": 2, "f": 6, "g": 4}
NAMES = list("abcdefg")


def docs(names=NAMES, scored=True):
    """Documents whose text carries a marker ``zq<name>q`` the scripted model reads back from the prompt."""
    out = []
    for i, n in enumerate(names):
        d = {"id": n, "text": f"This passage is about zq{n}q topic."}
        if scored:
            d["score"] = float(len(names) - i)
        out.append(d)
    return out


_LINE = re.compile(r"^\[(\w+)\]\.? [^\n]*?zq(\w+?)q", re.M)


def window_docs(prompt: str) -> dict[str, str]:
    """Identifier -> document name, read from a rendered prompt."""
    return {ident: name for ident, name in _LINE.findall(prompt)}


def oracle_permutation(prompt: str) -> str:
    ids = window_docs(prompt)
    best = sorted(ids, key=lambda i: -REL[ids[i]])
    return " > ".join(f"[{i}]" for i in best)


class RecordingBackend(ScriptedBackend):
    """Also records each generate call's decoding config."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gen_configs: list[GenerationConfig] = []

    def generate(self, prompts, config):
        self.gen_configs.append(config)
        return super().generate(prompts, config)


# ---------------------------------------------------------------- sliding window


def test_window_plan_bottom_to_top():
    assert window_plan(7, 4, 2) == [(3, 7), (1, 5), (0, 3)]
    assert window_plan(25, 20, 10) == [(5, 25), (0, 15)]
    assert window_plan(100, 20, 10) == [(e - 20, e) for e in range(100, 19, -10)]
    assert window_plan(20, 20, 10) == [(0, 20)]
    assert window_plan(5, 20, 10) == [(0, 5)]
    assert window_plan(30, 20, 10, depth=20) == [(0, 20)]
    assert window_plan(0, 20, 10) == []
    with pytest.raises(ConfigError):
        window_plan(10, 4, 5)


def test_sliding_window_by_hand_and_batched_steps():
    seen: list[list[tuple[int, list[str]]]] = []

    def rank(batch):
        seen.append([(i, list(w)) for i, w in batch])
        return [sorted(range(len(w)), key=lambda j: -REL[w[j]]) for _, w in batch]

    out = sliding_window_rerank([NAMES, ["c", "a", "b"]], rank, window=4, stride=2)
    # list 0: [3,7) d e f g -> d f g e ; [1,5) b c d f -> d f b c ; [0,3) a d f -> d f a
    assert out[0] == ["d", "f", "a", "b", "c", "g", "e"]
    assert out[1] == ["b", "c", "a"]
    # step 0 batches both lists' bottom windows in one call; later steps only list 0
    assert seen == [
        [(0, ["d", "e", "f", "g"]), (1, ["c", "a", "b"])],
        [(0, ["b", "c", "d", "f"])],
        [(0, ["a", "d", "f"])],
    ]


def test_sliding_window_coverage_depth():
    items = [f"x{i:02d}" for i in range(37)]
    score = {x: (i * 7) % 37 for i, x in enumerate(items)}
    out = sliding_window_rerank(
        [items], lambda b: [sorted(range(len(w)), key=lambda j: -score[w[j]]) for _, w in b], 20, 10, depth=30
    )[0]
    assert sorted(out) == sorted(items) and len(out) == len(items)
    assert out[30:] == items[30:]  # below depth: untouched, in input order
    top10 = sorted(items[:30], key=lambda x: -score[x])[:10]
    assert out[:10] == top10  # the oracle's best 10 of the reranked depth reach the top in order
    assert out != items


def test_sliding_window_rejects_bad_permutation():
    with pytest.raises(RuntimeError, match="not a permutation"):
        sliding_window_rerank([["a", "b"]], lambda b: [[0, 0]], 2, 1)


# ---------------------------------------------------------------- permutation parsing


def test_identifiers_and_format():
    assert identifiers("numbers", 3) == ["1", "2", "3"]
    assert identifiers("letters", 3) == ["A", "B", "C"]
    assert format_permutation("letters", [2, 0, 1]) == "[C] > [A] > [B]"
    with pytest.raises(ConfigError):
        identifiers("letters", 27)
    with pytest.raises(ConfigError):
        identifiers("roman", 3)


@pytest.mark.parametrize(
    ("text", "scheme", "order", "failed", "repaired"),
    [
        ("[3] > [1] > [2] > [4]", "numbers", [2, 0, 1, 3], False, False),
        ("[C] > [A] > [B] > [D]", "letters", [2, 0, 1, 3], False, False),
        ("[3] > [3] > [9] > [1]", "numbers", [2, 0, 1, 3], False, True),  # dup + unknown dropped, missing appended
        ("[c] > [Z] > [a]", "letters", [2, 0, 1, 3], False, True),
        ("3 > 1 > 2 > 4", "numbers", [2, 0, 1, 3], False, True),  # no brackets
        ("C, A", "letters", [2, 0, 1, 3], False, True),
        ("I cannot rank these.", "numbers", [0, 1, 2, 3], True, False),
        ("I cannot rank these.", "letters", [0, 1, 2, 3], True, False),  # the capital 'I' is not an id of 4
        ("", "numbers", [0, 1, 2, 3], True, False),
    ],
)
def test_parse_permutation(text, scheme, order, failed, repaired):
    p = parse_permutation(text, 4, scheme)
    assert p.order == order and p.failed is failed and p.repaired is repaired
    assert bool(p.fixes) is (failed or repaired)  # what the LLM-call log says was done


# ---------------------------------------------------------------- listwise (full generation)


@pytest.mark.parametrize(("identifiers_opt", "pattern"), [("numbers", r"\[\d\]"), ("letters", r"\[[A-D]\]")])
def test_listwise_exact_order(tokenizer, identifiers_opt, pattern):
    backend = RecordingBackend(tokenizer, generate_fn=oracle_permutation)
    head = ListwiseReranker(ListwiseConfig(window=4, stride=2, identifiers=identifiers_opt), backend=backend)
    res = head.rerank("q", docs())
    assert res.doc_ids == ["d", "f", "a", "b", "c", "g", "e"]  # worked out in test_sliding_window_by_hand
    assert [r.rank for r in res.results] == list(range(1, 8))
    assert [r.first_stage_score for r in res.results] == [4.0, 2.0, 7.0, 6.0, 5.0, 1.0, 3.0]
    assert backend.calls == {"next_token_logprobs": 0, "generate": 3}
    assert all(re.search(pattern, text) for _, text in backend.log)
    assert head.stats.outputs == 3 and head.stats.parse_failures == 0 and head.stats.repaired == 0
    # generation is capped at the canonical permutation's length in tokens
    caps = [c.max_new_tokens for c in backend.gen_configs]
    ids4 = " > ".join(f"[{i}]" for i in identifiers(identifiers_opt, 4))
    ids3 = " > ".join(f"[{i}]" for i in identifiers(identifiers_opt, 3))
    assert caps == [len(tokenizer.encode(ids4)), len(tokenizer.encode(ids4)), len(tokenizer.encode(ids3))]
    assert all(c.temperature == 0.0 for c in backend.gen_configs)


def test_listwise_template_scheme_and_errors(tokenizer):
    backend = ScriptedBackend(tokenizer, generate_fn=oracle_permutation)
    assert ListwiseReranker(ListwiseConfig(), backend=backend).scheme == "numbers"
    assert ListwiseReranker(ListwiseConfig(template="listwise-letters"), backend=backend).scheme == "letters"
    with pytest.raises(ConfigError, match="uses 'numbers'"):
        ListwiseReranker(ListwiseConfig(template="listwise", identifiers="letters"), backend=backend)
    with pytest.raises(ConfigError, match="26"):
        ListwiseReranker(ListwiseConfig(window=27, stride=10, identifiers="letters"), backend=backend)
    with pytest.raises(ConfigError):
        ListwiseReranker(ListwiseConfig(identifiers="roman"), backend=backend)
    with pytest.raises(ConfigError, match="unknown key"):
        Reranker.load("listwise", model="x", windw=3)


def test_listwise_repairs_and_failures_counted(tokenizer):
    answers = iter(["[2] > [2] > [9] > [1]", "no idea", "[1] > [3]"])
    backend = ScriptedBackend(tokenizer, generate_fn=lambda p: next(answers))
    head = ListwiseReranker(ListwiseConfig(window=4, stride=2), backend=backend)
    res = head.rerank("q", docs())
    # [3,7) d e f g : "[2] > [2] > [9] > [1]" -> e d f g (dup and unknown dropped, f g appended)
    # [1,5) b c e d : failure -> kept
    # [0,3) a b c   : "[1] > [3]" -> a c b
    assert res.doc_ids == ["a", "c", "b", "e", "d", "f", "g"]
    assert (head.stats.outputs, head.stats.parse_failures, head.stats.repaired) == (3, 1, 2)
    assert head.stats.failure_examples == ["[2] > [2] > [9] > [1]", "no idea", "[1] > [3]"]


def test_listwise_depth_keeps_tail(tokenizer):
    backend = ScriptedBackend(tokenizer, generate_fn=oracle_permutation)
    head = ListwiseReranker(ListwiseConfig(window=4, stride=2, depth=4), backend=backend)
    assert head.rerank("q", docs()).doc_ids == ["d", "b", "c", "a", "e", "f", "g"]
    assert len(backend.log) == 1


def test_long_document_truncated_not_instruction(tokenizer):
    long_text = "zqaq " + " ".join(["filler"] * 400)
    backend = ScriptedBackend(tokenizer, generate_fn=lambda p: "[1] > [2]")
    head = ListwiseReranker(ListwiseConfig(window=4, stride=2, max_doc_tokens=20), backend=backend)
    head.rerank("q", [long_text, "short zqbq"])
    prompt = backend.log[0][1]
    assert prompt.count("filler") < 25
    assert prompt.rstrip().endswith("Only respond with the ranking results, do not say any word or explain.<|im_end|>\n<|im_start|>assistant")


# ---------------------------------------------------------------- FIRST


def letter_logits(tokenizer):
    def fn(prompt: str, token_ids):
        ids = window_docs(prompt)
        letters = [tokenizer.decode([t]) for t in token_ids]
        return [float(REL[ids[x]]) if x in ids else -30.0 for x in letters]

    return fn


def test_first_one_forward_per_window_no_generate(tokenizer):
    backend = ScriptedBackend(tokenizer, logprobs_fn=letter_logits(tokenizer))
    head = FirstReranker(SlidingWindowConfig(window=4, stride=2), backend=backend)
    res = head.rerank("q", docs())
    assert res.doc_ids == ["d", "f", "a", "b", "c", "g", "e"]
    assert len(backend.log) == 3 and all(kind == "next_token_logprobs" for kind, _ in backend.log)
    assert backend.calls == {"next_token_logprobs": 3, "generate": 0}
    assert all(p.endswith("<|im_start|>assistant\n[") for _, p in backend.log)
    assert [sorted(window_docs(p).values()) for _, p in backend.log] == [list("defg"), list("bcdf"), list("adf")]
    assert head.stats.outputs == 3 and head.stats.parse_failures == 0


def test_first_order_equals_logit_order(tokenizer):
    logits = [0.3, -1.0, 2.5, 0.9, -0.2, 1.7, 0.0, 3.1]
    backend = ScriptedBackend(tokenizer, logprobs_fn=lambda p, ids: logits[: len(ids)] + [-9.0] * (len(ids) - 8))
    head = FirstReranker(SlidingWindowConfig(window=20, stride=10), backend=backend)
    names = [f"n{i}" for i in range(8)]
    res = head.rerank("q", [{"id": n, "text": f"text zq{n}q"} for n in names])
    assert res.doc_ids == [names[i] for i in sorted(range(8), key=lambda i: -logits[i])]
    assert len(backend.log) == 1 and backend.calls["generate"] == 0


def test_first_batches_windows_across_queries(tokenizer):
    backend = ScriptedBackend(tokenizer, logprobs_fn=letter_logits(tokenizer))
    head = FirstReranker(SlidingWindowConfig(window=4, stride=2, batch_size=16), backend=backend)
    res = head.rerank_batch(["q1", "q2"], [docs(), docs(list("gfe"))])
    assert res[0].doc_ids == ["d", "f", "a", "b", "c", "g", "e"] and res[1].doc_ids == ["f", "g", "e"]
    assert len(backend.log) == 4  # one forward per window: 3 + 1
    assert backend.calls["next_token_logprobs"] == 3  # one call per sliding step


def test_first_token_ids_and_config_errors(tokenizer):
    backend = ScriptedBackend(tokenizer, logprobs_fn=letter_logits(tokenizer))
    head = FirstReranker(SlidingWindowConfig(window=26, stride=10), backend=backend)
    ids = head.identifier_token_ids()
    assert [tokenizer.decode([t]) for t in ids] == list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    with pytest.raises(ConfigError, match="26"):
        FirstReranker(SlidingWindowConfig(window=27, stride=10), backend=backend)
    with pytest.raises(ConfigError, match="listwise method's prompt"):
        FirstReranker(SlidingWindowConfig(template="listwise"), backend=backend)
    with pytest.raises(ConfigError):
        FirstReranker(SlidingWindowConfig(window=4, stride=5), backend=backend)


def test_registered_names():
    assert get_reranker_class("listwise") is ListwiseReranker
    assert get_reranker_class("first") is FirstReranker
    assert get_reranker_class("grouprank") is GroupRankReranker


# ---------------------------------------------------------------- GroupRank


@pytest.mark.parametrize(
    ("text", "scores", "failed", "repaired"),
    [
        ('<reason>ok</reason><answer>{"[1]": 5, "[2]": 3, "[3]": 8}</answer>', [5, 3, 8], False, False),
        ('<reason>x</reason><answer>\n```json\n{"[1]": 5, "[2]": 3, "[3]": 8}\n```\n</answer>', [5, 3, 8], False, False),
        ("<answer>{'[1]': 5, '[2]': 3, '[3]': 8,}</answer>", [5, 3, 8], False, True),
        ('<answer>{"[1]": 5, "[2]": 3, "[3]": 8</answer>', [5, 3, 8], False, True),
        ('<answer>"[1]": 5, "[2]": 3, "[3]": 8}</answer>', [5, 3, 8], False, True),
        ('<answer>{"[1]": 12, "[2]": -3, "[3]": 8}</answer>', [10, 0, 8], False, True),
        ('<answer>{"1": 5, "2": 3, "3": 8}</answer>', [5, 3, 8], False, False),
        ('<answer>{"[1]": 5, "[3]": 8, "[7]": 9}</answer>', [5, 0, 8], False, True),
        ('<reason>cut off before the answer', [0, 0, 0], True, False),
        ('<answer>{"[1]": 5, "[2]": 3, "[3]": 8}', [5, 3, 8], False, True),
        ('{"[1]": 5, "[2]": 3, "[3]": 8}', [5, 3, 8], False, True),
        ('<answer>{"[1]": "high"}</answer>', [0, 0, 0], True, False),
    ],
)
def test_parse_group_scores(text, scores, failed, repaired):
    p = parse_group_scores(text, 3)
    assert p.scores == scores and p.failed is failed and p.repaired is repaired


GROUP_REL = {"a": 2, "b": 9, "c": 5, "d": 7}


def group_oracle(rel):
    def fn(prompt: str) -> str:
        ids = window_docs(prompt)
        body = ", ".join(f'"[{i}]": {rel(ids[i])}' for i in sorted(ids, key=int))
        return f"<reason>judged</reason><answer>{{{body}}}</answer>"

    return fn


def test_grouprank_fused_scores_by_hand(tokenizer):
    backend = RecordingBackend(tokenizer, generate_fn=group_oracle(lambda n: GROUP_REL[n]))
    head = GroupRankReranker(GroupRankConfig(group_size=2, repeats=2), backend=backend)
    dl = [{"id": n, "text": f"doc zq{n}q", "score": s} for n, s in zip("abcd", [10.0, 8.0, 6.0, 2.0])]
    res = head.rerank("q", dl)
    # rerank: a .2 b .9 c .5 d .7 ; retriever min-max: a 1 b .75 c .5 d 0
    # fused 0.6/0.4: a .52 b .84 c .50 d .42
    assert res.doc_ids == ["b", "a", "c", "d"]
    assert [r.score for r in res.results] == pytest.approx([0.84, 0.52, 0.50, 0.42])
    assert len(backend.log) == 4  # 2 groups x 2 repeats
    assert all(c.temperature == 0.0 for c in backend.gen_configs)
    head_nofuse = GroupRankReranker(GroupRankConfig(group_size=2, repeats=2, fusion_weight=1.0), backend=backend)
    res = head_nofuse.rerank("q", dl)
    assert res.doc_ids == ["b", "d", "c", "a"]
    assert [r.score for r in res.results] == pytest.approx([0.9, 0.7, 0.5, 0.2])


def test_grouprank_averages_repeats_and_counts_failures(tokenizer):
    calls: dict[str, int] = {}

    def rel(name: str) -> int:
        calls[name] = calls.get(name, 0) + 1
        return {"a": (10, 0), "b": (4, 6), "c": (1, 3), "d": (8, 8)}[name][calls[name] - 1]

    backend = ScriptedBackend(tokenizer, generate_fn=group_oracle(rel))
    head = GroupRankReranker(GroupRankConfig(group_size=3, repeats=2, fusion_weight=1.0), backend=backend)
    res = head.rerank("q", docs(list("abcd")))
    # averages /10: a .5 b .5 c .2 d .8 ; a and b tie -> input order
    assert res.doc_ids == ["d", "a", "b", "c"]
    assert [r.score for r in res.results] == pytest.approx([0.8, 0.5, 0.5, 0.2])
    assert calls == {"a": 2, "b": 2, "c": 2, "d": 2}

    answers = iter(["garbage", '<answer>{"[1]": 10, "[2]": 10, "[3]": 10}</answer>'])
    backend = ScriptedBackend(tokenizer, generate_fn=lambda p: next(answers))
    head = GroupRankReranker(GroupRankConfig(group_size=3, repeats=1, fusion_weight=1.0), backend=backend)
    res = head.rerank("q", docs(list("abcdef")))
    groups = head.groups(res.query, 6)
    assert sorted(res.doc_ids[:3]) == sorted("abcdef"[j] for j in groups[1])  # scored group ranks above failed one
    assert [r.score for r in res.results] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert (head.stats.outputs, head.stats.parse_failures, head.stats.repaired) == (2, 1, 0)


def test_grouprank_groups_seeded_and_cover(tokenizer):
    backend = ScriptedBackend(tokenizer, generate_fn=lambda p: "")
    q = Query("q1", "text")
    g0 = GroupRankReranker(GroupRankConfig(group_size=4, repeats=3, seed=0), backend=backend).groups(q, 10)
    g0b = GroupRankReranker(GroupRankConfig(group_size=4, repeats=3, seed=0), backend=backend).groups(q, 10)
    g1 = GroupRankReranker(GroupRankConfig(group_size=4, repeats=3, seed=1), backend=backend).groups(q, 10)
    assert g0 == g0b and g0 != g1
    assert [len(g) for g in g0] == [4, 4, 2] * 3
    for r in range(3):
        assert sorted(j for g in g0[3 * r : 3 * r + 3] for j in g) == list(range(10))
    assert g0[:3] != g0[3:6]  # a new shuffle per repeat


def test_grouprank_no_first_stage_scores_disables_fusion(tokenizer, caplog):
    backend = RecordingBackend(tokenizer, generate_fn=group_oracle(lambda n: GROUP_REL[n]))
    head = GroupRankReranker(GroupRankConfig(group_size=4, repeats=1, temperature=0.3, top_p=0.8), backend=backend)
    with caplog.at_level(logging.INFO, logger="rerank.methods.grouprank.head"):
        res = head.rerank("q", [f"doc zq{n}q" for n in "abcd"])
    assert [r.score for r in res.results] == pytest.approx([0.9, 0.7, 0.5, 0.2])
    assert "fusion disabled" in caplog.text
    assert backend.gen_configs[0].temperature == 0.3 and backend.gen_configs[0].top_p == 0.8


def test_grouprank_config_errors():
    for bad in ({"fusion_weight": 1.5}, {"group_size": 0}, {"repeats": 0}, {"top_p": 0.0}):
        with pytest.raises(ConfigError):
            Reranker.load("grouprank", model="x", **bad)
    assert minmax([3.0, 3.0]) == [0.0, 0.0] and minmax([1.0, 3.0, 2.0]) == [0.0, 1.0, 0.5]
    assert not math.isnan(minmax([5.0])[0])


# ---------------------------------------------------------------- end to end on a tiny random LLM (transformers)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_llm(tmp_path_factory.mktemp("tiny-llm") / "m", seed=3)


def test_first_end_to_end_matches_manual_forward(tiny_dir):
    import torch

    head = Reranker.load("first", model=str(tiny_dir), window=8, stride=4, device="cpu")
    assert isinstance(head, FirstReranker)
    dl = [{"id": f"p{i}", "text": f"passage {i} about the {w} of things", "score": 9.0 - i}
          for i, w in enumerate(["cost", "size", "age", "colour", "weight", "speed"])]
    res = head.rerank("what is the speed of things", dl)
    assert sorted(res.doc_ids) == sorted(d["id"] for d in dl)
    assert head.backend.calls == {"next_token_logprobs": 1, "generate": 0}
    # the same window by hand: one forward, logits of A..F at the position after "["
    prompt = head.encode(head.window_prompt(Query("0", "what is the speed of things"), as_candidates(dl)))
    assert head.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n[")
    with torch.inference_mode():
        logits = head.backend.model(input_ids=torch.tensor([prompt])).logits[0, -1]
    letter_ids = head.identifier_token_ids()[:6]
    expected = sorted(range(6), key=lambda j: -float(logits[letter_ids[j]]))
    assert res.doc_ids == [f"p{j}" for j in expected]


def test_listwise_and_grouprank_end_to_end(tiny_dir):
    dl = [{"id": f"p{i}", "text": f"passage {i} about things", "score": 9.0 - i} for i in range(5)]
    lw = Reranker.load("listwise", model=str(tiny_dir), window=4, stride=2, device="cpu")
    res = lw.rerank("things", dl)
    assert sorted(res.doc_ids) == sorted(d["id"] for d in dl)
    assert lw.backend.calls["generate"] == 2 and lw.stats.outputs == 2
    gr = Reranker.load("grouprank", model=str(tiny_dir), group_size=3, repeats=2, max_new_tokens=8, device="cpu")
    res = gr.rerank("things", dl)
    assert sorted(res.doc_ids) == sorted(d["id"] for d in dl)
    assert gr.stats.outputs == 4  # 2 groups (3 + 2) x 2 repeats, each output counted


def test_listwise_passes_start_from_the_previous_order(tokenizer):
    # pass 2 from d f a b c g e: [3:7] b c g e -> b g c e; [1:5] f a b g -> f b g a; [0:3] d f b stays
    backend = RecordingBackend(tokenizer, generate_fn=oracle_permutation)
    head = ListwiseReranker(ListwiseConfig(window=4, stride=2, passes=2), backend=backend)
    assert head.rerank("q", docs()).doc_ids == ["d", "f", "b", "g", "a", "c", "e"]
    assert backend.calls["generate"] == 6
    head = ListwiseReranker(ListwiseConfig(window=4, stride=2, passes=3), backend=backend)
    assert head.rerank("q", docs()).doc_ids == sorted(REL, key=lambda n: -REL[n])  # a third pass sorts it fully
    with pytest.raises(ConfigError, match="passes must be >= 1"):
        ListwiseConfig(passes=0)


# ---------------------------------------------------------------- many queries in lock-step rank as each alone

# candidate lists of different lengths: 3, 1, 2, 1 and 3 sliding steps at window 4, stride 2
LOCKSTEP_LISTS = [NAMES, list("gfe"), list("cadbg"), ["b"], NAMES[::-1]]
LOCKSTEP_QUERIES = [Query(f"q{i}", f"query number {i}") for i in range(len(LOCKSTEP_LISTS))]


def scripted_head(method: str, tokenizer):
    """(head, backend) of ``method`` on a scripted oracle backend, batch large enough for one call per step."""
    if method == "first":
        backend = ScriptedBackend(tokenizer, logprobs_fn=letter_logits(tokenizer))
        return FirstReranker(SlidingWindowConfig(window=4, stride=2, batch_size=16), backend=backend), backend
    if method == "listwise":
        backend = ScriptedBackend(tokenizer, generate_fn=oracle_permutation)
        return ListwiseReranker(ListwiseConfig(window=4, stride=2, batch_size=16), backend=backend), backend
    backend = ScriptedBackend(tokenizer, generate_fn=group_oracle(lambda n: REL[n]))
    return GroupRankReranker(GroupRankConfig(group_size=3, repeats=2, batch_size=16), backend=backend), backend


def ranked(results) -> list[list[tuple[str, float]]]:
    return [[(r.doc.id, r.score) for r in res.results] for res in results]


@pytest.mark.parametrize("method", ["first", "listwise", "grouprank"])
def test_lockstep_batch_ranks_as_each_query_alone_scripted(tokenizer, method):
    alone, alone_backend = scripted_head(method, tokenizer)
    expected = [alone.rerank(q, docs(names)) for q, names in zip(LOCKSTEP_QUERIES, LOCKSTEP_LISTS)]
    together, backend = scripted_head(method, tokenizer)
    got = together.rerank_batch(LOCKSTEP_QUERIES, [docs(names) for names in LOCKSTEP_LISTS])
    assert ranked(got) == ranked(expected)
    assert sorted(backend.log) == sorted(alone_backend.log)  # the very same prompts, only batched differently
    assert sum(backend.calls.values()) < sum(alone_backend.calls.values())
    if method == "first":
        assert backend.calls["next_token_logprobs"] == 3  # one forward call per sliding step, all queries together
    if method != "grouprank":
        assert ranked(got)[0][0][0] == "d"  # the oracle's best, from the bottom window to the top


def record_outputs(backend) -> dict[tuple[int, ...], Any]:
    """Wrap ``backend``'s two calls to record each prompt's output (token ids -> log-probs or text)."""
    seen: dict[tuple[int, ...], Any] = {}
    logprobs, generate = backend.next_token_logprobs, backend.generate

    def rec_logprobs(prompts, token_ids):
        out = logprobs(prompts, token_ids)
        seen.update(zip(map(tuple, prompts), out))
        return out

    def rec_generate(prompts, config):
        out = generate(prompts, config)
        seen.update(zip(map(tuple, prompts), out))
        return out

    backend.next_token_logprobs, backend.generate = rec_logprobs, rec_generate
    return seen


@pytest.mark.parametrize(("method", "options"), [
    ("first", {"window": 4, "stride": 2}),
    ("listwise", {"window": 4, "stride": 2}),
    ("grouprank", {"group_size": 3, "repeats": 1, "max_new_tokens": 12}),
])
def test_lockstep_batch_ranks_as_each_query_alone_tiny_llm(sharp_llm_dir, method, options):
    """One padded batch per sliding step (a batch's common prefix run once) gives every prompt the same
    greedy text, the same log-probs within 1e-4 and so the same rankings as each query alone, on a real (tiny) model
    whose outputs vary."""
    head = Reranker.load(method, model=str(sharp_llm_dir), device="cpu", dtype="float32", batch_size=16, **options)
    words = "sun cat rain stock panel meat light market judge city".split()
    lists = [[{"id": f"{q}-{i}", "text": f"{words[(3 * q + i) % 10]} passage {i} on {words[(q + 2 * i) % 10]}",
               "score": float(-i)} for i in range(n)] for q, n in enumerate([6, 3, 1, 5])]
    queries = [Query(f"q{i}", f"what about the {words[i]}") for i in range(len(lists))]
    batched_out = record_outputs(head.backend)
    expected = [head.rerank(q, lst) for q, lst in zip(queries, lists)]
    calls_alone = sum(head.backend.calls.values())
    alone_out = dict(batched_out)
    batched_out.clear()
    got = head.rerank_batch(queries, lists)
    assert ranked(got) == ranked(expected)
    assert sum(head.backend.calls.values()) - calls_alone < calls_alone  # fewer, larger model calls
    assert alone_out.keys() == batched_out.keys()
    for prompt, want in alone_out.items():
        if isinstance(want, str):
            assert batched_out[prompt] == want
        else:
            assert max(abs(a - b) for a, b in zip(batched_out[prompt], want)) < 1e-4
    if method == "first":
        assert any(res.doc_ids != [d["id"] for d in lst] for res, lst in zip(expected, lists))  # the model reordered
    else:
        assert len({t for t in alone_out.values() if t.strip()}) > 1  # varied, non-empty generations
