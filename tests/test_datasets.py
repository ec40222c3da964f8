"""Dataset registry and the download path, exercised against a loopback HTTP server serving a fixture zip."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rerank.data import registry
from rerank.data.datasets import resolve_dataset
from rerank.data.download import dataset_url
from rerank.data.registry import DATASETS, DatasetInfo, get_dataset_info
from rerank.errors import DatasetNotFoundError, RerankError

NAME = "tinybeir"


def _fixture_zip(top: str = NAME) -> bytes:
    """A 3-doc BEIR dataset zipped under a top folder, as BEIR ships them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        docs = [{"_id": f"d{i}", "title": f"t{i}", "text": f"text {i}"} for i in range(3)]
        zf.writestr(f"{top}/corpus.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
        zf.writestr(f"{top}/queries.jsonl", json.dumps({"_id": "q1", "text": "text 1"}) + "\n")
        zf.writestr(f"{top}/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return buf.getvalue()


class _Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 and records the requested paths."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                outer.requests.append(self.path)
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy configured in the environment must not intercept the loopback server."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


@pytest.fixture
def tiny_info(monkeypatch: pytest.MonkeyPatch) -> Iterator[DatasetInfo]:
    """Register a temporary dataset whose md5 is that of the fixture zip."""
    info = DatasetInfo(
        name=NAME,
        url=f"{registry.BEIR_BASE_URL}/{NAME}.zip",
        md5=hashlib.md5(_fixture_zip()).hexdigest(),
        num_docs=3,
        num_test_queries=1,
    )
    monkeypatch.setitem(DATASETS, NAME, info)
    yield info


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    with _Server({f"{NAME}.zip": _fixture_zip()}) as srv:
        monkeypatch.setenv("RERANK_BEIR_URL", srv.url + "/")
        yield srv


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_download_verify_extract_then_reuse(tiny_info: DatasetInfo, server: _Server, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()  # a data root given must exist (tests/test_audit2_newcomer.py)
    ds = resolve_dataset(NAME, root)
    assert ds.root == root / NAME
    assert ds.info is tiny_info
    assert sorted(ds.corpus) == ["d0", "d1", "d2"]
    assert ds.qrels("test") == {"q1": {"d1": 1}}
    assert server.requests == [f"/{NAME}.zip"]
    assert _leftovers(root) == [NAME]  # no temp zip or extraction folder left behind
    again = resolve_dataset(NAME, root)
    assert again.root == root / NAME
    assert server.requests == [f"/{NAME}.zip"]  # served from disk, not downloaded again


def test_checksum_mismatch_raises_and_leaves_nothing(
    tiny_info: DatasetInfo, server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(DATASETS, NAME, DatasetInfo(name=NAME, url=tiny_info.url, md5="0" * 32))
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(RerankError) as err:
        resolve_dataset(NAME, root)
    msg = str(err.value)
    assert "0" * 32 in msg and tiny_info.md5 in msg  # expected and actual
    assert not (root / NAME).exists()
    assert _leftovers(root) == []


def test_unreachable_server_says_where_to_put_files(
    tiny_info: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RERANK_BEIR_URL", f"http://127.0.0.1:{port}")
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        resolve_dataset(NAME, root)
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}/{NAME}.zip" in msg
    assert str(root / NAME / "corpus.jsonl") in msg
    assert _leftovers(root) == []


def test_http_404_is_a_clear_error(tiny_info: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _Server({}) as srv:
        monkeypatch.setenv("RERANK_BEIR_URL", srv.url)
        with pytest.raises(DatasetNotFoundError, match="404"):
            resolve_dataset(NAME, tmp_path)
    assert _leftovers(tmp_path) == []


def test_zip_without_top_folder_is_rejected(
    tiny_info: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _fixture_zip(top="other")
    monkeypatch.setitem(DATASETS, NAME, DatasetInfo(name=NAME, url=tiny_info.url, md5=hashlib.md5(body).hexdigest()))
    with _Server({f"{NAME}.zip": body}) as srv:
        monkeypatch.setenv("RERANK_BEIR_URL", srv.url)
        with pytest.raises(RerankError, match="no top-level folder 'tinybeir'"):
            resolve_dataset(NAME, tmp_path)
    assert _leftovers(tmp_path) == []


def test_no_download_flag_and_unregistered_names(tmp_path: Path, tiny_info: DatasetInfo) -> None:
    with pytest.raises(DatasetNotFoundError, match="registered"):
        resolve_dataset(NAME, tmp_path, download=False)
    with pytest.raises(DatasetNotFoundError, match="not found"):
        resolve_dataset("no-such-dataset", tmp_path)


def test_mirror_override_keeps_file_name(monkeypatch: pytest.MonkeyPatch) -> None:
    info = get_dataset_info("scifact")
    assert info is not None
    monkeypatch.delenv("RERANK_BEIR_URL", raising=False)
    assert dataset_url(info) == "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip"
    monkeypatch.setenv("RERANK_BEIR_URL", "http://mirror.example/beir/")
    assert dataset_url(info) == "http://mirror.example/beir/scifact.zip"


BEIR_PUBLIC = [
    "msmarco", "trec-covid", "nfcorpus", "nq", "hotpotqa", "fiqa", "arguana", "webis-touche2020",
    "cqadupstack", "quora", "dbpedia-entity", "scidocs", "fever", "climate-fever", "scifact",
]  # fmt: skip


def test_registry_entries_are_complete() -> None:
    for name in BEIR_PUBLIC:
        info = get_dataset_info(name)
        assert info is not None, name
        assert info.url == f"{registry.BEIR_BASE_URL}/{name}.zip"
        assert info.md5 is not None and len(info.md5) == 32 and int(info.md5, 16) >= 0
        assert info.num_docs and "test" in info.splits
        assert info.ignore_identical_ids == (name in {"arguana", "quora"})
    assert len({get_dataset_info(n).md5 for n in BEIR_PUBLIC}) == len(BEIR_PUBLIC)  # type: ignore[union-attr]
    scifact = get_dataset_info("scifact")
    assert scifact is not None and scifact.reference == {"bm25_flat_ndcg@10": 0.6789, "bm25_multifield_ndcg@10": 0.6647}
    forums = [n for n in DATASETS if n.startswith("cqadupstack/")]
    assert len(forums) == 12
    assert sum(DATASETS[f].num_docs or 0 for f in forums) == DATASETS["cqadupstack"].num_docs
    assert sum(DATASETS[f].num_test_queries or 0 for f in forums) == DATASETS["cqadupstack"].num_test_queries
    dl19 = get_dataset_info("dl19-bm25-top100")
    assert dl19 is not None and dl19.rel_level == 2 and dl19.url is None


def test_subfolder_of_a_shared_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forum of cqadupstack.zip downloads the whole archive once and resolves to its folder."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for forum in ("android", "gis"):
            zf.writestr(f"cqadupstack/{forum}/corpus.jsonl", json.dumps({"_id": "a", "text": forum}) + "\n")
    body = buf.getvalue()
    for forum in ("android", "gis"):
        name = f"cqadupstack/{forum}"
        url = f"{registry.BEIR_BASE_URL}/cqadupstack.zip"
        info = DatasetInfo(name=name, url=url, md5=hashlib.md5(body).hexdigest())
        monkeypatch.setitem(DATASETS, name, info)
    with _Server({"cqadupstack.zip": body}) as srv:
        monkeypatch.setenv("RERANK_BEIR_URL", srv.url)
        ds = resolve_dataset("cqadupstack/android", tmp_path)
        assert ds.corpus["a"].text == "android"
        assert resolve_dataset("cqadupstack/gis", tmp_path).corpus["a"].text == "gis"
        assert srv.requests == ["/cqadupstack.zip"]


def test_a_failed_download_creates_no_data_root(
    tiny_info: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offline `rerank eval --dataset scifact` with RERANK_DATA=/tmp/x/noroot/deep left /tmp/x/noroot/deep behind
    (a --data-root given must exist: tests/test_audit2_newcomer.py)."""
    monkeypatch.setenv("RERANK_DATA", str(tmp_path / "noroot" / "deep"))
    with _Server({}) as srv:  # 404: the download fails
        monkeypatch.setenv("RERANK_BEIR_URL", srv.url)
        with pytest.raises(DatasetNotFoundError, match="404"):
            resolve_dataset(NAME)
    assert _leftovers(tmp_path) == []
    body = _fixture_zip(top="other")  # verified, but unpacks to the wrong folder: the folders it made go again
    monkeypatch.setitem(DATASETS, NAME, DatasetInfo(name=NAME, url=tiny_info.url, md5=hashlib.md5(body).hexdigest()))
    with _Server({f"{NAME}.zip": body}) as srv:
        monkeypatch.setenv("RERANK_BEIR_URL", srv.url)
        with pytest.raises(RerankError, match="no top-level folder"):
            resolve_dataset(NAME)
    assert _leftovers(tmp_path) == []


def test_a_download_creates_the_data_root_it_needs(tiny_info: DatasetInfo, server: _Server, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "new" / "deep"  # the default root ($RERANK_DATA); a --data-root given must exist
    monkeypatch.setenv("RERANK_DATA", str(root))
    ds = resolve_dataset(NAME)
    assert ds.root == root / NAME and sorted(ds.corpus) == ["d0", "d1", "d2"]
    assert _leftovers(root) == [NAME] and _leftovers(tmp_path) == ["new"]  # no temporary zip left in an ancestor
