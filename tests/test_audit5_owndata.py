"""Own-data audit, findings 3 and 4.

3. Every key a trainer suggests ("did you mean 'X'?", "key 'old' is now 'X'") is one it accepts for the configured
   head and data: fed back in place of the key given, the config builds (a table-driven test over every hint of every
   table, for every trainer, head and data source, so a hint added later to a key some setting refuses fails here);
   the other family's names get a hint both ways (sft/grpo <-> the retriever trainers).
4. ``data.path`` reads FlagEmbedding's and Tevatron's rows, converted on read; a row of no shape read, or a TSV, is one
   line naming ``file:line`` and the shapes read; the snippet in docs/train-your-own.md turns a TSV into rows; a file
   of rows given to a retriever trainer says it reads only BEIR folders.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from rerank.errors import ConfigError, DataFormatError
from rerank.methods import method_names
from rerank.trainers import common
from rerank.trainers.base import available_trainers, get_trainer, load_train_config
from rerank.trainers.data import load_examples

REPO = Path(__file__).resolve().parents[1]
RERANKER_TRAINERS = ("sft", "grpo")
#: the toolkit's own (not a trainer another test module registered, which may be imported first)
RETRIEVER_TRAINERS = tuple(t for t in available_trainers()
                           if t not in RERANKER_TRAINERS and get_trainer(t).__module__.startswith("rerank."))

#: a value for each key a hint table names or suggests, valid for every key it may be suggested as
VALUES: dict[str, Any] = {
    "dataset": "scifact", "beir": "scifact", "path": "rows.jsonl", "split": "dev", "dev_fraction": 0.2,
    "qrels_duplicates": "max", "negatives_per_positive": 2, "bm25_depth": 40, "max_candidates": 8, "max_queries": 5,
    "negatives": "random", "dev_max": 7, "group_size": 4, "hard_negatives": 2, "negatives_depth": 40,
    "num_candidates": 8, "distill_model": "teacher", "max_length": 128, "seed": 3, "data": "scifact",
    "query_max_length": 24, "doc_max_length": 128, "lr": 0.001, "warmup_steps": 0.1, "checkpoint_every": 5,
    "eval_every": 5, "keep_checkpoints": 3,
}


#: what a suggested key needs beside it to be valid (not to be read: every key here is read as it stands)
BESIDE: dict[str, list[str]] = {"eval_every": ["save_steps=5"]}


def _hinted_keys() -> list[str]:
    """Every key some hint table answers, as given on the command line (``data.K`` for a key of a block data)."""
    keys = [*common.RENAMED_KEYS, *common.RERANKER_KEY_HINTS, *common.RETRIEVER_KEY_HINTS]
    keys += [f"data.{k}" for k in (*common.DATA_KEY_HINTS, *common.RETRIEVER_DATA_KEY_HINTS)]
    return sorted(set(keys))


def _setups() -> list[tuple[str, tuple[str, ...]]]:
    """(trainer, the overrides of a config it accepts): every head each reranker trainer trains, on a file and on a
    BEIR dataset (the cross-encoder also with the loss that reads the negatives of a file); each retriever trainer
    with its defaults and, where it trains the document encoder, with fixed documents."""
    out = []
    for trainer in RERANKER_TRAINERS:
        for head in method_names(trains_with=trainer):
            batch = ["batch_size=10"] if (trainer, head) == ("grpo", "erank") else []
            for source in ("data.path=rows.jsonl", "data.beir=scifact"):
                out.append((trainer, ("model=m", f"head={head}", source, *batch)))
    out.append(("sft", ("model=m", "head=cross-encoder", "data.path=rows.jsonl", "loss=mnrl")))
    for trainer in RETRIEVER_TRAINERS:
        out.append((trainer, ("model=m", "dataset=d")))
        if trainer != "adore":
            out.append((trainer, ("model=m", "dataset=d", "train_doc_encoder=false")))
    return out


def _value(key: str) -> Any:
    return VALUES[key.rsplit(".", 1)[-1]]


def _own_keys(trainer: str) -> set[str]:
    """The keys ``trainer`` takes (``data.K`` for those of its block data)."""
    from rerank.trainers.data import DataConfig

    names = {f.name for f in dataclasses.fields(get_trainer(trainer).config_class)}
    return names | ({f"data.{f.name}" for f in dataclasses.fields(DataConfig)} if "data" in names else set())


def _build(trainer: str, overrides: list[str]) -> Any:
    return load_train_config(get_trainer(trainer).config_class, None, overrides)


def _suggested(message: str) -> list[str]:
    """The keys an error suggests: each "did you mean 'X'", and the current name of a former key when the message
    does not go on to say this configuration refuses it."""
    keys = re.findall(r"did you mean '([^']+)'\?", message)
    now = re.search(r"key '\w+' is now '(\w+)'[^,]*\(one vocabulary for every trainer\)(.*)$", message)
    if now and "refuses" not in now.group(2):
        keys.append(now.group(1))
    return keys


def _feed_back(base: tuple[str, ...], suggested: str, value: Any) -> list[str]:
    """``base`` with ``suggested`` set to ``value``; a data source replaces the block data (as the docs say)."""
    if suggested in ("data.beir", "data.path"):
        base = tuple(o for o in base if not o.startswith(("data.path=", "data.beir=")))
    return [*base, f"{suggested}={json.dumps(value) if isinstance(value, str) else value}"]


@pytest.mark.parametrize(("trainer", "base"), _setups(), ids=lambda x: x if isinstance(x, str) else " ".join(x[1:]))
def test_every_hint_names_a_key_this_configuration_accepts(trainer: str, base: tuple[str, ...]) -> None:
    _build(trainer, list(base))  # the setup itself is accepted
    hints = 0
    own = _own_keys(trainer)
    for key in _hinted_keys():
        if key in own:  # a key of this trainer's own (max_length in sft, data.beir, seed, ...)
            continue
        with pytest.raises(ConfigError) as e:
            _build(trainer, [*base, f"{key}={_value(key)}"])
        message = str(e.value)
        assert message.startswith(f"--set {key}="), message
        block = "data." if "for DataConfig" in message else ""
        for suggested in _suggested(message):
            full = block + suggested
            try:
                _build(trainer, [*_feed_back(base, full, _value(key)), *BESIDE.get(key, [])])
            except ConfigError as e:
                pytest.fail(f"{trainer} {' '.join(base)}: --set {key} suggests {full!r}, which is refused: {e}")
            hints += 1
    assert hints >= 3, f"{trainer} {base}: only {hints} hints checked"


@pytest.mark.parametrize(("trainer", "base", "key", "use"), [
    # finding 3: the cross-encoder reads max_length, not max_doc_tokens
    ("sft", ("head=cross-encoder", "data.path=rows.jsonl"), "doc_max_length=128", "max_length"),
    ("grpo", ("head=yes-no", "data.path=rows.jsonl"), "doc_max_length=128", None),  # an LLM head reads it: no other
    # the retriever trainers' names in sft / grpo
    ("sft", ("head=cross-encoder", "data.beir=scifact"), "hard_negatives=2", "data.negatives_per_positive"),
    ("sft", ("head=cross-encoder", "data.beir=scifact"), "negatives_depth=40", "data.bm25_depth"),
    ("sft", ("head=cross-encoder", "data.path=rows.jsonl", "loss=mnrl"), "hard_negatives=2",
     "data.negatives_per_positive"),
    ("grpo", ("head=first", "data.beir=scifact"), "num_candidates=8", "data.max_candidates"),
    ("sft", ("head=erank", "data.beir=scifact"), "data.negatives_depth=40", "bm25_depth"),
    # the reranker trainers' names in the retriever trainers
    ("contrastive", ("dataset=d",), "negatives_per_positive=2", "hard_negatives"),
    ("contrastive", ("dataset=d",), "bm25_depth=40", "negatives_depth"),
    ("contrastive", ("dataset=d",), "max_length=128", "max_doc_tokens"),
    ("pgrank", ("dataset=d",), "negatives_per_positive=2", "num_candidates"),
    ("adore", ("dataset=d",), "bm25_depth=40", "top_k"),
    ("star", ("dataset=d",), "max_candidates=8", None),
])
def test_the_other_familys_names_get_a_hint_both_ways(trainer: str, base: tuple[str, ...], key: str,
                                                      use: str | None) -> None:
    with pytest.raises(ConfigError) as e:
        _build(trainer, ["model=m", *base, key])
    message = str(e.value)
    assert "\n" not in message
    if use is None:
        assert "did you mean" not in message
    else:
        assert f"did you mean '{use}'?" in message, message
        assert "known keys" not in message


def test_a_hint_the_configuration_would_refuse_says_why_instead() -> None:
    """With data.path the cross-encoder (loss bce) reads no data.negatives_per_positive and no data.bm25_depth, and
    ADORE no max_doc_tokens: no key is suggested; the error says why, in one line."""
    cases = [
        ("sft", ("head=cross-encoder", "data.path=rows.jsonl"), "hard_negatives=2",
         r"its counterpart here, data\.negatives_per_positive, is refused by this configuration: .*loss 'bce'"),
        ("sft", ("head=cross-encoder", "data.path=rows.jsonl"), "negatives_depth=40",
         r"its counterpart here, data\.bm25_depth, is refused by this configuration: data\.bm25_depth is an option "
         r"of data\.beir"),
        ("adore", ("dataset=d",), "max_length=128", r"max_doc_tokens 128 is unused in ADORE"),
        ("adore", ("dataset=d",), "doc_max_length=128",
         r"^--set doc_max_length=128: key 'doc_max_length' is now 'max_doc_tokens' \(one vocabulary for every "
         r"trainer\), which this configuration refuses: max_doc_tokens 128 is unused in ADORE"),
        ("contrastive", ("dataset=d",), "path=rows.jsonl", r"the retriever trainers read only BEIR folders"),
        ("star", ("dataset=d",), "data.path=rows.jsonl", r"the retriever trainers read only BEIR folders"),
    ]
    for trainer, base, key, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as e:
            _build(trainer, ["model=m", *base, key])
        assert "did you mean" not in str(e.value) and "\n" not in str(e.value)


def test_the_cross_encoder_doc_max_length_hint_is_accepted_and_trains_its_limit() -> None:
    with pytest.raises(ConfigError, match=r"^--set doc_max_length=100: key 'doc_max_length' is now 'max_doc_tokens' "
                                          r"\(one vocabulary for every trainer\), which this configuration refuses "
                                          r"\(max_doc_tokens is not an option of head 'cross-encoder'.*\): did you "
                                          r"mean 'max_length'\?"):
        _build("sft", ["model=m", "head=cross-encoder", "data.path=rows.jsonl", "doc_max_length=100"])
    assert _build("sft", ["model=m", "head=cross-encoder", "data.path=rows.jsonl", "max_length=100"]).max_length == 100


def test_a_hint_search_shows_no_log_of_its_trial_builds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The configs built to test a suggestion log nothing (a starting model of another head would warn each time)."""
    model = tmp_path / "m"
    model.mkdir()
    (model / "rerank.json").write_text(json.dumps({"method": "listwise", "kind": "reranker", "options": {}}))
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError, match="did you mean 'data.bm25_depth'"):
        _build("sft", [f"model={model}", "head=cross-encoder", "data.beir=scifact", "negatives_depth=40"])
    assert caplog.text == ""
    assert logging.root.manager.disable == logging.NOTSET


