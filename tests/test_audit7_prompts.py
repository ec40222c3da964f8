"""Fidelity audit 7: the FIRST and listwise defaults are the prompts FIRST / FirstMistral / RankZephyr were trained on
(gangiswag/llm-reranker, castorini/rank_llm), word for word, and the earlier wording ships as ``*-compact`` for the
figures measured with it; setwise opens the answer with `` Passage:`` and reads `` A``, `` B``, ... as llm-rankers
does for a causal LM; docs/methods.md exists and names every method; the BEIR-folder block of docs/results.md runs
twice."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank.backends.scripted import ScriptedBackend
from rerank.errors import ConfigError
from rerank.methods import all_methods, get_method
from rerank.methods.first.head import FirstReranker
from rerank.methods.listwise.head import ListwiseConfig, ListwiseReranker
from rerank.methods.setwise.head import SetwiseConfig, SetwiseReranker
from rerank.heads.sliding_window import SlidingWindowConfig
from rerank.prompts import head_template, load_template
from rerank.testing import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query"


def original_messages(letters: bool, query: str, docs: list[str]) -> list[dict[str, str]]:
    """The messages gangiswag/llm-reranker's ``create_prompt`` (and rank_llm's RankListwiseOSLLM) builds with
    ``variable_passages`` and the RankLLM system message, rebuilt here from its f-strings."""
    num = len(docs)
    kind = "alphabetical" if letters else "numerical"
    text = (f"I will provide you with {num} passages, each indicated by a {kind} identifier []. Rank the passages "
            f"based on their relevance to the search query: {query}.\n\n")
    for i, doc in enumerate(docs):
        text += f"[{chr(ord('A') + i) if letters else i + 1}] {doc}\n"
    example = "[B] > [A]" if letters else "[2] > [1]"
    text += (f"Search Query: {query}.\nRank the {num} passages above based on their relevance to the search query. "
             "All the passages should be included and listed using identifiers, in descending order of relevance. "
             f"The output format should be [] > [], e.g., {example}, Only respond with the ranking results, do not "
             "say any word or explain.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


DOCS = ["alpha passage text", "beta passage text", "gamma passage text"]


def _logged(backend: ScriptedBackend) -> str:
    (entry,) = backend.log
    return entry[1]


def test_first_default_prompt_is_firsts_own_with_the_bracket_prefix() -> None:
    tok = build_tokenizer()
    backend = ScriptedBackend(tok, lambda text, ids: [0.0] * len(ids))
    head = FirstReranker(SlidingWindowConfig(window=3, stride=1), backend=backend)
    head.rerank("what is x", DOCS)
    expected = tok.apply_chat_template(original_messages(True, "what is x", DOCS), tokenize=False,
                                       add_generation_prompt=True) + "["
    assert _logged(backend) == expected
    assert backend.calls["next_token_logprobs"] == 1  # the fast path: one forward, nothing generated


@pytest.mark.parametrize(("identifiers", "letters"), [("", False), ("letters", True)])
def test_listwise_default_prompts_are_rank_zephyrs_and_firsts(identifiers: str, letters: bool) -> None:
    tok = build_tokenizer()
    answer = "[B] > [A] > [C]" if letters else "[2] > [1] > [3]"
    backend = ScriptedBackend(tok, generate_fn=lambda p: answer)
    head = ListwiseReranker(ListwiseConfig(window=3, stride=1, identifiers=identifiers), backend=backend)
    head.rerank("what is x", DOCS)
    expected = tok.apply_chat_template(original_messages(letters, "what is x", DOCS), tokenize=False,
                                       add_generation_prompt=True)
    assert _logged(backend) == expected


@pytest.mark.parametrize(("method", "name", "scheme"), [
    ("first", "first-compact", "letters"),
    ("listwise", "listwise-compact", "numbers"),
    ("listwise", "listwise-letters-compact", "letters"),
])
def test_the_earlier_wording_ships_as_a_compact_template(method: str, name: str, scheme: str) -> None:
    assert f"{name}.yaml" in get_method(method).templates
    tpl = load_template(name)
    assert tpl.name == name and tpl.extra["identifiers"] == scheme
    assert tpl.system == ("You are RankLLM, an assistant that orders passages by how relevant they are to a search "
                          "query.")
    assert tpl.user.startswith("Below are {{ num }} passages")
    assert tpl.user.endswith("Answer with the ranking only, without any explanation.")
    tok = build_tokenizer()
    backend = ScriptedBackend(tok, lambda text, ids: [0.0] * len(ids), generate_fn=lambda p: "[1] > [2] > [3]")
    if method == "first":
        head: Any = FirstReranker(SlidingWindowConfig(window=3, stride=1, template=name), backend=backend)
        assert head.template.assistant_prefix == "["
    else:
        head = ListwiseReranker(ListwiseConfig(window=3, stride=1, template=name), backend=backend)
    head.rerank("what is x", DOCS)
    assert "Below are 3 passages" in _logged(backend)


def test_a_model_recorded_with_the_earlier_template_keeps_it() -> None:
    """A trained model's rerank.json holds its template in full; loading it renders that wording, not the default."""
    recorded = load_template("first-compact").to_dict()
    recorded["name"] = "first"  # what a model trained before the rename recorded
    tok = build_tokenizer()
    backend = ScriptedBackend(tok, lambda text, ids: [0.0] * len(ids))
    FirstReranker(SlidingWindowConfig(window=3, stride=1, template=recorded), backend=backend).rerank("q", DOCS)
    assert "Below are 3 passages" in _logged(backend) and "I will provide you" not in _logged(backend)


