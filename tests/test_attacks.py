"""Tests for bench.eval.attacks: threat-model guarantees, model-state hygiene, and AutoAttack's worst case.

The AutoAttack tests use a LINEAR model on well-separated synthetic data, where the exact L-inf robustness of
every example has a closed form; this lets us check AutoAttack's flags against ground truth and, because
APGD-CE leaves some points robust, it exercises the APGD-T path (the one with the .view pitfall).
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.eval.attacks import autoattack, fgsm, pgd

EPS = 8 / 255


@pytest.fixture(autouse=True)
def _single_thread():
    # Every model here is tiny: intra-op threads only add overhead, and on a shared 2-core machine thread
    # contention made AutoAttack ~8x slower (measured 3 s -> 30 s). Restore the setting after each test.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _small_net(num_classes=10):
    # BN + dropout: both behave differently in train and eval mode, so mode handling matters.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(32, num_classes),
    )


def _data(n=16, c=3, h=8, num_classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, h, generator=g)
    x[0] = 0.0  # pixels at the box boundary exercise the [0, 1] clamp
    x[1] = 1.0
    return x, torch.randint(0, num_classes, (n,), generator=g)


def _assert_threat_model(x_adv, x, eps):
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("loss", ["ce", "kl", lambda logits, y: -F.cross_entropy(logits, y)])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_ball_and_box(loss, random_start):
    model = _small_net()
    x, y = _data()
    x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=5, random_start=random_start, loss=loss)
    _assert_threat_model(x_adv, x, EPS)
    assert not torch.equal(x_adv, x)


def _linear_model(in_dim=3 * 8 * 8, num_classes=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_dim, num_classes))


def test_pgd_increases_loss_on_linear_model():
    # CE of a linear model is convex in x, and every projected sign step moves each coordinate along the
    # gradient's sign (or not at all), so the per-example loss can never go down: a strict, exact check.
    model = _linear_model()
    x, y = _data(num_classes=5)
    x_adv = pgd(model, x, y, eps=EPS, step_size=EPS / 4, steps=10, random_start=False)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert (adv >= clean - 1e-5).all()
    assert adv.mean() > clean.mean() + 0.01
    # With a random start too, the attack is clearly better than clean on average.
    x_rs = pgd(model, x, y, eps=EPS, step_size=EPS / 4, steps=10, random_start=True)
    with torch.no_grad():
        assert F.cross_entropy(model(x_rs), y) > F.cross_entropy(model(x), y)


def test_pgd_kl_moves_output_distribution():
    model = _small_net().eval()
    x, y = _data()
    x_adv = pgd(model, x, None, eps=EPS, step_size=0.007, steps=5, loss="kl")
    _assert_threat_model(x_adv, x, EPS)
    with torch.no_grad():
        kl_start = F.kl_div(F.log_softmax(model(x + 0.001 * torch.randn_like(x)), 1), F.softmax(model(x), 1), reduction="sum")
        kl_adv = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="sum")
    assert kl_adv > kl_start


def _modes(model):
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("start_mode", ["train", "eval", "mixed"])
def test_pgd_restores_modes_and_leaves_no_grads(start_mode):
    model = _small_net()
    model.train(start_mode != "eval")
    if start_mode == "mixed":
        model[1].eval()  # e.g. a frozen BN inside a training model must stay as it was
    model[0].bias.requires_grad_(False)  # a frozen parameter must stay frozen
    before_modes = _modes(model)
    before_flags = [p.requires_grad for p in model.parameters()]
    seen = []

    def spy(logits, y):
        seen.append(_modes(model))
        return F.cross_entropy(logits, y)

    x, y = _data()
    pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2, loss=spy)
    assert all(not any(m) for m in seen)  # attacked in eval mode
    assert _modes(model) == before_modes
    assert [p.requires_grad for p in model.parameters()] == before_flags
    assert all(p.grad is None for p in model.parameters())


def test_pgd_eval_mode_false_keeps_train_mode():
    model = _small_net().train()
    seen = []

    def spy(logits, y):
        seen.append(model.training)
        return F.cross_entropy(logits, y)

    x, y = _data()
    pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2, loss=spy, eval_mode=False)
    assert seen == [True, True] and model.training


@pytest.mark.parametrize("start_train", [True, False])
def test_pgd_restores_state_after_exception(start_train):
    model = _small_net().train(start_train)
    before_modes = _modes(model)

    def broken(logits, y):
        raise RuntimeError("loss exploded")

    x, y = _data()
    with pytest.raises(RuntimeError, match="loss exploded"):
        pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3, loss=broken)
    assert _modes(model) == before_modes
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_pgd_works_under_no_grad_and_is_reproducible():
    model = _small_net().eval()
    x, y = _data()
    with torch.no_grad():  # evaluation loops usually run under no_grad; the attack needs autograd anyway
        a = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(1))
    b = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_pgd_rejects_unknown_loss():
    model = _small_net()
    x, y = _data()
    with pytest.raises(ValueError, match="unknown PGD loss"):
        pgd(model, x, y, eps=EPS, step_size=1 / 255, steps=1, loss="cw")


@pytest.mark.parametrize("random_start", [False, True])
def test_fgsm_in_ball(random_start):
    model = _small_net()
    x, y = _data()
    x_adv = fgsm(model, x, y, eps=EPS, random_start=random_start, step_size=1.25 * EPS if random_start else None)
    _assert_threat_model(x_adv, x, EPS)
    if not random_start:
        # From zero with step eps every pixel not clipped by [0, 1] ends on the sphere of the ball.
        interior = (x > EPS) & (x < 1 - EPS)
        assert torch.allclose((x_adv - x)[interior].abs(), torch.full_like(x[interior], EPS), atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------------------------
# AutoAttack
# ------------------------------------------------------------------------------------------------------------
def _separable_problem(n=30, num_classes=10, c=3, h=8, eps=0.1, seed=0):
    """Linear 'conv' model (kernel = whole image) with +-1 class prototypes, and images 0.5 + a * prototype.

    The amplitude a grows from 0.02 to 0.3, so points with a < ~eps are breakable and the rest are robust.
    Returns model, x, y and the EXACT robust flags of the linear model (box constraints are inactive here).
    """
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 2, (num_classes, c, h, h), generator=g).float() * 2 - 1
    y = torch.arange(n) % num_classes
    x = 0.5 + torch.linspace(0.02, 0.3, n).view(-1, 1, 1, 1) * protos[y]
    conv = nn.Conv2d(c, num_classes, h)  # 3 input channels: channels_last strides are not degenerate
    with torch.no_grad():
        conv.weight.copy_(protos)
        conv.bias.copy_(-0.5 * protos.flatten(1).sum(1))
    model = nn.Sequential(conv, nn.Flatten()).eval()
    w = protos.flatten(1)
    with torch.no_grad():
        logits = model(x)
        margin = logits.gather(1, y[:, None]) - logits
        # Worst case of (w_y - w_j).x over the L-inf ball is the margin minus eps * ||w_y - w_j||_1.
        worst = margin - eps * (w[y][:, None, :] - w[None]).abs().sum(-1)
        worst[torch.arange(n), y] = float("inf")
    return model, x, y, worst.min(1).values > 0


def test_autoattack_worst_case_matches_exact_robustness():
    eps = 0.1
    model, x, y, exact = _separable_problem(eps=eps)
    y = y.clone()
    y[-1] = (y[-1] + 1) % 10  # a high-margin (robust) point with a wrong label: clean-wrong must count as non-robust
    exact[-1] = False
    assert 0.3 < exact.float().mean() < 0.9  # some points robust, some not: APGD-T and later attacks really run

    out = autoattack(model, x, y, eps=eps, seed=0)
    robust, x_adv = out["robust"], out["x_adv"]
    assert robust.dtype == torch.bool and robust.shape == (len(x),)
    assert out["accuracy"] == pytest.approx(robust.float().mean().item())
    _assert_threat_model(x_adv, x, eps)
    assert not robust[-1]
    # Sound (never flags a breakable point robust: re-prediction on x_adv) and, on a linear model, complete.
    assert torch.equal(robust, exact)

    with torch.no_grad():
        clean_acc = (model(x).argmax(1) == y).float().mean().item()
        x_pgd = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=20)
        pgd_acc = (model(x_pgd).argmax(1) == y).float().mean().item()
    assert out["accuracy"] <= pgd_acc <= clean_acc


def test_autoattack_channels_last_model_and_input():
    # The measured pitfall: non-contiguous (channels_last) input gradients crash APGD-T's .view.
    eps = 0.1
    model, x, y, exact = _separable_problem(eps=eps)
    model = model.to(memory_format=torch.channels_last).train()  # also check the mode is restored
    x_cl = x.contiguous(memory_format=torch.channels_last)
    rng_before = torch.get_rng_state()
    out = autoattack(model, x_cl, y, eps=eps, seed=0)
    assert torch.equal(out["robust"], exact)
    # The caller's model is handed back as it came: channels_last weights, train mode, trainable, no grads.
    w = model[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    # AutoAttack reseeds the global RNG internally; the wrapper must not leak that into the caller's stream.
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_autoattack_fewer_than_ten_classes():
    # Standard AA targets 9 classes in APGD-T/FAB-T; with 4 classes the wrapper caps the targets at 3.
    eps = 0.1
    model, x, y, exact = _separable_problem(n=12, num_classes=4, eps=eps)
    out = autoattack(model, x, y, eps=eps, seed=0)
    assert torch.equal(out["robust"], exact)
