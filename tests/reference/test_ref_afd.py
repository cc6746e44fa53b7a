"""Differential tests: our AFD (and its ablations vAFT+D, vAFT+A) against ``ref_afd.py``, a transcription of the
training step of changzhang777/AFD tl+sl.py as it ran on old PyTorch (three SGD steps per batch, weight decay left
in p.grad, the last backward through the weights the second step changed). Same weights (the student perturbed
away from the teacher, D1 and D2 perturbed away from the identity and from each other), same batches, same
attack start; float64; 3 steps; the losses L1, L2, L3, the attack's x_adv, every parameter and BatchNorm buffer,
and the three optimizers' momentum buffers compared after every step.

Each test's docstring names a mutation of our method that makes it fail (checked by applying it, running, and
reverting)."""
from __future__ import annotations

import pytest
import torch

import harness
import ref_afd as ref
from bench.train.ema import EMA

EPOCHS = 20  # the code's recipe: lr 0.025 during its first epoch (tl+sl.py:50, 106-113)
STEPS = 3
PERTURB = 0.05  # student = teacher + 0.05 N(0, 1); D1, D2 = I + 0.05 N(0, 1), independently
TOL = dict(rtol=1e-10, atol=1e-12)
OPTS = ("optimizer1", "optimizer2", "optimizer")  # ours: optimizers[0], [1], [2] (vAFT+A: no optimizer1)


def start_noise(x: torch.Tensor, seed: int) -> torch.Tensor:
    """tl+sl.py:173's U(-eps, eps), from the global RNG seeded as before our step (drawn as our attack does)."""
    torch.manual_seed(seed)
    return (2 * torch.rand(x.shape, dtype=x.dtype) - 1) * harness.EPS


def build(name: str, hp: dict | None = None):
    m, loader = harness.build(name, hp, epochs=EPOCHS, perturb_student=PERTURB)
    if m.use_disentangler:
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for k in ("d1", "d2"):
                w = m.net[k].weight
                w.add_(PERTURB * torch.randn(w.shape, generator=g, dtype=w.dtype))
    return m, loader


def reference_copy(m):
    """The reference's P (parameters), B (buffers) and T (teacher state) from our method's current state."""
    P = {n: p.detach().clone().requires_grad_(True) for n, p in m.net.named_parameters()}
    B = {n: b.detach().clone() for n, b in m.net.named_buffers()}
    T = ({k: v.detach().clone() for k, v in m.ctx.parent_model.state_dict().items()}
         if getattr(m, "use_alignment", False) else None)
    return P, B, T


def our_momentum(m) -> dict:
    names = {id(p): n for n, p in m.net.named_parameters()}
    opts = OPTS if len(m.optimizers) == 3 else OPTS[1:]
    return {o: {names[id(p)]: s["momentum_buffer"].clone() for p, s in opt.state.items()}
            for o, opt in zip(opts, m.optimizers)}


def run(name: str, hp: dict | None = None, *, late_false_too: bool = False) -> tuple:
    """Our ``name`` and the reference, STEPS steps from the same state; returns (m, records, initial state)."""
    m, loader = build(name, hp)
    P, B, T = reference_copy(m)
    opt = ref.make_opt(P)
    initial = {k: v.clone() for k, v in m.net.state_dict().items()}
    if late_false_too:  # a second reference whose backward reads frozen pre-step weights
        P0, B0, _ = reference_copy(m)
        opt0 = ref.make_opt(P0)
    captured = []
    attack = m.attack
    m.attack = lambda batch: captured.append(attack(batch)) or captured[-1]
    kw = dict(alpha=m.hp.alpha, sigma=m.hp.beta) if m.use_disentangler else {}
    kw.update(gamma=m.hp.gamma, disentangler=m.use_disentangler, step_size=m.hp.step_size, steps=m.hp.steps)
    records = []
    for i, b in enumerate(harness.batches(loader, 0)[:STEPS]):
        seed = 1000 + i
        torch.manual_seed(seed)
        ours = harness.step(m, b, 0, i)
        lr = ref.lr_for_epoch(1)
        assert all(g["lr"] == pytest.approx(lr, rel=1e-12) for o in m.optimizers for g in o.param_groups)
        theirs = ref.afd_step(P, B, opt, T, b.x, b.y, start_noise(b.x, seed), lr=lr, **kw)
        rec = {"ours": {k: v.detach().clone() for k, v in ours.items()}, "theirs": theirs,
               "x_adv": captured[-1], "state": {k: v.clone() for k, v in m.net.state_dict().items()},
               "ref_state": {k: v.detach().clone() for k, v in {**P, **B}.items()},
               "momentum": our_momentum(m),
               "ref_momentum": {o: {n: v.clone() for n, v in opt["buf"][o].items()} for o in OPTS}}
        if late_false_too:
            ref.afd_step(P0, B0, opt0, T, b.x, b.y, start_noise(b.x, seed), lr=lr, late=False, **kw)
            rec["prestep_state"] = {k: v.detach().clone() for k, v in {**P0, **B0}.items()}
        records.append(rec)
    return m, records, initial


