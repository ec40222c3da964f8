"""Long inputs: every head fits its prompt to the model's context, takes a 20,000-character query, and scores long
documents by passages (``long_docs``).

Window heads (listwise, first, grouprank) run on a scripted backend with a small context: every prompt plus what is
generated after it fits, the passages of a window share one token cap (short ones stay whole), the ranking the oracle
reads from the fitted prompts is still exact, and the counts reach ``metrics.json``. ``rerank eval`` runs to the end
with each window head on SciFact, DL19 and a corpus of 10,000-character documents with a tiny model of 512 (1,024 for
GroupRank, whose template alone takes 573 tokens of the tiny tokenizer) context tokens.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rerank.backends.base import GenerationConfig
from rerank.backends.scripted import ScriptedBackend
from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.heads.llm import token_cap
from rerank.heads.sliding_window import SlidingWindowConfig
from rerank.heads.text import passage_windows, token_spans
from rerank.methods.cross_encoder.head import CrossEncoderConfig, CrossEncoderReranker
from rerank.methods.erank.head import ERankConfig, ERankReranker
from rerank.methods.first.head import FirstReranker
from rerank.methods.grouprank.head import GroupRankConfig, GroupRankReranker
from rerank.methods.listwise.head import ListwiseConfig, ListwiseReranker
from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker
from rerank.testing import build_tokenizer, build_wordpiece_tokenizer, corpus_lines

REL = {"a": 1, "b": 5, "c": 3, "d": 7, "e": 2, "f": 6, "g": 4}
FILLER = " ".join(corpus_lines()[:40])  # a few thousand tokens of ordinary English
LONG_QUERY = (" ".join(corpus_lines()) * 3)[:20_000]
_LINE = re.compile(r"^\[(\w+)\]\.? [^\n]*?zq(\w+?)q", re.MULTILINE)


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


class IdsBackend(ScriptedBackend):
    """A scripted backend that also records every prompt's token ids and every generation budget."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prompts: list[tuple[list[int], int]] = []

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        self.prompts += [(list(p), 0) for p in prompts]
        return super().next_token_logprobs(prompts, token_ids)

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        self.prompts += [(list(p), config.max_new_tokens) for p in prompts]
        return super().generate(prompts, config)


def window_docs(prompt: str) -> dict[str, str]:
    return {ident: name for ident, name in _LINE.findall(prompt)}


def permutation_oracle(prompt: str) -> str:
    ids = window_docs(prompt)
    return " > ".join(f"[{i}]" for i in sorted(ids, key=lambda i: -REL[ids[i]]))


def group_oracle(prompt: str) -> str:
    ids = window_docs(prompt)
    body = ", ".join(f'"[{i}]": {REL[ids[i]]}' for i in sorted(ids, key=int))
    return f"<reason>judged</reason><answer>{{{body}}}</answer>"


def letter_logits(tok: Any):
    def fn(prompt: str, token_ids: Sequence[int]) -> list[float]:
        ids = window_docs(prompt)
        return [float(REL[ids[x]]) if x in ids else -30.0 for x in (tok.decode([t]) for t in token_ids)]

    return fn


def long_docs(short: str = "c") -> list[dict[str, Any]]:
    """Documents a..g: a marker the oracles read, then filler; ``short`` is a one-line document."""
    return [{"id": n, "text": f"zq{n}q {'short one' if n == short else FILLER}", "score": 7.0 - i}
            for i, n in enumerate("abcdefg")]


def test_token_cap() -> None:
    assert token_cap([5, 100, 100], 65) == 30  # 5 + 30 + 30: the short passage keeps all of its tokens
    assert token_cap([5, 10], 100) == 10  # everything fits: no cut
    assert token_cap([50, 50], 9) == 4
    assert token_cap([], 10) == 0


WINDOW_HEADS = {
    "listwise": lambda tok, ctx: ListwiseReranker(
        ListwiseConfig(window=4, stride=2),
        backend=IdsBackend(tok, generate_fn=permutation_oracle, context_length=ctx)),
    "first": lambda tok, ctx: FirstReranker(
        SlidingWindowConfig(window=4, stride=2), backend=IdsBackend(tok, letter_logits(tok), context_length=ctx)),
    "grouprank": lambda tok, ctx: GroupRankReranker(
        GroupRankConfig(group_size=4, repeats=1, fusion_weight=1.0, max_new_tokens=48),
        backend=IdsBackend(tok, generate_fn=group_oracle, context_length=ctx)),
}
CONTEXT = {"listwise": 600, "first": 600, "grouprank": 1000}


