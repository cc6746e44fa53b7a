"""Reliability: kills at random moments, corrupt files, two runners at once, diverging runs,
catastrophic overfitting, and the evaluation guards.

The subprocess tests run the demo grid (natural pre-training -> vAFT, AFD) on a tiny image folder with tiny
settings; one uninterrupted reference run of it (module fixture) is what every interrupted or concurrent run
must reproduce exactly (metrics and per-epoch log minus timings: CPU training here is deterministic).
"""
from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.core.config import run_id
from bench.eval.evaluator import Evaluator
from bench.grid.runner import run_local
from bench.core.runtime import Runtime
from bench.core.store import Store
from bench.train.loop import catastrophic_overfitting, execute
from bench.train.resume import CKPT_VERSION
from conftest import REPO, tiny_run, write_tiny_folder

EPOCHS = 3
TIMING = ("seconds", "probe_seconds")  # per-epoch fields that may differ between two runs of the same config


def _args(data: Path) -> list[str]:
    sets = [f"dataset=folder:{data}", f"train.epochs={EPOCHS}", "train.batch_size=4", "eval.n_clean=12",
            "eval.n_pgd=12", "eval.n_aa=0", "eval.pgd_steps=3", "eval.n_gap=12", "eval.batch_size=12"]
    return ["--grid", "demo", *[x for s in sets for x in ("--set", s)], "--device", "cpu", "--threads", "1"]


def _cmd(data: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "run", *_args(data), "--results", str(results)]


