"""`bench doctor`: what this machine is to afd-bench, and, with ``--check``, whether the suite's promises hold on it.

Without ``--check`` it prints the versions (torch, CUDA, cuDNN, NCCL), the devices and the precisions each runs
natively, the determinism policy, and the data roots it can see. With ``--check`` it runs, on the chosen device
(CUDA when present), each check below and prints one line per check: ``ok``, or ``FAIL`` with what differed.
Any failure makes the exit code 1.

1. every registered method's training step, two steps in fp32 and two in bf16 (small CNN, synthetic images):
   finite losses;
2. a two-epoch tiny run resumed after epoch 1 equals the uninterrupted run: every per-epoch loss and every
   per-example evaluation flag (bit for bit under the strict determinism policy);
3. two evaluations of one model are equal (per-example flags and the feature gap);
4. on a GPU, one model evaluated on the CPU and on the GPU: the per-example flags that differ are counted
   (reported; differences are float-order flips, not failures, unless they exceed 1% of the images);
5. export after a SyncBatchNorm conversion: plain BatchNorm again, every conv -> BatchNorm pair folds, and the
   outputs match the model that was never converted;
6. a short ``bench speed`` of vAFT and AFD on ResNet18 (AFD Table 5's pair): images/s, the step ratio and the
   share of the matmul peak measured in the same run.

On a CPU the same checks run on the CPU (CI runs them); sizes are chosen to finish in a few minutes on two
cores and in well under five on one GPU.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench.core import determinism, distributed, numerics
from bench.core.cpu import cpu_info, cpu_native, describe_cpu
from bench.core.config import EvalConfig, RunConfig
from bench.core.runtime import Runtime, resolve_device
from bench.data import DATASETS, Loader, default_data_root
from bench.eval.evaluator import Evaluator, fold_batchnorm
from bench.grid.grids import TABLE5_STEP_PAIR
from bench.grid.runs import make_run
from bench.models.architectures import build_model
from bench.perf import speed
from bench.train.loop import execute
from methods import REGISTRY, parent_method

STEP_PRECISIONS = ("fp32", "bf16")
FLIP_SHARE_OK = 0.01  # CPU vs GPU: more flipped flags than this share of the images is a failure


def _versions() -> list[str]:
    out = [f"python {platform.python_version()}, torch {torch.__version__}"]
    if torch.cuda.is_available():
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "none"
        out.append(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}")
    else:
        out.append(f"CUDA: not available (torch built for CUDA {torch.version.cuda or 'none'})")
    return out


def _devices() -> list[str]:
    cpu = cpu_info()
    native = [p for p in ("bf16", "fp16") if cpu_native(p)]
    out = [f"cpu: {describe_cpu(cpu)}; {os.cpu_count()} cores; native: fp32"
           + "".join(f", {p}" for p in native)]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        dev = torch.device("cuda", i)
        props = torch.cuda.get_device_properties(dev)
        native = [p for p in ("tf32", "bf16") if numerics.native(p, dev)]
        out.append(f"cuda:{i}: {props.name}, compute capability {props.major}.{props.minor}, "
                   f"{props.total_memory / 2**30:.0f} GiB; native: fp32, fp16" + "".join(f", {p}" for p in native))
    return out


def _data_roots() -> list[str]:
    root = default_data_root()
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.tar.gz"
    lines = [f"data root: {root} ({'exists' if root.is_dir() else 'missing'}; set by --data-root or "
             f"$BENCH_DATA_ROOT)"]
    if root.is_dir():
        lines.append("  contains: " + (", ".join(sorted(p.name for p in root.iterdir())) or "nothing"))
    lines.append(f"cifar10-jpeg archive beside the checkout: {'found' if shared.is_file() else 'not found'}")
    lines.append("data sets: " + ", ".join(DATASETS) + " (digits is embedded: always available)")
    return lines


def info(policy: str) -> str:
    """The machine and the settings in force, as text."""
    determinism.apply(policy)
    s = determinism.state()
    lines = _versions() + _devices() + [
        f"determinism: {s['policy']} (cudnn.deterministic {s['cudnn_deterministic']}, deterministic algorithms "
        f"{s['deterministic_algorithms']}, CUBLAS_WORKSPACE_CONFIG {s['cublas_workspace_config']})"] + _data_roots()
    return "\n".join(lines) + "\n"


# -- the checks ------------------------------------------------------------------------------------------------
class CheckFailed(Exception):
    pass


def check_method_steps(device: torch.device) -> str:
    split = speed.synthetic_split(64, 0)
    bad = []
    for precision in STEP_PRECISIONS:
        for name in sorted(REGISTRY):
            method, ema = speed.build_timed_method(name, "small_cnn", split, 8, precision, device,
                                              torch.channels_last, 8, 0)
            loader = Loader(split, 8, device=device, shuffle=True, augment=True, seed=0, drop_last=True)
            runner = speed.StepRunner(name, method, ema, speed.cycle_loader(loader), precision, device)
            for _ in range(2):
                runner.step(runner.next_batch())
            losses = {k: float(v) for k, v in runner.sums.items()}
            if not all(v == v and abs(v) != float("inf") for v in losses.values()):
                bad.append(f"{name} {precision}: {losses}")
    if bad:
        raise CheckFailed("non-finite step outputs: " + "; ".join(bad))
    return f"{len(REGISTRY)} methods x {'/'.join(STEP_PRECISIONS)}, 2 steps each: finite"


def _tiny(epochs: int) -> RunConfig:
    ev = EvalConfig(n_clean=100, n_pgd=100, n_aa=0, pgd_steps=5, batch_size=100, n_gap=100,
                    feature_gap_every_epoch=True)
    # natural pre-training (whichever registered method produces natural parents): no parent of its own
    return make_run(parent_method("natural"), model="small_cnn", dataset="digits", epochs=epochs, eval=ev, n_train=256,
                    batch_size=32)


def _strip(res: dict) -> tuple:
    epochs = [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in res["epochs"]]
    return epochs, res["metrics"]["per_example"], res["metrics"].get("feature_gap")


def check_resume(device: torch.device, policy: str, work: Path) -> str:
    cfg = _tiny(2)
    rt = dict(device=str(device), progress=False, determinism=policy)
    whole = execute(cfg, Runtime(results=work / "whole", **rt), log=lambda s: None)
    cut = Runtime(results=work / "cut", **rt)
    execute(cfg, cut, log=lambda s: None, stop_after_epoch=1)
    resumed = execute(cfg, cut, log=lambda s: None)
    if _strip(whole) != _strip(resumed):
        a, b = _strip(whole), _strip(resumed)
        what = "per-epoch log" if a[0] != b[0] else "per-example flags" if a[1] != b[1] else "feature gap"
        raise CheckFailed(f"a run resumed after epoch 1 differs from the uninterrupted run in its {what}")
    return "a 2-epoch run resumed after epoch 1 equals the uninterrupted run (losses, flags, gap)"


def _model_and_test(device: torch.device, work: Path) -> tuple[nn.Module, object]:
    """The resumed run's exported model and the digits test split (trained by check_resume, else here)."""
    from bench.core.config import run_id
    from bench.data import load_dataset

    cfg = _tiny(2)
    path = work / "whole" / "models" / f"{run_id(cfg)}.pt"
    if not path.exists():
        execute(cfg, Runtime(results=work / "whole", device=str(device), progress=False), log=lambda s: None)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model("small_cnn", 10, 1)
    model.load_state_dict(blob["state_dict"])
    _, test, _ = load_dataset("digits", None, None)
    return model.eval(), test


