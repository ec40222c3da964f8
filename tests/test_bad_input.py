"""Bad input, faults and secrets (issue 18): each case a new user hit, reproduced, now a clear error or the right
result. Numbers are on the real TREC DL19 BM25 top-100 run (nDCG@10 0.5058, as Anserini)."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import pytest

from rerank.cli import main
from rerank.config import REDACTED, SECRET_KEYS, from_dict, load_yaml, to_dict
from rerank.data.datasets import Dataset, resolve_dataset
from rerank.data.io import iter_jsonl, read_corpus, read_qrels, read_queries, read_run, write_qrels
from rerank.errors import ConfigError, DataFormatError
from rerank.eval.pipeline import EvalConfig, rerank_run, run_eval
from rerank.heads.base import Reranker, RerankerConfig
from rerank.heads.registry import register_reranker
from rerank.types import Candidate, Query

BOM = b"\xef\xbb\xbf"
DL19_BM25_NDCG10 = 0.5058  # Anserini's figure for this run (data README)
SECRET = "sk-test-5e1f7c0a9b"


class LengthReranker(Reranker):
    """Scores shorter documents higher: deterministic and model-free."""

    method = "test-bad-input-length"

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [-float(len(c.doc.text)) for c in candidates]


register_reranker(LengthReranker.method, LengthReranker)


def _bom(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(BOM + src.read_bytes())
    return dst


def _ndcg(run_cli, run: Path, qrels: Path, *extra: str) -> dict:  # noqa: ANN001
    rc, out, err = run_cli("evaluate", "--run", run, "--qrels", qrels, "-m", "nDCG@10", "--json", *extra)
    assert rc == 0, err
    result = json.loads(out)
    assert result.pop("provenance")["data_inputs"]["run"]["path"]  # which files were read differs by design; the numbers may not
    return result


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    """Exit 2, one line on stderr (progress bars aside), no traceback, every needle named."""
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# --- a byte-order mark changes nothing ----------------------------------------------------------------------------


def test_bom_in_run_or_qrels_gives_the_same_numbers(dl19_dir: Path, tmp_path: Path, run_cli) -> None:
    run, qrels = dl19_dir / "bm25_top100.trec", dl19_dir / "qrels" / "test.tsv"
    base = _ndcg(run_cli, run, qrels)
    assert round(base["metrics"]["nDCG@10"], 4) == DL19_BM25_NDCG10 and base["num_queries"] == 43
    trec_qrels = tmp_path / "qrels.txt"
    write_qrels(read_qrels(qrels), trec_qrels)
    gz_run = tmp_path / "bom.trec.gz"
    gz_run.write_bytes(gzip.compress(BOM + run.read_bytes()))
    cases = {
        "run (was 0.5053)": (_bom(run, tmp_path / "bom.trec"), qrels),
        "BEIR qrels (was a misleading grade error)": (run, _bom(qrels, tmp_path / "bom.tsv")),
        "TREC qrels (was 0.4943 over 44 queries)": (run, _bom(trec_qrels, tmp_path / "bom.txt")),
        "gzipped run": (gz_run, qrels),
    }
    for name, (r, q) in cases.items():
        assert _ndcg(run_cli, r, q) == base, name


def test_bom_in_every_file_of_a_dataset(dl19_dir: Path, tmp_path: Path, run_cli) -> None:
    ds = tmp_path / "bom-copy" / dl19_dir.name  # same name: same registry entry (binary measures at grade 2)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        _bom(dl19_dir / name, ds / name)
    run = _bom(dl19_dir / "bm25_top100.trec", tmp_path / "run.trec")
    for folder, first_stage, out in ((dl19_dir, dl19_dir / "bm25_top100.trec", "plain"), (ds, run, "bom")):
        rc, _, err = run_cli("eval", "--dataset", folder, "--first-stage", first_stage, "--output", tmp_path / out,
                             "--reranker", LengthReranker.method, "--top-k", "10", "--max-queries", "5")
        assert rc == 0, err
    plain, bom = (json.loads((tmp_path / o / "metrics.json").read_text()) for o in ("plain", "bom"))
    assert bom["per_query"] == plain["per_query"] and bom["unknown_doc_ids"]["count"] == 0
    assert (tmp_path / "plain" / "scores.jsonl").read_text() == (tmp_path / "bom" / "scores.jsonl").read_text()


def test_bom_in_tsv_queries_training_jsonl_and_yaml(tmp_path: Path) -> None:
    assert read_queries(_write(tmp_path / "topics.tsv", BOM + b"1\tone\n2\ttwo\n")) == {
        "1": Query("1", "one"), "2": Query("2", "two")}
    rows = [{"qid": "q", "query": "x", "candidates": [{"id": "a", "text": "t"}], "labels": [1]}]
    path = _write(tmp_path / "train.jsonl", BOM + json.dumps(rows[0]).encode() + b"\n")
    assert [o for _, o in iter_jsonl(path)] == rows  # the trainers' reader
    assert load_yaml(_write(tmp_path / "c.yaml", BOM + b"top_k: 5\nname: x\n")) == {"top_k": 5, "name": "x"}
    excluded = _write(tmp_path / "ds" / "excluded" / "test.tsv", BOM + b"q1\td1\r\n")
    assert Dataset(excluded.parents[1]).excluded_ids("test") == {"q1": {"d1"}}


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- duplicates are errors naming both lines ------------------------------------------------------------------------


def test_duplicate_qrels_pair_names_both_lines_or_keeps_last_or_max(dl19_dir: Path, tmp_path: Path, run_cli) -> None:
    run, qrels = dl19_dir / "bm25_top100.trec", dl19_dir / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.endswith("\t3"))  # a grade-3 judgement, judged again as 1
    qid, docid, _ = lines[at].split("\t")
    dup = _write(tmp_path / "dup.tsv", "\n".join([*lines, f"{qid}\t{docid}\t1", ""]).encode())
    rc, _, err = run_cli("evaluate", "--run", run, "--qrels", dup)
    _one_line_error(rc, err, f"{dup}:{len(lines) + 1}:", f"first at line {at + 1}", repr(docid), "--allow-duplicates")
    with pytest.raises(DataFormatError, match=f"first at line {at + 1}") as e:
        read_qrels(dup)
    assert e.value.line == len(lines) + 1
    # last: the later grade wins; max: the higher one (each equals the qrels edited by hand)
    values = {}
    for policy, kept in (("last", "1"), ("max", "3")):
        edited = _write(tmp_path / f"{policy}.tsv", "\n".join([*lines[:at], f"{qid}\t{docid}\t{kept}",
                                                                 *lines[at + 1 :], ""]).encode())
        values[policy] = _ndcg(run_cli, run, dup, "--allow-duplicates", policy)
        assert values[policy] == _ndcg(run_cli, run, edited)
    assert values["last"] != values["max"]
    assert read_qrels(dup, "last")[qid][docid] == 1 and read_qrels(dup, "max")[qid][docid] == 3
    # rerank eval takes the same option for a dataset's qrels
    ds = tmp_path / "ds"
    for name in ("corpus.jsonl", "queries.jsonl"):
        (ds / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dl19_dir / name, ds / name)
    _write(ds / "qrels" / "test.tsv", dup.read_bytes())
    rc, _, err = run_cli("eval", "--dataset", ds, "--first-stage", run, "--output", tmp_path / "o")
    _one_line_error(rc, err, f"first at line {at + 1}")
    rc, _, err = run_cli("eval", "--dataset", ds, "--first-stage", run, "--output", tmp_path / "o", "-m", "nDCG@10",
                         "--allow-duplicates", "max")
    assert rc == 0, err
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["metrics"] == \
        _ndcg(run_cli, run, tmp_path / "max.tsv")["metrics"]


def test_duplicate_query_and_document_ids_name_both_lines(tmp_path: Path) -> None:
    q = _write(tmp_path / "queries.jsonl", b'{"_id": "1", "text": "a"}\n{"_id": "2", "text": "b"}\n'
               b'{"_id": "1", "text": "later text"}\n')
    with pytest.raises(DataFormatError, match=r"queries.jsonl:3: duplicate query id '1' \(first at line 1\)"):
        read_queries(q)
    tsv = _write(tmp_path / "topics.tsv", b"7\ta\n\n7\tb\n")
    with pytest.raises(DataFormatError, match=r"topics.tsv:3: duplicate query id '7' \(first at line 1\)"):
        read_queries(tsv)
    c = _write(tmp_path / "corpus.jsonl", b'{"_id": "d", "text": "a"}\n{"_id": "e", "text": "b"}\n'
               b'{"_id": "d", "text": "c"}\n')
    for reader in (read_corpus, lambda p: list(Dataset(p.parent).iter_corpus())):
        with pytest.raises(DataFormatError, match=r"corpus.jsonl:3: duplicate document id 'd' \(first at line 1\)"):
            reader(c)


# --- formats trec_eval users have ---------------------------------------------------------------------------------


def test_msmarco_run_and_trec_eval_measure_names(dl19_dir: Path, tmp_path: Path, run_cli) -> None:
    run, qrels = read_run(dl19_dir / "bm25_top100.trec"), dl19_dir / "qrels" / "test.tsv"
    msmarco = tmp_path / "run.msmarco.tsv"  # what Pyserini writes with --output-format msmarco
    msmarco.write_text("".join(f"{q}\t{d}\t{r}\n" for q in run for r, (d, _) in enumerate(run[q], 1)))
    ours = ["nDCG@10", "RR", "AP", "P@10", "R@100"]
    trec = ["ndcg_cut_10", "recip_rank", "map", "P_10", "recall_100"]
    a = _ndcg(run_cli, dl19_dir / "bm25_top100.trec", qrels, *(x for m in ours for x in ("-m", m)))
    b = _ndcg(run_cli, msmarco, qrels, *(x for m in trec for x in ("-m", m)))
    assert a == b and round(b["metrics"]["nDCG@10"], 4) == DL19_BM25_NDCG10
    assert list(b["metrics"]) == ["nDCG@10", "RR", "AP", "P@10", "R@100"]  # one spelling in results
    for bad, match in (("q1\td1\t0\n", "rank '0' is not a positive integer"),
                       ("q1\td1\t1\nq1\td2\t1\n", r"duplicate rank 1 for query 'q1' \(first at line 1\)"),
                       ("q1\td1\t1\nq1 Q0 d2 2 1.0 t\n", "MS MARCO run lines need 3 columns, found 6")):
        with pytest.raises(DataFormatError, match=match):
            read_run(_write(tmp_path / "bad.tsv", bad.encode()))
    # a 4- or 6-column line cut after 3 fields must not read as the 3-column form: those are tab-separated
    with pytest.raises(DataFormatError, match="MS MARCO runs are tab-separated"):
        read_run(_write(tmp_path / "cut.trec", b"264014 Q0 5611210"))
    with pytest.raises(DataFormatError, match="BEIR qrels are tab-separated"):
        read_qrels(_write(tmp_path / "cut.txt", b"19335 0 1017759"))
    rc, _, err = run_cli("evaluate", "--run", msmarco, "--qrels", qrels, "-m", "ndcg_cutt_10")
    _one_line_error(rc, err, "unknown measure 'ndcg_cutt_10'")


# --- numbers are validated up front -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("eval", "--max-queries", "-1"),  # scored 42 of 43 queries
        ("eval", "--max-queries", "0"),  # wrote nDCG 0.0 over 0 queries, exit 0
        ("eval", "--top-k", "0"),
        ("eval", "--depth", "0"),
        ("rank", "--top-k", "0"),  # wrote empty rankings, exit 0
        ("rank", "--max-queries", "0"),
        ("evaluate", "--rel-level", "0"),
        ("serve", "--max-queue", "0"),
        ("index", "--batch-size", "-2"),
    ],
)
def test_bad_numbers_are_one_line_errors(args: tuple[str, ...], dl19_dir: Path, tmp_path: Path, run_cli) -> None:
    command, flag, value = args
    rest = {
        "eval": ["--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec", "--output", tmp_path / "o"],
        "rank": ["--input", tmp_path / "in.jsonl", "--reranker", LengthReranker.method,
                 "--output", tmp_path / "o.trec"],
        "evaluate": ["--run", dl19_dir / "bm25_top100.trec", "--qrels", dl19_dir / "qrels" / "test.tsv"],
        "serve": ["--reranker", LengthReranker.method],
        "index": ["--model", "m", "--dataset", dl19_dir, "--output", tmp_path / "i"],
    }[command]
    rc, out, err = run_cli(command, *rest, flag, value)
    _one_line_error(rc, err, f"argument {flag}: must be >= 1, got {value}")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.trec").exists()


def test_api_numbers_and_docs_are_validated(dl19_dir: Path) -> None:
    rr = LengthReranker()
    assert rr.rerank("q", ["aaa", "b", "cc"]).doc_ids == ["1", "2", "0"]
    assert rr.rerank("q", ("aaa", "b"), top_k=None).doc_ids == ["1", "0"]
    assert rr.rerank("q", (d for d in ["aaa", "b"]), top_k=1).doc_ids == ["1"]
    with pytest.raises(TypeError, match="docs must be a list"):
        rr.rerank("q", docs="abc")  # ranked three one-character documents
    for bad in ({"a": 1}, {"a", "b"}, 3):
        with pytest.raises(TypeError, match="docs must be a list"):
            rr.rerank("q", bad)
    with pytest.raises(TypeError, match="queries must be a list"):
        rr.rerank_batch("qq", [["a"], ["b"]])
    for top_k in (-1, 0, 1.5, True):  # -1 dropped the last document
        with pytest.raises(ValueError, match="top_k must be an integer >= 1 or None"):
            rr.rerank("q", ["a", "b"], top_k=top_k)
    ds = resolve_dataset(dl19_dir)
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="max-queries must be an integer >= 1"):
            ds.split_queries("test", bad)
        with pytest.raises(ConfigError, match=">= 1"):
            EvalConfig(dataset=str(dl19_dir), max_queries=bad)
        with pytest.raises(ConfigError, match="top-k must be an integer >= 1"):
            EvalConfig(dataset=str(dl19_dir), top_k=bad)
        with pytest.raises(ConfigError, match="top_k must be an integer >= 1"):
            rerank_run(rr, {}, {}, {}, bad)
    from rerank.trainers.data import DataConfig

    with pytest.raises(ConfigError, match="data.max_queries must be >= 1"):
        DataConfig(path="train.jsonl", max_queries=-1)
    with pytest.raises(ConfigError, match="measures must be a list"):
        EvalConfig(dataset="x", measures="nDCG@10")
    with pytest.raises(ConfigError, match="unknown measure"):
        EvalConfig(dataset="x", measures=["nDCG@1O"])
    assert len(ds.split_queries("test", 42)) == 42


@pytest.mark.parametrize(
    ("method", "options", "match"),
    [
        ("listwise", {"window": 0}, "window, stride and depth must be >= 1"),
        ("first", {"window": 20, "stride": 30}, r"stride \(30\) > window \(20\) would skip candidates"),
        ("erank", {"max_doc_tokens": 0}, "max_doc_tokens must be >= 1"),  # cut every document to nothing
        ("yes-no", {"max_query_tokens": -1}, "max_query_tokens must be >= 1"),  # dropped the query's last token
        ("grouprank", {"group_size": 0}, "group_size, repeats and max_new_tokens must be >= 1"),
        ("cross-encoder", {"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_head_numbers_are_checked_before_the_model_loads(method: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):  # the options fail first: no model is needed to find out
        Reranker.load(method, model="/no/such/model", **options)


# --- everything is checked before expensive work; one-line errors everywhere --------------------------------------


@pytest.fixture
def no_retrieval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retrieval fails the test if it starts: a check that should have come first did not."""

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the first stage ran before the inputs were checked")

    monkeypatch.setattr("rerank.eval.pipeline.build_retriever", boom)
    monkeypatch.setattr("rerank.retrieval.base.build_retriever", boom)