def _env(cache: Path, **extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", BENCH_CACHE_DIR=str(cache), **extra)


def _strip(result: dict) -> dict:
    """What must be identical between two runs of the same config (no timings, dates or host)."""
    keep = ("run_id", "status", "reason", "config", "extra", "sanity", "catastrophic_overfitting")
    metrics = {k: v for k, v in (result.get("metrics") or {}).items() if k not in TIMING}
    return {**{k: result.get(k) for k in keep}, "metrics": metrics,
            "epochs": [{k: v for k, v in e.items() if k not in TIMING} for e in result["epochs"]]}


def _results(root: Path) -> dict[str, dict]:
    return {p.name: _strip(json.loads(p.read_text())) for p in sorted((root / "runs").glob("*.json"))}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """(tiny data folder, cache folder, results of one uninterrupted run of the grid)."""
    base = tmp_path_factory.mktemp("grid")
    data, cache = write_tiny_folder(base / "tiny"), base / "cache"
    ref = base / "ref"
    out = subprocess.run(_cmd(data, ref), env=_env(cache), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(list((ref / "runs").glob("*.json"))) == 3
    return data, cache, ref


def _check_consistent(root: Path) -> None:
    """No partial file is ever read as valid: every result parses and is final, every checkpoint and model
    loads with weights_only=True, and a done result always has its exported model beside it."""
    store = Store(root)
    for path in (root / "runs").glob("*.json"):
        res = store.read(path.stem)  # raises CorruptFile on a partial file
        assert res["status"] in ("done", "failed"), res["status"]
        if res["status"] == "done":
            assert store.model_path(path.stem).exists()
    for path in list((root / "ckpt").glob("*/*.pt")) + list((root / "models").glob("*.pt")):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        assert blob["run_id"] == (path.parent.name if path.parent.parent.name == "ckpt" else path.stem)


# -- 1. crash consistency -------------------------------------------------------------------------------------
# Where a kill lands: (name, regex of the output line that arms it, which occurrence, delay range in seconds).
# With BENCH_TEST_SLOW_WRITES every atomic write announces itself and then waits before os.replace, so a kill
# right after the announcement lands inside the write.
KILLS = [
    ("at a random moment", None, 1, (0.5, 6.0)),
    ("during a checkpoint write", r"bench-test: writing .*/ckpt/.*last\.pt", 1, (0.0, 0.1)),
    ("mid-epoch", r"\] \w+ epoch \d+/\d+ ", 1, (0.0, 0.25)),
    ("during the model export", r"bench-test: writing .*/models/", 1, (0.0, 0.1)),
    ("during evaluation", r"\] \w+ clean \d", 1, (0.0, 0.02)),
    ("during the result write", r"bench-test: writing .*/runs/.*\.json", 1, (0.0, 0.1)),
    ("during a later checkpoint write", r"bench-test: writing .*/ckpt/.*last\.pt", 2, (0.0, 0.1)),
]


def _run_and_kill(cmd, env, pattern, nth, delay) -> tuple[int, str]:
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(300, p.kill)
    watchdog.start()
    timer = threading.Timer(delay, p.kill) if pattern is None else None
    if timer:
        timer.start()
    lines, seen = [], 0
    try:
        for line in p.stdout:
            lines.append(line)
            if pattern is not None and seen < nth and re.search(pattern, line):
                seen += 1
                if seen == nth:
                    threading.Timer(delay, p.kill).start()
        p.wait()
    finally:
        watchdog.cancel()
        if timer:
            timer.cancel()
    return p.returncode, "".join(lines)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_or_corrupts(grid, tmp_path):
    """At least 10 SIGKILLs of `bench run` (seeded random delays; mid-epoch, mid-checkpoint-write, mid-
    evaluation, mid-result-write, ...), restarting each time: after every kill all files are whole, and the
    final results equal the uninterrupted run's."""
    data, cache, ref = grid
    out = tmp_path / "killed"
    cmd = _cmd(data, out)
    env = _env(cache, BENCH_TEST_SLOW_WRITES="0.3")
    rng = random.Random(7)
    kills: list[str] = []
    finished = False
    for attempt in range(30):
        name, pattern, nth, (lo, hi) = KILLS[attempt % len(KILLS)]
        code, text = _run_and_kill(cmd, env, pattern, nth, rng.uniform(lo, hi))
        _check_consistent(out)
        if code == 0:
            finished = True
            break
        assert code == -signal.SIGKILL, text
        kills.append(name)
        if len(kills) >= 12:
            break
    assert len(kills) >= 10, kills
    assert {k for k, *_ in KILLS} <= set(kills), kills
    if not finished:
        final = subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stdout + final.stderr
        assert "resuming" in final.stdout or "done, skipped" in final.stdout
    _check_consistent(out)
    assert _results(out) == _results(ref)
    print(f"{len(kills)} kills: " + ", ".join(f"{n} x{c}" for n, c in Counter(kills).items()))


# -- 3. concurrency ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_runners_on_one_grid_train_each_run_once(grid, tmp_path):
    data, cache, ref = grid
    out = tmp_path / "shared"
    procs = [subprocess.Popen(_cmd(data, out), env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    texts = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], texts
    epochs = Counter(m.groups() for t in texts for m in re.finditer(r"\] (\w+) epoch (\d+)/\d+ ", t))
    assert set(epochs) == {(m, str(e)) for m in ("standard", "vaft", "afd") for e in range(1, EPOCHS + 1)}
    assert set(epochs.values()) == {1}, epochs  # every epoch of every run trained by exactly one process
    evals = Counter(m.group(1) for t in texts for m in re.finditer(r"\] (\w+) clean \d", t))
    assert evals == {"standard": 1, "vaft": 1, "afd": 1}
    _check_consistent(out)
    assert _results(out) == _results(ref)


def test_lock_of_a_killed_process_is_released(tmp_path):
    store = Store(tmp_path / "r")
    code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from bench.core.store import Store; "
            f"cm = Store({str(tmp_path / 'r')!r}).lock('abc'); cm.__enter__(); print('locked', flush=True); "
            "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        assert store.is_locked("abc")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not store.is_locked("abc")


# -- 2. corrupt files -----------------------------------------------------------------------------------------
def _rt(root: Path, data: Path) -> Runtime:
    return Runtime(results=root, data_root=data.parent, device="cpu", progress=False)


def _garble(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) // 3, len(raw) // 3 + 64):  # same size, scrambled middle (a bad sector, bit rot)
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("corrupt", ["garbled last", "both garbled", "both truncated"])
def test_corrupt_checkpoint_falls_back_or_restarts_and_says_so(tmp_path, tiny_folder, corrupt):
    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=3)
    full = execute(cfg, _rt(tmp_path / "ref", tiny_folder), log=lambda s: None)
    rt = _rt(tmp_path / "r", tiny_folder)
    execute(cfg, rt, log=lambda s: None, stop_after_epoch=2)
    d = Store(rt.results).ckpt_dir(run_id(cfg))
    targets = [d / "last.pt"] if corrupt == "garbled last" else [d / "last.pt", d / "prev.pt"]
    for path in targets:
        if "truncated" in corrupt:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            _garble(path)
    msgs: list[str] = []
    resumed = execute(cfg, rt, log=msgs.append)
    for path in targets:
        assert any(str(path) in m and "unreadable" in m and "falling back" in m for m in msgs), msgs
    if corrupt == "garbled last":
        assert any("resuming standard at epoch 2/3" in m for m in msgs), msgs
    else:
        assert not any("resuming" in m for m in msgs), msgs  # both unusable: trained from epoch 1
    assert _strip(resumed) == _strip(full)


def test_checkpoint_is_never_unpickled_blindly(tmp_path, tiny_folder):
    """A checkpoint whose pickle would run code is rejected by weights_only=True; the code never runs."""
    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=1)
    rt = _rt(tmp_path / "r", tiny_folder)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = Store(rt.results).ckpt_dir(run_id(cfg)) / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"version": CKPT_VERSION, "run_id": run_id(cfg), "payload": Evil()}, path)
    msgs: list[str] = []
    res = execute(cfg, rt, log=msgs.append)
    assert not marker.exists()
    assert res["status"] == "done" and any("unreadable" in m for m in msgs), msgs


