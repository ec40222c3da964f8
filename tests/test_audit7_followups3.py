"""Review KLM follow-ups: suite ``--resume`` keeps a user subclass of a method's head that sets its own template in
``__init__`` (the run records that the probe does not tell it), a left-padded encoder's position probe is run once
under a lock and stored only once found (a second thread's first call waits for it; a probe that raises is tried
again), a template read from a model folder's record dumps as plain YAML, and a 200 answer with a score no float
holds is a one-line error."""

from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import yaml

from dense_position_support import make_encoder, rel

from rerank.client import RemoteReranker, RemoteRerankError
from rerank.eval.suites import _template_difference
from rerank.prompts import RecordedKey, head_template, load_template, mark_recorded
from rerank.retrieval import dense
from rerank.testing import corpus_lines
from tests.test_audit7_review_ij import _dl, heads  # noqa: F401  (heads: a fixture)

# ---------------------------------------------------------------- 1: a subclass setting its own template

OWN = '''
from rerank.methods.yes_no.head import YesNoReranker
from rerank.prompts import load_template


class OwnYesNo(YesNoReranker):
    method = "a7klm-own-yes-no"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        own = load_template("yes_no").to_dict()
        own["user"] = "Q: {{ query }}\\nP: {{ document }}\\nRelevant? yes or no."
        self.template = load_template(own)
'''


def _suite(tmp_path: Path, reranker: str, model: Path) -> tuple[Any, ...]:
    return ("eval", "--suite", "dl", "--data-root", _dl(tmp_path), "--reranker", reranker, "--model", model,
            "--top-k", "3", "--max-queries", "2", "--output", tmp_path / "o")


def _recorded_template(tmp_path: Path) -> dict[str, str]:
    metrics = json.loads((tmp_path / "o" / "dl19-bm25-top100" / "metrics.json").read_text())
    return metrics["provenance"]["template_input"]


def test_suite_resume_keeps_a_method_head_subclass_that_sets_its_own_template(
        heads: str, tmp_path: Path, run_cli, tiny_llm_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (Path(importlib.import_module(heads).__file__).parent / "own.py").write_text(OWN)
    args = _suite(tmp_path, heads.rsplit(".", 1)[0] + ".own:OwnYesNo", tiny_llm_dir)
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    with caplog.at_level("INFO", logger="rerank.eval.suites"):
        rc, _, err = run_cli(*args, "--resume")
    assert rc == 0 and "keeps 2 of 2 members" in caplog.text, err
    recorded = _recorded_template(tmp_path)
    assert recorded["probe"] == "differs"
    assert recorded["fingerprint"] != f"sha256:{load_template('yes_no').sha256()}"  # its own, not the default


def test_a_built_in_head_records_a_told_template_and_is_still_compared(tmp_path: Path, run_cli,
                                                                       tiny_llm_dir: Path) -> None:
    args = _suite(tmp_path, "yes-no", tiny_llm_dir)
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    recorded = _recorded_template(tmp_path)
    assert "probe" not in recorded  # the probe tells it: recorded as before
    assert recorded["fingerprint"] == f"sha256:{load_template('yes_no').sha256()}"
    other = load_template("yes_no").to_dict()
    other["user"] = "Query: {{ query }} Passage: {{ document }} yes or no?"
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(other))
    rc, _, err = run_cli(*args, "--reranker-set", f"template={tmp_path / 't.yaml'}", "--resume")
    assert rc == 2 and "(its content differs)" in err, err


def test_a_probe_that_differs_is_not_compared_with_options_but_a_given_reranker_is() -> None:
    own = load_template({"name": "own", "user": "Q: {{ query }} P: {{ document }}"})
    recorded = {"provenance": {"template_input": {"name": "own", "source": "own",
                                                  "fingerprint": f"sha256:{own.sha256()}", "probe": "differs"}}}
    assert _template_difference(recorded, load_template("yes_no")) == []  # the options tell the default only

    class Given:
        template = load_template("yes_no")

    assert _template_difference(recorded, Given()) != []  # type: ignore[arg-type]  (its own template is compared)
    del recorded["provenance"]["template_input"]["probe"]
    assert "(its content differs)" in _template_difference(recorded, load_template("yes_no"))[0]


# ---------------------------------------------------------------- 2: the dense position probe

