"""Run inside the vLLM venv: the same prompts through the ``vllm`` backend and the ``openai`` backend on a real server.

Usage: ``python rank_with_backends.py SPEC.json OUT.json``. SPEC holds the model folder, token-id prompts, the ids
to score, generation settings and an optional ranking task (head method, queries, documents). OUT gets, per
backend, the log-probs, greedy generations, rankings (through the spec's head) and timings; the main test
suite compares them with the transformers backend. ``vllm serve`` is started on a free loopback port (while the in-process engine runs) and stopped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SERVED_NAME = "tiny"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exercise(backend: Any, spec: dict[str, Any], load_s: float) -> dict[str, Any]:
    """Log-probs and greedy generations of the spec's prompts, timed."""
    from rerank.backends.base import GenerationConfig

    t = time.perf_counter()
    logprobs = backend.next_token_logprobs(spec["prompts"], spec["token_ids"])
    lp_s = time.perf_counter() - t
    t = time.perf_counter()
    gen = backend.generate(spec["gen_prompts"], GenerationConfig(**spec["generation"]))
    gen_s = time.perf_counter() - t
    sampled = [
        backend.generate(spec["gen_prompts"], GenerationConfig(max_new_tokens=12, temperature=1.0, seed=seed))
        for seed in (5, 5, 6)
    ]
    return {
        "logprobs": logprobs,
        "generate": gen,
        "sampled": sampled,
        "calls": dict(backend.calls),
        "context_length": backend.context_length,
        "describe": {k: v for k, v in backend.describe().items() if isinstance(v, (str, int, float, bool, type(None)))},
        "seconds": {"load": load_s, "logprobs": lp_s, "generate": gen_s},
    }


def rank(head: Any, spec: dict[str, Any]) -> dict[str, list[list[Any]]]:
    """Ranked (doc id, score) lists per query id from a head."""
    from rerank.types import Query

    task = spec["rank"]
    queries = [Query(qid, text) for qid, text in task["queries"].items()]
    docs = [[{"id": d, "text": task["docs"][d]} for d in task["candidates"][q.id]] for q in queries]
    results = head.rerank_batch(queries, docs)
    return {r.query.id: [[s.doc.id, s.score] for s in r.results] for r in results}


def build(backend: str, model: str, spec: dict[str, Any], options: dict[str, Any]) -> tuple[Any, Any, float]:
    """(head, its backend, seconds to build): the spec's head via ``Reranker.load`` with ``backend_options``."""
    from rerank.heads.base import Reranker

    t = time.perf_counter()
    head = Reranker.load(
        spec["rank"]["method"], model=model, backend=backend, backend_options=options, **spec["rank"]["options"]
    )
    return head, head.backend, time.perf_counter() - t


def run_vllm(spec: dict[str, Any]) -> dict[str, Any]:
    """In-process ``vllm.LLM`` through the registered ``vllm`` backend."""
    from rerank.backends.registry import build_backend
    from rerank.errors import ConfigError

    options = {
        "dtype": "float32",
        "tokenizer": spec["model"],
        "enforce_eager": True,
        "max_model_len": spec["max_model_len"],
        "constrained_decoding": True,
        "engine_args": {"max_num_seqs": 8},
    }
    try:
        build_backend("vllm", spec["model"], device="cuda")
        wrong_device = "no error"
    except ConfigError as e:
        wrong_device = f"ConfigError: {e}"
    head, backend, load_s = build("vllm", spec["model"], spec, options)
    try:
        out = exercise(backend, spec, load_s)
        out["rank"] = rank(head, spec)
        out["constrained"] = constrained(backend, spec)
        out["wrong_device"] = wrong_device
        out["max_num_seqs"] = backend.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        out["prefix_caching"] = backend.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
        return out
    finally:
        backend.close()


def constrained(backend: Any, spec: dict[str, Any]) -> list[list[str]]:
    """Greedy and sampled generations of the spec's prompts under each of its grammars (constrained decoding)."""
    from rerank.backends.base import GenerationConfig
    from rerank.backends.grammar import Grammar

    out = []
    for case in spec["constrained"]:
        grammar = Grammar.from_dict(case["grammar"])
        for temperature in (0.0, 1.0):
            config = GenerationConfig(max_new_tokens=case["max_new_tokens"], temperature=temperature, seed=3,
                                      constraint=grammar)
            out.append(backend.generate(spec["gen_prompts"], config))
    return out


def launch_server(spec: dict[str, Any], log_path: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """Start ``vllm serve`` (its OpenAI API server module) on a free loopback port; returns without waiting."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", spec["model"], "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", str(spec["max_model_len"]),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", time.perf_counter()


def wait_healthy(proc: subprocess.Popen[bytes], url: str, started: float, timeout_s: float, log_path: Path) -> float:
    """Poll ``/health`` until it answers 200; seconds since launch. Raises if the server dies or times out."""
    import httpx

    while time.perf_counter() < started + timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}; log: {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"vllm serve not healthy {timeout_s} s after launch; log: {log_path}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_openai(spec: dict[str, Any], server: tuple[subprocess.Popen[bytes], str, float], log_path: Path) -> dict:
    """The launched ``vllm serve`` on loopback through the registered ``openai`` backend (token-id prompts)."""
    from rerank.errors import RerankError

    proc, url, started = server
    try:
        start_s = wait_healthy(proc, url, started, float(spec.get("server_timeout_s", 300)), log_path)
        options = {"base_url": f"{url}/v1", "tokenizer": spec["model"], "timeout": 60.0}
        head, backend, load_s = build("openai", SERVED_NAME, spec, options)
        out = exercise(backend, spec, load_s)
        out["seconds"]["server_start"] = start_s
        out["rank"] = rank(head, spec)
        # Without vLLM's extensions only the server's top-N text-keyed log-probs exist: the rarest id must raise.
        from rerank.backends.registry import build_backend

        plain = build_backend("openai", SERVED_NAME, **options, extensions=False)
        try:
            plain.next_token_logprobs(spec["prompts"][:1], [spec["rare_token_id"]])
            out["plain_rare"] = "no error"
        except RerankError as e:
            out["plain_rare"] = f"RerankError: {e}"
        out["plain_top"] = plain.next_token_logprobs(spec["prompts"][:1], [spec["top_token_id"]])
        plain.close()
        backend.close()
        return out
    finally:
        stop_server(proc)


def main() -> int:
    spec_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    import vllm

    result: dict[str, Any] = {"vllm_version": vllm.__version__}
    t = time.perf_counter()
    log_path = out_path.with_suffix(".server.log")
    server = launch_server(spec, log_path)  # starts while the in-process engine runs (two cores, two processes)
    try:
        result["vllm"] = run_vllm(spec)
    except BaseException:
        stop_server(server[0])
        raise
    result["openai"] = run_openai(spec, server, log_path)
    result["seconds_total"] = time.perf_counter() - t
    out_path.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
