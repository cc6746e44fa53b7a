"""What makes TRADES, Free-AT, FGSM-GA and ATAS what they are: one property test (or a few) per method, each
computed independently of the method's own code path."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.core.config import TrainConfig
from bench.data import DatasetInfo, Loader, Split
from bench.data.loader import augment_crop_flip
from bench.models.architectures import build_model
from bench.core.schedules import lr_at
from methods import build_method, Context, StepInfo, get_method, make_hparams, resolve_hparams
from methods.base import MethodError
from methods.atas import PAD, crop_index, scaled_resets, scaled_warmup, step_sizes
from methods.fgsm_ga import grad_align_penalty

N, C, S = 32, 4, 16
EPS = 8 / 255


def make(name, *, model=None, epochs=2, hp=None, train=None, classes=C, seed=0):
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (N, 3, S, S), generator=g, dtype=torch.uint8), torch.arange(N) % classes)
    info = DatasetInfo(name="random", num_classes=classes, channels=3, image_size=S,
                       classes=tuple("abcdefgh"[:classes]))
    torch.manual_seed(seed)
    model = model if model is not None else build_model("small_cnn", classes, 3)
    train = train or TrainConfig(epochs=epochs, batch_size=8, lr=0.05, schedule="constant")
    loader = Loader(split, 8, device="cpu", shuffle=True, augment=True, seed=0)
    ctx = Context(info=info, eps=EPS, device=torch.device("cpu"), epochs=epochs, steps_per_epoch=len(loader),
                  seed=0, train=split, train_cfg=train)
    m = build_method(name, model, make_hparams(name, resolve_hparams(name, hp)), ctx, train)
    m.net.train()
    return m, loader


def linear_model(classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * S * S, classes))


# -- TRADES ------------------------------------------------------------------------------------------------
def test_trades_loss_is_ce_plus_six_kl_by_hand():
    m, loader = make("trades", model=linear_model(classes=3), classes=3)
    assert m.hp.beta == 6.0
    batch = next(iter(loader.epoch(0)))
    x_adv = torch.clamp(batch.x + EPS * torch.sign(torch.randn_like(batch.x)), 0, 1)  # fixed "attack"
    m.pgd = lambda *a, **k: x_adv
    out = m.loss(batch, StepInfo(0, 0, 0))

    lin = m.model[1]
    W, b = lin.weight.detach().double().tolist(), lin.bias.detach().double().tolist()

    def logits(v):
        return [sum(wi * xi for wi, xi in zip(row, v)) + bi for row, bi in zip(W, b)]

    def softmax(z):
        mx = max(z)
        e = [math.exp(t - mx) for t in z]
        return [t / sum(e) for t in e]

    ce = kl = 0.0
    for i in range(len(batch.y)):
        p = softmax(logits(batch.x[i].flatten().double().tolist()))  # clean: the KL target
        q = softmax(logits(x_adv[i].flatten().double().tolist()))
        ce += -math.log(p[batch.y[i]])
        kl += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))  # KL(p_clean || p_adv)
    n = len(batch.y)
    expected = ce / n + 6.0 * kl / n
    assert abs(out["loss"].item() - expected) < 1e-5 * max(1.0, expected)
    assert kl > 0  # the case is not degenerate: the KL term matters


def test_trades_attack_maximizes_kl_from_the_clean_prediction():
    m, loader = make("trades")
    batch = next(iter(loader.epoch(0)))
    m.model.eval()
    with torch.no_grad():
        p = F.softmax(m.model(batch.x), 1)
    x_adv = m.pgd(batch.x, None, steps=m.hp.steps, step_size=m.hp.step_size, loss="kl")
    with torch.no_grad():
        kl_adv = F.kl_div(F.log_softmax(m.model(x_adv), 1), p, reduction="sum")
        x_rand = torch.clamp(batch.x + EPS * torch.randn_like(batch.x).sign(), 0, 1)
        kl_rand = F.kl_div(F.log_softmax(m.model(x_rand), 1), p, reduction="sum")
    assert (x_adv - batch.x).abs().max() <= EPS + 1e-6
    assert kl_adv > kl_rand


# -- Free-AT -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rebox", [False, True])
def test_free_at_replay_updates_persistent_delta_with_signed_gradient(rebox):
    m, loader = make("free_at", hp={"replays": 1, "rebox_carried": rebox})
    b1, b2 = list(loader.epoch(0))[:2]
    m.train_step(b1, StepInfo(0, 0, 0))
    carried = m.delta.clone()
    assert carried.abs().max() > 0  # the first batch left a perturbation behind...

    # ...and the second batch starts from it: as run (train_free.py:97) the carried delta as it is, boxed for the
    # previous images; with rebox_carried, boxed for these. The expected update, computed independently.
    ref = copy.deepcopy(m.model).train()
    d0 = carried[: len(b2.y)]
    if rebox:
        d0 = torch.max(torch.min(d0, 1 - b2.x), -b2.x)
    else:
        assert ((b2.x + d0 < 0) | (b2.x + d0 > 1)).any()  # the case where the two differ occurs here
    d0 = d0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(ref(b2.x + d0), b2.y), [d0])
    expected = torch.clamp(d0.detach() + EPS * grad.sign(), -EPS, EPS)
    expected = torch.max(torch.min(expected, 1 - b2.x), -b2.x)
    m.train_step(b2, StepInfo(0, 1, 1))
    torch.testing.assert_close(m.delta[: len(b2.y)], expected, rtol=0, atol=1e-7)
    assert m.delta.abs().max() <= EPS + 1e-7
    assert (b2.x + m.delta[: len(b2.y)]).min() >= 0 and (b2.x + m.delta[: len(b2.y)]).max() <= 1


def test_free_at_takes_m_optimizer_steps_per_batch_at_per_replay_lrs():
    train = TrainConfig(epochs=2, batch_size=8, lr=0.04, schedule="cyclic", cyclic_peak=0.5)
    m, loader = make("free_at", train=train)
    (opt,) = m.optimizers
    lrs = []
    real_step = opt.step
    opt.step = lambda *a, **k: (lrs.append(opt.param_groups[0]["lr"]), real_step(*a, **k))[1]
    batch = list(loader.epoch(0))[1]
    m.train_step(batch, StepInfo(0, 1, 1))
    assert len(lrs) == 8
    spe = len(loader)
    assert lrs == [lr_at(train, 0, 1 * 8 + r, spe * 8) for r in range(8)]
    assert lrs[0] < lrs[-1]  # the cyclic ramp moves within a batch


def test_free_at_smaller_last_batch_uses_first_rows_of_delta():
    m, loader = make("free_at", hp={"replays": 2})
    batch = next(iter(loader.epoch(0)))
    small = type(batch)(x=batch.x[:3], y=batch.y[:3], idx=batch.idx[:3], dx=None, dy=None, flip=None)
    m.train_step(small, StepInfo(0, 0, 0))
    assert m.delta[:3].abs().max() > 0 and torch.equal(m.delta[3:], torch.zeros_like(m.delta[3:]))


# -- FGSM-GA -----------------------------------------------------------------------------------------------
def test_grad_align_penalty_zero_for_parallel_positive_otherwise_and_drops_zero_grads():
    g = torch.Generator().manual_seed(0)
    g1 = torch.randn(6, 3, 4, 4, generator=g)
    assert grad_align_penalty(g1, 2.5 * g1).abs() < 1e-6
    g2 = torch.randn(6, 3, 4, 4, generator=g)
    assert grad_align_penalty(g1, g2) > 0.5  # random directions in 48-d: cos ~ 0
    # A sample whose gradient is zero is dropped, not counted as cos = 0.
    z1, z2 = g1.clone(), g2.clone()
    z1[2] = 0
    keep = [0, 1, 3, 4, 5]
    expected = 1 - F.cosine_similarity(g1[keep].flatten(1), g2[keep].flatten(1)).mean()
    torch.testing.assert_close(grad_align_penalty(z1, z2), expected)
    z2[4] = 0
    keep = [0, 1, 3, 5]
    expected = 1 - F.cosine_similarity(g1[keep].flatten(1), g2[keep].flatten(1)).mean()
    torch.testing.assert_close(grad_align_penalty(z1, z2), expected)
    assert grad_align_penalty(torch.zeros_like(g1), g2) == 0  # all dropped: zero, not NaN


def test_fgsm_ga_regularizer_vanishes_for_binary_linear_model_not_for_cnn():
    # Binary logistic model: grad_x CE = (p1 - [y=1]) (w1 - w0), so the gradients at x and x + eta are parallel
    # (with the full gradient at saturated pixels: the as-run g1 is zero there, see the next test).
    m, loader = make("fgsm_ga", model=linear_model(classes=2), classes=2, hp={"saturated_grad": "full"})
    batch = next(iter(loader.epoch(0)))
    out = m.loss(batch, StepInfo(0, 0, 0))
    assert out["grad_align"].abs() < 1e-5
    torch.testing.assert_close(out["loss"], out["ce"] + 0.2 * out["grad_align"])

    m, loader = make("fgsm_ga")
    batch = next(iter(loader.epoch(0)))
    out = m.loss(batch, StepInfo(0, 0, 0))
    assert out["grad_align"] > 1e-3
    # Double backprop: the regularizer itself has a gradient w.r.t. the weights.
    w = m.model.classifier.weight
    (gw,) = torch.autograd.grad(out["grad_align"], [w])
    assert gw.abs().sum() > 0


@pytest.mark.parametrize("rule,factor", [("zero", 0.0), ("half", 0.5), ("full", 1.0)])
def test_fgsm_ga_trains_on_fgsm_from_zero_in_train_mode(rule, factor):
    m, loader = make("fgsm_ga", hp={"grad_align_lambda": 0.0, "saturated_grad": rule})
    batch = next(iter(loader.epoch(0)))
    saturated = (batch.x == 0) | (batch.x == 1)
    assert saturated.float().mean() > 0.05  # zero padding of the random crop
    ref = copy.deepcopy(m.model).train()
    x = batch.x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(ref(x), batch.y), [x])
    # train.py:152 takes the FGSM gradient through clamp(x + 0, 0, 1) = max(min(x, 1), 0): a pixel on the bound
    # gets none of it in torch 1.4 (as run), half in torch >= 1.10, all of it without the clamp.
    g = torch.where(saturated, factor * g, g)
    x_adv = torch.clamp(batch.x + EPS * g.sign(), 0, 1)
    if rule == "zero":
        assert torch.equal(x_adv[saturated], batch.x[saturated])  # as run: saturated pixels are not perturbed
    expected = F.cross_entropy(ref(x_adv), batch.y)
    out = m.loss(batch, StepInfo(0, 0, 0))
    torch.testing.assert_close(out["loss"], expected)


def test_fgsm_ga_rejects_an_unknown_saturated_grad_rule():
    with pytest.raises(MethodError, match="saturated_grad"):
        make("fgsm_ga", hp={"saturated_grad": "quarter"})


# -- ATAS --------------------------------------------------------------------------------------------------
def test_atas_step_size_formula_and_both_clamps():
    v = torch.tensor([0.0, 1e-4, 1e6])
    got = step_sizes(v, 16 / 255, 0.01, 4 / 255, 14 / 255)  # adv_attack.py:48: the literal 2 * 8/255
    torch.testing.assert_close(got, torch.tensor([14 / 255, 16 / 255 / 2, 4 / 255]))  # max clamp, 8/255, min clamp

    # Through the method, after warm-up: a huge stored v gives the minimum step, a huge c the maximum.
    for hp, v_prev, expected in (({}, 1e6, 4 / 255), ({"c": 1e9}, 0.0, 14 / 255)):
        m, loader = make("atas", epochs=30, hp=hp)
        batch = next(iter(loader.epoch(0)))
        m.v[batch.idx] = v_prev
        ref = copy.deepcopy(m.model).eval()
        x0 = torch.clamp(batch.x + _crop_reference(m.delta, batch), 0, 1).requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(ref(x0), batch.y), [x0])
        out = m.loss(batch, StepInfo(epoch=10, step=0, global_step=0))
        torch.testing.assert_close(out["step_size"], torch.tensor(expected))
        # the logged clamp fractions (the loop averages them per epoch)
        assert (float(out["step_at_min"]), float(out["step_at_max"])) == ((1.0, 0.0) if expected < EPS else (0.0, 1.0))
        torch.testing.assert_close(out["grad_norm"], g.flatten(1).norm(dim=1).mean())
        torch.testing.assert_close(m.v[batch.idx], 0.5 * v_prev + 0.5 * g.flatten(1).pow(2).sum(1))


def _crop_reference(buf, batch):
    """The ATAS code's aug(): per-example window [dy:dy+H, dx:dx+W] of the padded buffer, then a width flip."""
    h, w = batch.x.shape[2:]
    out = []
    for i, j in enumerate(batch.idx.tolist()):
        win = buf[j, :, batch.dy[i]:batch.dy[i] + h, batch.dx[i]:batch.dx[i] + w]
        out.append(torch.flip(win, [2]) if batch.flip[i] else win)
    return torch.stack(out)


