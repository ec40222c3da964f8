"""No dead flags: an option ``rerank eval`` / ``rerank index`` would accept and then ignore is a one-line error
(exit 2) before any work, and the suite path honours the reranker options the single-dataset path honours."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerank.errors import ConfigError
from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.eval.suites import run_suite
from rerank.parallel import WorkerPool
from rerank.retrieval.index import DenseIndex, EmbeddingSet, IndexConfig
from tests.test_suites import CountingReranker, OverlapRetriever, _dl_folder  # noqa: F401 - registers test-*

RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture()
def dl(tmp_path: Path) -> Path:
    """A data root with a tiny DL19 reranking folder (5 passages, 2 queries, its BM25 run)."""
    _dl_folder(tmp_path / "data", "dl19-bm25-top100")
    return tmp_path / "data"


def _one_line_error(rc: int, err: str, *names: str) -> None:
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for name in names:
        assert name in err, err


# ---------------------------------------------------------------- rerank eval: reranker options without a reranker


RERANKER_ONLY = [
    ("--backend", "openai"), ("--base-url", "http://127.0.0.1:8000/v1"), ("--reranker-set", "batch_size=4"),
    ("--allow-new-head",), ("--top-k", "5"), ("--top-k", "100"), ("--workers", "2"), ("--workers", "1"),
    ("--no-llm-cache",), ("--log-llm-io", "LOG"),
]


@pytest.mark.parametrize("option", RERANKER_ONLY, ids=lambda o: " ".join(o))
def test_reranker_options_without_a_reranker_are_refused(option: tuple[str, ...], dl: Path, tmp_path: Path,
                                                         run_cli: RunCli) -> None:
    """Each was accepted and ignored (and recorded in metrics.json as if used); given at its default value too."""
    folder = dl / "dl19-bm25-top100"
    argv = [str(tmp_path / "io.jsonl") if a == "LOG" else a for a in option]
    rc, _, err = run_cli("eval", "--dataset", folder, "--first-stage", folder / "bm25_top100.trec", *argv,
                         "--output", tmp_path / "o")
    _one_line_error(rc, err, option[0], "--reranker")
    assert not (tmp_path / "o").exists() and not (tmp_path / "io.jsonl").exists()


def test_reranker_config_without_a_reranker_is_refused(dl: Path, tmp_path: Path, run_cli: RunCli) -> None:
    folder = dl / "dl19-bm25-top100"
    (tmp_path / "r.yaml").write_text("batch_size: 4\n")
    rc, _, err = run_cli("eval", "--dataset", folder, "--retriever", "test-overlap", "--reranker-config",
                         tmp_path / "r.yaml", "--workers", "2", "--output", tmp_path / "o")
    _one_line_error(rc, err, "--reranker-config, --workers", "drop them")


def test_reranker_options_with_a_reranker_are_used(dl: Path, tmp_path: Path, run_cli: RunCli) -> None:
    folder = dl / "dl19-bm25-top100"
    rc, _, err = run_cli("eval", "--dataset", folder, "--first-stage", folder / "bm25_top100.trec", "--reranker",
                         "test-counting", "--top-k", "2", "--output", tmp_path / "o")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["config"]["top_k"] == 2 and metrics["config"]["backend"] == "transformers"
    assert metrics["config"]["split"] == "test" and metrics["config"]["workers"] == 1
    q1 = [line.split()[2] for line in (tmp_path / "o" / "run.trec").read_text().splitlines() if line[:2] == "q1"]
    assert q1 == ["p1", "p0", "p2", "p3", "p4"]  # the top 2 reversed, the rest in the run's order


# ---------------------------------------------------------------- rerank eval: retriever options without a retriever


@pytest.mark.parametrize("option", [("--depth", "3"), ("--depth", "1000"), ("--retriever-set", "k1=1.2"),
                                    ("--retriever-config", "CFG")], ids=lambda o: " ".join(o))
def test_retriever_options_with_a_first_stage_run_are_refused(option: tuple[str, ...], dl: Path, tmp_path: Path,
                                                              run_cli: RunCli) -> None:
    """A --first-stage run is read as it is: --depth did not cut it, the retriever options configured nothing."""
    folder = dl / "dl19-bm25-top100"
    (tmp_path / "bm25.yaml").write_text("k1: 1.2\n")
    argv = [str(tmp_path / "bm25.yaml") if a == "CFG" else a for a in option]
    rc, _, err = run_cli("eval", "--dataset", folder, "--first-stage", folder / "bm25_top100.trec", *argv,
                         "--output", tmp_path / "o")
    _one_line_error(rc, err, option[0], "--retriever NAME", "--first-stage")
    assert not (tmp_path / "o").exists()


def test_depth_with_a_retriever_is_used(dl: Path, tmp_path: Path, run_cli: RunCli) -> None:
    """Without a reranker the retriever returned max(--depth, the unused --top-k default 100): --depth 3 was lost."""
    folder = dl / "dl19-bm25-top100"
    rc, _, err = run_cli("eval", "--dataset", folder, "--retriever", "test-overlap", "--depth", "3",
                         "--output", tmp_path / "o")
    assert rc == 0, err
    lines = (tmp_path / "o" / "run.trec").read_text().splitlines()
    assert len([x for x in lines if x.startswith("q1 ")]) == 3
    rc, _, err = run_cli("eval", "--dataset", folder, "--retriever", "test-overlap", "--depth", "4", "--reranker",
                         "test-counting", "--top-k", "2", "--output", tmp_path / "r")
    assert rc == 0, err
    lines = (tmp_path / "r" / "run.trec").read_text().splitlines()
    assert len([x for x in lines if x.startswith("q1 ")]) == 4


def test_depth_below_top_k_with_a_reranker_is_refused(dl: Path, tmp_path: Path, run_cli: RunCli) -> None:
    """The first stage retrieved max(--depth, --top-k), so a --depth below --top-k changed nothing."""
    folder = dl / "dl19-bm25-top100"
    for top_k in (("--top-k", "20"), ()):
        rc, _, err = run_cli("eval", "--dataset", folder, "--retriever", "test-overlap", "--depth", "10", "--reranker",
                             "test-counting", *top_k, "--output", tmp_path / "o")
        _one_line_error(rc, err, "--depth 10 is below --top-k", "--top-k 10")
    assert not (tmp_path / "o").exists()


def test_retriever_options_with_a_suite_reranking_its_folders_runs_are_refused(dl: Path, tmp_path: Path,
                                                                               run_cli: RunCli) -> None:
    rc, _, err = run_cli("eval", "--suite", "dl", "--data-root", dl, "--depth", "50", "--output", tmp_path / "o")
    _one_line_error(rc, err, "--depth", "--suite dl")


def test_the_api_refuses_settings_it_would_ignore(dl: Path) -> None:
    folder = dl / "dl19-bm25-top100"
    common = {"dataset": str(folder), "first_stage": str(folder / "bm25_top100.trec")}
    with pytest.raises(ConfigError, match="retriever_options"):
        run_eval(EvalConfig(**common, retriever_options={"k1": 1.2}), progress=False)
    with pytest.raises(ConfigError, match="workers configure a reranker"):
        run_eval(EvalConfig(**common, workers=2), progress=False)
    with pytest.raises(ConfigError, match="model, reranker_options, log_llm_io configure a reranker"):
        run_eval(EvalConfig(**common, model="m", reranker_options={"a": 1}, log_llm_io="x.jsonl"), progress=False)


# ---------------------------------------------------------------- rerank eval --suite


def test_split_with_a_suite_is_refused(dl: Path, tmp_path: Path, run_cli: RunCli) -> None:
    """The suite scored each member on its own split whatever --split said."""
    for split in ("dev", "test"):
        rc, _, err = run_cli("eval", "--suite", "dl", "--data-root", dl, "--split", split, "--output", tmp_path / "o")
        _one_line_error(rc, err, "--split", "--suite")
    with pytest.raises(ConfigError, match="split 'dev' does not apply to a suite"):
        run_suite("dl", EvalConfig(dataset="", data_root=str(dl), split="dev"), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_suite_caches_and_logs_llm_calls_as_eval_does(dl: Path, tiny_llm_dir: Path, tmp_path: Path,
                                                        run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite loaded its reranker outside the LLM cache scope: --log-llm-io was never written and every call
    reached the model, while metrics.json said llm_cache: true."""
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    args = ("eval", "--suite", "dl", "--data-root", dl, "--reranker", "yes-no", "--model", tiny_llm_dir,
            "--top-k", "2")
    for run in ("a", "b"):
        rc, _, err = run_cli(*args, "--output", tmp_path / run, "--log-llm-io", tmp_path / f"{run}.jsonl")
        assert rc == 0, err
    a = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 4 and not any(x["cached"] for x in a) and all(x["cached"] for x in b)
    metrics = json.loads((tmp_path / "b" / "dl19-bm25-top100" / "metrics.json").read_text())
    assert metrics["config"]["llm_cache"] is True and metrics["reranker"]["backend"]["llm_cache_hits"] == 4