def test_corrupt_result_reported_by_status_and_report_then_redone(grid, tmp_path, capsys):
    from bench.cli import main

    data, cache, ref = grid
    out = tmp_path / "r"
    shutil.copytree(ref, out)
    victim = sorted((out / "runs").glob("*.json"))[0]
    victim.write_text(victim.read_text()[:200])  # a torn result file
    args = _args(data)
    args = args[: args.index("--device")] + ["--results", str(out)]
    assert main(["status", *args]) == 0
    status = capsys.readouterr().out
    line = next(ln for ln in status.splitlines() if ln.startswith(victim.stem))
    assert "corrupt" in line and str(victim) in line, status
    assert main(["report", *args]) == 0
    report = capsys.readouterr().out
    assert f"corrupt result file runs/{victim.name}" in report, report
    msgs: list[str] = []
    from bench.cli import grid_runs, build_parser

    runs = grid_runs(build_parser().parse_args(["run", *args]))
    res = run_local(runs, _rt(out, data), log=msgs.append)
    assert any(f"result {victim} is corrupt; redoing the run" in m for m in msgs), msgs
    assert all(r["status"] == "done" for r in res.values())
    assert _results(out) == _results(ref)


def test_done_parent_without_its_model_file_is_trained_again_for_a_new_child(grid, tmp_path):
    """Result files are committed, models/ and ckpt/ are not: on a fresh clone a child still to do must not fail
    with "parent has no model"; the parent is trained again (same result) and the child runs."""
    from bench.cli import grid_runs, build_parser
    from bench.grid.slurm import grid_status

    data, cache, ref = grid
    out = tmp_path / "r"
    shutil.copytree(ref, out)
    args = _args(data)
    args = args[: args.index("--device")] + ["--results", str(out)]
    runs = grid_runs(build_parser().parse_args(["run", *args]))
    parent = next(c for c in runs if c.parent is not None).parent
    child = next(c for c in runs if c.parent is not None)
    pid, cid = run_id(parent), run_id(child)
    shutil.rmtree(out / "models"), shutil.rmtree(out / "ckpt")  # what a fresh clone has
    (out / "runs" / f"{cid}.json").unlink()  # ... plus one child still to do
    states = {s.run_id: s for s in grid_status(runs, out, query=lambda ids: {})}
    assert states[pid].state == "missing" and "model file is missing" in states[pid].reason
    assert states[cid].state == "missing"
    assert all(s.state == "done" for r, s in states.items() if r not in (pid, cid))  # the other child: no redo
    msgs: list[str] = []
    res = run_local(runs, _rt(out, data), log=msgs.append)
    assert any(f"[{pid}]" in m and "training it again" in m for m in msgs), msgs
    assert all(r["status"] == "done" for r in res.values())
    assert _results(out) == _results(ref)  # CPU training is deterministic: the same parent, the same child
    assert Store(out).model_path(pid).exists()
    again: list[str] = []
    run_local(runs, _rt(out, data), log=again.append)
    plan_lines = [m for m in again if re.match(r"\[\d+/\d+\]", m)]
    assert len(plan_lines) == 3 and all(m.endswith("done, skipped") for m in plan_lines), again


