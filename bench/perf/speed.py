"""`bench speed`: how fast each method's FULL training step runs here, and where the time goes.

For each method the real ``Method`` class is built as ``bench.train.loop`` builds it (a fresh model as the parent of
fine-tuning methods: speed does not depend on the weights; the model in channels_last; the method's recipe for the
optimizer and EMA) and its ``train_step`` is timed with everything the loop does around it: the batch from the
suite's ``Loader`` (uint8 split on the device, crop/flip as batched tensor ops), the step at the chosen precision
exactly as the loop runs it (``bench.train.precision.make_step``: true fp32, TF32 on CUDA, bf16 autocast, fp16 autocast
with the gradient scaler; the training attack runs inside ``train_step``, so it is under autocast too), the EMA
update and the on-device metric sums. The precision defaults to the fastest one the device runs natively (bf16
with AMX, AVX512-BF16 or a bf16 GPU, else fp32); ``compile`` compiles each method's model first
(``bench.core.compilation.compile_model``; FLOPs are counted on the eager model, the compile happens in the warm-up).
The report names the CPU and its ISA flags (``cpu``), so every table made from it can say what it was measured on.
Reported per method:

* ``images_per_s``: batch size / median step time (batch production included), over ``steps`` timed steps after
  ``warmup`` untimed ones; ``epoch_s``: the projected seconds for one CIFAR-10 epoch (50,000 images);
* ``batch_share``: the median time spent producing a batch (timed on its own, synchronising on CUDA) over the
  median step time;
* ``flops_per_step`` (``torch.utils.flop_counter.FlopCounterMode`` over one full step: attack, forward, backward),
  the achieved ``flops_per_s`` and ``mfu``, its fraction of ``peak_flops_per_s``: the best of a few large matmuls in
  the step's precision, measured in the same run (before and after the steps);
* with ``--baseline``: the same method's step fed by torchvision's DataLoader with PIL transforms
  (RandomCrop(32, 4), RandomHorizontalFlip, ToTensor), fp32, NCHW, as the papers' public code trains, and the
  ``speedup`` of the suite's step over it.

All timed steps, baselines included, are interleaved round-robin, so a machine shared with other jobs slows them
alike and the ratios (each method against the first, e.g. AFD / vAFT; suite / baseline) stay meaningful even when absolute numbers are not. The
baseline's DataLoader workers (``baseline_workers``, 2 by default as in the public code) keep prefetching during the
other contenders' steps: its batches then cost its own step little while its workers' CPU time slows everyone
else, so the reported speedup over the baseline errs on the baseline's side.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from bench.core import determinism, numerics
from bench.core.cpu import cpu_info, describe_cpu
from bench.core.config import EPS_8, PRECISIONS, ConfigError, check_batch, machine_memory
from bench.core.runtime import resolve_device, set_threads
from bench.data import Batch, DatasetInfo, Loader, Split
from bench.models.architectures import MODELS, build_model
from bench.train.ema import EMA
from bench.train.compiling import compile_unless_declared
from bench.train.precision import make_step
from bench.train.validation import check_method_precision
from methods import Context, StepInfo, build_method, get_method, make_hparams, resolve_hparams

CIFAR10_TRAIN = 50_000
IMAGE_SIZE = 32
NUM_CLASSES = 10
# Timed and warm-up steps per method together: the default is 12, a careful measurement a few hundred; more is a
# typo that would keep the machine busy for hours.
MAX_STEPS = 10_000


@dataclass
class StepRunner:
    """One method, ready to step: the suite's way (Loader + channels_last + precision) or the baseline's."""

    name: str
    method: Any
    ema: EMA | None
    next_batch: Callable[[], Batch]
    precision: str
    device: torch.device
    step_no: int = 0
    sums: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # as the loop runs it, under the determinism policy in force (cuDNN benchmarks only under "fast")
        self._step = make_step(self.method, self.precision, self.device, benchmark=determinism.cudnn_benchmark())

    def step(self, batch: Batch) -> None:
        out = self._step(batch, StepInfo(epoch=0, step=self.step_no, global_step=self.step_no))
        n = batch.y.shape[0]
        for k, v in out.items():  # as the loop does: summed on the device, no host synchronisation
            v = v.detach().float() * n
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        if self.ema is not None:
            self.ema.update(self.method.net)
        self.step_no += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return Split(images, labels)


def build_timed_method(name: str, model_name: str, split: Split, batch_size: int, precision: str,
                       device: torch.device, memory_format: torch.memory_format, steps_per_epoch: int, seed: int):
    cls = get_method(name)
    hp = make_hparams(name, resolve_hparams(name))
    train_cfg = replace(cls.recipe, batch_size=batch_size, precision=precision)
    info = DatasetInfo("synthetic", NUM_CLASSES, 3, IMAGE_SIZE, tuple(str(i) for i in range(NUM_CLASSES)))
    torch.manual_seed(seed)
    model = build_model(model_name, NUM_CLASSES, 3)
    parent = None
    if cls.parent is not None:  # a fresh model of the same architecture: speed does not depend on the weights
        parent = build_model(model_name, NUM_CLASSES, 3)
        parent.load_state_dict(model.state_dict())
        parent = parent.to(device).eval()
    model = model.to(device).to(memory_format=memory_format)
    ctx = Context(info=info, eps=EPS_8, device=device, epochs=train_cfg.epochs, steps_per_epoch=steps_per_epoch,
                  seed=seed, train=split, parent_model=parent, train_cfg=train_cfg)
    method = build_method(cls, model, hp, ctx, train_cfg, device)
    for opt in method.optimizers:
        for group in opt.param_groups:
            group["lr"] = train_cfg.lr * group.get("lr_scale", 1.0)
    method.net.train()
    method.on_epoch_start(0)
    ema = EMA(method.net) if train_cfg.ema else None
    return method, ema


def cycle_loader(loader: Loader) -> Callable[[], Batch]:
    state = {"epoch": 0, "it": loader.epoch(0)}

    def next_batch() -> Batch:
        try:
            return next(state["it"])
        except StopIteration:
            state["epoch"] += 1
            state["it"] = loader.epoch(state["epoch"])
            return next(state["it"])

    return next_batch


class _PILDataset(torch.utils.data.Dataset):
    """CIFAR-10 as torchvision serves it: an HWC uint8 array, one PIL image per item, then the transforms."""

    def __init__(self, split: Split):
        from torchvision import transforms

        self.data = split.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = split.labels.tolist()
        self.transform = transforms.Compose([transforms.RandomCrop(IMAGE_SIZE, padding=4),
                                             transforms.RandomHorizontalFlip(), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def _cycle_dataloader(split: Split, batch_size: int, workers: int, device: torch.device) -> Callable[[], Batch]:
    dl = torch.utils.data.DataLoader(_PILDataset(split), batch_size=batch_size, shuffle=True, drop_last=True,
                                     num_workers=workers, pin_memory=device.type == "cuda",
                                     persistent_workers=workers > 0)
    state = {"it": iter(dl)}

    def next_batch() -> Batch:
        try:
            x, y = next(state["it"])
        except StopIteration:
            state["it"] = iter(dl)
            x, y = next(state["it"])
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return Batch(x=x, y=y, idx=torch.arange(len(y), device=device), dx=None, dy=None, flip=None)

    return next_batch


def peak_matmul_flops(device: torch.device, precision: str, size: int, reps: int = 3) -> float:
    """FLOP/s of the best of ``reps`` (size x size) @ (size x size) products in the step's precision (its dtype
    and TF32 policy)."""
    dtype = numerics.AUTOCAST_DTYPES.get(precision, torch.float32)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = math.inf
    with numerics.tf32_policy(device, precision, determinism.cudnn_benchmark()):
        a @ b  # warm-up
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def count_step_flops(runner: StepRunner) -> int:
    """Model FLOPs of one full step (attack + forward + backward), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    class _GlobalOnly:  # FlopCounterMode's per-module tracker hooks the backward, which breaks torch.autograd.grad
        parents = ("Global",)  # on a leaf (the attacks' input gradient); only the total is needed

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    batch = runner.next_batch()
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        runner.step(batch)
    return int(counter.get_total_flops())


