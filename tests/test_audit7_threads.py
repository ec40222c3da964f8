"""A reranker across threads, forks and copies: a child forked while a parent thread is inside a call ranks, a
reranker pickles and deep-copies after a call, and overlapping ``warning_policy`` blocks leave the set policy."""

from __future__ import annotations

import copy
import logging
import os
import pickle
import signal
import threading
from pathlib import Path

import pytest

from rerank import Reranker
from rerank.heads.base import CallWarnings
from rerank.types import Candidate, Query


class _Blocking(Reranker):
    """Scores by document length; a call waits for ``release`` once ``entered`` is set (while ``gate`` is set)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.entered, self.release = threading.Event(), threading.Event(), threading.Event()

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        if self.gate.is_set():
            self.entered.set()
            self.release.wait(30)
        return [float(len(c.doc.text)) for c in candidates]


class _Failing(Reranker):
    """Every call records one model output that failed to parse."""

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        self.stats.record(failed=True, example="not a ranking")
        return [0.0] * len(candidates)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_forked_during_a_call_in_another_thread_ranks() -> None:
    """The child gets its own call lock: the parent thread that held it at the fork does not exist there."""
    head = _Blocking()
    assert head.rerank("q", ["bb", "a"]).doc_ids == ["0", "1"]  # the call lock exists before the fork
    head.gate.set()
    busy = threading.Thread(target=head.rerank, args=("q", ["a", "bb"]))
    busy.start()
    assert head.entered.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only after ranking
        code = 1
        try:
            signal.alarm(20)
            head.gate.clear()
            code = 0 if head.rerank("q", ["a", "bbb", "cc"]).doc_ids == ["1", "2", "0"] else 3
        finally:
            os._exit(code)
    try:
        for _ in range(200):  # up to 10 s
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            threading.Event().wait(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the call lock held by the parent's busy thread")
    finally:
        head.release.set()
        busy.join(10)
    assert os.waitstatus_to_exitcode(status) == 0


def test_pickle_and_deepcopy_after_a_call_give_a_working_reranker(tiny_bert_dir: Path) -> None:
    head = Reranker.load("cross-encoder", model=str(tiny_bert_dir))
    docs = ["the cat sat on the mat", "a dog barked", "cats like mats"]
    want = [(r.doc.id, r.score) for r in head.rerank("cat mat", docs).results]
    for copied in (pickle.loads(pickle.dumps(head)), copy.deepcopy(head)):
        got = [(r.doc.id, r.score) for r in copied.rerank("cat mat", docs).results]
        assert [d for d, _ in got] == [d for d, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)
        assert copied._serialising_lock() is not head._serialising_lock()
    assert head.rerank("cat mat", docs).doc_ids == [d for d, _ in want]


def test_pickle_during_a_policy_block_keeps_the_set_policy() -> None:
    head = _Failing()
    head.call_warnings = CallWarnings(every=5)
    with head.warning_policy(CallWarnings(hold=True)):
        head.rerank("q", ["a"])
        copied = pickle.loads(pickle.dumps(head))
        assert head.call_warnings.hold
    assert copied.call_warnings.every == 5 and not copied.call_warnings.hold
    assert head.call_warnings.every == 5


def test_overlapping_policy_blocks_from_two_threads_restore_the_default(caplog: pytest.LogCaptureFixture) -> None:
    """A enters, B enters, A exits, B exits: afterwards the reranker logs each warning again."""
    head = _Failing()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, CallWarnings] = {}

    def a() -> None:
        with head.warning_policy(CallWarnings(hold=True)):
            a_in.set()
            b_in.wait(10)
        seen["after a"] = head.call_warnings
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        with head.warning_policy(CallWarnings(every=600)) as policy:
            seen["b"] = policy
            b_in.set()
            a_out.wait(10)

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen["after a"] is seen["b"]  # B's block is still open when A's exits
    policy = head.call_warnings
    assert not policy.hold and policy.every is None
    with caplog.at_level(logging.WARNING, logger="rerank.heads.base"):
        head.rerank("q", ["a", "b"])
        head.rerank("q", ["a", "b"])
    logged = [r.getMessage() for r in caplog.records if "failed to parse" in r.getMessage()]
    assert len(logged) == 2 and head.stats.parse_failures == 2


def test_nested_policy_blocks_and_a_set_policy() -> None:
    head = _Failing()
    own = CallWarnings(every=30)
    head.call_warnings = own
    outer, inner = CallWarnings(hold=True), CallWarnings(every=1)
    with head.warning_policy(outer):
        with head.warning_policy(inner):
            assert head.call_warnings is inner
        assert head.call_warnings is outer
    assert head.call_warnings is own

