"""The bi-encoder head and dense encoder: one-line refusals of remote-code, pickle-only and unsupported-similarity
folders, and very long texts tokenised only as far as the max length reaches (embeddings unchanged)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rerank import Reranker
from rerank.errors import ConfigError, RerankError
from rerank.retrieval import dense
from rerank.retrieval.dense import BiEncoder

LONG = " ".join(f"virus cancer risk study {i}" for i in range(40_000))  # about 1M characters


def _one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _plain_copy(tiny_st_dir: Path, dest: Path) -> Path:
    """The tiny ST folder's transformer as a plain HF folder (config, tokenizer, safetensors weights)."""
    shutil.copytree(tiny_st_dir, dest)
    return dest


def test_pickle_only_encoder_is_refused_with_the_reason(tiny_st_dir: Path, tmp_path: Path) -> None:
    folder = _plain_copy(tiny_st_dir, tmp_path / "enc_bin")
    weights = next(folder.rglob("model.safetensors"))
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), weights.with_name("pytorch_model.bin"))
    weights.unlink()
    with pytest.raises(ConfigError) as e:
        Reranker.load("bi-encoder", model=str(folder), device="cpu")
    msg = _one_line(e)
    assert "pickled pytorch_model.bin is refused" in msg and "save_pretrained" in msg


def _remote_folder(tiny_st_dir: Path, dest: Path, model_type: str) -> Path:
    folder = _plain_copy(tiny_st_dir, dest)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type=model_type, auto_map={"AutoModel": "modeling_evil.EvilModel",
                                                "AutoConfig": "modeling_evil.EvilConfig"})
    (folder / "config.json").write_text(json.dumps(cfg))
    marker = dest.parent / f"PWNED-{dest.name}"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder


def test_remote_code_encoder_is_refused_without_bogus_advice(tiny_st_dir: Path, tmp_path: Path) -> None:
    folder = _remote_folder(tiny_st_dir, tmp_path / "enc_remote_new", "evil_new")
    for load in (lambda: Reranker.load("bi-encoder", model=str(folder), device="cpu"),
                 lambda: BiEncoder.load(folder, device="cpu")):
        with pytest.raises(ConfigError) as e:
            load()
        msg = _one_line(e)
        assert "declares custom code" in msg and "never run a model's own code" in msg
        assert "trust_remote_code=True" not in msg and "hf.co" not in msg
    assert not (tmp_path / "PWNED-enc_remote_new").exists()


def test_remote_code_with_a_known_type_warns_that_it_is_not_run(tiny_st_dir: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    folder = _remote_folder(tiny_st_dir, tmp_path / "enc_remote", "bert")
    with caplog.at_level(logging.WARNING, logger="rerank.retrieval.dense"):
        BiEncoder.load(folder, device="cpu")
    assert any("declares custom code" in r.getMessage() and "NOT run" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "PWNED-enc_remote").exists()


@pytest.mark.parametrize("name", ["euclidean", "manhattan"])
def test_unsupported_similarity_is_refused(tiny_st_dir: Path, tmp_path: Path, name: str) -> None:
    folder = shutil.copytree(tiny_st_dir, tmp_path / name)
    cst = folder / "config_sentence_transformers.json"
    cst.write_text(json.dumps({**json.loads(cst.read_text()), "similarity_fn_name": name}))
    with pytest.raises(RerankError) as e:
        Reranker.load("bi-encoder", model=str(folder), device="cpu")
    assert f"similarity_fn_name {name!r} is not supported" in _one_line(e)


class _Recording:
    """A tokenizer proxy recording the longest text it was asked to tokenise."""

    def __init__(self, tok: Any) -> None:
        self.__dict__["_tok"], self.__dict__["longest"] = tok, 0

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        texts = [text] if isinstance(text, str) else list(text)
        self.__dict__["longest"] = max([self.longest, *(len(t) for t in texts)])
        return self._tok(text, *args, **kwargs)

    def encode(self, text: str, *args: Any, **kwargs: Any) -> Any:
        self.__dict__["longest"] = max(self.longest, len(text))
        return self._tok.encode(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tok, name, value)


def test_long_documents_are_not_tokenised_whole_and_embed_the_same(tiny_st_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    head = Reranker.load("bi-encoder", model=str(tiny_st_dir), device="cpu", max_doc_tokens=64)
    enc = head.encoder
    rec = _Recording(enc.doc_tokenizer)
    enc.query_tokenizer = enc.doc_tokenizer = rec
    docs = [LONG, "short " + LONG[:5000], "a short one"]
    scores = {r.doc.id: r.score for r in head.rerank("cancer risk of a virus", docs).results}
    cut = enc.encode_numpy(docs, "doc")
    feats = enc.tokenize(docs, "doc")
    assert rec.longest < 20_000  # the whole 1M-character text was never tokenised
    monkeypatch.setattr(dense, "cut_to_tokens", lambda text, *a, **k: text)  # the uncut path
    np.testing.assert_array_equal(cut, enc.encode_numpy(docs, "doc"))
    whole = enc.tokenize(docs, "doc")
    assert all(torch.equal(feats[k], whole[k]) for k in whole)
    head2 = Reranker.load("bi-encoder", model=str(tiny_st_dir), device="cpu", max_doc_tokens=64)
    again = {r.doc.id: r.score for r in head2.rerank("cancer risk of a virus", docs).results}
    assert scores == again
