"""Converted training rows (FlagEmbedding, Tevatron), review F findings 1, 4, 5 and 6.

1. ``window_order: first_stage`` on data with no first-stage order (converted rows list their positives first and
   carry no score; rows of ours without scores that all list their positives first) is one line naming the data and
   the option, for SFT and GRPO, before the model loads; scored rows and rows in another order still train.
4. A FlagEmbedding text in both ``pos`` and ``neg`` is a ``file:line`` error, as a Tevatron docid in both lists is.
5. For ERank / GroupRank (0-10 grades) FlagEmbedding's ``pos_scores`` / ``neg_scores`` must be integer grades: raw
   logits are refused naming the field written (``neg_scores[0]``); the cross-encoder reads any scale.
6. A Tevatron passage without ``text`` names Tevatron's fields; a row with ``pos`` / ``neg`` and a ``qid`` is a
   FlagEmbedding row with that id; a row mixing two shapes names both; a comma-separated file is "not a training
   format" as a TSV is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rerank.errors import ConfigError, DataFormatError
from rerank.trainers.data import load_examples, teacher_scale

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _flag(n: int) -> list[dict[str, Any]]:
    return [{"query": f"query {i}", "pos": [f"relevant {i}"], "neg": [f"other {i}.{j}" for j in range(5)]}
            for i in range(n)]


def _one_line_error(path: Path, line: int, pattern: str, scale: Any = None) -> str:
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}:{line}: {pattern}") as e:
        load_examples(path, scale)
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------------------- 1. window_order: first_stage
def _task(tiny_llm_dir: Path, head: str, data: Path, order: str, trainer: str = "sft") -> Any:
    from transformers import AutoTokenizer

    from rerank.config import from_dict
    from rerank.trainers.base import get_trainer
    from rerank.trainers.task import build_task

    cfg = from_dict(get_trainer(trainer).config_class,
                    {"model": str(tiny_llm_dir), "head": head, "data": {"path": str(data)}, "window": 3,
                     "window_order": order})
    return build_task(head, AutoTokenizer.from_pretrained(str(tiny_llm_dir)), cfg)


@pytest.mark.parametrize("head", ["listwise", "grouprank"])
def test_first_stage_on_converted_rows_is_refused_naming_the_data_and_the_option(tiny_llm_dir: Path, tmp_path: Path,
                                                                                 head: str) -> None:
    from rerank.trainers.sft_trainer import data_source, sft_dataset

    data = _write(tmp_path / "flag.jsonl", _flag(3))
    task = _task(tiny_llm_dir, head, data, "first_stage")
    where = data_source(task.cfg.data)
    with pytest.raises(ConfigError, match=rf"^window_order first_stage keeps .* each of the 3 queries of "
                                          rf"{re.escape(where)} .* lists its positives first .*FlagEmbedding and "
                                          r"Tevatron rows .* use window_order: shuffled \(the default\)") as e:
        sft_dataset(task, load_examples(data), where)
    assert str(data) in str(e.value) and "\n" not in str(e.value)
    assert len(sft_dataset(_task(tiny_llm_dir, head, data, "shuffled"), load_examples(data), where)) > 0


def test_first_stage_on_converted_rows_is_refused_for_grpo_too(tiny_llm_dir: Path, tmp_path: Path) -> None:
    from rerank.trainers.grpo_trainer import grpo_rows

    tev = [{"query_id": f"q{i}", "query": f"query {i}", "positive_passages": [{"docid": f"p{i}", "text": "yes"}],
            "negative_passages": [{"docid": f"n{i}.{j}", "text": f"no {j}"} for j in range(3)]} for i in range(2)]
    data = _write(tmp_path / "tev.jsonl", tev)
    with pytest.raises(ConfigError, match=r"window_order first_stage .*e\.g\. qid 'q0'"):
        grpo_rows(_task(tiny_llm_dir, "first", data, "first_stage", "grpo"), load_examples(data), 0, "data.path x")


def test_the_cli_refuses_it_in_one_line_before_the_model_loads(tiny_llm_dir: Path, tmp_path: Path,
                                                               run_cli: Any) -> None:
    data = _write(tmp_path / "flag.jsonl", _flag(2))
    code, _, err = run_cli("train", "sft", "--output", tmp_path / "run", "--set", f"model={tiny_llm_dir}",
                           "--set", "head=listwise", "--set", f"data.path={data}", "--set", "window=3",
                           "--set", "window_order=first_stage", "--set", "max_steps=1")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert f"data.path {data}" in line and "window_order: shuffled" in line
    assert not (tmp_path / "run" / "model").exists()


def test_one_rule_for_our_rows_without_scores(tiny_llm_dir: Path, tmp_path: Path) -> None:
    """Our rows are read by the same rule: unscored rows that all list their positives first are refused; unscored
    rows in another order, or rows with first-stage scores (as rerank data build writes them), keep their order."""
    from rerank.trainers.task import task_rows

    def row(qid: str, labels: list[int], scored: bool = False) -> dict[str, Any]:
        cands = [{"id": f"{qid}-{j}", "text": f"passage {j}", **({"score": 10.0 - j} if scored else {})}
                 for j in range(len(labels))]
        return {"qid": qid, "query": f"query {qid}", "candidates": cands, "labels": labels}

    data = tmp_path / "ours.jsonl"
    task = _task(tiny_llm_dir, "listwise", _write(data, [row("a", [1, 0, 0])]), "first_stage")
    with pytest.raises(ConfigError, match="each of the 2 queries .* lists its positives first .*qid 'a'"):
        task_rows(task, load_examples(_write(data, [row("a", [2, 1, 0, 0]), row("b", [1, 0, 0]),
                                                     row("c", [1, 1])])), "sft", "data.path ours.jsonl")
    for rows in ([row("a", [1, 0, 0]), row("b", [0, 1, 0])],   # one unscored query lists a negative first
                 [row("a", [1, 0, 0], scored=True)]):         # a first-stage order, with its scores
        assert task_rows(task, load_examples(_write(data, rows)), "sft", "data.path ours.jsonl")


# ------------------------------------------------------------------------------- 4. a text in pos and neg
def test_a_flagembedding_text_in_pos_and_neg_is_a_line_error(tmp_path: Path) -> None:
    rows = [_flag(1)[0], {"query": "q", "pos": ["a", "same passage"], "neg": ["b", "same passage"]}]
    _one_line_error(_write(tmp_path / "dup.jsonl", rows), 2,
                    r"FlagEmbedding row: neg\[1\] is the text of pos\[1\]: a passage cannot be both relevant and not")


# ------------------------------------------------------------------------------- 5. pos_scores / neg_scores
SCORED = {"query": "q", "pos": ["p"], "neg": ["n1", "n2"], "pos_scores": [7.0], "neg_scores": [3.1, 0.4]}


@pytest.mark.parametrize("head", ["erank", "grouprank"])
def test_raw_scores_are_refused_for_the_grade_heads_naming_the_field(tmp_path: Path, head: str) -> None:
    path = _write(tmp_path / "s.jsonl", [SCORED])
    _one_line_error(path, 1, rf"FlagEmbedding row: neg_scores\[0\] is 3\.1, not a 0-10 grade: head {head} .*raw "
                             r"logits.*drop pos_scores and neg_scores to train on the labels", teacher_scale(head))
    _one_line_error(_write(path, [{**SCORED, "neg_scores": [-3, 0]}]), 1, r"FlagEmbedding row: neg_scores\[0\] is -3, "
                    r"not a 0-10 grade", teacher_scale(head))
    grades = load_examples(_write(path, [{**SCORED, "neg_scores": [3, 0.0]}]), teacher_scale(head))
    assert grades[0]["teacher_scores"] == [7.0, 3.0, 0.0]


def test_the_cross_encoder_reads_raw_scores(tmp_path: Path) -> None:
    rows = load_examples(_write(tmp_path / "s.jsonl", [{**SCORED, "neg_scores": [-3.1, 0.4]}]),
                         teacher_scale("cross-encoder"))
    assert rows[0]["teacher_scores"] == [7.0, -3.1, 0.4]


def test_the_docs_table_says_how_each_head_reads_the_scores() -> None:
    text = (REPO / "docs" / "train-your-own.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| its `pos_scores`"))
    for said in ("listwise-kl", "margin-mse", "ERank", "GroupRank", "listwise", "FIRST", "refused"):
        assert said in row, said


# ------------------------------------------------------------------------------- 6. messages
def test_a_tevatron_passage_without_text_names_tevatrons_fields(tmp_path: Path) -> None:
    row = {"query_id": "1", "query": "q", "positive_passages": [{"docid": "7", "title": "Only a title"}]}
    _one_line_error(_write(tmp_path / "t.jsonl", [row]), 1, r"Tevatron row: positive_passages\[0\] must be an object "
                    r"with 'docid' and a string 'text' \(a Tevatron passage: \{docid, title, text\}\)$")


def test_a_flagembedding_row_with_a_qid_is_read_as_flagembedding_with_that_id(tmp_path: Path) -> None:
    [row] = load_examples(_write(tmp_path / "f.jsonl", [{"qid": "x", "query": "q", "pos": ["p"], "neg": ["n"]}]))
    assert (row["qid"], row["labels"], [c["id"] for c in row["candidates"]]) == ("x", [1, 0], ["pos-0", "neg-0"])


def test_a_row_mixing_two_shapes_names_both(tmp_path: Path) -> None:
    row = {"qid": "x", "query": "q", "candidates": [{"id": "a", "text": "t"}], "labels": [1], "neg": ["n"]}
    _one_line_error(_write(tmp_path / "m.jsonl", [row]), 1, r"the row mixes the fields of rerank's \(candidates, "
                    r"labels\) and FlagEmbedding's \(neg\): a row has one shape")


@pytest.mark.parametrize(("name", "text"), [("pairs.jsonl", "query,passage,label\nq,p,1\n"),
                                            ("pairs.csv", "what is bm25\n")])
def test_a_comma_separated_file_is_not_a_training_format(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    _one_line_error(path, 1, r"comma-separated text, and CSV is not a training format: convert .* with the snippet "
                             r"in docs/train-your-own\.md#other-row-shapes-and-tsv")
