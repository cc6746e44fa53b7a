"""The CUDA path, as far as a CPU can show it: device binding under SLURM, worlds that cannot form, BatchNorm for
methods with a double backward, plain BatchNorm in the export, what methods refuse, the determinism policy, fp32
outside the training steps, the torch floor, peak memory, control messages that outlast the data group's
timeout. Tests that need a GPU are marked ``cuda`` and skip elsewhere (``pytest -m cuda`` on a GPU machine)."""
from __future__ import annotations

import dataclasses
import re
import threading
import time
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.core import determinism, distributed, numerics
from bench.core.config import ConfigError
from conftest import REPO, tiny_run

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# -- 1. it breaks --------------------------------------------------------------------------------------------
def test_a_rank_takes_its_gpu_modulo_the_visible_devices():
    # one GPU bound per task (--gpus-per-task, --gpu-bind): every task sees cuda:0 only
    assert distributed.cuda_device(distributed.World(3, 4, 3), count=1) == torch.device("cuda", 0)
    # all GPUs of the node visible: numbered by local rank
    assert distributed.cuda_device(distributed.World(3, 4, 3), count=4) == torch.device("cuda", 3)
    assert distributed.cuda_device(distributed.World(5, 8, 1), count=2) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="none is visible"):
        distributed.cuda_device(distributed.World(1, 2, 1), count=0)


def test_the_loop_binds_the_device_and_sets_it(monkeypatch):
    from bench.core.runtime import Runtime
    from bench.train import loop

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(Runtime, "torch_device", lambda self: torch.device(self.device))
    # one process, --device cuda:1: the current device becomes cuda:1 (no stray context on GPU 0)
    assert loop._device(Runtime(device="cuda:1"), distributed.SINGLE) == torch.device("cuda", 1)
    assert calls == [torch.device("cuda", 1)]
    # rank 1 of 2 on a node that shows each task one GPU: cuda:0, not the invalid cuda:1
    assert loop._device(Runtime(device="cuda"), distributed.World(1, 2, 1)) == torch.device("cuda", 0)


def test_the_world_is_the_steps_tasks_not_the_jobs():
    batch_script = {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    assert distributed.from_env(batch_script) == distributed.SINGLE  # was World(0, 4): waited forever
    srun_task = {**batch_script, "SLURM_PROCID": "2", "SLURM_LOCALID": "2", "SLURM_STEP_NUM_TASKS": "4"}
    assert distributed.from_env(srun_task) == distributed.World(2, 4, 2)
    with pytest.raises(ConfigError, match="start it with `srun`") as e:
        distributed.check_launch(4, batch_script)
    assert "\n" not in str(e.value)
    distributed.check_launch(1, batch_script)  # one process per run inside a multi-task job: fine
    distributed.check_launch(4, srun_task)
    distributed.check_launch(4, {})  # no SLURM: the processes are spawned here


def test_gradalign_keeps_per_rank_batchnorm_on_gpus():
    from methods import get_method

    fgsm_ga, vaft = get_method("fgsm_ga"), get_method("vaft")
    why = fgsm_ga.batchnorm_sync_problem(fgsm_ga.Hparams())
    assert "double backward" in why
    assert fgsm_ga.batchnorm_sync_problem(dataclasses.replace(fgsm_ga.Hparams(), grad_align_lambda=0.0)) is None
    assert vaft.batchnorm_sync_problem(vaft.Hparams()) is None
    from bench.models import build_model

    cuda_dev = torch.device("cuda")  # only its type is read: nothing runs on it
    model, note = distributed.sync_batchnorm(build_model("small_cnn", 10, 3), cuda_dev, refuse=why)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) and why in note
    model, note = distributed.sync_batchnorm(build_model("small_cnn", 10, 3), cuda_dev)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) and "SyncBatchNorm" in note


