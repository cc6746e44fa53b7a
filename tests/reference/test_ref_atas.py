"""Differential tests: our ATAS (methods/atas.py) against ref_atas.py (HuangZhiChao95/ATAS ATAS.py, adv_attack.py,
data_aug.py as run), in float64, from identical weights, identical stored perturbation and gradient-norm buffers,
on identical batches with identical crops and flips. After every step: equal per-example step sizes, adversarial
inputs, logged clamp fractions, v, the whole padded delta buffer, loss, parameters and BatchNorm buffers, momentum
buffers and lr. A reset is the one random draw: both sides must reset before the same epochs,
then the reference takes our draw."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import harness
import ref_atas as R
from bench.core import schedules
import methods.atas as atas
from methods.atas import PAD

N, BS = 20, 8  # batches of 8, 8, 4: the short last batch averages its loss over 4 examples, as the code's
# Test-only clamps and c that put this tiny model's steps at both clamps and between them, so that every part of
# the formula is exercised (with the code's c = 0.01 nearly every step here sits at 14/255).
SPREAD = {"c": 0.003, "min_step_size": 6 / 255, "max_step_size": 10 / 255}


def _args(m, **kw) -> R.Args:
    hp = m.hp
    return R.Args(epsilon=harness.EPS, step_size=harness.EPS, c=hp.c, beta=hp.beta, min_step_size=hp.min_step_size,
                  max_step_size=hp.max_step_size, **kw)


def _run(hp: dict, epochs: int, args_kw: dict, run_epochs: int):
    """Train ours and the reference side by side for ``run_epochs`` epochs; return per-step records."""
    m, loader = harness.build("atas", hp, epochs=epochs, batch_size=BS, n=N, augment=True)
    spe = len(loader)
    args = _args(m, epochs=epochs, **args_kw)
    ref_model = harness.snapshot(m.model)
    opt, sched = R.make_optimizer(args, ref_model, spe)
    if epochs != R.Args().epochs:  # a scaled run: the code's MultiStepLR at our scaled milestone iterations
        total = epochs * spe
        sched.milestones.clear()
        sched.milestones.update({schedules.milestone_iteration(f, total): 1 for f in m.ctx.train_cfg.milestones})
    # The reference's buffers in the model's dtype (the code's are float32 beside a float32 model, ATAS.py:154, 162)
    delta, gdnorms = m.delta.clone().double(), torch.zeros(N, dtype=torch.float64)
    inputs: list[torch.Tensor] = []
    m.model.register_forward_pre_hook(lambda mod, a: inputs.append(a[0].detach().clone()))
    ours_steps: list[torch.Tensor] = []  # our per-example steps (before the clamp), recorded where loss() takes them
    raw = atas.raw_step_sizes

    def recording(*a, **k):
        ours_steps.append(raw(*a, **k))
        return ours_steps[-1]

    atas.raw_step_sizes = recording
    try:
        return m, _steps(m, loader, args, ref_model, opt, sched, delta, gdnorms, inputs, ours_steps, run_epochs)
    finally:
        atas.raw_step_sizes = raw


def _steps(m, loader, args, ref_model, opt, sched, delta, gdnorms, inputs, ours_steps, run_epochs):
    split, (our_opt,) = m.ctx.train, m.optimizers
    records = []
    for epoch in range(run_epochs):
        before = m.delta.clone()
        m.net.train()
        m.on_epoch_start(epoch)
        ours_reset = not torch.equal(m.delta, before)
        ref_reset = R.epoch_start(args, delta, epoch + 1)
        assert ours_reset == ref_reset, f"epoch {epoch + 1}: ours reset {ours_reset}, the code {ref_reset}"
        if ref_reset:  # the draw itself is RNG-specific: U(-eps, eps) everywhere, then the reference takes it
            assert m.delta.abs().max() <= harness.EPS and (m.delta != before).all()
            delta.copy_(m.delta)
        for i, batch in enumerate(harness.batches(loader, epoch)):
            inputs.clear()
            ours_steps.clear()
            out = harness.step(m, batch, epoch, i)
            # ToTensor's float32 image (as the loader's), padded (data.py:30), then float64 like harness.batches
            nat = F.pad(split.images[batch.idx].float() / 255, (PAD,) * 4).double()
            info = R.transform_info(batch.dy, batch.dx, batch.flip)
            lr = opt.param_groups[0]["lr"]
            ref = R.train_batch(args, ref_model, opt, sched, delta, gdnorms, nat, batch.y, batch.idx, info, epoch + 1)
            where = f"epoch {epoch + 1} step {i + 1}"
            torch.testing.assert_close(ref["nat_trans"], batch.x, rtol=0, atol=0, msg=f"{where}: crops differ")
            x0, x_adv = inputs  # the attack's input, then the training input
            torch.testing.assert_close(x_adv, ref["x_adv"], rtol=0, atol=1e-15, msg=lambda s: f"{where} x_adv: {s}")
            torch.testing.assert_close(out["step_size"], ref["steps"].mean(), rtol=1e-12, atol=0)
            lo, hi = m.hp.min_step_size, m.hp.max_step_size
            adaptive = epoch + 1 > args.warmup_epochs
            assert len(ours_steps) == adaptive, f"{where}: our adaptive formula ran {len(ours_steps)} times"
            if adaptive:
                torch.testing.assert_close(ours_steps[0].clamp(lo, hi), ref["steps"], rtol=1e-12, atol=0)
            for key, frac in (("step_at_min", (ref["steps"] <= lo) if adaptive else torch.zeros(1)),
                              ("step_at_max", (ref["steps"] >= hi) if adaptive else torch.zeros(1))):
                torch.testing.assert_close(out[key], frac.double().mean(), rtol=0, atol=1e-15, msg=f"{where} {key}")
            torch.testing.assert_close(out["loss"].detach(), ref["loss"], rtol=1e-12, atol=0)
            assert our_opt.param_groups[0]["lr"] == lr, f"{where}: lr {our_opt.param_groups[0]['lr']} vs {lr}"
            torch.testing.assert_close(m.v, gdnorms, rtol=1e-12, atol=0, msg=lambda s: f"{where} v: {s}")
            torch.testing.assert_close(m.delta, delta, rtol=0, atol=1e-15, msg=lambda s: f"{where} delta: {s}")
            harness.assert_same_params(m.model, ref_model, prefix=f"{where}: ")
            for p, q in zip(m.model.parameters(), ref_model.parameters()):
                torch.testing.assert_close(our_opt.state[p]["momentum_buffer"], opt.state[q]["momentum_buffer"],
                                           rtol=1e-10, atol=1e-12)
            records.append({"epoch": epoch + 1, "adaptive": adaptive, "reset": ref_reset and i == 0,
                            "steps": ref["steps"], "lr": lr})
    return records


def test_warmup_epochs_take_the_codes_constant_step_and_leave_v_alone():
    """E = 30 with the recipe's 5 warm-up epochs: the first two epochs (6 steps, the short batch included) take
    the constant step eps (ATAS.py:103, 115-122) and never touch v (ATAS.py:113 is in the other branch).

    Mutations that fail it (checked): v updated during warm-up as well (the update moved above the branch);
    float32 buffers beside the float64 model."""
    m, records = _run({}, epochs=30, args_kw={}, run_epochs=2)
    assert m.delta.dtype == m.v.dtype == torch.float64  # the buffers follow the model
    assert all(not r["adaptive"] for r in records) and len(records) == 6
    assert all(torch.equal(r["steps"], torch.full_like(r["steps"], harness.EPS)) for r in records)
    assert torch.equal(m.v, torch.zeros_like(m.v))
    assert m.delta.abs().max() <= harness.EPS


def test_adaptive_epochs_match_the_codes_formula_and_buffers():
    """E = 30, --warmup-epochs 1: one warm-up epoch, then two adaptive epochs in which v carries over from the
    previous visit (beta), step sizes land below, between and above the clamps (SPREAD), and each flipped window
    is written back into the padded buffer.

    Mutation that fails it (checked): v <- beta v + (1 - beta) ||g|| (the norm, not its square)."""
    _, records = _run({"warmup_epochs": 1, **SPREAD}, epochs=30, args_kw={"warmup_epochs": 1}, run_epochs=3)
    steps = torch.cat([r["steps"] for r in records if r["adaptive"]])
    lo, hi = SPREAD["min_step_size"], SPREAD["max_step_size"]
    assert (steps <= lo).any() and (steps >= hi).any() and ((steps > lo) & (steps < hi)).any()
    assert [r["adaptive"] for r in records] == [False] * 3 + [True] * 6


def test_scaled_three_epoch_recipe_is_the_code_run_with_one_warmup_epoch_and_a_reset_before_epoch_2():
    """E = 3 with the defaults (what the cpu grid runs) equals the code run with --epochs 3 --warmup-epochs 1
    --epochs-reset 2: warm-up epoch 1, delta redrawn before epoch 2 (not after it, not before epoch 3, the last),
    adaptive epochs 2 and 3 with v kept across the reset, lr x0.1 at the scaled milestones within epoch 3.

    Mutation that fails it (checked): the scaling without its clamps (round(5 E / 30) = 0 warm-up epochs and
    round(10 E / 30) = 1: resets before epochs 1 and 2), i.e. the code before this fix."""
    _, records = _run({}, epochs=3, args_kw={"warmup_epochs": 1, "epochs_reset": 2}, run_epochs=3)
    assert [r["epoch"] for r in records if r["reset"]] == [2]
    assert [r["adaptive"] for r in records] == [False] * 3 + [True] * 6
    assert [r["lr"] for r in records][-3:] == [0.1, 0.1 * 0.1, 0.1 * 0.1 * 0.1]  # iterations 7 and 8 of 9


def test_reset_before_epoch_10_and_20_at_30_epochs_and_not_before_30():
    """At E = 30 the reset epochs are the code's (ATAS.py:165: 10 and 20; 30 is the last) and v is never reset;
    one run through a reset with --epochs-reset 2 shows the buffers match across it.

    Mutation that fails it (checked): the reset drawn at the END of the 1-based epoch (before 0-based epoch+1)."""
    m, _ = harness.build("atas", epochs=30, batch_size=BS, n=N, augment=True)
    assert [e + 1 for e in range(30) if m.resets_at(e)] == [10, 20]
    assert [e + 1 for e in range(30) if m.warming_up(e)] == [1, 2, 3, 4, 5]
    _, records = _run({"warmup_epochs": 1, "reset_every": 2}, epochs=30,
                      args_kw={"warmup_epochs": 1, "epochs_reset": 2}, run_epochs=4)
    assert [r["epoch"] for r in records if r["reset"]] == [2, 4]


def test_lr_at_30_epochs_is_the_codes_multisteplr_in_iterations():
    """ATAS.py:159-160: MultiStepLR(milestones=[24 * len(loader), 28 * len(loader)]) stepped every iteration;
    ours (recipe milestones as fractions of the run's iterations) gives the same lr at every one of 30 x 391
    iterations (CIFAR-10 at batch 128) and at 30 x 3.

    Mutation that fails it (checked): recipe milestones (24/30, 28/30) -> (25/30, 29/30)."""
    from methods.atas import ATAS

    for spe in (391, 3):
        cfg = ATAS.recipe
        model = torch.nn.Linear(1, 1)
        opt, sched = R.make_optimizer(R.Args(), model, spe)
        for t in range(cfg.epochs * spe):
            assert schedules.lr_at(cfg, t // spe, t % spe, spe) == opt.param_groups[0]["lr"], f"iteration {t}"
            opt.step()
            sched.step()