# -- 4. numerical failure and catastrophic overfitting ---------------------------------------------------------
def test_diverging_run_fails_with_epoch_and_the_grid_goes_on(tmp_path, tiny_folder):
    ok = tiny_run("standard", f"folder:{tiny_folder}", epochs=2)
    bad = replace(ok, train=replace(ok.train, lr=1e30))
    res = run_local([bad, ok], _rt(tmp_path / "r", tiny_folder), log=lambda s: None)
    stored = {rid: Store(tmp_path / "r").read(rid) for rid in res}
    b, o = stored[run_id(bad)], stored[run_id(ok)]
    assert b["status"] == "failed" and b["failed_epoch"] == 1
    assert "non-finite" in b["reason"] and "epoch 1" in b["reason"]
    assert o["status"] == "done" and o["sanity"] == "ok" and "catastrophic_overfitting" not in o
    assert "co_pgd" not in o["epochs"][0]  # the probe is for single-step methods only


def test_crashing_run_is_recorded_failed_and_its_child_skipped_with_the_reason(tmp_path, tiny_folder, monkeypatch):
    """A run that crashes with an unexpected exception (a bug, a dead device) is written as failed with its reason
    and traceback, its child as failed because of it, and the grid goes on (an independent run still finishes)."""
    import bench.train.attempt

    child = tiny_run("vaft", f"folder:{tiny_folder}")
    other = tiny_run("standard", f"folder:{tiny_folder}", epochs=2)
    real = bench.train.attempt.execute

    def execute_or_crash(cfg, *a, **k):
        if run_id(cfg) == run_id(child.parent):
            raise RuntimeError("device lost")
        return real(cfg, *a, **k)

    monkeypatch.setattr(bench.train.attempt, "execute", execute_or_crash)
    res = run_local([child, other], _rt(tmp_path / "r", tiny_folder), log=lambda s: None)
    store = Store(tmp_path / "r")
    parent, kid, ok = (store.read(run_id(c)) for c in (child.parent, child, other))
    assert parent["status"] == "failed" and parent["reason"] == "RuntimeError: device lost"
    assert "device lost" in parent["traceback"] and parent["wall_processes"] == 0 and parent["thread_counts"] == []
    assert kid["status"] == "failed" and f"parent {run_id(child.parent)} (standard) did not finish" in kid["reason"]
    assert ok["status"] == "done" and len(res) == 3


def test_single_step_methods_declare_themselves():
    from methods import REGISTRY

    assert {n for n, cls in REGISTRY.items() if cls.single_step} == {"free_at", "fgsm_ga", "atas"}


def test_catastrophic_overfitting_rule():
    log = lambda *pairs: [{"epoch": i + 1, "co_fgsm": f, "co_pgd": p} for i, (f, p) in enumerate(pairs)]  # noqa: E731
    assert catastrophic_overfitting(log((0.5, 0.4), (0.55, 0.42))) is None
    co = catastrophic_overfitting(log((0.5, 0.4), (0.6, 0.45), (0.9, 0.1), (0.95, 0.0)))
    assert co == {"epoch": 3, "fgsm": 0.9, "pgd": 0.1, "best_pgd": 0.45}
    assert catastrophic_overfitting(log((0.5, 0.4), (0.2, 0.1))) is None  # both collapse: not CO, just bad
    assert catastrophic_overfitting([{"epoch": 1, "loss": 1.0}]) is None