# -- 2. it drifts --------------------------------------------------------------------------------------------
def test_the_export_of_a_synced_model_is_plain_batchnorm_and_folds():
    from bench.eval.evaluator import fold_batchnorm
    from bench.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 3)
    x = torch.rand(8, 3, 32, 32)
    model.train()(x)  # running statistics that are not the defaults
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    plain = distributed.plain_batchnorm(synced).eval()
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules())
    assert sum(type(m) is nn.BatchNorm2d for m in plain.modules()) == 4
    ref = build_model("small_cnn", 10, 3)
    ref.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(x), ref.eval()(x))
    assert fold_batchnorm(plain) == 4  # every conv -> BatchNorm pair folds, as in a one-process run


def test_what_methods_refuse_is_one_line(tmp_path, capsys):
    from bench.cli import main
    from bench.train.validation import validate_run

    atas = tiny_run("atas", "digits")
    with pytest.raises(ConfigError, match="method atas does not support fp16"):
        validate_run(dataclasses.replace(atas, train=dataclasses.replace(atas.train, precision="fp16")))
    afa = tiny_run("afa", "digits")
    validate_run(afa)
    with pytest.raises(ConfigError, match="method afa cannot train one run on 2 processes"):
        validate_run(afa, procs=2)
    assert main(["run", "--grid", "afa", "--results", str(tmp_path), "--procs-per-run", "2", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot train one run on 2 processes" in err


def test_the_determinism_policy_sets_the_flags_and_is_recorded(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    try:
        determinism.apply("strict", torch.device("cpu"))  # on a CPU: recorded, no flag (the same bits anyway)
        assert determinism.state() == {"policy": "strict", "cudnn_deterministic": False,
                                       "deterministic_algorithms": False, "cublas_workspace_config": None}
        determinism.apply("strict", torch.device("cuda"))  # only its type is read: sets the flags a GPU needs
        s = determinism.state()
        assert s == {"policy": "strict", "cudnn_deterministic": True, "deterministic_algorithms": True,
                     "cublas_workspace_config": ":4096:8"}
        assert not determinism.cudnn_benchmark()
        with numerics.tf32_policy(torch.device("cuda"), "fp32", determinism.cudnn_benchmark()):
            assert torch.backends.cudnn.benchmark is False  # strict: no benchmarking in training either
        determinism.apply("fast", torch.device("cuda"))
        assert determinism.state()["cudnn_deterministic"] is False and determinism.cudnn_benchmark()
        with numerics.tf32_policy(torch.device("cuda"), "fp32", determinism.cudnn_benchmark()):
            assert torch.backends.cudnn.benchmark is True
        with pytest.raises(ConfigError, match="unknown determinism policy"):
            determinism.apply("sloppy")
    finally:
        determinism.apply("strict", torch.device("cpu"))
        torch.backends.cudnn.deterministic = before[0]
        torch.use_deterministic_algorithms(before[1], warn_only=True)


def test_fp32_runs_are_fp32_outside_the_steps_too(tmp_path, monkeypatch):
    """A method that reads the TF32 flags where PyTorch's default (cudnn.allow_tf32=True) would apply: epoch start
    (RiFT's module selection), finalize (RiFT's interpolation), export; and the result records the policy and
    the peak memory of training and evaluation."""
    from bench.core.config import run_id
    from bench.core.runtime import Runtime
    from bench.grid.runner import run_local
    from methods import REGISTRY, get_method, register

    seen = []

    class Probe(get_method("vaft")):
        name = "tf32_probe"

        def on_epoch_start(self, epoch):
            seen.append(("epoch_start", torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()))

        def finalize(self, net, evaluator):
            seen.append(("finalize", torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()))
            return {}

        def export(self, net):
            seen.append(("export", torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()))
            return super().export(net)

    register(Probe)
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
    try:
        cfg = tiny_run("tf32_probe", "digits", epochs=1, parent_epochs=1)
        res = run_local([cfg], Runtime(results=tmp_path, device="cpu", progress=False), log=lambda s: None)[run_id(cfg)]
    finally:
        REGISTRY.pop("tf32_probe")
    assert res["status"] == "done" and {w for w, *_ in seen} == {"epoch_start", "finalize", "export"}
    assert all(tf32 is False and mm == "highest" for _, tf32, mm in seen), seen
    assert torch.backends.cudnn.allow_tf32 is True  # restored after the run
    # on a CPU the strict policy is recorded but sets no flag (oneDNN is deterministic for a fixed thread count)
    assert res["determinism"]["policy"] == "strict" and res["determinism"]["deterministic_algorithms"] is False
    for phase in ("train", "eval"):
        assert res["peak_memory"][phase]["bytes"] > 10 * 2**20, res["peak_memory"]


# -- the torch floor --------------------------------------------------------------------------------------------
# Every torch API the code calls that is younger than torch 2.0, with the release that brought it and whether
# the call is guarded (a fallback for older torch). The declared floor must cover every unguarded one.
APIS = {
    "nn.Module.compile": ((2, 2), False),
    "torch.load(mmap=...)": ((2, 1), False),
    "torch.utils.flop_counter.FlopCounterMode": ((2, 1), False),
    "torch.optim.Optimizer.register_step_pre_hook": ((2, 0), False),
    "torch.amp.GradScaler(device)": ((2, 3), True),
    "torch.cuda.is_bf16_supported(including_emulation=)": ((2, 3), True),
    "torch._dynamo.config.recompile_limit": ((2, 7), True),
    "torch._functorch.config.donated_buffer": ((2, 5), True),
    "torch.backends.*.fp32_precision": ((2, 9), True),
}


def _declared_floor() -> tuple[int, int]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"torch\s*>=", d))
    major, minor = re.search(r">=\s*(\d+)\.(\d+)", spec).groups()
    return int(major), int(minor)


def test_the_declared_torch_floor_covers_every_unguarded_api():
    floor = _declared_floor()
    assert all(since <= floor for since, guarded in APIS.values() if not guarded), floor
    assert any(since == floor for since, guarded in APIS.values() if not guarded)  # the floor is not too high


def test_the_guarded_apis_fall_back_on_older_torch(monkeypatch):
    from types import SimpleNamespace

    from bench.core import compilation

    old = SimpleNamespace(cache_size_limit=8)  # torch < 2.7: no recompile_limit
    assert compilation.raise_recompile_limit(old) == "cache_size_limit" and old.cache_size_limit == 64
    new = SimpleNamespace(recompile_limit=8, cache_size_limit=8)
    assert compilation.raise_recompile_limit(new) == "recompile_limit" and new.recompile_limit == 64

    def old_is_bf16_supported():  # torch < 2.3: no including_emulation
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert numerics.cuda_native_bf16(torch.device("cuda")) is False  # a V100 emulates bf16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert numerics.cuda_native_bf16(torch.device("cuda")) is True

    monkeypatch.delattr(torch.amp, "GradScaler")  # torch < 2.3
    with pytest.raises(ConfigError, match="needs torch >= 2.3"):
        numerics.make_grad_scaler("fp16", torch.device("cpu"))
    assert numerics.make_grad_scaler("fp32", torch.device("cpu")) is None


def test_the_declared_python_floor_has_tomllib():
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires.replace(" ", "") == ">=3.11"  # tomllib (grid files, SLURM profiles) is new in 3.11


# -- 3. it crawls ---------------------------------------------------------------------------------------------
def test_rift_sums_its_losses_on_the_device_as_python_did():
    from methods.rift import _mean_ce

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x, y = torch.randn(37, 3, 2, 2), torch.randint(0, 5, (37,))
    old = sum(nn.functional.cross_entropy(model(x[i:i + 8]), y[i:i + 8], reduction="sum").item()
              for i in range(0, 37, 8)) / 37
    assert _mean_ce(model, x, y, 8) == old  # bit for bit: float64 in batch order


def test_legacy_sgd_and_ema_keep_their_arithmetic():
    """The multi-tensor (_foreach) forms give the per-parameter loops' numbers bit for bit."""
    from bench.train.ema import EMA
    from methods.afd import LegacySGD

    def loop_sgd(params, grads, state, lr, wd, mom):
        for p, g in zip(params, grads):
            g.add_(p, alpha=wd)
            buf = state.get(id(p))
            if buf is None:
                buf = state[id(p)] = g.clone()
            else:
                buf.mul_(mom).add_(g, alpha=1)
            p.add_(buf, alpha=-lr)

    torch.manual_seed(0)
    a = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    b = [t.detach().clone() for t in a]
    opt, state = LegacySGD(a, lr=0.1, momentum=0.9, weight_decay=5e-4), {}
    for k in range(3):
        grads = [torch.randn_like(t) for t in b]
        for t, g in zip(a, grads):
            t.grad = g.clone()
        opt.step()
        loop_sgd(b, [g.clone() for g in grads], state, 0.1, 5e-4, 0.9)
        for t, u in zip(a, b):
            assert torch.equal(t.detach(), u), k
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = EMA(net)
    ref = {k: v.clone() for k, v in ema.net.state_dict().items()}
    for t in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(6, 4))
        decay = min(0.999, (t + 1) / (t + 10))
        for k, v in net.state_dict().items():
            ref[k] = ref[k].mul_(decay).add_(v, alpha=1 - decay) if v.dtype.is_floating_point else v.clone()
        ema.update(net)
        for k, v in ema.net.state_dict().items():
            assert torch.equal(v, ref[k]), (t, k)