@pytest.mark.parametrize("method", list(WINDOW_HEADS))
def test_window_heads_fit_prompts_to_the_context(tok: Any, method: str) -> None:
    ctx = CONTEXT[method]
    head = WINDOW_HEADS[method](tok, ctx)
    backend: IdsBackend = head.backend  # type: ignore[assignment]
    res = head.rerank(LONG_QUERY, long_docs())
    if method == "grouprank":
        assert res.doc_ids == sorted("abcdefg", key=lambda n: -REL[n])  # every document scored from its marker
    else:
        assert res.doc_ids == ["d", "f", "a", "b", "c", "g", "e"]  # as in tests/test_listwise.py: markers survive
    assert backend.prompts
    for ids, generated in backend.prompts:
        assert len(ids) + generated <= ctx  # fitted: the prompt and what is generated after it
        text = tok.decode(ids)
        assert text.endswith(head.template.assistant_prefix + ("" if head.template.assistant_prefix else
                                                               "<|im_start|>assistant\n"))
        if "zqcq" in text:
            assert "zqcq short one" in text  # the short passage keeps all of its tokens
        cuts = {len(tok.encode(p, add_special_tokens=False)) for p in re.findall(r"zq[abdefg]q [^\n]*", text)}
        assert max(cuts) - min(cuts) <= 2  # one cap for the long passages of a prompt (±re-tokenisation)
    stats = head.stats
    assert stats.fitted_prompts == len(backend.prompts)
    long_slots = sum(len(re.findall(r"zq[abdefg]q", tok.decode(ids))) for ids, _ in backend.prompts)
    assert stats.shortened_passages == long_slots
    # the query (128 tokens after max_query_tokens) is cut where its copies would take over half the room: its two
    # copies in the listwise / FIRST prompts at a 600-token context, not its one copy in GroupRank's at 1,000
    assert stats.shortened_queries == (0 if method == "grouprank" else len(backend.prompts))


def test_a_prompt_that_fits_is_not_touched(tok: Any) -> None:
    docs = [{"id": n, "text": f"zq{n}q short"} for n in "abcd"]
    fitted = WINDOW_HEADS["listwise"](tok, 4096)
    plain = ListwiseReranker(ListwiseConfig(window=4, stride=2),
                             backend=IdsBackend(tok, generate_fn=permutation_oracle))
    assert fitted.rerank("q", docs).doc_ids == plain.rerank("q", docs).doc_ids
    assert fitted.backend.prompts == plain.backend.prompts  # type: ignore[attr-defined]
    s = fitted.stats
    assert (s.fitted_prompts, s.shortened_passages, s.shortened_queries) == (0, 0, 0)


def test_the_query_never_crowds_out_the_passages(tok: Any) -> None:
    """Even with ``max_query_tokens`` far above the context, the query's two copies take at most half the room."""
    backend = IdsBackend(tok, generate_fn=permutation_oracle, context_length=900)
    head = ListwiseReranker(ListwiseConfig(window=4, stride=4, max_query_tokens=5000), backend=backend)
    res = head.rerank(LONG_QUERY, long_docs(short="")[:4])
    assert res.doc_ids == ["d", "b", "c", "a"]
    (ids, generated), = backend.prompts
    text = tok.decode(ids)
    empty = len(head.encode(head._prompt("", [""] * 4)))
    with_query = len(head.encode(head._prompt(text.split("query: ", 1)[1].split(".\n", 1)[0], [""] * 4)))
    assert with_query - empty <= (900 - generated - empty) // 2
    assert all(len(tok.encode(p, add_special_tokens=False)) >= 40 for p in re.findall(r"zq[abcd]q [^\n]*", text))


def test_a_template_that_cannot_fit_is_a_config_error(tok: Any) -> None:
    head = WINDOW_HEADS["grouprank"](tok, 600)  # the GroupRank template alone takes ~600 tiny tokens
    with pytest.raises(ConfigError, match="context of 600 tokens cannot hold this prompt"):
        head.rerank("q", long_docs())


