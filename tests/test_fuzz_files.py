"""The files the suite reads, under generated damage (Hypothesis): result JSON, checkpoints, grid and profile TOML,
image folders and archives, and what a killed run leaves (evaluation chunks, locks, checkpoints). Each file either
loads, is reported as corrupt by `bench status` on the line of the run it belongs to, or is refused in one line
(exit 2); no traceback, and nothing already finished is lost or overwritten.

The commands run in-process with the stand-ins of tests/test_fuzz_cli.py (the real work replaced by ``Reached``
once every check has passed). Budget: ``BENCH_FUZZ_EXAMPLES`` (default 400) split over the tests below, fixed seed.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.cli import main
from conftest import REPO, write_tiny_folder
from test_fuzz_cli import EXAMPLES, Reached, bounded, plugins_undone, snapshot, stand_ins

BOUND_S = 60


def few(share: int) -> settings:
    """This test's part of the budget: ``share`` in 100 of BENCH_FUZZ_EXAMPLES, at least 5 calls."""
    return settings(max_examples=max(5, EXAMPLES * share // 100), derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def answer(argv: list[str], capsys, root: Path, may_write: tuple[Path, ...] = ()) -> tuple[int, str, str]:
    """One call: exit 0 (or the stand-in reached) or exit 2 with one line; no traceback; nothing under ``root``
    changed except below ``may_write`` on success. Returns (code, stdout, stderr)."""
    before = snapshot(root)
    capsys.readouterr()
    try:
        with bounded(BOUND_S), plugins_undone():
            code = main(argv)
    except Reached:
        code = 0
    out, err = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in err, (argv, code, err[-3000:])
    after = snapshot(root)
    changed = [p for p in set(before) | set(after) if before.get(p) != after.get(p)]
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("bench"), (argv, err[-3000:])
        assert changed == [], (argv, changed)
    else:
        assert [p for p in changed if not any(Path(p).is_relative_to(w) for w in may_write)] == [], (argv, changed)
    return code, out, err


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_files")
    with pytest.MonkeyPatch.context() as mp:
        (root / "data").mkdir()
        mp.setenv("BENCH_DATA_ROOT", str(root / "data"))
        with stand_ins(mp):
            yield root


# -- result files ------------------------------------------------------------------------------------------
CPU_RUNS = sorted((REPO / "results" / "cpu" / "runs").glob("*.json"))
ODD = [None, "", "x", [], {}, -1, 0, 1e308, "nan", True, [1, "a"], {"a": 1}, 10 ** 30]


def key_paths(obj, prefix=()) -> list[tuple]:
    """Every key path of a JSON object, three levels deep."""
    out = []
    if isinstance(obj, dict) and len(prefix) < 3:
        for k, v in obj.items():
            out.append((*prefix, k))
            out += key_paths(v, (*prefix, k))
    return out


@st.composite
def damaged_results(draw) -> tuple[str, bytes]:
    """A finished result of the cpu grid, damaged: cut short, a field removed, of another type or added, another
    schema or run id, another JSON type at the top, bytes that are not UTF-8."""
    path = draw(st.sampled_from(CPU_RUNS))
    raw = path.read_bytes()
    kind = draw(st.sampled_from(["truncate", "drop", "retype", "extra", "schema", "top", "bytes"]))
    if kind == "truncate":
        return path.stem, raw[:draw(st.integers(0, len(raw) - 1))]
    if kind == "bytes":
        return path.stem, draw(st.sampled_from([b"", b"\xff\xfe\x00", b"\x00" * 64, raw.replace(b"{", b"\xc3(", 1)]))
    data = json.loads(raw)
    if kind == "top":
        return path.stem, json.dumps(draw(st.sampled_from([[], "done", 1, None, [data]]))).encode()
    if kind == "schema":
        data["config"]["schema"] = draw(st.sampled_from([0, 2, "1", None]))
        data["schema"] = 2
    keys = draw(st.sampled_from(key_paths(data)))
    node = data
    for k in keys[:-1]:
        node = node[k]
    if kind == "drop":
        del node[keys[-1]]
    elif kind == "retype":
        node[keys[-1]] = draw(st.sampled_from(ODD))
    elif kind == "extra":
        node[draw(st.sampled_from(["zzz", "status2", "metrics_v2", ""]))] = draw(st.sampled_from(ODD))
    return path.stem, json.dumps(data).encode()


READERS = [["status", "--grid", "cpu"], ["report", "--grid", "cpu"], ["report", "--grid", "cpu", "--format", "latex"],
           ["report", "--grid", "cpu", "--claims"], ["plan", "--grid", "cpu"],
           ["compare", "--grid", "cpu", "--a", "vaft", "--b", "afd"]]


@few(25)
@given(damage=damaged_results(), reader=st.sampled_from(READERS))
@example(damage=("9672e32dea77", b'{"run_id": "9672e32dea77", "status": "done"}'), reader=READERS[1])
@example(damage=("9672e32dea77", b"\xff\xfe\x00"), reader=READERS[0])  # not UTF-8: a traceback, now corrupt
@example(damage=("9672e32dea77", b'{"run_id": "9672e32dea77", "status": "done", "metrics": {"violations": -1}}'),
         reader=READERS[1])  # a table's traceback, now corrupt
def test_damaged_result_is_read_reported_or_refused(fuzz_env, capsys, damage, reader):
    results = fuzz_env / "results"
    if not results.exists():
        shutil.copytree(REPO / "results" / "cpu" / "runs", results / "runs")
    rid, content = damage
    target = results / "runs" / f"{rid}.json"
    original = (REPO / "results" / "cpu" / "runs" / f"{rid}.json").read_bytes()
    target.write_bytes(content)
    try:
        code, out, _ = answer([*reader, "--results", str(results)], capsys, results)
        assert target.read_bytes() == content  # read, never rewritten
        if reader[0] == "status":
            assert code == 0
            line = next(li for li in out.splitlines() if li.startswith(rid))
            from bench.core.store import CorruptFile, Store

            try:
                Store(results).read(rid)
            except CorruptFile:
                assert ": corrupt" in line, line
    finally:
        target.write_bytes(original)


# -- checkpoints -------------------------------------------------------------------------------------------
class RunsCode:
    """A pickle that would run code when loaded: ``torch.load(weights_only=True)`` must refuse it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def small_cnn_state(classes: int = 10, channels: int = 3) -> dict:
    from bench.models.architectures import build_model

    return build_model("small_cnn", classes, channels).state_dict()


@st.composite
def damaged_checkpoints(draw, marker: str) -> bytes:
    """A checkpoint of the small CNN, damaged: cut short, tensors of other shapes or dtypes, keys missing or
    added, wrapped oddly, a pickle that runs code, bytes that are no checkpoint at all."""
    state = small_cnn_state(10, draw(st.sampled_from([1, 3])))
    keys = sorted(state)
    kind = draw(st.sampled_from(["ok", "truncate", "shape", "dtype", "drop", "extra", "wrap", "code", "bytes"]))
    if kind == "shape":
        k = draw(st.sampled_from(keys))
        state[k] = torch.zeros(draw(st.sampled_from([(), (1,), (3, 3), (0,), (2, 2, 2, 2, 2)])))
    elif kind == "dtype":
        k = draw(st.sampled_from(keys))
        state[k] = state[k].to(draw(st.sampled_from([torch.float16, torch.int64, torch.bool, torch.complex64,
                                                     torch.uint8])))
    elif kind == "drop":
        del state[draw(st.sampled_from(keys))]
    elif kind == "extra":
        state[draw(st.sampled_from(["zzz", "fc.weight", "module.x", "0.mean", ""]))] = torch.ones(2)
    obj: object = state
    if kind == "wrap":
        obj = draw(st.sampled_from([{"state_dict": state}, {"model": "small_cnn"}, {"net": [1, 2]}, [state],
                                    torch.ones(3), {"state_dict": {"a": 1}}, {}, None, "x"]))
    if kind == "code":
        obj = {"state_dict": state, "payload": RunsCode(marker)}
    if kind == "bytes":
        return draw(st.sampled_from([b"", b"PK\x03\x04" + b"\x00" * 40, b"\x80\x04K\x01.", os.urandom(64)]))
    buf = io.BytesIO()
    torch.save(obj, buf)
    raw = buf.getvalue()
    if kind == "truncate":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    return raw


@few(20)
@given(data=st.data())
def test_damaged_checkpoint_loads_or_is_refused(fuzz_env, capsys, data):
    """`bench eval --checkpoint` and a parent model under results/models/: loaded or refused in one line; a
    pickle's code never runs."""
    marker = fuzz_env / "pwned"
    raw = data.draw(damaged_checkpoints(str(marker)))
    ckpt = fuzz_env / "ckpt.pt"
    ckpt.write_bytes(raw)
    results = fuzz_env / "ckpt-results"
    results.mkdir(exist_ok=True)
    answer(["eval", "--model", "small_cnn", "--checkpoint", str(ckpt), "--dataset", "digits", "--n", "4",
            "--results", str(results), "--device", "cpu"], capsys, fuzz_env, may_write=(results,))
    assert not marker.exists()
    # the same bytes as the exported parent of the demo grid's fine-tuning runs
    from bench.cli import apply_sets
    from bench.core.config import run_id
    from bench.grid.grids import get_grid

    parent = next(c for c in apply_sets(get_grid("demo"), []) if c.parent is not None).parent
    model = results / "models" / f"{run_id(parent)}.pt"
    model.parent.mkdir(exist_ok=True)
    model.write_bytes(raw)
    answer(["run", "--grid", "demo", "--results", str(results), "--device", "cpu"], capsys, fuzz_env,
           may_write=(results,))
    assert model.read_bytes() == raw and not marker.exists()


# -- grid and profile TOML ---------------------------------------------------------------------------------
TOML_VALUES = ['1', '0', '-1', '1.5', 'nan', 'inf', '9223372036854775807', 'true', '""', '"x"', '"8/255"', '[]',
               '[1, "a"]', '["vaft"]', '["nope"]', '{}', '{ a = 1 }', '1979-05-27T07:32:00Z', '"01:00:00"', '"16G"',
               '"-1G"', '"99-00:00:00"', '"é日本"']
GRID_KEYS = ["methods", "models", "datasets", "epochs", "seeds", "eps", "name", "plugins", "table", "nope",
             "eval.n_aa", "eval.batch_size", "eval.nope", "train.lr", "train.batch_size", "hparams.afd.gamma",
             "hparams.nope.x", "parent.epochs", "parent.nope"]
PROFILE_KEYS = ["partition", "gpus", "cpus", "tasks", "nodes", "mem", "time", "account", "qos", "array_parallelism",
                "nope", 'resources."small_cnn/*".time', 'resources."*".mem', "resources.x"]


def toml_text(base: dict[str, str], key: str, value: str, cut: int | None) -> str:
    """``base`` (dotted key -> TOML value) with ``key`` set to ``value``, written as TOML; cut at ``cut``."""
    entries = {**base, key: value}
    top = [f"{k} = {v}" for k, v in entries.items() if "." not in k]
    tables: dict[str, list[str]] = {}
    for k, v in entries.items():
        if "." in k:
            table, _, leaf = k.rpartition(".")
            tables.setdefault(table, []).append(f"{leaf} = {v}")
    text = "\n".join(top + [f"[{t}]\n" + "\n".join(lines) for t, lines in tables.items()]) + "\n"
    return text if cut is None else text[:cut]


GRID_BASE = {"methods": '["vaft", "afd"]', "models": '["small_cnn"]', "datasets": '["digits"]', "epochs": "1",
             "eval.n_aa": "0"}


@few(15)
@given(key=st.sampled_from(GRID_KEYS), value=st.sampled_from(TOML_VALUES),
       cut=st.none() | st.integers(0, 120), command=st.sampled_from(["plan", "run", "status"]))
def test_damaged_grid_file_runs_or_is_refused(fuzz_env, capsys, key, value, cut, command):
    grid = fuzz_env / "grid.toml"
    grid.write_text(toml_text(GRID_BASE, key, value, cut), encoding="utf-8")
    results = fuzz_env / "grid-results"
    results.mkdir(exist_ok=True)
    argv = [command, "--grid", str(grid), "--results", str(results)] + (["--dry-run"] if command == "run" else [])
    answer(argv, capsys, fuzz_env)


PROFILE_BASE = {"fz.partition": '"debug"', "fz.gpus": "0", "fz.cpus": "1", "fz.mem": '"2G"', "fz.time": '"01:00:00"'}


@few(10)
@given(key=st.sampled_from(PROFILE_KEYS), value=st.sampled_from(TOML_VALUES), cut=st.none() | st.integers(0, 90))
def test_damaged_profile_file_plans_or_is_refused(fuzz_env, capsys, key, value, cut):
    profiles = fuzz_env / "profiles.toml"
    profiles.write_text(toml_text(PROFILE_BASE, f"fz.{key}", value, cut), encoding="utf-8")
    results = fuzz_env / "profile-results"
    results.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_SLURM_PROFILES", str(profiles))
        answer(["run", "--grid", "demo", "--executor", "slurm", "--profile", "fz", "--dry-run", "--results",
                str(results)], capsys, fuzz_env)


# -- image folders and archives ----------------------------------------------------------------------------
FOLDER_DAMAGE = ["none", "truncate", "empty_class", "size", "mode", "text", "zero", "missing_test_class",
                 "extra_test_class", "class_is_file", "loop", "no_test", "unicode"]


def damage_folder(root: Path, kind: str, mode: str, size: int) -> None:
    """One kind of damage done to the tiny image folder at ``root`` (train/<class>/*.png, test/<class>/*.png)."""
    from PIL import Image

    first = sorted((root / "train" / "red").glob("*.png"))[0]
    if kind == "truncate":
        first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    elif kind == "empty_class":
        for p in (root / "train" / "green").glob("*.png"):
            p.unlink()
    elif kind == "size":
        Image.new("RGB", (size, size + 1), (255, 0, 0)).save(first)
    elif kind == "mode":
        Image.new(mode, (8, 8)).save(first.with_suffix(".tif" if mode in ("CMYK", "I;16", "F") else ".png"))
    elif kind == "text":
        (root / "train" / "red" / "notes.txt").write_text("not an image")
    elif kind == "zero":
        first.write_bytes(b"")
    elif kind == "missing_test_class":
        shutil.rmtree(root / "test" / "blue")
    elif kind == "extra_test_class":
        shutil.copytree(root / "test" / "blue", root / "test" / "violet")
    elif kind == "class_is_file":
        shutil.rmtree(root / "train" / "blue")
        (root / "train" / "blue").write_text("a file")
    elif kind == "loop":
        (root / "train" / "red" / "loop").symlink_to(root / "train" / "red" / "loop")
    elif kind == "no_test":
        shutil.rmtree(root / "test")
    elif kind == "unicode":
        (root / "train" / "red").rename(root / "train" / "rouge é日本")


@few(10)
@given(kind=st.sampled_from(FOLDER_DAMAGE), mode=st.sampled_from(["L", "RGBA", "P", "1", "I;16", "CMYK", "F", "LA"]),
       size=st.sampled_from([1, 7, 64]))
def test_damaged_image_folder_loads_or_is_refused(fuzz_env, capsys, kind, mode, size):
    import tempfile

    root = Path(tempfile.mkdtemp(dir=fuzz_env, prefix="folder-"))
    write_tiny_folder(root, n_train=6, n_test=3, size=8)
    damage_folder(root, kind, mode, size)
    results = fuzz_env / "folder-results"
    answer(["run", "--grid", "demo", "--set", f"dataset=folder:{root}", "--results", str(results), "--device", "cpu"],
           capsys, fuzz_env, may_write=(results,))


def tiny_archive(kind: str) -> bytes:
    """cifar10-jpeg.tar.gz holding a few JPEGs per class, or one damaged: cut short, empty, not gzip, a member
    that climbs out of the folder, a symlink member, classes missing."""
    from PIL import Image

    from bench.data.cifar import CIFAR10_CLASSES

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        img = io.BytesIO()
        Image.new("RGB", (32, 32), (9, 99, 199)).save(img, format="JPEG")
        classes = CIFAR10_CLASSES[:3] if kind == "classes" else CIFAR10_CLASSES
        for split in ("train", "test"):
            for c in classes:
                add(f"cifar10-jpeg/{split}/{c}/0.jpg", img.getvalue())
        if kind == "escape":
            add("../../escaped.txt", b"x")
        if kind == "symlink":
            info = tarfile.TarInfo("cifar10-jpeg/train/cat/link.jpg")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    raw = buf.getvalue()
    return {"truncate": raw[: len(raw) // 2], "empty": b"", "garbage": b"\x1f\x8b\x08" + b"\x00" * 50}.get(kind, raw)


@pytest.mark.parametrize("kind", ["ok", "truncate", "empty", "garbage", "escape", "symlink", "classes"])
def test_damaged_data_archive_loads_or_is_refused(fuzz_env, capsys, kind, tmp_path):
    """(the extracted copy goes to the cache, $BENCH_CACHE_DIR, outside the folder watched)"""
    work = tmp_path / "work"
    data = work / "data"
    data.mkdir(parents=True)
    (data / "cifar10-jpeg.tar.gz").write_bytes(tiny_archive(kind))
    results = work / "results"
    code, _, err = answer(["run", "--grid", "demo", "--set", "dataset=cifar10-jpeg", "--data-root", str(data),
                           "--results", str(results), "--device", "cpu"], capsys, work, may_write=(results,))
    assert not (tmp_path.parent / "escaped.txt").exists()
    # a copy with other classes is read as it is (tests/test_data.py: other class names are sorted)
    assert code == (0 if kind in ("ok", "classes") else 2) or kind in ("escape", "symlink"), err


# -- what a killed run leaves --------------------------------------------------------------------------------
LEFTOVERS = ["last_garbage", "last_truncated", "prev_garbage", "both_garbage", "tmp", "lock", "chunk_garbage",
             "ckpt_is_folder", "lock_is_folder"]


@few(10)
@given(kinds=st.lists(st.sampled_from(LEFTOVERS), min_size=1, max_size=4, unique=True),
       command=st.sampled_from([["status"], ["plan"], ["run", "--dry-run"], ["report"]]))
@example(kinds=["lock_is_folder"], command=["status"])  # status failed on it
def test_killed_run_leftovers_are_reported_or_skipped(fuzz_env, capsys, kinds, command):
    """A killed run's checkpoints, temporary files, locks and evaluation chunks, damaged: status, plan, report and
    a dry run answer (the run on its own line in status), and leave them as they are."""
    from bench.cli import apply_sets
    from bench.core.config import run_id
    from bench.grid.grids import get_grid

    results = fuzz_env / "killed"
    shutil.rmtree(results, ignore_errors=True)
    rid = run_id(next(c for c in apply_sets(get_grid("demo"), []) if c.parent is not None))
    ckpt = results / "ckpt" / rid
    ckpt.mkdir(parents=True)
    (results / "locks").mkdir()
    def put(path: Path, data: bytes) -> None:  # a folder put there by another kind stays
        if not path.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    if "ckpt_is_folder" in kinds:
        (ckpt / "last.pt").mkdir()
    if "lock_is_folder" in kinds:
        (results / "locks" / f"{rid}.lock").mkdir()
    for kind in kinds:
        if kind in ("last_garbage", "both_garbage"):
            put(ckpt / "last.pt", b"PK\x03\x04garbage")
        if kind in ("prev_garbage", "both_garbage"):
            put(ckpt / "prev.pt", b"\x00" * 10)
        if kind == "last_truncated":
            buf = io.BytesIO()
            torch.save({"run_id": rid, "version": 2, "model": small_cnn_state()}, buf)
            put(ckpt / "last.pt", buf.getvalue()[:500])
        if kind == "tmp":
            put(ckpt / ".last.pt.abc.tmp", b"half")
        if kind == "lock":
            put(results / "locks" / f"{rid}.lock", b"")
        if kind == "chunk_garbage":
            put(ckpt / "eval-0123" / "pgd20-00000.pt", b"garbage")
    code, out, _ = answer([*command, "--grid", "demo", "--results", str(results)], capsys, fuzz_env)
    if command == ["status"]:
        assert code == 0 and any(line.startswith(rid) for line in out.splitlines()), out


@few(10)
@given(cut=st.integers(0, 4000), garbage=st.binary(max_size=64))
def test_damaged_resume_checkpoint_falls_back(tmp_path_factory, cut, garbage):
    """A resume reads last.pt, else prev.pt, else starts afresh: a damaged file is skipped with a line."""
    from bench.core.store import Store, content_digest
    from bench.train.resume import CKPT_VERSION, load_checkpoint

    store = Store(tmp_path_factory.mktemp("resume"))
    good = {"run_id": "r", "version": CKPT_VERSION, "epoch": 1, "model": small_cnn_state()}
    buf = io.BytesIO()
    torch.save({**good, "digest": content_digest(good)}, buf)
    d = store.ckpt_dir("r")
    d.mkdir(parents=True)
    (d / "last.pt").write_bytes(buf.getvalue()[:cut] + garbage)
    (d / "prev.pt").write_bytes(buf.getvalue())
    lines: list[str] = []
    ckpt = load_checkpoint(store, "r", lines.append)
    assert ckpt is not None and ckpt["epoch"] == 1  # prev.pt, when last.pt was damaged
    assert len(lines) <= 1


def test_damaged_evaluation_chunks_are_recomputed(tmp_path):
    """Chunks a killed evaluation left, garbled or cut short, are computed again: the same numbers as before."""
    from bench.core.config import EvalConfig
    from bench.data import load_dataset
    from bench.eval.evaluator import Evaluator
    from bench.models.architectures import build_model

    _, test, info = load_dataset("digits", cache_dir=tmp_path / "cache")
    torch.manual_seed(0)
    model = build_model("small_cnn", info.num_classes, info.channels).eval()
    ev = Evaluator(test, EvalConfig(n_clean=8, n_pgd=8, n_aa=0, n_gap=8, batch_size=4, pgd_steps=2), 8 / 255,
                   torch.device("cpu"))
    state = tmp_path / "chunks"
    first = ev.run(model, log=lambda s: None, state_dir=state)
    chunks = sorted(state.rglob("*.pt"))
    assert chunks
    for i, path in enumerate(chunks):
        raw = path.read_bytes()
        path.write_bytes([raw[: len(raw) // 2], b"", b"garbage", raw[:-1] + b"\x00"][i % 4])
    again = ev.run(model, log=lambda s: None, state_dir=state)
    for key in ("clean", "pgd20", "n_clean", "n_pgd"):
        assert again[key] == first[key], key


# -- what the search found, kept as fixed cases ---------------------------------------------------------------
@pytest.mark.parametrize("content,why", [
    (b"\xff\xfe\x00", "not a UTF-8 text file"),
    (b'{"run_id": "RID", "status": "done", "metrics": {"clean": 0.5, "violations": -1}}', "metrics.violations"),
    (b'{"run_id": "RID", "status": "done", "metrics": {"clean": 5e31}}', "not an accuracy in [0, 1]"),
    (b'{"run_id": "RID", "status": "done", "config": {"eval": {"n_aa": "x"}}}', "config.eval.n_aa"),
    (b'{"run_id": "RID", "status": "done", "epochs": {}}', "field epochs"),
])
def test_found_result_shapes_are_corrupt(tmp_path, content, why):
    from bench.core.store import CorruptFile, Store

    store = Store(tmp_path)
    store.result_path("0123456789ab").parent.mkdir(parents=True)
    store.result_path("0123456789ab").write_bytes(content.replace(b"RID", b"0123456789ab"))
    with pytest.raises(CorruptFile) as e:
        store.read("0123456789ab")
    assert why in str(e.value)


@pytest.mark.parametrize("obj,message", [
    ({k: v.to(torch.complex64) for k, v in small_cnn_state().items()}, "not floating point"),
    ({k: v.to(torch.int64) for k, v in small_cnn_state().items()}, "not floating point"),
    ({1: "a", "b": 2}, "holds no state dict"),  # keys of mixed types
])
def test_found_checkpoints_are_refused(tmp_path, obj, message):
    from bench.core.checkpoints import load_into
    from bench.core.config import ConfigError
    from bench.models.architectures import build_model

    torch.save(obj, tmp_path / "m.pt")
    with pytest.raises(ConfigError, match=message):
        load_into(build_model("small_cnn", 10, 3), tmp_path / "m.pt")


def test_found_unreadable_checkpoint_without_message(tmp_path):
    """torch.load's EOFError of a cut pickle has no message: still one line."""
    from bench.core.checkpoints import read_state_dict
    from bench.core.config import ConfigError

    (tmp_path / "m.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match="cannot be read safely"):
        read_state_dict(tmp_path / "m.pt")


@pytest.mark.parametrize("line,message", [("array_parallelism = []", "array_parallelism must be an integer"),
                                          ("resources = 1", "resources must be a table")])
def test_found_profiles_are_refused(tmp_path, line, message):
    from bench.grid.slurm.profiles import ProfileError, resources_for

    with pytest.raises(ProfileError, match=message):
        resources_for("fz", {"partition": "debug", **_toml_line(line)}, "small_cnn", "digits")


def _toml_line(line: str) -> dict:
    import tomllib

    return tomllib.loads(line)
