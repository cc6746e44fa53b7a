"""`bench plan`: what a grid will cost before anything is submitted.

Training cost of a run = epochs x seconds per epoch. Seconds per epoch come, in order of preference, from

1. measured throughput: the median ``seconds_per_epoch`` of finished results of the same method, model, data
   set and batch size in the results folder (on whatever device they ran: the column says so);
2. declared throughput: the method's ``plan_seconds_per_epoch`` (AFD Table 5's seconds per epoch on ResNet18
   CIFAR-10, the paper's GPU), scaled by the model's forward FLOPs relative to ResNet18 and by the data set's
   training pixels relative to CIFAR-10 (50,000 images of 32x32). Methods not in Table 5 declare an estimate,
   marked "guess".

Evaluation cost comes from measured seconds per image (``metrics.seconds`` of finished results of the same model
and data set: clean, PGD-20 per step, AutoAttack; the median over runs) when there are any; otherwise it is added
in units of "one forward+backward of one image" (u), with u taken from PGD-AT's Table 5
epoch (37 s for 50,000 images x 11 forward+backward passes): clean accuracy 1/3 u per image, PGD-k k u per
image, AutoAttack standard ~1,500 u per image (machines.md: ~50 u for an image it breaks at once, ~3,200 u for
a robust one; ~45% robust for these models).
"""
from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench.core.config import RunConfig, run_id
from bench.core.store import CorruptFile, Store
from bench.grid.runs import expand
from methods import REGISTRY

# A method that declares no prior (Method.plan_seconds_per_epoch: AFD Table 5's seconds per epoch, or a guess).
FALLBACK_SECONDS_PER_EPOCH = 50.0
# Forward GFLOPs (multiply-adds) per 32x32 image, counted with torch.utils.flop_counter on bench.models.architectures.
GFLOPS_32 = {"small_cnn": 0.0576, "resnet18": 0.555, "resnet18_afd": 0.521, "preact_resnet18": 0.555,
             "resnet50": 1.298, "resnet50_afd": 1.227, "wrn34_10": 6.659}
# What the hours are: said under every plan, since no run of this suite has been timed on a GPU yet.
ESTIMATE_NOTE = ("estimates: AFD Table 5's seconds per epoch scaled by FLOPs and pixels, or this results folder's "
                 "measured throughput; the strict determinism policy's GPU cost is not measured and not included")
# Training images and side length of each named data set.
DATASET_SIZE = {"cifar10": (50_000, 32), "cifar100": (50_000, 32), "cifar10-jpeg": (50_000, 32),
                "tiny-imagenet": (100_000, 64), "digits": (1_437, 8)}
UNIT_SECONDS = 37.0 / (50_000 * 11)  # one forward+backward of one 32x32 image on ResNet18, paper GPU
AA_UNITS = 1_500


def _prior(method: str) -> tuple[float, bool] | None:
    """The method's declared (seconds per epoch, guessed); None for a method unknown here (not registered)."""
    return REGISTRY[method].plan_prior() if method in REGISTRY else None


@dataclass
class RunCost:
    cfg: RunConfig
    run_id: str
    status: str
    seconds_per_epoch: float
    source: str
    train_hours: float
    eval_hours: float

    @property
    def hours(self) -> float:
        return self.train_hours + self.eval_hours


def _scale(model: str, dataset: str) -> tuple[float, str]:
    """Model FLOPs and data set pixels relative to ResNet18 on CIFAR-10."""
    flops = GFLOPS_32.get(model, GFLOPS_32["resnet18"]) / GFLOPS_32["resnet18"]
    note = "" if model in GFLOPS_32 else f"{model} FLOPs unknown: counted as ResNet18"
    if dataset in DATASET_SIZE:
        n, side = DATASET_SIZE[dataset]
    elif dataset.startswith("folder:") and Path(dataset[7:]).is_dir():
        n, side = sum(1 for p in (Path(dataset[7:]) / "train").rglob("*") if p.is_file()), 32
    else:
        n, side = DATASET_SIZE["cifar10"]
        note = note or f"{dataset} size unknown: counted as CIFAR-10"
    return flops * (n / 50_000) * (side * side / 1024), note


def measured_throughput(results: Path) -> dict[tuple, list[tuple[float, str]]]:
    out: dict[tuple, list[tuple[float, str]]] = {}
    for r, c in _finished(results):
        if not r.get("epochs"):
            continue
        with _unless_malformed():
            key = (c["method"], c["model"], c["dataset"], c["train"]["batch_size"])
            out.setdefault(key, []).append((float(r["seconds_per_epoch"]),
                                            str(r.get("device_name") or r.get("device"))))
    return out


