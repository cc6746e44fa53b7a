"""One run on several processes (bench/core/distributed.py): sharding, gradient averaging, the methods' state, resume.

Fast tests check the pieces in one process; the slow ones spawn 2 gloo processes on the CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.core import distributed
from bench.data import Loader, Split, load_dataset
from conftest import REPO, tiny_run, write_tiny_folder


def _split(n=20, seed=0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.randint(0, 3, (n,), generator=g))


@pytest.mark.parametrize("k", [2, 3])
def test_loader_shards_partition_each_global_batch(k):
    split = _split()
    kw = dict(device="cpu", shuffle=True, augment=True, seed=3)
    one = list(Loader(split, 8, **kw).epoch(1))
    shards = [list(Loader(split, 8, rank=r, world_size=k, **kw).epoch(1)) for r in range(k)]
    assert all(len(s) == len(one) for s in shards)
    for b, whole in enumerate(one):  # the last batch has 4 images: shards of unequal size
        parts = [s[b] for s in shards]
        assert torch.equal(torch.cat([p.idx for p in parts]), whole.idx)
        assert torch.equal(torch.cat([p.x for p in parts]), whole.x)  # same crops and flips
        assert [p.offset for p in parts] == [sum(len(q.idx) for q in parts[:r]) for r in range(k)]
        assert all(p.global_size == len(whole.idx) for p in parts)
    with pytest.raises(ValueError, match="rank 2 of 2"):
        Loader(split, 8, rank=2, world_size=2, **kw)


def test_a_last_batch_smaller_than_the_world_is_dropped():
    """17 images in batches of 8: one process keeps the last image's batch; on 2 processes it would leave rank 1
    without an example (NaN loss), so both ranks drop it; on 1 process nothing changes."""
    split = _split(17)
    kw = dict(device="cpu", shuffle=True, augment=False, seed=0)
    assert len(Loader(split, 8, **kw)) == 3
    assert [len(Loader(split, 8, rank=r, world_size=2, **kw)) for r in (0, 1)] == [2, 2]
    assert len(Loader(_split(18), 8, rank=1, world_size=2, **kw)) == 3  # 2 left: one each
    assert all(len(b.idx) > 0 for r in (0, 1) for b in Loader(_split(18), 8, rank=r, world_size=2, **kw).epoch(0))


def test_world_from_torchrun_and_slurm_variables():
    assert distributed.from_env({}) == distributed.SINGLE
    assert distributed.from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == distributed.World(1, 4, 1)
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1",
             "SLURM_JOB_NODELIST": "gpu[12-13]"}
    assert distributed.from_env(slurm) == distributed.World(3, 4, 1)
    assert distributed.from_env({**slurm, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}) == distributed.SINGLE
    assert distributed.slurm_master(slurm) == "gpu12"
    assert distributed.slurm_master({"SLURM_JOB_NODELIST": "node7,node9"}) == "node7"
    assert distributed.World(1, 3).shard(0, 10) == (3, 6)


def test_single_process_helpers_are_identities():
    v = torch.tensor(0.25)
    assert distributed.global_mean(v, 8) is v
    buf, stamp = torch.ones(4, 2), torch.tensor([3.0, -1, 5, -1], dtype=torch.float64)
    distributed.merge_latest(buf, stamp)
    assert torch.equal(buf, torch.ones(4, 2)) and (stamp == -1).all()  # stamps restart after every merge


def test_slurm_profile_tasks_follow_the_gpus():
    from bench.grid.slurm import ProfileError, resources_for

    res = resources_for("p", {"gpus": 4, "cpus": 8}, "resnet18", "cifar10")
    assert (res.tasks_per_node, res.world_size) == (4, 4) and "4 processes per run" in res.describe()
    res = resources_for("p", {"gpus": 0, "tasks": 2, "nodes": 2}, "resnet18", "cifar10")
    assert (res.tasks_per_node, res.world_size) == (2, 4)
    assert resources_for("p", {"gpus": 1}, "resnet18", "cifar10").world_size == 1
    with pytest.raises(ProfileError, match="need one task each"):
        resources_for("p", {"gpus": 4, "tasks": 2}, "resnet18", "cifar10")
    with pytest.raises(ProfileError, match="nodes must be"):
        resources_for("p", {"nodes": 0}, "resnet18", "cifar10")


def test_the_spawning_process_claims_the_run_held_or_done_without_spawning(tmp_path, monkeypatch):
    """With several processes and no world yet, the process that would spawn the ranks takes the run's lock and
    decides: a run another runner holds is "held" at once (``if_free``, as the pool asks), a done run is returned
    as stored; neither starts a process."""
    from bench.core.config import run_id
    from bench.core.store import Store
    from bench.train.loop import execute

    def no_spawn(*a, **k):
        raise AssertionError("spawned")

    monkeypatch.setattr(distributed, "spawn", no_spawn)
    cfg = tiny_run("standard", "digits")
    rt, rid = _rt(tmp_path / "r", 2), run_id(cfg)
    store = Store(rt.results)
    with store.lock(rid):
        assert execute(cfg, rt, log=lambda s: None, if_free=True) == {"run_id": rid, "status": "held"}
    store.write(rid, {"run_id": rid, "status": "done", "metrics": {"clean": 0.5}})
    assert execute(cfg, rt, log=lambda s: None)["metrics"] == {"clean": 0.5}


def test_plan_shows_the_critical_path_with_one_and_k_gpus(tmp_path, capsys):
    from bench.cli import main
    from bench.grid.plan import speedup

    assert main(["plan", "--grid", "table2", "--results", str(tmp_path), "--gpus-per-run", "4"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("critical path"))
    one = float(line.split(" h with 1 GPU")[0].split()[-1])
    four = float(line.split(" h with 4 GPUs")[0].split()[-1])
    assert four == pytest.approx(one / speedup(4), abs=0.06) and "pgd_at" in line and speedup(1) == 1.0


def test_bad_process_counts_are_one_line(tmp_path, capsys):
    from bench.cli import main

    assert main(["run", "--grid", "demo", "--results", str(tmp_path), "--procs-per-run", "0", "--dry-run"]) == 2
    assert main(["run", "--grid", "demo", "--results", str(tmp_path), "--gpus-per-run", "2", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "must be >= 1" in err[0] and "CUDA device" in err[1]


# -- 2 processes (gloo) ----------------------------------------------------------------------------------------
def _exact_worker(out: str) -> None:
    """Rank r: a BatchNorm-free model, 3 SGD steps on its shard of each global batch, gradients averaged by the
    pre-step hook. Rank 0 saves the weights."""
    world = distributed.from_env()
    distributed.init(world, torch.device("cpu"))
    torch.set_num_threads(1)
    try:
        w = _train_linear(world)
        if world.main:
            torch.save(w, out)
    finally:
        distributed.shutdown()


def _train_linear(world: distributed.World) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    if world.active:
        distributed.average_gradients_before_steps([opt])
    loader = Loader(_split(48), 16, device="cpu", shuffle=True, augment=True, seed=1, rank=world.rank,
                    world_size=world.size)
    for batch in loader.epoch(0):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(batch.x), batch.y).backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_two_processes_step_as_one_on_the_global_batch(tmp_path):
    out = tmp_path / "w.pt"
    distributed.spawn(_exact_worker, (str(out),), 2)
    two, one = torch.load(out), _train_linear(distributed.SINGLE)
    for k in one:  # equal up to the reduction order of the gradient sum
        assert torch.allclose(two[k], one[k], atol=1e-6, rtol=1e-5), k
    assert not torch.allclose(two["1.weight"], torch.nn.Linear(3 * 8 * 8, 3).weight)  # it did train


def _eval_worker(folder: str, out: str) -> None:
    """Rank r evaluates the same model with the chunks k = r mod 2 and gathers the rest (bench/eval/evaluator.py)."""
    world = distributed.from_env()
    distributed.init(world, torch.device("cpu"))
    torch.set_num_threads(1)
    try:
        metrics = _evaluate(folder, world)
        if world.main:
            torch.save(metrics["per_example"], out)
    finally:
        distributed.shutdown()


def _evaluate(folder: str, world) -> dict:
    from bench.core.config import EvalConfig
    from bench.eval.evaluator import Evaluator
    from bench.models.architectures import build_model

    _, test, info = load_dataset(f"folder:{folder}", None, None)
    torch.manual_seed(0)
    model = build_model("small_cnn", info.num_classes, info.channels)
    cfg = EvalConfig(n_clean=12, n_pgd=12, n_aa=12, pgd_steps=5, batch_size=4, n_gap=12)  # 3 chunks
    return Evaluator(test, cfg, 8 / 255, torch.device("cpu"), world=world).run(model)


@pytest.mark.slow
def test_sharded_evaluation_gives_the_one_process_per_example_results(tmp_path):
    folder = write_tiny_folder(tmp_path / "tiny", classes=("red", "green", "blue", "redgreen"), n_test=12)
    out = tmp_path / "flags.pt"
    distributed.spawn(_eval_worker, (str(folder), str(out)), 2)
    assert torch.load(out) == _evaluate(str(folder), None)["per_example"]


def _rt(root: Path, procs: int):
    from bench.core.runtime import Runtime

    return Runtime(results=root, device="cpu", progress=False, threads=1, procs=procs, cache_dir=root / "cache")


def _strip(res: dict) -> dict:
    return {"metrics": {k: v for k, v in res["metrics"].items() if k not in ("seconds",)},
            "epochs": [{k: v for k, v in e.items() if k not in ("seconds", "probe_seconds")} for e in res["epochs"]]}


# Per-epoch loss of 2 processes against 1: on a CPU (gloo: no SyncBatchNorm) each rank normalises with its 32
# examples' statistics and draws its own attack starts, so the runs are not the same run bit for bit. Measured
# (torch 2.14.1, 2 AMD Zen 4 cores): differences of 0.001-0.021 (vAFT 0.006/0.012, AFD 0.021/0.001, Free-AT
# 0.007/0.001, ATAS 0.006/0.012 in epochs 1/2); with 8 examples per rank they reach 0.1-0.75.
LOSS_ATOL, LOSS_RTOL = 0.03, 0.02
# Accuracies on the 12 test images: at most this many images may differ.
IMAGES_TOL = 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vaft", "afd", "free_at", "atas"])
def test_two_processes_match_one(tmp_path, method):
    from bench.train.loop import execute

    folder = write_tiny_folder(tmp_path / "tiny", n_train=192)
    cfg = tiny_run(method, f"folder:{folder}", epochs=2)
    cfg = cfg.__class__(**{**cfg.__dict__, "train": cfg.train.__class__(**{**cfg.train.__dict__, "batch_size": 64})})
    out = {}
    if cfg.parent is not None:  # one parent for both: only the child's processes differ
        import shutil

        from bench.core.config import run_id

        execute(cfg.parent, _rt(tmp_path / "r1", 1), log=lambda s: None)
        pid = run_id(cfg.parent)
        for sub in ("models", "runs"):
            (tmp_path / "r2" / sub).mkdir(parents=True)
            for p in (tmp_path / "r1" / sub).glob(f"{pid}.*"):
                shutil.copy(p, tmp_path / "r2" / sub / p.name)
    for k in (1, 2):
        out[k] = execute(cfg, _rt(tmp_path / f"r{k}", k), log=lambda s: None)
        assert out[k]["status"] == "done", out[k].get("reason")
    assert out[2]["run_id"] == out[1]["run_id"]  # the same run
    assert out[2]["processes"]["count"] == 2 and "per rank" in out[2]["processes"]["batchnorm"]
    for a, b in zip(out[1]["epochs"], out[2]["epochs"]):
        assert abs(b["loss"] - a["loss"]) <= LOSS_ATOL + LOSS_RTOL * abs(a["loss"]), (a, b)
    for m in ("clean", "pgd20"):
        assert abs(out[2]["metrics"][m] - out[1]["metrics"][m]) * 12 <= IMAGES_TOL + 1e-6, m


def _pids_of_ranks(parent: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat[3]) == parent and "spawn_main" in cmd:
            found.append(int(d.name))
    return sorted(found)


_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_run
from bench.core.runtime import Runtime
from bench.train.loop import execute

if __name__ == "__main__":
    cfg = tiny_run("vaft", "folder:{folder}", epochs=3)
    rt = Runtime(results=Path({root!r}), device="cpu", progress=False, threads=1, procs=2, cache_dir=Path({root!r}) / "cache")
    execute(cfg.parent, rt, log=print)
    res = execute(cfg, rt, log=print)
    print("STATUS", res["status"])
"""


