"""Differential tests: our FGSM-GA against ref_fgsm_ga.py (tml-epfl/understanding-fast-adv-training train.py as
run), in float64 from identical weights, on identical augmented batches (zero padding: saturated pixels), with the
global RNG seeded identically before each side's step (GradAlign's uniform draw). After each step: equal CE,
GradAlign term, loss, parameters, BatchNorm buffers and momentum buffers.

Each test's docstring names a mutation of our method that makes it fail (checked by applying it, running, and
reverting)."""
from __future__ import annotations

import torch

import harness
import ref_fgsm_ga as ref

TOL = dict(rtol=1e-10, atol=1e-12)
EPOCHS = 5  # 2 * 5 // 5 = 2 epochs to the peak in the code, 40% of the run in ours: the same triangle
# (epoch, batch) positions stepped, in this order: the start of the ramp, the peak (t = 2.0 in the code's units),
# the way down, and the very last iteration of the run (lr exactly 0 in the code).
POSITIONS = [(0, 0), (0, 1), (1, 3), (3, 1), (4, 3)]


def _pair(hp=None):
    m, loader = harness.build("fgsm_ga", hp, epochs=EPOCHS, batch_size=8, n=32, augment=True)
    theirs = harness.snapshot(m.model).train()
    return m, loader, theirs, ref.sgd(theirs, m.ctx.train_cfg.lr)


def _with_black_image(batch):
    """The batch with its first image all zeros: every pixel on the bound, so the as-run FGSM gradient (and
    GradAlign's g1) of that sample is exactly zero and the code drops it from the cosine (train.py:194)."""
    x = batch.x.clone()
    x[0] = 0
    return type(batch)(x=x, y=batch.y, idx=batch.idx, dx=batch.dx, dy=batch.dy, flip=batch.flip)