def assert_same_state(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], **TOL, msg=lambda s, k=k: f"{what} {k}: {s}")
        else:
            assert torch.equal(a[k], b[k]), f"{what} {k} differs"


def group_of(name: str) -> str:
    if name.startswith("model.classifier."):
        return "w"
    return name.split(".")[0] if name.startswith("d") else "backbone"


def rel_gap(state: dict, other: dict, initial: dict) -> dict[str, float]:
    """Per group: ||state - other|| / ||state - initial|| over the trained parameters (floating entries)."""
    num, den = {}, {}
    for k, v in state.items():
        if not v.is_floating_point() or "running_" in k:
            continue
        g = group_of(k)
        num[g] = num.get(g, 0.0) + float(((v - other[k]) ** 2).sum())
        den[g] = den.get(g, 0.0) + float(((v - initial[k]) ** 2).sum())
    return {g: (num[g] / den[g]) ** 0.5 for g in num}


@pytest.fixture(scope="module")
def as_run():
    return run("afd", late_false_too=True)


def test_losses_match_reference_every_step(as_run):
    """L1 (alpha CE(w f2, y')), L2 (beta cos(f1, f2)) and L3 (CE + gamma D(f1, g_P(x))) equal the code's
    loss_neg, loss_cos and loss_rob (tl+sl.py:237, 253, 259-262) at each of 3 steps, and so does the confused label.
    Mutation that fails it: the confused label as the plain argmax (the true class allowed)."""
    m, records, _ = as_run
    for i, r in enumerate(records):
        o, t = r["ours"], r["theirs"]
        torch.testing.assert_close(m.hp.alpha * o["l1"], t["loss_neg"], **TOL, msg=f"step {i} L1")
        torch.testing.assert_close(m.hp.beta * (o["l2"] + 1), t["loss_cos"], **TOL, msg=f"step {i} L2")
        torch.testing.assert_close(o["l3"], t["loss_rob"], **TOL, msg=f"step {i} L3")
        assert o["align"] > 1e-4  # the alignment term is not trivially zero
    assert records[-1]["ours"]["l1"] != records[0]["ours"]["l1"]


def test_parameters_and_buffers_match_reference_every_step(as_run):
    """Every parameter (backbone, w, D1, D2) and BatchNorm buffer after each of 3 steps.
    Mutation that fails it: weight decay added out of place, as current torch.optim.SGD does (applied once per
    step instead of staying in p.grad: ~2x instead of ~3x on everything but D2)."""
    m, records, initial = as_run
    for i, r in enumerate(records):
        assert_same_state(r["state"], r["ref_state"], f"step {i}:")
    moved = rel_gap(records[-1]["state"], initial, {k: torch.zeros_like(v) for k, v in initial.items()})
    assert all(v > 1e-6 for v in moved.values()), moved  # every group moved


def test_momentum_buffers_match_reference_every_step(as_run):
    """The momentum buffers of optimizer1 (D2), optimizer2 and optimizer (everything but D2) after each step.
    Mutation that fails it: p.grad zeroed between the three steps (no accumulation from one step to the next)."""
    _, records, _ = as_run
    for i, r in enumerate(records):
        for o in OPTS:
            assert set(r["momentum"][o]) == set(r["ref_momentum"][o]), f"step {i} {o}: parameters differ"
            for n, buf in r["momentum"][o].items():
                torch.testing.assert_close(buf, r["ref_momentum"][o][n], **TOL, msg=f"step {i} {o} {n}")


