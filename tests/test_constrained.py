"""Constrained decoding: the grammar automaton on its own (character and token level, the token budget), then the
generating heads on tiny random LLMs: unconstrained they mostly fail to parse, constrained every output is a clean
answer of the expected format; backends that cannot constrain refuse in one line; the LLM-call log records each
response's parse outcome."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from rerank.backends.base import GenerationConfig
from rerank.backends.cache import CachingBackend
from rerank.backends.grammar import (
    ConstrainedDecoding,
    Exact,
    FreeText,
    Grammar,
    OneOf,
    Permutation,
    TokenAutomaton,
    Vocabulary,
    vocabulary,
)
from rerank.backends.scripted import ScriptedBackend
from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.heads.permutation import parse_permutation, permutation_grammar
from rerank.methods.grouprank.head import GroupRankConfig, GroupRankReranker, grouprank_grammar, parse_group_scores
from rerank.methods.listwise.head import ListwiseConfig, ListwiseReranker
from rerank.testing import build_tokenizer, tiny_llm

# ---------------------------------------------------------------- the character automaton


def test_permutation_language() -> None:
    g = Grammar((Permutation(("[1]", "[2]", "[10]"), " > "),))
    for ok in ("[1] > [2] > [10]", "[10] > [1] > [2]", "[2] > [10] > [1]"):
        assert g.matches(ok), ok
    for bad in ("[1] > [2]", "[1] > [1] > [2]", "[1] > [2] > [10] > [1]", "[1]>[2]>[10]", " [1] > [2] > [10]",
                "[1] > [2] > [3]", ""):
        assert not g.matches(bad), bad
    assert Grammar((Permutation(("[A]",), " > "),), prefix="[").matches("A]")
    assert Grammar((Permutation(("[A]", "[B]"), " > "),), prefix="[A").start() is not None
    assert Grammar((Permutation(("[A]", "[B]"), " > "),), prefix="A").start() is None
    with pytest.raises(ValueError, match="distinct"):
        Permutation(("[1]", "[1]"), " > ")


def test_free_text_one_of_and_exact() -> None:
    g = Grammar((Exact("<r>"), FreeText("</r>", ("<a>",)), OneOf(("\n", "")), Exact("<a>"), OneOf(("1", "10", "2")),
                 Exact("</a>")))
    assert g.matches("<r>any text, even </ or <r> or </x></r><a>10</a>")
    assert g.matches("<r></r>\n<a>1</a>")
    assert not g.matches("<r>quoting <a>1</a> early</r><a>1</a>")  # a forbidden string inside the free text
    assert not g.matches("<r>x</r><a>3</a>") and not g.matches("<r>x</r><a>100</a>") and not g.matches("<r>x</r>")
    assert not g.matches("<r>x</r>\n\n<a>1</a>")
    with pytest.raises(ValueError, match="end"):
        FreeText("", ())


def test_grammar_json_round_trip() -> None:
    for g in (permutation_grammar("letters", 5, "["), grouprank_grammar(3)):
        data = json.loads(json.dumps(g.to_dict()))
        assert Grammar.from_dict(data) == g


def test_head_grammars_accept_what_their_parsers_read_cleanly() -> None:
    perm = permutation_grammar("numbers", 12)
    text = "[3] > [12] > [1] > [2] > [4] > [5] > [6] > [7] > [8] > [9] > [10] > [11]"
    assert perm.matches(text) and not parse_permutation(text, 12, "numbers").repaired
    assert not perm.matches("[3] > [12]")
    gr = grouprank_grammar(3)
    answer = '<reason>1 fits best</reason>\n<answer>\n{"[1]": 10, "[2]": 0, "[3]": 7}\n</answer>'
    assert gr.matches(answer)
    parsed = parse_group_scores(answer, 3)
    assert parsed.scores == [10, 0, 7] and not parsed.fixes
    assert not gr.matches('<reason>x</reason><answer>{"[1]": 11, "[2]": 0, "[3]": 7}</answer>')
    assert not gr.matches('<reason>x</reason><answer>{"[2]": 1, "[1]": 0, "[3]": 7}</answer>')


# ---------------------------------------------------------------- the token automaton

# a hand-made vocabulary: single characters, a few merges (one crossing the permutation's separator), a special
# token (None) and end of sequence (id 0)
TOKENS: list[str | None] = [None, "[", "]", " ", ">", "1", "2", "3", "[1", "] > [", " > ", "<", "r", "/", "a", "x",
                            "xx", "</", "r>", "<a>", None, "]\n"]
EOS = 0


def _automaton(g: Grammar) -> TokenAutomaton:
    return TokenAutomaton(g, Vocabulary.from_strings(TOKENS), [EOS])


def _text(ids: list[int]) -> str:
    return "".join(TOKENS[i] or "" for i in ids)


def test_allowed_tokens_and_end_of_sequence() -> None:
    a = _automaton(Grammar((Permutation(("[1]", "[2]", "[3]"), " > "),)))
    assert sorted(TOKENS[i] for i in a.allowed(a.start, 99)) == ["[", "[1"]
    s = a.next_state(a.start, TOKENS.index("[1"))
    assert s is not None and sorted(TOKENS[i] for i in a.allowed(s, 99)) == ["]", "] > ["]
    assert a.next_state(a.start, TOKENS.index("]")) is None and a.next_state(a.start, 20) is None  # special: never
    s = a.start
    for tok in ("[1", "] > [", "3", "] > [", "2"):
        s = a.next_state(s, TOKENS.index(tok))
    assert list(a.allowed(s, 99)) == [TOKENS.index("]")]  # "]\n" would leave the language; no end yet
    s = a.next_state(s, TOKENS.index("]"))
    assert list(a.allowed(s, 99)) == [EOS]  # complete: only end of sequence


def test_min_tokens_is_exact_spelling() -> None:
    a = _automaton(Grammar((Permutation(("[1]", "[2]", "[3]"), " > "),)))
    # "[1" + "] > [" + "2" + "] > [" + "3" + "]" = 6 tokens (the separator merge makes it shorter than 15 characters)
    assert a.min_tokens_to_spell("[1] > [2] > [3]") == 6 and a.min_tokens() == 6
    assert a.min_tokens_to_spell("q") == float("inf")


def _random_walk(a: TokenAutomaton, budget: int, rng: random.Random) -> tuple[list[int], bool]:
    run = ConstrainedDecoding(a, budget)
    ids: list[int] = []
    while len(ids) < budget:
        allowed = run.allowed()
        assert allowed is not None and len(allowed)
        t = int(rng.choice(list(allowed)))
        if t == EOS:
            return ids, True
        ids.append(t)
        run.advance(t)
    return ids, False


@pytest.mark.parametrize("slack", [0, 1, 3, 40])
def test_every_walk_ends_complete_within_the_budget(slack: int) -> None:
    """Whatever token the model picks among the allowed ones, the answer is complete by the last token."""
    g = Grammar((Exact("<r>"), FreeText("</r>", ("<a>",)), OneOf(("\n", "")), Permutation(("[1]", "[2]", "[3]"), " > ")))
    a = _automaton(g)
    budget = a.min_tokens() + slack
    rng = random.Random(slack)
    for _ in range(200):
        ids, ended = _random_walk(a, budget, rng)
        assert len(ids) <= budget and g.matches(_text(ids)), (_text(ids), ended)


def test_budget_below_the_shortest_answer_is_refused(tiny_llm_dir: Path) -> None:
    from rerank.backends.registry import build_backend

    be = build_backend("transformers", str(tiny_llm_dir), device="cpu")
    prompt = be.tokenizer.encode("hello", add_special_tokens=False)
    with pytest.raises(ConfigError, match="shortest valid answer takes .* more than max_new_tokens 5"):
        be.generate([prompt], GenerationConfig(max_new_tokens=5, constraint=permutation_grammar("numbers", 10)))


def test_vocabulary_strings_spell_decoded_text() -> None:
    tok = build_tokenizer()
    vocab = vocabulary(tok)
    assert vocabulary(tok) is vocab  # computed once per tokenizer
    assert vocab.strings[tok.eos_token_id] is None and vocab.strings[tok.convert_tokens_to_ids("<|im_end|>")] is None
    ids = tok.encode("The cat sat [3] > [1] on 12 mats. <answer>7</answer>\n", add_special_tokens=False)
    assert "".join(vocab.strings[i] or "" for i in ids) == tok.decode(ids)


# ---------------------------------------------------------------- heads on tiny random LLMs


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 with weights x10, so greedy outputs vary (at the default scale they are newlines)."""
    return tiny_llm(tmp_path_factory.mktemp("sharp") / "m", seed=5, weight_scale=10.0)