@pytest.mark.parametrize("config", [
    "configs/distill/smollm2-first-sft.yaml",
    "configs/distill/smollm2-first-grpo.yaml",
    "configs/examples/tiny-first-sft.yaml",
    "configs/examples/tiny-first-grpo.yaml",
])
def test_configs_behind_documented_figures_name_their_template(config: str) -> None:
    data = yaml.safe_load((REPO / config).read_text(encoding="utf-8"))
    assert data["template"] == "first-compact"


def _setwise(tok: Any, seen: list[list[int]]) -> tuple[SetwiseReranker, ScriptedBackend]:
    def logprobs(text: str, ids: Any) -> list[float]:
        seen.append(list(ids))
        return [-float(i) for i in range(len(ids))]

    backend = ScriptedBackend(tok, logprobs)
    return SetwiseReranker(SetwiseConfig(set_size=3, top_k=1), backend=backend), backend


def test_setwise_reads_the_labels_after_passage_as_llm_rankers_does() -> None:
    tok = build_tokenizer()
    seen: list[list[int]] = []
    head, backend = _setwise(tok, seen)
    head.rerank("what is x", DOCS)
    prompt = _logged(backend)
    assert prompt.endswith('Output only the passage label of the most relevant passage:<|im_end|>\n'
                           '<|im_start|>assistant\n Passage:')
    spaced = [tok.encode(f" {lab}", add_special_tokens=False) for lab in "ABC"]
    assert all(len(ids) == 1 for ids in spaced)
    assert seen == [[ids[0] for ids in spaced]]
    bare = [tok.encode(lab, add_special_tokens=False)[0] for lab in "ABC"]
    assert set(seen[0]).isdisjoint(bare)  # not the first-answer-token "A", "B", "C"


def test_setwise_unprefixed_reads_the_labels_at_the_first_answer_position() -> None:
    """The template the documented setwise figures were measured with: nothing opens the answer, bare labels read."""
    tok = build_tokenizer()
    seen: list[list[int]] = []

    def logprobs(text: str, ids: Any) -> list[float]:
        seen.append(list(ids))
        return [-float(i) for i in range(len(ids))]

    backend = ScriptedBackend(tok, logprobs)
    head = SetwiseReranker(SetwiseConfig(set_size=3, top_k=1, template="setwise-unprefixed"), backend=backend)
    head.rerank("what is x", DOCS)
    assert _logged(backend).endswith("<|im_start|>assistant\n")
    assert seen == [[tok.encode(lab, add_special_tokens=False)[0] for lab in "ABC"]]


def test_setwise_labels_without_distinct_first_tokens_are_one_line_errors(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "rerank/methods/setwise/setwise.yaml").read_text(encoding="utf-8"))
    data["label_prefix"] = " zq"  # every label then starts with the same token
    path = tmp_path / "same-start.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    tok = build_tokenizer()
    assert len({tok.encode(f" zq{lab}", add_special_tokens=False)[0] for lab in "ABC"}) == 1
    head = SetwiseReranker(SetwiseConfig(set_size=3, top_k=1, template=str(path)),
                           backend=ScriptedBackend(tok, lambda text, ids: [0.0] * len(ids)))
    with pytest.raises(ConfigError, match=r"do not start with distinct tokens after ' Passage:'") as info:
        head.rerank("q", DOCS)
    assert "\n" not in str(info.value)


def test_methods_page_has_an_entry_for_every_method_and_is_linked() -> None:
    page = (REPO / "docs/methods.md").read_text(encoding="utf-8")
    headings = re.findall(r"^#{2,3} (.+)$", page, flags=re.M)
    for name in all_methods():
        assert any(f"`{name}`" in h for h in headings), name
    assert "(methods.md)" in (REPO / "docs/README.md").read_text(encoding="utf-8")
    for key in ("learning_rate", "batch_size", "max_query_tokens", "max_doc_tokens", "warmup_ratio", "top_k",
                "temperature", "top_p", "erank_scale", "max_doc_tokens"):
        assert f"`{key}" in page, key


def test_results_beir_folder_block_runs_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO / "docs/results.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "dl19-synth" in b]
    assert len(blocks) == 1
    work = tmp_path / "a" / "b"
    (work / "runs/dq/llm-dl19").mkdir(parents=True)
    pool = tmp_path / "a" / "shared/data/dl19-bm25-top100"
    pool.mkdir(parents=True)
    (pool / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n', encoding="utf-8")
    (work / "runs/dq/llm-dl19/data.jsonl").write_text(
        '{"qid": "q1", "query": "what", "candidates": [{"id": "d1"}, {"id": "d2"}], "labels": [1, 0]}\n',
        encoding="utf-8")
    monkeypatch.chdir(work)
    for _ in range(2):
        exec(compile(blocks[0], "results.md", "exec"), {})  # noqa: S102 - the documented block itself
    out = work / "runs/dq/dl19-synth"
    assert (out / "qrels/train.tsv").read_text(encoding="utf-8") == "query-id\tcorpus-id\tscore\nq1\td1\t1\n"
    assert os.path.realpath(out / "corpus.jsonl") == str((pool / "corpus.jsonl").resolve())


def test_the_cpu_leaderboards_llm_rows_name_the_templates_their_figures_were_measured_with() -> None:
    rows = yaml.safe_load((REPO / "configs/examples/leaderboard-cpu.yaml").read_text(encoding="utf-8"))["rows"]
    by_method = {row["reranker"]: row for row in rows if "SmolLM2-135M-Instruct" in str(row.get("model", ""))}
    expected = {"first": "first-compact", "listwise": "listwise-compact", "setwise": "setwise-unprefixed"}
    for method, template in expected.items():
        assert by_method[method]["reranker_options"]["template"] == template
        head_template(template, method)  # a shipped template of that method
