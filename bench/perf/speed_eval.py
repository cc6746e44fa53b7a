"""`bench speed-eval`: how fast the paper's evaluation runs through our evaluator, against the public way.

Three contenders evaluate the same fp32 model on the same first ``n`` test images, interleaved round-robin
(``reps`` rounds; the median round is reported) so that a busy machine slows them alike:

* ``ours``: ``bench.eval.evaluator.Evaluator.run`` as ``bench run`` calls it (its default weight layout,
  channels_last; clean, PGD-20 with the feature gap, AutoAttack standard with the per-example worst case);
* ``ours_plain``: the same evaluator without its kernel choices (weights in the contiguous NCHW format, no
  BatchNorm folding), which isolates what those choices buy and shows their per-example flips;
* ``direct``: what the public code does: the plain NCHW model, clean predictions, the PGD-20 loop of TRADES
  ``pgd_whitebox`` (``bench.eval.attacks.pgd`` with the same per-chunk seeds, so flags are comparable image by image)
  and pyautoattack's ``AutoAttack(...).run_standard_evaluation`` called directly, robust = the model still
  classifies the returned x_adv correctly.

The indicators of attack failure (``bench.eval.indicators``) run inside ``ours`` as in every evaluation; their
seconds are kept apart from the measurements' and reported beside them (``indicators``: on every image, and on
the subset), as a share of the evaluation measured in the same rounds.

Reported per measurement (clean, pgd20, aa): images/s of each contender, the speedup of ``ours`` over
``direct``, and the number of images whose flag differs between ``ours`` and ``direct`` (and ``ours_plain`` and
``direct``): float-order flips of the layout, counted, never hidden. The evaluation total (PGD-20 + AA) is the
issue's target.

In the same rounds, ``bench.perf.speed_threats`` times the other threat models: L2 AutoAttack (``ours`` through the
L2 evaluator against pyautoattack's L2 AutoAttack run directly) and the corruption evaluation against the clean
accuracy on the same images (``ours``), each printed with its min / median / max over the rounds.

``--contenders ours,direct`` leaves the ``ours_plain`` diagnosis out where a round is expensive (ResNet18
AutoAttack on a CPU); ``--save-model`` keeps the model made here for a later ``--checkpoint``.

The model has to be partly robust or AutoAttack has nothing to do: ``--checkpoint`` evaluates any checkpoint
(``bench.core.checkpoints``: our exported models, bare state dicts, common wrappers); without one, the model is made
partly robust here by ``train_steps`` steps of FGSM-RS adversarial training (Wong et al. 2020: uniform start,
one step of 1.25 eps) on CIFAR-10-JPEG (synthetic colour-coded images if that is not on the machine, named as such
in the report's ``data`` field and header), and the report says what was measured. A checkpoint is measured on
CIFAR-10-JPEG only: without it, one line asks for BENCH_DATA_ROOT.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.core import numerics
from bench.core.cpu import cpu_info, describe_cpu
from bench.core.checkpoints import load_into
from bench.core.config import EPS_8, ConfigError, EvalConfig
from bench.core.runtime import resolve_device, set_threads
from bench.data import DataError, Split, default_data_root, load_dataset
from bench.eval.attacks import pgd
from bench.eval.evaluator import Evaluator
from bench.models.architectures import MODELS, build_model
from bench.perf import speed_threats
from bench.perf.speed_threats import THREAT_MEASURES

MEASURES = ("clean", "pgd20", "aa")
# the indicators' own seconds (bench/eval/indicators.py): on every attacked image, and on the costlier subset
INDICATOR_SECONDS = ("indicators", "indicators_subset")
CONTENDERS = ("ours", "ours_plain", "direct")
MAX_TRAIN_STEPS = 100_000  # FGSM-RS steps of the model made here (default 100)
MAX_REPS = 100  # interleaved rounds (default 2)


SYNTHETIC = "synthetic colour classes"


def _data(n_train: int, n_test: int, seed: int, checkpoint: str | None) -> tuple[Split, Split, str]:
    """CIFAR-10-JPEG (train subset, first n_test test images) when available, else synthetic colour classes, but
    only for a model made here: a checkpoint's CIFAR-10 model would score near chance on them (7.5% for 42.5%) and
    AutoAttack would look several times faster, so without the data a checkpoint is refused."""
    try:
        train, test, _ = load_dataset("cifar10-jpeg", None, None)
        return train.sample(n_train), Split(test.images[:n_test], test.labels[:n_test]), "cifar10-jpeg"
    except (DataError, ConfigError, FileNotFoundError):
        if checkpoint is not None:
            raise ConfigError(f"--checkpoint {checkpoint}: CIFAR-10-JPEG (cifar10-jpeg/ or cifar10-jpeg.tar.gz) is not "
                              f"found under {default_data_root()}: set BENCH_DATA_ROOT to the folder that holds it "
                              "(a checkpoint is never measured on synthetic images)") from None
        g = torch.Generator().manual_seed(seed)

        def make(n: int) -> Split:
            labels = torch.randint(0, 10, (n,), generator=g)
            base = (labels.float()[:, None, None, None] * 25.0).expand(n, 3, 32, 32)
            noise = torch.randn(n, 3, 32, 32, generator=g) * 40
            return Split((base + noise).clamp(0, 255).to(torch.uint8), labels)

        return make(n_train), make(n_test), SYNTHETIC


def partly_robust_model(model: str, steps: int, train: Split, device: torch.device, seed: int,
                        log: Callable[[str], None]) -> nn.Module:
    """``steps`` FGSM-RS steps (batch 128, SGD 0.05, momentum 0.9, eps 8/255, step 10/255) from a fresh model."""
    torch.manual_seed(seed)
    net = build_model(model, 10, 3).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(train), (128,), generator=g)
        x = train.images[idx].to(device).float().div_(255)
        y = train.labels[idx].to(device)
        delta = (torch.rand(x.shape, generator=g).to(device) * 2 - 1) * EPS_8
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net((x + delta).clamp(0, 1)), y), [delta])
        delta = (delta.detach() + 1.25 * EPS_8 * grad.sign()).clamp(-EPS_8, EPS_8)
        loss = F.cross_entropy(net((x + delta).clamp(0, 1)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 25 == 0:
            log(f"FGSM-RS step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)")
    return net.eval()


def _direct(net: nn.Module, test: Split, cfg: EvalConfig, device: torch.device, seed: int) -> tuple[dict, dict]:
    """The public way on the plain NCHW model: per-example flags and seconds per measurement."""
    from pyautoattack import AutoAttack

    model = Evaluator.prepare(net, torch.contiguous_format)
    n = len(test)
    x = test.images.float().div(255)
    y = test.labels
    flags, secs = {}, {}
    with numerics.exact_fp32():
        t0 = time.perf_counter()
        with torch.no_grad():
            flags["clean"] = torch.cat([model(x[i:i + cfg.batch_size].to(device)).argmax(1).cpu()
                                        == y[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)])
        secs["clean"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ok = []
        for k, i in enumerate(range(0, n, cfg.batch_size)):
            xb, yb = x[i:i + cfg.batch_size].to(device), y[i:i + cfg.batch_size].to(device)
            gen = torch.Generator(device=device).manual_seed(seed + 1_000_003 * k)  # the evaluator's chunk seeds
            xa = pgd(model, xb, yb, eps=EPS_8, step_size=cfg.pgd_step_size, steps=cfg.pgd_steps, random_start=True,
                     generator=gen, clamp_start=cfg.pgd_clamp_start)
            with torch.no_grad():
                ok.append((model(xa).argmax(1) == yb).cpu())
        flags["pgd20"] = torch.cat(ok)
        secs["pgd20"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        import logging

        logging.getLogger("auto-attack").setLevel(logging.WARNING)
        adversary = AutoAttack(model, norm="Linf", eps=EPS_8, version="standard", device=device, seed=seed)
        x_adv, _ = adversary.run_standard_evaluation(x.to(device), y.to(device), batch_size=cfg.batch_size)
        with torch.no_grad():
            flags["aa"] = torch.cat([model(x_adv[i:i + cfg.batch_size]).argmax(1).cpu()
                                     == y[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)])
        secs["aa"] = time.perf_counter() - t0
    return flags, secs


def _ours(net: nn.Module, test: Split, cfg: EvalConfig, device: torch.device, seed: int,
          memory_format: torch.memory_format, fold_bn: bool) -> tuple[dict, dict]:
    ev = Evaluator(test, cfg, EPS_8, device, seed=seed, memory_format=memory_format, fold_bn=fold_bn)
    m = ev.run(net)
    flags = {k: torch.tensor([c == "1" for c in m["per_example"][k]]) for k in MEASURES}
    return flags, dict(m["seconds"])


def measure_eval(model: str = "small_cnn", checkpoint: str | None = None, n: int = 200, reps: int = 2,
                 train_steps: int = 100, device: str = "auto", threads: int | None = None, seed: int = 0,
                 contenders: Sequence[str] = CONTENDERS, save_model: str | None = None, threats: bool = True,
                 log: Callable[[str], None] = lambda s: None) -> dict:
    """``contenders``: a subset of CONTENDERS holding ``ours`` and ``direct`` (``ours_plain`` is a diagnosis and
    can be left out where a round is expensive, e.g. ResNet18 AutoAttack on a CPU); ``save_model``: write the
    model made here (``torch.save`` of its state dict) so that later runs can pass it as ``--checkpoint``;
    ``threats``: also time L2 AutoAttack and the corruption evaluation (``--no-threats`` leaves them out: L2
    AutoAttack's Square runs 5,000 queries per robust image, the costliest part of a round on a robust model)."""
    contenders = _checked(model, contenders, n, reps, train_steps)
    dev = resolve_device(device)
    set_threads(threads)
    train, test, data = _data(max(128, 10_000), n, seed, checkpoint)
    net, what = _model_to_evaluate(model, checkpoint, train_steps, train, data, dev, seed, save_model, log)
    # One chunk (batch = n, at most 500): AutoAttack then sees the same batch and seed in every contender.
    cfg = EvalConfig(n_clean=n, n_pgd=n, n_aa=n, n_gap=n, batch_size=n)
    with tempfile.TemporaryDirectory(prefix="speed-eval-c-") as folder:
        # generated before the rounds, as the evaluation reads a set generated and cached before it
        cset = speed_threats.corruption_set(test, Path(folder)) if threats else None
        runs = {
            "ours": lambda: _joined(_ours(net, test, cfg, dev, seed, torch.channels_last, True),
                                    *([speed_threats.ours_threats(net, test, cset, cfg, dev, seed)] if threats else [])),
            "ours_plain": lambda: _ours(net, test, cfg, dev, seed, torch.contiguous_format, False),
            "direct": lambda: _joined(_direct(net, test, cfg, dev, seed),
                                      *([speed_threats.direct_l2(net, test, cfg, dev, seed)] if threats else [])),
        }
        secs, flags = _rounds({c: runs[c] for c in contenders}, reps, log)
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover
        load = None
    cpu = cpu_info()
    return {"model": what, "data": data, "n": n, "reps": reps, "contenders": list(contenders), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu["name"], "cpu": cpu,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "loadavg": load,
            "rows": _rows(secs, flags, n), "indicators": indicator_cost(secs["ours"]),
            "threats": speed_threats.threat_report(secs, flags, n) if threats else {}}


def _joined(*parts: tuple[dict, dict]) -> tuple[dict, dict]:
    """One contender's round made of several measurements: their flags and seconds side by side."""
    flags, secs = {}, {}
    for f, s in parts:
        flags.update(f)
        secs.update(s)
    return flags, secs


def indicator_cost(rounds: list[dict]) -> dict:
    """What the indicators of attack failure (bench/eval/indicators.py) cost inside ``ours``, measured in the
    same evaluations as the rest (median over the rounds): seconds on every image and on the subset, and each as
    a share of the evaluation they come with (clean + PGD-20 + AA, their own seconds excluded)."""
    med = {k: statistics.median(s.get(k, 0.0) for s in rounds) for k in MEASURES + INDICATOR_SECONDS}
    evaluation = sum(med[k] for k in MEASURES)
    share = {k: med[k] / evaluation if evaluation > 0 else None for k in INDICATOR_SECONDS}
    return {"evaluation_s": evaluation, **{f"{k}_s": med[k] for k in INDICATOR_SECONDS},
            **{f"{k}_share": share[k] for k in INDICATOR_SECONDS}}


def _checked(model: str, contenders: Sequence[str], n: int, reps: int, train_steps: int) -> tuple[str, ...]:
    """The arguments checked before a model is made here; returns the contenders in CONTENDERS' order."""
    if model not in MODELS:
        raise ConfigError(f"unknown model '{model}'; known: {', '.join(MODELS)}")
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown or "ours" not in contenders or "direct" not in contenders:
        raise ConfigError(f"--contenders {','.join(contenders)}: choose from {', '.join(CONTENDERS)}, with ours "
                          f"and direct (the speed-up is their ratio)")
    if n < 1 or reps < 1 or train_steps < 0:
        raise ConfigError(f"need --n-images >= 1, --reps >= 1, --train-steps >= 0 (got {n}, {reps}, {train_steps})")
    if train_steps > MAX_TRAIN_STEPS or reps > MAX_REPS:  # a typo that would keep the machine busy for hours
        raise ConfigError(f"need --train-steps <= {MAX_TRAIN_STEPS} and --reps <= {MAX_REPS} "
                          f"(got {train_steps}, {reps})")
    if n > 500:
        raise ConfigError("--n-images must be <= 500 (one evaluation chunk, so AutoAttack's seeds line up)")
    return tuple(c for c in CONTENDERS if c in contenders)


def _model_to_evaluate(model: str, checkpoint: str | None, train_steps: int, train: Split, data: str,
                       dev: torch.device, seed: int, save_model: str | None,
                       log: Callable[[str], None]) -> tuple[nn.Module, str]:
    """The checkpoint's model, or one made partly robust here (and saved where asked); with what the report says
    was measured."""
    if checkpoint is not None:
        net = build_model(model, 10, 3)
        load_into(net, checkpoint)
        return net.to(dev).eval(), f"{model} from {checkpoint}"
    log(f"making {model} partly robust: {train_steps} FGSM-RS steps on {data}")
    net = partly_robust_model(model, train_steps, train, dev, seed, log)
    if save_model is not None:
        torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, save_model)
        log(f"saved the model to {save_model} (pass it as --checkpoint)")
    return net, f"{model} after {train_steps} FGSM-RS steps on {data}"