# ---------------------------------------------------------------------------------------------------- 4. row shapes
OURS = [
    {"qid": "line-1", "query": "what is bm25?",
     "candidates": [{"id": "pos-0", "text": "BM25 ranks"}, {"id": "neg-0", "text": "Paris"},
                    {"id": "neg-1", "text": "Rome"}],
     "labels": [1, 0, 0], "teacher_scores": [9.0, 2.0, 1.5]},
    {"qid": "line-2", "query": "capital of france",
     "candidates": [{"id": "pos-0", "text": "Paris is"}, {"id": "pos-1", "text": "France's capital"},
                    {"id": "neg-0", "text": "BM25"}],
     "labels": [1, 1, 0], "teacher_scores": [8.0, 7.0, 0.0]},
]
FLAG = [
    {"query": "what is bm25?", "pos": ["BM25 ranks"], "neg": ["Paris", "Rome"], "pos_scores": [9],
     "neg_scores": [2, 1.5]},
    {"query": "capital of france", "pos": ["Paris is", "France's capital"], "neg": ["BM25"], "pos_scores": [8, 7],
     "neg_scores": [0]},
]
TEVATRON = [
    {"query_id": "q1", "query": "what is bm25?",
     "positive_passages": [{"docid": "d1", "title": "BM25", "text": "ranks"}],
     "negative_passages": [{"docid": "d2", "title": "", "text": "Paris"}, {"docid": 3, "text": "Rome"}],
     "answers": ["a ranking function"]},
    {"query_id": 2, "query": "capital of france", "positive_passages": [{"docid": "d2", "text": "Paris"}],
     "negative_passages": []},
]


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_flagembedding_rows_read_as_ours_with_their_scores_as_teacher_scores(tmp_path: Path) -> None:
    assert load_examples(_write(tmp_path / "flag.jsonl", FLAG)) == load_examples(_write(tmp_path / "ours.jsonl", OURS))