def _timed_step(runner: StepRunner, device: torch.device) -> tuple[float, float]:
    """(seconds to produce the batch, seconds for the whole step including it)."""
    _sync(device)
    t0 = time.perf_counter()
    batch = runner.next_batch()
    _sync(device)
    t1 = time.perf_counter()
    runner.step(batch)
    _sync(device)
    return t1 - t0, time.perf_counter() - t0


def measure(model: str = "small_cnn", methods: Sequence[str] = (), precision: str | None = None,
            baseline: bool = False, batch_size: int = 128, steps: int = 10, warmup: int = 2, device: str = "auto",
            threads: int | None = None, matmul_size: int | None = None, baseline_workers: int = 2,
            seed: int = 0, compile: bool = False, log: Callable[[str], None] = lambda s: None) -> dict:
    """Measure every method side by side; return the JSON-able report (see the module docstring). ``precision``
    None: the fastest the device runs natively (``bench.core.numerics.fastest_native``)."""
    methods = _checked(model, methods, precision, steps, warmup, batch_size)
    _check_sizes(batch_size, steps, warmup, matmul_size, baseline_workers)
    dev = resolve_device(device)
    precision = precision or numerics.fastest_native(dev)
    warmup = max(warmup, 1) if compile else warmup  # the first step compiles: never timed
    for m in methods:  # fp16: only methods whose update goes through the gradient scaler
        check_method_precision(get_method(m), make_hparams(m, resolve_hparams(m)), precision)
    numerics.warn_if_slow(precision, dev)
    set_threads(threads)
    # Enough images that an epoch outlasts the measurement (the Loader's per-epoch set-up is amortised as in a
    # real epoch); 10,000 like the cpu grid's subset, more if the run is long.
    n_images = max(10_000, batch_size * (steps + warmup + 2))
    split = synthetic_split(n_images, seed)
    steps_per_epoch = math.ceil(CIFAR10_TRAIN / batch_size)

    runners, baselines = _runners(methods, model, split, batch_size, precision, dev, steps_per_epoch, seed,
                                  baseline, baseline_workers)
    size = matmul_size or (8192 if dev.type == "cuda" else 2048)
    peak_before = peak_matmul_flops(dev, precision, size)
    log(f"counting FLOPs and warming up ({warmup} steps per method{', compiling' if compile else ''})")
    flops = {r.name: count_step_flops(r) for r in runners}  # on the eager model: compiled kernels are not counted
    compiled = _compile(runners, compile, log)
    times, base_times = _time_steps(runners, baselines, warmup, steps, dev, log)
    del baselines

    # Before and after the steps, the best kept: on a shared machine one measurement can land in a busy moment.
    peak = max(peak_before, peak_matmul_flops(dev, precision, size))
    rows = [_row(r.name, times[r.name], base_times.get(r.name), batch_size, compiled[r.name], flops[r.name], peak)
            for r in runners]
    by = {row["method"]: row for row in rows}
    # each method's step time relative to the first one listed (`bench speed`'s default: AFD / vAFT, Table 5)
    ref = rows[0]["method"] if rows else None
    ratios = {name: row["step_s"] / by[ref]["step_s"] for name, row in by.items() if name != ref}
    return _report(model, precision, compile, batch_size, steps, warmup, n_images, dev, baseline, baseline_workers,
                   peak, ref, ratios, rows)