# -- control messages outlast the data group's timeout (gloo, 2 processes) -------------------------------------
@pytest.mark.slow
def test_ranks_wait_for_a_held_lock_longer_than_the_data_groups_timeout(tmp_path, monkeypatch):
    """Another runner holds the run's lock for longer than the process group's timeout (shortened to 4 s): rank 0
    waits for it, rank 1 waits for rank 0's decision on the gloo control group (whose timeout is days), and the
    run then trains. With the decision on the data group, rank 1 would time out."""
    from bench.core.config import run_id
    from bench.core.runtime import Runtime
    from bench.core.store import Store
    from bench.train.loop import execute

    monkeypatch.setenv("BENCH_DIST_TIMEOUT_S", "4")
    cfg = tiny_run("standard", "digits", epochs=1)
    rt = Runtime(results=tmp_path, device="cpu", progress=False, procs=2, threads=1)
    store = Store(tmp_path)
    held = threading.Event()

    def hold():
        with store.lock(run_id(cfg)):
            held.set()
            time.sleep(8)

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    t0 = time.monotonic()
    res = execute(cfg, rt, log=lambda s: None)
    t.join()
    assert res["status"] == "done" and time.monotonic() - t0 > 6, res.get("reason")


def _broadcast_worker(out: str) -> None:
    world = distributed.from_env()
    distributed.init(world, torch.device("cpu"))
    try:
        got = distributed.broadcast_object({"module": f"layer{world.rank}", "a": 0.1 * world.rank})
        seen = distributed.all_gather_objects(got)
        if world.main:
            torch.save(seen, out)
    finally:
        distributed.shutdown()