def test_atas_crop_index_matches_the_loader():
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(16, 3, S, S, generator=g)
    dx, dy = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    rows, cols = crop_index(dx, dy, flip, S, S)
    padded = F.pad(imgs, (PAD,) * 4)
    gathered = padded[torch.arange(16).view(-1, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1),
                      rows.view(16, 1, S, 1), cols.view(16, 1, 1, S)]
    assert torch.equal(gathered, augment_crop_flip(imgs, dx, dy, flip, PAD))


def test_atas_stored_delta_follows_crop_and_flip():
    m, loader = make("atas", epochs=30)
    batch = next(b for b in loader.epoch(0) if b.flip.any() and not b.flip.all())
    before = m.delta.clone()
    seen = []
    hook = m.model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    m.loss(batch, StepInfo(epoch=10, step=0, global_step=0))
    hook.remove()
    x0, x_adv = seen  # the attack's input, then the training input
    torch.testing.assert_close(x0, torch.clamp(batch.x + _crop_reference(before, batch), 0, 1), rtol=0, atol=0)
    used = x_adv - batch.x
    assert used.abs().max() <= EPS + 1e-6 and (used - (x0 - batch.x)).abs().max() > 0
    h, w = batch.x.shape[2:]
    untouched = torch.ones_like(m.delta, dtype=torch.bool)
    for i, j in enumerate(batch.idx.tolist()):
        dy, dx = int(batch.dy[i]), int(batch.dx[i])
        window = m.delta[j, :, dy:dy + h, dx:dx + w]
        unflipped = torch.flip(used[i], [2]) if batch.flip[i] else used[i]
        torch.testing.assert_close(window, unflipped, rtol=0, atol=0)
        untouched[j, :, dy:dy + h, dx:dx + w] = False
    assert torch.equal(m.delta[untouched], before[untouched])  # the rest of the padded buffer is kept