@pytest.mark.slow
def test_a_killed_rank_resumes_to_the_same_result(tmp_path):
    folder = write_tiny_folder(tmp_path / "tiny", n_train=96)
    script = tmp_path / "run.py"
    results = {}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name, kill in (("straight", False), ("killed", True)):
        root = tmp_path / name
        script.write_text(_RUN.format(tests=str(REPO / "tests"), folder=folder, root=str(root)))
        if kill:
            proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=env)
            killed = False
            for line in proc.stdout:
                if "vaft epoch 1/3" in line and not killed:
                    ranks = _pids_of_ranks(proc.pid)
                    assert len(ranks) == 2, ranks
                    os.kill(ranks[-1], signal.SIGKILL)  # one rank dies mid-epoch 2
                    killed = True
            assert proc.wait(timeout=300) != 0 and killed
            ckpt = json.dumps(sorted(p.name for p in (root / "ckpt").rglob("*.pt")))
            assert "last.pt" in ckpt
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
        assert "STATUS done" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
        if kill:
            assert "resuming vaft at epoch 2/3" in done.stdout or "resuming vaft at epoch 3/3" in done.stdout
        (res_file,) = [p for p in (root / "runs").glob("*.json") if json.loads(p.read_text())["config"]["method"] == "vaft"]
        results[name] = json.loads(res_file.read_text())
    assert _strip(results["killed"]) == _strip(results["straight"])


