"""``--dataset irds:ID`` (rerank.data.irds): ir_datasets datasets converted once into cached BEIR folders, and
``rerank eval`` taking a dataset folder's own run as its first stage when given none.

The ir_datasets datasets are registered here from small local files (no network): one with scoreddocs (the reranking
form: run.trec + the documents it names), one without (the whole corpus).
"""

from __future__ import annotations

import json
import math
import re
import sys
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from rerank.data import irds
from rerank.data.datasets import resolve_dataset
from rerank.data.io import write_jsonl, write_qrels, write_run
from rerank.errors import ConfigError, DatasetNotFoundError
from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.heads.base import Reranker, RerankerConfig
from rerank.heads.registry import register_reranker
from rerank.types import Candidate, Query

PREFIX = f"rerank-test-{uuid.uuid4().hex[:8]}"  # ir_datasets' registry is per process and refuses a name twice
SCORED, FULL, NO_QRELS = f"{PREFIX}/scored", f"{PREFIX}/full", f"{PREFIX}/no-qrels"
UNRANKED = f"{PREFIX}/unranked"  # scoreddocs without scores, as MS MARCO's top-1000 files


class LengthReranker(Reranker):
    """Scores a document by its text length: any reranker will do where the first stage is under test."""

    method = "test-irds-length"
    config_class = RerankerConfig

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [float(len(c.doc.text)) for c in candidates]


register_reranker("test-irds-length", LengthReranker)


class TitleBodyDoc(NamedTuple):
    """A document without a ``text`` field whose ``default_text`` repeats the title (as msmarco-document's)."""

    doc_id: str
    title: str
    body: str

    def default_text(self) -> str:
        return f"{self.title} {self.body}"


class TitleTextDoc(NamedTuple):
    doc_id: str
    title: str
    text: str

    def default_text(self) -> str:
        return f"{self.title} {self.text}"


