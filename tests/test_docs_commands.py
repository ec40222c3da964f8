"""Every ``rerank …`` command in README.md and docs/*.md is exercised, and every relative link resolves.

Commands are taken from the fenced ``bash`` blocks (continuation lines joined; ``&&``, ``;``, ``|`` and ``&``
separate commands; leading ``VAR=value`` assignments and ``/usr/bin/time -v`` are dropped; ``python -m rerank``,
``accelerate launch … -m rerank`` and ``torchrun … -m rerank`` count as ``rerank``). Placeholders are replaced by
tiny fixtures through :data:`SUBSTITUTIONS` (one table, nothing else is rewritten). Every command is then

* **parsed** by ``rerank.cli``'s own argparse parser with abbreviations off, so an unknown flag, a wrong subcommand
  or a missing required option fails, and **validated** without running: ``train`` resolves the trainer and loads
  its config file with the ``--set`` overrides (unknown keys fail); ``data build`` loads the recipe and checks it
  against its recipe class; ``eval`` / ``rank`` / ``serve`` resolve ``--reranker`` and ``--retriever`` and check
  the reranker options (``--reranker-config``, ``--reranker-set``) against the head's typed config;
  ``leaderboard`` loads and checks its config;
* and **run**, in document order in one scratch folder (so a command may use what an earlier one wrote), on the
  tiny data root, unless :func:`parse_only_reason` names why not. Parsed only: ``train`` (a training run),
  ``serve`` (a server that does not return), ``leaderboard`` (every cell of its matrix), ``eval --suite beir |
  bright`` (public downloads, BRIGHT's files), commands using a shell variable (``$GGUF``: a real LLM, minutes a
  query on CPU), a non-``transformers`` ``--backend`` or the ``remote`` reranker (a server), a ``--model`` that a
  documented training writes (``…/model``, ``…/checkpoints/…``), and ``data build`` of a recipe whose teacher or
  generator is a hub model (every shipped recipe but ``scifact-hard-negatives``), and any command that reads what
  such a parsed-only command would have written (its ``--output``). Run: ``evaluate``, ``eval``
  (BM25, dense, first-stage runs, ``--suite dl``, cross-encoder reranking), ``rank``, ``index``, ``data recipes``,
  ``data build scifact-hard-negatives`` and ``python -m rerank.testing``.

Benchmark commands (``python benchmarks/NAME.py …``) are parsed only: the script's ``main`` runs up to its
``parse_args``, which must accept the documented arguments, and stops there.

Python blocks are compiled (syntax only). Links ``[text](path#heading)`` must reach an existing file (and heading),
and repository paths named in the text (``docs/….md``, ``configs/….yaml``, ``benchmarks/….py``, ``tests/….py``) must
exist.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Placeholder (a whole token, the value of KEY=VALUE, or a path prefix) -> fixture key or literal. Documented
# commands use exactly these placeholders; anything else in them is taken as written.
SUBSTITUTIONS: dict[str, str] = {
    "../shared/data": "{data}",          # the data root: a tiny one (scifact, dl19/dl20-bm25-top100)
    "METHOD": "cross-encoder",           # any registered reranker method
    "MODEL": "{cross_encoder}",          # a model for METHOD: a tiny cross-encoder
    "all-MiniLM-L6-v2": "{bi_encoder}",  # the packaged bi-encoder: a tiny sentence-transformers model
    "queries_docs.jsonl": "{queries_docs}",
    "run.trec": "{run}",
    "qrels.tsv": "{qrels}",
    "CONFIG.yaml": "{config}",           # a trainer's config: the example config of that trainer (CONFIGS)
}
# ``CONFIG.yaml`` per trainer: the shipped example it stands for
CONFIGS: dict[str, str] = {
    "sft": "configs/examples/scifact-cross-encoder.yaml",
    "grpo": "configs/examples/tiny-erank-grpo.yaml",
    "contrastive": "configs/examples/scifact-contrastive.yaml",
    "star": "configs/examples/scifact-star.yaml",
    "adore": "configs/examples/scifact-adore.yaml",
    "pgrank": "configs/examples/scifact-pgrank.yaml",
}
RUN_RECIPES = {"scifact-hard-negatives"}  # shipped recipes whose models are available offline
SEPARATORS = {"&&", "||", ";", "|", "&"}
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|configs|benchmarks|tests)/[\w./-]*\.(?:md|yaml|py))(?![\w*<{-])")


@dataclass
class DocCommand:
    """One documented command: where it is written and its arguments after ``rerank`` (or ``-m rerank.testing``)."""

    where: str
    program: str  # "rerank", "rerank.testing" or a benchmark script "benchmarks/NAME.py"
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.where}: {self.program} {shlex.join(self.argv)}"


def bash_blocks(path: Path) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each fenced bash block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() in ("```bash", "```sh", "```shell"):
            start, body = i + 2, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            yield start, "\n".join(body)
        i += 1


def commands_in(path: Path) -> list[DocCommand]:
    """Every rerank command of a file's bash blocks, in order."""
    out: list[DocCommand] = []
    for start, text in bash_blocks(path):
        for offset, line in logical_lines(text):
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            tokens = list(lex)
            segment: list[str] = []
            for tok in [*tokens, ";"]:
                if tok in SEPARATORS:
                    cmd = to_command(segment, f"{path.relative_to(REPO)}:{start + offset}")
                    if cmd is not None:
                        out.append(cmd)
                    segment = []
                else:
                    segment.append(tok)
    return out


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines with backslash continuations joined, with the offset of their first line."""
    buf, first = "", 0
    for n, line in enumerate(text.splitlines()):
        if not buf:
            first = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield first, buf + line
        buf = ""
    if buf:
        yield first, buf


def to_command(tokens: list[str], where: str) -> DocCommand | None:
    """The rerank command a token list runs, or None when it runs something else."""
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        tokens = tokens[1:]
    if tokens[:2] == ["/usr/bin/time", "-v"]:
        tokens = tokens[2:]
    if tokens[:1] == ["rerank"]:
        return DocCommand(where, "rerank", tokens[1:])
    if tokens[:1] == ["python"] and len(tokens) > 1 and tokens[1].startswith("benchmarks/"):
        return DocCommand(where, tokens[1], tokens[2:])
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] in ("rerank", "rerank.testing"):
            return DocCommand(where, tokens[i + 1], tokens[i + 2:])
    return None


def all_commands() -> list[DocCommand]:
    return [c for f in DOC_FILES for c in commands_in(f)]


def substitute(argv: list[str], fixtures: dict[str, str]) -> list[str]:
    """Apply :data:`SUBSTITUTIONS` to whole tokens, to ``KEY=VALUE`` values and to ``../shared/data`` prefixes."""

    def one(tok: str) -> str:
        if tok in SUBSTITUTIONS:
            return SUBSTITUTIONS[tok].format(**fixtures)
        if tok.startswith("../shared/data/"):
            return SUBSTITUTIONS["../shared/data"].format(**fixtures) + tok[len("../shared/data"):]
        key, eq, value = tok.partition("=")
        if eq and not key.startswith("-") and value in SUBSTITUTIONS:
            return f"{key}={SUBSTITUTIONS[value].format(**fixtures)}"
        return tok

    out = [one(t) for t in argv]
    if out[:1] == ["train"] and len(out) > 1:
        out = [fixtures["repo"] + "/" + CONFIGS[out[1]] if t == "{config}" else t for t in out]
    # repository files (configs/…) are named relative to the repository root; commands run in a scratch folder
    return [str(REPO / t) if not os.path.isabs(t) and re.match(r"(configs|docs)/", t) and (REPO / t).exists() else t
            for t in out]


def option(argv: list[str], name: str) -> list[str]:
    """Values of every ``name VALUE`` / ``name=VALUE`` in argv."""
    vals = [argv[i + 1] for i, t in enumerate(argv[:-1]) if t == name]
    return vals + [t.split("=", 1)[1] for t in argv if t.startswith(name + "=")]


def parse_only_reason(argv: list[str]) -> str | None:
    """Why a command (as documented, before substitution) is parsed and validated but not run; None: it runs."""
    if argv[0] == "train":
        return "a training run"
    if argv[0] == "serve":
        return "a server that does not return"
    if argv[0] == "leaderboard":
        return "runs every cell of the leaderboard"
    if any(s in ("beir", "bright") for s in option(argv, "--suite")):
        return "public downloads / BRIGHT files"
    if any("$" in t for t in argv):
        return "a shell variable (a real LLM: minutes a query on CPU)"
    if any(b != "transformers" for b in option(argv, "--backend")) or "remote" in option(argv, "--reranker"):
        return "needs a model server"
    models = option(argv, "--model") + [t.split("=", 1)[1] for t in argv if t.startswith("model=")]
    if any(m.rstrip("/").endswith("/model") or "/checkpoints/" in m for m in models):
        return "the model a documented training writes"
    if argv[:2] == ["data", "build"] and argv[2] not in RUN_RECIPES:
        return "its teacher or generator is a hub model"
    return None


def strict_parser() -> argparse.ArgumentParser:
    """rerank.cli's parser with prefix abbreviations off (a documented ``--max-q`` must fail, not match)."""
    from rerank.cli import build_parser

    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return parser


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once a benchmark's arguments have parsed: nothing is measured."""