def test_single_step_run_records_probe_and_catastrophic_overfitting(tmp_path, tiny_folder, monkeypatch):
    cfg = tiny_run("fgsm_ga", f"folder:{tiny_folder}", epochs=2)
    res = execute(cfg, _rt(tmp_path / "a", tiny_folder), log=lambda s: None)
    assert res["status"] == "done" and res["catastrophic_overfitting"] is None
    for e in res["epochs"]:
        assert 0 <= e["co_pgd"] <= 1 and 0 <= e["co_fgsm"] <= 1
    probes = iter([(0.5, 0.4), (0.95, 0.05)])  # PGD accuracy collapses while FGSM accuracy rises
    monkeypatch.setattr(Evaluator, "fgsm_pgd_accuracy", lambda self, model, n=None: next(probes))
    msgs: list[str] = []
    res = execute(cfg, _rt(tmp_path / "b", tiny_folder), log=msgs.append)
    assert res["catastrophic_overfitting"] == {"epoch": 2, "fgsm": 0.95, "pgd": 0.05, "best_pgd": 0.4}
    assert json.loads(Store(tmp_path / "b").result_path(run_id(cfg)).read_text())["catastrophic_overfitting"]["epoch"] == 2
    assert any("catastrophic overfitting at epoch 2" in m for m in msgs)


# -- 6. evaluation guards ----------------------------------------------------------------------------------------
def _evaluator(tiny_folder, **kw):
    from bench.core.config import EvalConfig
    from bench.data import load_dataset

    _, test, info = load_dataset(f"folder:{tiny_folder}", None, None)
    ev = EvalConfig(n_clean=12, n_pgd=12, n_aa=kw.pop("n_aa", 0), pgd_steps=3, batch_size=12, n_gap=12)
    return Evaluator(test, ev, 8 / 255, torch.device("cpu"), seed=0), info


def test_every_run_records_the_order_check(grid):
    for res in map(json.loads, (p.read_text() for p in (grid[2] / "runs").glob("*.json"))):
        assert res["sanity"] == "ok" and res["metrics"]["violations"] == []
        assert res["metrics"]["pgd20"] <= res["metrics"]["clean"]


def test_evaluation_is_deterministic_and_in_eval_mode(tiny_folder):
    from bench.models.architectures import build_model

    ev, info = _evaluator(tiny_folder)
    torch.manual_seed(0)
    model = build_model("small_cnn", info.num_classes, info.channels)
    with torch.no_grad():  # running stats far from any batch's statistics: train and eval mode disagree
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-2, 2)
                m.running_var.uniform_(0.1, 4)
    model.train()  # the caller left it in train mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = ev.run(model), ev.run(model)
    assert a.pop("seconds") and b.pop("seconds")  # timings recorded, and the only field that may differ
    assert a == b
    x = ev.test.images[:12].float() / 255
    with torch.no_grad():
        eval_logits = copy.deepcopy(model).eval()(x)
        train_logits = copy.deepcopy(model).train()(x)
        prepared = Evaluator.prepare(model)
        assert not prepared.training
        assert torch.allclose(prepared(x), eval_logits, atol=1e-5)
    assert not torch.allclose(train_logits, eval_logits, atol=1e-2)  # the test can tell the modes apart
    assert a["clean"] == (eval_logits.argmax(1) == ev.test.labels[:12]).float().mean().item()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training  # the caller's model is left as it was


def test_violation_marks_the_run_and_the_report(tmp_path, tiny_folder, monkeypatch):
    from bench.report.tables import load, report

    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=1)
    why = "pgd20 accuracy 0.9000 > clean accuracy 0.5000 on the first 12 test images"
    monkeypatch.setattr(Evaluator, "check_order", staticmethod(lambda clean, pgd_ok, aa_ok: [why]))
    res = execute(cfg, _rt(tmp_path / "r", tiny_folder), log=lambda s: None)
    assert res["sanity"] == "violated" and res["metrics"]["violations"] == [why]
    assert load([cfg], tmp_path / "r").violations.tolist() == [why]
    md = report([cfg], tmp_path / "r", "markdown")
    assert "‡" in md and "violate clean >= PGD-20 >= AA" in md and why in md and run_id(cfg) in md
    tex = report([cfg], tmp_path / "r", "latex")
    assert "$^\\ddagger$" in tex
