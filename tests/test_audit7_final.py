"""Review of the audit-7 fixes (reviewNOP): a class registered under a package's re-export may be named by either path;
the dense probe lock and a reranker's call lock behave across fork and copy; rerank's YAML hook lives on the base the
safe dumpers share, so other libraries' representers still reach them."""

from __future__ import annotations

import copy
import os
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rerank.heads import registry as heads_registry
from rerank.retrieval import base as retrieval_base
from rerank.utils.registry import Registry


@pytest.fixture()
def reexporting_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package ``a7fin`` whose ``__init__`` re-exports a retriever and a head defined in ``a7fin.impl``."""
    pkg = tmp_path / "a7fin"
    pkg.mkdir()
    (pkg / "impl.py").write_text(textwrap.dedent('''
        from rerank.heads.base import Reranker, RerankerConfig
        from rerank.retrieval.base import FirstStage


        class Short(FirstStage):
            name = "a7fin-short"

            @classmethod
            def from_dataset(cls, dataset, **options):
                return cls()

            def retrieve(self, queries, k):
                return {}


        class Long(Reranker):
            method = "a7fin-long"
            config_class = RerankerConfig

            def score_candidates(self, query, candidates):
                return [float(len(c.doc.text)) for c in candidates]
    '''))
    (pkg / "__init__.py").write_text("from a7fin.impl import Long, Short\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for reg in (retrieval_base.RETRIEVERS, heads_registry.RERANKERS):
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
        monkeypatch.setattr(reg, "_resolved", dict(reg._resolved))
        monkeypatch.setattr(reg, "_loaders", dict(reg._loaders))
    yield "a7fin"
    for name in [m for m in sys.modules if m == "a7fin" or m.startswith("a7fin.")]:
        del sys.modules[name]


def test_a_class_registered_by_its_re_export_is_named_by_either_path(reexporting_pkg: str) -> None:
    retrieval_base.register_retriever("a7fin-short", "a7fin:Short")
    heads_registry.register_reranker("a7fin-long", "a7fin:Long")
    for path in ("a7fin:Short", "a7fin.impl:Short"):
        assert retrieval_base.RETRIEVERS.get(path).__name__ == "Short"
    for path in ("a7fin:Long", "a7fin.impl:Long"):
        assert heads_registry.get_reranker_class(path).__name__ == "Long"
    assert not Registry("thing").holds("missing", object)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_forked_while_the_dense_probe_runs_does_not_hang() -> None:
    from rerank.retrieval import dense

    held, release = threading.Event(), threading.Event()

    def probing() -> None:  # another parent thread inside a probe at the fork
        with dense._NUMBERING_LOCK:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=probing)
    thread.start()
    held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:
            ok = dense._NUMBERING_LOCK.acquire(timeout=5)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_shallow_copy_shares_the_call_lock_and_a_deep_copy_has_its_own() -> None:
    from rerank.heads.base import Reranker, RerankerConfig

    class Slow(Reranker):
        method = "test-a7fin-slow"
        config_class = RerankerConfig
        inside = 0
        most = 0

        def score_candidates(self, query, candidates):  # type: ignore[no-untyped-def]
            type(self).inside += 1
            type(self).most = max(type(self).most, type(self).inside)
            threading.Event().wait(0.05)
            type(self).inside -= 1
            return [0.0 for _ in candidates]

    head = Slow()
    head.rerank("q", ["a", "b"])  # the lock exists once a call ran
    twin = copy.copy(head)
    assert twin.__dict__["_call_lock"] is head.__dict__["_call_lock"]
    threads = [threading.Thread(target=r.rerank, args=("q", ["a", "b"])) for r in (head, twin) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Slow.most == 1  # one model, one call at a time
    assert "_call_lock" not in copy.deepcopy(head).__dict__


def test_rerank_leaves_the_dumpers_own_representer_tables_alone() -> None:
    import rerank.prompts  # noqa: F401  (registers its YAML representer on import)

    for dumper in (yaml.SafeDumper, getattr(yaml, "CSafeDumper", None)):
        if dumper is not None:
            assert "yaml_representers" not in dumper.__dict__, dumper
