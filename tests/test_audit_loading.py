"""Loading and configuring heads (audit s38/api): pickled-only model folders, ``long_docs`` modes, GroupRank's
fusion without first-stage scores, templates of other methods, backend options given to a head, and tokenizer noise
on long seq2seq inputs. Each test names what used to go wrong."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rerank import Reranker
from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.types import Candidate, Document


def _pickled_only(src: Path, dst: Path) -> Path:
    """A copy of the model folder ``src`` whose weights are a ``pytorch_model.bin`` only (never unpickled here: the
    file is not even a pickle, so a loader that opened it would fail differently)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    (dst / "pytorch_model.bin").write_bytes(b"not a pickle")
    return dst


@pytest.mark.parametrize(("method", "fixture"), [
    ("cross-encoder", "tiny_bert_dir"), ("yes-no", "tiny_llm_dir"), ("erank", "tiny_llm_dir"),
    ("monot5", "tiny_t5_dir"), ("duot5", "tiny_t5_dir"),
])
def test_pickled_only_model_is_a_one_line_error(method: str, fixture: str, request: pytest.FixtureRequest,
                                                tmp_path: Path) -> None:
    """A folder with only ``pytorch_model.bin`` raised transformers' bare ``OSError`` (a traceback on the CLI)."""
    model = _pickled_only(request.getfixturevalue(fixture), tmp_path / "model")
    with pytest.raises(ConfigError, match=r"holds no \.safetensors weights \(a pickled pytorch_model\.bin is refused "
                                          r"on purpose.*convert the weights to safetensors"):
        Reranker.load(method, model=str(model))


def test_pickled_only_model_on_the_cli_exits_2(tiny_bert_dir: Path, tmp_path: Path,
                                                run_cli: Callable[..., tuple[int, str, str]]) -> None:
    model = _pickled_only(tiny_bert_dir, tmp_path / "model")
    docs = tmp_path / "in.jsonl"
    docs.write_text('{"query": "q", "docs": ["a", "b"]}\n', encoding="utf-8")
    rc, _, err = run_cli("rank", "--reranker", "cross-encoder", "--model", model, "--input", docs,
                         "--output", tmp_path / "out.jsonl")
    assert rc == 2 and "holds no .safetensors weights" in err and "Traceback" not in err


@pytest.mark.parametrize("method", ["cross-encoder", "yes-no", "erank"])
def test_sump_is_gone(method: str) -> None:
    """``long_docs: sump`` summed unbounded passage scores: it ranked by document length and saturated relevance."""
    from rerank.heads.passages import LONG_DOCS
    from rerank.heads.registry import get_reranker_class

    assert "sump" not in LONG_DOCS
    with pytest.raises(ConfigError, match=r"long_docs: must be one of \['truncate', 'maxp', 'firstp'\], got 'sump'"):
        from_dict(get_reranker_class(method).config_class, {"long_docs": "sump"}, where=f"{method} options")


def _grouprank(**options: Any) -> Any:
    from rerank.backends.scripted import ScriptedBackend
    from rerank.methods.grouprank.head import GroupRankConfig, GroupRankReranker
    from rerank.testing import build_tokenizer

    def equal_scores(prompt: str) -> str:
        ids = [k for k in range(1, 4) if f"[{k}]" in prompt]
        return "<reason>ok</reason><answer>{" + ", ".join(f'"[{k}]": 5' for k in ids) + "}</answer>"

    return GroupRankReranker(GroupRankConfig(group_size=3, repeats=1, **options),
                             backend=ScriptedBackend(build_tokenizer(), generate_fn=equal_scores))


