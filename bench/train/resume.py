"""A run's end-of-epoch checkpoints (atomic, digest-checked, the previous one kept) and what a resume restores
beyond them (the CPU thread count its float sums depend on)."""
from __future__ import annotations

from typing import Callable

import torch

from bench.core.distributed import World
from bench.core.runtime import Runtime
from bench.core.store import Store, atomic_torch_save, content_digest

CKPT_VERSION = 2  # 2: a content digest inside (garbled files are detected)


def load_checkpoint(store: Store, rid: str, log: Callable[[str], None]) -> dict | None:
    """The newest readable checkpoint (last.pt, else prev.pt); corrupt files are reported and skipped."""
    for name in ("last.pt", "prev.pt"):
        path = store.ckpt_dir(rid) / name
        if not path.exists():
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt.get("run_id") != rid or ckpt.get("version") != CKPT_VERSION:
                raise ValueError("checkpoint of another run or format")
            if ckpt.pop("digest", None) != content_digest(ckpt):
                raise ValueError("content digest mismatch: the file is garbled")
            return ckpt
        except Exception as e:  # noqa: BLE001 - truncated zip, garbled pickle, wrong content: all unusable
            log(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:80]}); falling back")
    return None


def save_checkpoint(store: Store, rid: str, ckpt: dict) -> None:
    d = store.ckpt_dir(rid)
    last, prev = d / "last.pt", d / "prev.pt"
    for tmp in d.glob(".*.tmp"):  # left by a process killed mid-write; only the lock holder writes here
        tmp.unlink(missing_ok=True)
    if last.exists():
        last.replace(prev)  # keep the previous good one in case this write is cut off
    atomic_torch_save({**ckpt, "digest": content_digest(ckpt)}, last)


def resume_threads(ckpt: dict, rt: Runtime, device: torch.device, world: World, log, rid: str) -> None:
    """On a CPU, float sums (oneDNN's convolutions, BatchNorm's reductions) are split by thread, so the thread
    count is part of a run's numerics: measured on the cpu grid's TRADES, epoch 4 resumed with 1 thread instead of 2
    gave other losses and a final model 45 of 1,000 clean flags away from the uninterrupted run's. A resume takes
    the thread count its checkpoint was written with, and so ends bit-identical, unless ``--threads`` asks for
    another, which is said in one line (the run stays valid, but is not bit-identical to an uninterrupted one)."""
    counts = ckpt.get("thread_counts") or []
    if device.type != "cpu" or world.active or not counts or counts[-1] == torch.get_num_threads():
        return  # GPUs: the thread count does not enter the kernels; data parallel: each rank's share, by design
    if rt.threads is None:
        log(f"[{rid}] resuming with {counts[-1]} torch threads, as its checkpoint was written (this process would "
            f"use {torch.get_num_threads()}; CPU float sums depend on the count): --threads N overrides")
        torch.set_num_threads(counts[-1])
    else:
        log(f"[{rid}] resuming with --threads {rt.threads} where its checkpoint was written with {counts[-1]}: "
            "valid, but no longer bit-identical to an uninterrupted run (CPU float sums depend on the thread count)")