def dry_parse_benchmark(cmd: DocCommand, argv: list[str]) -> None:
    """Run a benchmark script's ``main`` up to its ``parse_args`` (which must accept ``argv``), then stop."""
    import runpy
    import sys
    from unittest import mock

    script = REPO / cmd.program
    assert script.is_file(), f"{cmd}: no such script"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, args: list[str] | None = None, namespace: object = None):
        original(self, args, namespace)
        raise _Parsed

    namespace = runpy.run_path(str(script), run_name="docs_dry_parse")
    import contextlib
    import io

    err = io.StringIO()
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), \
            mock.patch.object(sys, "argv", [str(script), *argv]), contextlib.redirect_stderr(err):
        try:
            namespace["main"]()
        except _Parsed:
            return
        except SystemExit:
            pytest.fail(f"{cmd}\n  does not parse: {err.getvalue().strip().splitlines()[-1]}")
    pytest.fail(f"{cmd}: main() returned without parsing its arguments")


def validate(cmd: DocCommand, argv: list[str]) -> None:
    """Parse ``argv`` and check what it names (trainer and config, recipe, reranker and options, leaderboard)."""
    if cmd.program.startswith("benchmarks/"):
        dry_parse_benchmark(cmd, argv)
        return
    if cmd.program == "rerank.testing":
        from rerank.testing.__main__ import build_parser as testing_parser

        parse(testing_parser(), argv, cmd)
        return
    ns = parse(strict_parser(), argv, cmd)
    from rerank.config import apply_overrides, from_dict, load_yaml

    if ns.command == "train":
        from rerank.trainers.base import build_train_config, get_trainer

        trainer = get_trainer(ns.trainer)
        assert ns.config is None or Path(ns.config).is_file(), f"{cmd}: no config file {ns.config}"
        raw = apply_overrides(load_yaml(ns.config) if ns.config else {}, ns.overrides)
        build_train_config(trainer.config_class, raw, str(ns.config))
    elif ns.command == "data" and ns.data_command == "build":
        from rerank.data_recipes import recipe_path
        from rerank.data_recipes.base import _recipe_class

        spec = apply_overrides(load_yaml(recipe_path(ns.recipe)), ns.overrides)
        cls = _recipe_class(str(spec.pop("recipe")))
        from_dict(cls.config_class, spec, where=f"recipe {ns.recipe}")
    elif ns.command in ("eval", "rank", "serve"):
        from rerank.cli.common import reranker_options
        from rerank.heads.registry import get_reranker_class

        if ns.reranker:
            cls = get_reranker_class(ns.reranker)
            from_dict(cls.config_class, reranker_options(ns), where=f"{cmd}: reranker options")
        if getattr(ns, "retriever", None):
            from rerank.retrieval.base import available_retrievers

            assert ns.retriever in available_retrievers(), f"{cmd}: unknown retriever {ns.retriever}"
    elif ns.command == "leaderboard":
        from rerank.eval.leaderboard import load_config

        load_config(ns.config)