def test_bad_model_or_option_fails_before_retrieval(
    dl19_dir: Path, tiny_bert_dir: Path, tmp_path: Path, run_cli, no_retrieval: None
) -> None:
    common = ("eval", "--dataset", dl19_dir, "--retriever", "bm25", "--output", tmp_path / "o", "--reranker",
              "cross-encoder")
    cases = [
        (("--model", tmp_path / "nonexistent"), "does not exist"),
        (("--model", dl19_dir / "queries.jsonl"), "is a file, not a model"),
        (("--model", tmp_path), "folder without a model"),
        (("--model", "owner/not-cached-model"), "hub is offline"),
        (("--model", tiny_bert_dir, "--reranker-set", "bogus=1"), "unknown key 'bogus'"),
        (("--model", tiny_bert_dir, "--reranker-set", "batch_size=zero"), "expected an integer"),
    ]
    for extra, needle in cases:
        rc, _, err = run_cli(*common, *extra)
        _one_line_error(rc, err, needle)
    assert not (tmp_path / "o" / "metrics.json").exists()
    rc, _, err = run_cli("rank", "--input", tmp_path / "absent.jsonl", "--reranker", "cross-encoder", "--model",
                         tmp_path / "nonexistent", "--output", tmp_path / "r.trec")
    _one_line_error(rc, err, "nonexistent does not exist")
    rc, _, err = run_cli("index", "--model", dl19_dir / "corpus.jsonl", "--dataset", dl19_dir, "--output",
                         tmp_path / "i")
    _one_line_error(rc, err, "is a file, not a model")
    rc, _, err = run_cli("serve", "--reranker", "cross-encoder", "--model", tmp_path / "nonexistent")
    _one_line_error(rc, err, "does not exist")


