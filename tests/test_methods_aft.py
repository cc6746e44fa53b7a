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

from bench.core.config import EvalConfig, TrainConfig
from bench.data import DatasetInfo, Loader, Split
from bench.eval.evaluator import Evaluator
from bench.models.architectures import build_model
from methods import build_method, Context, StepInfo, get_method, make_hparams, resolve_hparams
from methods.base import MethodError
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
    m = build_method(cls, model, make_hparams(name, resolve_hparams(name, hp)), ctx, train)
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
@pytest.mark.parametrize("batch_stats", [True, False])
def test_afkd_rgkd_is_zero_when_student_is_teacher_and_x_adv_is_x(batch_stats):
    m, loader = build("afkd", {"teacher_batch_stats": batch_stats})
    b = first_batch(loader)
    # the same weights in the same BatchNorm mode give the same features: batch statistics (ARREST.py's train-mode
    # teacher, the default) or running statistics (teacher_batch_stats=False)
    m.net.train(batch_stats)
    with torch.no_grad():
        out = m.rgkd_losses(b.x, b.x, b.y)
    assert abs(out["rgkd"].item()) < 1e-6
    torch.testing.assert_close(out["loss"], out["ce"] + 50 * out["rgkd"])


@pytest.mark.parametrize("batch_stats", [True, False])
def test_afkd_rgkd_matches_hand_computation_on_clean_teacher_features(batch_stats):
    m, loader = build("afkd", {"teacher_batch_stats": batch_stats})
    b = first_batch(loader)
    x_adv = (b.x + 0.03 * torch.randn_like(b.x)).clamp(0, 1)
    with torch.no_grad():
        m.model.classifier.weight.mul_(1.5)  # any change of the student; the teacher must not follow
        m.model.fc.weight.add_(0.05 * torch.randn_like(m.model.fc.weight))
        out = m.rgkd_losses(b.x, x_adv, b.y)
        s = m.model.features(x_adv)
        t = copy.deepcopy(m.ctx.parent_model).train(batch_stats).features(b.x)  # teacher on CLEAN x, in its mode
    cos = [float(s[i] @ t[i]) / (float(s[i].norm()) * float(t[i].norm())) for i in range(len(s))]
    expected = sum(1 - c for c in cos) / len(cos)
    assert out["rgkd"].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert expected > 1e-4  # the case is not trivial


@pytest.mark.parametrize("batch_stats", [True, False])
def test_afkd_teacher_is_frozen_and_outside_the_net(batch_stats):
    m, loader = build("afkd", {"teacher_batch_stats": batch_stats})
    teacher_before = copy.deepcopy(m._teacher.state_dict())
    assert all(not p.requires_grad for p in m._teacher.parameters())
    assert not any(p is q for p in m.net.parameters() for q in m._teacher.parameters())
    assert not any(k.startswith("_teacher") for k in m.net.state_dict())
    steps(m, loader, 2)
    # parameters AND running statistics: a batch-statistics teacher does not track them (ARREST.py's drift is unread)
    assert all(torch.equal(v, teacher_before[k]) for k, v in m._teacher.state_dict().items())
    assert m._teacher.training is batch_stats
    assert not torch.equal(m.model.classifier.weight, m._teacher.classifier.weight)  # the student did move


@pytest.mark.parametrize("name", ["vaft", "afkd", "arrest"])
@pytest.mark.parametrize("clamp", [False, True])
def test_aft_attacks_pass_clamp_start(monkeypatch, name, clamp):
    import bench.eval.attacks
    import methods.base

    m, loader = build(name, {"clamp_start": clamp, **({"theta_deg": 89.0} if name == "arrest" else {})})
    seen = []
    real = bench.eval.attacks.pgd
    monkeypatch.setattr(methods.base, "pgd", lambda *a, **k: seen.append(k) or real(*a, **k))
    steps(m, loader, 1)
    assert [(k["clamp_start"], k["steps"], k["step_size"]) for k in seen] == [(clamp, 10, 2 / 255)]


# -- ARREST ----------------------------------------------------------------------------------------------------
THR = 1 - math.cos(math.radians(30))


