"""`bench speed-eval`'s measurements of the other threat models, timed inside the same interleaved rounds as the
L-inf ones (``bench.perf.speed_eval``: each is added to a contender's round):

* ``aa_l2``: AutoAttack standard in L2 at CIFAR-10's radius (eps 0.5). ``ours`` runs it as the evaluation does,
  through :class:`bench.eval.l2.L2Evaluator` (its channels_last copy with BatchNorm folded, the per-example worst
  case with the re-prediction); ``direct`` is pyautoattack's ``AutoAttack(norm='L2', version='standard')`` called
  on the plain NCHW model and the same images, robust = the model still classifies the returned x_adv correctly.
* ``corruptions`` against ``clean_c`` (``ours`` only): the corruption evaluation
  (:func:`bench.eval.corruption_accuracy.corruption_accuracy`) on one generated corruption's five severities of the
  ``n`` test images, against the evaluator's clean accuracy (``Evaluator.correct``) on those same ``5 n`` images,
  with the same prepared model and batch size. The set is generated and written before the rounds, as the
  evaluation reads a set generated and cached before it; what is timed reads the file and runs forward passes.
  The two must agree on every severity's accuracy (checked): they see the same pixels.

Each is reported with its min, median and max over the rounds; a speed-up is taken round by round (the contenders
of one round ran side by side) before its min, median and max.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.core import numerics
from bench.core.config import EPS_8, EvalConfig
from bench.data import L2_EPS, Split
from bench.data.corruptions import SEVERITIES, CorruptionSet, load_cifar_c
from bench.data.generated_corruptions import corrupt, save_npy
from bench.eval.corruption_accuracy import corruption_accuracy
from bench.eval.evaluator import Evaluator
from bench.eval.l2 import L2Evaluator

EPS_L2 = L2_EPS["cifar10"]  # RobustBench's L2 radius for CIFAR-10
CORRUPTION = "gaussian_noise"  # one corruption's five severities: enough images to time, generated in a second
# what each contender's round adds to the L-inf measurements (seconds, and per-example flags where there are any)
THREAT_MEASURES = ("aa_l2", "corruptions", "clean_c")


def corruption_set(test: Split, folder: Path) -> CorruptionSet:
    """:data:`CORRUPTION` at severities 1..5 of ``test``'s images, written to ``folder`` in the published CIFAR-10-C
    layout (the generated set's) and opened as the evaluation opens it."""
    clean = test.images.permute(0, 2, 3, 1).numpy()
    save_npy(folder / f"{CORRUPTION}.npy", np.concatenate([corrupt(clean, CORRUPTION, s) for s in SEVERITIES]))
    save_npy(folder / "labels.npy", np.tile(test.labels.numpy(), len(SEVERITIES)).astype(np.uint8))
    return load_cifar_c(folder, test, dataset_name="speed-eval-c", label=f"{CORRUPTION} (generated)",
                        corruptions=(CORRUPTION,))


def ours_threats(net: nn.Module, test: Split, cset: CorruptionSet | None, cfg: EvalConfig, device: torch.device,
                 seed: int) -> tuple[dict, dict]:
    """``ours``' part of a round: L2 AutoAttack through the L2 evaluator, then (with ``cset``) the corruption
    evaluation and the clean accuracy on the same images. Flags per example, and seconds, per measurement."""
    l2 = L2Evaluator(test, dataclasses.replace(cfg, n_pgd=0), EPS_L2, device, seed=seed).run(net)
    flags = {"aa_l2": torch.tensor([c == "1" for c in l2["per_example"]["aa"]])}
    secs = {"aa_l2": l2["seconds"]["aa"]}
    if cset is not None:
        more_flags, more_secs = corruptions_vs_clean(net, cset, cfg, device, seed)
        flags.update(more_flags)
        secs.update(more_secs)
    return flags, secs


def corruptions_vs_clean(net: nn.Module, cset: CorruptionSet, cfg: EvalConfig, device: torch.device,
                         seed: int) -> tuple[dict, dict]:
    """The corruption evaluation of ``cset`` and the evaluator's clean accuracy on the same images, timed apart
    (``corruptions``, ``clean_c``), on one prepared copy of ``net``; checked to count the same correct images."""
    flags, secs = {}, {}
    images = cset.images(CORRUPTION)  # read here only to make the clean split: the timed evaluation reads it again
    same = Split(images.reshape(-1, *images.shape[2:]).contiguous(), cset.labels.repeat(len(SEVERITIES)))
    ev = Evaluator(same, dataclasses.replace(cfg, n_clean=len(same)), EPS_8, device, seed=seed)  # eps unused by clean
    model = ev.ready(net)[0]
    got = corruption_accuracy(model, cset, device, cfg.batch_size)
    secs["corruptions"] = got["seconds"]
    t0 = time.perf_counter()
    ok = ev.correct(model, len(same))
    secs["clean_c"] = time.perf_counter() - t0
    # compared as counts of correct images: a float32 mean and the evaluation's count / n may differ in the last bit
    per_severity = [int(part.sum()) for part in ok.view(len(SEVERITIES), -1)]
    counted = [round(a * got["n"]) for a in got["accuracy"][CORRUPTION]]
    if per_severity != counted:
        raise RuntimeError(f"the corruption evaluation ({counted} correct per severity) and the clean accuracy on the "
                           f"same images ({per_severity}) disagree")
    flags["clean_c"] = ok
    return flags, secs


def direct_l2(net: nn.Module, test: Split, cfg: EvalConfig, device: torch.device, seed: int) -> tuple[dict, dict]:
    """``direct``'s part of a round: pyautoattack's L2 AutoAttack on the plain NCHW model, as the public code runs
    it (fp32, one ``run_standard_evaluation`` over the images)."""
    import logging

    from pyautoattack import AutoAttack

    model = Evaluator.prepare(net, torch.contiguous_format)
    n = len(test)
    x, y = test.images.float().div(255), test.labels
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    with numerics.exact_fp32():
        t0 = time.perf_counter()
        adversary = AutoAttack(model, norm="L2", eps=EPS_L2, version="standard", device=device, seed=seed)
        x_adv, _ = adversary.run_standard_evaluation(x.to(device), y.to(device), batch_size=cfg.batch_size)
        with torch.no_grad():
            ok = torch.cat([model(x_adv[i:i + cfg.batch_size]).argmax(1).cpu() == y[i:i + cfg.batch_size]
                            for i in range(0, n, cfg.batch_size)])
        secs = time.perf_counter() - t0
    return {"aa_l2": ok}, {"aa_l2": secs}


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def threat_report(secs: dict[str, list[dict]], flags: dict[str, dict], n: int) -> dict:
    """The JSON of the threat measurements: images/s (min / median / max over the rounds) of each, the speed-up of
    ours over direct and the ratio of the corruption evaluation to the clean accuracy, each taken per round."""
    ours, direct = secs["ours"], secs["direct"]
    rep: dict = {}
    if all("aa_l2" in s for s in ours + direct):  # only what the rounds measured
        rep["aa_l2"] = {
            "eps": EPS_L2, "n": n,
            "ours_images_per_s": spread([n / s["aa_l2"] for s in ours]),
            "direct_images_per_s": spread([n / s["aa_l2"] for s in direct]),
            "speedup": spread([d["aa_l2"] / o["aa_l2"] for o, d in zip(ours, direct)]),
            "accuracy": {c: float(flags[c]["aa_l2"].float().mean()) for c in ("ours", "direct")},
            "flips": int((flags["ours"]["aa_l2"] != flags["direct"]["aa_l2"]).sum())}
    if all("corruptions" in s for s in ours):
        m = n * len(SEVERITIES)
        rep["corruptions"] = {
            "corruption": CORRUPTION, "images": m,
            "images_per_s": spread([m / s["corruptions"] for s in ours]),
            "clean_images_per_s": spread([m / s["clean_c"] for s in ours]),
            "ratio": spread([s["clean_c"] / s["corruptions"] for s in ours])}
    return rep


def _mmm(s: dict[str, float], fmt) -> str:
    return " / ".join(fmt(s[k]) for k in ("min", "median", "max"))


def render_threats(rep: dict, rate) -> list[str]:
    """The report's lines for :func:`threat_report`'s JSON; ``rate`` formats images/s as the table does."""
    lines = []
    aa = rep.get("aa_l2")
    if aa:
        lines.append(f"L2 AutoAttack (eps {aa['eps']}, {aa['n']} images), images/s min / median / max over the "
                     f"rounds: ours {_mmm(aa['ours_images_per_s'], rate)}, direct "
                     f"{_mmm(aa['direct_images_per_s'], rate)}; speed-up {_mmm(aa['speedup'], lambda v: f'x{v:.2f}')}; "
                     f"accuracy {aa['accuracy']['ours']:.3f}, flips {aa['flips']}")
    c = rep.get("corruptions")
    if c:
        lines.append(f"corruption evaluation ({c['corruption']}, 5 severities, {c['images']} images), images/s min / "
                     f"median / max: {_mmm(c['images_per_s'], rate)}; clean accuracy on the same images "
                     f"{_mmm(c['clean_images_per_s'], rate)}; corruptions / clean {_mmm(c['ratio'], lambda v: f'x{v:.2f}')}")
    return lines
