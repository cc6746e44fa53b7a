"""Numerics: what training and evaluation compute in, and what this machine runs natively (the CPU itself, its name
and instruction sets, is ``bench.core.cpu``).

Training precision is an explicit choice, ``train.precision`` (part of the run's identity):

* ``fp32``: true fp32. TF32 is off for cuDNN convolutions and for matmuls (cuBLAS and oneDNN), which PyTorch
  otherwise allows for cuDNN convolutions on Ampere and newer GPUs.
* ``tf32``: TF32 allowed for cuDNN convolutions and cuBLAS matmuls (CUDA only). On a CPU it is the same as
  ``fp32`` (oneDNN's fp32 kernels are left exact); the result then records ``precision_effective: "fp32"``.
* ``bf16``: autocast to bfloat16; the fp32 parts stay true fp32.
* ``fp16``: autocast to float16 with a gradient scaler (``torch.amp.GradScaler``), for GPUs without bf16. The
  scaler needs to see every backward and every optimizer step, so fp16 is accepted only for methods whose update
  goes through the base ``Method.train_step`` (loss -> backward -> step) or whose ``grad_scaler_problem`` says
  it scales its own steps; other methods are refused in one line (``bench.train.precision``). Caveat: the
  training attacks' input gradients (bench/eval/attacks.py) are not loss-scaled, and in fp16 some underflow to 0 (1.2%
  of them for an untrained small CNN on a batch of 64 random images; none in bf16 or fp32).

Evaluation is always true fp32 (:func:`exact_fp32`), whatever the training precision and whatever the user set.

What runs natively: bf16 needs AMX or AVX512-BF16 on a CPU (without them a bf16 matmul is ~100x slower than
fp32, measured on an AVX2-only AMD EPYC), ``torch.cuda.is_bf16_supported(including_emulation=False)`` on a GPU.
``ONEDNN_MAX_CPU_ISA`` is respected: a user who capped oneDNN below AVX512_CORE_BF16 gets the capped machine's
verdict (PyTorch then keeps its bf16 matmuls off oneDNN too: ONEDNN_VERBOSE shows no oneDNN matmul with the cap).

torch.compile (``--compile``) is ``bench.core.compilation``; what a method may do at a precision, and the step the
loop calls, are ``bench.train.precision`` (they ask the method's declarations, so they sit above methods/).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, TextIO

import torch

from bench.core import cpu
from bench.core.config import PRECISIONS, ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# -- what a device runs natively --------------------------------------------------------------------------
def native(precision: str, device: torch.device) -> bool:
    """Whether ``device`` runs ``precision`` at hardware speed. tf32 is 'native' everywhere: on a CPU it is fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; known: {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision == "bf16":
            return cuda_native_bf16(device)
        if precision == "tf32":
            return torch.cuda.get_device_capability(device) >= (8, 0)
        return True
    if device.type == "cpu":
        return cpu.cpu_native(precision)
    return precision in ("fp32", "tf32")


def effective_precision(precision: str, device: torch.device) -> str:
    """What training really computes in: tf32 is fp32 where there is no TF32 (CPUs, GPUs before Ampere)."""
    if precision == "tf32" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0)):
        return "fp32"
    return precision


def fastest_native(device: torch.device) -> str:
    """`bench speed`'s default: bf16 where the device runs it natively, else fp32."""
    return "bf16" if native("bf16", device) else "fp32"


# Measured on a 2-core AMD EPYC with AVX2 only (family 25 model 1): fp32 matmul 127-137 GFLOP/s, bf16 1.2 GFLOP/s; a bf16
# convolution 5.7x slower than fp32.
SLOW_BF16 = ("bf16 matmuls run ~100x slower than fp32 on such CPUs (1.2 vs 127-137 GFLOP/s measured on an "
             "AVX2-only AMD EPYC) and convolutions ~6x slower")


def slow_precision_warning(precision: str, device: torch.device) -> str | None:
    """The one-line warning for a precision this device does not run natively, or None."""
    if native(precision, device):
        return None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if precision == "bf16":
            return (f"bench: warning: precision bf16 on {name}, which has no native bf16: it is emulated and slow; "
                    "use fp16 (with the gradient scaler) or fp32")
        return f"bench: warning: precision {precision} is not native on {name}"
    info = cpu.cpu_info()
    have = " ".join(info["isa"]) or "no AVX2"
    cap = (f"; ONEDNN_MAX_CPU_ISA={info['onednn_max_isa']} keeps oneDNN off them" if info["onednn_max_isa"] else "")
    if precision == "bf16":
        return (f"bench: warning: precision bf16 on a CPU without native bf16 ({info['name']}: {have}; needs "
                f"amx_tile or avx512_bf16{cap}): {SLOW_BF16}; use fp32")
    return (f"bench: warning: precision {precision} on a CPU without native fp16 ({info['name']}: {have}; needs "
            f"amx_fp16 or avx512_fp16{cap}): expect it to be far slower than fp32 (not measured here); use fp32")


def warn_if_slow(precision: str, device: torch.device, stream: TextIO | None = None) -> str | None:
    """Print :func:`slow_precision_warning` (if any) as one line on stderr; return it."""
    line = slow_precision_warning(precision, device)
    if line is not None:
        print(line, file=stream or sys.stderr, flush=True)
    return line