def test_noisy_replay_switches_exactly_at_the_threshold_in_the_first_half_only():
    below = torch.nextafter(torch.tensor(THR, dtype=torch.float32), torch.tensor(0.0))
    assert not use_noisy_replay(below, 0, 20, 30.0, 0.5)
    assert not use_noisy_replay(THR - 1e-9, 0, 20, 30.0, 0.5)
    assert use_noisy_replay(torch.tensor(THR, dtype=torch.float32), 0, 20, 30.0, 0.5)  # float32 d, like the code
    assert use_noisy_replay(THR, 0, 20, 30.0, 0.5)
    assert use_noisy_replay(1.0, 0, 20, 30.0, 0.5)
    # ARREST.py: epoch <= 10 (1-based) of 20, i.e. iterations of 0-based epochs 0..9 (here 5 per epoch)
    assert [use_noisy_replay(1.0, t, 100, 30.0, 0.5) for t in range(100)] == [True] * 50 + [False] * 50
    # scaled runs keep both phases: a fraction of the run's ITERATIONS (bench.core.schedules.milestone_iteration)
    assert [use_noisy_replay(1.0, t, 5, 30.0, 0.5) for t in range(5)] == [True] * 2 + [False] * 3
    assert [use_noisy_replay(1.0, t, 2, 30.0, 0.5) for t in range(2)] == [True, False]
    assert [use_noisy_replay(1.0, t, 15, 30.0, 0.5) for t in range(15)] == [True] * 8 + [False] * 7
    assert not any(use_noisy_replay(1.0, t, 10, 30.0, 0.0) for t in range(10))
    assert all(use_noisy_replay(1.0, t, 10, 30.0, 1.0) for t in range(10))


def test_arrest_rejects_a_replay_fraction_outside_0_1():
    with pytest.raises(MethodError, match="replay_fraction must be <= 1"):
        build("arrest", {"replay_fraction": 1.5})


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
    out = m.loss(b, StepInfo(epoch=epoch, step=0, global_step=epoch * m.ctx.steps_per_epoch))
    assert out["noise"].item() == float(noise)
    assert bool(calls) is (not noise)
    xt = seen["xt"]
    assert (xt - b.x).abs().max() <= EPS + 1e-6 and xt.min() >= 0 and xt.max() <= 1
    assert not torch.equal(xt, b.x)


@pytest.mark.parametrize("batch_stats", [True, False])
def test_arrest_replay_distance_at_start_and_restores_train_mode(batch_stats):
    m, loader = build("arrest", {"teacher_batch_stats": batch_stats})
    m.net.train()
    x = first_batch(loader).x
    d = m.replay_distance(x)
    assert all(mod.training for mod in m.net.modules())
    if not batch_stats:
        assert abs(d.item()) < 1e-6  # student == teacher, both with running statistics
    else:  # ARREST.py:163-169: the train-mode teacher (batch statistics) against the eval-mode student
        with torch.no_grad():
            t = copy.deepcopy(m.ctx.parent_model).train().features(x)
            s = copy.deepcopy(m.model).eval().features(x)
        torch.testing.assert_close(d, (1 - F.cosine_similarity(t, s, dim=1)).mean())
        assert d.item() > 1e-3


# -- RiFT ------------------------------------------------------------------------------------------------------
def _rift_on(model_name, dataset, hp=None):
    """RiFT's constructor on a given architecture and data set name (the module choice happens there)."""
    from methods.rift import RiFT

    torch.manual_seed(0)
    parent = build_model(model_name, C, 3).eval()
    model = copy.deepcopy(parent)
    info = DatasetInfo(name=dataset, num_classes=C, channels=3, image_size=S, classes=tuple("abcd"))
    ctx = Context(info=info, eps=EPS, device=torch.device("cpu"), epochs=1, steps_per_epoch=1, seed=0,
                  train=tiny_split(), parent_model=parent, train_cfg=TrainConfig())
    return RiFT(model, make_hparams("rift", resolve_hparams("rift", hp)), ctx)


def test_rift_uses_the_readme_module_for_resnet18_and_wrn34_10():
    from methods.rift import published_module

    for dataset, name, width in (("cifar10", "layer2.1.conv2", 128), ("cifar10-jpeg", "layer2.1.conv2", 128),
                                 ("cifar100", "layer2.1.conv2", 128), ("tiny-imagenet", "layer3.1.conv2", 256)):
        m = _rift_on("resnet18", dataset)
        assert (m.chosen, m.module_source) == (name, "published"), dataset
        conv = m.model.get_submodule(name)  # the same layer as RiFT's ResNet18: 2nd conv of the stage's 2nd block
        assert isinstance(conv, torch.nn.Conv2d) and conv.in_channels == conv.out_channels == width
        assert {k for k, p in m.model.named_parameters() if p.requires_grad} == {f"{name}.weight"}
    wrn = build_model("wrn34_10", C, 3)
    assert published_module(wrn, "cifar10") == "block1.layer.3.conv2"
    assert published_module(wrn, "cifar100") == published_module(wrn, "tiny-imagenet") == "block1.layer.2.conv2"
    assert wrn.get_submodule("block1.layer.3.conv2").out_channels == 160
    # nothing published: small_cnn anywhere, resnet18 on digits, other ResNets
    assert published_module(build_model("small_cnn", C, 3), "cifar10") is None
    assert published_module(build_model("resnet18", C, 3), "digits") is None
    assert published_module(build_model("resnet50", C, 3), "cifar10") is None
    # the rule can be forced to MRC, or the module named
    m = _rift_on("resnet18", "cifar10", {"module_rule": "mrc"})
    assert m.chosen is None  # MRC at the first epoch start
    m = _rift_on("resnet18", "cifar10", {"module": "layer3.0.conv1"})
    assert (m.chosen, m.module_source) == ("layer3.0.conv1", "hparam")
    with pytest.raises(MethodError, match="module_rule"):
        _rift_on("small_cnn", "cifar10", {"module_rule": "argmin"})