def test_last_backward_reads_the_weights_the_second_step_changed(as_run):
    """L3's backward runs after optimizer2 changed the weights in place (tl+sl.py:255, 263); old autograd read the
    new weights there. Ours equals the reference whose layers read the live weights, and is clearly away from the
    reference whose layers read frozen pre-step weights (so this comparison can tell them apart).
    Mutation that fails it: StaleGraph keeping copies of the weights (every gradient at the pre-step weights)."""
    _, records, initial = as_run
    for i, r in enumerate(records):
        assert_same_state(r["state"], r["ref_state"], f"step {i}:")
    gap = rel_gap(records[-1]["ref_state"], records[-1]["prestep_state"], initial)
    assert gap["backbone"] > 1e-5 and gap["d1"] > 1e-5, gap


def test_attack_first_gradient_at_the_unclamped_start(as_run):
    """x_adv equals the code's (PGD-10, step 0.007, batch-mean CE on eval-mode w D1 g(x), first gradient at the
    unclamped x + U(-eps, eps): tl+sl.py:170-213) at every step; clamping the start changes it.
    Mutation that fails it: clamp_start=True by default."""
    _, records, _ = as_run
    for i, r in enumerate(records):
        torch.testing.assert_close(r["x_adv"], r["theirs"]["x_adv"], rtol=0, atol=1e-12, msg=f"step {i} x_adv")
    m, loader = build("afd", {"clamp_start": True})
    b = harness.batches(loader, 0)[0]
    torch.manual_seed(1000)
    clamped = m.attack(b)
    differs = ((clamped - records[0]["x_adv"]).abs() > 1e-6).float().mean()
    assert differs > 0.005, float(differs)


def test_joint_update_is_clearly_not_the_as_run_one():
    """update_order="joint" (eq. 6 in one SGD step) run from the same state is far from the code's update: the
    comparison can tell the two apart.
    Mutation that fails it: "joint" running the as-run three-step update (train_step ignoring update_order)."""
    m, records, initial = run("afd", {"update_order": "joint"})
    gap = rel_gap(records[-1]["state"], records[-1]["ref_state"], initial)
    assert min(gap.values()) > 1e-3, gap  # measured: backbone 0.078, w 0.14, D1 0.011, D2 0.095 (TOL is 1e-10)


def test_vaft_d_matches_reference_without_alignment():
    """vAFT+D = tl+sl.py with --gamma 0: losses, parameters, buffers and momentum after each of 3 steps.
    Mutation that fails it: vaft_d defaulting to update_order="joint"."""
    m, records, _ = run("vaft_d")
    for i, r in enumerate(records):
        torch.testing.assert_close(r["ours"]["l3"], r["theirs"]["loss_rob"], **TOL)
        torch.testing.assert_close(m.hp.alpha * r["ours"]["l1"], r["theirs"]["loss_neg"], **TOL)
        assert_same_state(r["state"], r["ref_state"], f"step {i}:")
        for o in OPTS:
            for n, buf in r["momentum"][o].items():
                torch.testing.assert_close(buf, r["ref_momentum"][o][n], **TOL)


def test_vaft_a_matches_reference_without_disentangler():
    """vAFT+A as the code's update with the disentangler's terms removed (optimizer2 then steps zero gradients:
    weight decay and momentum only; optimizer adds L3): parameters, buffers, momentum after each of 3 steps.
    Mutation that fails it: vAFT+A's middle step skipped (weight decay applied twice per batch instead of 3x)."""
    m, records, _ = run("vaft_a")
    for i, r in enumerate(records):
        torch.testing.assert_close(r["ours"]["l3"], r["theirs"]["loss_rob"], **TOL)
        assert_same_state(r["state"], r["ref_state"], f"step {i}:")
        for o in OPTS[1:]:
            for n, buf in r["momentum"][o].items():
                torch.testing.assert_close(buf, r["ref_momentum"][o][n], **TOL)


def test_ema_matches_the_code_ema(as_run):
    """The loop's EMA (bench/train/loop.py) over the as-run states equals tl+sl.py's EMA (355-379: parameters and
    floating buffers; num_batches_tracked, which BatchNorm with momentum 0.1 never reads, is not compared).
    Mutation that fails it: the EMA decay fixed at 0.999 from the first update."""
    m, records, initial = as_run
    net = harness.snapshot(m.net)
    net.load_state_dict(initial)
    ema = EMA(net)
    shadow = {k: v.clone() for k, v in initial.items() if v.is_floating_point()}
    t = 0
    for r in records:
        net.load_state_dict(r["state"])
        ema.update(net)
        t = ref.ema_update(shadow, r["ref_state"], t)
    got = ema.net.state_dict()
    for k, v in shadow.items():
        torch.testing.assert_close(got[k], v, **TOL, msg=f"EMA {k}")


