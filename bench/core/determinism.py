"""The determinism policy: what makes two runs of the same run id compute the same bits on a GPU.

``strict`` (the default, for the paper grids and every evaluation): cuDNN picks its deterministic algorithms
(``cudnn.deterministic``, ``cudnn.benchmark`` off: a resumed process may otherwise benchmark its way to other
convolution algorithms), ``torch.use_deterministic_algorithms(True, warn_only=True)`` (deterministic kernels where
torch has them; an op that has only a nondeterministic CUDA kernel warns instead of failing the run, and the
doctor lists such warnings), and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (deterministic cuBLAS on the torch releases
that need it), set before CUDA initialises. ``fast``: cuDNN benchmarks and may use nondeterministic kernels
(atomics in the backward): faster, and a resumed or repeated run may differ in the last bits.

On a CPU the policy changes nothing that runs: oneDNN's kernels are deterministic for a fixed thread count (the
thread count is the CPU's lever, see bench.train.resume.resume_threads: resumed runs and repeated evaluations are
bit-identical without any flag), while ``use_deterministic_algorithms`` made a whole ``bench speed`` process of the
small CNN's fp32 vAFT step 1.14x slower (median of 6 paired runs, Intel Xeon family 6 model 167, 2 cores, torch
2.14.1) for the same numbers. So the flags are set only where CUDA runs. The
policy in force is recorded in every result (``provenance()["determinism"]``); it is a runtime setting, not part
of a run's identity.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from bench.core.config import ConfigError

POLICIES = ("strict", "fast")
CUBLAS_WORKSPACE = ":4096:8"
_POLICY: str | None = None  # the policy applied in this process (None: none yet, torch's defaults)


def apply(policy: str, device: torch.device | None = None) -> None:
    """Set the policy for this process, for work on ``device`` (None: CUDA if this machine has it). Call it before
    any CUDA work (the cuBLAS workspace is read when cuBLAS initialises); the loop and ``bench eval`` call it
    first thing. On a CPU only the policy's name is recorded (see the module docstring)."""
    global _POLICY
    if policy not in POLICIES:
        raise ConfigError(f"unknown determinism policy '{policy}'; known: {', '.join(POLICIES)}")
    cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
    strict = policy == "strict" and cuda
    if strict:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.deterministic = strict
    torch.use_deterministic_algorithms(strict, warn_only=True)
    _POLICY = policy


def policy() -> str | None:
    return _POLICY


def cudnn_benchmark() -> bool:
    """Whether training may let cuDNN benchmark its algorithms: only under ``fast``."""
    return _POLICY == "fast"


def state() -> dict[str, Any]:
    """The determinism settings in force, as a result records them."""
    return {"policy": _POLICY, "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
