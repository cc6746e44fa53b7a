"""Numerics: what training and evaluation compute in, what this machine runs natively, and what it is.

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
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, TextIO

import torch

from bench.core.config import PRECISIONS, ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# -- the CPU: name and instruction sets --------------------------------------------------------------------
# The flags that decide how fast training runs here, in the order they are printed.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
# torch.cpu.get_capabilities() spells some flags differently from /proc/cpuinfo.
_TORCH_CAP_NAMES = {"avx512_f": "avx512f"}


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(rf"^{re.escape(name)}\s*:\s*(.*)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def cpu_name() -> str:
    """The CPU's model name: /proc/cpuinfo "model name", else lscpu's "Model name", else what torch or platform
    know. ``platform.processor()`` alone is often empty on Linux."""
    name = _cpuinfo_field("model name")
    if not name:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
            m = re.search(r"^Model name:\s*(.*)$", out, re.MULTILINE)
            name = m.group(1).strip() if m else None
        except (OSError, subprocess.SubprocessError):
            name = None
    if not name:
        try:
            name = str(torch.cpu.get_capabilities().get("cpu_name") or "")
        except Exception:  # noqa: BLE001 - private API: absent on some builds
            name = ""
    return name or platform.processor() or platform.machine() or "unknown CPU"


def cpu_model() -> str | None:
    """"family 26 model 2" from /proc/cpuinfo (x86): a virtual machine often names every generation alike ("AMD
    EPYC"), and two such machines of this workplace differed by 1.5x in the same benchmark; None where unknown."""
    family, model = _cpuinfo_field("cpu family"), _cpuinfo_field("model")
    return f"family {family} model {model}" if family and model else None


def cpu_flags() -> set[str]:
    """Every ISA flag the CPU reports (/proc/cpuinfo "flags", else torch.cpu.get_capabilities())."""
    flags = _cpuinfo_field("flags")
    if flags:
        return set(flags.split())
    try:
        caps = torch.cpu.get_capabilities()
    except Exception:  # noqa: BLE001
        return set()
    return {_TORCH_CAP_NAMES.get(k, k) for k, v in caps.items() if v is True}


def _torch_cpu_check(name: str, flag: str) -> bool:
    """torch.cpu._is_<name>_supported() where this torch has it (2.14 does), else the /proc/cpuinfo flag."""
    fn = getattr(torch.cpu, f"_is_{name}_supported", None)
    if fn is not None:
        try:
            return bool(fn())
        except Exception:  # noqa: BLE001
            pass
    return flag in cpu_flags()


# oneDNN's ISA levels (dnnl_cpu_isa_t bit masks) as ONEDNN_MAX_CPU_ISA names them.
_ONEDNN_ISA = {"SSE41": 0x1, "AVX": 0x3, "AVX2": 0x7, "AVX2_VNNI": 0xF, "AVX2_VNNI_2": 0x1F, "AVX512_CORE": 0x27,
               "AVX512_CORE_VNNI": 0x67, "AVX512_CORE_BF16": 0xE7, "AVX10_1_512": 0x1EF, "AVX512_CORE_FP16": 0x1EF,
               "AVX10_1_512_AMX": 0xFEF, "AVX512_CORE_AMX": 0xFEF, "AVX10_1_512_AMX_FP16": 0x1FEF,
               "AVX512_CORE_AMX_FP16": 0x1FEF}
_BIT_BF16, _BIT_FP16, _BIT_AMX, _BIT_AMX_FP16 = 0x80, 0x100, 0x800, 0x1000


def onednn_max_isa() -> str | None:
    """ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA) when it caps oneDNN, upper case; None otherwise."""
    value = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return value if value and value not in ("ALL", "DEFAULT") else None


def _onednn_allows(bit: int) -> bool:
    cap = onednn_max_isa()
    if cap is None:
        return True
    mask = _ONEDNN_ISA.get(cap)
    if mask is None:  # a level newer than this table (AVX10_2_512...): such levels include bf16; AMX if named
        return bit in (_BIT_BF16, _BIT_FP16) or "AMX" in cap
    return bool(mask & bit)


def cpu_native(precision: str) -> bool:
    """Whether this CPU runs ``precision``'s matmuls and convolutions in hardware (fp32 and tf32 always do)."""
    if precision == "bf16":
        return ((_torch_cpu_check("amx_tile", "amx_tile") and _onednn_allows(_BIT_AMX))
                or (_torch_cpu_check("avx512_bf16", "avx512_bf16") and _onednn_allows(_BIT_BF16)))
    if precision == "fp16":
        avx512_fp16 = "avx512_fp16" in cpu_flags()
        return ((_torch_cpu_check("amx_fp16", "amx_fp16") and _onednn_allows(_BIT_AMX_FP16))
                or (avx512_fp16 and _onednn_allows(_BIT_FP16)))
    return True


def cpu_info() -> dict[str, Any]:
    """The CPU as a README table or a result names it: model name, relevant ISA flags, caps, native bf16/fp16."""
    flags = cpu_flags()
    try:
        aten = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        aten = None
    return {"name": cpu_name(), "model": cpu_model(), "isa": [f for f in ISA_FLAGS if f in flags],
            "onednn_max_isa": onednn_max_isa(),
            "aten_capability": aten, "native_bf16": cpu_native("bf16"), "native_fp16": cpu_native("fp16")}


def describe_cpu(info: dict | None = None) -> str:
    """One line: "AMD EPYC, family 26 model 2 (avx2 avx512f avx512_bf16; native bf16)"."""
    info = info or cpu_info()
    caps = [f"ONEDNN_MAX_CPU_ISA={info['onednn_max_isa']}"] if info.get("onednn_max_isa") else []
    isa = " ".join(info["isa"]) or "no AVX2"
    native = "native bf16" if info["native_bf16"] else "no native bf16"
    model = f", {info['model']}" if info.get("model") else ""  # reports written before it was recorded: no model
    return f"{info['name']}{model} ({isa}; {', '.join(caps + [native])})"


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
        return cpu_native(precision)
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
    info = cpu_info()
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
