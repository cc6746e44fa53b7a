"""What produced a result: the code's revision, the package versions, the device and the CPU it ran on."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from bench.core import determinism
from bench.core.cpu import cpu_info


def _git_state() -> tuple[str | None, bool | None]:
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=here, timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=here, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None
    return rev, dirty


# Read when the code is imported, not when a result is written hours later: the revision recorded with a result
# is the one whose code produced it, even if the checkout moved on meanwhile.
_GIT_AT_IMPORT = _git_state()


def provenance(device: torch.device) -> dict:
    rev, dirty = _GIT_AT_IMPORT
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "pyautoattack", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not recorded
            pass
    cpu = cpu_info()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu["name"]
    return {"git": rev, "git_dirty": dirty, "versions": versions, "device": str(device), "device_name": name,
            "cpu_name": cpu["name"], "cpu_model": cpu["model"], "cpu_isa": cpu["isa"], "host": platform.node(),
            "threads": torch.get_num_threads(), "determinism": determinism.state()}
