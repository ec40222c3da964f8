"""Download a registered dataset archive: streamed, md5-verified, extracted and renamed into place atomically.

A dataset folder under the data root therefore either is complete or does not exist; an interrupted or corrupt
download leaves nothing behind, not even a data root that did not exist before. ``$RERANK_BEIR_URL`` replaces the
base of every registered URL (mirrors, tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from rerank.data.registry import DatasetInfo
from rerank.errors import DatasetNotFoundError, RerankError
from rerank.utils.files import nearest_existing

__all__ = ["download_dataset", "dataset_url"]

log = logging.getLogger(__name__)

BASE_URL_ENV = "RERANK_BEIR_URL"
_CHUNK = 1 << 20


def dataset_url(info: DatasetInfo) -> str:
    """The archive URL of ``info``, with its base replaced by ``$RERANK_BEIR_URL`` when that is set."""
    if not info.url:
        raise DatasetNotFoundError(f"dataset {info.name!r} has no public download")
    base = os.environ.get(BASE_URL_ENV)
    if not base:
        return info.url
    filename = PurePosixPath(urllib.parse.urlparse(info.url).path).name
    return f"{base.rstrip('/')}/{filename}"


def _archive_folder(url: str) -> str:
    """The top folder a BEIR zip holds: the archive's file name without ``.zip``."""
    return PurePosixPath(urllib.parse.urlparse(url).path).name.removesuffix(".zip")


def _manual_hint(info: DatasetInfo, url: str, data_root: Path) -> str:
    return (
        f"download {url} yourself, check its md5 ({info.md5 or 'not published'}) and unzip it into {data_root} "
        f"so that {data_root / info.name / 'corpus.jsonl'} exists (choose the folder with --data-root or RERANK_DATA)"
    )


def _fetch(url: str, dest: Path, desc: str, timeout: float = 60.0) -> str:
    """Stream ``url`` into ``dest`` with a progress bar; returns the md5 of the bytes written."""
    md5 = hashlib.md5()  # noqa: S324 - the checksum BEIR publishes, used for integrity only
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as f:  # noqa: S310 - http(s) only
        total = resp.headers.get("Content-Length")
        with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=desc) as bar:
            while block := resp.read(_CHUNK):
                f.write(block)
                md5.update(block)
                bar.update(len(block))
    return md5.hexdigest()


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a zip, refusing members that would land outside ``dest``."""
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (dest / member).resolve()
            if target != root and root not in target.parents:
                raise RerankError(f"{archive}: refusing to extract {member!r} outside {dest}")
        zf.extractall(dest)


def download_dataset(info: DatasetInfo, data_root: str | Path) -> Path:
    """Download, verify and unpack ``info``'s archive into ``data_root``; returns ``data_root / info.name``.

    The zip is streamed to a temporary file in ``data_root`` (or, while it does not exist, in its closest existing
    ancestor: the same file system, and no folder is created before the download succeeds), its md5 checked against
    the registry, extracted into a temporary folder and renamed into place, so a failure at any step leaves no
    partial dataset folder and no new data root.
    """
    data_root = Path(data_root).expanduser()
    url = dataset_url(info)
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise DatasetNotFoundError(f"dataset {info.name!r}: only http(s) downloads are supported, got {url}")
    folder = _archive_folder(url)
    final = data_root / info.name
    parent = nearest_existing(data_root)
    if not parent.is_dir():
        raise DatasetNotFoundError(f"dataset {info.name!r}: the data root {data_root} cannot be created, {parent} is "
                                   f"a file; choose the folder with --data-root or RERANK_DATA")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{folder}.", suffix=".zip.part", dir=parent)
    os.close(fd)
    tmp_zip = Path(tmp_name)
    tmp_dir: Path | None = None
    new_dirs = [p for p in (data_root, *data_root.parents) if not p.exists()]  # deepest first
    done = False
    try:
        log.info("downloading %s from %s", info.name, url)
        try:
            actual = _fetch(url, tmp_zip, desc=f"download {folder}")
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise DatasetNotFoundError(
                f"dataset {info.name!r} is not under {data_root} and could not be downloaded from {url} ({e}). "
                f"To install it by hand: {_manual_hint(info, url, data_root)}"
            ) from None
        if info.md5 is None:
            log.warning("no published md5 for %s: the download is not verified", info.name)
        elif actual != info.md5:
            raise RerankError(
                f"checksum mismatch for {url}: expected md5 {info.md5}, got {actual}; the download was deleted. "
                f"Retry, or install it by hand: {_manual_hint(info, url, data_root)}"
            )
        data_root.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".extract", dir=data_root))
        try:
            _safe_extract(tmp_zip, tmp_dir)
        except zipfile.BadZipFile as e:
            raise RerankError(f"{url} is not a valid zip archive ({e})") from None
        extracted = tmp_dir / folder
        if not extracted.is_dir():
            raise RerankError(f"{url}: the archive has no top-level folder {folder!r}")
        try:
            os.rename(extracted, data_root / folder)
        except OSError:
            if not (data_root / folder).is_dir():
                raise
            log.info("%s appeared while downloading (another process); using it", data_root / folder)
        done = True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_zip.unlink()
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if not done:  # a failed unpack leaves no data root it made (only empty folders go)
            for new in new_dirs:
                with contextlib.suppress(OSError):
                    new.rmdir()
    if not final.is_dir():
        raise DatasetNotFoundError(f"{url} was unpacked to {data_root / folder} but holds no folder {final}")
    return final