# -- TF32 policy ------------------------------------------------------------------------------------------
# PyTorch has two APIs for these flags: the legacy one (cudnn.allow_tf32, cuda.matmul.allow_tf32,
# set_float32_matmul_precision) and per-backend fp32_precision attributes. Reading a legacy flag raises once the
# two disagree (a user who set the new API), so the state is saved from both (legacy where readable) and restored
# legacy first, then the new API: tested to give back exactly the same readings of both.
def _fp32_levels() -> list[Any]:
    """Every object with an ``fp32_precision`` attribute: global, per backend, per operator."""
    b = torch.backends
    levels = [b, b.cudnn, b.cudnn.conv, b.cudnn.rnn, b.cuda.matmul, b.mkldnn, b.mkldnn.matmul, b.mkldnn.conv,
              b.mkldnn.rnn]
    return [o for o in levels if hasattr(o, "fp32_precision")]


def _fp32_operators() -> list[Any]:
    """The per-operator levels (convolutions, RNNs, matmuls of cuDNN/cuBLAS/oneDNN), which decide over the rest."""
    b = torch.backends
    ops = [b.cudnn.conv, b.cudnn.rnn, b.cuda.matmul, b.mkldnn.matmul, b.mkldnn.conv, b.mkldnn.rnn]
    return [o for o in ops if hasattr(o, "fp32_precision")]


def _legacy_state() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, get in (("cudnn", lambda: torch.backends.cudnn.allow_tf32),
                     ("matmul", lambda: torch.backends.cuda.matmul.allow_tf32),
                     ("precision", torch.get_float32_matmul_precision)):
        try:
            out[key] = get()
        except RuntimeError:  # legacy and new API mixed by the user: the new-API values restore it
            out[key] = None
    return out


def _save() -> tuple[dict, list, bool]:
    return _legacy_state(), [(o, o.fp32_precision) for o in _fp32_levels()], torch.backends.cudnn.benchmark


def _restore(state: tuple[dict, list, bool]) -> None:
    legacy, leaves, benchmark = state
    if legacy["cudnn"] is not None:
        torch.backends.cudnn.allow_tf32 = legacy["cudnn"]
    if legacy["matmul"] is not None:
        torch.backends.cuda.matmul.allow_tf32 = legacy["matmul"]
    if legacy["precision"] is not None:
        torch.set_float32_matmul_precision(legacy["precision"])
    for obj, value in leaves:
        obj.fp32_precision = value
    torch.backends.cudnn.benchmark = benchmark


@contextlib.contextmanager
def exact_fp32(benchmark: bool = False) -> Iterator[None]:
    """True fp32 inside: TF32 off for cuDNN (convolutions, RNNs), cuBLAS and oneDNN matmuls, fp32 matmul precision
    "highest"; ``cudnn.benchmark`` as given (off: the same algorithms every time). Everything is restored on
    exit, also on an error. Usable as a decorator."""
    state = _save()
    try:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        for obj in _fp32_operators():  # also what the user set through the new API (mkldnn bf16, ...)
            obj.fp32_precision = "ieee"
        torch.backends.cudnn.benchmark = benchmark
        yield
    finally:
        _restore(state)


@contextlib.contextmanager
def allow_tf32(benchmark: bool = False) -> Iterator[None]:
    """TF32 allowed for cuDNN convolutions and float32 matmuls: PyTorch's ``cudnn.allow_tf32 = True`` and
    ``set_float32_matmul_precision("high")`` (which also lets oneDNN use TF32 where a CPU has it; none we know of
    does). Used on CUDA only: on a CPU ``tf32`` trains in exact fp32."""
    with exact_fp32(benchmark):
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        yield


def tf32_policy(device: torch.device, precision: str, benchmark: bool = False) -> contextlib.AbstractContextManager:
    """The TF32 policy of training at ``precision`` on ``device``. ``benchmark``: let cuDNN search the fastest
    algorithm once per batch shape (the "fast" determinism policy only: a new process may find another one)."""
    bench = benchmark and device.type == "cuda"
    return allow_tf32(bench) if precision == "tf32" and device.type == "cuda" else exact_fp32(bench)


@contextlib.contextmanager
def training_context(device: torch.device, precision: str, benchmark: bool = False) -> Iterator[None]:
    """Numerics of one training step: the TF32 policy, plus autocast to bf16 / fp16."""
    with tf32_policy(device, precision, benchmark):
        dtype = AUTOCAST_DTYPES.get(precision)
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


# -- fp16: the gradient scaler ------------------------------------------------------------------------------
def cuda_native_bf16(device: torch.device) -> bool:
    """bf16 in hardware (compute capability 8.0 and newer). ``is_bf16_supported(including_emulation=False)`` says
    so where the keyword exists (torch >= 2.3); older torch answers True for emulated bf16 too, so the capability
    decides there."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3: no including_emulation
        return torch.cuda.get_device_capability(device) >= (8, 0)


def make_grad_scaler(precision: str, device: torch.device) -> "torch.amp.GradScaler | None":
    """The device-generic ``torch.amp.GradScaler`` (torch >= 2.3); on older torch ``torch.cuda.amp.GradScaler``,
    which exists for CUDA only."""
    if precision != "fp16":
        return None
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type)
    if device.type != "cuda":
        raise ConfigError(f"fp16 on {device.type} needs torch >= 2.3 (torch.amp.GradScaler); this is torch "
                          f"{torch.__version__}: use bf16 or fp32")
    return torch.cuda.amp.GradScaler()


def backward(loss: torch.Tensor, scaler: "torch.amp.GradScaler | None", **kw: Any) -> None:
    """``loss.backward()``, scaled when there is a scaler."""
    (loss if scaler is None else scaler.scale(loss)).backward(**kw)


def step(optimizers, scaler: "torch.amp.GradScaler | None") -> None:
    """One weight update: every optimizer steps (through the scaler, which skips it on inf/NaN gradients), then
    the scale is updated once."""
    for opt in optimizers:
        opt.step() if scaler is None else scaler.step(opt)
    if scaler is not None:
        scaler.update()