def test_data_build_checks_models_before_mining(
    tiny_beir_dir: Path, tmp_path: Path, run_cli, no_retrieval: None
) -> None:
    import yaml

    recipe = {"recipe": "hard_negatives", "source": {"dataset": str(tiny_beir_dir), "split": "train"},
              "first_stage": {"retriever": "bm25", "depth": 20},
              "false_negative_filter": {"scorer": "reranker", "model": str(tmp_path / "no-such-model")}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    rc, _, err = run_cli("data", "build", path, "--output", tmp_path / "o")
    _one_line_error(rc, err, "false_negative_filter model", "no-such-model does not exist")
    recipe["false_negative_filter"] = None
    recipe["first_stage"] = {"run": str(tmp_path / "absent.trec")}
    path.write_text(yaml.safe_dump(recipe))
    rc, _, err = run_cli("data", "build", path, "--output", tmp_path / "o2")
    _one_line_error(rc, err, "absent.trec does not exist")


@pytest.mark.parametrize("kind", ["not gzip", "truncated gzip", "bad bytes"])
def test_broken_files_are_one_line_errors_naming_the_file(dl19_dir: Path, tmp_path: Path, run_cli, kind: str) -> None:
    raw = (dl19_dir / "bm25_top100.trec").read_bytes()
    if kind == "not gzip":
        run, needle = _write(tmp_path / "run.trec.gz", raw), f"{tmp_path / 'run.trec.gz'}:1: not a valid gzip file"
    elif kind == "truncated gzip":
        run, needle = _write(tmp_path / "run.trec.gz", gzip.compress(raw)[:20000]), "truncated gzip file"
    else:
        cut = raw.index(b"\n", 5000) + 1
        run, needle = _write(tmp_path / "run.trec", raw[:cut] + b"\xff" + raw[cut:]), "invalid UTF-8"
    for command in (("evaluate", "--run", run, "--qrels", dl19_dir / "qrels" / "test.tsv"),
                    ("eval", "--dataset", dl19_dir, "--first-stage", run, "--output", tmp_path / "o")):
        rc, _, err = run_cli(*command)
        _one_line_error(rc, err, str(run), needle)
    with pytest.raises(DataFormatError) as e:
        read_run(run)
    assert e.value.path == str(run) and e.value.line is not None
    if kind == "truncated gzip":  # the line after the last one the cut stream still holds whole
        import zlib

        whole_lines = zlib.decompressobj(31).decompress(run.read_bytes()).count(b"\n")
        assert e.value.line == whole_lines + 1 and whole_lines > 1000


@pytest.mark.parametrize(
    "command",
    [
        ("evaluate", "--run", "{tmp}/absent.trec", "--qrels", "{tmp}/absent.tsv"),
        ("eval", "--dataset", "{tmp}/absent", "--first-stage", "{tmp}/r.trec", "--output", "{tmp}/o"),
        ("rank", "--input", "{tmp}/bad.yaml", "--reranker", LengthReranker.method, "--output", "{tmp}/o.trec"),
        ("leaderboard", "--config", "{tmp}/bad.yaml"),
        ("data", "build", "{tmp}/bad.yaml"),
        ("train", "sft", "--config", "{tmp}/bad.yaml", "--output", "{tmp}/t"),
        ("index", "--model", "{tmp}/absent", "--dataset", "{tmp}", "--output", "{tmp}/i"),
        ("serve", "--reranker", "no-such-method"),
    ],
)
def test_every_command_reports_bad_input_in_one_line(command: tuple[str, ...], tmp_path: Path, run_cli,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "bad.yaml", b"a: [1, 2\nb: 3\n")
    args = [a.format(tmp=tmp_path) for a in command]
    rc, _, err = run_cli(*args)
    _one_line_error(rc, err)
    assert err.strip().splitlines()[-1].startswith("error: ")
    # --debug, or RERANK_DEBUG=1, shows the traceback instead (here: the exception leaves main)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whichever error the command raises
        main(["--debug", *args])
    monkeypatch.setenv("RERANK_DEBUG", "1")
    with pytest.raises(Exception):  # noqa: B017, PT011
        main(args)


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", b"top_k: 5\nlist: [1, 2\nname: x\n")
    with pytest.raises(DataFormatError) as e:
        load_yaml(path)
    assert e.value.path == str(path) and e.value.line == 3 and "\n" not in str(e.value)
    with pytest.raises(DataFormatError, match="invalid YAML"):
        load_yaml(_write(tmp_path / "bin.yaml", b"a: \xff\xfe\n"))


# --- secrets never reach a file -----------------------------------------------------------------------------------


def _grep_tree(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` (hidden ones too) whose bytes contain ``needle``."""
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_secret_options_are_redacted_in_configs() -> None:
    from rerank.backends.openai import OpenAIBackendConfig
    from rerank.client import RemoteRerankerConfig
    from rerank.serve import ServeConfig

    for cfg in (RemoteRerankerConfig(api_key=SECRET), OpenAIBackendConfig(base_url="http://x", api_key=SECRET),
                ServeConfig(api_key=SECRET)):
        secret_fields = {f for f in cfg.__dataclass_fields__.values() if f.metadata.get("secret")}
        assert {f.name for f in secret_fields} <= SECRET_KEYS and secret_fields  # marked, and named in SECRET_KEYS
        assert SECRET not in repr(cfg) and to_dict(cfg)["api_key"] == REDACTED
    assert to_dict(RemoteRerankerConfig())["api_key"] is None  # an absent key stays visibly absent
    nested = {"backend_options": {"api_key": SECRET, "base_url": "http://x"}, "rows": [{"api_key": SECRET}]}
    assert SECRET not in json.dumps(to_dict(nested))
    with pytest.raises(ConfigError) as e:  # a bad value is not echoed either
        from_dict(RemoteRerankerConfig, {"api_key": [SECRET]})
    assert SECRET not in str(e.value)


def test_model_folders_and_run_records_hold_no_secret(tmp_path: Path) -> None:
    """A trained model's ``rerank.json`` leaves an API key and a server address out (the key would be read back as the
    key; where requests go is the user's to choose), and the training run record writes the key redacted."""
    from rerank.methods.record import read_record
    from rerank.trainers.artifacts import write_model_artifacts
    from rerank.trainers.base import save_run_record
    from rerank.trainers.data import DataConfig

    options = {"max_doc_tokens": 64, "backend_options": {"api_key": SECRET, "base_url": "http://127.0.0.1:9/v1"}}
    config = {"model": "base", "head": "yes-no", "data": DataConfig(path="x.jsonl"), "head_options": options}
    write_model_artifacts(tmp_path / "model", method="yes-no", trainer="sft", config=config, options=options)
    save_run_record(tmp_path, "sft", config)
    assert _grep_tree(tmp_path, SECRET) == []
    assert read_record(tmp_path / "model")["options"] == {"max_doc_tokens": 64, "backend_options": {}}
    assert "127.0.0.1:9" not in (tmp_path / "model" / "rerank.json").read_text()
    record = json.loads((tmp_path / "rerank_train.json").read_text())
    assert record["config"]["head_options"]["backend_options"]["api_key"] == REDACTED


def test_secret_reaches_the_server_but_no_file_or_log(
    dl19_dir: Path, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """eval, rank, leaderboard and a data build with the remote reranker's api_key: the server requires the key (so
    it was used), and no file any of them wrote, and no log line, holds it."""
    import yaml

    from rerank.serve import ServeConfig
    from tests.serve_support import OverlapReranker
    from tests.test_serve import running

    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    run_file = dl19_dir / "bm25_top100.trec"
    with running(OverlapReranker(), ServeConfig(api_key=SECRET)) as url:
        remote = ("--reranker", "remote", "--reranker-set", f"base_url={url}", "--reranker-set", f"api_key={SECRET}")
        rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--first-stage", run_file, "--output", out / "eval",
                             "--top-k", "5", "--max-queries", "3", *remote)
        assert rc == 0, err
        rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--first-stage", run_file, "--output", out / "denied",
                             "--top-k", "5", "--max-queries", "3", *remote[:4])
        assert rc == 2 and "401" in err  # without the key the server refuses: the key above was really sent
        monkeypatch.setenv("RERANK_API_KEY", SECRET)  # the recommended way: not on the command line
        rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--first-stage", run_file, "--output", out / "env",
                             "--top-k", "5", "--max-queries", "2", *remote[:4])
        assert rc == 0, err
        monkeypatch.delenv("RERANK_API_KEY")
        inp = _write(tmp_path / "in.jsonl", b'{"query": "what is bm25", "docs": ["bm25 ranks", "other"]}\n')
        for suffix in ("trec", "jsonl"):
            rc, _, err = run_cli("rank", "--input", inp, "--output", out / f"ranked.{suffix}", *remote)
            assert rc == 0, err
        board = {"name": "secret board", "measure": "nDCG@10", "published": False,
                 "columns": [{"label": "dl19", "dataset": str(dl19_dir), "max_queries": 2, "top_k": 5,
                              "runs": {"bm25": "bm25_top100.trec"}}],
                 "rows": [{"name": "remote", "retriever": "bm25", "reranker": "remote",
                           "reranker_options": {"base_url": url, "api_key": SECRET}}]}
        _write(tmp_path / "lb.yaml", yaml.safe_dump(board).encode())
        rc, _, err = run_cli("leaderboard", "--config", tmp_path / "lb.yaml", "--results-dir", out / "lb")
        assert rc == 0, err
        recipe = {"recipe": "teacher_labels", "mode": "scores", "candidates": 4,
                  "source": {"dataset": str(dl19_dir), "split": "test", "max_queries": 2},
                  "first_stage": {"run": str(run_file), "depth": 4},
                  "teacher": {"reranker": "remote", "options": {"base_url": url, "api_key": SECRET}}}
        _write(tmp_path / "recipe.yaml", yaml.safe_dump(recipe).encode())
        rc, _, err = run_cli("data", "build", tmp_path / "recipe.yaml", "--output", out / "data")
        assert rc == 0, err
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert {Path("eval/metrics.json"), Path("eval/scores.jsonl"), Path("lb/remote/dl19/cell.json"),
            Path("data/manifest.json"), Path("ranked.jsonl")} <= set(written), written
    assert _grep_tree(out, SECRET) == []
    assert _grep_tree(tmp_path / "out", REDACTED)  # the key's place is marked, not silently dropped
    assert SECRET not in caplog.text


def test_serve_reads_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.cli import build_parser
    from rerank.cli.serve_cmd import serve_config

    monkeypatch.setenv("RERANK_API_KEY", SECRET)
    cfg = serve_config(build_parser().parse_args(["serve", "--reranker", "x"]))
    assert cfg.api_key == SECRET and SECRET not in repr(cfg) and SECRET not in json.dumps(to_dict(cfg))


# --- an output folder holds one run's files -----------------------------------------------------------------------


def test_rerun_into_a_folder_leaves_no_stale_files(dl19_dir: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "o"
    common = ("eval", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec", "--output", out,
              "--max-queries", "3")
    rc, _, err = run_cli(*common, "--reranker", LengthReranker.method, "--top-k", "10")
    assert rc == 0, err
    assert (out / "scores.jsonl").is_file()
    (out / "notes.txt").write_text("mine")  # not the command's: left alone
    rc, _, err = run_cli(*common)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "notes.txt", "report.md", "run.trec"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reranker"] is None and read_run(out / "run.trec") == {
        q: v for q, v in read_run(dl19_dir / "bm25_top100.trec").items() if q in metrics["per_query"]}
    # a run that fails (here: its reranker's server is down) leaves the earlier complete run as it was
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, _, err = run_cli(*common, "--reranker", "remote", "--reranker-set", "base_url=http://127.0.0.1:9",
                         "--reranker-set", "max_retries=0")
    assert rc == 2 and "unreachable" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_run_eval_api_writes_the_same_set(dl19_dir: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(dataset=str(dl19_dir), first_stage=str(dl19_dir / "bm25_top100.trec"), max_queries=2,
                     reranker=LengthReranker.method, top_k=5, output=str(tmp_path))
    run_eval(cfg)
    assert (tmp_path / "scores.jsonl").exists()
    cfg.reranker = None
    run_eval(cfg)
    assert not (tmp_path / "scores.jsonl").exists()


def test_base_reranker_config_rejects_unknown_options() -> None:
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        Reranker.load(LengthReranker.method, bogus=1)
    assert isinstance(Reranker.load(LengthReranker.method).config, RerankerConfig)


# --- paths are checked before the work, and errors name the option (newcomer walk-through) -------------------------


def _not_writable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make folder ``path`` read-only; as root (who writes anyway) the permission check is told so instead."""
    import os

    path.chmod(0o500)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr("rerank.cli.common.os.access",
                            lambda p, mode: False if Path(p) == path else real(p, mode))


@pytest.fixture
def no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoding a corpus fails the test: a check that should have come first did not."""

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the corpus was encoded before the options were checked")

    monkeypatch.setattr("rerank.retrieval.index.encode_corpus_cached", boom)


def test_unwritable_output_fails_before_the_work(dl19_dir: Path, tiny_beir_dir: Path, tmp_path: Path, run_cli,
                                                  monkeypatch: pytest.MonkeyPatch, no_retrieval: None) -> None:
    """Each was found after the work as a raw OS error (eval reranked everything, then `[Errno 17] File exists`;
    rank printed a temporary file's name)."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    qd = tmp_path / "qd.jsonl"
    qd.write_text(json.dumps({"query": "q", "docs": ["a", "bb"]}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"recipe: hard_negatives\nsource: {{dataset: {tiny_beir_dir}, split: train}}\n")
    train_cfg = tmp_path / "t.yaml"
    train_cfg.write_text("model: all-MiniLM-L6-v2\nhead: cross-encoder\ndata: {beir: scifact}\n")
    first_stage = dl19_dir / "bm25_top100.trec"
    folder_commands = {
        "eval": ("eval", "--dataset", dl19_dir, "--first-stage", first_stage, "--reranker", LengthReranker.method),
        "eval --retriever": ("eval", "--dataset", dl19_dir, "--retriever", "bm25"),
        "train": ("train", "sft", "--config", train_cfg),
        "data build": ("data", "build", recipe),
        "index": ("index", "--model", "all-MiniLM-L6-v2", "--dataset", tiny_beir_dir),
    }
    for name, command in folder_commands.items():
        rc, _, err = run_cli(*command, "--output", afile)
        _one_line_error(rc, err, f"--output {afile} is a file; give a folder")
        rc, _, err = run_cli(*command, "--output", afile / "sub")
        _one_line_error(rc, err, f"--output {afile / 'sub'}: {afile} is a file")
    rank = ("rank", "--input", qd, "--reranker", LengthReranker.method)
    rc, _, err = run_cli(*rank, "--output", tmp_path)
    _one_line_error(rc, err, f"--output {tmp_path} is a folder; give a file name")
    assert ".tmp" not in err
    rc, _, err = run_cli("leaderboard", "--config", train_cfg, "--results-dir", afile)
    _one_line_error(rc, err, f"--results-dir {afile} is a file")
    rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--first-stage", first_stage, "--output", tmp_path / "o",
                         "--log-llm-io", tmp_path)
    _one_line_error(rc, err, f"--log-llm-io {tmp_path} is a folder")
    with pytest.raises(ConfigError, match=f"output {afile} is a file; give a folder"):  # the API, before it reads
        run_eval(EvalConfig(dataset=str(dl19_dir), first_stage=str(first_stage), output=str(afile)))
    assert afile.read_text() == "mine"

    locked = tmp_path / "locked"
    locked.mkdir()
    _not_writable(locked, monkeypatch)
    try:
        rc, _, err = run_cli(*folder_commands["eval"], "--output", locked / "new" / "deeper")
        _one_line_error(rc, err, f"--output {locked / 'new' / 'deeper'} cannot be created: {locked} is not writable")
        rc, _, err = run_cli(*folder_commands["eval"], "--output", locked)
        _one_line_error(rc, err, f"--output {locked} is not writable")
        rc, _, err = run_cli(*rank, "--output", locked / "r.trec")
        _one_line_error(rc, err, f"--output {locked / 'r.trec'}", "is not writable")
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (("rank", "--input", "{tmp}/nope.jsonl", "--reranker", LengthReranker.method, "--output", "{tmp}/o.trec"),
         "--input"),
        (("rank", "--first-stage", "{tmp}/nope.trec", "--dataset", "{dl19}", "--reranker", LengthReranker.method,
          "--output", "{tmp}/o.trec"), "--first-stage"),
        (("eval", "--dataset", "{dl19}", "--first-stage", "{tmp}/nope.trec", "--output", "{tmp}/o"), "--first-stage"),
        (("eval", "--dataset", "{dl19}", "--first-stage", "{run}", "--reranker", LengthReranker.method,
          "--reranker-config", "{tmp}/nope.yaml", "--output", "{tmp}/o"), "--reranker-config"),
        (("eval", "--dataset", "{dl19}", "--retriever", "bm25", "--retriever-config", "{tmp}/nope.yaml",
          "--output", "{tmp}/o"), "--retriever-config"),
        (("evaluate", "--run", "{tmp}/nope.trec", "--qrels", "{qrels}"), "--run"),
        (("evaluate", "--run", "{run}", "--qrels", "{tmp}/nope.tsv"), "--qrels"),
        (("train", "sft", "--config", "{tmp}/nope.yaml", "--output", "{tmp}/t"), "--config"),
        (("leaderboard", "--config", "{tmp}/nope.yaml"), "--config"),
    ],
)
def test_missing_input_files_name_the_option(command: tuple[str, ...], option: str, dl19_dir: Path, tmp_path: Path,
                                             run_cli, no_retrieval: None) -> None:
    """Was `error: [Errno 2] No such file or directory: 'nope.jsonl'`, naming no option."""
    names = {"tmp": tmp_path, "dl19": dl19_dir, "run": dl19_dir / "bm25_top100.trec",
             "qrels": dl19_dir / "qrels" / "test.tsv"}
    args = [a.format(**names) for a in command]
    missing = next(a for a in args if "nope" in a)
    rc, _, err = run_cli(*args)
    _one_line_error(rc, err, f"{option} {missing} does not exist")
    args[args.index(missing)] = str(tmp_path)
    rc, _, err = run_cli(*args)
    _one_line_error(rc, err, f"{option} {tmp_path} is a folder; give a file")
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()


def test_a_run_of_another_dataset_is_an_error_and_a_partial_one_a_warning(
    dl19_dir: Path, scifact_dir: Path, tmp_path: Path, run_cli, caplog: pytest.LogCaptureFixture
) -> None:
    """DL19's run on SciFact scored nDCG@10 0.0 over 300 queries, exit 0 (rank wrote an empty file)."""
    dl19_run = dl19_dir / "bm25_top100.trec"
    rc, _, err = run_cli("eval", "--dataset", scifact_dir, "--first-stage", dl19_run, "--output", tmp_path / "e",
                         "--reranker", LengthReranker.method)
    _one_line_error(rc, err, f"--first-stage {dl19_run} shares no query id with the 300 test queries of dataset "
                    f"scifact", "1037798")
    assert not (tmp_path / "e").exists()
    rc, _, err = run_cli("rank", "--first-stage", dl19_run, "--dataset", scifact_dir, "--reranker",
                         LengthReranker.method, "--output", tmp_path / "r.trec")
    _one_line_error(rc, err, f"--first-stage {dl19_run} shares no query id with the 1109 queries of dataset scifact")
    assert not (tmp_path / "r.trec").exists()

    run = read_run(dl19_run)
    first, kept = min(run), sorted(run)[1:3]  # the first query (sorted) has no ranking; 2 of the first 3 do
    partial = tmp_path / "partial.trec"
    partial.write_text("".join(f"{q} Q0 {d} {i + 1} {s} x\n" for q in kept for i, (d, s) in enumerate(run[q])))
    caplog.set_level(logging.WARNING, logger="rerank")
    rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--first-stage", partial, "--max-queries", "3",
                         "--output", tmp_path / "p")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert metrics["num_queries"] == 3 and metrics["missing_queries"] == [first]
    assert metrics["per_query"][first]["nDCG@10"] == 0.0
    assert (f"1 of the first 3 test queries of dataset {dl19_dir.name} (--max-queries 3) have no ranking in "
            f"--first-stage {partial}") in caplog.text
    caplog.clear()
    mixed = tmp_path / "mixed.trec"  # two DL19 queries and one SciFact query ranking SciFact documents
    mixed.write_text(partial.read_text() + "1 Q0 31715818 1 2.0 x\n1 Q0 14717500 2 1.0 x\n")
    rc, _, err = run_cli("rank", "--first-stage", mixed, "--dataset", scifact_dir, "--reranker",
                         LengthReranker.method, "--output", tmp_path / "m.trec")
    assert rc == 0, err
    assert f"2 of the 3 queries of --first-stage {mixed} are not in dataset scifact" in caplog.text
    assert set(read_run(tmp_path / "m.trec")) == {"1"}


def _trained_folder(path: Path, method: str, kind: str = "reranker") -> Path:
    """A model folder as training writes it: model files (here a stand-in config.json) and its rerank.json."""
    from rerank.methods.record import record_payload

    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "rerank.json").write_text(json.dumps(record_payload(method, kind, {}, "sft", "base")))
    return path


def test_model_without_reranker_says_what_is_missing(
    dl19_dir: Path, tiny_beir_dir: Path, tmp_path: Path, run_cli
) -> None:
    """`--retriever bm25 --model M` said `bm25: unknown key 'model' for BM25Config`; a training run folder said the
    retriever's model is a folder without a model in it."""
    trained = _trained_folder(tmp_path / "run" / "model", LengthReranker.method)
    (tmp_path / "run" / "rerank_train.json").write_text("{}")
    bm25 = ("eval", "--dataset", tiny_beir_dir, "--retriever", "bm25", "--max-queries", "2")
    rc, _, err = run_cli(*bm25, "--model", "all-MiniLM-L6-v2", "--output", tmp_path / "o")
    _one_line_error(rc, err, "--model needs --reranker METHOD (or a trained reranker folder with rerank.json); "
                             "bm25 takes no model")
    rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec",
                         "--model", "all-MiniLM-L6-v2", "--output", tmp_path / "o")
    _one_line_error(rc, err, "--model needs --reranker METHOD", "a --first-stage run takes no model")
    for command in (bm25, ("rank", "--input", tmp_path / "absent.jsonl")):
        rc, _, err = run_cli(*command, "--model", tmp_path / "run", "--output", tmp_path / "o.trec")
        _one_line_error(rc, err, f"--model {tmp_path / 'run'} is a training run folder", f"--model {trained}")
    assert not (tmp_path / "o").exists()
    # a trained reranker folder needs no --reranker: its rerank.json names the method
    rc, _, err = run_cli(*bm25, "--model", trained, "--top-k", "5", "--output", tmp_path / "ok")
    assert rc == 0, err
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["reranker"]["model"] == str(trained)


def test_rank_output_names_input_combinations_and_help(dl19_dir: Path, tmp_path: Path, run_cli) -> None:
    """`ranked.jsonl.gz` silently wrote plain TREC text: .gz now gzips, .jsonl is JSON lines whatever the case, any
    other name (run.txt, as Anserini names runs) a TREC run, a .json name or a bare .gz refused; --dataset with
    --input was silently ignored; the help spoke of metrics and a dense retriever."""
    qd = tmp_path / "qd.jsonl"
    qd.write_text("".join(json.dumps({"query": {"id": f"q{i}", "text": "q"}, "docs": ["aaa", "b", "cc"]}) + "\n"
                          for i in range(2)))
    rank = ("rank", "--input", qd, "--reranker", LengthReranker.method)
    for name, said in (("ranked.json", "name it .jsonl"), (".gz", "give the file a name")):
        rc, _, err = run_cli(*rank, "--output", tmp_path / name)
        _one_line_error(rc, err, f"--output {tmp_path / name}: {said}")
        assert not (tmp_path / name).exists()
    for name in ("r.trec", "r.trec.gz", "r.jsonl", "r.jsonl.gz", "run.bm25.txt", "R.JSONL"):
        rc, _, err = run_cli(*rank, "--output", tmp_path / name)
        assert rc == 0, err
    assert read_run(tmp_path / "run.bm25.txt") == read_run(tmp_path / "r.trec")
    assert [o for _, o in iter_jsonl(tmp_path / "R.JSONL")] == [o for _, o in iter_jsonl(tmp_path / "r.jsonl")]
    assert read_run(tmp_path / "r.trec.gz") == read_run(tmp_path / "r.trec")
    assert gzip.decompress((tmp_path / "r.trec.gz").read_bytes()) == (tmp_path / "r.trec").read_bytes()
    assert [o for _, o in iter_jsonl(tmp_path / "r.jsonl.gz")] == [o for _, o in iter_jsonl(tmp_path / "r.jsonl")]
    for extra, named in ((("--dataset", dl19_dir), "--dataset"), (("--data-root", tmp_path), "--data-root")):
        rc, _, err = run_cli(*rank, *extra, "--output", tmp_path / "x.trec")
        _one_line_error(rc, err, f"{named} would be ignored: --input holds the queries and documents itself")
    rc, out, _ = run_cli("rank", "--help")
    assert rc == 0 and "metric" not in out and "dense" not in out and "rerank only the first N" in out


def test_closed_stdout_ends_quietly(dl19_dir: Path, tmp_path: Path) -> None:
    """`rerank evaluate … --per-query | head -5` printed a BrokenPipeError traceback."""
    import subprocess
    import sys

    from rerank.cli import BROKEN_PIPE

    proc = subprocess.Popen(
        [sys.executable, "-m", "rerank", "evaluate", "--run", str(dl19_dir / "bm25_top100.trec"), "--qrels",
         str(dl19_dir / "qrels" / "test.tsv"), "--rel-level", "2", "--per-query"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader leaves before the first line is written (as `head` does after its lines)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == BROKEN_PIPE, err
    assert err == "", err


def test_log_shows_our_info_and_only_warnings_of_other_libraries() -> None:
    """faiss's loader logged 11 INFO lines (a ModuleNotFoundError among them) on every dense eval and index."""
    import io

    from rerank.cli import log_handler

    ready = "INFO uvicorn.error: Uvicorn running on http://127.0.0.1:8000"  # the server's lifecycle stays visible
    for verbose, expected in ((False, ["INFO rerank.retrieval.index: ours", "WARNING faiss.loader: theirs, warned",
                                       ready]),
                              (True, ["INFO rerank.retrieval.index: ours", "INFO faiss.loader: theirs",
                                      "WARNING faiss.loader: theirs, warned", ready])):
        stream = io.StringIO()
        handler = log_handler(verbose, stream)
        for name, level, msg in (("rerank.retrieval.index", logging.INFO, "ours"),
                                 ("faiss.loader", logging.INFO, "theirs"),
                                 ("faiss.loader", logging.WARNING, "theirs, warned"),
                                 ("uvicorn.error", logging.INFO, "Uvicorn running on http://127.0.0.1:8000")):
            record = logging.LogRecord(name, level, __file__, 1, msg, None, None)
            if handler.filter(record):
                handler.emit(record)
        assert stream.getvalue().splitlines() == expected


def test_index_pq_m_is_checked_before_encoding(tiny_st_dir: Path, tiny_beir_dir: Path, tmp_path: Path, run_cli,
                                               no_encoding: None) -> None:
    """`--index-type ivfpq --pq-m 7` was refused only after the whole corpus was encoded."""
    from rerank.retrieval.dense import BiEncoder

    dim = BiEncoder.load(str(tiny_st_dir), device="cpu").dim
    assert dim % 7
    rc, _, err = run_cli("index", "--model", tiny_st_dir, "--dataset", tiny_beir_dir, "--output", tmp_path / "i",
                         "--index-type", "ivfpq", "--pq-m", "7", "--no-progress")
    _one_line_error(rc, err, f"pq_m=7 must divide the embedding dimension {dim}")
    assert not (tmp_path / "i").exists()
    # a pq_m that divides it reaches the encoding (here: the fixture's failure)
    with pytest.raises(AssertionError, match="encoded before"):
        main(["index", "--model", str(tiny_st_dir), "--dataset", str(tiny_beir_dir), "--output", str(tmp_path / "i"),
              "--index-type", "ivfpq", "--pq-m", str(dim // 2), "--pq-nbits", "7", "--no-progress"])


def test_override_errors_name_their_option_and_evaluate_checks_the_run_overlap(dl19_dir: Path, tmp_path: Path,
                                                                               run_cli) -> None:
    """--reranker-set / --retriever-set mistakes were reported as '--set …' (an option those commands lack); rerank
    evaluate of a run over other queries than the qrels printed zeros and exit 0."""
    qd = tmp_path / "qd.jsonl"
    qd.write_text(json.dumps({"query": "q", "docs": ["a", "b"]}) + "\n")
    rc, _, err = run_cli("rank", "--input", qd, "--reranker", LengthReranker.method, "--reranker-set", "fooo=1",
                         "--output", tmp_path / "r.trec")
    _one_line_error(rc, err, "--reranker-set fooo=1: unknown key 'fooo'")
    rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--retriever", "bm25", "--retriever-set", "k1=[1",
                         "--output", tmp_path / "e")
    _one_line_error(rc, err, "--retriever-set k1=[1: invalid YAML value")
    other = tmp_path / "other.trec"
    other.write_text("x1 Q0 d1 1 2.0 r\n")
    rc, _, err = run_cli("evaluate", "--run", other, "--qrels", dl19_dir / "qrels" / "test.tsv")
    _one_line_error(rc, err, f"--run {other} shares no query id with the 43 judged queries of --qrels")