def _runners(methods: Sequence[str], model: str, split: Split, batch_size: int, precision: str, dev: torch.device,
             steps_per_epoch: int, seed: int, baseline: bool, baseline_workers: int
             ) -> tuple[list[StepRunner], list[StepRunner]]:
    """One step runner per method on the device-side loader, and (``baseline``) one per method in plain fp32,
    NCHW, on a torch DataLoader with ``baseline_workers`` workers."""
    runners: list[StepRunner] = []
    for name in methods:
        loader = Loader(split, batch_size, device=dev, shuffle=True, augment=True, seed=seed, drop_last=True)
        method, ema = build_timed_method(name, model, split, batch_size, precision, dev, torch.channels_last,
                                         steps_per_epoch, seed)
        runners.append(StepRunner(name, method, ema, cycle_loader(loader), precision, dev))
    baselines: list[StepRunner] = []
    if baseline:
        for name in methods:
            method, ema = build_timed_method(name, model, split, batch_size, "fp32", dev, torch.contiguous_format,
                                             steps_per_epoch, seed)
            baselines.append(StepRunner(name, method, ema, _cycle_dataloader(split, batch_size, baseline_workers, dev),
                                        "fp32", dev))
    return runners, baselines


def _report(model: str, precision: str, compile: bool, batch_size: int, steps: int, warmup: int, n_images: int,
            dev: torch.device, baseline: bool, baseline_workers: int, peak: float, ref: str | None,
            ratios: dict, rows: list[dict]) -> dict:
    """The JSON-able report: the settings, where it ran, and the rows."""
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover - not on every OS
        load = None
    cpu = cpu_info()
    return {
        "model": model, "precision": precision, "precision_effective": numerics.effective_precision(precision, dev),
        "precision_native": numerics.native(precision, dev), "compile": compile,
        "batch_size": batch_size, "steps": steps, "warmup": warmup,
        "image_size": IMAGE_SIZE, "data": f"synthetic uint8, {n_images} images", "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu["name"], "cpu": cpu,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "loadavg": load,
        "baseline": baseline, "baseline_workers": baseline_workers if baseline else None,
        "peak_flops_per_s": peak, "reference": ref, "step_ratios": ratios, "methods": rows,
    }