QUERIES = ["what do cats eat", "how do solar panels work", "who wrote the odyssey"]
DOCS = [f"passage {i}: {w} and more words about {w}" for i, w in
        enumerate(["cats eat meat", "solar cells", "homer", "the stock market", "rain", "dogs", "ships", "bread"])]

HEADS = {
    "listwise": {"window": 5, "stride": 3},
    "grouprank": {"group_size": 4, "repeats": 1, "max_new_tokens": 48},
    "erank": {"reasoning": True, "max_reasoning_tokens": 24},
}


@pytest.mark.parametrize("method", sorted(HEADS))
@pytest.mark.parametrize("model", ["tiny_llm_dir", "sharp_dir"])
def test_constrained_outputs_always_parse(method: str, model: str, request: pytest.FixtureRequest,
                                          tmp_path: Path) -> None:
    path = request.getfixturevalue(model)
    free = Reranker.load(method, model=str(path), device="cpu", **HEADS[method])
    free.rerank_batch(QUERIES, [DOCS] * len(QUERIES))
    log = tmp_path / "io.jsonl"
    head = Reranker.load(method, model=str(path), device="cpu", constrained=True, **HEADS[method])
    head.backend = CachingBackend(head.backend, str(path), tmp_path / "c.sqlite", str(log))  # type: ignore[attr-defined]
    ranked = head.rerank_batch(QUERIES, [DOCS] * len(QUERIES))
    head.close()
    assert all(sorted(r.doc_ids) == [str(i) for i in range(len(DOCS))] for r in ranked)
    st = head.stats
    assert st.outputs == free.stats.outputs > 0
    assert (st.parse_failures, st.repaired) == (0, 0), st.failure_examples
    # without the constraint these random models mostly fail to parse: the test above could fail
    assert free.stats.parse_failures + free.stats.repaired >= free.stats.outputs // 2
    lines = [json.loads(x) for x in log.read_text().splitlines() if '"generate"' in x]
    assert len(lines) == st.outputs and all(x["parse"] == {"outcome": "clean", "fixes": []} for x in lines)
    for x in lines:  # each response is a sentence of the grammar sent with it
        g = Grammar.from_dict(x["request"]["constraint"])
        stop = x["request"]["stop"]
        assert g.matches(x["response"] + (stop[0] if stop else "")), x["response"]


