"""Differential tests: our vAFT, AFKD and ARREST against ``ref_aft.py``, a transcription of the training step of
changzhang777/AFD ARREST.py (no flag / --RGKD / --NR --RGKD). Same weights (the student perturbed so that it
differs from the teacher), same batches, same random start; float64; >= 2 steps; losses, the replay distance and
decision, every parameter and every BatchNorm buffer of the student compared after each step.

Each test's docstring names a mutation of our method that makes it fail (checked by applying it, running, and
reverting)."""
from __future__ import annotations

import math

import pytest
import torch

from methods.arrest import replay_window_end, use_noisy_replay

import harness  # tests/reference/ (pytest puts a test file's folder on sys.path)
import ref_aft as ref

EPOCHS = 20  # the code's recipe (ARREST.py:49): its window (epoch <= 10) and lr steps apply unscaled
PERTURB = 0.05  # student = teacher + 0.05 N(0, 1): RGKD and d are not trivially 0
TOL = dict(rtol=1e-10, atol=1e-12)
FLAGS = {"vaft": dict(nr=False, rgkd=False), "afkd": dict(nr=False, rgkd=True), "arrest": dict(nr=True, rgkd=True)}


def start_noise(x: torch.Tensor, seed: int) -> torch.Tensor:
    """ARREST.py:173's U(-eps, eps), from the global RNG seeded as before our step (drawn as our attack does)."""
    torch.manual_seed(seed)
    return (2 * torch.rand(x.shape, dtype=x.dtype) - 1) * harness.EPS


def build(name: str, hp: dict | None = None):
    """Ours in the code's 20-epoch recipe, the student perturbed away from the teacher."""
    return harness.build(name, hp, epochs=EPOCHS, perturb_student=PERTURB)


def run_pair(built, *, epoch: int = 0, steps: int = 2, first_step: int = 0):
    """Our method (``build``'s result) and the reference from the same weights, ``steps`` steps of 0-based
    ``epoch`` from batch ``first_step``; compares after every step and returns both sides' records."""
    m, loader = built
    name = m.name
    student = harness.snapshot(m.model)
    teacher = ref.as_run_teacher(m.ctx.parent_model)
    opt = ref.make_optimizer(student, lr=ref.lr_for_epoch(epoch + 1))
    before = harness.snapshot(m.model)
    records = []
    for i, b in enumerate(harness.batches(loader, epoch)[first_step:first_step + steps], first_step):
        seed = 1000 + 17 * epoch + i
        torch.manual_seed(seed)
        ours = harness.step(m, b, epoch, i)
        assert m.optimizers[0].param_groups[0]["lr"] == pytest.approx(ref.lr_for_epoch(epoch + 1), rel=1e-12)
        theirs = ref.train_step(student, teacher, b.x, b.y, opt, noise=start_noise(b.x, seed), epoch=epoch + 1,
                                theta=m.hp.theta_deg if name == "arrest" else 30.0, **FLAGS[name])
        torch.testing.assert_close(ours["loss"].detach(), theirs["loss"], **TOL)
        if name != "vaft":
            torch.testing.assert_close(ours["ce"].detach(), theirs["ce"].detach(), **TOL)
            torch.testing.assert_close(ours["rgkd"].detach(), theirs["rgkd"].detach(), **TOL)
        if name == "arrest":
            torch.testing.assert_close(ours["replay_dist"], theirs["distance"], **TOL)
            assert bool(ours["noise"]) is theirs["skipped"]
        # parameters AND the student's BatchNorm running statistics (updated once per step, in the training
        # forward; ARREST.py's distance and attack run the student in eval mode)
        harness.assert_same_params(m.model, student, prefix=f"step {i}: ", **TOL)
        records.append((ours, theirs))
    with torch.no_grad():
        assert harness.moved(before, m.model) > 1e-4  # the steps did something
    return m, student, teacher, records


def test_vaft_matches_arrest_py_without_flags():
    """Mutation that fails it: the attack's start clamped to [0, 1] before the first gradient (clamp_start=True)."""
    run_pair(build("vaft"), steps=2)


def test_afkd_matches_arrest_py_rgkd():
    """Mutation that fails it: the teacher in eval mode (teacher_batch_stats=False), i.e. RGKD to the teacher's
    running-statistics features."""
    _, _, _, records = run_pair(build("afkd"), steps=2)
    assert all(o["rgkd"] > 1e-3 for o, _ in records)


def test_afkd_later_epoch_lr_and_same_step():
    """Mutation that fails it: RGKD to the teacher's features of x_adv instead of clean x."""
    run_pair(build("afkd"), epoch=12, steps=2)  # 1-based epoch 13: lr 0.01


def test_arrest_pgd_branch_matches_arrest_py():
    """Mutation that fails it: the replay distance with the teacher in eval mode (it changes d, compared with the
    code's d after every step)."""
    _, _, _, records = run_pair(build("arrest", {"theta_deg": 80.0}), steps=2)
    assert not any(t["skipped"] for _, t in records)


def test_arrest_replay_branch_matches_arrest_py():
    """Mutation that fails it: the noisy replay input not clamped to [0, 1] (ARREST.py:189 clamps it)."""
    _, _, _, records = run_pair(build("arrest", {"theta_deg": 1.0}), steps=3)
    assert all(t["skipped"] for _, t in records)
    assert all(((t["x_train"] == 0) | (t["x_train"] == 1)).any() for _, t in records)  # the clamp mattered


