"""Peak memory of a phase (training, evaluation): ``torch.cuda.max_memory_allocated`` on a GPU, the process's
peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) on a CPU. Recorded per run beside the
time; where the CPU's peak cannot be reset (not Linux) the number is the process's peak so far and says so."""
from __future__ import annotations

import re
from pathlib import Path

import torch


def _hwm_bytes() -> int | None:
    try:
        m = re.search(r"^VmHWM:\s+(\d+)\s*kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def reset(device: torch.device) -> bool:
    """Start a phase: forget the peak so far. Returns whether the peak could be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak(device: torch.device, was_reset: bool = True) -> dict:
    """{"bytes": peak since the last reset, "of": what was measured}."""
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "of": "cuda max_memory_allocated"}
    return {"bytes": _hwm_bytes(), "of": "process peak RSS" + ("" if was_reset else " (not reset: whole process)")}
