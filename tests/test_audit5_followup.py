"""Review A of audit 5, findings 2 and 4-7: a folder trained by an older rerank never passes a machine path on as the
Hub ``base_model`` (and a packaged model is named by its hub id); a 3-column rank run in doc-id order is not warned
of as upside down; the docs say which paths ``model/`` may hold; a window head's template without passages is shown
its head's loop; SFT from a model recorded as another head warns as GRPO does."""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank.config import from_dict
from rerank.data.io import read_run
from rerank.errors import ConfigError
from rerank.methods.record import record_payload
from rerank.prompts import head_template
from rerank.trainers.artifacts import base_model_fields, write_model_artifacts
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from rerank.trainers.sft_trainer import SFTTrainConfig

UPSIDE_DOWN = "the third column falls as the file goes on"
HUB_ID_KEY = "base_model_is_hub_id"  # rerank.trainers.artifacts.HUB_ID_KEY


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# --- #2: base_model from a folder an older rerank trained, and packaged models ----------------------------------------


@dataclass
class _Data:
    path: str = "train.jsonl"


@dataclass
class _Config:
    model: str = ""
    template: str = ""
    data: _Data = field(default_factory=_Data)


def _artifacts(folder: Path, model: str, template: str = "") -> tuple[dict[str, Any], dict[str, Any], str]:
    """``rerank.json``'s ``trained_with``, the card's Hub metadata and the card's text of a model trained from
    ``model``."""
    folder.mkdir(parents=True)
    write_model_artifacts(folder, method="erank", trainer="grpo", config=_Config(model=model, template=template),
                          options={"max_doc_tokens": 16})
    text = (folder / "README.md").read_text()
    meta_text, body = text[4:].split("\n---\n", 1)
    return json.loads((folder / "rerank.json").read_text())["trained_with"], yaml.safe_load(meta_text), body


def _old_model(folder: Path, base_model: str) -> Path:
    """A model folder as rerank wrote it before it checked ``base_model``: whatever the config named, as written."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "rerank.json").write_text(json.dumps(record_payload("erank", "reranker", {}, "sft", base_model)))
    return folder


def _hub_cache(root: Path, repo_id: str) -> Path:
    """A Hugging Face hub cache holding ``repo_id``'s config.json at ``main``."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    return root