def _rift_worker(out: str) -> None:
    """Each rank's MRC is made to favour another module (a near-tie read differently): the module RiFT trains is
    rank 0's choice on every rank."""
    from bench.data import DatasetInfo, Split
    from bench.models import build_model
    from methods import Context, get_method, make_hparams, resolve_hparams

    world = distributed.from_env()
    distributed.init(world, torch.device("cpu"))
    torch.set_num_threads(1)
    try:
        rift = get_method("rift")
        rift.compute_mrc = lambda self, x, y: {n: float(i != world.rank) for i, n in enumerate(self.candidates)}
        g = torch.Generator().manual_seed(0)
        split = Split(torch.randint(0, 256, (40, 3, 16, 16), generator=g, dtype=torch.uint8), torch.arange(40) % 4)
        info = DatasetInfo(name="random", num_classes=4, channels=3, image_size=16, classes=tuple("abcd"))
        torch.manual_seed(0)
        parent = build_model("small_cnn", 4, 3).eval()
        model = build_model("small_cnn", 4, 3)
        model.load_state_dict(parent.state_dict())
        ctx = Context(info=info, eps=8 / 255, device=torch.device("cpu"), epochs=1, steps_per_epoch=5, seed=0,
                      train=split, parent_model=parent)
        hp = make_hparams("rift", resolve_hparams("rift", {"module_rule": "mrc", "attack_steps": 1}))
        method = rift(model, hp, ctx)
        method.on_epoch_start(0)
        seen = distributed.all_gather_objects((method.chosen, method.candidates[:2]))
        if world.main:
            torch.save(seen, out)
    finally:
        distributed.shutdown()