def test_constrained_listwise_ranks_by_the_generated_permutation(sharp_dir: Path, tmp_path: Path) -> None:
    head = Reranker.load("listwise", model=str(sharp_dir), device="cpu", constrained=True, window=8, stride=4)
    log = tmp_path / "io.jsonl"
    head.backend = CachingBackend(head.backend, str(sharp_dir), tmp_path / "c.sqlite", str(log))  # type: ignore[attr-defined]
    res = head.rerank(QUERIES[0], DOCS)
    head.close()
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    order = parse_permutation(line["response"], 8, "numbers").order
    assert res.doc_ids == [str(j) for j in order] and order != list(range(8))


def test_backends_that_cannot_constrain_refuse(tiny_llm_dir: Path) -> None:
    tok = build_tokenizer()
    scripted = ScriptedBackend(tok, generate_fn=lambda text: "[1] > [2]")
    with pytest.raises(ConfigError, match=r"^listwise: constrained: true, but the scripted backend cannot"):
        ListwiseReranker(ListwiseConfig(window=2, stride=1, constrained=True), backend=scripted)
    with pytest.raises(ConfigError, match="constrained decoding: the scripted backend cannot"):
        scripted.generate([[1]], GenerationConfig(constraint=permutation_grammar("numbers", 2)))
    from rerank.backends.openai import OpenAIBackend, OpenAIBackendConfig

    openai = OpenAIBackend("m", tok, OpenAIBackendConfig(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(ConfigError, match="grouprank: constrained: true, but the openai backend cannot constrain"):
        GroupRankReranker(GroupRankConfig(constrained=True), backend=openai)
    from types import SimpleNamespace

    from rerank.backends.vllm import VLLMBackend, VLLMBackendConfig

    engine = SimpleNamespace(llm_engine=SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: len(tok))))
    plain_vllm = VLLMBackend(engine, tok, VLLMBackendConfig())  # an engine started without the grammar processor
    with pytest.raises(ConfigError, match="start it with the backend option constrained_decoding: true"):
        plain_vllm.generate([[1]], GenerationConfig(constraint=permutation_grammar("numbers", 2)))
    assert VLLMBackend(engine, tok, VLLMBackendConfig(constrained_decoding=True)).constraint_error() is None
    with pytest.raises(ConfigError, match="erank: constrained applies to reasoning: true"):
        Reranker.load("erank", model=str(tiny_llm_dir), constrained=True)


