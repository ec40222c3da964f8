"""The command line's own help and its refusals of flags (audit s43/shipped, findings 4 and 5): `rerank CMD --help`
had no description line, and two flags were refused by the name of the option key they set, not the flag typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank.cli import COMMANDS, build_parser


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_opens_with_its_summary(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    summary = {a.dest: a.help for a in sub._choices_actions}[command]
    assert summary and sub.choices[command].description == summary
    assert summary in sub.choices[command].format_help()


def test_data_build_and_recipes_have_their_summaries() -> None:
    data = next(a for a in build_parser()._actions if a.dest == "command").choices["data"]
    actions = next(a for a in data._actions if a.dest == "data_command")
    for name, parser in actions.choices.items():
        assert parser.description, name


def test_index_with_bm25_names_the_flag(run_cli, tmp_path: Path) -> None:
    rc, _, err = run_cli("eval", "--dataset", tmp_path, "--retriever", "bm25", "--index", tmp_path,
                         "--output", tmp_path / "o")
    assert rc == 2 and "--index needs --retriever dense or hybrid (--retriever bm25 builds its own)" in err
    assert len(err.strip().splitlines()) == 1


def test_allow_new_head_on_a_method_without_it_names_the_flag(run_cli, tiny_llm_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"query": "q", "docs": ["a", "b"]}\n')
    rc, _, err = run_cli("rank", "--reranker", "erank", "--model", tiny_llm_dir, "--allow-new-head",
                         "--input", source, "--output", tmp_path / "o.jsonl")
    assert rc == 2 and "error: --allow-new-head: unknown key 'allow_new_head'" in err, err


def test_grpo_check_refuses_use_vllm_without_vllm_as_the_run_does(tiny_llm_dir: Path, tiny_beir_dir: Path,
                                                                  tmp_path: Path, run_cli) -> None:
    """--check printed `state: train` for use_vllm without vLLM installed; the run then stopped at once (audit
    s43/shipped, finding 2)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.fail("this test needs an environment without vLLM (the main venv)")
    config = tmp_path / "g.yaml"
    config.write_text(f"model: {tiny_llm_dir}\nhead: first\ndata: {{beir: {tiny_beir_dir}, split: train}}\n"
                      "use_vllm: true\nbf16: false\nuse_cpu: true\n")
    rc, out, err = run_cli("train", "grpo", "--config", config, "--output", tmp_path / "o", "--check")
    assert rc == 2 and "use_vllm needs vLLM in this environment" in err and "state:" not in out, err