@pytest.mark.slow
def test_decisions_from_floats_are_taken_on_rank_0(tmp_path):
    """broadcast_object gives every rank rank 0's value, and RiFT's module choice goes through it: two ranks whose
    MRC favours different modules train rank 0's."""
    out = tmp_path / "seen.pt"
    distributed.spawn(_broadcast_worker, (str(out),), 2)
    assert torch.load(out) == [{"module": "layer0", "a": 0.0}] * 2
    distributed.spawn(_rift_worker, (str(out),), 2)
    (chosen0, cands), (chosen1, _) = torch.load(out)
    assert chosen0 == chosen1 == cands[0]  # rank 1's own MRC would have picked cands[1]


# -- on a GPU (pytest -m cuda) ---------------------------------------------------------------------------------
@cuda
@pytest.mark.cuda
def test_cuda_resume_is_bit_identical_under_the_strict_policy(tmp_path):
    from bench.core.runtime import Runtime
    from bench.train.loop import execute

    cfg = tiny_run("vaft", "digits", epochs=2, parent_epochs=1)
    whole = execute(cfg, Runtime(results=tmp_path / "a", device="cuda", progress=False), log=lambda s: None)
    rt = Runtime(results=tmp_path / "b", device="cuda", progress=False)
    execute(cfg, rt, log=lambda s: None, stop_after_epoch=1)
    resumed = execute(cfg, rt, log=lambda s: None)
    strip = ("seconds", "probe_seconds")
    assert [{k: v for k, v in e.items() if k not in strip} for e in whole["epochs"]] == \
        [{k: v for k, v in e.items() if k not in strip} for e in resumed["epochs"]]
    assert whole["metrics"]["clean"] == resumed["metrics"]["clean"]


@cuda
@pytest.mark.cuda
def test_cuda_native_bf16_matches_the_capability():
    dev = torch.device("cuda")
    assert numerics.cuda_native_bf16(dev) == (torch.cuda.get_device_capability(dev) >= (8, 0))


def test_peak_memory_is_shown_in_table_5s_notes_and_by_the_plan(tmp_path):
    from types import SimpleNamespace

    from bench.core.runtime import Runtime
    from bench.grid.plan import estimate
    from bench.grid.runner import run_local
    from bench.report.tables import peak_memory_note

    rows = [SimpleNamespace(peak_train_bytes=b * 2**20, peak_eval_bytes=2 * b * 2**20, peak_train_of="process peak RSS",
                            peak_eval_of="process peak RSS") for b in (100, 300, 200)]
    assert peak_memory_note(rows) == ("Peak memory, median per run: training 200 MiB (process peak RSS), evaluation "
                                      "400 MiB (process peak RSS).")
    assert peak_memory_note([SimpleNamespace(peak_train_bytes=float("nan"), peak_eval_bytes=float("nan"))]) is None
    # a result written before peaks were recorded (its row: NaN, not a name) beside one that records them
    old = SimpleNamespace(peak_train_bytes=float("nan"), peak_eval_bytes=float("nan"), peak_train_of=float("nan"),
                          peak_eval_of=float("nan"))
    assert peak_memory_note([old, rows[0]]) == ("Peak memory, median per run: training 100 MiB (process peak RSS), "
                                                "evaluation 200 MiB (process peak RSS).")
    cfg = tiny_run("standard", "digits", epochs=1)
    run_local([cfg], Runtime(results=tmp_path, device="cpu", progress=False), log=lambda s: None)
    (cost,) = estimate([cfg], tmp_path)
    assert "measured" in cost.source and " MiB" in cost.source.split("peak ")[1]