class _Docs:
    """Documentation with official measures, as ir_datasets' YAML gives (TREC DL: ``RR(rel=2)``)."""

    def documentation(self) -> dict[str, Any]:
        return {"official_measures": ["nDCG@10", "RR(rel=2)", "AP(rel=2)"]}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Register SCORED, FULL and NO_QRELS with ir_datasets from files written here."""
    ir_datasets = pytest.importorskip("ir_datasets")
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import TrecQrels, TrecQuery, TrecScoredDocs, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    src = tmp_path_factory.mktemp("irds-src")
    # TREC topics (title, description, narrative): the query text is the title
    topics = _write(src / "topics.tsv", ["q1\tcat food\twhat cats eat\tn", "q2\tdog walks\thow far dogs walk\tn"])
    qrels = _write(src / "qrels.txt", ["q1 0 d3 1", "q1 0 d2 3", "q1 0 d9 2", "q2 0 d6 2"])
    scored_docs = _write(src / "scored-docs.tsv", [f"d{i}\tTitle {i}\tbody of doc {i}" for i in range(1, 10)
                                                      if i != 7])
    # q1: d2 and d3 tie (trec_eval puts d3 first); d7 is named but is no document; d8 is no candidate
    run = _write(src / "run.txt", ["q1 Q0 d1 1 3.0 bm25", "q1 Q0 d2 2 2.0 bm25", "q1 Q0 d3 3 2.0 bm25",
                                   "q1 Q0 d4 4 1.0 bm25", "q2 Q0 d5 1 1.0 bm25", "q2 Q0 d6 2 0.5 bm25",
                                   "q2 Q0 d7 3 0.2 bm25"])
    full_docs = _write(src / "full-docs.tsv", [f"d{i}\tT{i}\t{text}" for i, text in
                                               enumerate(["cat food", "cats eat fish", "dog walks", "dogs walk far",
                                                          "weather report", "cat litter", "dog food"], 1)])
    queries = TsvQueries(LocalDownload(topics), query_cls=TrecQuery)
    judged = TrecQrels(LocalDownload(qrels), {})
    ir_datasets.registry.register(SCORED, Dataset(
        TsvDocs(LocalDownload(scored_docs), doc_cls=TitleBodyDoc), queries, judged,
        TrecScoredDocs(LocalDownload(run)), _Docs()))
    ir_datasets.registry.register(UNRANKED, Dataset(
        TsvDocs(LocalDownload(scored_docs), doc_cls=TitleBodyDoc), queries, judged,
        TrecScoredDocs(LocalDownload(_write(src / "unranked.tsv", ["q1\td4", "q1\td1", "q2\td5", "q2\td6"])))))
    ir_datasets.registry.register(FULL, Dataset(TsvDocs(LocalDownload(full_docs), doc_cls=TitleTextDoc), queries,
                                                TrecQrels(LocalDownload(_write(src / "full-qrels.txt", [
                                                    "q1 0 d1 2", "q1 0 d2 1", "q2 0 d3 1", "q2 0 d4 2"])), {})))
    ir_datasets.registry.register(NO_QRELS, Dataset(TsvDocs(LocalDownload(full_docs), doc_cls=TitleTextDoc), queries))
    return {"scored": SCORED, "full": FULL}


@pytest.fixture(autouse=True)
def _irds_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "ir_datasets_home"))


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_scoreddocs_convert_to_the_reranking_form(registered: dict[str, str], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "data").mkdir()  # a data root given must exist
    ds = resolve_dataset(f"irds:{SCORED}", tmp_path / "data")
    folder = tmp_path / "data" / "irds" / SCORED.replace("/", "__")
    assert ds.root == folder and ds.name == f"irds:{SCORED}"
    assert ds.rel_level == 2  # from the official measures' rel=2, as dl19-bm25-top100 is judged
    assert _lines(folder / "queries.jsonl") == [{"_id": "q1", "text": "cat food"}, {"_id": "q2", "text": "dog walks"}]
    assert (folder / "qrels" / "test.tsv").read_text().splitlines() == [
        "query-id\tcorpus-id\tscore", "q1\td3\t1", "q1\td2\t3", "q1\td9\t2", "q2\td6\t2"]
    assert ds.qrels("test") == {"q1": {"d3": 1, "d2": 3, "d9": 2}, "q2": {"d6": 2}}
    # only the documents the scoreddocs name, the title not repeated in the text; d7 is missing and said to be
    assert _lines(folder / "corpus.jsonl") == [
        {"_id": f"d{i}", "title": f"Title {i}", "text": f"body of doc {i}"} for i in (1, 2, 3, 4, 5, 6)]
    assert "1 of the 7 documents its scoreddocs name are not in its documents (e.g. d7)" in caplog.text
    assert [line.split()[:4] for line in (folder / "run.trec").read_text().splitlines()] == [
        ["q1", "Q0", "d1", "1"], ["q1", "Q0", "d3", "2"], ["q1", "Q0", "d2", "3"], ["q1", "Q0", "d4", "4"],
        ["q2", "Q0", "d5", "1"], ["q2", "Q0", "d6", "2"], ["q2", "Q0", "d7", "3"]]
    manifest = json.loads((folder / "irds.json").read_text())
    import ir_datasets

    assert manifest["id"] == SCORED and manifest["ir_datasets_version"] == ir_datasets.__version__
    assert manifest["form"] == "reranking" and manifest["scoreddocs_ranked"] and manifest["counts"] == {
        "queries": 2, "qrels": 4, "scoreddocs": 7, "run_queries": 2, "docs": 6, "docs_missing": 1}
    # given by its path (as suites and leaderboard cells pass it), the folder keeps its name and grading
    again = resolve_dataset(str(folder))
    assert again.name == f"irds:{SCORED}" and again.rel_level == 2


def test_scoreddocs_without_scores_are_said_to_rank_nothing(registered: dict[str, str], tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """MS MARCO's top-1000 scoreddocs all score 0: run.trec's order is trec_eval's tie order, and the conversion says
    to rerank every candidate."""
    ds = resolve_dataset(f"irds:{UNRANKED}", tmp_path)
    assert [line.split()[2] for line in (ds.root / "run.trec").read_text().splitlines()] == ["d4", "d1", "d6", "d5"]
    assert "carry no scores" in caplog.text and "(--top-k 2)" in caplog.text
    assert json.loads((ds.root / "irds.json").read_text())["scoreddocs_ranked"] is False
    caplog.clear()  # each evaluation of such a run says so too, and how many candidates a reranker must take
    m = run_eval(EvalConfig(dataset=f"irds:{UNRANKED}", data_root=str(tmp_path), measures=("nDCG@10",)),
                 progress=False)
    assert m["first_stage"]["path"] == str(ds.root / "run.trec")
    assert "scores every document of a query the same: its order is trec_eval's tie order" in caplog.text
    assert "--top-k" not in caplog.text
    run_eval(EvalConfig(dataset=f"irds:{UNRANKED}", data_root=str(tmp_path), reranker="test-irds-length", top_k=1,
                        measures=("nDCG@10",)), progress=False)
    assert "--top-k 1 reranks an arbitrary 1 of each query's up to 2 candidates: give --top-k 2" in caplog.text


def test_without_scoreddocs_the_whole_corpus_and_reuse_without_ir_datasets(
    registered: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = resolve_dataset(f"irds:{FULL}", tmp_path)
    assert not (ds.root / "run.trec").exists() and ds.rel_level == 1 and ds.splits() == ["test"]
    assert len(ds.corpus) == 7 and ds.corpus["d2"].title == "T2" and ds.corpus["d2"].text == "cats eat fish"
    assert json.loads((ds.root / "irds.json").read_text())["form"] == "full corpus"
    monkeypatch.setitem(sys.modules, "ir_datasets", None)  # importing it now fails: the cached folder is read
    again = resolve_dataset(f"irds:{FULL}", tmp_path)
    assert again.root == ds.root and again.qrels("test") == ds.qrels("test")


def test_an_interrupted_conversion_leaves_nothing(registered: dict[str, str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(doc: Any) -> str:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(irds, "_doc_record", fail)  # after queries and qrels are written
    with pytest.raises(RuntimeError, match="interrupted"):
        resolve_dataset(f"irds:{FULL}", tmp_path)
    assert list((tmp_path / "irds").iterdir()) == []  # neither the folder nor its temporary sibling
    monkeypatch.undo()
    assert len(resolve_dataset(f"irds:{FULL}", tmp_path).corpus) == 7


def test_errors_are_one_line(registered: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"ir_datasets has no dataset 'no-such/set'.*https://ir-datasets"):
        resolve_dataset("irds:no-such/set", tmp_path)
    with pytest.raises(ConfigError, match=rf"irds:{NO_QRELS} has no qrels: an evaluation needs queries, qrels"):
        resolve_dataset(f"irds:{NO_QRELS}", tmp_path)
    with pytest.raises(ConfigError, match="not an ir_datasets id"):
        resolve_dataset("irds:../x", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="is not converted yet"):
        resolve_dataset(f"irds:{FULL}", tmp_path, download=False)
    assert not (tmp_path / "irds").exists() or list((tmp_path / "irds").iterdir()) == []
    monkeypatch.setitem(sys.modules, "ir_datasets", None)
    with pytest.raises(ConfigError, match=r"needs ir_datasets: pip install 'rerank\[irds\]'"):
        resolve_dataset(f"irds:{FULL}", tmp_path)


def _ndcg10(ranking: list[str], grades: dict[str, int]) -> float:
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(grades.values(), reverse=True)[:10]))
    return dcg / ideal


def test_eval_cli_on_irds_datasets(registered: dict[str, str], tmp_path: Path, run_cli) -> None:
    """Without a first stage the scoreddocs' run.trec is reranked (named in metrics.json as --first-stage would be);
    a dataset without scoreddocs takes --retriever bm25."""
    out = tmp_path / "scored"
    (tmp_path / "data").mkdir()  # a --data-root given must exist
    rc, _, err = run_cli("eval", "--dataset", f"irds:{SCORED}", "--data-root", tmp_path / "data",
                         "-m", "nDCG@10", "-m", "RR@10", "--output", out)
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    run_file = str(tmp_path / "data" / "irds" / SCORED.replace("/", "__") / "run.trec")
    assert m["dataset"] == f"irds:{SCORED}" and m["rel_level"] == 2
    assert m["first_stage"] == {"name": "run", "path": run_file} and m["config"]["first_stage"] == run_file
    expected = (_ndcg10(["d1", "d3", "d2", "d4"], {"d3": 1, "d2": 3, "d9": 2})
                + _ndcg10(["d5", "d6", "d7"], {"d6": 2})) / 2
    assert m["metrics"]["nDCG@10"] == pytest.approx(expected)
    assert m["metrics"]["RR(rel=2)@10"] == pytest.approx((1 / 3 + 1 / 2) / 2)  # d3 (grade 1) is not relevant at 2
    assert m["unknown_doc_ids"]["count"] == 1  # d7
    out = tmp_path / "full"
    rc, _, err = run_cli("eval", "--dataset", f"irds:{FULL}", "--data-root", tmp_path / "data", "--retriever", "bm25",
                         "-m", "nDCG@10", "--output", out)
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    ranked: dict[str, list[str]] = {}
    for line in (out / "run.trec").read_text().splitlines():
        qid, _, doc, *_ = line.split()
        ranked.setdefault(qid, []).append(doc)
    grades = {"q1": {"d1": 2, "d2": 1}, "q2": {"d3": 1, "d4": 2}}
    assert m["first_stage"]["name"] == "bm25" and set(ranked) == {"q1", "q2"}
    assert m["metrics"]["nDCG@10"] == pytest.approx(sum(_ndcg10(ranked[q], grades[q]) for q in grades) / 2)
    assert m["metrics"]["nDCG@10"] > 0.5  # "cat food" / "dog walks" find their documents


def _folder(root: Path, run_file: str | None) -> Path:
    write_jsonl([{"_id": f"p{i}", "title": "", "text": f"passage {i}"} for i in range(4)], root / "corpus.jsonl")
    write_jsonl([{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "b"}], root / "queries.jsonl")
    write_qrels({"q1": {"p2": 1}, "q2": {"p0": 1}}, root / "qrels" / "test.tsv", beir=True)
    if run_file is not None:
        write_run({q: [(f"p{i}", 4.0 - i) for i in range(4)] for q in ("q1", "q2")}, root / run_file)
    return root


def test_eval_reranks_a_plain_folder_run_else_asks_for_a_first_stage(tmp_path: Path, run_cli,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder = _folder(tmp_path / "with-run", "run.trec")
    with caplog.at_level("INFO", logger="rerank"):
        rc, _, err = run_cli("eval", "--dataset", folder, "-m", "RR@10", "--output", tmp_path / "o")
    assert rc == 0, err
    assert f"first stage: {folder / 'run.trec'}, the dataset folder's own run" in caplog.text
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["first_stage"] == {"name": "run", "path": str(folder / "run.trec")}
    assert m["metrics"]["RR@10"] == pytest.approx((1 / 3 + 1) / 2)
    bare = _folder(tmp_path / "bare", None)
    rc, _, err = run_cli("eval", "--dataset", bare, "--output", tmp_path / "o2")
    assert rc == 2 and err.startswith("error: give exactly one of --retriever NAME or --first-stage RUN (dataset bare "
                                      "holds no first-stage run of its own: bm25_top100.trec or run.trec")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o2").exists()
    rc, _, err = run_cli("eval", "--dataset", folder, "--model", "m", "--output", tmp_path / "o3")
    assert rc == 2 and "without --retriever the dataset folder's own run is read, and it takes no model" in err


def test_beir_ids_keep_beirs_identical_ids_rule(tmp_path: Path) -> None:
    """irds:beir/arguana and beir/quora are scored as BEIR scores them (a document that is the query is dropped), as
    the registered arguana/quora are; other ids are not."""
    for dataset_id, rule in (("beir/arguana", True), ("beir/quora/test", True), ("beir/scifact/test", False),
                             ("msmarco-passage/trec-dl-2019/judged", False)):
        folder = tmp_path / dataset_id.replace("/", "__")
        folder.mkdir()
        (folder / irds.MANIFEST).write_text(json.dumps({"id": dataset_id, "form": "full corpus", "rel_level": 1}))
        found = irds.converted_info(folder)
        assert found is not None and found[0] == f"irds:{dataset_id}"
        assert found[1].ignore_identical_ids is rule, dataset_id


BROKEN, MISSING_FILE, NEEDS_IJSON = f"{PREFIX}/broken", f"{PREFIX}/missing-file", f"{PREFIX}/needs-ijson"
WS_QUERY, WS_QRELS_DOC, WS_DOC = f"{PREFIX}/ws-query", f"{PREFIX}/ws-qrels-doc", f"{PREFIX}/ws-doc"


@pytest.fixture(scope="module")
def faulty(registered: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Register datasets whose reading fails as ir_datasets fails (a download, a missing file, an optional package)
    and datasets whose ids hold whitespace."""
    import ir_datasets
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import (
        BaseDocs,
        BaseQrels,
        BaseQueries,
        GenericDoc,
        GenericQuery,
        TrecQrel,
        TsvDocs,
        TsvQueries,
    )
    from ir_datasets.util import LocalDownload

    class Docs(BaseDocs):
        def __init__(self, docs: list[GenericDoc], fail: Any = None) -> None:
            self._docs, self._fail = docs, fail

        def docs_iter(self) -> Any:
            if self._fail is not None:
                self._fail()
            return iter(self._docs)

        def docs_cls(self) -> type:
            return GenericDoc

    class Queries(BaseQueries):
        def __init__(self, ids: list[str]) -> None:
            self._ids = ids

        def queries_iter(self) -> Any:
            return iter([GenericQuery(q, "cat food") for q in self._ids])

    class Qrels(BaseQrels):
        def __init__(self, pairs: list[tuple[str, str]]) -> None:
            self._pairs = pairs

        def qrels_iter(self) -> Any:
            return iter([TrecQrel(q, d, 1, "0") for q, d in self._pairs])

        def qrels_defs(self) -> dict[int, str]:
            return {}

    def download_failed() -> None:  # what ir_datasets' Download raises when every mirror fails
        raise RuntimeError("All download sources failed", [("mirror-1", ConnectionError("no network")),
                                                           ("mirror-2", ConnectionError("name not resolved"))])

    docs = [GenericDoc("d1", "cat food"), GenericDoc("d2", "dog walks")]
    ok_queries, ok_qrels = Queries(["q1"]), Qrels([("q1", "d1")])
    src = tmp_path_factory.mktemp("faulty")
    for name, parts in (
        (BROKEN, (Docs(docs, download_failed), ok_queries, ok_qrels)),
        (MISSING_FILE, (TsvDocs(LocalDownload(src / "absent.tsv")), ok_queries, ok_qrels)),
        (NEEDS_IJSON, (Docs(docs, ir_datasets.lazy_libs.ijson), ok_queries, ok_qrels)),
        (WS_QUERY, (Docs(docs), TsvQueries(LocalDownload(_write(src / "q.tsv", ["q 1\tcat food"]))), ok_qrels)),
        (WS_QRELS_DOC, (Docs(docs), ok_queries, Qrels([("q1", "d\t1")]))),
        (WS_DOC, (Docs([*docs, GenericDoc("d\n3", "weather")]), ok_queries, ok_qrels)),
    ):
        ir_datasets.registry.register(name, Dataset(*parts))