def test_tevatron_rows_read_with_their_ids_and_titles(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        rows = load_examples(_write(tmp_path / "tev.jsonl", TEVATRON))
    assert [r["qid"] for r in rows] == ["q1", "2"]
    assert rows[0]["candidates"] == [{"id": "d1", "text": "ranks", "title": "BM25"},
                                     {"id": "d2", "text": "Paris", "title": ""},
                                     {"id": "3", "text": "Rome", "title": ""}]
    assert [r["labels"] for r in rows] == [[1, 0, 0], [1]]
    assert caplog.text.count("which no trainer reads") == 1 and "'answers'" in caplog.text


def test_an_hf_dataset_of_flagembedding_rows_reads_too(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(FLAG).save_to_disk(str(tmp_path / "hf"))
    rows = load_examples(tmp_path / "hf")
    assert [r["qid"] for r in rows] == ["row-1", "row-2"]
    assert [r["teacher_scores"] for r in rows] == [r["teacher_scores"] for r in OURS]


@pytest.mark.parametrize(("rows", "line", "pattern"), [
    ([OURS[0], {"query": "q", "positives": ["a"], "negatives": ["b"]}], 2,
     r"not a training row of a shape rerank reads \(its fields: negatives, positives, query\); it reads rerank's "
     r"\{qid, query, candidates, labels\}, FlagEmbedding's \{query, pos, neg\} and Tevatron's \{query_id, query, "
     r"positive_passages, negative_passages\}: see docs/train-your-own\.md#other-row-shapes-and-tsv$"),
    ([{"_id": "d1", "title": "", "text": "a corpus line"}], 1, r"not a training row of a shape rerank reads"),
    ([{"query": "q", "pos": ["a"], "neg": ["b"], "pos_scores": [1.0]}], 1,
     r"FlagEmbedding row: neg_scores is missing: give both pos_scores and neg_scores"),
    ([{"query": "q", "pos": ["a"], "neg": ["b", "c"], "pos_scores": [1], "neg_scores": [1]}], 1,
     r"FlagEmbedding row: neg_scores must be finite numbers aligned with 'neg' \(2\)"),
    ([{"query": "q", "pos": "a", "neg": []}], 1, r"FlagEmbedding row: 'pos' must be a list of passage texts"),
    ([{"query": "q", "pos": ["a"], "neg": ["b"], "instruction": "x"}], 1,
     r"unknown field 'instruction' of a FlagEmbedding row; its fields: query, pos, neg, pos_scores, neg_scores"),
    ([{"query": "", "pos": ["a"], "neg": ["b"]}], 1, r"'query' must be a non-empty string \(in this FlagEmbedding row"),
    ([{"query": "q", "positive_passages": [{"docid": "a", "text": "x", "score": 2}]}], 1,
     r"Tevatron row: positive_passages\[0\]: unknown field 'score'; known fields: docid, title, text"),
    ([{"query": "q", "positive_passages": [{"docid": "a", "text": "x"}],
       "negative_passages": [{"docid": "a", "text": "y"}]}], 1, r"duplicate candidate id 'a'.*Tevatron row"),
])
def test_a_row_of_no_shape_read_or_a_bad_converted_row_is_one_line_at_its_line(tmp_path: Path, rows: list[Any],
                                                                              line: int, pattern: str) -> None:
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}:{line}: {pattern}") as e:
        load_examples(path)
    assert "\n" not in str(e.value)


def _pairs_tsv(path: Path) -> Path:
    path.write_text("query\tpassage\tlabel\nwhat is bm25?\tBM25 ranks\t1\nwhat is bm25?\tParis\t0\n"
                    "capital of france\tParis is\t2\n", encoding="utf-8")
    return path


def test_a_tsv_of_pairs_is_refused_naming_the_file_and_the_snippet(tmp_path: Path) -> None:
    path = _pairs_tsv(tmp_path / "pairs.tsv")
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}:1: tab-separated text, and TSV is not a "
                                              r"training format: convert .* docs/train-your-own\.md#other-row-shapes"):
        load_examples(path)


