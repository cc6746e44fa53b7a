"""Measure the fidelity choices of vAFT / AFKD / ARREST against changzhang777/AFD ARREST.py on the CPU grid's
setting: small_cnn, CIFAR-10 (cifar10-jpeg, the grid's 10,000 training images), batch 128, eps 8/255. The numbers
in the fidelity notes of methods/vaft.py, afkd.py and arrest.py come from this script (NAT_EPOCHS=4 N_STEPS=10 K=5;
~35 min on 2 shared CPU cores).

Run: .venv/bin/python scripts/measure_aft.py   (trains a natural parent once, cached at $AFT_PARENT)
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench import schedules  # noqa: E402
from bench.eval.attacks import pgd  # noqa: E402
from bench.data import Loader, load_dataset  # noqa: E402
from bench.models.architectures import build_model  # noqa: E402
from methods import Context, StepInfo, build_method, get_method, make_hparams, resolve_hparams  # noqa: E402
from methods.arrest import replay_window_end  # noqa: E402

torch.set_num_threads(2)
EPS, STEP = 8 / 255, 2 / 255
PARENT = os.environ.get("AFT_PARENT", "/tmp/aft_parent.pt")
NAT_EPOCHS = int(os.environ.get("NAT_EPOCHS", 4))
K = int(os.environ.get("K", 5))  # batches for the per-batch measurements

train, test, info = load_dataset("cifar10-jpeg")
train = train.sample(10_000)
loader = Loader(train, 128, device="cpu", shuffle=True, augment=True, seed=0)
print(f"data: {len(train)} train images, {len(loader)} batches of 128 per epoch", flush=True)


def natural_parent():
    torch.manual_seed(0)
    model = build_model("small_cnn", info.num_classes, 3)
    if os.path.exists(PARENT):
        model.load_state_dict(torch.load(PARENT))
        return model.eval()
    cfg = dataclasses.replace(get_method("standard").recipe, epochs=NAT_EPOCHS)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    t0 = time.time()
    for e in range(cfg.epochs):
        model.train()
        for i, b in enumerate(loader.epoch(100 + e)):
            schedules.apply(cfg, [opt], e, i, len(loader))
            loss = F.cross_entropy(model(b.x), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  natural epoch {e + 1}/{cfg.epochs} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    torch.save(model.state_dict(), PARENT)
    return model.eval()


parent = natural_parent()
with torch.no_grad():
    xt, yt = test.images[:1000].float() / 255, test.labels[:1000]
    print(f"parent clean test accuracy (1000): {(parent(xt).argmax(1) == yt).float().mean().item():.3f}")
batches = list(loader.epoch(0))[:K]


def feats(model, x, train_mode):
    m = copy.deepcopy(model).train(train_mode)
    with torch.no_grad():
        return m.features(x)


def angular(u, v):
    return (1 - F.cosine_similarity(u, v, dim=1)).mean().item()


def stats(vals):
    t = torch.tensor(vals)
    return f"mean {t.mean():.4f}, min {t.min():.4f}, max {t.max():.4f} (over {len(vals)} batches)"


# 1. Teacher BatchNorm mode: d and RGKD at the start of fine-tuning (student = parent)
d_bs, d_rs, rg_bs, rg_rs, feat_cos = [], [], [], [], []
for b in batches:
    t_bs, t_rs = feats(parent, b.x, True), feats(parent, b.x, False)
    s_eval = feats(parent, b.x, False)
    d_bs.append(angular(t_bs, s_eval))  # as run (ARREST.py:163-169): teacher batch stats, student eval
    d_rs.append(angular(t_rs, s_eval))  # principled: both running stats (= 0)
    torch.manual_seed(0)
    x_adv = pgd(parent, b.x, b.y, eps=EPS, step_size=STEP, steps=10, clamp_start=False)
    s_adv = feats(parent, x_adv, True)  # the student's training forward is in train mode
    rg_bs.append(angular(t_bs, s_adv))
    rg_rs.append(angular(t_rs, s_adv))
    feat_cos.append(angular(t_bs, t_rs))
thr = 1 - math.cos(math.radians(30))
print("\n[1] teacher batch statistics (as run) vs running statistics, fine-tuning step 0 (student = parent)")
print(f"  d  as run   : {stats(d_bs)}   threshold 1 - cos 30deg = {thr:.4f}")
print(f"  d  eval     : {stats(d_rs)}")
print(f"  1-cos(teacher batch-stat features, running-stat features): {stats(feat_cos)}")
print(f"  RGKD as run : {stats(rg_bs)}")
print(f"  RGKD eval   : {stats(rg_rs)}")
print(f"  50 * (RGKD as run - RGKD eval): {stats([50 * (a - c) for a, c in zip(rg_bs, rg_rs)])}")

# 2. Attack start: clamped vs unclamped, and the attack loss reduction (mean as ARREST.py vs our sum)
out_start, diff_clamp, diff_mean, diff_px_clamp_maxabs = [], [], [], []
for j, b in enumerate(batches):
    u = torch.Generator().manual_seed(j)
    start = b.x + (2 * torch.rand(b.x.shape, generator=u) - 1) * EPS
    out_start.append(((start < 0) | (start > 1)).float().mean().item())
    runs = {}
    for key, kw in {"unclamped": dict(clamp_start=False), "clamped": dict(clamp_start=True),
                    "mean": dict(clamp_start=False, loss=lambda lg, y: F.cross_entropy(lg, y))}.items():
        runs[key] = pgd(parent, b.x, b.y, eps=EPS, step_size=STEP, steps=10,
                        generator=torch.Generator().manual_seed(j), **kw)
    diff_clamp.append((runs["unclamped"] != runs["clamped"]).float().mean().item())
    diff_mean.append((runs["unclamped"] != runs["mean"]).float().mean().item())
print("\n[2] attack start and loss reduction (PGD-10, natural parent, same random start)")
print(f"  pixels of x + U(-eps, eps) outside [0, 1]: {stats(out_start)}")
print(f"  x_adv pixels that differ, clamped vs unclamped start: {stats(diff_clamp)}")
print(f"  x_adv pixels that differ, batch-mean CE (ARREST.py and ours) vs summed CE (pgd default): {stats(diff_mean)}")
diff100 = []
for j in range(3):  # batches of 100: the mean is not the sum times a power of two
    b = list(loader.epoch(0))[20 + j]
    x, y = b.x[:100], b.y[:100]
    a, c = (pgd(parent, x, y, eps=EPS, step_size=STEP, steps=10, clamp_start=False,
                generator=torch.Generator().manual_seed(j), **kw)
            for kw in ({}, {"loss": lambda lg, yy: F.cross_entropy(lg, yy)}))
    diff100.append((a != c).float().mean().item())
print(f"  the same on batches of 100 (not a power of two): {[round(v, 5) for v in diff100]}")

# 3. A short ARREST fine-tune in the CPU grid's setting (2 epochs x 79 iterations): as run vs eval-mode teacher
spe = len(loader)
N_STEPS = int(os.environ.get("N_STEPS", 10))


def arrest_run(hp, n_steps):
    torch.manual_seed(0)
    model = build_model("small_cnn", info.num_classes, 3)
    model.load_state_dict(parent.state_dict())
    cfg = dataclasses.replace(get_method("arrest").recipe, epochs=2)
    ctx = Context(info=info, eps=EPS, device=torch.device("cpu"), epochs=2, steps_per_epoch=spe, seed=0,
                  train=train, parent_model=copy.deepcopy(parent).eval(), train_cfg=cfg)
    m = build_method("arrest", model, make_hparams("arrest", resolve_hparams("arrest", hp)), ctx, cfg)
    ds, ns = [], []
    torch.manual_seed(0)
    for i, b in enumerate(loader.epoch(0)):
        if i == n_steps:
            break
        m.net.train()
        schedules.apply(cfg, m.optimizers, 0, i, spe)
        out = m.train_step(b, StepInfo(epoch=0, step=i, global_step=i))
        ds.append(out["replay_dist"].item())
        ns.append(out["noise"].item())
    return ds, ns


print(f"\n[3] ARREST, first {N_STEPS} iterations of the CPU grid's 2-epoch run (replay window: iterations "
      f"0..{replay_window_end(2 * spe, 0.5) - 1})")
for label, hp in (("as run (teacher batch stats)", {}), ("teacher eval", {"teacher_batch_stats": False})):
    t0 = time.time()
    ds, ns = arrest_run(hp, N_STEPS)
    print(f"  {label}: d {stats(ds)}; replayed {sum(ns):.0f}/{len(ns)} batches; "
          f"d first 5: {[round(v, 4) for v in ds[:5]]} ({time.time() - t0:.0f}s)")

# 4. The code's teacher running statistics: how far they drift in one epoch of train-mode forwards (never read)
drift = copy.deepcopy(parent).train()
rv0 = {k: v.clone() for k, v in drift.state_dict().items() if "running_var" in k}
with torch.no_grad():
    for i, b in enumerate(loader.epoch(0)):
        drift.features(b.x)
        drift.features(b.x)  # ARREST.py:167 and 194
rel = [((drift.state_dict()[k] - v).abs() / v.abs().clamp_min(1e-8)).mean().item() for k, v in rv0.items()]
print(f"\n[4] ARREST.py's teacher after one epoch ({2 * spe} train-mode forwards): mean relative change of the "
      f"BN running variances per layer: {[round(r, 3) for r in rel]} (never read: the teacher is never in eval mode)")

# 5. The replay window as a fraction of iterations at the CPU grid's 79 iterations per epoch
print("\n[5] replay window (iterations allowed to replay) at", spe, "iterations per epoch")
for ep in (1, 2, 3, 20):
    end = replay_window_end(ep * spe, 0.5)
    old = sum(spe for e in range(ep) if e + 1 <= 0.5 * ep + 1e-9)
    print(f"  {ep:2d} epochs: iterations 0..{end - 1} of {ep * spe} (= {end / spe:.2f} epochs); "
          f"the previous whole-epoch rule: {old} iterations")

print("\n[6] the teacher's mode on a fine-tuned student")
model = copy.deepcopy(parent)
cfg = dataclasses.replace(get_method("arrest").recipe, epochs=2)
ctx = Context(info=info, eps=EPS, device=torch.device("cpu"), epochs=2, steps_per_epoch=spe, seed=0, train=train,
              parent_model=copy.deepcopy(parent).eval(), train_cfg=cfg)
m = build_method("arrest", model, make_hparams("arrest", resolve_hparams("arrest", {})), ctx, cfg)
torch.manual_seed(0)
bs = list(loader.epoch(0))[:10 + K]
for i in range(min(10, N_STEPS)):
    m.net.train(); schedules.apply(cfg, m.optimizers, 0, i, spe)
    m.train_step(bs[i], StepInfo(epoch=0, step=i, global_step=i))
ang = angular
rows = []
for b in bs[10:10 + K]:
    with torch.no_grad():
        t_bs = copy.deepcopy(parent).train().features(b.x)
        t_rs = copy.deepcopy(parent).eval().features(b.x)
        s_ev = copy.deepcopy(m.model).eval().features(b.x)
    torch.manual_seed(1)
    xa = pgd(m.model, b.x, b.y, eps=EPS, step_size=STEP, steps=10, clamp_start=False)
    with torch.no_grad():
        s_tr = copy.deepcopy(m.model).train().features(xa)
    rows.append((ang(t_bs, s_ev), ang(t_rs, s_ev), ang(t_bs, s_tr), ang(t_rs, s_tr)))
r = torch.tensor(rows)
print(f"after {min(10, N_STEPS)} as-run ARREST iterations, {K} new batches of 128:")
print("  d as run (teacher batch stats):", [round(v, 4) for v in r[:, 0].tolist()])
print("  d teacher eval                :", [round(v, 4) for v in r[:, 1].tolist()])
print(f"  |d as run - d eval|: mean {(r[:, 0] - r[:, 1]).abs().mean():.4f}, max {(r[:, 0] - r[:, 1]).abs().max():.4f}")
print("  RGKD as run:", [round(v, 4) for v in r[:, 2].tolist()], " RGKD eval:", [round(v, 4) for v in r[:, 3].tolist()])
print(f"  50 |RGKD as run - RGKD eval|: mean {50 * (r[:, 2] - r[:, 3]).abs().mean():.3f}")
