"""Invariance audit 7: a grouprank query ranks the same wherever it sits (alone, in a batch, from the CLI); colbert
runs in bfloat16 and float16; a left-padded dense encoder embeds a text the same alone or beside a long one."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rerank import Reranker
from rerank.backends.scripted import ScriptedBackend
from rerank.methods.grouprank.head import GroupRankConfig, GroupRankReranker
from rerank.retrieval.dense import BiEncoder
from rerank.testing import build_tokenizer, corpus_lines, tiny_colbert, tiny_llm
from rerank.types import Query

LINES = corpus_lines()
QUERY = "how does a search engine rank documents"
DOCS = [{"id": f"d{i}", "text": LINES[j]} for i, j in enumerate((1, 3, 4, 7, 10, 15))]


def _position_scorer(prompt: str) -> str:
    """A group-of-3 answer that depends only on where each passage sits in its group."""
    return '<reason>x</reason><answer>{"[1]": 9, "[2]": 6, "[3]": 3}</answer>'


def _scores(result: Any) -> dict[str, float]:
    return {r.doc.id: float(r.score) for r in result.results}


def test_grouprank_groups_do_not_depend_on_the_query_id() -> None:
    head = GroupRankReranker(GroupRankConfig(group_size=3, repeats=2), backend=ScriptedBackend(build_tokenizer()))
    assert head.groups(Query("0", QUERY), 6) == head.groups(Query("1", QUERY), 6) == head.groups(Query("q1", QUERY), 6)
    other = GroupRankReranker(GroupRankConfig(group_size=3, repeats=2, seed=1), backend=head.backend)
    assert other.groups(Query("0", QUERY), 6) != head.groups(Query("0", QUERY), 6)  # the seed still counts


def test_grouprank_same_ranking_alone_and_anywhere_in_a_batch() -> None:
    backend = ScriptedBackend(build_tokenizer(), generate_fn=_position_scorer)
    head = GroupRankReranker(GroupRankConfig(group_size=3, repeats=1, fusion_weight=1.0), backend=backend)
    alone = _scores(head.rerank(QUERY, DOCS))
    assert len(set(alone.values())) > 1  # the scores depend on the grouping
    for i in range(3):
        queries = ["zebra", "dogs", "cats"][:i] + [QUERY]
        batch = head.rerank_batch(queries, [DOCS[:3]] * i + [DOCS])
        assert _scores(batch[i]) == alone


def test_grouprank_groups_are_the_same_in_another_process() -> None:
    code = ("from rerank.backends.scripted import ScriptedBackend\n"
            "from rerank.testing import build_tokenizer\n"
            "from rerank.methods.grouprank.head import GroupRankConfig, GroupRankReranker\n"
            "from rerank.types import Query\n"
            "cfg = GroupRankConfig(group_size=4, repeats=2)\n"
            "h = GroupRankReranker(cfg, backend=ScriptedBackend(build_tokenizer()))\n"
            f"print(h.groups(Query('7', {QUERY!r}), 10))")
    outs = set()
    for hashseed in ("1", "2"):  # str hashes differ between these processes; the groups must not
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())
    head = GroupRankReranker(GroupRankConfig(group_size=4, repeats=2), backend=ScriptedBackend(build_tokenizer()))
    assert outs == {str(head.groups(Query("7", QUERY), 10))}


def test_grouprank_cli_equals_python_api(sharp_llm_dir: Path, tmp_path: Path, run_cli: Any) -> None:
    opts = {"group_size": 3, "constrained": True, "max_new_tokens": 48, "repeats": 1}
    queries, lists = ["zebra stripes", QUERY], [DOCS[:3], DOCS]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"query": q, "docs": d}) + "\n" for q, d in zip(queries, lists)))
    args = ["rank", "--reranker", "grouprank", "--model", sharp_llm_dir, "--input", inp,
            "--output", tmp_path / "o.jsonl"]
    for k, v in opts.items():
        args += ["--reranker-set", f"{k}={json.dumps(v)}"]
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    cli = [{r["id"]: r["score"] for r in json.loads(line)["ranking"]}
           for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    head = Reranker.load("grouprank", model=str(sharp_llm_dir), **opts)
    assert [_scores(r) for r in head.rerank_batch(queries, lists)] == cli
    assert _scores(head.rerank(QUERY, DOCS)) == cli[1]


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_colbert(tmp_path_factory.mktemp("colbert") / "model")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_colbert_half_precision_runs(colbert_dir: Path, dtype: str, tmp_path: Path, run_cli: Any) -> None:
    docs = ["striped animals of africa", "loyal dogs running", "a zebra and a dog"]
    full = _scores(Reranker.load("colbert", model=str(colbert_dir), dtype="float32").rerank("zebra stripes", docs))
    head = Reranker.load("colbert", model=str(colbert_dir), dtype=dtype)
    assert all(layer.weight.dtype == getattr(torch, dtype) for layer in head.encoder.dense)
    half = _scores(head.rerank("zebra stripes", docs))
    assert half.keys() == full.keys()
    assert max(abs(half[k] - full[k]) / abs(full[k]) for k in full) < 0.05
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"query": "zebra stripes", "docs": docs}) + "\n")
    rc, _, err = run_cli("rank", "--reranker", "colbert", "--model", colbert_dir, "--reranker-set", f"dtype={dtype}",
                         "--input", inp, "--output", tmp_path / "o.jsonl")
    assert rc == 0, err
    assert len(json.loads((tmp_path / "o.jsonl").read_text())["ranking"]) == 3


def _decoder(folder: Path, padding_side: str) -> Path:
    """The sharp tiny Qwen2 (weights x10, where position offsets show above float32 noise), padded on one side."""
    from transformers import AutoTokenizer

    tiny_llm(folder, arch="qwen2", seed=0, weight_scale=10.0)
    AutoTokenizer.from_pretrained(folder, padding_side=padding_side).save_pretrained(folder)
    return folder


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_dense_left_padding_embeds_a_text_the_same_beside_a_long_one(tmp_path: Path) -> None:
    enc = BiEncoder.load(str(_decoder(tmp_path / "left", "left")), pooling="last", device="cpu")
    assert enc.doc_tokenizer.padding_side == "left"
    short, long = LINES[1], " ".join(LINES[20:60])
    alone = enc.encode_numpy([short], "doc")[0]
    batched = enc.encode_numpy([short, long], "doc", batch_size=8)
    assert _rel(batched[0], alone) < 5e-6
    np.testing.assert_array_equal(batched[1], enc.encode_numpy([long], "doc")[0])
    enc.train()  # the training forward (tokenize pads left too) gets the same positions
    with torch.no_grad():
        trained = enc.embed([short, long], "doc")[0].numpy()
    assert _rel(trained, alone) < 5e-6


def _forward_kwargs(enc: BiEncoder, texts: list[str]) -> dict[str, Any]:
    """The keyword arguments of the encoder's one model call for ``texts``."""
    model, seen = enc.doc_model, {}
    orig = model.forward

    @functools.wraps(orig)  # keeps the signature the encoder inspects
    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return orig(*args, **kwargs)

    model.forward = spy  # type: ignore[method-assign]
    try:
        enc.encode_numpy(texts, "doc", batch_size=8)
    finally:
        del model.forward
    return seen


def test_dense_right_padding_runs_as_before(tmp_path: Path, tiny_st_dir: Path) -> None:
    texts = [LINES[1], " ".join(LINES[20:60])]
    for enc in (BiEncoder.load(str(tiny_st_dir), device="cpu"),
                BiEncoder.load(str(_decoder(tmp_path / "right", "right")), pooling="last", device="cpu")):
        assert enc.doc_tokenizer.padding_side == "right"
        assert "position_ids" not in _forward_kwargs(enc, texts)
    left = BiEncoder.load(str(_decoder(tmp_path / "left", "left")), pooling="last", device="cpu")
    positions = _forward_kwargs(left, texts)["position_ids"]
    n = int(left.doc_tokenizer([LINES[1]], return_length=True)["length"][0])
    assert positions[1, -n:].tolist() == list(range(n)) and positions[1, : -n].eq(0).all()
