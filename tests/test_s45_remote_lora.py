"""A model folder declaring custom code (``auto_map``) without trust_remote_code: a one-line warning when it loads
with the stock class, a one-line error naming the opt-in when there is none, and the code never run; a LoRA run's
adapter names a local base model by its absolute path, so it loads from any folder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from train_support import erank_workdir

from rerank.errors import ConfigError

EVIL = "from pathlib import Path\nPath(__file__).with_name('PWNED').write_text('ran')\n"


def _remote(src: Path, dst: Path, cls: str, model_type: str | None = None) -> Path:
    """A copy of ``src`` whose config.json declares custom code (a module that leaves a PWNED file when run)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", cls: "modeling_evil.EvilModel"}
    if model_type:
        config["model_type"] = model_type
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "modeling_evil.py").write_text(EVIL)
    return dst


def test_known_model_type_with_auto_map_warns_that_its_code_is_not_run(
        tiny_bert_dir: Path, tiny_llm_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rerank.heads.base import Reranker

    for name, src, cls, method in (("ce", tiny_bert_dir, "AutoModelForSequenceClassification", "cross-encoder"),
                                   ("llm", tiny_llm_dir, "AutoModelForCausalLM", "yes-no")):
        folder = _remote(src, tmp_path / name, cls)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            reranker = Reranker.load(method, model=str(folder))
        assert len(reranker.rerank("zebra", ["zebra facts", "dogs"]).results) == 2
        said = [r.getMessage() for r in caplog.records if "auto_map" in r.getMessage()]
        assert len(said) == 1 and "\n" not in said[0], said
        assert str(folder) in said[0] and cls in said[0] and "NOT run" in said[0]
        assert "--reranker-set trust_remote_code=true" in said[0]
        assert "backend_options.trust_remote_code=true" in said[0]
        assert not (folder / "PWNED").exists()


def test_unknown_model_type_with_auto_map_is_one_line_naming_the_opt_in(
        tiny_bert_dir: Path, tmp_path: Path, run_cli: Any) -> None:
    from rerank.heads.base import Reranker

    folder = _remote(tiny_bert_dir, tmp_path / "ce", "AutoModelForSequenceClassification", model_type="evil_new")
    with pytest.raises(ConfigError) as caught:
        Reranker.load("cross-encoder", model=str(folder))
    message = str(caught.value)
    assert "\n" not in message and "auto_map" in message and "'evil_new'" in message
    assert "--reranker-set trust_remote_code=true" in message and "cannot read it" not in message
    (tmp_path / "in.jsonl").write_text('{"query": "zebra", "docs": ["zebra facts", "dogs"]}\n')
    rc, _, err = run_cli("rank", "--reranker", "cross-encoder", "--model", folder, "--input", tmp_path / "in.jsonl",
                         "--output", tmp_path / "out.jsonl")
    assert rc == 2 and "auto_map" in err and "trust_remote_code=true" in err and "Traceback" not in err
    assert not (folder / "PWNED").exists() and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
def test_lora_adapter_names_a_local_base_by_its_absolute_path(
        trainer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import AutoPeftModelForCausalLM

    from rerank.trainers.api import run_trainer

    work = erank_workdir(tmp_path / "work", data_seed=3)
    monkeypatch.chdir(work)  # the base model named relative to where training runs
    cfg: dict[str, Any] = {"model": "llm", "head": "erank", "template": "erank.yaml", "max_doc_tokens": 24,
                           "data": {"path": "train.jsonl", "dev_fraction": 0.0}, "max_steps": 1, "save_steps": 1,
                           "learning_rate": 1e-3, "lora": {"enabled": True, "r": 4, "alpha": 8}}
    cfg.update({"batch_size": 4} if trainer == "sft" else {"batch_size": 8, "num_generations": 2,
                                                            "max_completion_length": 8})
    run_trainer(trainer, cfg, work / "out")
    adapter = work / "out" / "adapter"
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str((work / "llm").resolve())
    monkeypatch.chdir(tmp_path)  # elsewhere, the adapter still finds its base
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    assert model.peft_config["default"].base_model_name_or_path == recorded


def test_a_hub_base_id_stays_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.trainers.sft_trainer import _absolute_base

    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    hub, local = SimpleNamespace(base_model_name_or_path="Qwen/Qwen2-0.5B"), SimpleNamespace(
        base_model_name_or_path="local")
    _absolute_base(SimpleNamespace(peft_config={"a": hub, "b": local}))
    assert hub.base_model_name_or_path == "Qwen/Qwen2-0.5B"
    assert local.base_model_name_or_path == str((tmp_path / "local").resolve())
