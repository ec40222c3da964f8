"""Audit s40 / dense indexes: the index's dtype reaches the query encoder, every printed ``rerank index`` command is
complete and runs, and the embedding-cache key names the text handling the encoder applies."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerank.cli import build_parser
from rerank.data.datasets import resolve_dataset
from rerank.errors import RerankError
from rerank.retrieval import dense
from rerank.retrieval.dense import BiEncoder, DenseConfig, DenseRetriever
from rerank.retrieval.index import (
    DenseIndex,
    doc_encoder_settings,
    doc_encoding_key,
    rebuild_command,
    settings_differences,
)

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


# ---------------------------------------------------------------------------------- 2. complete rebuild commands


def _command(message: str) -> list[str]:
    """The back-quoted ``rerank index`` command of a one-line error, split as a shell would."""
    assert "\n" not in message and message.count("`") == 2, message
    words = shlex.split(message.split("`")[1])
    assert words[:2] == ["rerank", "index"]
    return words[1:]


def test_settings_mismatch_names_a_complete_rebuild_command_that_runs(tiny_st_dir: Path, tiny_beir_dir: Path,
                                                                      tmp_path: Path, run_cli: Any) -> None:
    """DenseIndex.load's own settings check printed `rerank index --model M --pooling cls --dtype float32`: no
    --dataset and no --output, so argparse refused it."""
    idx = tmp_path / "idx"
    rc, _, err = run_cli("index", "--model", tiny_st_dir, "--dataset", tiny_beir_dir, "--output", idx, "--no-progress",
                         "--dtype", "bfloat16")
    assert rc == 0, err
    encoder = BiEncoder.load(tiny_st_dir, device="cpu", pooling="cls")
    with pytest.raises(RerankError) as info:
        DenseIndex.load(idx, encoder=doc_encoder_settings(encoder), model=str(tiny_st_dir),
                        dataset=str(tiny_beir_dir))
    message = str(info.value)
    assert "pooling='mean' (the model: 'cls'), dtype='bfloat16' (the model: 'float32')" in message
    argv = _command(message)
    args = build_parser().parse_args(argv)
    assert (args.model, args.dataset, args.output) == (str(tiny_st_dir), str(tiny_beir_dir), str(idx))
    assert (args.pooling, args.dtype) == ("cls", "float32")
    rc, _, err = run_cli(*argv, "--no-progress")
    assert rc == 0, err
    recorded = json.loads((idx / "manifest.json").read_text())["encoder"]
    assert (recorded["pooling"], recorded["dtype"]) == ("cls", "float32")
    DenseIndex.load(idx, encoder=doc_encoder_settings(encoder))  # what the model's own settings give, now


def test_a_prefix_that_looks_like_an_option_is_given_with_equals(tmp_path: Path) -> None:
    manifest = {"model": "/m", "encoder": {"query_prefix": "-q", "doc_prefix": "--d x", "pooling": "mean"}}
    args = build_parser().parse_args(_command(rebuild_command(tmp_path / "i", manifest, dataset="/data/b")))
    assert (args.query_prefix, args.doc_prefix, args.dataset, args.output) == ("-q", "--d x", "/data/b",
                                                                              str(tmp_path / "i"))


# ---------------------------------------------------------------------------------- 3. text handling in the key

LLAMA2 = ("{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + "
          "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' }}{% endif %}"
          "{% endfor %}")
#: texts holding a special-token string and a Llama-2 template's plain-text turn markers
PROBES = ["a [SEP] b", "c [INST] d [/INST] e"]
#: what the encoder hands its tokenizer for PROBES under each text handling the embedding-cache key has named. A change
#: to that text is a new entry under a new name in ``dense._text_handling``, never an edit of an entry: embeddings
#: cached or indexed under the old name were encoded from the old text and must not be reused.
TEXT_HANDLINGS = {
    "special-strings-neutralised": ["a [ SEP] b", "c [INST] d [/INST] e"],
    "special-strings-and-turn-markers-neutralised": ["a [ SEP] b", "c [ INST] d [ /INST] e"],
}


def test_the_cache_key_names_the_text_handling_the_encoder_applies(tiny_st_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn markers became defanged while the key still said "special-strings-neutralised", so embeddings cached
    before, of documents holding ``[INST]``, were reused although the text now encodes differently. A tokenizer
    without such markers is given the text it always was: its key keeps the old name (its caches stay valid)."""
    enc = BiEncoder.load(tiny_st_dir, device="cpu")
    plain_key = doc_encoding_key(enc, "corpus")
    assert dense._text_handling(enc.doc_tokenizer) == "special-strings-neutralised"
    assert enc._prepare(PROBES, "doc") == TEXT_HANDLINGS["special-strings-neutralised"]
    enc.doc_tokenizer.chat_template = LLAMA2
    prepared = enc._prepare(PROBES, "doc")
    named = [name for name, texts in TEXT_HANDLINGS.items() if texts == prepared]
    assert named == [dense._text_handling(enc.doc_tokenizer)], (
        f"the encoder hands the tokenizer {prepared} (TEXT_HANDLINGS: {named}) and the cache key says "
        f"{dense._text_handling(enc.doc_tokenizer)!r}: new text handling needs a new name and a new entry here")
    key = doc_encoding_key(enc, "corpus")
    assert key["model_hash"] != plain_key["model_hash"]
    for name in set(TEXT_HANDLINGS) - {dense._text_handling(enc.doc_tokenizer)}:
        monkeypatch.setattr(dense, "_text_handling", lambda tok, name=name: name)
        assert doc_encoding_key(enc, "corpus")["model_hash"] != key["model_hash"]


# ---------------------------------------------------------------------------------- 4. one settings comparison


def test_settings_differences_names_each_differing_setting() -> None:
    """The index check, ADORE's and STAR's each had a copy of this comparison."""
    expected = {"pooling": "cls", "normalize": True, "dtype": "float32"}
    assert settings_differences({"pooling": "cls", "normalize": True, "dtype": "float32", "extra": 1}, expected) == ""
    assert settings_differences({"pooling": "mean", "dtype": "float32"}, expected) == (
        "pooling='mean' (the model: 'cls'), normalize='<not recorded>' (the model: True)")
    assert settings_differences(None, {"pooling": "cls"}, "the starting model") == (
        "pooling='<not recorded>' (the starting model: 'cls')")