def test_vllm_engine_gets_the_grammar_processor_when_a_head_is_constrained(monkeypatch: pytest.MonkeyPatch) -> None:
    """A constrained head starts its vLLM engine with constrained_decoding (an unconstrained one does not)."""
    import rerank.heads.llm as llm

    seen: list[dict[str, Any]] = []

    class Constraining(ScriptedBackend):
        def constraint_error(self) -> str | None:
            return None

    def fake_build(name: str, model: str, **options: Any) -> Any:
        seen.append({"name": name, **options})
        return Constraining(build_tokenizer())

    monkeypatch.setattr(llm, "build_backend", fake_build)
    Reranker.load("listwise", model="m", backend="vllm", constrained=True)
    Reranker.load("listwise", model="m", backend="vllm")
    Reranker.load("grouprank", model="m", backend="transformers", constrained=True)
    assert [s.get("constrained_decoding") for s in seen] == [True, None, None]


def _one_line_error(rc: int, err: str, needle: str) -> None:
    """Exit 2 and one error line (progress bars aside), no traceback."""
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert rc == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_cli_constrained_errors_are_one_line(tiny_llm_dir: Path, dl19_dir: Path, tmp_path: Path,
                                            run_cli: Any) -> None:
    base = ["eval", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec", "--top-k", "3",
            "--max-queries", "1", "--model", tiny_llm_dir]
    rc, _, err = run_cli(*base, "--reranker", "grouprank", "--reranker-set", "constrained=true",
                         "--reranker-set", "max_new_tokens=8", "--output", tmp_path / "a")
    _one_line_error(rc, err, "shortest valid answer takes")
    rc, _, err = run_cli(*base, "--reranker", "listwise", "--reranker-set", "constrained=true", "--backend", "openai",
                         "--base-url", "http://127.0.0.1:9/v1", "--reranker-set",
                         f"backend_options.tokenizer={tiny_llm_dir}", "--output", tmp_path / "b")
    _one_line_error(rc, err, "openai backend cannot constrain")


# ---------------------------------------------------------------- the parse outcome in the LLM-call log


def _logged(tmp_path: Path, backend: Any, build: Any) -> tuple[Any, list[dict[str, Any]]]:
    log = tmp_path / "io.jsonl"
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    head = build(CachingBackend(backend, str(model), tmp_path / "c.sqlite", str(log)))
    return head, log


def test_log_records_clean_repaired_and_failed_permutations(tmp_path: Path) -> None:
    tok = build_tokenizer()
    answers = {"alpha": "[2] > [1] > [3]", "beta": "[2] > [2] > [1]", "gamma": "I cannot rank these.",
               "delta": "1. [3]\n[1] > [3] > [2]"}

    def gen(prompt: str) -> str:
        return answers[next(q for q in answers if f"query: {q}" in prompt)]

    head, log = _logged(tmp_path, ScriptedBackend(tok, generate_fn=gen),
                        lambda be: ListwiseReranker(ListwiseConfig(window=3, stride=3), backend=be))
    head.rerank_batch(list(answers), [["x", "y", "z"]] * 4)
    head.close()
    lines = {x["response"]: x for x in map(json.loads, log.read_text().splitlines())}
    assert lines["[2] > [1] > [3]"]["parse"] == {"outcome": "clean", "fixes": []}
    assert lines["[2] > [2] > [1]"]["parse"] == {
        "outcome": "repaired",
        "fixes": ["1 duplicate identifier(s) dropped", "1 missing identifier(s) appended in input order"]}
    assert lines["I cannot rank these."]["parse"] == {
        "outcome": "failed", "fixes": ["no valid identifier: the window keeps its input order"]}
    assert lines["1. [3]\n[1] > [3] > [2]"]["parse"]["outcome"] == "clean"
    assert (head.stats.outputs, head.stats.parse_failures, head.stats.repaired) == (4, 1, 1)