def _rounds(runs: dict[str, Callable[[], tuple[dict, dict]]], reps: int,
            log: Callable[[str], None]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """``reps`` rounds, each contender once per round (interleaved, so a busy machine slows them alike): the seconds
    of every round, and the per-example flags, which must not change from one round to the next."""
    secs: dict[str, list[dict]] = {c: [] for c in runs}
    flags: dict[str, dict] = {}
    for r in range(reps):
        for c, run in runs.items():
            f, s = run()
            secs[c].append(s)
            if c in flags and any(not torch.equal(flags[c][k], f[k]) for k in f):
                raise RuntimeError(f"{c}: two evaluations of the same model disagree (nondeterminism)")
            flags[c] = f
            log(f"round {r + 1}/{reps} {c}: " + ", ".join(f"{k} {s[k]:.1f}s" for k in MEASURES + THREAT_MEASURES
                                                        if k in s))
    return secs, flags


def _rows(secs: dict[str, list[dict]], flags: dict[str, dict], n: int) -> list[dict]:
    """Per measurement and for PGD-20 + AA: median seconds and images/s of each contender, the speed-ups over
    ``direct``, accuracy and the flips against ``direct``."""
    contenders = tuple(secs)
    med = {c: {k: statistics.median(s[k] for s in secs[c]) for k in MEASURES} for c in contenders}
    plain = "ours_plain" in contenders
    rows = []
    for k in MEASURES + ("pgd20+aa",):
        parts = ("pgd20", "aa") if k == "pgd20+aa" else (k,)
        t = {c: sum(med[c][p] for p in parts) for c in contenders}
        row = {"measure": k, **{f"{c}_s": t[c] for c in contenders},
               **{f"{c}_images_per_s": n / t[c] if t[c] > 0 else None for c in contenders},
               "speedup": t["direct"] / t["ours"] if t["ours"] > 0 else None,
               "speedup_plain": t["direct"] / t["ours_plain"] if plain and t["ours_plain"] > 0 else None}
        if k in MEASURES:
            row["accuracy"] = {c: float(flags[c][k].float().mean()) for c in contenders}
            row["flips"] = int((flags["ours"][k] != flags["direct"][k]).sum())
            row["flips_plain"] = int((flags["ours_plain"][k] != flags["direct"][k]).sum()) if plain else None
        rows.append(row)
    return rows


def _rate(v: float | None) -> str:
    """Images/s with three significant digits (ResNet18 AutoAttack on a CPU runs at ~0.1 images/s)."""
    return "-" if not v else f"{v:.1f}" if v >= 100 else f"{v:.3g}"


def render_eval(rep: dict) -> str:
    device = rep["device_name"] if rep["device"] != "cpu" else describe_cpu(rep["cpu"])
    head = (f"bench speed-eval: {rep['model']}, first {rep['n']} test images, fp32, median of {rep['reps']} "
            f"interleaved rounds, {rep['device']}: {device}, {rep['threads']} threads"
            + (f", load average {rep['loadavg'][0]:.1f}" if rep.get("loadavg") else ""))
    if rep.get("data") == SYNTHETIC:  # said apart from the model's name: these numbers are not CIFAR-10's
        head += f"\ndata: {SYNTHETIC} (CIFAR-10-JPEG not found: set BENCH_DATA_ROOT), not CIFAR-10 test images"
    cols = ["measure", "ours img/s", "ours plain img/s", "direct img/s", "speedup", "speedup plain", "accuracy",
            "flips (plain)"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rep["rows"]:
        acc = "" if "accuracy" not in r else f"{r['accuracy']['ours']:.3f}"
        flips = "" if "flips" not in r else f"{r['flips']} ({'-' if r['flips_plain'] is None else r['flips_plain']})"
        ips = [_rate(r.get(f"{c}_images_per_s")) for c in CONTENDERS]
        plain = "-" if r["speedup_plain"] is None else f"x{r['speedup_plain']:.2f}"
        lines.append("| " + " | ".join([r["measure"], *ips, f"x{r['speedup']:.2f}", plain, acc, flips]) + " |")
    cost = rep.get("indicators")
    if cost:
        lines += ["", f"indicators of attack failure (ours, in the same rounds): {cost['indicators_s']:.1f}s on every "
                  f"image (+{100 * (cost['indicators_share'] or 0):.1f}% of the evaluation's "
                  f"{cost['evaluation_s']:.1f}s), {cost['indicators_subset_s']:.1f}s on the subset "
                  f"(+{100 * (cost['indicators_subset_share'] or 0):.1f}%)"]
    if rep.get("threats"):
        lines += ["", *speed_threats.render_threats(rep["threats"], _rate)]
    lines += ["", "direct = the plain NCHW model, TRADES-style PGD-20 loop, pyautoattack run_standard_evaluation; "
              "ours = channels_last + BatchNorm folded; plain = NCHW, unfolded; "
              "flips = images whose flag differs from direct's (ours, and ours plain)"]
    return "\n".join(lines) + "\n"
