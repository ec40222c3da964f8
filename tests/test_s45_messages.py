"""Messages a plugin author meets: a plugin head named as a training method, a model folder whose ``rerank.json``
names a reranker not registered here, and what ``rerank train --check`` says it would train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank.errors import ConfigError
from rerank.heads.base import Reranker


class _Plain(Reranker):
    """A head of user code: no method package, so it ranks but has no trainer."""

    method = "test-s45-plain"

    def score(self, query: str, docs: list[str]) -> list[float]:
        return [float(len(d)) for d in docs]


@pytest.mark.usefixtures("fresh")
def test_training_a_registered_plugin_head_says_it_ranks_but_does_not_train() -> None:
    from rerank.heads import registry
    from rerank.methods import get_method

    with pytest.raises(ConfigError, match="unknown reranker 'test-s45-nothing'"):
        get_method("test-s45-nothing", kind="reranker")
    registry.register_reranker("test-s45-plain", _Plain)
    for name in ("test-s45-plain", "mypkg.heads:MyHead", "remote"):
        with pytest.raises(ConfigError) as info:
            get_method(name, kind="reranker")
        message = str(info.value)
        assert f"reranker {name!r} is a head without a method package: it ranks but does not train" in message
        assert "cross-encoder" in message and "\n" not in message


@pytest.mark.usefixtures("fresh")
def test_a_folder_naming_an_unregistered_reranker_names_its_rerank_json(tmp_path: Path) -> None:
    from rerank.cli.common import check_reranker_options
    from rerank.eval.pipeline import EvalConfig
    from rerank.eval.suites import _reranker_class

    folder = tmp_path / "downloaded"
    folder.mkdir()
    record = {"format": "rerank-model", "kind": "reranker", "method": "test-s45-missing"}
    (folder / "rerank.json").write_text(json.dumps(record))
    needle = f"{folder}/rerank.json names the reranker 'test-s45-missing', which is not registered here"
    with pytest.raises(ConfigError, match="install the package that provides it") as info:
        Reranker.load(str(folder))
    assert needle in str(info.value)
    with pytest.raises(ConfigError) as info:
        check_reranker_options("test-s45-missing", str(folder), {})
    assert needle in str(info.value)
    with pytest.raises(ConfigError) as info:
        _reranker_class(EvalConfig(dataset="unused", reranker=str(folder)))
    assert needle in str(info.value)
    from rerank.heads import registry

    registry.register_reranker("test-s45-missing", type("Missing", (_Plain,), {"method": "test-s45-missing"}))
    assert _reranker_class(EvalConfig(dataset="unused", reranker=str(folder)))[0].method == "test-s45-missing"


def test_train_check_prints_the_plan_it_resolved(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m0").mkdir()
    (tmp_path / "d.jsonl").write_text("")
    rc, out, err = run_cli("train", "sft", "--config", str(Path(__file__).parents[1] / "configs/examples/"
                                                            "tiny-erank-sft.yaml"),
                           "--set", "model=./m0", "--set", "data={path: d.jsonl}", "--set", "max_steps=3",
                           "--output", str(tmp_path / "out"), "--check", "--inputs-later")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[-1] == "state: train" and lines[-2].startswith("plan: trainer sft, method erank, template erank")
    assert "model ./m0, data d.jsonl" in lines[-2] and "max_steps 3" in lines[-2], lines[-2]
    assert "epochs" not in lines[-2]  # max_steps sets the length
    for part in ("warmup_ratio ", "seed ", "save_steps ", "eval_steps ", "max_doc_tokens ", "max_length ", "bf16 ",
                 "lora off"):
        assert part in lines[-2], (part, lines[-2])


def test_verbose_and_debug_work_after_the_command(tmp_path: Path, run_cli) -> None:
    """``rerank evaluate ... --debug`` was "unrecognized arguments": -v and --debug were read only before the
    command."""
    from rerank.cli import main

    args = ["evaluate", "--run", str(tmp_path / "none.trec"), "--qrels", str(tmp_path / "none.tsv")]
    rc, _, err = run_cli(*args, "-v")
    assert rc == 2 and "does not exist" in err and "unrecognized" not in err, err
    with pytest.raises(ConfigError, match="does not exist"):  # --debug: the traceback, not one line
        main([*args, "--debug"])
    with pytest.raises(ConfigError, match="does not exist"):  # before the command, as before
        main(["--debug", *args])
