"""Every registered method, parametrized over the registry: two steps on a tiny model and random data give
finite losses, change exactly the parameters the method trains, and a state round trip reproduces the next
step bit for bit. Plus the properties that make AFD what it is."""
from __future__ import annotations

import copy

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bench.core.config import TrainConfig
from bench.data import Batch, DatasetInfo, Loader, Split
from bench.models.architectures import build_model
from methods import build_method, REGISTRY, Context, StepInfo, get_method, make_hparams, resolve_hparams
from methods.afd import AFD, confused_label
from methods.base import MethodError

N, C, S = 32, 4, 16  # examples, classes, image size


def tiny_split(seed=0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (N, 3, S, S), generator=g, dtype=torch.uint8),
                 torch.arange(N) % C)


def build(name: str, hp_overrides=None, seed=0):
    cls = get_method(name)
    split = tiny_split()
    info = DatasetInfo(name="random", num_classes=C, channels=3, image_size=S, classes=tuple("abcd"))
    torch.manual_seed(0)  # the parent is a fixed model (on disk in a real run), whatever the seed
    parent = build_model("small_cnn", C, 3).eval() if cls.parent else None
    torch.manual_seed(seed)
    model = build_model("small_cnn", C, 3)
    if parent is not None:
        model.load_state_dict(parent.state_dict())
    train = TrainConfig(epochs=2, batch_size=8, lr=0.05, schedule="constant")
    loader = Loader(split, 8, device="cpu", shuffle=True, augment=True, seed=0)
    ctx = Context(info=info, eps=8 / 255, device=torch.device("cpu"), epochs=2, steps_per_epoch=len(loader),
                  seed=0, train=split, parent_model=parent, train_cfg=train)
    m = build_method(cls, model, make_hparams(name, resolve_hparams(name, hp_overrides)), ctx, train)
    return m, loader


def batches(loader, n):
    out = []
    for e in range(2):
        for b in loader.epoch(e):
            out.append((e, b))
            if len(out) == n:
                return out
    return out


def run_steps(m, loader, steps, start=0):
    outs = []
    for i, (e, b) in enumerate(batches(loader, start + steps)[start:], start):
        m.net.train()
        outs.append(m.train_step(b, StepInfo(epoch=e, step=i, global_step=i)))
    return outs


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_two_steps_finite_and_train_what_they_should(name):
    m, loader = build(name)
    m.on_epoch_start(0)
    before = {k: v.detach().clone() for k, v in m.net.named_parameters()}
    outs = run_steps(m, loader, 2)
    for out in outs:
        assert "loss" in out
        for k, v in out.items():
            assert torch.isfinite(v).all(), f"{name}: {k} is not finite"
    trainable = getattr(m, "trained_parameter_names", None)
    expected = set(trainable()) if trainable else {k for k, p in m.net.named_parameters() if p.requires_grad}
    changed = {k for k, v in m.net.named_parameters() if not torch.equal(v, before[k])}
    assert changed == expected, f"{name}: changed {sorted(changed ^ expected)[:5]} unexpectedly"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_state_round_trip_reproduces_next_step(name):
    m, loader = build(name)
    m.on_epoch_start(0)
    run_steps(m, loader, 1)
    snap = {"net": copy.deepcopy(m.net.state_dict()), "opt": [copy.deepcopy(o.state_dict()) for o in m.optimizers],
            "method": copy.deepcopy(m.state_dict()), "rng": torch.get_rng_state()}
    out_a = run_steps(m, loader, 1, start=1)[0]
    after_a = {k: v.clone() for k, v in m.net.state_dict().items()}

    m2, loader2 = build(name, seed=123)  # different init: everything must come from the snapshot
    m2.on_epoch_start(0)
    m2.net.load_state_dict(snap["net"])
    for o, s in zip(m2.optimizers, snap["opt"], strict=True):
        o.load_state_dict(s)
    m2.load_state_dict(snap["method"])
    torch.set_rng_state(snap["rng"])
    out_b = run_steps(m2, loader2, 1, start=1)[0]
    assert all(torch.equal(out_a[k], out_b[k]) for k in out_a)
    for k, v in m2.net.state_dict().items():
        assert torch.equal(v, after_a[k]), f"{name}: {k} differs after the resumed step"