# -- measurements behind methods/afd.py's fidelity notes (not tests) ------------------------------------------------
# .venv/bin/python tests/reference/test_ref_afd.py   (about 7 minutes on 2 shared CPU cores)
def _digits_setting(batch_size: int = 128, parent_epochs: int = 3):
    """A realistic-ish CPU setting: small_cnn naturally trained on digits (32x32, fp32), batches of 128, and a
    builder of our AFD variants from it (weights perturbed as in the tests: D1 != D2)."""
    import dataclasses

    from bench.data import Loader, load_dataset
    from bench.models.architectures import build_model
    from methods import Context, build_method, get_method, make_hparams, resolve_hparams

    train, _, info = load_dataset("digits")
    torch.manual_seed(0)
    parent = build_model("small_cnn", info.num_classes, info.channels)
    opt = torch.optim.SGD(parent.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = Loader(train, batch_size, device="cpu", shuffle=True, augment=True, seed=0)
    parent.train()
    for e in range(parent_epochs):
        for b in loader.epoch(e):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(parent(b.x), b.y).backward()
            opt.step()
    parent.eval()

    def make(name: str = "afd", hp: dict | None = None, **train_kw):
        cls = get_method(name)
        cfg = dataclasses.replace(cls.recipe, epochs=20, batch_size=batch_size, **train_kw)
        model = build_model("small_cnn", info.num_classes, info.channels)
        model.load_state_dict(parent.state_dict())
        ctx = Context(info=info, eps=harness.EPS, device=torch.device("cpu"), epochs=20,
                      steps_per_epoch=len(loader), seed=0, train=train, parent_model=parent, train_cfg=cfg)
        # the optimizers hold the parameters, not their values: perturbing them in place afterwards is the same
        m = build_method(cls, model, make_hparams(name, resolve_hparams(name, hp)), ctx, cfg)
        if m.use_disentangler:
            g = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for k in ("d1", "d2"):
                    m.net[k].weight.add_(PERTURB * torch.randn(m.net[k].weight.shape, generator=g))
        return m

    return make, list(loader.epoch(0))


def _float64_setting():
    def make(name: str = "afd", hp: dict | None = None, **train_kw):
        import dataclasses

        from methods import get_method
        train = dataclasses.replace(get_method(name).recipe, epochs=EPOCHS, batch_size=8, **train_kw)
        m, _ = harness.build(name, hp, train=train, perturb_student=PERTURB)
        if m.use_disentangler:
            g = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for k in ("d1", "d2"):
                    m.net[k].weight.add_(PERTURB * torch.randn(m.net[k].weight.shape, generator=g, dtype=torch.float64))
        return m

    _, loader = harness.build("afd", epochs=EPOCHS)
    return make, harness.batches(loader, 0)


class _Variant:
    """Context manager swapping methods.afd's StaleGraph / LegacySGD.step for a variant (measurements only):
    "prestep": every gradient at the pre-step weights (frozen copies); "official": that plus current SGD (weight
    decay out of place: the retired update_order="official"); "nocast": under bf16 autocast, the weights' autocast
    copies NOT re-made from the live weights; "literal": no hooks at all, old SGD writing p.data (no version bump),
    so current autograd reads the live weights exactly as PyTorch < 1.5 did."""

    def __init__(self, kind: str | None):
        self.kind = kind

    def __enter__(self):
        import contextlib

        import methods.afd as afd
        self.saved = (afd.StaleGraph, afd.LegacySGD.step)
        base = afd.StaleGraph

        class Frozen(base):
            def _pack(self, t):
                kind, v, extra = super()._pack(t)
                return (kind, v.clone(), extra) if kind == "live" else (kind, v, extra)

        class NoCast(base):
            def _pack(self, t):
                kind, v, extra = super()._pack(t)
                return ("saved", t.detach(), t._version) if kind == "cast" else (kind, v, extra)

        @torch.no_grad()
        def old_step(opt, closure=None):
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    d_p = p.grad.data
                    d_p.add_(p.data, alpha=group["weight_decay"])
                    st = opt.state[p]
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = d_p.clone()
                    else:
                        st["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                    p.data.add_(st["momentum_buffer"], alpha=-group["lr"])

        if self.kind in ("prestep", "official"):
            afd.StaleGraph = Frozen
        if self.kind == "official":
            afd.LegacySGD.step = torch.optim.SGD.step
        if self.kind == "nocast":
            afd.StaleGraph = NoCast
        if self.kind == "literal":
            afd.StaleGraph = lambda params: contextlib.nullcontext()
            afd.LegacySGD.step = old_step
        return self

    def __exit__(self, *exc):
        import methods.afd as afd
        afd.StaleGraph, afd.LegacySGD.step = self.saved


def _steps(make, batches, n: int, hp: dict | None = None, variant: str | None = None, name: str = "afd",
           autocast: bool = False, **train_kw):
    """(initial state, state after each of n steps, per-step outputs) of one variant, same seeds throughout."""
    m = make(name, hp, **train_kw)
    initial = {k: v.detach().clone() for k, v in m.net.state_dict().items()}
    states, outs = [], []
    with _Variant(variant):
        for i, b in enumerate(batches[:n]):
            torch.manual_seed(1000 + i)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                outs.append({k: float(v.detach()) for k, v in harness.step(m, b, 0, i).items()})
            states.append({k: v.detach().clone() for k, v in m.net.state_dict().items()})
    return initial, states, outs


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in sorted(d.items()))


def _wd_factor(make, batches, variant=None, hp=None) -> dict:
    """How many times the weight decay acts in one batch, per group: (step with wd - step without) / (-lr wd theta)."""
    init, with_wd, _ = _steps(make, batches, 1, hp, variant)
    _, no_wd, _ = _steps(make, batches, 1, hp, variant, weight_decay=0.0)
    lr, wd = 0.025, 5e-4
    num, den = {}, {}
    for k, v in init.items():
        if not v.is_floating_point() or "running_" in k:
            continue
        g = group_of(k)
        diff = (with_wd[0][k] - no_wd[0][k]).double()
        num[g] = num.get(g, 0.0) + float((diff * v.double()).sum())
        den[g] = den.get(g, 0.0) + float(-lr * wd * (v.double() ** 2).sum())
    return {g: num[g] / den[g] for g in num}


def _term_factor(make, batches, term: str) -> dict:
    """How many times alpha L1 (term 'alpha') or beta L2 ('beta') acts in one as-run batch, per group: the step with
    the term minus the step without, projected on -lr x (the term's gradient at the starting weights)."""
    from methods.afd import StaleGraph
    m = make("afd")
    b = batches[0]
    torch.manual_seed(1000)
    x_adv = m.attack(b)
    m.net.train()
    params = dict(m.net.named_parameters())
    with StaleGraph(params.values()):
        out = m.losses(b, x_adv)
    loss = m.hp.alpha * out["l1"] if term == "alpha" else m.hp.beta * out["l2"]
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
    init, on, _ = _steps(make, batches, 1)
    _, off, _ = _steps(make, batches, 1, {term: 0.0})
    num, den = {}, {}
    for k, g in grads.items():
        if g is None or not g.abs().sum():
            continue
        grp = group_of(k)
        num[grp] = num.get(grp, 0.0) + float(((on[0][k] - off[0][k]).double() * g.double()).sum())
        den[grp] = den.get(grp, 0.0) + float(-0.025 * (g.double() ** 2).sum())
    return {grp: num[grp] / den[grp] for grp in num}


def _max_rel(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30))
               for k in a if a[k].is_floating_point() and b[k].abs().max() > 0)