def test_grouprank_warns_when_a_set_fusion_weight_cannot_apply(caplog: pytest.LogCaptureFixture) -> None:
    """``fusion_weight=0.0`` asks for the first-stage order; a document without a first-stage score silently turned
    fusion off (an INFO line only) and the list came back in input order."""
    scored = [Candidate(Document(d, d), s) for d, s in (("a", 1.0), ("b", 3.0), ("c", 2.0))]
    unscored = [*scored[:2], Document("c", "c")]
    head = _grouprank(fusion_weight=0.0)
    with caplog.at_level(logging.INFO, logger="rerank.methods.grouprank.head"):
        assert head.rerank("q", scored).doc_ids == ["b", "c", "a"]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        head.rerank_batch(["q1", "q2"], [unscored, unscored])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # once per call, not per query
    assert "fusion_weight=0.0 is not applied to 2 of 2 queries: 2 of their documents have no first-stage score" \
        in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rerank.methods.grouprank.head"):
        _grouprank().rerank("q", unscored)  # the default weight: the user asked for nothing, an INFO line is enough
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(("method", "template", "own"), [
    ("erank", "yes_no", "erank, erank_reasoning"),  # ranked silently: a yes/no prompt read as 0-10 integers
    ("yes-no", "listwise", "yes_no"),  # failed only at the first rerank call ("'num' is undefined")
    ("first", "grouprank", "first, first-compact"),
    ("monot5", "duot5", "monot5"),
    ("yes-no", "query_synthesis", "yes_no"),
])
def test_another_methods_template_is_refused_before_loading(method: str, template: str, own: str,
                                                            tmp_path: Path) -> None:
    """The model does not exist: the template is refused before anything loads."""
    with pytest.raises(ConfigError, match=rf"^{method}: template '{template}' is .*'s prompt, not one the {method} "
                                          rf"head reads; use its own \({own}\)"):
        Reranker.load(method, model=str(tmp_path / "no-model"), template=template)


def test_every_method_takes_its_own_templates() -> None:
    from rerank.methods import all_methods
    from rerank.prompts import head_template

    for m in all_methods().values():
        for t in m.templates:
            assert head_template(Path(t).stem, m.name).name == Path(t).stem


def test_a_template_file_is_checked_for_the_heads_variables(tmp_path: Path) -> None:
    """A file is the user's own prompt (allowed), but a variable the head does not give failed at the first call."""
    from rerank.backends.scripted import ScriptedBackend
    from rerank.methods.yes_no.head import YesNoConfig, YesNoReranker
    from rerank.prompts import shipped_templates
    from rerank.testing import build_tokenizer

    listwise = shipped_templates()["listwise"]
    with pytest.raises(ConfigError, match=rf"^yes-no: template {listwise} reads num, passages, which the yes-no head "
                                          r"does not give \(it gives document, query\)"):
        Reranker.load("yes-no", model=str(tmp_path / "no-model"), template=str(listwise))
    broken = tmp_path / "broken.yaml"
    broken.write_text('user: "Q: {{ query }} D: {{ document }"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^prompt template {broken}: line 1: "):
        Reranker.load("yes-no", model=str(tmp_path / "no-model"), template=str(broken))
    own = tmp_path / "mine.yaml"  # its own extra field is a variable it defines
    own.write_text('user: "{{ task }}\\nQ: {{ query }}\\nD: {{ document }}"\ntask: Judge.\n', encoding="utf-8")
    backend = ScriptedBackend(build_tokenizer(), lambda prompt, ids: [0.0, -1.0])
    head = YesNoReranker(YesNoConfig(template=str(own)), backend=backend)
    assert len(head.rerank("q", ["a", "b"]).results) == 2


@pytest.mark.parametrize(("method", "key"), [("yes-no", "trust_remote_code"), ("grouprank", "max_length"),
                                             ("erank", "prefix_cache")])
def test_a_backend_option_given_to_an_llm_head_names_backend_options(method: str, key: str, tmp_path: Path) -> None:
    """``trust_remote_code=True`` on an LLM head was "unknown key ... for YesNoConfig", which did not say that
    ``backend_options`` is the only route; checked before the model loads."""
    with pytest.raises(ConfigError, match=rf"^{key} is an option of the transformers backend, not of the {method} "
                                          rf"head: give it in backend_options \(backend_options=\{{'{key}': ...\}}\)$"):
        Reranker.load(method, model=str(tmp_path / "no-model"), **{key: True})
    with pytest.raises(ConfigError, match="unknown key 'no_such_option'"):  # other unknown keys: the generic error
        Reranker.load(method, model=str(tmp_path / "no-model"), no_such_option=1)


@pytest.mark.parametrize("method", ["monot5", "duot5"])
def test_seq2seq_long_document_prints_no_indexing_warning(method: str, tiny_t5_dir: Path) -> None:
    """A document longer than the tokenizer's 512 tokens printed transformers' "Token indices sequence length is longer
    than ... will result in indexing errors", although the head cuts it to ``max_doc_tokens`` first."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        head = Reranker.load(method, model=str(tiny_t5_dir), device="cpu")
        assert len(head.rerank("q " * 600, ["word " * 2000, "short", "x " * 900]).results) == 3
    finally:
        logger.removeHandler(handler)
    assert not [m for m in seen if "indexing errors" in m]