def yes_no_fn(tok: Any):
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")

    def fn(prompt: str, ids: Sequence[int]) -> list[float]:
        assert list(ids) == [yes, no]
        rel = "zqrelq" in prompt.split("Passage:", 1)[1]
        return [-0.1, -3.0] if rel else [-3.0, -0.1]

    return fn


def erank_fn(tok: Any):
    def fn(prompt: str, ids: Sequence[int]) -> list[float]:
        if prompt.rsplit("<answer>", 1)[1]:  # after "1": the answer does not continue
            return [-30.0] * len(ids)
        want = {"9": 0.9} if "zqrelq" in prompt.split("Document:", 1)[1] else {"2": 0.9}
        return [math.log(want[t]) if (t := tok.decode([i])) in want else -30.0 for i in ids]

    return fn


POINTWISE = {
    "yes-no": lambda tok, ctx, **kw: YesNoReranker(YesNoConfig(**kw), backend=IdsBackend(tok, yes_no_fn(tok),
                                                                                          context_length=ctx)),
    "erank": lambda tok, ctx, **kw: ERankReranker(ERankConfig(**kw), backend=IdsBackend(tok, erank_fn(tok),
                                                                                        context_length=ctx)),
}


@pytest.mark.parametrize("method", list(POINTWISE))
def test_pointwise_heads_fit_and_take_a_20000_character_query(tok: Any, method: str) -> None:
    head = POINTWISE[method](tok, 300)
    res = head.rerank(LONG_QUERY, [f"zqrelq {FILLER}", "short text", f"other {FILLER}"])
    assert res.doc_ids[0] == "0"
    assert all(len(ids) <= 300 for ids, _ in head.backend.prompts)  # type: ignore[attr-defined]
    assert head.stats.fitted_prompts >= 2 and head.stats.shortened_passages == 2  # the two long documents


def test_erank_reasoning_fits_the_reasoning_budget(tok: Any) -> None:
    backend = IdsBackend(tok, erank_fn(tok), generate_fn=lambda p: "thought</think><answer>9", context_length=600)
    head = ERankReranker(ERankConfig(reasoning=True, max_reasoning_tokens=64), backend=backend)
    res = head.rerank(LONG_QUERY, [f"zqrelq {FILLER}", "short"])
    assert res.doc_ids == ["0", "1"]
    assert all(len(ids) + generated <= 600 for ids, generated in backend.prompts)
    assert head.reserve() >= 64


# ---------------------------------------------------------------- long documents by passages


