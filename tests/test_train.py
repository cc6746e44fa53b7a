"""The training loop end to end on a tiny image folder: results, resume, kills, failures, AFD's export."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.config import run_id
from bench.runtime import Runtime
from bench.runner import run_local
from bench.store import Store
from bench.train import EMA, execute
from conftest import REPO, tiny_run


def _rt(tmp_path, data):
    return Runtime(results=tmp_path / "results", data_root=data.parent, device="cpu", progress=False)


def _strip(result):
    """The parts of a result that must be identical between two runs of the same config."""
    return {"metrics": result["metrics"],
            "epochs": [{k: v for k, v in e.items() if k != "seconds"} for e in result["epochs"]]}


def test_parent_then_children_write_results(tmp_path, tiny_folder):
    rt = _rt(tmp_path, tiny_folder)
    runs = [tiny_run("vaft", f"folder:{tiny_folder}"), tiny_run("afd", f"folder:{tiny_folder}")]
    res = run_local(runs, rt, log=lambda s: None)
    assert len(res) == 3 and all(r["status"] == "done" for r in res.values())
    store = Store(rt.results)
    for rid, r in res.items():
        on_disk = store.read(rid)
        assert on_disk["status"] == "done" and on_disk["config"]["method"] in ("standard", "vaft", "afd")
        m = on_disk["metrics"]
        assert 0 <= m["pgd20"] <= m["clean"] <= 1 and m["violations"] == []
        assert len(on_disk["epochs"]) == 2 and on_disk["versions"]["torch"] == torch.__version__
        assert store.model_path(rid).exists()
    afd = next(r for r in res.values() if r["config"]["method"] == "afd")
    assert {"f1_clean", "f2_clean", "feature_gap"} <= set(afd["metrics"])
    # a second run of the grid trains nothing: every run is already done
    t0 = time.perf_counter()
    again = run_local(runs, rt, log=lambda s: None)
    assert time.perf_counter() - t0 < 5 and again.keys() == res.keys()


def test_resume_after_interruption_is_exact(tmp_path, tiny_folder):
    cfg = tiny_run("afd", f"folder:{tiny_folder}", epochs=3)
    rt_a = _rt(tmp_path / "a", tiny_folder)
    run_local([cfg.parent], rt_a, log=lambda s: None)
    full = execute(cfg, rt_a, log=lambda s: None)

    rt_b = _rt(tmp_path / "b", tiny_folder)
    run_local([cfg.parent], rt_b, log=lambda s: None)
    part = execute(cfg, rt_b, log=lambda s: None, stop_after_epoch=1)
    assert part["status"] == "interrupted"
    assert (Store(rt_b.results).ckpt_dir(run_id(cfg)) / "last.pt").exists()
    resumed = execute(cfg, rt_b, log=lambda s: None)
    assert _strip(resumed) == _strip(full)


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, tiny_folder):
    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=3)
    rt = _rt(tmp_path, tiny_folder)
    full = execute(cfg, _rt(tmp_path / "ref", tiny_folder), log=lambda s: None)
    execute(cfg, rt, log=lambda s: None, stop_after_epoch=2)
    last = Store(rt.results).ckpt_dir(run_id(cfg)) / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated mid-write by a dying node
    msgs = []
    resumed = execute(cfg, rt, log=msgs.append)
    assert any("unreadable" in m for m in msgs) and any("resuming standard at epoch 2" in m for m in msgs)
    assert _strip(resumed) == _strip(full)


def test_nan_loss_fails_run_with_reason(tmp_path, tiny_folder):
    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=2)
    cfg = replace(cfg, train=replace(cfg.train, lr=1e30))
    res = execute(cfg, _rt(tmp_path, tiny_folder), log=lambda s: None)
    assert res["status"] == "failed" and "non-finite" in res["reason"] and "epoch 1" in res["reason"]


def test_ema_decay_rule():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # t=0: decay 1/10
    assert ema.net.weight.item() == pytest.approx(0.9)
    for _ in range(2000):
        ema.update(net)
    assert ema.net.weight.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches(tmp_path, tiny_folder):
    """`bench run` killed with SIGKILL mid-epoch resumes from its checkpoint; final metrics equal a clean run."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")  # see each log line as it happens
    args = ["--grid", "demo", "--set", f"dataset=folder:{tiny_folder}", "--set", "train.epochs=4",
            "--set", "train.batch_size=4", "--set", "eval.n_clean=12", "--set", "eval.n_pgd=12",
            "--set", "eval.n_aa=0", "--set", "eval.pgd_steps=3", "--device", "cpu", "--threads", "1"]
    ref = subprocess.run([sys.executable, "-m", "bench", "run", *args, "--results", str(tmp_path / "ref")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bench", "run", *args, "--results", str(out)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # wait until the AFD run has checkpointed an epoch, then kill mid-way through the next one
    for line in p.stdout:
        if " afd epoch 2/4" in line:  # epoch 2's checkpoint is written: kill during epoch 3
            p.send_signal(signal.SIGKILL)
            break
    p.wait()
    assert p.returncode == -signal.SIGKILL
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming afd at epoch 3/4" in again.stdout or "resuming afd at epoch 4/4" in again.stdout
    for f in (tmp_path / "ref" / "runs").glob("*.json"):
        a, b = json.loads(f.read_text()), json.loads((out / "runs" / f.name).read_text())
        assert _strip(a) == _strip(b)
