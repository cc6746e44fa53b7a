"""The published corruption sets downloaded when their folder is missing under the data root, checked against their
published checksums, as the clean CIFAR sets are (``bench.data.cifar``).

Where the archives and their checksums come from (Zenodo, the records of Hendrycks & Dietterich 2019):

* ``CIFAR-10-C.tar``, record 2535967 (https://zenodo.org/records/2535967): MD5 ``56bf5dcef84df0e2308c6dcbcbbd8499``,
  as the record lists it; the same value is pinned by the CIFAR-10-C loaders of many codebases.
* ``CIFAR-100-C.tar``, record 3555552 (https://zenodo.org/records/3555552): MD5 ``11f0ed0f1191edbf9fa23466ae6021d3``,
  likewise listed on the record and pinned elsewhere.
* ``Tiny-ImageNet-C.tar``, record 2536630 (https://zenodo.org/records/2536630): no MD5 pinned here; the one Zenodo
  publishes for the file in its records API (``https://zenodo.org/api/records/2536630``: ``files[i]["key"]``,
  ``files[i]["checksum"]`` = ``"md5:<hex>"``, ``files[i]["links"]["self"]`` the download URL) is read before every
  download, as RobustBench's ``robustbench/zenodo_download.py`` does.

For the two CIFAR sets the pinned MD5 decides; the records API is asked too, and an answer that lists another
checksum (or not the file) is refused in one line: the record changed, and that needs a look before 2.9 GB are
trusted. When the API does not answer, the pinned MD5 and the record's file URL are used.

The archive streams into ``<root>/<name>.tar.<random>.part`` (a name of its own: two processes filling one data root
never write into the same file) with a bounded socket timeout, its MD5 computed on the way. Only an archive whose
MD5 matches is unpacked: into a temporary folder beside the set's, refusing any member that would land outside it,
and the set's folder is renamed into place at the end; the archive is removed then (it is 2.9 GB). Every failure is
one DataError line saying what failed and how to get the set by hand, and leaves nothing behind: no .part, no partial
folder. ``BENCH_NO_DOWNLOAD=1`` turns downloading off, so offline machines and tests fail at once.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.data.images import extract_tar
from bench.data.split import DataError

NO_DOWNLOAD_ENV = "BENCH_NO_DOWNLOAD"
SOCKET_TIMEOUT = 30.0  # seconds per socket operation, as bench.data.cifar: a dead network fails, never hangs
API_URL = "https://zenodo.org/api/records/{record}"
FILE_URL = "https://zenodo.org/records/{record}/files/{file}?download=1"
CHUNK = 1 << 20
PROGRESS_EVERY = 256 << 20  # bytes between two progress lines


@dataclass(frozen=True)
class PublishedArchive:
    """One published corruption set on Zenodo: its folder under the data root, record, file and pinned MD5."""

    folder: str  # what the archive unpacks to, e.g. "CIFAR-10-C"
    record: int
    file: str
    md5: str | None  # None: read from the records API before downloading

    @property
    def url(self) -> str:
        return FILE_URL.format(record=self.record, file=self.file)


ARCHIVES: dict[str, PublishedArchive] = {a.folder: a for a in (
    PublishedArchive("CIFAR-10-C", 2535967, "CIFAR-10-C.tar", "56bf5dcef84df0e2308c6dcbcbbd8499"),
    PublishedArchive("CIFAR-100-C", 3555552, "CIFAR-100-C.tar", "11f0ed0f1191edbf9fa23466ae6021d3"),
    PublishedArchive("Tiny-ImageNet-C", 2536630, "Tiny-ImageNet-C.tar", None),
)}


def downloads_off() -> bool:
    return os.environ.get(NO_DOWNLOAD_ENV, "").strip() not in ("", "0")


def open_url(url: str, timeout: float = SOCKET_TIMEOUT):
    """The one network call of this module (tests replace it): an HTTP response to read, a context manager."""
    return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "afd-bench"}), timeout=timeout)


# What a failed network read raises: URLError/HTTPError and timeouts are OSErrors; a cut connection can be an
# IncompleteRead (an HTTPException); a bad answer a ValueError.
NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)


def by_hand(archive: PublishedArchive, root: Path, md5: str | None) -> str:
    """How to get the set without this module: what every failure message ends with."""
    check = f"check its MD5 is {md5}" if md5 else f"check its MD5 against https://zenodo.org/records/{archive.record}"
    return (f"download {archive.url} on a machine with internet, {check}, and unpack it under --data-root ({root}) "
            f"so that {root / archive.folder}/ exists")


def listed_file(archive: PublishedArchive, root: Path) -> tuple[str, str] | str:
    """(download URL, MD5) that Zenodo's records API lists for the archive's file, or why the API did not answer.
    An answer that does not list the file with an MD5 is a changed record: DataError."""
    api = API_URL.format(record=archive.record)
    try:
        with open_url(api) as response:
            files = json.loads(response.read().decode("utf-8"))["files"]
    except NETWORK_ERRORS + (KeyError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    entry = next((f for f in files if isinstance(f, dict) and f.get("key") == archive.file), None)
    checksum = str((entry or {}).get("checksum", ""))
    if entry is None or not checksum.startswith("md5:"):
        raise DataError(f"{archive.folder}: Zenodo record {archive.record} ({api}) no longer lists {archive.file} "
                        f"with an MD5: the record changed; look at https://zenodo.org/records/{archive.record}, then "
                        f"{by_hand(archive, root, archive.md5)}")
    url = (entry.get("links") or {}).get("self") or archive.url
    return str(url), checksum[len("md5:"):].lower()


def source_and_md5(archive: PublishedArchive, root: Path) -> tuple[str, str]:
    """The URL to download and the MD5 it must have: the pinned one, which the records API must not contradict,
    or (no MD5 pinned) the API's."""
    listed = listed_file(archive, root)
    if archive.md5 is None:
        if isinstance(listed, str):
            raise DataError(f"{archive.folder} not found: {root / archive.folder} does not exist and its checksum "
                            f"could not be read from {API_URL.format(record=archive.record)} ({listed}): "
                            f"{by_hand(archive, root, None)}")
        return listed
    if isinstance(listed, str):
        return archive.url, archive.md5
    url, md5 = listed
    if md5 != archive.md5:
        raise DataError(f"{archive.folder}: Zenodo record {archive.record} now lists {archive.file} with MD5 {md5}, "
                        f"not the pinned {archive.md5}: the record changed, nothing was downloaded; look at "
                        f"https://zenodo.org/records/{archive.record} before using it, then "
                        f"{by_hand(archive, root, md5)}")
    return url, md5