@pytest.mark.slow
def test_a_run_resumes_on_another_number_of_processes(tmp_path):
    """Free-AT's carried perturbation is per position of the global batch: written by 2 ranks, merged at the
    epoch's end, checkpointed whole, and picked up by 1 process."""
    from bench.train.loop import execute

    folder = write_tiny_folder(tmp_path / "tiny", n_train=96)
    cfg = tiny_run("free_at", f"folder:{folder}", epochs=2)
    assert execute(cfg, _rt(tmp_path / "r", 2), log=lambda s: None, stop_after_epoch=1)["status"] == "interrupted"
    ckpt = torch.load(next((tmp_path / "r" / "ckpt").rglob("last.pt")), weights_only=True)
    delta = ckpt["method"]["delta"]
    assert ckpt["epoch"] == 1 and (delta[:4].abs().sum((1, 2, 3)) > 0).all() and (delta[4:].abs().sum((1, 2, 3)) > 0).all()
    msgs: list[str] = []
    res = execute(cfg, _rt(tmp_path / "r", 1), log=msgs.append)
    assert res["status"] == "done" and any("resuming free_at at epoch 2/2" in m for m in msgs)
    assert "processes" not in res  # the last part ran on one process


def _other_methods() -> list[str]:
    """Every registered method that may train on several processes (AFA declares it cannot: its refusal is
    tests/test_gpu_path.py's), less the four tested against one process above."""
    from methods import REGISTRY

    return sorted(m for m in set(REGISTRY) - {"vaft", "afd", "free_at", "atas"}
                  if REGISTRY[m].data_parallel_problem(REGISTRY[m].Hparams()) is None)


@pytest.mark.slow
@pytest.mark.parametrize("method", _other_methods())
def test_every_method_trains_on_two_processes(tmp_path, method):
    """Finishing is the check: every epoch the ranks' weights, EMA and method state are compared (a rank that
    branched differently fails the run), and the evaluation is gathered from both ranks' chunks."""
    from bench.train.loop import execute

    folder = write_tiny_folder(tmp_path / "tiny", n_train=48)
    cfg = tiny_run(method, f"folder:{folder}", epochs=2)
    rt = _rt(tmp_path / "r", 2)
    if cfg.parent is not None:
        if cfg.parent.parent is not None:
            execute(cfg.parent.parent, rt, log=lambda s: None)
        execute(cfg.parent, rt, log=lambda s: None)
    res = execute(cfg, rt, log=lambda s: None)
    assert res["status"] == "done", res.get("reason")
    assert res["processes"]["count"] == 2 and len(res["metrics"]["per_example"]["clean"]) == 12