# -- AFD -------------------------------------------------------------------------------------------------
def test_confused_label_is_never_the_true_label():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(64, 10, generator=g)
        y = torch.randint(0, 10, (64,), generator=g)
        logits[torch.arange(64), y] += 5 * torch.rand(64, generator=g)  # often the argmax is the true label
        yc = confused_label(logits, y)
        assert (yc != y).all()
        masked = logits.clone()
        masked[torch.arange(64), y] = -1e9
        assert torch.equal(yc, masked.argmax(1))


def test_afd_disentanglers_start_as_identity_without_bias():
    m, _ = build("afd")
    for k in ("d1", "d2"):
        assert m.net[k].bias is None and torch.equal(m.net[k].weight, torch.eye(m.net[k].weight.shape[0]))


def _one_batch(loader):
    return next(iter(loader.epoch(0)))


@pytest.mark.parametrize("order", ["joint", "as_run"])
def test_afd_l1_reaches_only_d2_and_l2_not_d2(order):
    # joint (eq. 3): L1 updates D2 only. as_run (tl+sl.py:237-238): w f2 uses the live classifier, so w gets it too.
    m, loader = build("afd", {"update_order": order})
    out = m.losses(_one_batch(loader))
    names = [n for n, _ in m.net.named_parameters()]
    params = [p for _, p in m.net.named_parameters()]
    g1 = torch.autograd.grad(out["l1"], params, retain_graph=True, allow_unused=True)
    got1 = {n for n, g in zip(names, g1) if g is not None and g.abs().sum() > 0}
    assert got1 == ({"d2.weight"} if order == "joint" else {"d2.weight", "model.classifier.weight",
                                                            "model.classifier.bias"})
    g2 = torch.autograd.grad(out["l2"], params, retain_graph=True, allow_unused=True)
    got2 = {n for n, g in zip(names, g2) if g is not None and g.abs().sum() > 0}
    assert "d2.weight" not in got2 and "d1.weight" in got2


def test_afd_export_folds_d1_into_the_classifier_exactly():
    m, loader = build("afd")
    run_steps(m, loader, 2)  # D1 is no longer the identity
    assert not torch.equal(m.net["d1"].weight, torch.eye(m.net["d1"].weight.shape[0]))
    plain = m.export(m.net).eval()
    assert not any(isinstance(mod, torch.nn.Linear) and mod.weight.shape[0] == mod.weight.shape[1] == 256
                   and mod is m.net["d1"] for mod in plain.modules())
    assert type(plain) is type(m.model)  # a plain model: no disentangler inside
    x = _one_batch(loader).x
    m.net.eval()
    with torch.no_grad():
        train_path = m.model.classifier(m.net["d1"](m.model.features(x)))
        exported = plain(x)
    torch.testing.assert_close(exported, train_path, rtol=1e-5, atol=1e-5)
    assert torch.equal(exported.argmax(1), train_path.argmax(1))


def test_afd_alignment_targets_the_frozen_parent_on_clean_inputs():
    m, loader = build("afd")
    b = _one_batch(loader)
    with torch.no_grad():
        expected = m.ctx.parent_model.features(b.x)
        got = m.teacher_feats(b.x)
    # The teacher runs in channels_last (faster), the parent as it is: same numbers up to float rounding.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert all(not p.requires_grad for p in m._teacher.parameters())
    # the teacher is outside the trained/checkpointed net
    assert not any(p is q for p in m.net.parameters() for q in m._teacher.parameters())