def test_atas_warmup_uses_eps_and_leaves_v_alone_then_adapts():
    m, loader = make("atas", epochs=30)
    assert [e for e in range(30) if m.warming_up(e)] == [0, 1, 2, 3, 4]
    assert [e for e in range(30) if m.resets_at(e)] == [9, 19]  # 1-based epochs 10 and 20, not 30
    batch = next(iter(loader.epoch(0)))
    out = m.loss(batch, StepInfo(epoch=4, step=0, global_step=0))
    torch.testing.assert_close(out["step_size"], torch.tensor(EPS))
    assert out["step_at_min"] == 0 and out["step_at_max"] == 0  # no clamp in warm-up
    assert torch.equal(m.v, torch.zeros_like(m.v))
    out = m.loss(batch, StepInfo(epoch=5, step=0, global_step=0))
    assert (m.v[batch.idx] > 0).all()
    assert out["step_size"] != EPS


def test_atas_reset_is_pure_and_uniform_in_the_ball():
    m, _ = make("atas", epochs=30)
    m.delta.zero_()
    m.on_epoch_start(8)
    assert torch.equal(m.delta, torch.zeros_like(m.delta))  # no reset before epoch 10
    m.on_epoch_start(9)
    first = m.delta.clone()
    m.on_epoch_start(9)  # called again after a resume: same draw
    assert torch.equal(m.delta, first)
    assert first.abs().max() <= EPS and first.std() > EPS / 3  # U(-eps, eps) has std eps/sqrt(3)