def parse(parser: argparse.ArgumentParser, argv: list[str], cmd: DocCommand) -> argparse.Namespace:
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{cmd}\n  does not parse: {err.getvalue().strip().splitlines()[-1]}")


# --- fixtures: a tiny data root and the files the placeholders stand for ------------------------------------------


def _dl_like(root: Path, name: str) -> None:
    """A tiny dataset in the local TREC DL form: BEIR files + the first-stage run ``bm25_top100.trec``."""
    from rerank.data.io import write_run
    from rerank.testing import make_tiny_beir

    d = make_tiny_beir(root / name, num_docs=60, num_queries=6, splits=("test",), seed=1)
    from rerank.data.datasets import resolve_dataset

    ds = resolve_dataset(str(d))
    ids = sorted(ds.corpus.keys())
    write_run({q: [(doc, float(len(ids) - i)) for i, doc in enumerate(ids[:30])] for q in ds.split_queries("test")},
              d / "bm25_top100.trec")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, tiny_st_dir: Path) -> dict[str, str]:
    from rerank.data.io import write_qrels, write_run
    from rerank.testing import make_tiny_beir

    root = tmp_path_factory.mktemp("docs")
    data = root / "data"
    make_tiny_beir(data / "scifact", num_docs=80, num_queries=12, seed=0)
    _dl_like(data, "dl19-bm25-top100")
    _dl_like(data, "dl20-bm25-top100")
    qd = root / "queries_docs.jsonl"
    qd.write_text('{"query": "what is bm25?", "docs": ["BM25 is a ranking function", "Paris is in France."]}\n'
                  '{"query": "capital of france", "docs": [{"id": "p", "text": "Paris is the capital of France."},'
                  ' {"id": "b", "text": "BM25 ranks documents."}]}\n', encoding="utf-8")
    write_run({"q1": [("d1", 2.0), ("d2", 1.0)], "q2": [("d3", 1.0)]}, root / "run.trec")
    write_qrels({"q1": {"d2": 1}, "q2": {"d3": 2}}, root / "qrels.tsv", beir=True)
    return {"data": str(data), "cross_encoder": str(tiny_bert_dir), "bi_encoder": str(tiny_st_dir),
            "queries_docs": str(qd), "run": str(root / "run.trec"), "qrels": str(root / "qrels.tsv"),
            "config": "{config}", "repo": str(REPO), "work": str(root / "work")}