def _compare(m, theirs, opt, out, r, where):
    torch.testing.assert_close(out["ce"], r["ce"], **TOL, msg=lambda s: f"{where} CE: {s}")
    torch.testing.assert_close(m.hp.grad_align_lambda * out["grad_align"], r["reg"], **TOL,
                               msg=lambda s: f"{where} GradAlign: {s}")
    torch.testing.assert_close(out["loss"], r["loss"], **TOL, msg=lambda s: f"{where} loss: {s}")
    harness.assert_same_params(m.model, theirs, prefix=f"{where}: ")
    (ours_opt,) = m.optimizers
    assert abs(ours_opt.param_groups[0]["lr"] - opt.param_groups[0]["lr"]) < 1e-15, where
    for (name, p), q in zip(m.model.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(ours_opt.state[p]["momentum_buffer"], opt.state[q]["momentum_buffer"], **TOL,
                                   msg=lambda s, n=name: f"{where} momentum buffer {n}: {s}")


def test_fgsm_ga_matches_train_py_across_the_cyclic_schedule():
    """Five iterations at positions spanning the triangle, from lr(1/n) up to the peak (0.3) and down to the last
    iteration, whose lr is exactly 0 in the code; GradAlign on (lambda 0.2), a black image in the first batch.

    Mutation that fails it (checked): the lr taken where the loop sets it (lr(i / n): no ``train_step`` override),
    instead of the code's lr((i + 1) / n)."""
    m, loader, theirs, opt = _pair()
    assert m.hp.grad_align_lambda == ref.LAMBDA and m.ctx.train_cfg.momentum == ref.MOMENTUM
    assert m.ctx.train_cfg.weight_decay == ref.WEIGHT_DECAY
    n = len(loader)
    before = harness.snapshot(m.model)
    lrs = []
    for k, (epoch, i) in enumerate(POSITIONS):
        batch = harness.batches(loader, epoch)[i]
        if k == 0:
            batch = _with_black_image(batch)
        torch.manual_seed(700 + k)
        out = harness.step(m, batch, epoch, i)
        torch.manual_seed(700 + k)
        lr = ref.lr_at(epoch + 1, i, n, EPOCHS, m.ctx.train_cfg.lr)
        r = ref.step(theirs, opt, batch.x, batch.y, eps=harness.EPS, lr=lr)
        _compare(m, theirs, opt, out, r, f"position {(epoch, i)}")
        lrs.append(lr)
    assert lrs[0] > 0 and lrs[2] == m.ctx.train_cfg.lr and lrs[-1] == 0  # the code's first, peak and last lr
    with torch.no_grad():
        assert harness.moved(before, m.model) > 1e-3


def test_fgsm_ga_as_run_gives_saturated_pixels_no_gradient_and_drops_zero_gradient_samples():
    """Two consecutive iterations on batches with many saturated pixels (zero padding) and one black image: under
    torch 1.4's min/max rule the FGSM step leaves every pixel on a bound where it is, and the black image, whose
    g1 is then zero, is left out of GradAlign's mean (7 of 8 kept).

    Mutation that fails it (checked): ``saturated_grad: str = "half"`` as the default (the code under today's
    torch: the FGSM step moves saturated pixels inward, the black image is kept)."""
    m, loader, theirs, opt = _pair()
    n = len(loader)
    for k, batch in enumerate(harness.batches(loader, 0)[:2]):
        batch = _with_black_image(batch)
        saturated = (batch.x == 0) | (batch.x == 1)
        assert saturated.double().mean() > 0.1
        torch.manual_seed(900 + k)
        out = harness.step(m, batch, 0, k)
        torch.manual_seed(900 + k)
        r = ref.step(theirs, opt, batch.x, batch.y, eps=harness.EPS, lr=ref.lr_at(1, k, n, EPOCHS, 0.3))
        assert torch.equal(r["fgsm_grad"][saturated], torch.zeros_like(batch.x)[saturated])
        assert r["kept"] == len(batch.y) - 1
        _compare(m, theirs, opt, out, r, f"step {k}")


def test_fgsm_ga_half_variant_is_the_same_code_under_todays_torch():
    """``saturated_grad="half"`` equals the reference run with torch.max/torch.min as they are today (ties split
    in half): the same FGSM step as the full gradient, a GradAlign g1 halved on the bounds.

    Mutation that fails it (checked): "half" mapped to a factor 1.0 (the gradient through the clamp taken in full)."""
    m, loader, theirs, opt = _pair({"saturated_grad": "half"})
    n = len(loader)
    for k, batch in enumerate(harness.batches(loader, 0)[:2]):
        torch.manual_seed(1100 + k)
        out = harness.step(m, batch, 0, k)
        torch.manual_seed(1100 + k)
        r = ref.step(theirs, opt, batch.x, batch.y, eps=harness.EPS, lr=ref.lr_at(1, k, n, EPOCHS, 0.3),
                     tie_rule="today")
        _compare(m, theirs, opt, out, r, f"step {k}")


def test_fgsm_ga_starts_from_the_codes_weight_init():
    """train.py:90 re-initializes the model (utils.initialize_weights); ours does it at construction from a CPU
    generator seeded with the run's seed: the same draws give the same weights, conv std sqrt(2 / (9 out)).

    Mutation that fails it (checked): the conv std computed from in_channels instead of out_channels."""
    from bench.models.architectures import build_model

    m, _ = harness.build("fgsm_ga")
    torch.manual_seed(1)  # harness.build's student_seed: the same model as built, before any re-initialization
    theirs = build_model("small_cnn", harness.C, 3).to(torch.float64)
    g = torch.Generator().manual_seed(m.ctx.seed)
    theirs.apply(lambda mod: ref.initialize_weights(mod, g))
    harness.assert_same_params(m.model, theirs, rtol=0, atol=0)
    default, _ = harness.build("fgsm_ga", {"init": "model"})
    assert not torch.equal(default.model.body[0][0].weight, m.model.body[0][0].weight)
