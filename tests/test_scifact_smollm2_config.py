"""The SciFact SmolLM2 ERank SFT example config is a valid ``sft`` config and evaluates with its training truncation."""

from __future__ import annotations

import re
from pathlib import Path

from rerank.config import from_dict, load_yaml
from rerank.models import PACKAGED_MODELS
from rerank.trainers.sft_trainer import SFTTrainConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "examples" / "scifact-smollm2-erank-sft.yaml"


def test_config_parses_as_erank_sft_on_scifact_train() -> None:
    cfg = from_dict(SFTTrainConfig, load_yaml(CONFIG), where=str(CONFIG))
    assert cfg.head == "erank" and cfg.loss == "lm" and not cfg.lora.enabled
    assert cfg.model in PACKAGED_MODELS
    assert cfg.data.beir == "scifact" and cfg.data.split == "train" and cfg.data.dev_fraction > 0
    assert cfg.eval_steps == cfg.save_steps > 0


def test_header_eval_command_uses_the_training_truncation() -> None:
    cfg = from_dict(SFTTrainConfig, load_yaml(CONFIG), where=str(CONFIG))
    header = "".join(line for line in CONFIG.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert f"max_doc_tokens={cfg.max_doc_tokens}" in header
    assert f"max_query_tokens={cfg.max_query_tokens}" in header
    assert re.search(r"--top-k 20\b", header)