def test_an_older_records_relative_path_is_never_the_hub_base_model(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """GRPO from an SFT model whose rerank.json (written before base_model was checked) says ``runs/tiny-llm`` wrote
    it as the card's Hub ``base_model`` and under "## Base model"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    old = _old_model(tmp_path / "erank-sft" / "model", "runs/tiny-llm")
    trained, meta, body = _artifacts(tmp_path / "grpo", str(old))
    assert "base_model" not in meta and "base_model" not in trained and trained["base_model_local"] == "tiny-llm"
    assert HUB_ID_KEY not in trained
    assert "runs/tiny-llm" not in (tmp_path / "grpo" / "README.md").read_text()
    assert "runs/tiny-llm" not in (tmp_path / "grpo" / "rerank.json").read_text()
    assert "A local model folder, `tiny-llm`" in body.split("## Data")[0]
    # and a model trained from that one names it alike
    trained, meta, _ = _artifacts(tmp_path / "grpo2", str(tmp_path / "grpo"))
    assert "base_model" not in meta and trained["base_model_local"] == "tiny-llm"


def test_a_recorded_hub_id_counts_when_rerank_checked_it_or_this_machine_has_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    old = _old_model(tmp_path / "old", "Qwen/Qwen3-0.6B")
    trained, meta, _ = _artifacts(tmp_path / "a", str(old))  # an older record: nothing says it is a hub id
    assert "base_model" not in meta and trained["base_model_local"] == "Qwen3-0.6B"
    _hub_cache(cache, "Qwen/Qwen3-0.6B")  # the machine that trained from the hub id has it in its cache
    trained, meta, _ = _artifacts(tmp_path / "b", str(old))
    assert trained["base_model"] == meta["base_model"] == "Qwen/Qwen3-0.6B"
    assert base_model_fields(str(_old_model(tmp_path / "old-dashes", "a--b"))) == {"base_model_local": "a--b"}

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    trained, meta, _ = _artifacts(tmp_path / "c", "Qwen/Qwen3-0.6B")  # as given: rerank records that it checked it
    assert trained["base_model"] == "Qwen/Qwen3-0.6B" and trained[HUB_ID_KEY] is True
    (tmp_path / "c" / "config.json").write_text("{}")
    trained, meta, _ = _artifacts(tmp_path / "d", str(tmp_path / "c"))  # copied to a machine without it cached
    assert trained["base_model"] == meta["base_model"] == "Qwen/Qwen3-0.6B"


def test_a_packaged_model_is_named_by_its_hub_id_or_kept_out_of_the_hub_field(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``all-MiniLM-L6-v2`` (no repo id on the Hub) was written as the Hub base_model."""
    monkeypatch.chdir(tmp_path)
    trained, meta, _ = _artifacts(tmp_path / "a", "all-MiniLM-L6-v2")
    assert trained["base_model"] == meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    trained, meta, body = _artifacts(tmp_path / "b", "SmolLM2-135M-Instruct-Q4_1-gguf")  # a GGUF: no hub id known
    assert "base_model" not in meta and trained["base_model_local"] == "SmolLM2-135M-Instruct-Q4_1-gguf"
    assert "The packaged model `SmolLM2-135M-Instruct-Q4_1-gguf`" in body.split("## Data")[0]
    old = _old_model(tmp_path / "old", "all-MiniLM-L6-v2")  # an older record of the packaged name
    assert base_model_fields(str(old)) == {"base_model": "sentence-transformers/all-MiniLM-L6-v2"}


# --- #5: the paths model/ may hold, as docs/train-your-own.md states them ---------------------------------------------


def test_the_docs_state_the_paths_the_model_folder_holds(repo_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """train-your-own.md said no file in model/ holds a path; the card keeps relative paths (docs/training.md)."""
    text = " ".join((repo_root / "docs" / "train-your-own.md").read_text().split())
    assert "No file in `model/` holds a path" not in text
    assert "No file in `model/` holds an absolute path of the training machine" in text
    assert "keeps a path you gave relative as you wrote it (`template: tpl/mine.yaml`)" in text
    assert "writes an absolute one relative to the folder you trained in, or by its name alone when outside it" in text
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tiny-llm").mkdir(parents=True)
    (tmp_path / "runs" / "tiny-llm" / "config.json").write_text("{}")
    outside = tmp_path.parent / "elsewhere.yaml"
    for template, shown in (("tpl/mine.yaml", "tpl/mine.yaml"), (str(tmp_path / "tpl" / "mine.yaml"), "tpl/mine.yaml"),
                            (str(outside), "elsewhere.yaml")):
        folder = tmp_path / f"m{len(list(tmp_path.glob('m*')))}"
        _artifacts(folder, str(tmp_path / "runs" / "tiny-llm"), template)
        card = (folder / "README.md").read_text()
        assert f"template: {shown}\n" in card and str(tmp_path) not in card
        assert str(tmp_path) not in (folder / "rerank.json").read_text()


# --- #4: a 3-column rank run in any line order ------------------------------------------------------------------------


def test_a_rank_run_listed_in_doc_id_order_is_not_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Lines sorted by doc id (merged or deduplicated runs) fell from first to last in about half the queries."""
    caplog.set_level(logging.WARNING, logger="rerank")
    rng = random.Random(0)
    lines = []
    for q in range(20):
        docs = [f"d{q}-{i:02d}" for i in range(rng.randint(2, 12))]
        ranks = list(range(1, len(docs) + 1))
        rng.shuffle(ranks)
        if ranks[0] < ranks[-1]:  # the last line's rank below the first's in every query: yet not falling line by line
            ranks[0], ranks[-1] = ranks[-1], ranks[0]
        lines += [f"q{q}\t{d}\t{r}\n" for d, r in zip(docs, ranks)]
    path = tmp_path / "by-docid.tsv"
    path.write_text("".join(lines))
    assert all(v[0][1] == -1.0 for v in read_run(path).values())
    assert _warnings(caplog, UPSIDE_DOWN) == []
    scores = tmp_path / "scores.tsv"  # the same documents, values n..1 listed best first: the misuse
    scores.write_text("".join(f"{q}\t{d}\t{len(group) - i}\n" for q, group in _by_query(lines).items()
                              for i, d in enumerate(group)))
    read_run(scores)
    (warning,) = _warnings(caplog, UPSIDE_DOWN)
    assert "in 19 of 19 queries (of those with 3 lines or more)" in warning and "6-column" in warning


def _by_query(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        q, d, _ = line.split("\t")
        out.setdefault(q, []).append(d)
    return out


@pytest.mark.shared_data
def test_dl19_as_three_columns_warns_only_when_the_third_column_holds_scores(
        dl19_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Pyserini's form as written and sorted by doc id read without a warning; 101 - rank listed best first warns."""
    caplog.set_level(logging.WARNING, logger="rerank")
    rows = [line.split() for line in (dl19_dir / "bm25_top100.trec").read_text().splitlines()]
    six = read_run(dl19_dir / "bm25_top100.trec")
    pyserini = tmp_path / "run.msmarco.tsv"
    pyserini.write_text("".join(f"{r[0]}\t{r[2]}\t{r[3]}\n" for r in rows))
    by_docid = tmp_path / "by-docid.tsv"  # LC_ALL=C sort -k1,1 -k2,2
    by_docid.write_text("".join(f"{r[0]}\t{r[2]}\t{r[3]}\n" for r in sorted(rows, key=lambda r: (r[0], r[2]))))
    for path in (pyserini, by_docid):
        assert {q: [d for d, _ in v] for q, v in read_run(path).items()} == \
            {q: [d for d, _ in v] for q, v in six.items()}
    assert _warnings(caplog, UPSIDE_DOWN) == []
    scores = tmp_path / "scores.tsv"
    scores.write_text("".join(f"{r[0]}\t{r[2]}\t{101 - int(r[3])}\n" for r in rows))
    read_run(scores)
    (warning,) = _warnings(caplog, UPSIDE_DOWN)
    assert f"in {len(six)} of {len(six)} queries" in warning


# --- #6: a window head's template without passages --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["listwise", "first", "grouprank", "setwise"])
def test_a_template_without_passages_is_shown_its_heads_loop(method: str) -> None:
    """The hint said "add {{ passages }}", which renders the Python list of dicts."""
    user = "Rank these for the query {{ query }}."
    labels = {"labels": "ABCD"} if method == "setwise" else {}  # a key only setwise's templates have
    with pytest.raises(ConfigError, match=r"never reads passages") as info:
        head_template({"user": user, **labels}, method)
    message = str(info.value)
    assert "{{ passages }}" not in message and "\n" not in message
    loop = re.search(r"add (\{% for (\w+) in passages %\}.*?\{% endfor %\}) to its system or user text", message)
    assert loop is not None, message
    assert f"looped over as the {method} head's own template does" in message
    fixed = head_template({"user": f"{user}\n{loop.group(1)}", **labels}, method)  # the hint, followed
    passages = [{"id": "A", "label": "A", "text": "alpha text"}, {"id": "B", "label": "B", "text": "beta text"}]
    rendered = fixed.render_text(fixed.user, query="q", passages=passages, num=2)
    assert "alpha text" in rendered and "beta text" in rendered and "{'" not in rendered


# --- #7: SFT from a model recorded as another head --------------------------------------------------------------------


def _recorded(folder: Path, method: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "rerank.json").write_text(json.dumps(record_payload(
        method, "reranker", {"max_doc_tokens": 40, "template": {"name": "t", "user": "{{ query }} {{ document }}"}},
        "sft", "Qwen/Qwen3-0.6B")))
    return folder


def test_sft_from_another_heads_model_warns_once_as_grpo_does(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """`train sft --set head=yes-no --set model=<an erank model>` dropped the recorded prompt without a word."""
    model = _recorded(tmp_path / "erank-sft" / "model", "erank")
    caplog.set_level(logging.WARNING, logger="rerank")
    for _ in range(2):  # a run builds its config more than once
        from_dict(SFTTrainConfig, {"model": str(model), "head": "yes-no", "data": {"path": "t.jsonl"}})
    (sft,) = _warnings(caplog, "trained as head")
    assert sft.startswith("sft: ") and "'erank'" in sft and "'yes-no'" in sft and "are not used" in sft
    from_dict(GRPOTrainConfig, {"model": str(model), "head": "yes-no", "batch_size": 8, "data": {"path": "t.jsonl"}})
    grpo = _warnings(caplog, "trained as head")[1]
    assert grpo.replace("grpo", "sft").replace("GRPO", "SFT") == sft  # one message, one helper

    caplog.clear()
    same = _recorded(tmp_path / "yes-no-sft" / "model", "yes-no")
    from_dict(SFTTrainConfig, {"model": str(same), "head": "yes-no", "data": {"path": "t.jsonl"}})
    assert _warnings(caplog, "trained as head") == []