def test_ir_datasets_failures_are_one_line_errors(faulty: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  run_cli) -> None:
    """A download that fails, a file not placed, a missing optional package: one-line errors saying what to do, and
    no folder left behind."""
    from ir_datasets import lazy_libs

    with pytest.raises(DatasetNotFoundError, match=r"irds:\S+/broken: ir_datasets could not download or read its files "
                       r"\(All download sources failed: no network; name not resolved\)\. .*\$IR_DATASETS_HOME "
                       rf"\(now {tmp_path / 'ir_datasets_home'};") as e:
        resolve_dataset(f"irds:{BROKEN}", tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(DatasetNotFoundError, match=r"could not download or read its files \(.*absent\.tsv"):
        resolve_dataset(f"irds:{MISSING_FILE}", tmp_path)
    monkeypatch.setitem(sys.modules, "ijson", None)  # not installed, whatever this machine has
    monkeypatch.delitem(lazy_libs._cache, "ijson", raising=False)
    with pytest.raises(ConfigError, match=r"needs an optional package to read it \(This dataset requires ijson\. "
                       r".*\): pip install ijson$"):
        resolve_dataset(f"irds:{NEEDS_IJSON}", tmp_path)
    assert list((tmp_path / "irds").iterdir()) == []  # each temporary folder is removed
    rc, _, err = run_cli("eval", "--dataset", f"irds:{BROKEN}", "--data-root", tmp_path, "--retriever", "bm25",
                         "--output", tmp_path / "o")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "All download sources failed" in err


def test_a_data_root_that_cannot_be_written_is_named(registered: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "irds").write_text("")  # as a read-only data root, the irds folder cannot be made
    with pytest.raises(ConfigError, match=rf"is converted under the data root {tmp_path}, and {tmp_path / 'irds'} "
                       r"cannot be written there \(.*\): choose another data root with --data-root or RERANK_DATA"):
        resolve_dataset(f"irds:{FULL}", tmp_path)


@pytest.mark.parametrize(("dataset_id", "what"), [(WS_QUERY, "query id 'q 1'"), (WS_QRELS_DOC, "doc id 'd\\t1'"),
                                                  (WS_DOC, "doc id 'd\\n3'")])
def test_ids_with_whitespace_are_refused(faulty: None, tmp_path: Path, dataset_id: str, what: str) -> None:
    """qrels.tsv and run.trec split on whitespace: such an id would convert into files that cannot be read back."""
    with pytest.raises(ConfigError, match=rf"irds:{dataset_id}: {re.escape(what)} holds whitespace"):
        resolve_dataset(f"irds:{dataset_id}", tmp_path)
    assert list((tmp_path / "irds").iterdir()) == []


class TitleThenBody(NamedTuple):
    doc_id: str
    title: str
    body: str

    def default_text(self) -> str:
        return f"{self.title}\n{self.body}"


class BodyOnly(NamedTuple):
    """``default_text`` is the body alone, which may start as the title does."""

    doc_id: str
    title: str
    body: str

    def default_text(self) -> str:
        return self.body


class PlainDoc:
    """A document with fields but no NamedTuple ``_replace``."""

    _fields = ("doc_id", "title", "body")

    def __init__(self, title: str, text: str) -> None:
        self.doc_id, self.title, self._text = "d1", title, text

    def default_text(self) -> str:
        return self._text


def test_the_title_is_stripped_only_where_default_text_leads_with_it() -> None:
    def text(doc: Any) -> str:
        return irds._doc_record(doc)["text"]

    assert text(TitleThenBody("d1", "Cat", "food is tasty")) == "food is tasty"
    assert text(TitleBodyDoc("d1", "Cat", "Cat food")) == "Cat food"  # "Cat Cat food": one title goes
    assert text(BodyOnly("d1", "Cat", "Cat food is tasty")) == "Cat food is tasty"
    assert text(BodyOnly("d1", "Cat", "Catalogue")) == "Catalogue"
    assert text(PlainDoc("Cat", "Cat food is tasty")) == "food is tasty"  # no _replace: a whitespace boundary
    assert text(PlainDoc("Cat", "Catalogue of cats")) == "Catalogue of cats"


class _Measures:
    def __init__(self, measures: list[str]) -> None:
        self.measures = measures

    def documentation(self) -> dict[str, Any]:
        return {"official_measures": self.measures}


def test_rel_level_only_when_every_binary_official_measure_names_it(caplog: pytest.LogCaptureFixture) -> None:
    assert irds._rel_level(_Measures(["nDCG@10", "RR(rel=2)", "AP(rel=2)", "R(rel=2)@1000"]), "x") == 2
    assert irds._rel_level(_Measures(["nDCG@10", "Judged@10"]), "x") == 1
    assert irds._rel_level(_Measures(["nDCG@10", "RR@10", "AP"]), "x") == 1
    assert "relevance levels" not in caplog.text
    assert irds._rel_level(_Measures(["nDCG@10", "RR@10", "P(rel=2)@10"]), "x") == 1  # RR@10 would count at 2
    assert "different relevance levels (RR@10 at 1, P(rel=2)@10 at 2): binary measures count grades >= 1" in caplog.text


def _unranked(root: Path) -> tuple[Path, Path]:
    """A dataset folder and a run over it that scores every candidate of a query the same."""
    folder = _folder(root / "ds", None)
    run = root / "unranked.trec"
    write_run({q: [(f"p{i}", 0.0) for i in range(4)] for q in ("q1", "q2")}, run)
    return folder, run


def test_rank_warns_of_an_unranked_first_stage(tmp_path: Path, run_cli, caplog: pytest.LogCaptureFixture) -> None:
    folder, run = _unranked(tmp_path)
    rc, _, err = run_cli("rank", "--first-stage", run, "--dataset", folder, "--reranker", "test-irds-length",
                         "--top-k", "2", "--output", tmp_path / "out.trec")
    assert rc == 0, err
    assert (f"--first-stage {run} scores every document of a query the same: its order is trec_eval's tie order"
            in caplog.text)
    assert "--top-k 2 reranks an arbitrary 2 of each query's up to 4 candidates: give --top-k 4" in caplog.text


def test_recipes_warn_of_an_unranked_first_stage_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rerank.config import from_dict
    from rerank.data_recipes.mining import (
        HardNegativesConfig,
        HardNegativesRecipe,
        TeacherLabelsConfig,
        TeacherLabelsRecipe,
    )

    folder, run = _unranked(tmp_path)
    source = {"dataset": str(folder), "split": "test"}
    mined = HardNegativesRecipe(from_dict(HardNegativesConfig, {
        "source": source, "first_stage": {"run": str(run), "depth": 3}, "window": [1, 2], "num_negatives": 1}))
    assert len(mined.run["q1"]) == 3
    assert f"first_stage.run {run} scores every document of a query the same" in caplog.text
    assert "rank cuts over it (first_stage.depth 3, window [1, 2]) pick arbitrary candidates" in caplog.text
    caplog.clear()
    labelled = TeacherLabelsRecipe(from_dict(TeacherLabelsConfig, {
        "source": source, "first_stage": {"run": str(run)}, "mode": "first_stage", "candidates": 2}))
    assert len(labelled.run["q1"]) == 4 and "(first_stage.depth 100, candidates 2)" in caplog.text


def test_dataset_help_names_irds(run_cli) -> None:
    for command in ("index", "rank"):
        rc, out, _ = run_cli(command, "--help")
        assert rc == 0 and "irds:ID" in " ".join(out.split()), command