def stream(url: str, out, log: Callable[[str], None], what: str) -> str:
    """Copy ``url`` into the open file ``out``; the MD5 of what came (hex). Logs once the server answers (a
    failure to connect is the error's one line alone), then every PROGRESS_EVERY bytes."""
    md5 = hashlib.md5()
    done, next_report = 0, PROGRESS_EVERY
    with open_url(url) as response:
        total = getattr(response, "headers", {}).get("Content-Length")
        log(f"{what}" + (f", {int(total) >> 20} MiB" if total else ""))
        while chunk := response.read(CHUNK):
            md5.update(chunk)
            out.write(chunk)
            done += len(chunk)
            if done >= next_report:
                log(f"{url}: {done >> 20} MiB" + (f" of {int(total) >> 20} MiB" if total else ""))
                next_report += PROGRESS_EVERY
    return md5.hexdigest()


# A member that would land outside the folder: tarfile's data filter (Python >= 3.11.4), else extract_tar's own check.
UNSAFE_MEMBER = (DataError,) + ((tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ())


def unpack(tar_path: Path, archive: PublishedArchive, root: Path, url: str, hand: str) -> None:
    """Unpack into a temporary folder beside the set's, then rename the set's folder into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.folder}.", suffix=".unpacking", dir=root))
    try:
        try:
            extract_tar(tar_path, tmp)
        except UNSAFE_MEMBER as exc:
            raise DataError(f"{archive.folder}: the archive from {url} holds a member outside its folder, refused "
                            f"({exc}); nothing was kept; {hand}") from None
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{archive.folder}: cannot unpack the archive from {url} ({type(exc).__name__}: {exc}); "
                            f"nothing was kept; {hand}") from None
        unpacked = tmp / archive.folder
        if not unpacked.is_dir():
            raise DataError(f"{archive.folder}: the archive from {url} holds no {archive.folder}/ folder; nothing was "
                            f"kept; {hand}")
        try:
            os.replace(unpacked, root / archive.folder)
        except OSError:
            if not (root / archive.folder).is_dir():  # a real failure, not another process that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_published(folder: str, root: Path, log: Callable[[str], None] = print) -> None:
    """Download, check and unpack the published set that unpacks to ``<root>/<folder>``; DataError in one line."""
    archive = ARCHIVES[folder]
    if downloads_off():
        raise DataError(f"{folder} not found: {root / folder} does not exist and downloading is off "
                        f"({NO_DOWNLOAD_ENV}=1): {by_hand(archive, root, archive.md5)}")
    url, md5 = source_and_md5(archive, root)
    hand = by_hand(archive, root, md5)
    root.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(prefix=f"{archive.file}.", suffix=".part", dir=root)
    part = Path(part_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                got = stream(url, out, log, f"{folder}: {root / folder} does not exist; downloading {url} (MD5 {md5})")
        except NETWORK_ERRORS as exc:
            raise DataError(f"{folder} not found: {root / folder} does not exist and downloading {url} failed "
                            f"({type(exc).__name__}: {exc}): {hand}") from None
        if got != md5:
            raise DataError(f"{folder}: checksum mismatch: the download from {url} has MD5 {got}, not {md5}; "
                            f"nothing was kept; try again, or {hand}")
        log(f"{folder}: MD5 {md5} matches; unpacking into {root}")
        unpack(part, archive, root, url, hand)
    finally:
        part.unlink(missing_ok=True)  # checked or not, the 2.9 GB archive is not kept
