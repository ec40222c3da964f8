"""Data-parallel workers (rerank.parallel): ``rerank eval --workers 2`` and ``rerank index --workers 2`` give the bytes
of one process (run, scores, embeddings), a worker's error reaches the user as one line, and the per-worker shares of
threads and GPUs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rerank.errors import ConfigError
from rerank.heads.base import RerankStats
from rerank.parallel import thread_share, worker_devices


def test_eval_with_two_workers_writes_the_bytes_of_one(tiny_beir_dir: Path, tiny_bert_dir: Path, tmp_path: Path,
                                                       run_cli) -> None:  # noqa: ANN001
    import json

    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        rc, _, err = run_cli("eval", "--dataset", tiny_beir_dir, "--retriever", "bm25", "--reranker", "cross-encoder",
                             "--model", tiny_bert_dir, "--top-k", "20", "--reranker-set", "batch_size=4",
                             "--workers", workers, "--output", out)
        assert rc == 0, err
        outs[workers] = out
    for name in ("run.trec", "scores.jsonl"):
        assert (outs[1] / name).read_bytes() == (outs[2] / name).read_bytes(), name
    metrics = json.loads((outs[2] / "metrics.json").read_text())
    assert metrics["reranker"]["workers"] == {"processes": 2, "threads_each": thread_share(2)}
    assert metrics["num_queries"] == 10 and metrics["config"]["workers"] == 2  # more queries than one chunk (8)


def test_a_worker_error_is_one_line(tiny_beir_dir: Path, tiny_bert_dir: Path, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    rc, _, err = run_cli("eval", "--dataset", tiny_beir_dir, "--retriever", "bm25", "--reranker", "cross-encoder",
                         "--model", tiny_bert_dir, "--reranker-set", "max_query_tokens=0", "--workers", "2",
                         "--output", tmp_path / "bad")
    assert rc == 2 and "max_query_tokens must be >= 1" in err and "Traceback" not in err


def test_index_with_two_workers_encodes_the_bytes_of_one(tiny_beir_dir: Path, tiny_st_dir: Path, tmp_path: Path,
                                                         run_cli, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from rerank.parallel import WorkerPool

    mapped = []
    real_map = WorkerPool.map
    monkeypatch.setattr(WorkerPool, "map", lambda self, fn, items, done=None: mapped.append(fn.__name__) or
                        real_map(self, fn, items, done))
    for workers in (1, 2):
        rc, _, err = run_cli("index", "--model", tiny_st_dir, "--dataset", tiny_beir_dir, "--output",
                             tmp_path / f"ix{workers}", "--no-cache", "--no-progress", "--batch-size", "16",
                             "--workers", workers)
        assert rc == 0, err
    assert mapped == ["_encode_task"]  # the second run's shard went to the workers
    one, two = (np.load(tmp_path / f"ix{w}" / "embeddings.npy") for w in (1, 2))
    assert one.shape == (200, 64) and one.tobytes() == two.tobytes()


def test_thread_and_gpu_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from rerank import parallel

    monkeypatch.setattr(parallel, "usable_cores", lambda: 16)
    assert [thread_share(n) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_devices(3) == [None, None, None]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert worker_devices(2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert worker_devices(2) == ["3", "5"]
    with pytest.raises(ConfigError, match="one GPU per worker, but 2 are visible"):
        worker_devices(3)


def test_stats_of_workers_add_up() -> None:
    a, b = RerankStats(), RerankStats()
    for i in range(4):
        a.record(failed=True, example=f"a{i}")
    b.record(repaired=True, example="b")
    b.record()
    b.fitted_prompts = 3
    a.merge(b)
    assert (a.outputs, a.parse_failures, a.repaired, a.fitted_prompts) == (6, 4, 1, 3)
    assert a.failure_examples == ["a0", "a1", "a2", "a3", "b"]


def test_pooled_description_sums_each_workers_counters() -> None:
    """The workers' descriptions merge into the first's, with forward passes and LLM cache hits summed."""
    from rerank.eval.pipeline import _pooled_description

    descs = [{"method": "setwise", "forward_passes": 3, "backend": {"name": "t", "llm_cache_hits": 2}},
             {"method": "setwise", "forward_passes": 5, "backend": {"name": "t", "llm_cache_hits": 4}}]
    merged = _pooled_description(descs)
    assert merged == {"method": "setwise", "forward_passes": 8, "backend": {"name": "t", "llm_cache_hits": 6}}
    assert descs[0] == {"method": "setwise", "forward_passes": 3, "backend": {"name": "t", "llm_cache_hits": 2}}
    assert _pooled_description([{"method": "yes-no"}, {"method": "yes-no"}]) == {"method": "yes-no"}


def _no_state() -> None:
    return None


def _wait_for_partner(state: None, item: tuple[int, str]) -> int:
    """Item 0 waits (up to 60 s) for item 1's marker file; item 1 writes it."""
    import time

    i, folder = item
    marker = Path(folder) / "one-done"
    if i == 1:
        marker.write_text("1")
        return i
    deadline = time.monotonic() + 60
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("item 1 never ran: it was queued behind item 0")
        time.sleep(0.05)
    return i


def test_no_item_waits_behind_a_busy_worker_while_another_is_idle(tmp_path: Path) -> None:
    """Two items, two workers: each gets one, so item 1 runs while item 0 is still working (queued behind item 0 in
    the same worker, it would never run and item 0 would time out)."""
    from rerank.parallel import WorkerPool

    with WorkerPool(2, _no_state) as pool:
        assert pool.map(_wait_for_partner, [(0, str(tmp_path)), (1, str(tmp_path))]) == [0, 1]


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    """A parent killed without closing its pool (``kill -9``, the OOM killer) leaves no worker behind: each idle worker
    sees it is orphaned and exits (they used to wait on their task queue for ever, each holding its model)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, time\n"
        "from rerank.parallel import WorkerPool\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(2, os.getpid)\n"
        "    print(' '.join(str(p.pid) for p in pool._procs), flush=True)\n"
        "    time.sleep(120)\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)

        def alive(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            return True

        deadline = time.monotonic() + 20
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in pids if alive(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
        assert not left, "workers outlived their killed parent"
    finally:
        parent.kill()