@pytest.mark.parametrize("epochs,warmup,resets", [
    (1, [], []),  # one epoch: adaptive (the method itself); no epoch for a reset that is neither first nor last
    (2, [1], []),  # one warm-up and one adaptive epoch; a reset before the last epoch is never made (ATAS.py:165)
    (3, [1], [2]),  # the cpu grid's length: every phase once
    (30, [1, 2, 3, 4, 5], [10, 20]),  # exactly the code's
])
def test_atas_scaled_recipe_keeps_every_phase(epochs, warmup, resets):
    """Warm-up, adaptive epochs and resets (1-based epochs) of an E-epoch run with the recipe's defaults; the old
    rounding gave E = 3 no warm-up and resets before epochs 1 and 2."""
    m, _ = make("atas", epochs=epochs)
    assert [e + 1 for e in range(epochs) if m.warming_up(e)] == warmup
    assert [e + 1 for e in range(epochs) if m.resets_at(e)] == resets
    assert scaled_warmup(0, epochs) == 0 and scaled_resets(30, epochs) == ()  # a phase the recipe lacks stays out
    if epochs >= 2:
        assert any(not m.warming_up(e) for e in range(epochs))


@pytest.mark.parametrize("name", ["trades", "free_at", "fgsm_ga", "atas"])
def test_recipes_are_the_papers(name):
    r = get_method(name).recipe
    expected = {
        "trades": (76, 0.1, 2e-4, "piecewise"),
        "free_at": (10, 0.04, 5e-4, "cyclic"),
        "fgsm_ga": (30, 0.3, 5e-4, "cyclic"),
        "atas": (30, 0.1, 5e-4, "piecewise"),
    }[name]
    assert (r.epochs, r.lr, r.weight_decay, r.schedule) == expected
    assert r.batch_size == 128 and r.momentum == 0.9
