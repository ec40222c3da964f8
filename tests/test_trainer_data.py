"""Training schema, configs and task pieces: validation names file/line/key before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank.errors import ConfigError, DataFormatError
from rerank.trainers.base import load_train_config
from rerank.trainers.data import DataConfig, load_examples, load_training_data, split_dev, teacher_order


def _ex(qid: str = "q1", **kw: object) -> dict:
    ex = {"qid": qid, "query": "alpha", "candidates": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}],
          "labels": [1, 0]}
    ex.update(kw)
    return ex


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_valid_and_teacher_order(tmp_path: Path) -> None:
    p = _write(tmp_path / "t.jsonl", [_ex(), _ex("q2", teacher_ranking=["b", "a"]),
                                      _ex("q3", teacher_scores=[0.5, 3.0], reasoning="because")])
    rows = load_examples(p)
    assert [r["qid"] for r in rows] == ["q1", "q2", "q3"]
    assert teacher_order(rows[0]) == [0, 1]
    assert teacher_order(rows[1]) == [1, 0]
    assert teacher_order(rows[2]) == [1, 0]
    assert rows[0]["candidates"][0]["title"] == ""


@pytest.mark.parametrize(
    ("row", "line", "message"),
    [
        ({"qid": "q", "query": "x", "candidates": [{"id": "a", "text": "t"}]}, 2, "missing required field 'labels'"),
        (_ex(labels=[1]), 2, "aligned with candidates"),
        (_ex(labels=[1, -1]), 2, "non-negative integers"),
        (_ex(teacher_ranking=["a", "zz"]), 2, "teacher_ranking"),
        (_ex(teacher_scores=[1.0]), 2, "teacher_scores"),
        (_ex(extra=1), 2, "unknown field 'extra'"),
        (_ex(candidates=[{"id": "a", "text": "t"}, {"id": "a", "text": "u"}]), 2, "duplicate candidate id 'a'"),
        (_ex(candidates=[{"id": "a"}, {"id": "b", "text": "u"}]), 2, "candidates[0]"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, row: dict, line: int, message: str) -> None:
    p = _write(tmp_path / "bad.jsonl", [_ex("q0"), row])
    with pytest.raises(DataFormatError) as e:
        load_examples(p)
    assert f"bad.jsonl:{line}" in str(e.value) and message in str(e.value)


def test_hf_dataset_rows_and_duplicate_qids(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list([_ex("q1"), _ex("q2", labels=[1, 2.5])]).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DataFormatError, match=r"hf row:2: 'labels'"):
        load_examples(tmp_path / "hf")
    p = _write(tmp_path / "dup.jsonl", [_ex("q1"), _ex("q1")])
    with pytest.raises(DataFormatError, match="dup.jsonl:2: duplicate qid 'q1'"):
        load_examples(p)


def test_dev_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    rows = [_ex(f"q{i}") for i in range(20)]
    a_train, a_dev = split_dev(rows, 0.2, seed=3)
    _, b_dev = split_dev(rows, 0.2, seed=3)
    _, c_dev = split_dev(rows, 0.2, seed=4)
    assert [r["qid"] for r in a_dev] == [r["qid"] for r in b_dev] and len(a_dev) == 4
    assert {r["qid"] for r in a_dev} != {r["qid"] for r in c_dev}
    assert not {r["qid"] for r in a_dev} & {r["qid"] for r in a_train}
    assert len(split_dev(rows, 0.5, seed=0, dev_max=3)[1]) == 3


def test_build_from_beir_with_bm25_negatives(tiny_beir_dir: Path) -> None:
    train, dev = load_training_data(DataConfig(beir=str(tiny_beir_dir), split="train", negatives_per_positive=2,
                                               dev_fraction=0.0))
    assert train and not dev
    for ex in train:
        pos = sum(g > 0 for g in ex["labels"])
        assert 1 <= pos and len(ex["labels"]) - pos <= 2 * pos
        assert len({c["id"] for c in ex["candidates"]}) == len(ex["candidates"])


def test_bm25_negatives_top_or_random_from_the_window(tiny_beir_dir: Path) -> None:
    """'top' takes the highest-ranked non-positives; 'random' draws (seeded) from the whole BM25 window."""
    from rerank.data.datasets import resolve_dataset
    from rerank.retrieval.base import build_retriever

    def negatives(mode: str, seed: int = 0) -> dict[str, set[str]]:
        cfg = DataConfig(beir=str(tiny_beir_dir), split="train", negatives_per_positive=1, bm25_depth=20,
                         negatives=mode, dev_fraction=0.0, seed=seed)
        return {ex["qid"]: {c["id"] for c, g in zip(ex["candidates"], ex["labels"], strict=True) if g <= 0}
                for ex in load_training_data(cfg)[0]}

    ds = resolve_dataset(str(tiny_beir_dir))
    qrels, queries = ds.qrels("train"), ds.split_queries("train")
    run = build_retriever("bm25", ds).retrieve({q: queries[q] for q in queries}, 20)
    top, rand = negatives("top"), negatives("random")
    assert rand == negatives("random") and rand != negatives("random", seed=1)
    for qid, negs in top.items():
        n_pos = sum(g > 0 for g in qrels[qid].values())
        window = [d for d, _ in run[qid] if qrels[qid].get(d, 0) <= 0]
        assert negs == set(window[: len(negs)]) and len(negs) == min(len(window), n_pos)
        assert rand[qid] <= set(window) and len(rand[qid]) == len(negs)
    assert any(rand[q] != top[q] for q in top)
    with pytest.raises(ConfigError, match="data.negatives must be"):
        DataConfig(beir="x", negatives="hardest")  # type: ignore[arg-type]


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from rerank.trainers.grpo_trainer import GRPOTrainConfig
    from rerank.trainers.sft_trainer import SFTTrainConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\nhead: erank\ndata: {path: x.jsonl}\nlearning_rte: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rte'"):
        load_train_config(SFTTrainConfig, cfg)
    with pytest.raises(ConfigError, match="unknown key 'paht'"):
        load_train_config(SFTTrainConfig, None, ["model=m", "head=erank", "data.paht=x"])
    with pytest.raises(ConfigError, match="training data is required"):
        load_train_config(SFTTrainConfig, None, ["model=m", "head=erank"])
    with pytest.raises(ConfigError, match=r"loss for erank must be one of \['lm'\]"):
        load_train_config(SFTTrainConfig, None, ["model=m", "head=erank", "data.path=x", "loss=lm+ranknet"])
    with pytest.raises(ConfigError, match="needs data.negatives_per_positive >= 1"):
        load_train_config(SFTTrainConfig, None, ["model=m", "head=cross-encoder", "loss=mnrl",
                                                 "data.beir=scifact", "data.negatives_per_positive=0"])
    with pytest.raises(ConfigError, match=r"unknown reranker 'nope'; known: cross-encoder, yes-no, erank"):
        load_train_config(SFTTrainConfig, None, ["model=m", "data.path=x", "head=nope"])
    with pytest.raises(ConfigError, match=r"grpo trains the generative LLM heads .*'cross-encoder' trains with 'sft'"):
        load_train_config(GRPOTrainConfig, None, ["model=m", "data.path=x", "head=cross-encoder"])
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        load_train_config(GRPOTrainConfig, None, ["model=m", "head=erank", "data.path=x", "batch_size=7"])
    g = load_train_config(GRPOTrainConfig, None, ["model=m", "head=erank", "data.path=x", "batch_size=10"])
    assert (g.num_generations, g.learning_rate, g.beta, g.epsilon) == (5, 1e-6, 0.001, 0.2)
    g = load_train_config(GRPOTrainConfig, None, ["model=m", "head=grouprank", "data.path=x", "batch_size=8"])
    assert (g.num_generations, g.learning_rate) == (8, 1e-5)
    f = load_train_config(SFTTrainConfig, None, ["model=m", "head=first", "data.path=x"])
    assert f.loss == "lm+ranknet"


def test_bad_data_fails_before_model_loads(tmp_path: Path) -> None:
    from rerank.cli import main

    p = _write(tmp_path / "bad.jsonl", [_ex("q0"), {"qid": "q1", "query": "x"}])
    with pytest.raises(DataFormatError, match="bad.jsonl:2: missing required field 'candidates'"):
        from rerank.trainers import sft

        sft({"model": str(tmp_path / "no-such-model"), "head": "erank", "data": {"path": str(p)}}, tmp_path / "o")
    assert main(["train", "sft", "--output", str(tmp_path / "o2"), "--set", "model=/nonexistent",
                 "--set", f"data.path={p}"]) == 2


@pytest.mark.parametrize("name", ["tiny-erank-sft", "tiny-erank-grpo", "tiny-first-sft", "tiny-first-grpo",
                                  "tiny-grouprank-sft", "tiny-grouprank-grpo", "scifact-cross-encoder"])
def test_example_configs_load(repo_root: Path, name: str) -> None:
    from rerank.trainers.grpo_trainer import GRPOTrainConfig
    from rerank.trainers.sft_trainer import SFTTrainConfig

    cls = GRPOTrainConfig if name.endswith("grpo") else SFTTrainConfig
    cfg = load_train_config(cls, repo_root / "configs" / "examples" / f"{name}.yaml", ["model=some/model"])
    assert cfg.data.beir and cfg.model == "some/model"