def _d_first_batch(hp: dict | None = None) -> float:
    m, loader = build("arrest", hp)
    return float(m.replay_distance(harness.batches(loader, 0)[0].x))


@pytest.mark.parametrize("side", [-1, +1])
def test_arrest_decision_just_at_the_threshold(side):
    """theta put so that 1 - cos(theta) lies 1e-9 below (replay) or above (attack) the code's d on the first batch.
    Mutation that fails it: d with the student in train mode (batch statistics) instead of eval mode."""
    d = _d_first_batch()
    theta = math.degrees(math.acos(1 - (d + side * 1e-9)))
    _, _, _, records = run_pair(build("arrest", {"theta_deg": theta}), steps=2)
    assert records[0][1]["skipped"] is (side < 0)


def test_arrest_window_ends_after_epoch_10_of_20():
    """The last step of 1-based epoch 10 may replay, the first of epoch 11 may not (ARREST.py:175 epoch <= 10).
    Mutation that fails it: a window one iteration longer (``iteration <= end``)."""
    _, _, _, last = run_pair(build("arrest", {"theta_deg": 1.0}), epoch=9, steps=1, first_step=3)
    assert last[0][1]["skipped"]
    _, _, _, first = run_pair(build("arrest", {"theta_deg": 1.0}), epoch=10, steps=1, first_step=0)
    assert not first[0][1]["skipped"]


@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_arrest_scaled_run_keeps_a_replay_and_an_attack_phase(epochs):
    """A run scaled to 1-3 epochs replays in its first half of iterations and attacks in its second, as the
    20-epoch code does in epochs 1-10 and 11-20. Mutation that fails it: the window in whole epochs
    (``epoch + 1 <= 0.5 * epochs``: a 1-epoch run never replays)."""
    # theta 1 degree: every batch in the window replays; a 1-step attack outside it (the attack is not the point)
    m, loader = harness.build("arrest", {"theta_deg": 1.0, "steps": 1}, epochs=epochs, perturb_student=PERTURB)
    spe = m.ctx.steps_per_epoch
    flags = []
    for e in range(epochs):
        for i, b in enumerate(harness.batches(loader, e)):
            flags.append(bool(harness.step(m, b, e, i)["noise"]))
    half = epochs * spe // 2
    assert flags == [True] * half + [False] * (epochs * spe - half)
    assert replay_window_end(20 * spe, 0.5) == 10 * spe  # exactly epochs 1-10 at the code's 20


def test_decision_rule_equals_arrest_py_at_the_threshold():
    """The comparison itself, in float32 (the code's CUDA d) and float64, at the threshold and one ulp below.
    Mutation that fails it: ``>`` instead of ``>=``."""
    thr = 1 - math.cos(math.radians(30.0))
    for dtype in (torch.float32, torch.float64):
        at = torch.tensor(thr, dtype=dtype)
        below = torch.nextafter(at, torch.tensor(0.0, dtype=dtype))
        for d in (at, below):
            assert use_noisy_replay(d, 0, 80, 30.0, 0.5) is ref.replay_decision(d, 1, 30.0)
        assert use_noisy_replay(at, 0, 80, 30.0, 0.5) and not use_noisy_replay(below, 0, 80, 30.0, 0.5)


def test_teacher_running_stats_drift_in_arrest_py_but_are_never_read():
    """ARREST.py's train-mode teacher updates its running statistics (twice per ARREST step) but its outputs never
    depend on them; ours keeps the parent's untouched. Mutation that fails it: our teacher tracking its running
    statistics (no ``stop_tracking_running_stats``)."""
    m, _, teacher, _ = run_pair(build("arrest", {"theta_deg": 1.0}), steps=2)
    parent = m.ctx.parent_model.state_dict()
    for k, v in m._teacher.state_dict().items():
        assert torch.equal(v, parent[k]), f"our teacher's {k} changed"
    moved = [k for k, v in teacher.state_dict().items() if "running" in k and not torch.equal(v, parent[k])]
    assert moved, "the code's teacher should have drifted"
    tracked = {int(v) for k, v in teacher.state_dict().items() if k.endswith("num_batches_tracked")}
    assert tracked == {4}  # 2 steps x 2 teacher forwards (ARREST.py:167 and 194)
    # scramble the code's teacher statistics: the same step, the same numbers
    m2, loader = build("arrest", {"theta_deg": 1.0})
    b = harness.batches(loader, 0)[0]
    outs = []
    for scramble in (False, True):
        t = ref.as_run_teacher(m2.ctx.parent_model)
        if scramble:
            with torch.no_grad():
                for k, v in t.named_buffers():
                    if "running" in k:
                        v.uniform_(0.5, 2.0)
        s = harness.snapshot(m2.model)
        r = ref.train_step(s, t, b.x, b.y, ref.make_optimizer(s), noise=start_noise(b.x, 5), epoch=1, theta=1.0,
                           **FLAGS["arrest"])
        outs.append((r["loss"], r["distance"], s))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    harness.assert_same_params(outs[0][2], outs[1][2], rtol=0, atol=0)