def test_docs_have_commands() -> None:
    """The extraction finds the README's commands (a broken extractor must not pass by finding nothing)."""
    readme = [c for c in all_commands() if c.where.startswith("README.md")]
    assert any(c.argv[:1] == ["eval"] for c in readme) and any(c.argv[:1] == ["evaluate"] for c in readme)
    assert len(all_commands()) >= 30


def test_documented_commands_parse_and_run(fixtures: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from rerank.cli import main
    from rerank.errors import RerankError
    from rerank.testing.__main__ import main as testing_main

    work = Path(fixtures["work"])
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("RERANK_CACHE", str(work / ".cache"))
    ran, parsed = [], []
    not_written: set[str] = set()  # outputs of the commands that are only parsed
    for cmd in all_commands():
        argv = substitute(cmd.argv, fixtures)
        try:
            validate(cmd, argv)
        except RerankError as e:
            pytest.fail(f"{cmd}\n  is not valid: {e}")
        reason = ("a measurement" if cmd.program.startswith("benchmarks/")
                  else None if cmd.program == "rerank.testing" else parse_only_reason(cmd.argv))
        if reason is None and any(t == o or t.startswith(o + "/") for t in cmd.argv for o in not_written):
            reason = "uses what a command that is only parsed would write"
        if reason is not None:
            parsed.append((str(cmd), reason))
            not_written.update(option(cmd.argv, "--output"))
            continue
        capsys.readouterr()
        rc = (testing_main if cmd.program == "rerank.testing" else main)(argv)
        out, err = capsys.readouterr()
        assert rc == 0, f"{cmd}\n  ran as {shlex.join(argv)}\n  exit {rc}: {err.strip()[-2000:]}"
        ran.append(str(cmd))
    print(f"\nran {len(ran)}, parsed only {len(parsed)}:")
    for c in ran:
        print("  run  ", c)
    for c, why in parsed:
        print("  parse", c, f"({why})")
    assert len(ran) >= 10, ran


def test_an_unknown_flag_fails_the_check() -> None:
    """The parse the docs go through rejects an invented flag, an abbreviation and an unknown trainer."""
    cmd = DocCommand("x", "rerank", [])
    for argv in (["eval", "--dataset", "d", "--output", "o", "--no-such-flag"],
                 ["eval", "--dataset", "d", "--output", "o", "--max-q", "3"],
                 ["evaluat", "--run", "r", "--qrels", "q"]):
        with pytest.raises(pytest.fail.Exception, match="does not parse"):
            validate(cmd, argv)
    from rerank.errors import RerankError

    with pytest.raises(RerankError):
        validate(cmd, ["train", "no-such-trainer", "--output", "o"])
    with pytest.raises(RerankError, match="no_such_key"):
        validate(cmd, ["train", "sft", "--config", str(REPO / CONFIGS["sft"]), "--output", "o",
                       "--set", "no_such_key=1"])


def test_python_blocks_compile() -> None:
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for i, block in enumerate(re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)):
            compile(block, f"{path.relative_to(REPO)} python block {i + 1}", "exec")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces to hyphens)."""
    heads = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_relative_links_and_named_paths_exist() -> None:
    missing = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = path.parent / file if file else path
            if not dest.exists():
                missing.append(f"{path.relative_to(REPO)}: link {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                missing.append(f"{path.relative_to(REPO)}: link {target}: no such heading")
        for named in REPO_PATH.findall(text):
            if not (REPO / named).exists():
                missing.append(f"{path.relative_to(REPO)}: names {named}")
    assert not missing, "\n".join(missing)