def check_evaluations_equal(device: torch.device, work: Path) -> str:
    model, test = _model_and_test(device, work)
    cfg = EvalConfig(n_clean=200, n_pgd=200, n_aa=20, pgd_steps=10, batch_size=100, n_gap=200)
    runs = [Evaluator(test, cfg, 8 / 255, device, seed=0).run(model) for _ in range(2)]
    for key in ("clean", "pgd20", "aa"):
        if runs[0]["per_example"][key] != runs[1]["per_example"][key]:
            raise CheckFailed(f"two evaluations of one model disagree on {key}")
    if runs[0]["feature_gap"] != runs[1]["feature_gap"]:
        raise CheckFailed(f"two evaluations' feature gaps differ: {runs[0]['feature_gap']} vs {runs[1]['feature_gap']}")
    return "two evaluations (200 clean / PGD-20, 20 AutoAttack) give the same flags and gap"


def check_cpu_vs_gpu(device: torch.device, work: Path) -> str:
    if device.type != "cuda":
        return "skipped: no GPU (the CPU is the device)"
    model, test = _model_and_test(device, work)
    cfg = EvalConfig(n_clean=300, n_pgd=300, n_aa=0, pgd_steps=20, batch_size=100, n_gap=300)
    on = {d: Evaluator(test, cfg, 8 / 255, torch.device(d), seed=0).run(model) for d in ("cpu", str(device))}
    flips = {k: sum(a != b for a, b in zip(on["cpu"]["per_example"][k], on[str(device)]["per_example"][k]))
             for k in ("clean", "pgd20")}
    line = f"CPU vs {device}: {flips['clean']} clean and {flips['pgd20']} PGD-20 flags of 300 differ"
    if max(flips.values()) > FLIP_SHARE_OK * 300:
        raise CheckFailed(line)
    return line