def test_rift_mrc_argmin_leaves_out_the_head_unless_asked(monkeypatch):
    values = {"body.0.0": 0.62, "body.2.0": 0.57, "body.4.0": 2.19, "body.6.0": 7.65, "fc": 0.56, "classifier": 0.12}
    for rule, want, source in (("published", "fc", "mrc_argmin"), ("mrc", "fc", "mrc_argmin"),
                               ("mrc_all", "classifier", "mrc_argmin_all")):
        m, _ = build("rift", {"module_rule": rule})
        assert m.head == "classifier" and list(values) == m.candidates
        monkeypatch.setattr(m, "mrc_set", lambda: (None, None))
        monkeypatch.setattr(m, "compute_mrc", lambda x, y: dict(values))
        m.on_epoch_start(0)
        assert (m.chosen, m.module_source, m.mrc) == (want, source, values)


def test_rift_project_to_ball():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(8, 4, 3, 3, generator=g)
    far = w0 + torch.randn(w0.shape, generator=g)
    p = project_to_ball(far, w0, 0.1)
    assert (p - w0).norm() / w0.norm() == pytest.approx(0.1, rel=1e-5)
    torch.testing.assert_close((p - w0) / (p - w0).norm(), (far - w0) / (far - w0).norm())  # same direction
    near = w0 + 0.01 * w0
    assert torch.equal(project_to_ball(near, w0, 0.1), near)


def test_rift_mrc_perturbation_stays_in_the_ball_and_the_weight_is_restored():
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


def test_rift_mrc_batches_give_the_codes_steps_per_epoch():
    m, _ = build("rift")
    assert m.mrc_batch_size(10_000) == 500  # code: 10,000 test images / batch 512 -> 20 steps per epoch
    assert m.mrc_batch_size(1_000) == 50 and m.mrc_batch_size(2_000) == 100 and m.mrc_batch_size(7) == 1


def test_rift_picks_argmin_mrc_trains_only_that_module_and_resumes_without_recomputing(monkeypatch):
    hp = {"mrc_epochs": 2}
    m, loader = build("rift", hp)
    m.on_epoch_start(0)
    assert set(m.mrc) == {n for n, mod in m.model.named_modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))}
    assert m.chosen == min((k for k in m.mrc if k != "classifier"), key=m.mrc.get)
    assert m.module_source == "mrc_argmin"
    parent = m.ctx.parent_model.state_dict()
    steps(m, loader, 2)
    chosen_params = {f"{m.chosen}.{n}" for n, _ in m.model.get_submodule(m.chosen).named_parameters()}
    changed = {k for k, v in m.model.named_parameters() if not torch.equal(v, parent[k])}
    assert changed == chosen_params
    m.on_epoch_start(1)  # records the held-out clean accuracy of epoch 1's end, keeps its state as the best
    assert len(m.ft_acc) == 1 and m.best_state is not None
    # resume: the state carries the choice, the MRC values and theta_FT's candidate; nothing is recomputed
    state = copy.deepcopy(m.state_dict())
    json.dumps({k: v for k, v in state.items() if k != "best_state"})
    m2, _ = build("rift", hp)
    monkeypatch.setattr(m2, "compute_mrc", lambda *a: pytest.fail("MRC recomputed after a resume"))
    m2.load_state_dict(state)
    m2.on_epoch_start(1)
    assert m2.chosen == m.chosen and m2.mrc == m.mrc and m2.module_source == "mrc_argmin" and m2.ft_acc == m.ft_acc
    assert all(torch.equal(v, m.best_state[k]) for k, v in m2.best_state.items())
    assert {k for k, p in m2.model.named_parameters() if p.requires_grad} == chosen_params


def test_rift_module_hparam_skips_mrc(monkeypatch):
    m, _ = build("rift", {"module": "fc"})
    monkeypatch.setattr(m, "compute_mrc", lambda *a: pytest.fail("MRC computed although the module was given"))
    m.on_epoch_start(0)
    assert m.chosen == "fc" and {k for k, p in m.model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}