def test_afd_as_run_order_differs_from_joint_but_both_train():
    a, la = build("afd", {"update_order": "joint"})
    b, lb = build("afd")  # the default: as_run
    assert b.hp.update_order == "as_run" and len(a.optimizers) == 1 and len(b.optimizers) == 3
    run_steps(a, la, 1)
    run_steps(b, lb, 1)
    wa, wb = a.model.classifier.weight, b.model.classifier.weight
    assert not torch.equal(wa, wb)  # as_run: w also gets alpha*L1's gradient, two momentum steps, 3x weight decay


def test_afd_update_order_official_is_gone():
    with pytest.raises(MethodError, match="update_order"):
        build("afd", {"update_order": "official"})


def test_ablations_drop_their_term():
    d, _ = build("vaft_d")
    assert "d1" in d.net and not hasattr(d, "_teacher")
    a, _ = build("vaft_a")
    assert "d1" not in a.net and hasattr(a, "_teacher")


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if c.__module__.startswith("methods.")))
def test_every_hyperparameter_declares_its_range_and_the_defaults_are_in_it(name):
    """Values are checked where users type them. Every numeric or choice hyperparameter of a built-in
    method has a Range / OneOf, its default satisfies it, and a value outside it is refused in one line."""
    from methods.base import OneOf, Range

    cls = REGISTRY[name]
    defaults = cls.Hparams()
    for f in dataclasses.fields(cls.Hparams):
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            continue
        rule = cls.ranges.get(f.name)
        assert rule is not None, f"{name}.{f.name} declares no range"
        assert rule.problem(value) is None, f"{name}.{f.name} default {value!r}: {rule.problem(value)}"
        bad = ("not-a-choice" if isinstance(rule, OneOf) else
               (rule.lo - 1 if rule.lo is not None else rule.hi + 1) if isinstance(rule, Range) else None)
        with pytest.raises(MethodError, match=f"{name}.{f.name}"):
            resolve_hparams(name, {f.name: bad})


# What an author writes and what the suite reads are apart: a declaration on Method's own body would put it back
# among the author's names, and the five names a new method needs come first there.
SUITE_READS = {"label", "produces", "single_step", "drop_last", "plan_seconds_per_epoch", "plan_seconds_guessed",
               "display_label", "plan_prior", "compile_problem", "grad_scaler_problem", "data_parallel_problem",
               "batchnorm_sync_problem"}


def test_the_author_interface_and_the_suites_declarations_are_apart():
    from methods.base import Method
    from methods.declarations import Declarations

    assert issubclass(Method, Declarations)
    assert SUITE_READS <= set(vars(Declarations)) and not SUITE_READS & set(vars(Method))
    own = [k for k in vars(Method) if not k.startswith("__")]  # in the order of the class body
    assert list(Method.__annotations__)[:4] == ["name", "Hparams", "parent", "recipe"]
    assert own[:3] == ["parent", "recipe", "loss"]


def test_a_method_of_the_five_names_trains_with_every_default():
    from methods.base import Method, register

    @register
    class Five(Method):
        name = "five_names"
        parent = "natural"
        recipe = TrainConfig(epochs=2, lr=0.05, schedule="constant")

        @dataclasses.dataclass(frozen=True)
        class Hparams:
            weight: float = 1.0

        def loss(self, batch, step):
            return {"loss": self.hp.weight * F.cross_entropy(self.model(batch.x), batch.y)}

    try:
        m, loader = build("five_names")
        before = copy.deepcopy(m.model.state_dict())
        outs = run_steps(m, loader, 2)
        assert all(torch.isfinite(o["loss"]) for o in outs)
        assert any(not torch.equal(before[k], v) for k, v in m.model.state_dict().items())
        hp = m.hp
        assert Five.display_label() == "five_names" and Five.plan_prior() is None and Five.ranges == {}
        assert all(getattr(Five, p)(hp) is None for p in SUITE_READS if p.endswith("_problem"))
        assert m.state_dict() == {} and m.finalize(m.net, None) == {} and m.export(m.net) is m.model
    finally:
        REGISTRY.pop("five_names")
