"""Extending rerank from a user's own package (audit "extend", findings 4-6 and the missing route to user code):
entry-point plugins, ``module:Class`` names, registration checks, and user registrations in spawned workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plugin_support import USER_MODULE, write_length_beir

from rerank.errors import ConfigError
from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.heads import registry as heads_registry
from rerank.heads.base import Reranker, RerankerConfig
from rerank.retrieval import base as retrieval_base
from rerank.retrieval.base import FirstStage, build_retriever
from rerank.types import Candidate, Query

ROOT = Path(__file__).resolve().parents[1]

class Longest(Reranker):
    method = "test-a7-longest"
    config_class = RerankerConfig

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [float(len(c.doc.text)) for c in candidates]


@pytest.fixture()
def user_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user module ``a7user`` importable from ``sys.path`` (and so by spawned workers)."""
    (tmp_path / "a7user.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "a7user", raising=False)
    return "a7user"



@pytest.fixture()
def beir(tmp_path: Path) -> Path:
    return write_length_beir(tmp_path / "mini", 8, 4, run=True)


def _plugin_dist(where: Path, entry_points: str) -> None:
    """A fake installed distribution ``a7plug`` 1.0 (its metadata, entry points and modules) in ``where``."""
    info = where / "a7plug-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: a7plug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    (where / "a7plug_heads.py").write_text(USER_MODULE.replace("test-a7-long", "test-a7-plug"))
    (where / "a7plug_broken.py").write_text("raise ImportError('a7plug needs libfoo, which is not installed')\n")


# ---------------------------------------------------------------- entry points


def test_installed_packages_add_rerankers_and_retrievers_through_entry_points(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: None, beir: Path) -> None:
    _plugin_dist(tmp_path, """
        [rerank.rerankers]
        test-a7-plug = a7plug_heads:LongFirst
        test-a7-broken = a7plug_broken:Head
        yes-no = a7plug_heads:KeepsYesNo
        [rerank.retrievers]
        test-a7-short = a7plug_heads:ShortFirstRetriever
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("a7plug_heads", "a7plug_broken"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    names = heads_registry.available_rerankers()
    assert {"test-a7-plug", "test-a7-broken", "yes-no", "cross-encoder"} <= set(names)
    assert "a7plug_heads" not in sys.modules  # listed, imported only when looked up
    assert heads_registry.get_reranker_class("test-a7-plug").__name__ == "LongFirst"
    ranked = Reranker.load("test-a7-plug").rerank("q", ["a", "abc", "ab"]).results
    assert [r.doc.text for r in ranked] == ["abc", "ab", "a"]
    # a broken plugin is an error only where its name is used, one line naming its package
    assert heads_registry.get_reranker_class("cross-encoder").method == "cross-encoder"
    with pytest.raises(ConfigError) as broken:
        heads_registry.get_reranker_class("test-a7-broken")
    assert "'a7plug'" in str(broken.value) and "libfoo" in str(broken.value) and "\n" not in str(broken.value)
    # a plugin cannot take a built-in name
    with pytest.raises(ConfigError, match=r"reranker 'yes-no' of the installed package 'a7plug' .* takes the name of "
                                          r"the built-in rerank\.methods\.yes_no\.head:YesNoReranker"):
        heads_registry.get_reranker_class("yes-no")
    assert retrieval_base.available_retrievers() == ["bm25", "dense", "hybrid", "pyserini", "test-a7-short"]
    assert build_retriever("test-a7-short", str(beir)).retrieve({"q": "x"}, 2) == {"q": [("d0", 0.0), ("d1", -1.0)]}
    # a user registration does not silently replace a plugin's name
    with pytest.raises(ConfigError, match="registered by the installed package 'a7plug'"):
        heads_registry.register_reranker("test-a7-plug", Longest)


# ---------------------------------------------------------------- module:Class names


def test_module_class_names_reach_user_code_from_the_cli(user_pkg: str, beir: Path, tmp_path: Path, run_cli,
                                                         fresh: None) -> None:
    out = tmp_path / "out"
    rc, _, err = run_cli("eval", "--dataset", beir, "--retriever", f"{user_pkg}:ShortFirstRetriever", "--reranker",
                         f"{user_pkg}:LongFirst", "--top-k", "3", "--output", out)
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reranker"]["method"] == "test-a7-long" and metrics["first_stage"]["name"] == "test-a7-short"
    first = (out / "run.trec").read_text().splitlines()[0].split()
    assert first[2] == "d2"  # the retriever's 3 shortest, the longest of them first


@pytest.mark.parametrize(("target", "message"), [
    ("NotAHead", r"a7user:NotAHead is a class, not a subclass of rerank\.Reranker"),
    ("KeepsYesNo", r"a7user:KeepsYesNo has method 'yes-no', the name of rerank\.methods\.yes_no\.head:YesNoReranker"),
    ("Missing", r"'a7user:Missing' cannot be imported: module 'a7user' has no 'Missing'"),
])
def test_a_module_class_name_is_checked_as_a_registration(user_pkg: str, target: str, message: str,
                                                          fresh: None) -> None:
    with pytest.raises(ConfigError, match=message):
        heads_registry.get_reranker_class(f"{user_pkg}:{target}")
    with pytest.raises(ConfigError, match=r"a7user:LongFirst is a class, not a subclass of .*FirstStage"):
        build_retriever(f"{user_pkg}:LongFirst", "unused")
    with pytest.raises(ConfigError, match="unknown reranker 'a7user'"):  # a plain name is never routed to a module
        heads_registry.get_reranker_class(user_pkg)


# ---------------------------------------------------------------- registration checks


def test_registration_refuses_what_cannot_be_a_reranker_or_retriever(fresh: None) -> None:
    def factory() -> None:
        return None

    class NotFS:
        name = "x"

    for name, target, message in (
            ("test-a7-fn", factory, r"factory is a function, not a subclass of rerank\.Reranker"),
            ("test-a7-not", NotFS, r"NotFS is a class, not a subclass of rerank\.Reranker"),
            ("my head!", Longest, r"reranker name 'my head!' is not valid: a name is letters, digits"),
            ("test-a7-none", None, r"reranker 'test-a7-none': the target is None")):
        with pytest.raises(ConfigError, match=message):
            heads_registry.register_reranker(name, target)
        assert name not in heads_registry.available_rerankers()
    with pytest.raises(ConfigError, match=r"NotFS is a class, not a subclass of rerank\.retrieval\.base\.FirstStage"):
        retrieval_base.register_retriever("test-a7-notfs", NotFS)
    assert "test-a7-notfs" not in retrieval_base.available_retrievers()


def test_a_user_name_is_not_replaced_silently(fresh: None, user_pkg: str) -> None:
    class Other(Longest):
        pass

    heads_registry.register_reranker("test-a7-longest", Longest)
    heads_registry.register_reranker("test-a7-longest", Longest)  # the same class again: no change
    with pytest.raises(ConfigError, match=r"reranker name 'test-a7-longest' is registered to .*Longest; .*Other "
                                          r"cannot replace it: choose another name, or pass replace=True"):
        heads_registry.register_reranker("test-a7-longest", Other)
    assert heads_registry.get_reranker_class("test-a7-longest") is Longest
    heads_registry.register_reranker("test-a7-longest", Other, replace=True)
    assert heads_registry.get_reranker_class("test-a7-longest") is Other
    # a string registration that fails its check when imported is no longer listed, and says why again
    heads_registry.register_reranker("test-a7-wrong", f"{user_pkg}:LongFirst")
    for _ in range(2):
        with pytest.raises(ConfigError, match="has method 'test-a7-long' but is registered as 'test-a7-wrong'"):
            heads_registry.get_reranker_class("test-a7-wrong")
    assert "test-a7-wrong" not in heads_registry.available_rerankers()


def test_a_factory_returning_none_is_a_one_line_error(fresh: None, beir: Path) -> None:
    class Forgot(FirstStage):
        name = "test-a7-forgot"

        @classmethod
        def from_dataset(cls, dataset, **options):  # type: ignore[no-untyped-def]
            cls()  # forgot the return

        def retrieve(self, queries, k):  # type: ignore[no-untyped-def]
            return {}

    retrieval_base.register_retriever("test-a7-forgot", Forgot)
    with pytest.raises(ConfigError, match=r"retriever 'test-a7-forgot': .*Forgot\.from_dataset returned NoneType, "
                                          r"not a FirstStage"):
        build_retriever("test-a7-forgot", str(beir))
    with pytest.raises(ConfigError, match="from_dataset returned NoneType"):
        run_eval(EvalConfig(dataset=str(beir), retriever="test-a7-forgot"), progress=False)


# ---------------------------------------------------------------- workers


def test_user_registrations_reach_spawned_workers(fresh: None, user_pkg: str, beir: Path, tmp_path: Path) -> None:
    """Finding 4: a name registered in the parent was 'unknown reranker' in the eval workers."""
    import importlib

    heads_registry.register_reranker("test-a7-workers", importlib.import_module(user_pkg).WorkerHead)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        run_eval(EvalConfig(dataset=str(beir), first_stage=str(beir / "run.trec"), reranker="test-a7-workers",
                            top_k=4, workers=workers, output=str(out)), progress=False)
        runs[workers] = (out / "run.trec").read_text()
    assert runs[1] == runs[2] and runs[1].splitlines()[0].split()[2] == "d3"


def test_a_head_defined_in_a_scripts_main_is_a_one_line_error_with_workers(beir: Path, tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(f'''
        from rerank.errors import ConfigError
        from rerank.eval.pipeline import EvalConfig, run_eval
        from rerank.heads.base import Reranker, RerankerConfig
        from rerank.heads.registry import register_reranker

        if __name__ == "__main__":
            class InMain(Reranker):
                method = "test-a7-main"
                config_class = RerankerConfig

                def score_candidates(self, query, candidates):
                    return [0.0 for _ in candidates]

            register_reranker("test-a7-main", InMain)
            cfg = dict(dataset={str(beir)!r}, first_stage={str(beir / "run.trec")!r}, reranker="test-a7-main")
            run_eval(EvalConfig(**cfg, output={str(tmp_path / "one")!r}), progress=False)
            print("workers=1 ok")
            try:
                run_eval(EvalConfig(**cfg, workers=2, output={str(tmp_path / "two")!r}), progress=False)
            except ConfigError as e:
                print("ERROR", e)
        '''))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and "workers=1 ok" in lines, done.stderr[-2000:]
    error = [line for line in lines if line.startswith("ERROR")]
    assert error == ["ERROR reranker 'test-a7-main' (__main__:InMain) is defined in the script run as __main__, which "
                     "a worker process cannot import: move the class into a module, or use workers=1"], done.stdout


def test_a_reranker_factory_returning_none_is_a_one_line_error(fresh: None) -> None:
    class ForgotHead(Reranker):
        method = "test-a7-forgot-head"
        config_class = RerankerConfig

        @classmethod
        def from_options(cls, model=None, backend="transformers", **options):  # type: ignore[no-untyped-def]
            cls(RerankerConfig())  # forgot the return

        def score_candidates(self, query, candidates):  # type: ignore[no-untyped-def]
            return [0.0 for _ in candidates]

    heads_registry.register_reranker("test-a7-forgot-head", ForgotHead)
    with pytest.raises(ConfigError, match=r"reranker 'test-a7-forgot-head': .*ForgotHead\.from_options returned "
                                          r"NoneType, not a Reranker"):
        Reranker.load("test-a7-forgot-head")


def test_a_suite_resolves_a_module_class_reranker_and_a_folders_name_as_plain(user_pkg: str, tmp_path: Path) -> None:
    """A suite checks a module:Class head's options (it was taken for a model folder); a folder's recorded method
    is never imported."""
    from rerank.eval.suites import _reranker_class

    cls, trained = _reranker_class(EvalConfig(dataset="unused", reranker=f"{user_pkg}:LongFirst"))
    assert cls is not None and cls.__name__ == "LongFirst" and trained == {}
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / "rerank.json").write_text(json.dumps({"kind": "reranker", "method": f"{user_pkg}:LongFirst"}))
    with pytest.raises(ConfigError, match="rerank.json"):
        _reranker_class(EvalConfig(dataset="unused", reranker=str(folder)))


def test_a_monot5_subclass_declares_template_keys_of_its_own(tmp_path: Path) -> None:
    """Seq2seq heads pass their class to the template check, so a subclass's ``template_keys`` count."""
    from typing import ClassVar

    from rerank.methods.monot5.head import MonoT5Reranker

    class Tagged(MonoT5Reranker):
        template_keys: ClassVar[frozenset[str]] = frozenset({"tag"})

    template = {"user": "Query: {{ query }} Document: {{ document }} Relevant:", "positive": "true",
                "negative": "false", "tag": "x"}
    with pytest.raises(ConfigError) as info:
        Tagged.from_options(model=str(tmp_path / "no-model"), template=template)
    assert "tag" not in str(info.value)  # refused for the missing model, not for its declared key
    with pytest.raises(ConfigError, match="tag"):
        MonoT5Reranker.from_options(model=str(tmp_path / "no-model"), template=template)


def test_a_cell_key_reads_a_user_heads_declared_template_keys(fresh: None) -> None:
    """The leaderboard/suite probe of the rendered template checks it as the head does, declared keys included."""
    from typing import ClassVar

    from rerank.eval.suites import reranker_template
    from rerank.methods.yes_no.head import YesNoReranker

    class Tagged(YesNoReranker):
        method = "test-a7-tagged"
        template_keys: ClassVar[frozenset[str]] = frozenset({"tag"})

    heads_registry.register_reranker("test-a7-tagged", Tagged)
    template = {"user": "Q: {{ query }} D: {{ document }}", "positive": "yes", "negative": "no", "tag": "x"}
    got = reranker_template(EvalConfig(dataset="unused", reranker="test-a7-tagged", model="some/model",
                                       reranker_options={"template": template}))
    assert got is not None and got.extra["tag"] == "x"
    assert Tagged.configured_template(Tagged.config_class()).name == "yes_no"  # the default, read without a model
