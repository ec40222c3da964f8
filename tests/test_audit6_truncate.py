"""Cutting text to a token budget for an LLM prompt (audit s43/multiling, finding 4): a byte-level tokenizer spreads
a CJK character or an emoji over several tokens, and a cut between them decoded to U+FFFD, which the model read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rerank import Reranker

TEXT = "我昨天在市场买了苹果，味道很好。🐼国宝 Frau Müller"


@pytest.fixture(scope="module")
def head(tiny_llm_dir: Path) -> Any:
    return Reranker.load("yes-no", model=str(tiny_llm_dir))


def test_a_cut_never_ends_in_part_of_a_character(head: Any) -> None:
    ids = head.encode(TEXT)
    cuts = [head.truncate(TEXT, n) for n in range(1, len(ids))]
    assert any(len(head.encode(cut)) < n for n, cut in enumerate(cuts, 1))  # some cuts fell inside a character
    for n, cut in enumerate(cuts, 1):
        assert "\ufffd" not in cut and TEXT.startswith(cut) and len(head.encode(cut)) <= n


def test_a_replacement_character_of_the_text_itself_is_kept(head: Any) -> None:
    text = "broken \ufffd byte then 苹果苹果苹果"
    n = len(head.encode("broken \ufffd byte then"))
    assert head.truncate(text, n).rstrip() == "broken \ufffd byte then"


def test_fitting_a_prompt_to_the_context_cuts_whole_characters(head: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The context fit cuts the query and the passages with the same rule."""
    render = head._render_pair
    full = len(head.encode(render(TEXT * 4, [TEXT * 8])))
    for limit in range(full // 3, full // 3 + 8):
        monkeypatch.setattr(type(head.backend), "context_length", property(lambda self, n=limit: n))
        text, ids = head.fit(TEXT * 4, [TEXT * 8], render)
        assert len(ids) <= limit and "\ufffd" not in text, limit