def measure() -> None:
    import time

    import torch.nn.functional as F

    from bench.eval.attacks import pgd
    from methods.afd import confused_label

    t0 = time.time()
    print("== ours vs the reference, 3 steps, [A]: max |diff| / max |ref| over parameters; over momentum buffers")
    for name in ("afd", "vaft_d", "vaft_a"):
        _, recs, init = run(name)
        r = recs[-1]
        p = _max_rel(r["state"], r["ref_state"])
        mom = max(float((r["momentum"][o][n] - r["ref_momentum"][o][n]).abs().max()
                        / r["ref_momentum"][o][n].abs().max()) for o in r["momentum"] for n in r["momentum"][o])
        print(f"{name}: params {p:.2g}, momentum {mom:.2g}; / update:",
              _fmt(rel_gap(r["state"], r["ref_state"], init)))
    settings = (("[A] float64 test setting (random 16x16, batch 8)", _float64_setting()),
                ("[B] digits, small_cnn naturally trained 3 epochs, fp32, batch 128", _digits_setting()))
    for label, (make, batches) in settings:
        print(f"\n== {label}; 'x / update' = ||x - as_run|| / ||as_run - start|| per group")
        init, asrun, o_asrun = _steps(make, batches, STEPS)
        _, joint, _ = _steps(make, batches, STEPS, {"update_order": "joint"})
        _, pre, _ = _steps(make, batches, STEPS, variant="prestep")
        _, off, _ = _steps(make, batches, STEPS, variant="official")
        _, lit, _ = _steps(make, batches, STEPS, variant="literal")
        zero = {k: torch.zeros_like(x) for k, x in init.items()}
        print("joint after 3 steps / update:", _fmt(rel_gap(joint[-1], asrun[-1], init)),
              "| / weights:", _fmt(rel_gap(joint[-1], asrun[-1], zero)))
        for i in range(STEPS):
            print(f"pre-step gradients after step {i + 1} / update:", _fmt(rel_gap(pre[i], asrun[i], init)))
        print("'official' (current SGD + pre-step gradients) after 3 steps / update:",
              _fmt(rel_gap(off[-1], asrun[-1], init)))
        print("literal emulation (p.data updates, no hooks) vs as_run: max rel. diff",
              f"{_max_rel(lit[-1], asrun[-1]):.3g}")
        print("weight decay per batch (x lr wd theta): as_run", _fmt(_wd_factor(make, batches)),
              "| official", _fmt(_wd_factor(make, batches, "official")),
              "| joint", _fmt(_wd_factor(make, batches, hp={"update_order": "joint"})))
        print("alpha L1 acts (times) on:", _fmt(_term_factor(make, batches, "alpha")),
              "| beta L2 acts on:", _fmt(_term_factor(make, batches, "beta")))
        m, b = make("afd"), batches[0]
        torch.manual_seed(1000)
        x_unclamped = m.attack(b)
        torch.manual_seed(1000)
        x_clamped = make("afd", {"clamp_start": True}).attack(b)
        differs = float(((x_clamped - x_unclamped).abs() > 1e-6).float().mean())
        _, cl, o_cl = _steps(make, batches, 1, {"clamp_start": True})
        u = torch.rand(b.x.shape, generator=torch.Generator().manual_seed(0), dtype=b.x.dtype)
        outside = float(((b.x + (2 * u - 1) * harness.EPS - 0.5).abs() > 0.5).float().mean())
        print(f"clamp_start: raw start outside [0, 1]: {outside:.2%} of entries; True vs False: {differs:.2%} of "
              f"x_adv entries differ; L3 {o_cl[0]['l3']:.5g} vs {o_asrun[0]['l3']:.5g}; 1 step / update:",
              _fmt(rel_gap(cl[0], asrun[0], init)))
        torch.manual_seed(1000)
        x_sum = pgd(m.attack_model(), b.x, b.y, eps=harness.EPS, step_size=0.007, steps=10, clamp_start=False)
        torch.manual_seed(1000)
        x_mean = pgd(m.attack_model(), b.x, b.y, eps=harness.EPS, step_size=0.007, steps=10, clamp_start=False,
                     loss=lambda logits, y: F.cross_entropy(logits, y))
        print(f"attack on summed vs batch-mean CE: {int((x_sum != x_mean).sum())} of {x_sum.numel()} entries differ")
    logits = torch.randn(4096, 10, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (4096,), generator=torch.Generator().manual_seed(1))
    print(f"\nconfused label, ours vs tl+sl.py:221-228, 4096 random rows: "
          f"{int((confused_label(logits, y) != ref.confused_label(logits, y)).sum())} differ")
    make, batches = _digits_setting()
    init, bf, _ = _steps(make, batches, STEPS, autocast=True)
    _, bf_nocast, _ = _steps(make, batches, STEPS, variant="nocast", autocast=True)
    _, bf_pre, _ = _steps(make, batches, STEPS, variant="prestep", autocast=True)
    print("[B] bf16 autocast, 3 steps / update: weight casts not re-made:", _fmt(rel_gap(bf_nocast[-1], bf[-1], init)),
          "| pre-step gradients:", _fmt(rel_gap(bf_pre[-1], bf[-1], init)))
    ms = {o: make("afd", {"update_order": o}) for o in ("joint", "as_run")}
    times = {o: [] for o in ms}
    for _ in range(3):
        for o, m in ms.items():
            for i, b in enumerate(batches[:2]):
                torch.manual_seed(i)
                t1 = time.perf_counter()
                harness.step(m, b, 0, i)
                times[o].append(time.perf_counter() - t1)
    print("[B] seconds per step (median of 6):", _fmt({o: sorted(v)[3] for o, v in times.items()}))
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    torch.set_num_threads(1)
    measure()