class KeywordModel(torch.nn.Module):
    """A stand-in sequence classifier: logit 5 when the pair holds token ``target``, else 0; records its inputs."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(num_labels=1)
        self.target = target
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
        self.seen.append(input_ids)
        hit = (input_ids == self.target).any(-1).float()
        return SimpleNamespace(logits=(5.0 * hit + self.bias).unsqueeze(-1))


def keyword_cross_encoder(**options: Any) -> tuple[CrossEncoderReranker, str]:
    wp = build_wordpiece_tokenizer()
    word = next(w for w in sorted(wp.get_vocab()) if w.isalpha() and len(w) > 6 and w not in FILLER.lower())
    model = KeywordModel(wp.convert_tokens_to_ids(word))
    return CrossEncoderReranker(CrossEncoderConfig(max_length=64, **options), model, wp), word


def relevant_past_first_window(word: str) -> list[str]:
    """Three documents; only the first holds the relevant word, after ~500 tokens of filler (past any first window)."""
    return [f"{FILLER[:2500]} The answer is {word}.", "nothing to see", "plain words here"]


@pytest.mark.parametrize("method", ["yes-no", "erank", "cross-encoder"])
def test_maxp_finds_the_relevant_passage_past_the_first_window(tok: Any, method: str) -> None:
    def head(mode: str) -> tuple[Reranker, str]:
        opts = {"long_docs": mode, **({"passage_tokens": 48, "stride": 24} if mode != "truncate" else {})}
        if method == "cross-encoder":
            return keyword_cross_encoder(**opts)
        return POINTWISE[method](tok, None, max_doc_tokens=64, **opts), "zqrelq"

    truncate, word = head("truncate")
    docs = relevant_past_first_window(word)
    docs = docs[1:] + docs[:1]  # the relevant document last in input order, so ties keep it last
    assert truncate.rerank("q", docs).doc_ids[-1] == "2"  # truncated, its relevant sentence is never read
    firstp, _ = head("firstp")
    assert firstp.rerank("q", docs).doc_ids[-1] == "2"
    maxp, _ = head("maxp")
    res = maxp.rerank("q", docs)
    assert res.doc_ids[0] == "2" and len(res.results) == 3  # one result per input document
    meta = res.results[0].metadata
    assert meta is not None and meta["passages"] > 5
    span = docs[2][meta["passage"]["start"] : meta["passage"]["end"]]
    assert word in span and meta["passage"]["index"] == meta["passages"] - 1
    assert all(r.metadata == {"passage": {"index": 0, "start": 0, "end": len(r.doc.text)}, "passages": 1}
               for r in res.results[1:])  # short documents: one passage, the whole text
    spans = passage_windows(token_spans(maxp.tokenizer, docs[2]), 48, 24)  # type: ignore[attr-defined]
    assert len(spans) == meta["passages"]
    each = truncate.rerank("q", [docs[2][a:b] for a, b in spans]).results
    assert res.results[0].score == pytest.approx(max(r.score for r in each))  # each passage scored as a document


def test_maxp_keeps_the_title_with_every_passage(tok: Any) -> None:
    seen: list[str] = []

    def fn(prompt: str, ids: Sequence[int]) -> list[float]:
        seen.append(prompt)
        return yes_no_fn(tok)(prompt, ids)

    head = YesNoReranker(YesNoConfig(long_docs="maxp", passage_tokens=16, stride=16, max_doc_tokens=32),
                         backend=ScriptedBackend(tok, fn))
    head.rerank("q", [{"id": "x", "title": "The Title", "text": FILLER[:400]}])
    assert len(seen) > 3 and all("Passage: The Title\n" in p for p in seen)


def test_long_docs_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="long_docs: must be one of"):
        Reranker.load("yes-no", model="x", long_docs="best")
    with pytest.raises(ConfigError, match="stride in 1..passage_tokens"):
        Reranker.load("erank", model="x", long_docs="maxp", passage_tokens=10, stride=20)
    with pytest.raises(ConfigError, match="more than the head reads"):
        Reranker.load("yes-no", model="x", long_docs="maxp", passage_tokens=400, max_doc_tokens=300)
    with pytest.raises(ConfigError, match="more than the head reads"):
        keyword_cross_encoder(long_docs="maxp", passage_tokens=100)


# ---------------------------------------------------------------- the cross-encoder's query


def test_cross_encoder_cuts_a_long_query_as_sentence_transformers_does(tiny_bert_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    head = Reranker.load("cross-encoder", model=str(tiny_bert_dir), max_length=64, max_query_tokens=10_000)
    st = CrossEncoder(str(tiny_bert_dir), max_length=64, device="cpu")
    docs = ["short document", FILLER[:3000], "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 2]
    for query in (LONG_QUERY, "a question of about forty words " * 8, "short query"):
        want = st.predict([(query, d) for d in docs], activation_fn=torch.nn.Identity())
        got = {r.doc.id: r.score for r in head.rerank(query, docs).results}
        assert [got[str(i)] for i in range(3)] == pytest.approx(want.tolist(), abs=1e-5)
        enc = head.tokenizer(query, docs[1], truncation="longest_first", max_length=64)
        kept = enc["token_type_ids"].count(1) - 1  # the document's tokens ([SEP] is segment 1 too)
        assert 0 <= kept - head.document_token_limit(query) <= 1  # the longer of two long texts keeps the odd token
    capped = Reranker.load("cross-encoder", model=str(tiny_bert_dir), max_length=64, max_query_tokens=5)
    assert capped.query_text("one two three four five six seven") == "one two three four five"
    assert capped.document_token_limit(LONG_QUERY) == 64 - 3 - 5


# ---------------------------------------------------------------- every head on the tiny models: a 20,000-char query


@pytest.mark.parametrize("method", ["cross-encoder", "yes-no", "erank", "listwise", "first", "grouprank"])
def test_every_head_reranks_a_20000_character_query(method: str, tiny_llm_dir: Path, tiny_bert_dir: Path) -> None:
    options = {"grouprank": {"group_size": 3, "max_new_tokens": 8}, "listwise": {"window": 4, "stride": 2},
               "first": {"window": 4, "stride": 2}}.get(method, {})
    model = tiny_bert_dir if method == "cross-encoder" else tiny_llm_dir
    head = Reranker.load(method, model=str(model), device="cpu", **options)
    docs = [f"passage {i} {FILLER[: 200 * i]}" for i in range(5)]
    res = head.rerank(LONG_QUERY, docs)
    assert sorted(res.doc_ids) == [str(i) for i in range(5)]
    assert all(math.isfinite(r.score) for r in res.results)


def test_rank_and_eval_cli_take_a_20000_character_query(tmp_path: Path, run_cli: Any, tiny_bert_dir: Path,
                                                        tiny_llm_dir: Path) -> None:
    from rerank.data.io import write_jsonl, write_qrels

    docs = [{"_id": f"d{i}", "title": "", "text": line} for i, line in enumerate(corpus_lines()[:30])]
    query = docs[3]["text"] + " " + LONG_QUERY
    (tmp_path / "in.jsonl").write_text(json.dumps({"qid": "q1", "query": query, "docs": [d["text"] for d in docs[:6]]})
                                       + "\n")
    for method, model in (("cross-encoder", tiny_bert_dir), ("yes-no", tiny_llm_dir)):
        rc, out, err = run_cli("rank", "--reranker", method, "--model", model, "--input", tmp_path / "in.jsonl",
                               "--output", tmp_path / f"{method}.jsonl")
        assert rc == 0 and "ranked 1 query" in out, err
        (rec,) = [json.loads(line) for line in (tmp_path / f"{method}.jsonl").read_text().splitlines()]
        assert len(rec["query"]) > 20_000 and len(rec["ranking"]) == 6
        assert all("metadata" not in d for d in rec["ranking"])
    rc, _, err = run_cli("rank", "--reranker", "cross-encoder", "--model", tiny_bert_dir, "--input",
                         tmp_path / "in.jsonl", "--output", tmp_path / "maxp.jsonl", "--reranker-set", "long_docs=maxp",
                         "--reranker-set", "passage_tokens=8", "--reranker-set", "stride=4")
    assert rc == 0, err
    (rec,) = [json.loads(line) for line in (tmp_path / "maxp.jsonl").read_text().splitlines()]
    for d in rec["ranking"]:  # the passage that scored: offsets into the document's text
        p = d["metadata"]["passage"]
        assert d["metadata"]["passages"] >= 2 and 0 <= p["start"] < p["end"] <= len(d["text"])
    ds = tmp_path / "longq"
    ds.mkdir()
    write_jsonl(docs, ds / "corpus.jsonl")
    write_jsonl([{"_id": "q1", "text": query}], ds / "queries.jsonl")
    write_qrels({"q1": {"d3": 1}}, ds / "qrels" / "test.tsv", beir=True)
    rc, _, err = run_cli("eval", "--dataset", ds, "--retriever", "bm25", "--retriever-set", "show_progress=false",
                           "--reranker", "cross-encoder", "--model", tiny_bert_dir, "--top-k", "10", "--output",
                           tmp_path / "eval")
    assert rc == 0, err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_queries"] == 1


# ---------------------------------------------------------------- done when: rerank eval on real and long data


@pytest.fixture(scope="module")
def eval_env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A BM25 cache shared by this module's runs, and the tiny LLM at 512 and 1,024 context tokens."""
    from rerank.testing import tiny_llm

    root = tmp_path_factory.mktemp("evals")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RERANK_CACHE", str(root / "cache"))
        yield SimpleNamespace(root=root, model=tiny_llm(root / "tiny", max_position_embeddings=512),
                              model_1k=tiny_llm(root / "tiny-1k", max_position_embeddings=1024))


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic BEIR folder of 40 documents of 10,000 characters and 3 test queries
    (``python -m rerank.testing tiny-beir DIR --num-docs 40 --num-queries 3 --splits test --doc-chars 10000``)."""
    from rerank.testing import make_tiny_beir

    root = make_tiny_beir(tmp_path_factory.mktemp("long10k") / "long10k", num_docs=40, num_queries=3,
                          splits=("test",), doc_chars=10_000)
    docs = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
    assert len(docs) == 40 and all(len(d["text"]) == 10_000 for d in docs)
    return root


@pytest.mark.parametrize("method", ["listwise", "first", "grouprank"])
@pytest.mark.parametrize("data", [pytest.param("scifact", marks=pytest.mark.shared_data),
                                  pytest.param("dl19", marks=pytest.mark.shared_data), "long10k"])
def test_eval_runs_to_the_end_with_long_documents(method: str, data: str, eval_env: Any, long_corpus: Path,
                                                  request: pytest.FixtureRequest, run_cli: Any) -> None:
    if data == "scifact":
        source = ["--dataset", request.getfixturevalue("scifact_dir"), "--retriever", "bm25"]
    elif data == "dl19":
        dl19 = request.getfixturevalue("dl19_dir")
        source = ["--dataset", dl19, "--first-stage", dl19 / "bm25_top100.trec"]
    else:
        source = ["--dataset", long_corpus, "--retriever", "bm25"]
    if source[2] == "--retriever":
        source += ["--retriever-set", "show_progress=false"]
    model = eval_env.model_1k if method == "grouprank" else eval_env.model
    extra = ["--reranker-set", "max_new_tokens=64", "--reranker-set", "repeats=1"] if method == "grouprank" else []
    out = eval_env.root / f"{method}-{data}"
    rc, _, err = run_cli("eval", *source, "--reranker", method, "--model", model, "--top-k", "20", "--max-queries",
                         "2", "--output", out, *extra)
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_queries"] == 2 and len(metrics["per_query"]) == 2
    parse = metrics["parse"]
    assert parse["fitted_prompts"] >= 2 and parse["shortened_passages"] >= 20, parse
    assert "passages cut below max_doc_tokens" in (out / "report.md").read_text()


def test_openai_backend_fits_prompts_to_max_model_len(tmp_path: Path) -> None:
    """``max_model_len`` is the served model's context: prompts sent (token ids) plus ``max_tokens`` fit it."""
    from test_openai_backend import FakeServer
    from transformers import AutoTokenizer

    from rerank.backends.registry import build_backend

    build_tokenizer(tmp_path)
    server = FakeServer(AutoTokenizer.from_pretrained(tmp_path))
    try:
        with pytest.raises(ConfigError, match="max_model_len must be >= 1"):
            build_backend("openai", "served", base_url=server.url, tokenizer=str(tmp_path), max_model_len=0)
        backend = build_backend("openai", "served", base_url=server.url, tokenizer=str(tmp_path), max_model_len=600)
        assert backend.context_length == 600
        head = ListwiseReranker(ListwiseConfig(window=4, stride=2), backend=backend)
        head.rerank(LONG_QUERY, long_docs())
        sent = [(p, body["max_tokens"]) for _, body in server.requests for p in body["prompt"]]
        assert len(sent) == 3 and all(len(p) + m <= 600 for p, m in sent)
        assert head.stats.fitted_prompts == 3
    finally:
        server.close()


def test_pointwise_document_limit_follows_the_query_and_context(tiny_llm_dir: Path) -> None:
    """A pointwise LLM head's document_token_limit was max_doc_tokens whatever the query: with a long query the
    prompt was fitted and the document cut further, so a server's truncate: false passed a document whose end the
    model never read. The limit now is what the prompt holds with that query: a document of the limit fits whole,
    a few tokens more are cut."""
    from rerank import Reranker

    rr = Reranker.load("yes-no", model=str(tiny_llm_dir), backend_options={"max_length": 400})
    tok = rr.tokenizer
    text_ids = tok.encode(" ".join(["alpha beta"] * 400), add_special_tokens=False)
    assert rr.document_token_limit("short query") == rr.config.max_doc_tokens
    for query in ("word " * 100, "word " * 2000):
        limit = rr.document_token_limit(query)
        assert limit < rr.config.max_doc_tokens
        for extra, cut in ((0, 0), (3, 1)):
            rr.stats.shortened_passages = 0
            rr.rerank(query, [tok.decode(text_ids[: limit + extra])])
            assert rr.stats.shortened_passages == cut, (len(query), limit, extra)