def _finished(results: Path) -> Iterator[tuple[dict, dict]]:
    """(result, its config) of each finished run. A file without a config (hand-edited, cut short, of another
    schema) is no sample: `bench status` names such files; a plan learns nothing from them and does not fail."""
    for _, r in Store(results).all_results():
        if isinstance(r, CorruptFile) or r.get("status") != "done" or not isinstance(r.get("config"), dict):
            continue
        yield r, r["config"]


@contextlib.contextmanager
def _unless_malformed() -> Iterator[None]:
    """Skip one sample whose fields are missing or of the wrong type (as ``_finished`` skips a whole file)."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
        pass


def measured_peaks(results: Path) -> dict[tuple, float]:
    """(method, model, data set, batch size) -> median peak training memory in bytes of finished results that
    record it (bench/core/memory.py)."""
    samples: dict[tuple, list[float]] = {}
    for r, c in _finished(results):
        with _unless_malformed():
            b = ((r.get("peak_memory") or {}).get("train") or {}).get("bytes")
            if isinstance(b, (int, float)) and b > 0:
                samples.setdefault((c["method"], c["model"], c["dataset"], c["train"]["batch_size"]), []).append(b)
    return {k: statistics.median(v) for k, v in samples.items()}


def measured_eval_rates(results: Path) -> dict[tuple, dict[str, float]]:
    """(model, dataset) -> median seconds per image of clean, of one PGD step, and of AutoAttack, from the
    per-measurement timings finished results record."""
    samples: dict[tuple, dict[str, list[float]]] = {}
    for r, c in _finished(results):
        with _unless_malformed():
            m = r.get("metrics") or {}
            secs = m.get("seconds") or {}
            per = samples.setdefault((c["model"], c["dataset"]), {})
            for key, n, div in (("clean", m.get("n_clean"), 1), ("pgd20", m.get("n_pgd"), c["eval"]["pgd_steps"]),
                                ("aa", m.get("n_aa"), 1)):
                if isinstance(secs.get(key), (int, float)) and n:
                    per.setdefault(key, []).append(secs[key] / (n * div))
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in samples.items() if d}


def estimate(runs: list[RunConfig], results: Path) -> list[RunCost]:
    store = Store(results)
    measured = measured_throughput(results)
    rates = measured_eval_rates(results)
    peaks = measured_peaks(results)
    costs = []
    for cfg in expand(runs):
        rid = run_id(cfg)
        scale, note = _scale(cfg.model, cfg.dataset)
        key = (cfg.method, cfg.model, cfg.dataset, cfg.train.batch_size)
        if key in measured:
            spe = statistics.median(s for s, _ in measured[key])
            source = f"measured ({measured[key][0][1]})"
        elif (prior := _prior(cfg.method)) is not None:
            spe = prior[0] * scale
            source = "guess x FLOPs x pixels" if prior[1] else "Table 5 x FLOPs x pixels"
        else:
            spe, source = FALLBACK_SECONDS_PER_EPOCH * scale, "guess (method unknown to the cost table)"
        if note:
            source += f"; {note}"
        if key in peaks:
            source += f"; peak {peaks[key] / 2**20:.0f} MiB"
        ev = cfg.eval
        unit = UNIT_SECONDS * GFLOPS_32.get(cfg.model, GFLOPS_32["resnet18"]) / GFLOPS_32["resnet18"]
        if cfg.dataset in DATASET_SIZE:
            unit *= DATASET_SIZE[cfg.dataset][1] ** 2 / 1024
        eval_units = ev.n_clean / 3 + ev.n_pgd * ev.pgd_steps + ev.n_aa * AA_UNITS
        if ev.feature_gap_every_epoch:
            eval_units += cfg.train.epochs * ev.n_gap * 11  # PGD-10 + features on n_gap images per epoch
        eval_seconds = eval_units * unit
        rate = rates.get((cfg.model, cfg.dataset), {})
        if {"clean", "pgd20"} <= rate.keys() and ("aa" in rate or not ev.n_aa):
            eval_seconds = (ev.n_clean * rate["clean"] + ev.n_pgd * ev.pgd_steps * rate["pgd20"]
                            + ev.n_aa * rate.get("aa", 0.0))
            if ev.feature_gap_every_epoch:
                eval_seconds += cfg.train.epochs * ev.n_gap * ev.pgd_steps * rate["pgd20"]
            source += "; evaluation measured"
        costs.append(RunCost(cfg, rid, store.status(rid), spe, source, cfg.train.epochs * spe / 3600,
                             eval_seconds / 3600))
    return costs


# Data-parallel scaling assumed for the critical path with k GPUs per run: each doubling of k keeps this fraction
# of the ideal speed-up (gradient all-reduce, the per-rank share of evaluation and data loading). A declared
# planning figure for NVLink/InfiniBand nodes, not a measurement: a single-node run on PCIe does worse.
SCALING_PER_DOUBLING = 0.9


def speedup(k: int) -> float:
    """Assumed speed-up of one run on k GPUs over one GPU."""
    import math

    return k * SCALING_PER_DOUBLING ** math.log2(k) if k > 1 else 1.0


def critical_path(costs: list[RunCost]) -> tuple[float, list[RunCost]]:
    """(hours, chain) of the longest parent -> child chain of runs still to do: the grid's wall time with
    unlimited jobs in parallel. Done runs cost nothing."""
    by_id = {c.run_id: c for c in costs}
    memo: dict[str, tuple[float, list[RunCost]]] = {}

    def path(c: RunCost) -> tuple[float, list[RunCost]]:
        if c.run_id not in memo:
            own = 0.0 if c.status == "done" else c.hours
            parent = by_id.get(run_id(c.cfg.parent)) if c.cfg.parent is not None else None
            before, chain = path(parent) if parent is not None else (0.0, [])
            memo[c.run_id] = (before + own, chain + [c])
        return memo[c.run_id]

    return max((path(c) for c in costs), key=lambda t: t[0], default=(0.0, []))


def render(grid: str, runs: list[RunConfig], results: Path, gpus_per_job: int = 1, gpus_per_run: int = 4) -> str:
    costs = estimate(runs, results)
    in_grid = {run_id(c) for c in runs}
    lines = [f"grid {grid}: {len(in_grid)} run(s) + {len(costs) - len(in_grid)} shared parent(s) = {len(costs)} "
             "distinct runs (deduplicated by config hash)", ""]
    lines.append(f"{'run_id':12s}  {'method':10s} {'model/dataset':26s} {'seed':>4s} {'epochs':>6s} "
                 f"{'s/epoch':>8s} {'train h':>8s} {'eval h':>7s}  {'status':8s} role / throughput source")
    for c in costs:
        role = "parent" if c.run_id not in in_grid else "run"
        lines.append(f"{c.run_id:12s}  {c.cfg.method:10s} {c.cfg.model + '/' + c.cfg.dataset:26s} {c.cfg.seed:>4d} "
                     f"{c.cfg.train.epochs:>6d} {c.seconds_per_epoch:>8.1f} {c.train_hours:>8.2f} "
                     f"{c.eval_hours:>7.2f}  {c.status:8s} {role}; {c.source}")
    todo = [c for c in costs if c.status != "done"]
    total = sum(c.hours for c in costs)
    left = sum(c.hours for c in todo)
    lines += ["", f"total: {len(costs)} runs, {sum(c.cfg.train.epochs for c in costs)} epochs, "
                  f"{total * gpus_per_job:.1f} GPU-hours ({sum(c.train_hours for c in costs) * gpus_per_job:.1f} "
                  f"training + {sum(c.eval_hours for c in costs) * gpus_per_job:.1f} evaluation), on the GPU of "
                  "AFD Table 5 unless measured",
              f"still to run: {len(todo)} runs, {left * gpus_per_job:.1f} GPU-hours",
              ESTIMATE_NOTE]
    by_cell: dict[str, float] = {}
    for c in costs:
        by_cell[f"{c.cfg.model}/{c.cfg.dataset}"] = by_cell.get(f"{c.cfg.model}/{c.cfg.dataset}", 0.0) + c.hours
    lines.append("by model/dataset: " + ", ".join(f"{k} {v * gpus_per_job:.1f} h" for k, v in by_cell.items()))
    hours, chain = critical_path(costs)
    k = gpus_per_run
    lines.append(f"critical path (longest parent -> child chain still to run, unlimited jobs): {hours:.1f} h with 1 GPU "
                 f"per run, {hours / speedup(k):.1f} h with {k} GPUs per run (bench run --gpus-per-run {k}; "
                 f"assumed speed-up x{speedup(k):.2f}: {SCALING_PER_DOUBLING:.0%} per doubling)"
                 + (": " + " -> ".join(f"{c.cfg.method} {c.run_id}" for c in chain) if chain else ""))
    return "\n".join(lines) + "\n"