def _checked(model: str, methods: Sequence[str], precision: str | None, steps: int, warmup: int,
             batch_size: int) -> list[str]:
    """The arguments' own checks (ConfigError in one line); the methods without repeats."""
    if model not in MODELS:
        raise ConfigError(f"unknown model '{model}'; known: {', '.join(MODELS)}")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; known: {', '.join(PRECISIONS)}")
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ConfigError(f"need steps >= 1, warmup >= 0, batch size >= 1 (got {steps}, {warmup}, {batch_size})")
    methods = list(dict.fromkeys(methods))
    for m in methods:
        get_method(m)  # unknown names fail here, with the list of known ones
    return methods


def _check_sizes(batch_size: int, steps: int, warmup: int, matmul_size: int | None, baseline_workers: int) -> None:
    """What a typo makes too long or too big for the machine, refused with what fits before anything is made."""
    if steps + warmup > MAX_STEPS:
        raise ConfigError(f"--steps + --warmup must be <= {MAX_STEPS} (got {steps} + {warmup})")
    check_batch("--batch-size", batch_size)
    check_batch("--batch-size x (--steps + --warmup + 2)", batch_size * (steps + warmup + 2), 3 * IMAGE_SIZE ** 2)
    mem = machine_memory()
    if matmul_size is not None and (matmul_size < 1 or (mem and 3 * 4 * matmul_size ** 2 > mem)):
        most = math.isqrt(mem // 12) if mem else None
        raise ConfigError(f"--matmul-size must be in [1, {most}] on this machine (got {matmul_size}): three "
                          "square fp32 matrices of that side")
    most = 8 * (os.cpu_count() or 1)
    if not 0 <= baseline_workers <= most:
        raise ConfigError(f"--baseline-workers must be in [0, {most}] (8 per CPU core; got {baseline_workers})")


def _compile(runners: list[StepRunner], compile: bool, log: Callable[[str], None]) -> dict[str, bool]:
    """Each method's model compiled, when asked and the method declares no problem; whether it was, by name.
    The suite's steps only: the baseline is the public code's eager fp32 setup."""
    compiled = {}
    for r in runners:
        why = compile_unless_declared(r.method) if compile else "not asked"
        compiled[r.name] = why is None
        if why is not None and compile:
            log(f"{r.name}: not compiled: {why}")
    return compiled


def _time_steps(runners: list[StepRunner], baselines: list[StepRunner], warmup: int, steps: int, dev: torch.device,
                log: Callable[[str], None]) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[float]]]:
    """The warm-up, then ``steps`` timed steps of every contender: (batch, step) seconds of each method's step,
    step seconds of each baseline's."""
    for _ in range(warmup):
        for r in runners + baselines:
            _timed_step(r, dev)
    times: dict[str, list[tuple[float, float]]] = {r.name: [] for r in runners}
    base_times: dict[str, list[float]] = {r.name: [] for r in baselines}
    for i in range(steps):
        # Round-robin, baselines included: whatever else runs on the machine slows every contender alike.
        for r in runners:
            times[r.name].append(_timed_step(r, dev))
        for r in baselines:
            base_times[r.name].append(_timed_step(r, dev)[1])
        log(f"step {i + 1}/{steps}: " + ", ".join(f"{n} {t[-1][1]:.3f}s" for n, t in times.items())
            + "".join(f", baseline {n} {t[-1]:.3f}s" for n, t in base_times.items()))
    return times, base_times


