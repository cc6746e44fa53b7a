"""Accuracy on a common-corruption set (``bench.data.corruptions.CorruptionSet``): per corruption and severity, and
the unweighted mean over all of them (RobustBench's number; mCE needs an AlexNet reference the CIFAR sets lack).

Forward passes only, batched as the clean accuracy is: a corruption's images are read once (all five severities)
and moved to the device a batch at a time; correct predictions are counted on the device and read back once per
severity.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from bench.core.numerics import exact_fp32
from bench.data.corruptions import SEVERITIES, CorruptionSet, mean_accuracy


@exact_fp32()
def corruption_accuracy(model: nn.Module, cset: CorruptionSet, device: torch.device, batch_size: int,
                        n: int | None = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """``model`` (an evaluator-prepared fp32 eval-mode copy) on the first ``n`` images (default: all) of every
    corruption and severity of ``cset``, the clean accuracy's images: ``{"dataset", "label", "accuracy":
    {corruption: [severity 1..5]}, "mean", "n" (images per severity), "seconds"}``."""
    t0 = time.perf_counter()
    n = len(cset.labels) if n is None else min(n, len(cset.labels))
    labels = cset.labels[:n].to(device)
    accuracy: dict[str, list[float]] = {}
    with torch.inference_mode():
        for cor in cset.corruptions:
            images = cset.images(cor)
            counts = torch.zeros(len(SEVERITIES), dtype=torch.int64, device=device)
            for s in range(len(SEVERITIES)):
                for i in range(0, n, batch_size):
                    x = images[s, i:i + batch_size].to(device, non_blocking=True).float().div_(255)
                    counts[s] += (model(x).argmax(1) == labels[i:i + batch_size]).sum()
            accuracy[cor] = [c / n for c in counts.tolist()]
            log(f"{cset.label} {cor}: " + " ".join(f"{100 * a:.2f}" for a in accuracy[cor]))
    mean = mean_accuracy(accuracy)
    log(f"{cset.label}: mean {100 * mean:.2f} over {len(accuracy) * len(SEVERITIES)} corruption x severity sets")
    return {"dataset": cset.name, "label": cset.label, "accuracy": accuracy, "mean": mean, "n": n,
            "seconds": time.perf_counter() - t0}


def render_corruptions(corr: dict) -> str:
    """The per-corruption table of a result's ``metrics["corruptions"]``: accuracy (%) per severity."""
    lines = [f"\n| {corr['label']} | " + " | ".join(f"s{s}" for s in SEVERITIES) + " |",
             "|:---|" + "---:|" * len(SEVERITIES)]
    for cor, accs in corr["accuracy"].items():
        lines.append(f"| {cor} | " + " | ".join(f"{100 * a:.2f}" for a in accs) + " |")
    return "\n".join(lines)
