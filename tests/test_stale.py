"""Results that know their code: every result records the fingerprint of the code that computed it; a done run
whose code changed since is "stale" in `bench status`, `bench run` (one line, skipped unless `--rerun stale`,
which archives the old result and trains from scratch) and the tables' notes. A comment-only edit is not a change.

The command-line tests run a tiny grid file (a plugin method defined in the test's folder, and vAFT with its
natural parent) in fresh processes: the code's digests are read once per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.core.config import run_id
from bench.core.runtime import Runtime
from bench.core.store import Store
from bench.grid.runner import run_local
from bench.train.rerun import Rerun
from bench.train.result import current_code, failed_result, stale_modules
from conftest import REPO, tiny_run


def _rt(tmp_path, data):
    return Runtime(results=tmp_path / "results", data_root=data.parent, device="cpu", progress=False)


def _older(result: dict, module: str) -> dict:
    """``result`` as if ``module``'s code had been another when it was computed."""
    code = json.loads(json.dumps(result["code"]))
    code["modules"][module] = "0" * 12
    code["digest"] = "f" * 12
    return {**result, "code": code}


def test_done_and_failed_results_record_the_current_code(tmp_path, tiny_folder):
    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=1)
    res = run_local([cfg], _rt(tmp_path, tiny_folder), log=lambda s: None)[run_id(cfg)]
    assert res["status"] == "done" and res["code"] == current_code("standard")
    assert "methods.standard" in res["code"]["modules"] and stale_modules(res) == []
    assert failed_result(cfg, "why", torch.device("cpu"))["code"] == current_code("standard")
    assert stale_modules({k: v for k, v in res.items() if k != "code"}) is None  # predates fingerprints
    assert stale_modules(_older(res, "methods.standard")) == ["methods.standard"]


def test_rerun_choices_pick_the_results_to_archive():
    code = current_code("standard")
    done = {"status": "done", "config": {"method": "standard"}, "code": code, "finished": "2026-01-01T00:00:00+00:00"}
    stale = _older(done, "bench.train.loop")
    failed = {**done, "status": "failed"}
    old = {k: v for k, v in stale.items() if k != "code"}
    before = "2026-06-01T00:00:00+00:00"
    pick = {what: [r is not None and Rerun(what, before).wants(r) for r in (done, stale, failed, old, None)]
            for what in (None, "stale", "failed", "all")}
    assert pick == {None: [False] * 5, "stale": [False, True, False, False, False],
                    "failed": [False, False, True, False, False], "all": [True, True, True, True, False]}
    assert not Rerun("all", "2025-01-01T00:00:00+00:00").wants(done)  # finished by this very command: kept


def test_archive_keeps_the_result_and_removes_model_and_checkpoints(tmp_path):
    store = Store(tmp_path)
    store.write("r1", {"run_id": "r1", "status": "done"})
    store.model_path("r1").parent.mkdir(parents=True)
    store.model_path("r1").write_bytes(b"m")
    (store.ckpt_dir("r1")).mkdir(parents=True)
    (store.ckpt_dir("r1") / "last.pt").write_bytes(b"c")
    path = store.archive("r1")
    assert path.parent == tmp_path / "runs" / "archive" and path.name.startswith("r1.")
    assert json.loads(path.read_text())["status"] == "done"
    assert store.read("r1") is None and not store.model_path("r1").exists() and not store.ckpt_dir("r1").exists()
    assert [p.name for p, _ in store.all_results()] == []  # the archive is not a result of the grid
