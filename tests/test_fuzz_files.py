"""The files the suite reads, under generated damage (Hypothesis): result JSON, checkpoints, grid and profile TOML,
image folders and archives, and what a killed run leaves (evaluation chunks, locks, checkpoints). Each file either
loads, is reported as corrupt by `bench status` on the line of the run it belongs to, or is refused in one line
(exit 2); no traceback, and nothing already finished is lost or overwritten.

The commands run in-process with the stand-ins of tests/test_fuzz_cli.py (the real work replaced by ``Reached``
once every check has passed). Budget: ``BENCH_FUZZ_EXAMPLES`` (default 150) split over the tests below, fixed seed.
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