def test_log_records_grouprank_and_erank_outcomes(tmp_path: Path) -> None:
    tok = build_tokenizer()
    group = {"alpha": '<reason>ok</reason><answer>{"[1]": 3, "[2]": 7}</answer>',
             "beta": "<reason>ok</reason><answer>{'[1]': 3, '[2]': 12,}</answer>", "gamma": "no idea"}

    def gen(prompt: str) -> str:
        return group[next(q for q in group if f"\n{q}\n" in prompt)]

    head, log = _logged(tmp_path, ScriptedBackend(tok, generate_fn=gen),
                        lambda be: GroupRankReranker(GroupRankConfig(group_size=2, repeats=1), backend=be))
    head.rerank_batch(list(group), [["x", "y"]] * 3)
    head.close()
    parse = {x["response"]: x["parse"] for x in map(json.loads, log.read_text().splitlines())}
    assert parse[group["alpha"]] == {"outcome": "clean", "fixes": []}
    assert parse[group["beta"]] == {"outcome": "repaired", "fixes": ["quotes/trailing comma", "score 12.0 clipped"]}
    assert parse[group["gamma"]]["outcome"] == "failed"
    assert parse[group["gamma"]]["fixes"][-1] == "no score read: the group scores 0"

    from rerank.methods.erank.head import ERankConfig, ERankReranker

    reasons = {"cats": "fine</think><answer>7", "dogs": "hmm <answer>3</answer> no</think><answer>5", "sun": "endless"}

    def gen2(prompt: str) -> str:
        return reasons[next(q for q in reasons if f"Query: {q}" in prompt)]

    tmp2 = tmp_path / "erank"
    tmp2.mkdir()
    head, log = _logged(tmp2, ScriptedBackend(tok, lambda text, ids: [-1.0] * len(ids), gen2),
                        lambda be: ERankReranker(ERankConfig(reasoning=True), backend=be))
    head.rerank_batch(list(reasons), [["a doc"]] * 3)
    head.close()
    gen_lines = [json.loads(x) for x in log.read_text().splitlines() if '"generate"' in x]
    parse = {x["response"]: x["parse"] for x in gen_lines}
    assert parse[reasons["cats"]] == {"outcome": "clean", "fixes": []}
    assert parse[reasons["dogs"]] == {"outcome": "repaired", "fixes": ["<answer> inside the reasoning ignored"]}
    assert parse[reasons["sun"]] == {"outcome": "repaired",
                                     "fixes": ["no <answer> after the reasoning: </think><answer> appended"]}
    # the log keeps generation order, and the log-prob calls that follow each generation come after it
    kinds = [json.loads(x)["kind"] for x in log.read_text().splitlines()]
    assert kinds[:3] == ["generate"] * 3 and set(kinds[3:]) == {"next_token_logprobs"}


def test_eval_log_llm_io_has_parse_outcomes(tiny_llm_dir: Path, dl19_dir: Path, tmp_path: Path,
                                            run_cli: Any) -> None:
    base = ["eval", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec", "--top-k", "4",
            "--max-queries", "2", "--model", tiny_llm_dir, "--reranker", "listwise"]
    for run, extra in (("free", []), ("constrained", ["--reranker-set", "constrained=true"])):
        rc, _, err = run_cli(*base, *extra, "--output", tmp_path / run, "--log-llm-io", tmp_path / f"{run}.jsonl")
        assert rc == 0, err
    free = [json.loads(x) for x in (tmp_path / "free.jsonl").read_text().splitlines()]
    constrained = [json.loads(x) for x in (tmp_path / "constrained.jsonl").read_text().splitlines()]
    assert len(free) == len(constrained) == 2
    assert all(x["parse"]["outcome"] == "failed" for x in free)  # the tiny model writes newlines
    assert all(x["parse"] == {"outcome": "clean", "fixes": []} for x in constrained)
    metrics = json.loads((tmp_path / "constrained" / "metrics.json").read_text())
    assert metrics["reranker"]["config"]["constrained"] is True


def test_rank_log_llm_io_and_relevance(tiny_llm_dir: Path, dl19_dir: Path, tmp_path: Path, run_cli: Any) -> None:
    """rank logs the prompts and parse outcomes as eval does (without caching answers), and its JSONL gives each
    document's [0, 1] relevance beside the raw score."""
    rc, out, err = run_cli("rank", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec", "--top-k",
                           "4", "--max-queries", "2", "--model", tiny_llm_dir, "--reranker", "listwise",
                           "--output", tmp_path / "ranked.jsonl", "--log-llm-io", tmp_path / "io.jsonl")
    assert rc == 0, err
    lines = [json.loads(x) for x in (tmp_path / "io.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(x["parse"]["outcome"] == "failed" and not x["cached"] for x in lines)
    assert "2 model outputs, 2 parse failures" in out
    (tmp_path / "in.jsonl").write_text(json.dumps({"query": "bm25", "docs": ["a b", "c", "d e f"]}) + "\n")
    rc, _, err = run_cli("rank", "--input", tmp_path / "in.jsonl", "--model", tiny_llm_dir, "--reranker", "first",
                         "--output", tmp_path / "first.jsonl")
    assert rc == 0, err
    ranking = json.loads((tmp_path / "first.jsonl").read_text())["ranking"]
    assert [d["relevance"] for d in ranking] == [1.0, 2 / 3, 1 / 3]  # position n..1 over n
