"""Review B of audit 5 (openai backend, listwise reasoning, LLM cache): a prompt whose chat template opens the
reasoning, tags in any case and mentioned outside reasoning, a deadline hit not paid for again, failed answers removed
from the cache only as this run read them, and Retry-After dates without a zone and unreadable retry-after-ms."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from rerank.backends.base import GenerationConfig
from rerank.errors import RerankError
from tests.test_audit5_openai import Reply, Server, ids, make, server, tok_dir  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
#: QwQ-32B's generation prompt (DeepSeek-R1's ends in the same ``<think>\n``): the model writes only ``</think>``
QWQ_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
#: DeepSeek-R1's form: the tag follows the role marker on the same line
DEEPSEEK_TEMPLATE = ("{% for m in messages %}<｜{{ m.role }}｜>{{ m.content }}{% endfor %}"
                     "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}")
RANKING = "[3] > [1] > [4] > [2]"
#: what the model writes after the prefilled <think>, cut off by listwise's cap
CUT = "First guess:\n[4] > [2] > [1] > [3]\nBut wait, passage 3"


def listwise(chat_template: str | None, output: str, template: str = "") -> Any:
    """A listwise head of window 4 whose model writes ``output``, on a tokenizer with ``chat_template``."""
    from rerank.backends.scripted import ScriptedBackend
    from rerank.methods.listwise.head import ListwiseConfig, ListwiseReranker
    from rerank.testing import build_tokenizer

    tok = build_tokenizer()
    if chat_template is not None:
        tok.chat_template = chat_template
    return ListwiseReranker(ListwiseConfig(window=4, stride=2, template=template),
                            backend=ScriptedBackend(tok, generate_fn=lambda prompt: output))


def rank(head: Any) -> tuple[list[str], tuple[int, int, int]]:
    res = head.rerank("q", [{"id": f"d{i}", "text": f"passage {i}", "score": 4.0 - i} for i in range(4)])
    return res.doc_ids, (head.stats.outputs, head.stats.parse_failures, head.stats.repaired)


# ---------------------------------------------------------------- 1. reasoning the chat template opens


@pytest.mark.parametrize("chat_template", [QWQ_TEMPLATE, DEEPSEEK_TEMPLATE], ids=["qwq", "deepseek-r1"])
def test_a_prompt_that_opens_reasoning_makes_a_cut_output_a_failure(chat_template: str) -> None:
    """The review's repro: a guess inside the reasoning the template opened is no answer; the window keeps its order
    and the failure is counted, as for an output that writes <think> itself."""
    head = listwise(chat_template, CUT)
    assert head.prompt_reasoning(head.template.assistant_prefix) == "think"
    assert rank(head) == (["d0", "d1", "d2", "d3"], (1, 1, 0))
    closed = listwise(chat_template, "maybe [4] > [2] > [1] > [3]\n</think>\n\n" + RANKING)
    assert rank(closed) == (["d2", "d0", "d3", "d1"], (1, 0, 0))  # the answer after the closing tag, clean


def test_a_template_without_open_reasoning_reads_as_before(tmp_path: Path) -> None:
    """ChatML opens nothing: the same text is read as a ranking. A listwise template whose assistant prefix closes
    the reasoning the chat template opened (the non-thinking mode docs/backends.md names) reads the answer."""
    assert rank(listwise(None, "[4] > [2] > [1] > [3]")) == (["d3", "d1", "d0", "d2"], (1, 0, 0))
    data = yaml.safe_load((REPO / "rerank/methods/listwise/listwise.yaml").read_text(encoding="utf-8"))
    path = tmp_path / "no-think.yaml"
    path.write_text(yaml.safe_dump({**data, "assistant_prefix": "</think>\n\n"}), encoding="utf-8")
    head = listwise(QWQ_TEMPLATE, "[4] > [2] > [1] > [3]", template=str(path))
    assert head.prompt_reasoning(head.template.assistant_prefix) == ""
    assert rank(head) == (["d3", "d1", "d0", "d2"], (1, 0, 0))


def test_prompt_reasoning_reads_the_rendered_tail() -> None:
    from rerank.heads.permutation import reasoning_left_open

    assert reasoning_left_open("<|im_start|>assistant\n<think>\n") == "think"
    assert reasoning_left_open("<|im_start|>assistant\n<think>\n\n</think>\n\n") == ""  # Qwen3, thinking off
    assert reasoning_left_open("<|im_start|>assistant\n<Reasoning >") == "reasoning"
    assert reasoning_left_open("<|im_start|>assistant\n") == ""


# ---------------------------------------------------------------- 2. tags in any case; tags mentioned outside reasoning

#: the review's battery (parse_battery.py, n=4): case -> (order, failed); the old parser's result where it was right,
#: a failure keeping the input order where it read a guess inside reasoning
BATTERY: dict[str, tuple[str, list[int], bool]] = {
    "plain": (RANKING, [2, 0, 3, 1], False),
    "rank+explanation": (RANKING + "\nPassage [3] is most relevant because it answers the query.", [2, 0, 3, 1], False),
    "word think": ("I think the order is:\n" + RANKING, [2, 0, 3, 1], False),
    "word think after": (RANKING + "\nI think [3] is best.", [2, 0, 3, 1], False),
    "closed think": ("<think>maybe [1] > [2] > [3] > [4]</think>\n" + RANKING, [2, 0, 3, 1], False),
    "close without open (prefill)": ("maybe [1] > [2] > [3] > [4]\n</think>\n\n" + RANKING, [2, 0, 3, 1], False),
    "prefill, cut in reasoning (no tags)": ("Let me compare.\n[1] > [2] > [3] > [4]\nBut passage 3", [0, 1, 2, 3],
                                            False),
    "unclosed think cut": ("<think>\nguess [4] > [2] > [1] > [3]\nBut wait", [0, 1, 2, 3], True),
    "rank then <think> in echo": (RANKING + "\n[1] HTML has a <think> tag used by models", [2, 0, 3, 1], False),
    "echo <think> before rank": ("Passage [2] quotes the <think> tag.\nRanking: " + RANKING, [2, 0, 3, 1], False),
    "</think> mentioned after rank": (RANKING + "\nNote: [1] explains the </think> token.", [2, 0, 3, 1], False),
    "rank with literal <think> in line": (RANKING + "  (passage [2] mentions <think>)", [2, 0, 3, 1], False),
    "<THINK> upper unclosed": ("<THINK>\nguess [4] > [2] > [1] > [3]\nBut wait", [0, 1, 2, 3], True),
    "<think > spaced": ("<think >\nguess [4] > [2] > [1] > [3]\nBut wait", [0, 1, 2, 3], True),
    "closed think, answer then reasoning quote": ("<think>ok</think>\n" + RANKING + "\nIn <reasoning> we saw",
                                                  [2, 0, 3, 1], False),
    "empty think block then rank": ("<think>\n\n</think>\n\n" + RANKING, [2, 0, 3, 1], False),
}


@pytest.mark.parametrize("case", list(BATTERY))
def test_parse_battery(case: str) -> None:
    from rerank.heads.permutation import parse_permutation

    text, order, failed = BATTERY[case]
    parsed = parse_permutation(text, 4, "numbers")
    assert (parsed.order, parsed.failed) == (order, failed)
    if failed:
        assert "<think> was never closed" in parsed.fixes[0]
    assert not any("unclosed" in f for f in parsed.fixes)  # a mention is no reasoning left open


def test_tags_match_in_any_case_and_with_spaces() -> None:
    from rerank.heads.permutation import parse_permutation

    for opening, closing in [("<THINK>", "</THINK>"), ("<think >", "</think >"), ("< Thinking>", "< / thinking >")]:
        closed = parse_permutation(f"{opening}\n[4] > [2] > [1] > [3]\n{closing}\n{RANKING}", 4, "numbers")
        assert (closed.order, closed.failed, closed.fixes) == ([2, 0, 3, 1], False, [])
    inside = parse_permutation(f"{RANKING}\n</THINK >\nI cannot rank these.", 4, "numbers", in_reasoning="think")
    assert inside.failed and inside.order == [0, 1, 2, 3]  # the ranking was inside the reasoning the prompt opened


def test_a_closing_tag_mentioned_after_the_answer_keeps_it_inside_reasoning_that_closed() -> None:
    """A second </think> after the answer (no reasoning open) is a mention; the answer between is read."""
    from rerank.heads.permutation import parse_permutation

    parsed = parse_permutation(f"<think>\nhmm\n</think>\n{RANKING}\nIt skips the </think> quote.", 4, "numbers")
    assert (parsed.order, parsed.failed, parsed.fixes) == ([2, 0, 3, 1], False, [])


# ---------------------------------------------------------------- 3. a deadline hit is not paid for again


def test_a_deadline_hit_after_the_headers_is_not_retried_and_says_to_raise_timeout(server: Server,
                                                                                      tok_dir: Path) -> None:
    """Headers at once, then a keep-alive space every 0.1 s: the try reaches timeout=0.5 s; with max_retries=2 it is
    the only request (the server was generating: another try pays again), and the error names the deadline."""
    server.script = lambda n, body: Reply(trickle=0.1, trickle_bytes=30)
    backend = make(server, tok_dir, timeout=0.5, max_retries=2)
    with pytest.raises(RerankError, match=r"began its answer but did not finish it within backend_options\.timeout="
                                          r"0\.5 s \(1 attempt over 0\.\d s\); .*raise backend_options\.timeout$") as e:
        backend.generate([ids(backend, "a b")], GenerationConfig(max_new_tokens=4))
    assert "unreachable" not in str(e.value)
    assert len(server.requests) == 1


def test_a_deadline_hit_before_the_headers_is_retried_once(server: Server, tok_dir: Path) -> None:
    """No headers within timeout=0.4 s (a server that answers only when done): one more try, not max_retries."""
    server.script = lambda n, body: Reply(stall=1.5, body={"choices": [{"index": 0, "text": "late"}]})
    backend = make(server, tok_dir, timeout=0.4, max_retries=3)
    with pytest.raises(RerankError, match=r"did not answer within backend_options\.timeout=0\.4 s \(2 attempts over "
                                          r"\d\.\d s\); .*raise backend_options\.timeout$"):
        backend.generate([ids(backend, "a b")], GenerationConfig(max_new_tokens=4))
    time.sleep(0.1)
    assert len(server.requests) == 2


def test_connection_failures_and_5xx_are_still_retried(server: Server, tok_dir: Path) -> None:
    server.script = lambda n, body: Reply(503, body={"error": "busy"}) if n < 3 else None
    backend = make(server, tok_dir, timeout=5.0, max_retries=2)
    assert backend.generate([ids(backend, "a b")], GenerationConfig(max_new_tokens=4)) == ["[1] > [2]"]
    assert len(server.requests) == 3
    closed = build_closed_port_backend(tok_dir)
    with pytest.raises(RerankError, match=r"unreachable: .*\(3 attempts over"):
        closed.generate([ids(closed, "a b")], GenerationConfig(max_new_tokens=4))


def build_closed_port_backend(tok_dir: Path) -> Any:
    import socket

    from rerank.backends.registry import build_backend

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return build_backend("openai", "served", base_url=f"http://127.0.0.1:{port}/v1", tokenizer=str(tok_dir),
                         timeout=2.0, max_retries=2)


def test_backends_doc_states_the_deadline_retry_policy() -> None:
    text = " ".join((REPO / "docs/backends.md").read_text(encoding="utf-8").split())
    assert "tried again at most once, and not at all when the server had already begun its answer" in text
    assert "Listwise's cap has no option to raise it" in text


# ---------------------------------------------------------------- 4. a failed answer leaves the cache only as read


def test_a_failed_answer_does_not_delete_another_runs_good_one(tok_dir: Path, tmp_path: Path) -> None:
    """The review's race: runs A and B share a cache; B misses first, A stores '' (which fails to parse), B stores
    '[2] > [1]' over it, then A's failed parse removes only its own '' and B's good answer stays."""
    from transformers import AutoTokenizer

    from rerank.backends.cache import CachingBackend
    from rerank.backends.scripted import ScriptedBackend

    tok = AutoTokenizer.from_pretrained(tok_dir)
    path = tmp_path / "llm-calls.sqlite"
    b_asked, go = threading.Event(), threading.Event()

    def b_model(text: str) -> str:
        b_asked.set()
        go.wait(10)
        return "[2] > [1]"

    a = CachingBackend(ScriptedBackend(tok, generate_fn=lambda text: ""), "m", path)
    b = CachingBackend(ScriptedBackend(tok, generate_fn=b_model), "m", path)
    prompt, gen = tok.encode("rank these", add_special_tokens=False), GenerationConfig(max_new_tokens=8)
    got_b: list[str] = []
    thread = threading.Thread(target=lambda: got_b.extend(b.generate([prompt], gen)))
    thread.start()
    assert b_asked.wait(10)
    assert a.generate([prompt], gen) == [""]
    go.set()
    thread.join(10)
    b.log_parse(got_b[0], {"outcome": "clean", "fixes": []})
    a.log_parse("", {"outcome": "failed", "fixes": ["empty"]})
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT value FROM calls").fetchall() == [(json.dumps("[2] > [1]"),)]
    # alone, a failed answer is still removed (read from the cache or generated)
    again = CachingBackend(ScriptedBackend(tok, generate_fn=lambda text: "no"), "m", path)
    assert again.generate([prompt], gen) == ["[2] > [1]"]  # a cache hit
    again.log_parse("[2] > [1]", {"outcome": "failed", "fixes": []})
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT value FROM calls").fetchall() == []
    for backend in (a, b, again):
        backend.close()


# ---------------------------------------------------------------- 5. Retry-After without a zone; retry-after-ms


@pytest.fixture(params=["America/New_York", "Asia/Tokyo"])
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    yield request.param
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_retry_after_dates_without_a_zone_are_utc(local_zone: str) -> None:
    from rerank.utils.http import retry_after

    ahead = time.gmtime(time.time() + 5)
    for form in ("%a %b %d %H:%M:%S %Y", "%a, %d %b %Y %H:%M:%S", "%a, %d %b %Y %H:%M:%S -0000",
                 "%a, %d %b %Y %H:%M:%S GMT"):
        wait = retry_after(httpx.Response(429, headers={"Retry-After": time.strftime(form, ahead)}), 0.5)
        assert 3.0 < wait <= 5.0, (local_zone, form, wait)


def test_retry_after_ms_that_is_not_a_finite_number_falls_back_to_retry_after() -> None:
    from rerank.utils.http import retry_after

    for ms in ("nan", "inf", "-inf", "1e400", "abc"):
        assert retry_after(httpx.Response(429, headers={"retry-after-ms": ms, "Retry-After": "2"}), 0.5) == 2.0
        assert retry_after(httpx.Response(429, headers={"retry-after-ms": ms}), 0.5) == 0.5
    assert retry_after(httpx.Response(429, headers={"retry-after-ms": "1500", "Retry-After": "2"}), 0.5) == 1.5