def _row(name: str, times: list[tuple[float, float]], base_times: list[float] | None, batch_size: int,
         compiled: bool, flops: float, peak: float) -> dict:
    """One method's row of the report: medians of its timed steps, throughput, MFU, and its baseline's."""
    step_s = statistics.median(t for _, t in times)
    batch_s = statistics.median(b for b, _ in times)
    row = {
        "method": name, "step_s": step_s, "step_s_min": min(t for _, t in times),
        "step_s_all": [t for _, t in times], "images_per_s": batch_size / step_s,
        "epoch_s": CIFAR10_TRAIN / (batch_size / step_s), "batch_s": batch_s, "batch_share": batch_s / step_s,
        "compiled": compiled, "flops_per_step": flops, "flops_per_s": flops / step_s,
        "mfu": flops / step_s / peak,
        "baseline_step_s": None, "baseline_images_per_s": None, "baseline_epoch_s": None, "speedup": None,
    }
    if base_times is not None:
        b = statistics.median(base_times)
        row.update(baseline_step_s=b, baseline_images_per_s=batch_size / b,
                   baseline_epoch_s=CIFAR10_TRAIN / (batch_size / b), speedup=b / step_s)
    return row


def _fmt_flops(v: float) -> str:
    return f"{v / 1e12:.2f}T" if v >= 1e12 else f"{v / 1e9:.1f}G"


def render(rep: dict) -> str:
    precision = rep["precision"] + ("" if rep["precision_effective"] == rep["precision"]
                                    else f" (= {rep['precision_effective']} here)")
    precision += "" if rep["precision_native"] else " NOT NATIVE here"
    device = rep["device_name"] if rep["device"] != "cpu" else describe_cpu(rep["cpu"])
    head = (f"bench speed: {rep['model']}, {precision}{', compiled' if rep['compile'] else ''}, batch "
            f"{rep['batch_size']}, {rep['steps']} steps after {rep['warmup']} warm-up, {rep['device']}: {device}, "
            f"{rep['threads']} threads, peak matmul {_fmt_flops(rep['peak_flops_per_s'])}FLOP/s"
            + (f", load average {rep['loadavg'][0]:.1f}" if rep.get("loadavg") else ""))
    cols = ["method", "img/s", "step s", "s/epoch", "batch %", "GFLOP/step", "FLOP/s", "of peak"]
    if rep["baseline"]:
        cols += ["baseline img/s", "baseline s/epoch", "speedup"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rep["methods"]:
        name = r["method"] + (" (eager)" if rep["compile"] and not r["compiled"] else "")
        cells = [name, f"{r['images_per_s']:.1f}", f"{r['step_s']:.3f}", f"{r['epoch_s']:.0f}",
                 f"{100 * r['batch_share']:.2f}", f"{r['flops_per_step'] / 1e9:.1f}", _fmt_flops(r["flops_per_s"]),
                 f"{100 * r['mfu']:.1f}%"]
        if rep["baseline"]:
            cells += [f"{r['baseline_images_per_s']:.1f}", f"{r['baseline_epoch_s']:.0f}", f"x{r['speedup']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if rep["step_ratios"]:
        lines += [""] + [f"{name} step / {rep['reference']} step: {r:.3f}" for name, r in rep["step_ratios"].items()]
    return "\n".join(lines) + "\n"


def to_json(rep: dict) -> str:
    return json.dumps(rep, indent=2)
