"""Training from a model folder saved without its tokenizer (audit s43/pyapi, finding 1, on the training side): the
trainers loaded transformers' placeholder tokenizer, which reads every word as unknown, and trained on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def _without_tokenizer(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tokenizer*", "vocab*", "spiece.model", "merges.txt"))
    return dst


def _rows(path: Path) -> Path:
    rows = [{"query": f"query {i}", "pos": [f"relevant text {i}"], "neg": [f"other text {i}", "filler"]}
            for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("head", "fixture"), [("cross-encoder", "tiny_bert_dir"), ("yes-no", "tiny_llm_dir"),
                                               ("monot5", "tiny_t5_dir")])
def test_training_from_a_folder_without_tokenizer_is_one_line(head: str, fixture: str, request: pytest.FixtureRequest,
                                                             tmp_path: Path, run_cli) -> None:
    model = _without_tokenizer(request.getfixturevalue(fixture), tmp_path / "model")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {model}\nhead: {head}\ndata: {{path: {_rows(tmp_path / 'd.jsonl')}}}\nmax_steps: 1\n"
                   "use_cpu: true\nbf16: false\n")
    rc, _, err = run_cli("train", "sft", "--config", cfg, "--output", tmp_path / "out")
    assert rc == 2, err
    assert f"model {model} holds no tokenizer" in err and "tokenizer.save_pretrained" in err
    assert len(err.strip().splitlines()) == 1, err


def test_the_llm_trainers_tokenizer_helper_refuses_it(tiny_llm_dir: Path, tmp_path: Path) -> None:
    from rerank.errors import ConfigError
    from rerank.trainers.sft_trainer import load_tokenizer

    with pytest.raises(ConfigError, match="holds no tokenizer"):
        load_tokenizer(str(_without_tokenizer(tiny_llm_dir, tmp_path / "model")))
    assert load_tokenizer(str(tiny_llm_dir)).pad_token is not None
