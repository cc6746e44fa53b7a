"""The properties that make AFKD, ARREST, RiFT and AFA what they are (the registry-wide checks are in
test_methods.py): RGKD's distance and its frozen teacher, ARREST's noisy-replay switch, RiFT's three stages, and
AFA's supervised contrastive loss and attack."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from bench.config import EvalConfig, TrainConfig
from bench.data import DatasetInfo, Loader, Split
from bench.evaluate import Evaluator
from bench.models import build_model
from methods import Context, StepInfo, get_method, make_hparams, resolve_hparams
from methods.afa import supcon_loss
from methods.arrest import use_noisy_replay
from methods.rift import interpolate_state, project_to_ball, select_alpha, worst_case_loss

N, C, S = 40, 4, 16
EPS = 8 / 255


def tiny_split(seed=0, n=N) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, S, S), generator=g, dtype=torch.uint8), torch.arange(n) % C)


def build(name, hp=None, epochs=2):
    cls = get_method(name)
    split = tiny_split()
    info = DatasetInfo(name="random", num_classes=C, channels=3, image_size=S, classes=tuple("abcd"))
    torch.manual_seed(0)
    parent = build_model("small_cnn", C, 3).eval() if cls.parent else None
    torch.manual_seed(1)
    model = build_model("small_cnn", C, 3)
    if parent is not None:
        model.load_state_dict(parent.state_dict())
    train = TrainConfig(epochs=epochs, batch_size=8, lr=0.05, schedule="constant")
    loader = Loader(split, 8, device="cpu", shuffle=True, augment=False, seed=0)
    ctx = Context(info=info, eps=EPS, device=torch.device("cpu"), epochs=epochs, steps_per_epoch=len(loader),
                  seed=0, train=split, parent_model=parent, train_cfg=train)
    m = cls(model, make_hparams(name, resolve_hparams(name, hp)), ctx)
    m.optimizers = m.configure_optimizers(train)
    return m, loader


def first_batch(loader):
    return next(iter(loader.epoch(0)))


def steps(m, loader, n, epoch=0):
    outs = []
    for i, b in enumerate(loader.epoch(epoch)):
        if i == n:
            break
        m.net.train()
        outs.append(m.train_step(b, StepInfo(epoch=epoch, step=i, global_step=i)))
    return outs


# -- AFKD ------------------------------------------------------------------------------------------------------
def test_afkd_rgkd_is_zero_when_student_is_teacher_and_x_adv_is_x():
    m, loader = build("afkd")
    b = first_batch(loader)
    m.net.eval()  # the teacher is in eval mode: the same weights in the same mode give the same features
    with torch.no_grad():
        out = m.rgkd_losses(b.x, b.x, b.y)
    assert abs(out["rgkd"].item()) < 1e-6
    torch.testing.assert_close(out["loss"], out["ce"] + 50 * out["rgkd"])


def test_afkd_rgkd_matches_hand_computation_on_clean_teacher_features():
    m, loader = build("afkd")
    b = first_batch(loader)
    x_adv = (b.x + 0.03 * torch.randn_like(b.x)).clamp(0, 1)
    with torch.no_grad():
        m.model.classifier.weight.mul_(1.5)  # any change of the student; the teacher must not follow
        m.model.fc.weight.add_(0.05 * torch.randn_like(m.model.fc.weight))
        out = m.rgkd_losses(b.x, x_adv, b.y)
        s = m.model.features(x_adv)
        t = m.ctx.parent_model.features(b.x)  # teacher on CLEAN x
    cos = [float(s[i] @ t[i]) / (float(s[i].norm()) * float(t[i].norm())) for i in range(len(s))]
    expected = sum(1 - c for c in cos) / len(cos)
    assert out["rgkd"].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert expected > 1e-4  # the case is not trivial


def test_afkd_teacher_is_frozen_and_outside_the_net():
    m, loader = build("afkd")
    teacher_before = copy.deepcopy(m._teacher.state_dict())
    assert all(not p.requires_grad for p in m._teacher.parameters())
    assert not any(p is q for p in m.net.parameters() for q in m._teacher.parameters())
    assert not any(k.startswith("_teacher") for k in m.net.state_dict())
    steps(m, loader, 2)
    assert all(torch.equal(v, teacher_before[k]) for k, v in m._teacher.state_dict().items())
    assert not torch.equal(m.model.classifier.weight, m._teacher.classifier.weight)  # the student did move


# -- ARREST ----------------------------------------------------------------------------------------------------
THR = 1 - math.cos(math.radians(30))


def test_noisy_replay_switches_exactly_at_the_threshold_in_the_first_half_only():
    below = torch.nextafter(torch.tensor(THR, dtype=torch.float32), torch.tensor(0.0))
    assert not use_noisy_replay(below, 0, 20, 30.0, 0.5)
    assert not use_noisy_replay(THR - 1e-9, 0, 20, 30.0, 0.5)
    assert use_noisy_replay(torch.tensor(THR, dtype=torch.float32), 0, 20, 30.0, 0.5)  # float32 d, like the code
    assert use_noisy_replay(THR, 0, 20, 30.0, 0.5)
    assert use_noisy_replay(1.0, 0, 20, 30.0, 0.5)
    # ARREST.py: epoch <= 10 (1-based) of 20, i.e. 0-based epochs 0..9
    assert [use_noisy_replay(1.0, e, 20, 30.0, 0.5) for e in range(20)] == [True] * 10 + [False] * 10
    assert [use_noisy_replay(1.0, e, 2, 30.0, 0.5) for e in range(2)] == [True, False]
    assert not use_noisy_replay(1.0, 0, 1, 30.0, 0.5)  # a 1-epoch run has no complete first-half epoch


@pytest.mark.parametrize("d, epoch, noise", [(THR - 1e-4, 0, False), (THR, 0, True), (0.9, 0, True),
                                             (0.9, 1, False)])
def test_arrest_step_uses_noise_or_pgd_as_the_switch_says(monkeypatch, d, epoch, noise):
    m, loader = build("arrest", epochs=2)
    b = first_batch(loader)
    monkeypatch.setattr(m, "replay_distance", lambda x, target=None: torch.tensor(d, dtype=torch.float32))
    calls = []
    real_pgd = m.pgd
    monkeypatch.setattr(m, "pgd", lambda *a, **k: calls.append(1) or real_pgd(*a, **k))
    seen = {}
    real_losses = m.rgkd_losses

    def spy(x, xt, y, target=None):
        seen["xt"] = xt
        return real_losses(x, xt, y, target)

    monkeypatch.setattr(m, "rgkd_losses", spy)
    out = m.loss(b, StepInfo(epoch=epoch, step=0, global_step=0))
    assert out["noise"].item() == float(noise)
    assert bool(calls) is (not noise)
    xt = seen["xt"]
    assert (xt - b.x).abs().max() <= EPS + 1e-6 and xt.min() >= 0 and xt.max() <= 1
    assert not torch.equal(xt, b.x)


def test_arrest_replay_distance_is_zero_at_start_and_restores_train_mode():
    m, loader = build("arrest")
    m.net.train()
    d = m.replay_distance(first_batch(loader).x)
    assert abs(d.item()) < 1e-6  # student == teacher, both in eval mode for d (ARREST.py)
    assert all(mod.training for mod in m.net.modules())


# -- RiFT ------------------------------------------------------------------------------------------------------
def test_project_to_ball():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(8, 4, 3, 3, generator=g)
    far = w0 + torch.randn(w0.shape, generator=g)
    p = project_to_ball(far, w0, 0.1)
    assert (p - w0).norm() / w0.norm() == pytest.approx(0.1, rel=1e-5)
    torch.testing.assert_close((p - w0) / (p - w0).norm(), (far - w0) / (far - w0).norm())  # same direction
    near = w0 + 0.01 * w0
    assert torch.equal(project_to_ball(near, w0, 0.1), near)


def test_mrc_perturbation_stays_in_the_ball_and_the_weight_is_restored():
    m, _ = build("rift")
    probe = copy.deepcopy(m.ctx.parent_model).eval()
    for p in probe.parameters():
        p.requires_grad_(False)
    split = tiny_split(seed=3, n=16)
    x, y = split.images.float() / 255, split.labels
    w_before = probe.get_parameter("body.2.0.weight").clone()
    worst, ratios = worst_case_loss(probe, "body.2.0.weight", x, y, ball=0.1, epochs=4, lr=100.0, batch_size=8,
                                    generator=torch.Generator().manual_seed(0))
    assert len(ratios) == 4 and all(r <= 0.1 + 1e-5 for r in ratios)
    assert max(ratios) == pytest.approx(0.1, rel=1e-4)  # lr 100 leaves the ball: the projection was needed
    assert torch.equal(probe.get_parameter("body.2.0.weight"), w_before)
    assert all(not p.requires_grad for p in probe.parameters())
    with torch.no_grad():
        base = F.cross_entropy(probe(x), y).item()
    assert worst > base  # the ascent found a worse point on the ball


def test_rift_picks_argmin_mrc_trains_only_that_module_and_resumes_without_recomputing(monkeypatch):
    m, loader = build("rift")
    m.on_epoch_start(0)
    assert set(m.mrc) == {n for n, mod in m.model.named_modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))}
    assert m.chosen == min(m.mrc, key=m.mrc.get)
    parent = m.ctx.parent_model.state_dict()
    steps(m, loader, 2)
    chosen_params = {f"{m.chosen}.{n}" for n, _ in m.model.get_submodule(m.chosen).named_parameters()}
    changed = {k for k, v in m.model.named_parameters() if not torch.equal(v, parent[k])}
    assert changed == chosen_params
    # resume: the state carries the choice and the MRC values; nothing is recomputed
    state = copy.deepcopy(m.state_dict())
    json.dumps(state)
    m2, _ = build("rift")
    monkeypatch.setattr(m2, "compute_mrc", lambda: pytest.fail("MRC recomputed after a resume"))
    m2.load_state_dict(state)
    m2.on_epoch_start(1)
    assert m2.chosen == m.chosen and m2.mrc == m.mrc
    assert {k for k, p in m2.model.named_parameters() if p.requires_grad} == chosen_params


def test_rift_module_hparam_skips_mrc(monkeypatch):
    m, _ = build("rift", {"module": "fc"})
    monkeypatch.setattr(m, "compute_mrc", lambda: pytest.fail("MRC computed although the module was given"))
    m.on_epoch_start(0)
    assert m.chosen == "fc" and {k for k, p in m.model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}


def test_interpolation_endpoints_are_the_two_models():
    m, loader = build("rift", {"module": "body.2.0"})
    m.on_epoch_start(0)
    steps(m, loader, 2)
    at = m.ctx.parent_model.state_dict()
    ft = m.model.state_dict()
    assert not torch.equal(at["body.2.0.weight"], ft["body.2.0.weight"])
    assert not torch.equal(at["body.0.1.running_mean"], ft["body.0.1.running_mean"])  # BN stats updated too
    for a, ref in ((0.0, at), (1.0, ft)):
        got = interpolate_state(at, ft, a)
        assert set(got) == set(ref)
        for k in ref:
            assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), (a, k)
    mid = interpolate_state(at, ft, 0.5)
    torch.testing.assert_close(mid["body.2.0.weight"], (at["body.2.0.weight"] + ft["body.2.0.weight"]) / 2)


def test_select_alpha_rule_on_a_hand_made_curve():
    def curve(points):
        return [{"a": a, "clean": c, "robust": r} for a, c, r in points]

    pts = [(0.0, 0.78, 0.500), (0.1, 0.80, 0.499), (0.2, 0.86, 0.495), (0.3, 0.83, 0.501), (0.4, 0.83, 0.520),
           (0.5, 0.81, 0.500)]
    # 0.2 has the best clean accuracy but loses 0.5 points of robustness; 0.3 and 0.4 tie, the smaller a wins
    assert select_alpha(curve(pts), 0.001) == 0.3
    # a drop of exactly the tolerance is allowed
    assert select_alpha(curve([(0.0, 0.70, 0.500), (0.1, 0.75, 0.499)]), 0.001) == 0.1
    # nothing better without losing robustness: stay at theta_AT
    assert select_alpha(curve([(0.0, 0.80, 0.50), (0.5, 0.90, 0.40), (1.0, 0.79, 0.55)]), 0.001) == 0.0
    # a looser tolerance admits 0.2
    assert select_alpha(curve(pts), 0.006) == 0.2


def test_rift_finalize_sets_the_chosen_interpolation_and_returns_json():
    m, loader = build("rift", {"module": "classifier", "select_pgd_steps": 2})
    m.on_epoch_start(0)
    steps(m, loader, 3)
    at = copy.deepcopy(m.ctx.parent_model.state_dict())
    ft = copy.deepcopy(m.model.state_dict())
    test = tiny_split(seed=9, n=8)
    ev = Evaluator(test, EvalConfig(n_clean=8, n_pgd=8, n_aa=0, pgd_steps=2, batch_size=8), EPS, torch.device("cpu"))
    extra = m.finalize(m.net, ev)
    json.dumps(extra)
    assert [p["a"] for p in extra["rift_curve"]] == [i / 10 for i in range(11)]
    assert extra["rift_alpha"] == select_alpha(extra["rift_curve"], 0.001)
    want = interpolate_state(at, ft, extra["rift_alpha"])
    assert all(torch.equal(v, want[k]) for k, v in m.model.state_dict().items())
    # the a = 0 point is the parent on the held-out TRAINING subset
    held = m.heldout()
    assert len(held) == math.ceil(0.1 * N)
    with torch.no_grad():
        acc0 = (m.ctx.parent_model(held.images.float() / 255).argmax(1) == held.labels).float().mean().item()
    assert extra["rift_curve"][0]["clean"] == pytest.approx(acc0)


# -- AFA -------------------------------------------------------------------------------------------------------
def test_supcon_matches_hand_computation():
    raw = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, 0.6], [0.3, -0.9]])
    z = F.normalize(raw, dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2])  # the last anchor has no positive: left out
    tau = 0.1
    sims = [[float(z[i] @ z[j]) / tau for j in range(5)] for i in range(5)]
    terms = []
    for i in range(5):
        pos = [p for p in range(5) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(sims[i][a]) for a in range(5) if a != i)
        terms.append(-sum(math.log(math.exp(sims[i][p]) / denom) for p in pos) / len(pos))
    expected = sum(terms) / len(terms)
    assert supcon_loss(z, labels, tau).item() == pytest.approx(expected, rel=1e-5)


def test_supcon_gradient_is_finite_and_pulls_positives_together():
    z = F.normalize(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)), dim=1).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = supcon_loss(z, labels, 0.1)
    (g,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(g).all()
    with torch.no_grad():
        moved = F.normalize(z - 0.05 * g, dim=1)
    assert supcon_loss(moved, labels, 0.1) < loss


def test_afa_attack_increases_the_contrastive_loss_and_stays_in_the_ball():
    m, loader = build("afa")
    steps(m, loader, 2)  # a slightly trained model
    b = first_batch(loader)
    x_adv = m.attack(b.x, b.y)
    assert (x_adv - b.x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    m.embed.eval()
    labels = torch.cat([b.y, b.y])
    with torch.no_grad():
        z_clean = m.embed(b.x)
        at_x = supcon_loss(torch.cat([z_clean, m.embed(b.x)]), labels, 0.1)
        noise = (b.x + torch.empty_like(b.x).uniform_(-EPS, EPS)).clamp(0, 1)
        at_noise = supcon_loss(torch.cat([z_clean, m.embed(noise)]), labels, 0.1)
        at_adv = supcon_loss(torch.cat([z_clean, m.embed(x_adv)]), labels, 0.1)
    assert at_adv > at_x and at_adv > at_noise


@pytest.mark.parametrize("hp", [{"trades_beta": 6.0}, {"proj_dim": 16}])
def test_afa_variants_train_everything_and_export_the_plain_classifier(hp):
    m, loader = build("afa", hp)
    before = {k: v.clone() for k, v in m.net.named_parameters()}
    outs = steps(m, loader, 2)
    assert all(torch.isfinite(v).all() for o in outs for v in o.values())
    if hp.get("trades_beta"):
        assert "kl" in outs[0]
    assert ("proj" in m.net) is bool(hp.get("proj_dim"))
    assert all(not torch.equal(v, before[k]) for k, v in m.net.named_parameters())
    plain = m.export(m.net)
    assert plain is m.net["model"] and type(plain).__name__ == "SmallCNN"
