"""Audit s40 / dense indexes: the index's dtype reaches the query encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rerank.data.datasets import resolve_dataset
from rerank.errors import RerankError
from rerank.retrieval.dense import BiEncoder, DenseConfig, DenseRetriever

# ---------------------------------------------------------------------------------- 1. the index's dtype


@pytest.fixture(scope="module")
def bf16_index(tmp_path_factory: pytest.TempPathFactory, tiny_st_dir: Path, tiny_beir_dir: Path) -> Path:
    """A flat index of the tiny BEIR corpus encoded by the tiny sentence-transformers model in bfloat16."""
    from rerank.cli import main

    idx = tmp_path_factory.mktemp("bf16") / "idx"
    assert main(["index", "--model", str(tiny_st_dir), "--dataset", str(tiny_beir_dir), "--output", str(idx),
                 "--dtype", "bfloat16", "--no-progress"]) == 0
    assert json.loads((idx / "manifest.json").read_text())["encoder"]["dtype"] == "bfloat16"
    return idx


@pytest.mark.parametrize("named", [False, True], ids=["index-alone", "model-and-index"])
def test_queries_are_encoded_in_the_dtype_the_index_records(bf16_index: Path, tiny_st_dir: Path,
                                                            tiny_beir_dir: Path, named: bool) -> None:
    """The index's dtype never reached the encoder: it loaded in float32, whose fingerprint (float32 weights, not
    their bfloat16 rounding) refused the index as "another model"."""
    ds = resolve_dataset(str(tiny_beir_dir))
    cfg = DenseConfig(index=str(bf16_index), model=str(tiny_st_dir) if named else None, progress=False)
    retriever = DenseRetriever.from_config(ds, cfg)
    assert str(retriever.encoder.dtype) == "torch.bfloat16"
    text = next(iter(ds.queries.values())).text
    want = BiEncoder.load(tiny_st_dir, device="cpu", dtype="bfloat16").encode_numpy([text], "query")
    np.testing.assert_array_equal(retriever.encoder.encode_numpy([text], "query"), want)
    assert retriever.retrieve({"q": text}, 3)["q"]


def test_a_dtype_given_other_than_the_index_records_is_refused(bf16_index: Path, tiny_beir_dir: Path) -> None:
    ds = resolve_dataset(str(tiny_beir_dir))
    with pytest.raises(RerankError, match=r"built with dtype='bfloat16', but dtype='float32' was given; drop the "
                                          r"option, or rebuild the index with it: `rerank index .*--dtype float32`"):
        DenseRetriever.from_config(ds, DenseConfig(index=str(bf16_index), dtype="float32", progress=False))