def test_rift_interpolation_endpoints_are_the_two_models():
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
    # integer buffers: the code's float mix copied into an int64 buffer, i.e. truncated
    n0 = at["body.0.1.num_batches_tracked"]
    assert int(interpolate_state(at, ft, 0.7)["body.0.1.num_batches_tracked"]) == int(n0 + 0.7 * 2)


def test_rift_select_alpha_rule_on_a_hand_made_curve():
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
    # without a tolerance, each point's own allowed drop
    own = [dict(p, allowed_drop=0.006 if p["a"] == 0.2 else 0.001) for p in curve(pts)]
    assert select_alpha(own) == 0.2


def test_rift_paired_standard_error_of_the_robustness_drop():
    from methods.rift import paired_se

    # McNemar: var(mean(d)) with d in {-1, 0, 1}: (lost + gained - (gained - lost)^2 / n) / n^2
    assert paired_se(3, 1, 100) == pytest.approx(math.sqrt(4 - 4 / 100) / 100)
    assert paired_se(0, 0, 1000) == 0.0
    d = torch.tensor([-1.0] * 3 + [1.0] * 1 + [0.0] * 96)
    assert paired_se(3, 1, 100) == pytest.approx(float(d.std(unbiased=False)) / math.sqrt(100))


def test_rift_finalize_sets_the_chosen_interpolation_and_returns_json():
    m, loader = build("rift", {"module": "classifier", "attack_steps": 2})
    m.on_epoch_start(0)
    steps(m, loader, 3)
    at = copy.deepcopy(m.ctx.parent_model.state_dict())
    ft = copy.deepcopy(m.model.state_dict())
    test = tiny_split(seed=9, n=8)
    ev = Evaluator(test, EvalConfig(n_clean=8, n_pgd=8, n_aa=0, pgd_steps=2, batch_size=8), EPS, torch.device("cpu"))
    extra = m.finalize(m.net, ev)
    json.dumps(extra)
    assert [p["a"] for p in extra["rift_curve"]] == [i / 10 for i in range(11)]
    assert all(p["allowed_drop"] == 0.001 for p in extra["rift_curve"])  # the paper's 0.1 points
    assert extra["rift_alpha"] == select_alpha(extra["rift_curve"], 0.001)
    assert (extra["rift_module"], extra["rift_module_source"], extra["rift_mrc"]) == ("classifier", "hparam", {})
    assert extra["rift_ft_epoch"] == 1 and len(extra["rift_ft_acc"]) == 1
    want = interpolate_state(at, ft, extra["rift_alpha"])
    assert all(torch.equal(v, want[k]) for k, v in m.model.state_dict().items())
    # the a = 0 point is the parent on the held-out TRAINING subset
    held = m.heldout()
    assert len(held) == math.ceil(0.2 * N)
    with torch.no_grad():
        acc0 = (m.ctx.parent_model(held.images.float() / 255).argmax(1) == held.labels).float().mean().item()
    assert extra["rift_curve"][0]["clean"] == pytest.approx(acc0)
    # the paired rule's allowed drop is z standard errors of the drop, never less than the fixed tolerance
    m2, loader2 = build("rift", {"module": "classifier", "attack_steps": 2, "select_rule": "paired_se"})
    m2.on_epoch_start(0)
    steps(m2, loader2, 3)
    extra2 = m2.finalize(m2.net, ev)
    n = extra2["rift_heldout"]
    for p in extra2["rift_curve"]:
        se = math.sqrt(p["robust_lost"] + p["robust_gained"] - (p["robust_gained"] - p["robust_lost"]) ** 2 / n) / n
        assert p["allowed_drop"] == pytest.approx(max(0.001, se))


# -- AFA -------------------------------------------------------------------------------------------------------
def test_supcon_matches_hand_computation():
    raw = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, 0.6], [0.3, -0.9]])
    z = F.normalize(raw, dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2])  # the last anchor has no positive: 0, still in the mean (SupConLoss)
    tau = 0.1
    sims = [[float(z[i] @ z[j]) / tau for j in range(5)] for i in range(5)]
    terms = []
    for i in range(5):
        pos = [p for p in range(5) if p != i and labels[p] == labels[i]]
        if not pos:
            terms.append(0.0)
            continue
        denom = sum(math.exp(sims[i][a]) for a in range(5) if a != i)
        terms.append(-sum(math.log(math.exp(sims[i][p]) / denom) for p in pos) / len(pos))
    expected = (tau / 0.07) * sum(terms) / len(terms)  # SupContrast's temperature / base_temperature factor
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
