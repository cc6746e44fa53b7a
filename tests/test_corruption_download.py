"""The published corruption sets downloaded when missing, against a fake Zenodo (this machine has no internet): the
archive checked against the pinned MD5 (CIFAR) or the records API's (Tiny-ImageNet-C), unpacked, read; a wrong
checksum, no network, a member escaping the folder, an archive without the folder and a record whose checksum
changed each refused in one line with nothing left under the data root; ``BENCH_NO_DOWNLOAD=1`` fails at once."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import urllib.error

import pytest
import torch

import bench.data.corruption_download as cd
import bench.eval.standalone as standalone
from bench.cli import main
from bench.data import DataError, DatasetInfo
from bench.data.corruptions import load_cifar_c, load_corruption_set
from test_corruptions import _cifar_test, _fake_cifar10, _write_cifar_c, _write_tiny_c

INFO = DatasetInfo("cifar10", 10, 3, 32, tuple("abcdefghij"))
API = "https://zenodo.org/api/records/2535967"
CONTENT = "https://zenodo.org/api/records/2535967/files/CIFAR-10-C.tar/content"
FILE_URL = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1"


class Response(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def api_json(md5: str, key="CIFAR-10-C.tar", content=CONTENT) -> bytes:
    other = {"key": "README.txt", "checksum": "md5:" + "0" * 32, "links": {"self": "https://zenodo.org/x"}}
    return json.dumps({"id": 1, "files": [other, {"key": key, "checksum": f"md5:{md5}",
                                                  "links": {"self": content}}]}).encode()


def fake_zenodo(monkeypatch, routes: dict[str, bytes]) -> list[str]:
    """open_url serving ``routes``; any other URL fails as with no network. Returns the URLs asked, in order."""
    asked = []

    def open_url(url, timeout=cd.SOCKET_TIMEOUT):
        asked.append(url)
        if url not in routes:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return Response(routes[url])

    monkeypatch.setattr(cd, "open_url", open_url)
    return asked


def tar_of(folder, extra: dict[str, bytes | str] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if folder is not None:
            tar.add(folder, arcname=folder.name)
        for name, data in dict(extra).items():
            info = tarfile.TarInfo(name)
            if isinstance(data, str):  # a symbolic link to ``data``
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pin(monkeypatch, data: bytes, folder="CIFAR-10-C") -> str:
    md5 = hashlib.md5(data).hexdigest()
    monkeypatch.setitem(cd.ARCHIVES, folder, dataclasses.replace(cd.ARCHIVES[folder], md5=md5))
    return md5


@pytest.fixture(autouse=True)
def downloads_on(monkeypatch):
    monkeypatch.delenv(cd.NO_DOWNLOAD_ENV, raising=False)


def load(root, test, log=None):
    return load_corruption_set("cifar10", "published", test, INFO, root, root.parent / "cache",
                               log=log or (lambda s: None))


def assert_one_line_nothing_left(exc, root, *words):
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not root.exists() or not any(root.iterdir()), list(root.iterdir())


def test_downloaded_checked_unpacked_and_read(tmp_path, monkeypatch):
    test = _cifar_test()
    src = _write_cifar_c(tmp_path / "src" / "CIFAR-10-C", test)
    data = tar_of(src)
    md5 = pin(monkeypatch, data)
    asked = fake_zenodo(monkeypatch, {API: api_json(md5), CONTENT: data})
    root, logs = tmp_path / "data", []
    cset = load(root, test, logs.append)
    assert asked == [API, CONTENT] and any("MD5 " + md5 in line for line in logs)
    want = load_cifar_c(src, test, dataset_name="cifar10-c", label="CIFAR-10-C")
    assert cset.name == "cifar10-c" and torch.equal(cset.labels, test.labels)
    for cor in ("gaussian_noise", "fog", "jpeg_compression"):
        assert torch.equal(cset.images(cor), want.images(cor))
    assert [p.name for p in root.iterdir()] == ["CIFAR-10-C"]  # the archive is gone, no .part, no temporary folder

    # a folder that exists is read as it is: an incomplete one is named, never downloaded again
    (root / "CIFAR-10-C" / "snow.npy").unlink()
    with pytest.raises(DataError, match=r"1 of the 15 corruptions missing \(snow\)"):
        load(root, test)
    assert asked == [API, CONTENT]


def test_wrong_checksum_refused_and_nothing_kept(tmp_path, monkeypatch):
    test = _cifar_test()
    data = tar_of(_write_cifar_c(tmp_path / "src" / "CIFAR-10-C", test))
    pin(monkeypatch, data)
    # the records API does not answer: the pinned MD5 and the record's file URL are used
    fake_zenodo(monkeypatch, {FILE_URL: data[:-512] + b"x" * 512})
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        load(root, test)
    assert_one_line_nothing_left(e, root, "checksum mismatch", FILE_URL, "--data-root")


class Cut(Response):
    def read(self, n=-1):
        if self.tell() > 0:
            raise TimeoutError("timed out")
        return super().read(n)


@pytest.mark.parametrize("cut", [False, True])
def test_no_network_names_the_url_to_fetch_by_hand(tmp_path, monkeypatch, cut):
    asked = fake_zenodo(monkeypatch, {})
    if cut:  # the connection dies in the middle of the archive: the partial download goes too
        monkeypatch.setattr(cd, "CHUNK", 1024)
        opener = cd.open_url
        monkeypatch.setattr(cd, "open_url", lambda url, timeout=30: Cut(b"x" * 4096) if url == FILE_URL
                            else opener(url))
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        load(root, _cifar_test())
    assert_one_line_nothing_left(e, root, "CIFAR-10-C not found", f"downloading {FILE_URL} failed",
                                 "TimeoutError" if cut else "URLError",
                                 f"download {FILE_URL} on a machine with internet",
                                 "56bf5dcef84df0e2308c6dcbcbbd8499", "--data-root")
    assert asked[0] == API

    # Tiny-ImageNet-C has no MD5 pinned: without the records API it is not downloaded at all
    with pytest.raises(DataError) as e:
        load_corruption_set("tiny-imagenet", "published", _cifar_test(), INFO, root, tmp_path / "cache",
                            log=lambda s: None)
    assert_one_line_nothing_left(e, root, "its checksum could not be read from https://zenodo.org/api/records/2536630",
                                 "https://zenodo.org/records/2536630/files/Tiny-ImageNet-C.tar?download=1")


def test_switched_off_fails_at_once(tmp_path, monkeypatch):
    asked = fake_zenodo(monkeypatch, {})
    monkeypatch.setenv(cd.NO_DOWNLOAD_ENV, "1")
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        load(root, _cifar_test())
    assert_one_line_nothing_left(e, root, "downloading is off (BENCH_NO_DOWNLOAD=1)", FILE_URL)
    assert asked == []


@pytest.mark.parametrize("extra, folder, message", [
    ({"../evil.txt": b"outside"}, True, "holds a member outside its folder, refused"),
    ({"CIFAR-10-C/evil-link": "../../evil.txt"}, True, "holds a member outside its folder, refused"),
    ({"CIFAR-10-C.txt": b"not the set"}, False, "holds no CIFAR-10-C/ folder"),
])
def test_bad_archive_refused(tmp_path, monkeypatch, extra, folder, message):
    test = _cifar_test()
    src = _write_cifar_c(tmp_path / "src" / "CIFAR-10-C", test)
    data = tar_of(src if folder else None, extra)
    md5 = pin(monkeypatch, data)
    fake_zenodo(monkeypatch, {API: api_json(md5), CONTENT: data})
    root = tmp_path / "a" / "data"
    with pytest.raises(DataError) as e:
        load(root, test)
    assert_one_line_nothing_left(e, root, message, "nothing was kept")
    assert not (tmp_path / "a" / "evil.txt").exists()


@pytest.mark.parametrize("listing, message", [
    (api_json("f" * 32), "now lists CIFAR-10-C.tar with MD5 ffff"),
    (api_json("f" * 32, key="CIFAR-10-C-v2.tar"), "no longer lists CIFAR-10-C.tar with an MD5"),
])
def test_record_disagreeing_with_the_pinned_md5_refused(tmp_path, monkeypatch, listing, message):
    asked = fake_zenodo(monkeypatch, {API: listing, CONTENT: b"never asked"})
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        load(root, _cifar_test())
    assert_one_line_nothing_left(e, root, message, "the record changed", "https://zenodo.org/records/2535967")
    assert asked == [API]


def test_tiny_imagenet_c_checked_against_the_records_api(tmp_path, monkeypatch):
    wnids = ("n01", "n02")
    _write_tiny_c(tmp_path / "src" / "Tiny-ImageNet-C", wnids, per_class=1)
    data = tar_of(tmp_path / "src" / "Tiny-ImageNet-C")
    api = "https://zenodo.org/api/records/2536630"
    content = "https://zenodo.org/api/records/2536630/files/Tiny-ImageNet-C.tar/content"
    listing = api_json(hashlib.md5(data).hexdigest(), key="Tiny-ImageNet-C.tar", content=content)
    asked = fake_zenodo(monkeypatch, {api: listing, content: data})
    info = DatasetInfo("tiny-imagenet", 2, 3, 64, wnids)
    test = _cifar_test(n=2, classes=2)
    cset = load_corruption_set("tiny-imagenet", "published", test, info, tmp_path / "data", tmp_path / "cache",
                               log=lambda s: None)
    assert asked == [api, content] and cset.images("fog").shape == (5, 2, 3, 64, 64)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["Tiny-ImageNet-C"]

    # a listed checksum the download does not match
    fake_zenodo(monkeypatch, {api: api_json("0" * 32, key="Tiny-ImageNet-C.tar", content=content), content: data})
    root = tmp_path / "other"
    with pytest.raises(DataError) as e:
        load_corruption_set("tiny-imagenet", "published", test, info, root, tmp_path / "cache", log=lambda s: None)
    assert_one_line_nothing_left(e, root, "checksum mismatch", "not " + "0" * 32)


def test_bench_eval_threat_corruptions_without_the_set_and_no_network(tmp_path, monkeypatch, capsys):
    test = _cifar_test(n=10)
    monkeypatch.setattr(standalone, "load_dataset", _fake_cifar10(test))
    fake_zenodo(monkeypatch, {})
    from bench.models.architectures import build_model

    torch.save(build_model("small_cnn", 10, 3).state_dict(), tmp_path / "m.pt")
    (tmp_path / "data").mkdir()
    argv = ["eval", "--model", "small_cnn", "--checkpoint", str(tmp_path / "m.pt"), "--dataset", "cifar10",
            "--n", "10", "--n-aa", "0", "--batch-size", "10", "--results", str(tmp_path / "r"), "--data-root",
            str(tmp_path / "data"), "--device", "cpu", "--threads", "1", "--threat", "corruptions"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CIFAR-10-C not found" in err and FILE_URL in err, err
    assert not (tmp_path / "r" / "evals").exists() and not any((tmp_path / "data").iterdir())
