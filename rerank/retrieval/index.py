"""FAISS indexes over corpus embeddings: resumable, cached encoding and self-checking saved folders.

Encoding writes one ``.npy`` shard per ``shard_size`` documents, each atomically, into a work folder; an interrupted
run resumes after the last complete shard. The work folder is the embedding cache entry
``cache_root()/embeddings/<key>/`` where the key hashes (doc-encoder weights, corpus sha256, encoder settings), so a
second evaluation of the same model on the same corpus reads the embeddings instead of encoding.

Saved index folder::

    manifest.json   model, model hash, corpus sha256, dim, encoder settings, index type and parameters
    index.faiss     the FAISS index (inner product)
    embeddings.npy  float32 [num_docs, dim], row i is ids[i]
    ids.json        document ids in row order

The folder is written beside its place and swapped in whole, so an older index there stays loadable until then.
Processes encoding into one work folder take turns on its ``.lock`` file (advisory ``flock``, POSIX).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np

from rerank.config import changed_options
from rerank.errors import ConfigError, DataFormatError, RerankError
from rerank.types import Document
from rerank.utils.files import (
    DamagedEntry,
    atomic_write,
    cache_permission_error,
    checked_entry_ids,
    file_lock,
    hash_obj,
    read_entry_json,
    staged_dir,
    write_json,
)

if TYPE_CHECKING:
    import faiss

    from rerank.retrieval.dense import BiEncoder

__all__ = [
    "INDEX_TYPE_OPTIONS",
    "OPTION_RANGES",
    "RENAMED_ENCODER_KEYS",
    "DenseIndex",
    "EmbeddingSet",
    "IndexConfig",
    "build_faiss",
    "cached_corpus_embeddings",
    "check_index_folder",
    "doc_encoder_settings",
    "doc_encoding_key",
    "doc_text",
    "embedding_cache_dir",
    "encode_corpus",
    "encode_corpus_cached",
    "settings_differences",
    "upgrade_encoder_keys",
]

log = logging.getLogger(__name__)
#: how many documents an encoding covers, for its progress bar: a count, a function giving it, or unknown
NumDocs: TypeAlias = int | Callable[[], int] | None

INDEX_FORMAT = "rerank-dense-index"
INDEX_VERSION = 1  # the manifest format version this rerank writes and reads
EMB_FORMAT = "rerank-embeddings"
TITLE_SEP = " "
LOCK_NAME = ".lock"  # in a work folder: held while a process encodes into it


#: the :class:`IndexConfig` options each index type reads; the others must keep their defaults
INDEX_TYPE_OPTIONS: dict[str, tuple[str, ...]] = {
    "flat": (),
    "hnsw": ("hnsw_m", "ef_construction", "ef_search"),
    "ivfpq": ("nlist", "pq_m", "pq_nbits", "nprobe"),
}


#: the bounds FAISS takes for an option, where they are other than ``>= 1`` (an HNSW graph of one link per node
#: crashes the process while it is built; a PQ code wider than 24 bits is refused by FAISS)
OPTION_RANGES: dict[str, tuple[int, int | None]] = {"hnsw_m": (2, None), "pq_nbits": (1, 24)}


@dataclass
class IndexConfig:
    """FAISS index type and parameters (inner-product metric throughout). An option the index type does not read
    (:data:`INDEX_TYPE_OPTIONS`) set to other than its default is an error, not a value silently dropped."""

    index_type: Literal["flat", "hnsw", "ivfpq"] = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int | None = None
    pq_m: int | None = None
    pq_nbits: int = 8
    nprobe: int = 16

    def __post_init__(self) -> None:
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "pq_m", "pq_nbits", "nprobe"):
            value = getattr(self, name)
            low, high = OPTION_RANGES.get(name, (1, None))
            if value is not None and (value < low or (high is not None and value > high)):
                within = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise ConfigError(f"index option {name} must be {within}, got {value}")
        if self.index_type not in INDEX_TYPE_OPTIONS:
            raise ConfigError(f"unknown index type {self.index_type!r}; known: {', '.join(INDEX_TYPE_OPTIONS)}")
        changed = changed_options(self, [f.name for f in dataclasses.fields(self)
                                         if f.name != "index_type" and f.name not in self.options()])
        if changed:
            name = changed[0]
            users = [t for t, names in INDEX_TYPE_OPTIONS.items() if name in names]
            raise ConfigError(f"index option {name}={getattr(self, name)} applies to {' and '.join(users)} indexes "
                              f"only, and this one is {self.index_type}: drop it")

    def options(self) -> dict[str, Any]:
        """The options this index type reads, with their values (what an index manifest records)."""
        return {name: getattr(self, name) for name in INDEX_TYPE_OPTIONS[self.index_type]}

    def check_dim(self, dim: int) -> None:
        """The options that depend on the embedding dimension alone, checked as soon as the model is loaded (before
        the corpus is encoded): an ``ivfpq`` ``pq_m`` must divide ``dim``."""
        if self.index_type == "ivfpq" and self.pq_m is not None:
            _check_pq_m(self.pq_m, dim)

    def nlist_for(self, num_docs: int) -> int:
        """The IVF lists of an ``ivfpq`` index over ``num_docs`` documents: ``nlist``, else min(4*sqrt(n), n/39)."""
        return self.nlist or max(1, min(int(4 * math.sqrt(num_docs)), num_docs // 39))

    def check_num_docs(self, num_docs: int) -> None:
        """An ``ivfpq`` index trains on its documents: fewer than ``nlist`` or ``2**pq_nbits`` of them is a one-line
        error, checked as soon as the corpus size is known (before it is encoded)."""
        if self.index_type != "ivfpq":
            return
        nlist = self.nlist_for(num_docs)
        need = max(nlist, 2**self.pq_nbits)
        if num_docs < need:
            raise RerankError(
                f"ivfpq needs at least {need} documents to train (nlist={nlist}, pq_nbits={self.pq_nbits}); the "
                f"corpus has {num_docs}: use --index-type flat or hnsw, or lower --nlist / --pq-nbits"
            )


@dataclass
class EmbeddingSet:
    """Document ids and their embedding matrix (row i is ``ids[i]``), as produced by :func:`encode_corpus`."""

    ids: list[str]
    embeddings: np.ndarray
    manifest: dict[str, Any]
    path: Path | None = None


#: the token limits' former names -> their names (one for every trainer, head and retriever); files written before
#: the rename (``rerank_biencoder.json``, index manifests, STAR's ``negatives.json``) still record the former ones
RENAMED_ENCODER_KEYS: dict[str, str] = {"query_max_length": "max_query_tokens", "doc_max_length": "max_doc_tokens"}


def upgrade_encoder_keys(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """Recorded encoder settings with each former key name (:data:`RENAMED_ENCODER_KEYS`) replaced by the current
    one, in place in the order (a current name also present keeps its value)."""
    out: dict[str, Any] = {}
    for key, value in recorded.items():
        new = RENAMED_ENCODER_KEYS.get(key)
        if new is None:
            out[key] = value
        elif new not in recorded:
            out[new] = value
    return out


def doc_text(doc: Document) -> str:
    """The text a dense encoder reads for a document: title and body joined by a space (as BEIR/MTEB)."""
    return doc.full_text(TITLE_SEP).strip()


def doc_encoding_key(encoder: BiEncoder, corpus_sha256: str) -> dict[str, Any]:
    """Everything that determines the document embeddings: doc-encoder hash, corpus hash, settings, dtype, and the
    runtime when it is not torch (torch's keys are those of before runtimes existed, so their caches stay valid). The
    document token limit keeps its former name here, ``doc_max_length``, so embeddings cached before the option was
    renamed ``max_doc_tokens`` are still found."""
    runtime = {} if encoder.runtime == ("torch", "none") else {"runtime": list(encoder.runtime)}
    settings = {("doc_max_length" if k == "max_doc_tokens" else k): v for k, v in doc_encoder_settings(encoder).items()}
    return {**runtime, "model_hash": encoder.fingerprint("doc"), "corpus_sha256": corpus_sha256, **settings}


def doc_encoder_settings(encoder: BiEncoder) -> dict[str, Any]:
    """How ``encoder`` turns documents into vectors, as an index manifest's ``encoder`` block records it (pooling,
    normalisation, prefix, max length, lowercasing, dtype, title separator): what :meth:`DenseIndex.load` compares."""
    s = encoder.settings
    return {"pooling": s.pooling, "normalize": s.normalize, "doc_prefix": s.doc_prefix,
            "max_doc_tokens": s.max_doc_tokens, "lowercase": s.lowercase,
            "dtype": str(encoder.dtype).removeprefix("torch."), "title_sep": TITLE_SEP}


def settings_differences(recorded: Any, expected: Mapping[str, Any], whose: str = "the model") -> str:
    """The settings in ``expected`` that ``recorded`` (a manifest's ``encoder`` block; not a dict: none recorded) has
    otherwise, as ``key=recorded (whose: expected)`` joined by commas; ``""`` when every one matches."""
    have = upgrade_encoder_keys(recorded) if isinstance(recorded, dict) else {}
    return ", ".join(f"{k}={have.get(k, '<not recorded>')!r} ({whose}: {v!r})" for k, v in expected.items()
                     if have.get(k, "<not recorded>") != v)


#: the ``rerank index`` flag of each encoder setting a manifest records that a rebuild must repeat
_REBUILD_SETTING_FLAGS = {"pooling": "--pooling", "normalize": "--normalize", "query_prefix": "--query-prefix",
                          "doc_prefix": "--doc-prefix", "max_query_tokens": "--max-query-tokens",
                          "max_doc_tokens": "--max-doc-tokens", "dtype": "--dtype"}


def rebuild_command(path: str | Path, manifest: Any = None, *, model: str | None = None, dataset: str | None = None,
                    settings: dict[str, Any] | None = None) -> str:
    """The ``rerank index`` command (back-quoted) that rebuilds the index at ``path``: ``model`` (default: the one
    the manifest records), ``dataset`` (the dataset's folder, written so that it names that folder under any data
    root: ``./NAME`` for a bare name; default: a ``DATASET`` placeholder), and the encoder settings and index type
    the manifest records, ``settings`` overriding them (an empty prefix is left out: the model's own applies)."""
    from rerank.data.datasets import is_dataset_name

    m = manifest if isinstance(manifest, dict) else {}
    model = model or (m.get("model") if isinstance(m.get("model"), str) else None) or "MODEL"
    if dataset and is_dataset_name(str(dataset)):  # a bare name would be read under --data-root / $RERANK_DATA first
        dataset = f"./{dataset}"
    parts = ["rerank index", "--model", shlex.quote(str(model)), "--dataset",
             shlex.quote(str(dataset)) if dataset else "DATASET", "--output", shlex.quote(str(path))]
    encoder = upgrade_encoder_keys(m["encoder"]) if isinstance(m.get("encoder"), dict) else {}
    for key, flag in _REBUILD_SETTING_FLAGS.items():
        value = (settings or {}).get(key, encoder.get(key))
        if value is None or (key.endswith("_prefix") and value == ""):
            continue
        if key == "normalize":
            parts.append("--normalize" if value else "--no-normalize")
        elif str(value).startswith("-"):  # `--doc-prefix -x` would read -x as an option
            parts.append(f"{flag}={shlex.quote(str(value))}")
        else:
            parts += [flag, shlex.quote(str(value))]
    index_type = m.get("index_type")
    if index_type in INDEX_TYPE_OPTIONS and index_type != "flat":
        parts += ["--index-type", index_type]
        params = m.get("index_params") if isinstance(m.get("index_params"), dict) else {}
        parts += [f"--{k.replace('_', '-')} {v}" for k, v in params.items()
                  if k in INDEX_TYPE_OPTIONS[index_type] and isinstance(v, int)]
    return "`" + " ".join(parts) + "`"


def embedding_cache_dir(key: dict[str, Any], root: str | Path | None = None) -> Path:
    """``<cache_root>/embeddings/<hash of key>``."""
    if root is None:
        from rerank.data.datasets import cache_root

        root = cache_root()
    return Path(root) / "embeddings" / hash_obj(key)


def _chunks(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    for d in docs:
        chunk.append(d)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _save_npy(arr: np.ndarray, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, arr)


def _load_complete(work_dir: Path, key: dict[str, Any]) -> EmbeddingSet | None:
    """The finished embeddings in ``work_dir`` for ``key``, or None when there are none (no manifest, another key).
    Damaged ones (:func:`_read_complete`) are dropped with a warning naming the folder, so that they are encoded
    again; a one-line error naming it when they cannot be dropped here."""
    mpath = work_dir / "manifest.json"
    if not mpath.is_file():
        return None
    try:
        return _read_complete(work_dir, key)
    except DamagedEntry as e:
        log.warning("the embeddings in %s are damaged (%s); encoding the corpus again", work_dir, e)
        try:
            mpath.unlink(missing_ok=True)
        except OSError as err:
            raise ConfigError(f"the embeddings in {work_dir} are damaged ({e}) and cannot be replaced here "
                              f"({err.strerror}): delete {work_dir}") from None
        return None


def _read_complete(work_dir: Path, key: dict[str, Any]) -> EmbeddingSet | None:
    """The embeddings in ``work_dir`` checked against its manifest: each file's recorded size, the sha256 of
    ``ids.json``, the document count and the shape (manifests written before sizes and the hash were recorded are
    checked for the rest); None when the manifest is another key's; :class:`DamagedEntry` when anything does not match
    or load."""
    manifest = read_entry_json(work_dir / "manifest.json")
    if not isinstance(manifest, dict):
        raise DamagedEntry("manifest.json is not a JSON object")
    if manifest.get("key") != key:
        return None
    ids = checked_entry_ids(work_dir, manifest, "ids.json", "ids_sha256")
    try:
        emb = np.load(work_dir / "embeddings.npy", mmap_mode="r")
    except PermissionError:
        raise
    except (OSError, EOFError, ValueError) as e:
        raise DamagedEntry(f"embeddings.npy does not load: {type(e).__name__}: {e}") from None
    if emb.shape != (len(ids), manifest.get("dim")):
        raise DamagedEntry(f"embeddings {emb.shape} do not match {len(ids)} ids x dim {manifest.get('dim')}")
    return EmbeddingSet(ids, emb, manifest, work_dir / "embeddings.npy")


def _encode_shards(encoder: BiEncoder, docs: Iterable[Document], shards: Path, shard_size: int, batch_size: int,
                   progress: bool, num_docs: NumDocs, pool: Any | None) -> tuple[list[str], list[Path], int]:
    """Encode ``docs`` shard by shard into ``shards``, skipping complete shards (resumption); returns the ids in order,
    the shard files, and how many documents were resumed."""
    from tqdm.auto import tqdm

    ids: list[str] = []
    seen: set[str] = set()
    shard_files: list[Path] = []
    resumed = 0
    total = (num_docs() if progress else None) if callable(num_docs) else num_docs
    bar = tqdm(total=total, desc="encode corpus", unit="doc", disable=not progress)
    for i, chunk in enumerate(_chunks(docs, shard_size)):
        for d in chunk:
            if d.id in seen:
                raise RerankError(f"duplicate document id {d.id!r} in the corpus")
            seen.add(d.id)
            ids.append(d.id)
        spath = shards / f"{i:06d}.npy"
        if spath.is_file():
            arr = np.load(spath, mmap_mode="r")
            if arr.shape[0] == len(chunk):
                resumed += len(chunk)
                shard_files.append(spath)
                bar.update(len(chunk))
                continue
        emb = encoder.encode_numpy([doc_text(d) for d in chunk], "doc", batch_size, bar=bar, pool=pool)
        _save_npy(emb, spath)
        shard_files.append(spath)
    bar.close()
    return ids, shard_files, resumed


def encode_corpus(
    encoder: BiEncoder,
    docs: Iterable[Document],
    work_dir: str | Path,
    key: dict[str, Any],
    shard_size: int = 8192,
    batch_size: int = 64,
    progress: bool = True,
    num_docs: NumDocs = None,
    workers: int = 1,
) -> EmbeddingSet:
    """Encode ``docs`` into ``work_dir`` shard by shard; resumes after the last complete shard, reuses a finished one.

    ``key`` identifies the encoding (see :func:`doc_encoding_key`); shards written under another key are discarded.
    ``num_docs``: the progress bar's total, or a function giving it (called only when there is something to encode).
    ``workers`` > 1: that many processes with a copy of the encoder each (:func:`~rerank.retrieval.dense.encoder_pool`)
    encode each shard's batches, started only when there is something to encode (the embeddings are one process's).

    Processes sharing ``work_dir`` (two builds on one cache) take turns on its lock file (advisory, POSIX:
    :func:`~rerank.utils.files.file_lock`): a second one waits, then reads the first's embeddings. A build that fails
    before writing any shard, or on a malformed corpus (whose fix changes the key), removes what it put in ``work_dir``.
    """
    if shard_size < 1:
        raise ConfigError("shard_size must be >= 1")
    work_dir = Path(work_dir)
    done = _load_complete(work_dir, key)
    if done is not None:
        log.info("embeddings found in %s (%d docs); not re-encoding", work_dir, len(done.ids))
        return done

    def waiting() -> None:
        log.info("another process is encoding into %s; waiting for it to finish", work_dir)

    with file_lock(work_dir / LOCK_NAME, on_wait=waiting):
        done = _load_complete(work_dir, key)  # written by the process this one waited for
        if done is not None:
            log.info("embeddings found in %s (%d docs), written by another process; not re-encoding", work_dir,
                     len(done.ids))
            return done
        try:
            return _encode_and_publish(encoder, docs, work_dir, key, shard_size, batch_size, progress, num_docs,
                                       workers)
        except BaseException as e:
            _drop_unusable(work_dir, corpus_error=isinstance(e, DataFormatError))
            raise


def _encode_and_publish(encoder: BiEncoder, docs: Iterable[Document], work_dir: Path, key: dict[str, Any],
                        shard_size: int, batch_size: int, progress: bool, num_docs: NumDocs,
                        workers: int) -> EmbeddingSet:
    """The body of :func:`encode_corpus`, run under its lock: encode (resuming) into ``work_dir/shards``, join the
    shards into ``embeddings.npy`` through a temporary file of this process's own, write ``manifest.json`` last."""
    shards = work_dir / "shards"
    state_path = work_dir / "partial.json"
    state = {"key": key, "shard_size": shard_size}
    if state_path.is_file() and _state(state_path) != state:
        log.info("%s holds shards of another encoding; starting over", work_dir)
        shutil.rmtree(shards, ignore_errors=True)
    write_json(state, state_path)  # the shards folder is made by the first shard's write

    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:
            from rerank.retrieval.dense import encoder_pool

            pool = stack.enter_context(encoder_pool(encoder, workers))
        ids, shard_files, resumed = _encode_shards(encoder, docs, shards, shard_size, batch_size, progress, num_docs,
                                                   pool)
    if resumed:
        log.info("resumed: %d of %d documents were already encoded in %s", resumed, len(ids), shards)
    if not ids:
        raise RerankError("the corpus is empty: nothing to encode")

    dim = encoder.dim
    path = work_dir / "embeddings.npy"
    _join_shards(shard_files, len(ids), dim, path)
    raw = json.dumps(ids).encode()
    with atomic_write(work_dir / "ids.json", "wb") as f:
        f.write(raw)
    manifest = {
        "format": EMB_FORMAT, "version": 1, "key": key, "dim": dim, "num_docs": len(ids),
        "model": encoder.name_or_path, "resumed_docs": resumed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {name: (work_dir / name).stat().st_size for name in ("embeddings.npy", "ids.json")},
        "ids_sha256": hashlib.sha256(raw).hexdigest(),
    }
    write_json(manifest, work_dir / "manifest.json")
    shutil.rmtree(shards, ignore_errors=True)
    state_path.unlink(missing_ok=True)
    return EmbeddingSet(ids, np.load(path, mmap_mode="r"), manifest, path)


def _state(path: Path) -> Any:
    """What a work folder's ``partial.json`` says was being encoded there; None when it is not readable JSON."""
    try:
        return json.loads(path.read_bytes())
    except ValueError:
        return None


def _join_shards(shard_files: Sequence[Path], rows: int, dim: int, path: Path) -> None:
    """Write the shards, in order, as one float32 ``[rows, dim]`` ``.npy`` at ``path`` (atomically, one shard in
    memory at a time); shards that do not add up to that shape are an error, not a corrupt file."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, dim)}
    with atomic_write(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        written = 0
        for spath in shard_files:
            arr = np.load(spath)
            if arr.ndim != 2 or arr.shape[1] != dim:
                raise RerankError(f"{spath}: shard of shape {arr.shape}, expected rows of dimension {dim}")
            f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
            written += arr.shape[0]
        if written != rows:
            raise RerankError(f"{path.parent}: the shards hold {written} rows for {rows} documents")


def _drop_unusable(work_dir: Path, corpus_error: bool) -> None:
    """After a failed build: remove the shards, state and lock file from ``work_dir`` (and the folder if that empties
    it) when nothing there can be resumed: no shard was written, or the corpus is malformed (fixing it changes its
    hash, hence the key). Shards of a sound corpus are kept for the next run to resume."""
    shards = work_dir / "shards"
    if not corpus_error and any(shards.glob("*.npy")):
        return
    shutil.rmtree(shards, ignore_errors=True)
    (work_dir / "partial.json").unlink(missing_ok=True)
    (work_dir / LOCK_NAME).unlink(missing_ok=True)  # a waiter notices and locks a new file
    with contextlib.suppress(OSError):
        work_dir.rmdir()


def cached_corpus_embeddings(encoder: BiEncoder, corpus_sha256: str) -> EmbeddingSet | None:
    """The corpus embeddings :func:`encode_corpus_cached` wrote for ``encoder``, or None when they are not (all)
    there."""
    key = doc_encoding_key(encoder, corpus_sha256)
    return _load_complete(embedding_cache_dir(key), key)


def encode_corpus_cached(
    encoder: BiEncoder,
    dataset: Any,
    cache: bool = True,
    work_dir: str | Path | None = None,
    shard_size: int = 8192,
    batch_size: int = 64,
    progress: bool = True,
    workers: int = 1,
) -> EmbeddingSet:
    """Embeddings of ``dataset``'s corpus, from the cache when possible (else encoded into ``work_dir``, by
    ``workers`` processes when > 1)."""
    key = doc_encoding_key(encoder, dataset.corpus_hash)
    if cache:
        target = embedding_cache_dir(key)
    elif work_dir is not None:
        target = Path(work_dir)
    else:
        raise ConfigError("cache=False needs a work_dir to encode into")
    def count() -> int:  # the bar's total, taken only when encoding: in memory, else the corpus file's lines
        return dataset.corpus_size

    try:
        return encode_corpus(encoder, dataset.iter_corpus(), target, key, shard_size, batch_size, progress, count,
                             workers)
    except PermissionError as e:  # another user's entry, or its folder, in a shared cache
        where = Path(os.fsdecode(e.filename)) if e.filename is not None else target
        if not cache or (where != target.parent and target.parent not in where.parents):
            raise
        raise cache_permission_error(target, e) from None


def _check_pq_m(pq_m: int, dim: int) -> None:
    """PQ splits each embedding into ``pq_m`` equal parts: ``pq_m`` must divide ``dim`` (the error lists those that
    do, up to 64)."""
    if dim % pq_m:
        divisors = [str(m) for m in range(1, min(64, dim) + 1) if dim % m == 0]
        raise ConfigError(f"pq_m={pq_m} must divide the embedding dimension {dim} (e.g. {', '.join(divisors)})")


def _auto_pq_m(dim: int) -> int:
    for m in range(min(64, dim), 0, -1):
        if dim % m == 0:
            return m
    return 1


def build_faiss(embeddings: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    """An inner-product FAISS index of type ``cfg.index_type`` holding ``embeddings`` (trained if needed)."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = x.shape
    if cfg.index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif cfg.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    elif cfg.index_type == "ivfpq":
        nlist = cfg.nlist_for(n)
        pq_m = cfg.pq_m or _auto_pq_m(dim)
        _check_pq_m(pq_m, dim)
        cfg.check_num_docs(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, cfg.pq_nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = cfg.nprobe
    else:
        raise ConfigError(f"unknown index type {cfg.index_type!r}; known: flat, hnsw, ivfpq")
    index.add(x)
    return index


def set_search_params(index: faiss.Index, ef_search: int | None = None, nprobe: int | None = None) -> None:
    """Set HNSW ``efSearch`` / IVF ``nprobe`` on a loaded index (an option the index type lacks is an error)."""
    import faiss

    if ef_search is not None:
        if not isinstance(index, faiss.IndexHNSW):
            raise ConfigError("ef_search applies to hnsw indexes only, and this one is not: drop it")
        index.hnsw.efSearch = ef_search
    if nprobe is not None:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            raise ConfigError("nprobe applies to ivfpq indexes only, and this one is not: drop it")
        ivf.nprobe = nprobe


INDEX_FILES = ("manifest.json", "index.faiss", "embeddings.npy", "ids.json")
#: files that make a folder given as an index a model folder (sentence-transformers', Hugging Face's) instead
_MODEL_FOLDER_FILES = ("modules.json", "config.json")


def check_index_folder(path: Path) -> None:
    """:meth:`DenseIndex.save` replaces the whole folder: refuse one holding anything but an index's files, a
    ``--no-cache`` work folder (``.encoding``) and hidden ``*.tmp`` leftovers, rather than delete someone's files."""
    if not path.exists():
        return
    if not path.is_dir():
        raise RerankError(f"{path} is a file, not an index folder")
    own = (*INDEX_FILES, ".encoding")
    foreign = sorted(p.name for p in path.iterdir()
                     if p.name not in own and not (p.name.startswith(".") and p.name.endswith(".tmp")))
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise RerankError(
            f"{path} holds {', '.join(foreign[:3])}{more}, not part of a dense index: saving an index replaces the "
            "whole folder, so give a new or empty folder (or an index folder to replace)"
        )


class DenseIndex:
    """A FAISS index with its id map, embeddings and manifest; :meth:`load` checks them against corpus and model."""

    def __init__(self, index: faiss.Index, ids: Sequence[str], embeddings: np.ndarray, manifest: dict[str, Any]) -> None:
        if index.ntotal != len(ids) or embeddings.shape[0] != len(ids):
            raise RerankError(
                f"index holds {index.ntotal} vectors and {embeddings.shape[0]} embeddings for {len(ids)} ids"
            )
        self.index = index
        self.ids = list(ids)
        self.embeddings = embeddings
        self.manifest = manifest

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def build(
        cls, emb: EmbeddingSet, encoder: BiEncoder, cfg: IndexConfig | None = None, model: str | None = None
    ) -> DenseIndex:
        """Index ``emb`` (encoded by ``encoder``) with the FAISS type of ``cfg``."""
        cfg = cfg or IndexConfig()
        index = build_faiss(emb.embeddings, cfg)
        key = emb.manifest["key"]
        manifest = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "model": model or encoder.name_or_path,
            "model_hash": key["model_hash"],
            "corpus_sha256": key["corpus_sha256"],
            "num_docs": len(emb.ids),
            "dim": int(emb.embeddings.shape[1]),
            "metric": "inner_product",
            "encoder": {**dataclasses.asdict(encoder.settings), "dtype": key["dtype"], "title_sep": key["title_sep"]},
            "index_type": cfg.index_type,
            "index_params": cfg.options(),
            "embedding_key": hash_obj(key),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return cls(index, emb.ids, emb.embeddings, manifest)

    def save(self, path: str | Path, embeddings_source: str | Path | None = None) -> Path:
        """Write the folder in a temporary sibling and swap it in whole (:func:`~rerank.utils.files.staged_dir`), so an
        index already at ``path`` stays loadable until the new one is complete; links the embeddings if it can."""
        import faiss

        path = Path(path)
        if path.is_symlink():  # replace the folder it names, keep the link
            path = path.resolve()
        check_index_folder(path)
        src = Path(embeddings_source) if embeddings_source is not None else None
        with staged_dir(path) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            target = tmp / "embeddings.npy"
            if src is not None:
                try:
                    os.link(src, target)
                except OSError:
                    shutil.copyfile(src, target)
            else:
                _save_npy(np.asarray(self.embeddings, dtype=np.float32), target)
            with atomic_write(tmp / "ids.json") as f:
                json.dump(self.ids, f)
            write_json(self.manifest, tmp / "manifest.json")
        return path

    @staticmethod
    def read_manifest(path: str | Path, *, model: str | None = None, dataset: str | None = None) -> dict[str, Any]:
        """The manifest of a saved index folder (an ``encoder`` block recorded under the token limits' former names
        read under their current ones). An incomplete folder, a damaged manifest, one of a newer format
        version or one lacking a key :meth:`load` reads is a one-line :class:`RerankError` naming the file and the
        ``rerank index`` command that rebuilds it (for ``model`` and ``dataset`` when given)."""
        mpath = Path(path) / "manifest.json"
        if not mpath.is_file():
            marker = next((f for f in _MODEL_FOLDER_FILES if (Path(path) / f).is_file()), None)
            if marker is not None:  # rebuilding "it" would overwrite someone's model: say what it is instead
                build = rebuild_command("NEW_INDEX_FOLDER", model=str(path), dataset=dataset)
                raise RerankError(f"{path} is a model folder (it holds {marker}), not a dense index: pass it as the "
                                  f"model (--model {shlex.quote(str(path))}), or build an index from it into a new folder with {build}")
            raise RerankError(f"{path} is not a complete dense index folder: no manifest.json; rebuild it with "
                              f"{rebuild_command(path, model=model, dataset=dataset)}")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RerankError(f"{mpath}: invalid JSON ({e}); rebuild the index with "
                              f"{rebuild_command(path, model=model, dataset=dataset)}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
            fmt = manifest.get("format") if isinstance(manifest, dict) else None
            raise RerankError(f"{mpath}: not a {INDEX_FORMAT} manifest (format={fmt!r}); rebuild the index with "
                              f"{rebuild_command(path, model=model, dataset=dataset)}")
        if isinstance(manifest.get("encoder"), dict):  # an index built before the token limits were renamed too
            manifest["encoder"] = upgrade_encoder_keys(manifest["encoder"])
        redo = rebuild_command(path, manifest, model=model, dataset=dataset)
        version = manifest.get("version", INDEX_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version > INDEX_VERSION:
            raise RerankError(f"{mpath}: format version {version!r}, and this rerank reads version {INDEX_VERSION} "
                              f"(written by a newer rerank?): upgrade rerank, or rebuild the index with {redo}")
        for key, kind in _MANIFEST_KEYS.items():
            value = manifest.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                what = "no" if value is None else f"a malformed ({value!r})"
                raise RerankError(f"{mpath}: {what} {key} (written by another rerank version?): rebuild the index "
                                  f"with {redo}")
        return manifest

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        corpus_sha256: str | None = None,
        corpus_ids: Iterable[str] | None = None,
        model_hash: str | None = None,
        dim: int | None = None,
        encoder: dict[str, Any] | None = None,
        model: str | None = None,
        dataset: str | None = None,
    ) -> DenseIndex:
        """Load a saved folder; a damaged file, or a corpus, id-map, dimension or model that does not match, raises a
        one-line :class:`RerankError` naming the ``rerank index`` command that rebuilds it (with ``model``, the model
        searched with, and ``dataset``, the dataset's folder, when given); so do document-encoder settings
        (``encoder``, as :func:`doc_encoder_settings` gives them) other than those the manifest records."""
        import faiss

        path = Path(path)
        manifest = cls.read_manifest(path, model=model, dataset=dataset)
        redo = rebuild_command(path, manifest, model=model, dataset=dataset)
        for name in ("index.faiss", "embeddings.npy", "ids.json"):
            if not (path / name).is_file():
                raise RerankError(f"{path}: missing {name}; rebuild the index with {redo}")
        try:
            ids = json.loads((path / "ids.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RerankError(f"{path / 'ids.json'}: damaged ({e}); rebuild the index with {redo}") from None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise RerankError(f"{path / 'ids.json'}: not a list of document ids; rebuild the index with {redo}")
        try:
            index = faiss.read_index(str(path / "index.faiss"))
        except RuntimeError as e:
            raise RerankError(f"{path / 'index.faiss'}: damaged or truncated ({_faiss_reason(e)}); rebuild the index "
                              f"with {redo}") from None
        try:
            emb = np.load(path / "embeddings.npy", mmap_mode="r")
        except (ValueError, OSError) as e:
            raise RerankError(f"{path / 'embeddings.npy'}: damaged or truncated ({e}); rebuild the index with "
                              f"{redo}") from None
        if emb.ndim != 2:
            raise RerankError(f"{path / 'embeddings.npy'}: shape {emb.shape}, not [documents, dim]; rebuild the index "
                              f"with {redo}")
        if len(ids) != manifest["num_docs"] or index.ntotal != len(ids) or emb.shape[0] != len(ids):
            raise RerankError(
                f"{path}: id map has {len(ids)} ids, index {index.ntotal} vectors, embeddings {emb.shape[0]} rows, "
                f"manifest says {manifest['num_docs']} documents: the folder is inconsistent; rebuild it with {redo}"
            )
        if index.d != manifest["dim"] or emb.shape[1] != manifest["dim"]:
            raise RerankError(f"{path}: index dim {index.d} / embeddings dim {emb.shape[1]} != manifest dim "
                              f"{manifest['dim']}; rebuild it with {redo}")
        built_with = manifest.get("model")
        if dim is not None and dim != manifest["dim"]:
            raise RerankError(f"{path}: index dimension {manifest['dim']} does not match the model's dimension {dim}: "
                              f"search with the model it was built with ({built_with}), or rebuild it with {redo}")
        if corpus_ids is not None:
            have, want = set(ids), set(corpus_ids)
            if have != want:
                missing, extra = sorted(want - have), sorted(have - want)
                parts = [f"{len(missing)} corpus ids missing from the index, e.g. {missing[:3]}" if missing else "",
                         f"{len(extra)} index ids not in the corpus, e.g. {extra[:3]}" if extra else ""]
                raise RerankError(
                    f"{path}: the index's document ids do not match the corpus: {'; '.join(p for p in parts if p)}; "
                    f"the corpus changed since it was built: rebuild it with {redo}"
                )
        if corpus_sha256 is not None and corpus_sha256 != manifest["corpus_sha256"]:
            raise RerankError(
                f"{path}: built for a corpus with sha256 {manifest['corpus_sha256'][:12]}…, this corpus has "
                f"{corpus_sha256[:12]}…: the embeddings are stale; rebuild it with {redo}"
            )
        if model_hash is not None and model_hash != manifest["model_hash"]:
            raise RerankError(
                f"{path}: built with model {built_with!r} (fingerprint {manifest['model_hash'][:12]}…: weights, "
                f"tokenizer and text handling), but the document encoder given has {model_hash[:12]}…: another "
                "model, or an index built by an earlier rerank; search with the model it was built with, or rebuild it "
                f"with {redo}"
            )
        if encoder is not None:
            _check_encoder_settings(path, manifest, encoder, model, dataset)
        return cls(index, ids, emb, manifest)

    def search(self, query_embeddings: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` (doc id, inner product) per query row, best first (FAISS's -1 fillers dropped)."""
        q = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise RerankError(f"query embeddings have shape {q.shape}; the index has dimension {self.dim}")
        k = min(k, len(self.ids))
        if k < 1 or q.shape[0] == 0:
            return [[] for _ in range(q.shape[0])]
        scores, idx = self.index.search(q, k)
        return [
            [(self.ids[j], float(s)) for j, s in zip(row_i, row_s, strict=True) if j >= 0]
            for row_i, row_s in zip(idx, scores, strict=True)
        ]


#: the manifest keys :meth:`DenseIndex.load` reads, with their types
_MANIFEST_KEYS: dict[str, type | tuple[type, ...]] = {"num_docs": int, "dim": int, "corpus_sha256": str,
                                                      "model_hash": str}


def _faiss_reason(error: RuntimeError) -> str:
    """FAISS's own words from one of its multi-line C++ exceptions (what follows ``file.cpp:LINE:``)."""
    import re

    text = str(error).strip()
    found = re.findall(r"\.(?:cpp|h):\d+: ([^\n]+)", text)
    return (found[-1] if found else text.splitlines()[-1] if text else type(error).__name__).strip()


def _check_encoder_settings(path: Path, manifest: dict[str, Any], expected: dict[str, Any], model: str | None,
                            dataset: str | None) -> None:
    """Refuse an index whose manifest records document-encoder settings other than ``expected``, in one line naming
    each differing setting and the ``rerank index`` command (for ``model`` and ``dataset``) that rebuilds it."""
    shown = settings_differences(manifest.get("encoder"), expected)
    if not shown:
        return
    redo = rebuild_command(path, manifest, model=model, dataset=dataset, settings=expected)
    raise RerankError(
        f"{path}: built with other document-encoder settings than the model's: {shown}; its embeddings do not match "
        f"the model's documents: rebuild it with the model's own settings: {redo}"
    )
