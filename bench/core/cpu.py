"""The CPU this process runs on: its name, its generation, its instruction sets, and whether it runs bf16 and fp16
in hardware (``ONEDNN_MAX_CPU_ISA`` respected).

Apart from ``bench.core.numerics`` (which decides what training computes in) because these facts are also what a
result records (``bench.core.provenance``: cpu_name, cpu_model, cpu_isa) and what ``bench speed`` and ``bench
doctor`` print, none of which needs the precision policy.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

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