LINES = corpus_lines()
SHORT, LONG = LINES[1], " ".join(LINES[20:40])


def _bert(tok: Any) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, max_position_embeddings=200,
                                hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128))


def test_a_second_threads_first_call_waits_for_the_probe() -> None:
    enc = make_encoder(_bert, "a7klm-bert-left")
    tok, model = enc.doc_tokenizer, enc.doc_model
    ids = [tok(SHORT)["input_ids"], tok(LONG, truncation=True, max_length=120)["input_ids"]]
    probing, b_done = threading.Event(), threading.Event()

    def slow_first_forward(module: Any, args: Any, kwargs: Any) -> None:
        if threading.current_thread().name == "A" and not probing.is_set():
            probing.set()
            b_done.wait(0.5)  # B's call runs meanwhile unless it waits for this probe

    hook = model.register_forward_pre_hook(slow_first_forward, with_kwargs=True)
    out: dict[str, np.ndarray] = {}

    def call(name: str) -> None:
        if name == "B":
            probing.wait(5)
        out[name] = enc.embed_ids(ids, None, "doc")
        if name == "B":
            b_done.set()

    threads = [threading.Thread(target=call, args=(n,), name=n) for n in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hook.remove()
    alone = enc.embed_ids([ids[0]], None, "doc")[0]
    assert rel(out["A"][0], alone) < 1e-5
    assert rel(out["B"][0], alone) < 1e-5


def test_a_probe_that_raises_is_not_stored_and_runs_again(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = make_encoder(_bert, "a7klm-bert-left-raise")
    tok, model = enc.doc_tokenizer, enc.doc_model
    real, calls = dense._probe_states, []

    def failing_once(*a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real(*a, **k)

    monkeypatch.setattr(dense, "_probe_states", failing_once)
    with pytest.raises(RuntimeError, match="out of memory"):
        dense._position_offset(model, tok)
    assert "offset" not in dense._NUMBERING.get(model, {})
    assert dense._position_offset(model, tok) == 0  # BERT numbers a text from 0: found on the retry


# ---------------------------------------------------------------- 3: a recorded template dumps as plain YAML


def test_a_recorded_template_dumps_as_plain_yaml() -> None:
    spec = {**load_template("yes_no").to_dict(), "description": "a note kept by the trained model"}
    marked = mark_recorded(spec, "/models/yn/rerank.json")
    template = head_template(marked, "yes-no")
    assert all(type(k) is str for k in (*template.extra, *template.to_dict()))
    for dumper in (yaml.SafeDumper, getattr(yaml, "CSafeDumper", None)):  # the safe dumpers rerank writes with
        if dumper is None:
            continue
        for data in (marked, template.to_dict()):
            text = yaml.dump(data, Dumper=dumper)
            assert "!!python" not in text and yaml.safe_load(text) == spec, dumper
    loaded = yaml.dump(template.to_dict())  # the loaded template's fields are plain strings for any dumper
    assert "!!python" not in loaded and yaml.safe_load(loaded) == spec
    assert any(isinstance(k, RecordedKey) for k in marked)  # the mark stays on the mapping the config holds


# ---------------------------------------------------------------- 4: a score no float holds


def test_a_score_no_float_holds_is_one_line() -> None:
    rr = RemoteReranker()
    body = b'{"results": [{"index": 0, "relevance_score": 1' + b"0" * 400 + b"}]}"
    rr._client = httpx.Client(base_url="http://test", transport=httpx.MockTransport(
        lambda request: httpx.Response(200, content=body, headers={"content-type": "application/json"})))
    with pytest.raises(RemoteRerankError, match="answered 200 without a rerank answer") as err:
        rr.rerank("q", ["a"])
    assert "\n" not in str(err.value)


def test_a_built_in_heads_failing_default_is_not_hidden_as_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a user head's default may read __init__ state; a built-in one that fails is a bug, raised as it is."""
    from rerank.methods.yes_no.head import YesNoReranker

    def broken(self: object) -> str:
        raise ValueError("a bug in a built-in default")

    monkeypatch.setattr(YesNoReranker, "default_template", broken)
    with pytest.raises(ValueError, match="a bug in a built-in default"):
        YesNoReranker.configured_template(YesNoReranker.config_class())