def test_the_docs_snippet_turns_the_tsv_into_rows_that_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO / "docs" / "train-your-own.md").read_text(encoding="utf-8")
    section = text.split("### Other row shapes and TSV", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    _pairs_tsv(tmp_path / "pairs.tsv")
    exec(compile(snippet, "train-your-own.md", "exec"), {})  # noqa: S102 - the docs' own snippet
    rows = load_examples(tmp_path / "train.jsonl")
    assert [(r["query"], [c["text"] for c in r["candidates"]], r["labels"]) for r in rows] == [
        ("what is bm25?", ["BM25 ranks", "Paris"], [1, 0]), ("capital of france", ["Paris is"], [2])]


def test_a_file_of_rows_as_a_retriever_dataset_says_they_read_only_beir_folders(tmp_path: Path) -> None:
    from rerank.config import from_dict
    from rerank.trainers.retriever import load_train_data

    path = _write(tmp_path / "flag.jsonl", FLAG)
    cfg = from_dict(get_trainer("contrastive").config_class, {"model": "m", "dataset": str(path)})
    with pytest.raises(ConfigError, match=r"is a file of training rows \(FlagEmbedding's shape\), which the retriever "
                                          r"trainers do not read: they read only BEIR folders .*rerank train sft"):
        load_train_data(cfg, None)
    tsv = _pairs_tsv(tmp_path / "pairs.tsv")
    cfg = from_dict(get_trainer("star").config_class, {"model": "m", "dataset": str(tsv)})
    with pytest.raises(ConfigError, match=r"^the retriever trainers read only BEIR folders: dataset .*pairs\.tsv is a "
                                          r"file, not a BEIR folder: give the folder holding corpus\.jsonl"):
        load_train_data(cfg, None)


def test_sft_trains_a_cross_encoder_on_flagembedding_rows(tmp_path: Path, tiny_bert_dir: Path,
                                                          run_cli: Any) -> None:
    rows = _write(tmp_path / "flag.jsonl", [{k: v for k, v in r.items() if not k.endswith("_scores")} for r in FLAG])
    rc, out, err = run_cli("train", "sft", "--set", f"model={tiny_bert_dir}", "--set", "head=cross-encoder",
                           "--set", f"data={{path: {rows}}}", "--set", "max_steps=1", "--set", "save_steps=1",
                           "--set", "batch_size=2", "--set", "use_cpu=true", "--output", tmp_path / "out")
    assert rc == 0, err
    assert (tmp_path / "out" / "model" / "rerank.json").is_file()
