"""Runtime settings: where things are and what to run on. They never change what a run means, so they are
kept out of the hashed RunConfig."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.core.config import ConfigError


@dataclass(frozen=True, kw_only=True)
class Runtime:
    results: Path = Path("results")
    data_root: Path | None = None  # None: $BENCH_DATA_ROOT, else ./data
    cache_dir: Path | None = None  # None: $BENCH_CACHE_DIR, else ~/.cache/afd-bench
    device: str = "auto"
    progress: bool | None = None  # None: a progress bar only on a terminal
    threads: int | None = None  # torch CPU threads; None: $SLURM_CPUS_PER_TASK, else torch's default
    # torch.compile the model's convolutional trunk for training and the final evaluation (bench/core/numerics.py).
    # Off by default: on CPUs the warm-up (tens of seconds per run) has to be earned back by the run.
    compile: bool = False
    # Weight layout of the evaluated fp32 copy (bench/eval/evaluator.py): channels_last is faster on GPUs and these
    # CPUs; "nchw" evaluates in the contiguous format. Same run ids: the per-example results agree up to rare
    # float-order flips, which tests/test_eval_layout.py counts.
    eval_layout: str = "channels_last"
    # Fold each conv -> BatchNorm pair of the evaluated copy into one conv (bench/eval/evaluator.py): the same function,
    # one memory-bound pass less per layer. Same run ids; flips counted as for the layout.
    eval_fold_bn: bool = True
    # Indicators of attack failure measured with every evaluation (bench/eval/indicators.py), the costlier ones on
    # the first eval_checks_n images of the PGD set. Same ids: they add to a result, they change none of its numbers.
    eval_checks: bool = True
    eval_checks_n: int = 50
    # Threat models measured beyond a run's own evaluation (bench/eval/threats.py: "l2", "corruptions"), the L2
    # radius (None: the data set's) and the corruption set's source (None: published). Same ids: further
    # measurements of the same model, added to its result.
    threats: tuple[str, ...] = ("linf",)
    eps_l2: float | None = None
    corruptions: str | None = None
    # Processes per run (bench/core/distributed.py): data-parallel training and sharded evaluation of ONE run on this
    # many local processes (GPUs: one each; CPUs: gloo). Not part of a run's meaning: same run id and files.
    procs: int = 1
    # bench/core/determinism.py: "strict" (deterministic cuDNN and kernels, no cuDNN benchmarking: what the
    # bit-identical promises rest on) or "fast". Recorded in every result; not part of a run's meaning.
    determinism: str = "strict"

    def __post_init__(self):
        object.__setattr__(self, "threats", tuple(self.threats))  # a list when rebuilt from a job's JSON

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present (what GPU users get), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for but CUDA is not available here: use --device cpu")
    return device


def set_threads(threads: int | None) -> None:
    """Under SLURM without CPU binding torch would use every core of the node: follow the allocation."""
    if threads is None:
        slurm = os.environ.get("SLURM_CPUS_PER_TASK")
        threads = int(slurm) if slurm and slurm.isdigit() else None
    if threads:
        torch.set_num_threads(threads)