def check_sync_export(device: torch.device) -> str:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 3).to(device)
    x = torch.rand(16, 3, 32, 32, device=device)
    model.train()(x)
    ref = build_model("small_cnn", 10, 3).to(device)
    ref.load_state_dict(model.state_dict())
    plain = distributed.plain_batchnorm(nn.SyncBatchNorm.convert_sync_batchnorm(model)).eval()
    if any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules()):
        raise CheckFailed("a SyncBatchNorm survived the export")
    folded = fold_batchnorm(plain)
    with torch.no_grad(), numerics.exact_fp32():
        diff = float((plain(x) - ref.eval()(x)).abs().max())
    if folded != 4 or diff > 1e-4:
        raise CheckFailed(f"export after SyncBatchNorm: {folded} of 4 pairs folded, outputs {diff:.2e} apart")
    return f"export after SyncBatchNorm: plain BatchNorm, 4 of 4 pairs folded, outputs {diff:.1e} apart"


def check_speed(device: torch.device) -> str:
    gpu = device.type == "cuda"
    rep = speed.measure(model="resnet18", methods=list(TABLE5_STEP_PAIR), precision="fp32",
                        batch_size=128 if gpu else 8, steps=10 if gpu else 1, warmup=3 if gpu else 1,
                        device=str(device), matmul_size=8192 if gpu else 512)
    rows = ", ".join(f"{r['method']} {r['images_per_s']:.0f} img/s ({100 * r['mfu']:.0f}% of peak)"
                     for r in rep["methods"])
    ratio = ", ".join(f"{k}/{rep['reference']} x{v:.2f}" for k, v in rep["step_ratios"].items())
    return f"ResNet18 fp32 batch {rep['batch_size']}: {rows}; step {ratio}; matmul peak " \
           f"{rep['peak_flops_per_s'] / 1e12:.2f} TFLOP/s"


def run_checks(device_name: str, policy: str, log: Callable[[str], None] = print) -> int:
    """Every check, one line each; the number of failures."""
    device = resolve_device(device_name)
    determinism.apply(policy, device)
    what = describe_cpu() if device.type == "cpu" else torch.cuda.get_device_name(device)
    log(f"bench doctor --check on {device} ({what}), determinism {policy}")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bench-doctor-") as tmp:
        work = Path(tmp)
        checks = [("method steps", lambda: check_method_steps(device)),
                  ("resume", lambda: check_resume(device, policy, work)),
                  ("evaluation", lambda: check_evaluations_equal(device, work)),
                  ("cpu vs gpu", lambda: check_cpu_vs_gpu(device, work)),
                  ("sync export", lambda: check_sync_export(device)),
                  ("speed", lambda: check_speed(device))]
        for name, fn in checks:
            t0 = time.perf_counter()
            try:
                line = f"ok    {name}: {fn()}"
            except CheckFailed as e:
                failures += 1
                line = f"FAIL  {name}: {e}"
            except Exception as e:  # noqa: BLE001 - a check that crashes is a failure, said in one line
                failures += 1
                first = str(e).splitlines()[0][:200] if str(e) else ""
                line = f"FAIL  {name}: {type(e).__name__}: {first}"
            log(f"{line} ({time.perf_counter() - t0:.0f} s)")
    log(f"{failures} check(s) failed" if failures else "all checks passed")
    return failures