class InlinePool(WorkerPool):
    """:class:`WorkerPool`'s interface in this process (no spawned processes): the suite's plumbing, fast."""

    started = 0

    def __init__(self, workers: int, build: Callable[..., Any], build_args: Iterable[Any] = ()) -> None:
        self.workers, self.threads = workers, 1
        self.states = [build(*build_args) for _ in range(workers)]
        type(self).started += 1

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any],
            done: Callable[[int], None] | None = None) -> list[Any]:
        out = []
        for i, item in enumerate(items):
            out.append(fn(self.states[i % self.workers], item))
            if done is not None:
                done(i)
        return out

    def broadcast(self, fn: Callable[[Any, Any], Any], item: Any) -> list[Any]:
        return [fn(state, item) for state in self.states]

    def close(self) -> None:
        pass


def test_a_suite_reranks_in_one_pool_of_workers(dl: Path, tmp_path: Path, run_cli: RunCli,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--suite --workers 2 failed after the model loaded ("give its method and model, not a reranker"); now the pool
    is started once and shared by every dataset, and the rankings are those of one process."""
    _dl_folder(dl, "dl20-bm25-top100")
    base = ("eval", "--suite", "dl", "--data-root", dl, "--reranker", "test-counting", "--top-k", "2")
    rc, _, err = run_cli(*base, "--output", tmp_path / "one")
    assert rc == 0, err
    from rerank.eval import pipeline

    monkeypatch.setattr(pipeline, "WorkerPool", InlinePool)
    InlinePool.started = 0
    rc, _, err = run_cli(*base, "--workers", "2", "--output", tmp_path / "two")
    assert rc == 0, err
    assert InlinePool.started == 1
    for name in ("dl19-bm25-top100", "dl20-bm25-top100"):
        metrics = json.loads((tmp_path / "two" / name / "metrics.json").read_text())
        assert metrics["reranker"]["workers"] == {"processes": 2, "threads_each": 1}
        assert (tmp_path / "two" / name / "run.trec").read_bytes() == (tmp_path / "one" / name / "run.trec").read_bytes()


# ---------------------------------------------------------------- rerank index / IndexConfig


@pytest.mark.parametrize(("index_type", "option"), [
    ("flat", {"hnsw_m": 8}), ("flat", {"nprobe": 4}), ("flat", {"pq_m": 8}), ("hnsw", {"nlist": 4}),
    ("hnsw", {"pq_nbits": 4}), ("ivfpq", {"ef_search": 64}), ("ivfpq", {"ef_construction": 40}),
])
def test_index_config_refuses_options_its_type_does_not_read(index_type: str, option: dict[str, int]) -> None:
    name = next(iter(option))
    with pytest.raises(ConfigError, match=f"index option {name}=.* applies to .* indexes only, and this one is "
                                          f"{index_type}"):
        IndexConfig(index_type, **option)  # type: ignore[arg-type]


def test_index_config_keeps_the_options_its_type_reads() -> None:
    assert IndexConfig("hnsw", hnsw_m=8, ef_construction=40, ef_search=64).options() == {
        "hnsw_m": 8, "ef_construction": 40, "ef_search": 64}
    assert IndexConfig("ivfpq", nlist=4, pq_m=8, pq_nbits=4, nprobe=2).options() == {
        "nlist": 4, "pq_m": 8, "pq_nbits": 4, "nprobe": 2}
    assert IndexConfig("flat").options() == {}
    with pytest.raises(ConfigError, match="unknown index type 'ivf'"):
        IndexConfig("ivf")  # type: ignore[arg-type]


@dataclass
class _Settings:
    pooling: str = "mean"


class _Encoder:
    settings = _Settings()
    name_or_path = "enc"


def test_the_manifest_records_only_the_options_the_index_reads() -> None:
    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    key = {"model_hash": "m", "corpus_sha256": "c", "dtype": "float32", "title_sep": " "}
    emb = EmbeddingSet([f"d{i}" for i in range(20)], x, {"key": key})
    flat = DenseIndex.build(emb, _Encoder(), IndexConfig("flat"))  # type: ignore[arg-type]
    assert flat.manifest["index_params"] == {}
    hnsw = DenseIndex.build(emb, _Encoder(), IndexConfig("hnsw", hnsw_m=8))  # type: ignore[arg-type]
    assert hnsw.manifest["index_params"] == {"hnsw_m": 8, "ef_construction": 200, "ef_search": 128}


@pytest.mark.parametrize(("argv", "names"), [
    (["--hnsw-m", "32"], ["--hnsw-m applies to --index-type hnsw only, not flat"]),
    (["--nprobe", "4", "--pq-nbits", "8"], ["--pq-nbits, --nprobe apply to --index-type ivfpq only"]),
    (["--index-type", "hnsw", "--nlist", "4", "--ef-search", "64"], ["--nlist applies to --index-type ivfpq only"]),
    (["--index-type", "ivfpq", "--ef-construction", "40"], ["--ef-construction", "hnsw only, not ivfpq"]),
])
def test_index_refuses_flags_its_index_type_does_not_read(argv: list[str], names: list[str], tmp_path: Path,
                                                          run_cli: RunCli) -> None:
    """Before the model loads (there is none here) or the corpus is read; even a flag given at its default."""
    rc, _, err = run_cli("index", "--model", tmp_path / "no-model", "--dataset", tmp_path / "no-data", "--output",
                         tmp_path / "idx", *argv)
    _one_line_error(rc, err, *names)
    assert not (tmp_path / "idx").exists()


# ---------------------------------------------------------------- LLM-call flags with a reranker that makes no LLM calls


LLM_HEADS = {"bge-reranker-v2-gemma", "erank", "first", "grouprank", "listwise", "qwen3-reranker", "setwise", "yes-no"}


def test_the_llm_heads_are_those_whose_backend_the_cache_wraps() -> None:
    from rerank.backends.cache import uses_llm_backend
    from rerank.heads.registry import available_rerankers

    assert {m for m in available_rerankers() if uses_llm_backend(m)} == LLM_HEADS


NOT_LLM = ["cross-encoder", "bi-encoder", "colbert", "monot5", "duot5", "remote", "test-counting"]
LLM_FLAGS = [("--no-llm-cache",), ("--log-llm-io", "LOG"), ("--no-llm-cache", "--log-llm-io", "LOG")]


@pytest.mark.parametrize("flags", LLM_FLAGS, ids=lambda o: " ".join(o))
@pytest.mark.parametrize("method", NOT_LLM)
def test_llm_flags_with_a_reranker_that_makes_no_llm_calls_are_refused(method: str, flags: tuple[str, ...], dl: Path,
                                                                      tmp_path: Path, run_cli: RunCli) -> None:
    """They were accepted and did nothing (no log written, nothing cached): refused naming the reranker, before the
    model loads (the model folder here holds no model a head could load)."""
    folder = dl / "dl19-bm25-top100"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    model = () if method in ("remote", "test-counting") else ("--model", tmp_path / "m")
    argv = [str(tmp_path / "io.jsonl") if a == "LOG" else a for a in flags]
    given = ", ".join(a for a in flags if a.startswith("--"))
    rc, _, err = run_cli("eval", "--dataset", folder, "--first-stage", folder / "bm25_top100.trec", "--reranker",
                         method, *model, *argv, "--output", tmp_path / "o")
    _one_line_error(rc, err, f"{given} appl", f"reranker {method} makes none")
    if "--no-llm-cache" not in flags:  # rerank rank has --log-llm-io only
        rc, _, err = run_cli("rank", "--dataset", folder, "--first-stage", folder / "bm25_top100.trec", "--reranker",
                             method, *model, *argv, "--output", tmp_path / "o.trec")
        _one_line_error(rc, err, "--log-llm-io applies", f"reranker {method} makes none")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.trec").exists()
    assert not (tmp_path / "io.jsonl").exists()


def test_llm_flags_with_an_llm_head_pass_the_check() -> None:
    from rerank.cli.common import check_llm_flags

    for method in LLM_HEADS:
        check_llm_flags(method, ["--no-llm-cache", "--log-llm-io"])


def test_the_api_refuses_log_llm_io_where_nothing_would_be_logged(dl: Path, tmp_path: Path) -> None:
    """run_eval and run_suite: log_llm_io with a method that is no LLM head, with a given reranker that is none, and
    with a given LLM head not loaded to log there; llm_cache off is accepted (the leaderboard's pooled cells)."""
    from rerank.backends.cache import CachingBackend
    from rerank.backends.scripted import ScriptedBackend
    from rerank.methods.setwise.head import SetwiseReranker
    from rerank.testing import build_tokenizer

    folder = dl / "dl19-bm25-top100"
    log = str(tmp_path / "io.jsonl")
    common = {"dataset": str(folder), "first_stage": str(folder / "bm25_top100.trec"), "output": str(tmp_path / "o")}
    with pytest.raises(ConfigError, match="reranker test-counting makes none"):
        run_eval(EvalConfig(**common, reranker="test-counting", log_llm_io=log), progress=False)
    with pytest.raises(ConfigError, match="reranker test-counting makes none"):
        run_eval(EvalConfig(**common, log_llm_io=log), reranker=CountingReranker(), progress=False)
    with pytest.raises(ConfigError, match="reranker test-counting makes none"):
        run_suite("dl", EvalConfig(dataset="", data_root=str(dl), reranker="test-counting", log_llm_io=log),
                  tmp_path / "s")
    inner = ScriptedBackend(build_tokenizer(), lambda text, ids: [0.0] * len(ids))
    with pytest.raises(ConfigError, match="the given setwise reranker does not log there"):
        run_eval(EvalConfig(**common, log_llm_io=log), reranker=SetwiseReranker(backend=inner), progress=False)
    other = CachingBackend(inner, "scripted", tmp_path / "c.sqlite", log_path=str(tmp_path / "other.jsonl"))
    with pytest.raises(ConfigError, match="does not log there"):
        run_eval(EvalConfig(**common, log_llm_io=log), reranker=SetwiseReranker(backend=other), progress=False)
    other.close()
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists() and not (tmp_path / "io.jsonl").exists()
    logged = CachingBackend(inner, "scripted", tmp_path / "c.sqlite", log_path=log)
    run_eval(EvalConfig(**common, top_k=2, log_llm_io=log), reranker=SetwiseReranker(backend=logged), progress=False)
    logged.close()
    assert (tmp_path / "io.jsonl").read_text().count("\n") > 0
    metrics = run_eval(EvalConfig(**common, reranker="test-counting", llm_cache=False), progress=False)
    assert metrics["config"]["llm_cache"] is False


# ---------------------------------------------------------------- a suite's shared reranker: each dataset's own counts


@pytest.fixture(scope="module")
def scripted_tokenizer() -> Any:
    from rerank.testing import build_tokenizer

    return build_tokenizer()


def _cached_head(kind: str, tokenizer: Any, cache: Path) -> Any:
    """A setwise (forward passes) or listwise (parse repairs) head on a scripted backend whose calls are cached."""
    from rerank.backends.cache import CachingBackend
    from rerank.backends.scripted import ScriptedBackend
    from rerank.methods.listwise.head import ListwiseConfig, ListwiseReranker
    from rerank.methods.setwise.head import SetwiseConfig, SetwiseReranker

    if kind == "setwise":
        inner = ScriptedBackend(tokenizer, lambda text, ids: [-float(i) for i in range(len(ids))])
        return SetwiseReranker(SetwiseConfig(set_size=2, top_k=3),
                               backend=CachingBackend(inner, "scripted", cache))
    inner = ScriptedBackend(tokenizer, generate_fn=lambda text: "[2] > [1]")  # each answer repaired
    return ListwiseReranker(ListwiseConfig(window=3, stride=2), backend=CachingBackend(inner, "scripted", cache))


def _counts(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"parse": metrics["parse"], "forward_passes": metrics["reranker"].get("forward_passes"),
            "llm_cache_hits": metrics["reranker"]["backend"]["llm_cache_hits"]}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["setwise", "listwise"])
def test_each_dataset_of_a_suite_reports_its_own_counts(kind: str, workers: int, dl: Path, tmp_path: Path,
                                                        scripted_tokenizer: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reranker shared by a suite's datasets kept counting: the second dataset's metrics.json reported the
    forward passes, parse repairs and LLM cache hits of both. Each run is made twice on its own cache, so the second
    one's calls are cache hits."""
    from rerank.eval import pipeline

    d20 = _dl_folder(dl, "dl20-bm25-top100")
    (d20 / "queries.jsonl").write_text('{"_id": "q1", "text": "c"}\n{"_id": "q2", "text": "d"}\n')  # its own prompts
    cache: list[Path] = []
    monkeypatch.setattr(pipeline, "WorkerPool", InlinePool)
    monkeypatch.setattr(pipeline, "load_reranker", lambda cfg: _cached_head(kind, scripted_tokenizer, cache[0]))

    def given() -> Any:
        return _cached_head(kind, scripted_tokenizer, cache[0]) if workers == 1 else None

    method = {"reranker": kind} if workers > 1 else {}
    cache.append(tmp_path / "suite.sqlite")
    for _ in range(2):
        run_suite("dl", EvalConfig(dataset="", data_root=str(dl), workers=workers, **method), tmp_path / "suite",
                  reranker=given(), progress=False)
    first = json.loads((tmp_path / "suite" / "dl19-bm25-top100" / "metrics.json").read_text())
    second = json.loads((tmp_path / "suite" / "dl20-bm25-top100" / "metrics.json").read_text())
    cache[0] = tmp_path / "solo.sqlite"
    solo_cfg = EvalConfig(dataset=str(d20), first_stage=str(d20 / "bm25_top100.trec"), workers=workers, **method)
    for _ in range(2):
        solo = run_eval(solo_cfg, reranker=given(), progress=False)
    assert _counts(second) == _counts(solo)
    assert _counts(first)["llm_cache_hits"] > 0 and _counts(first)["parse"]["outputs"] == _counts(solo)["parse"][
        "outputs"]  # both datasets made their calls (the same number), all from the cache
    if kind == "setwise":
        assert solo["reranker"]["forward_passes"] == solo["reranker"]["backend"]["llm_cache_hits"] > 0
    else:
        assert solo["parse"]["repaired"] == solo["parse"]["outputs"] == solo["reranker"]["backend"][
            "llm_cache_hits"] > 0
