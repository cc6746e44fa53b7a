"""RiFT against an independent transcription of its public code (ref_rift.py: microsoft/robustlearn RiFT/main.py,
RiFT/utils.py, torchattacks 3.4.0 PGD). Same parent weights, data, attack randomness and batch orders, float64
models: the fixed adversarial set, every module's MRC, the fine-tuning steps (losses, parameters and BatchNorm
buffers, only the chosen module's parameters moving), theta_FT's epoch, the interpolated states, the curve and
the chosen a. Each test names one mutation of methods/rift.py that makes it fail (each was applied, seen to
fail, and reverted)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bench.core.config import EvalConfig
from bench.eval.evaluator import Evaluator
from methods.rift import RIFT_RECIPE, candidate_modules, head_module

import ref_rift as ref
from harness import EPS, assert_same_params, batches, build, moved, snapshot, step, tiny_split

N = 32
# every image held out; 4 ascent steps per epoch = batches of 8; 4 ascent epochs (the code's 10: slower, same test)
MRC_HP = {"heldout_fraction": 1.0, "mrc_steps_per_epoch": 4, "mrc_epochs": 4}


def _x(m) -> tuple[torch.Tensor, torch.Tensor]:
    held = m.heldout()
    return held.images.double() / 255, held.labels


def _fit_parent(m, steps: int = 10, lr: float = 0.05) -> None:
    """A random CNN predicts one class everywhere: a few clean full-batch steps make the parent's predictions
    (and so the interpolation curve) vary. Both the parent and the student start from the result."""
    parent = m.ctx.parent_model
    x, y = m.ctx.train.images.double() / 255, m.ctx.train.labels
    opt = torch.optim.SGD(parent.parameters(), lr=lr, momentum=0.9)
    parent.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(parent(x), y).backward()
        opt.step()
    parent.eval()
    for p in parent.parameters():
        p.requires_grad_(False)
    m.model.load_state_dict(parent.state_dict())


def test_adversarial_set_is_torchattacks_pgd_of_the_parent():
    """Mutation: ``clamp_start=False`` in ``mrc_set`` (the first gradient at an unclamped start) fails here."""
    m, _ = build("rift", MRC_HP)
    x, y = _x(m)
    x_adv, y_ours = m.mrc_set()
    want = ref.torchattacks_pgd(snapshot(m.ctx.parent_model), x, y, torch.Generator().manual_seed(m.ctx.seed))
    assert torch.equal(y_ours, y)
    assert x_adv.dtype == torch.float64
    torch.testing.assert_close(x_adv, want, rtol=0, atol=1e-12)
    assert float((x_adv - x).abs().max()) == pytest.approx(EPS)


def test_mrc_of_every_module_matches_layer_sharpness():
    """Mutation: dropping the rescale onto the 0.1 ||w|| ball (``project_to_ball`` returning ``w``) fails here."""
    m, _ = build("rift", MRC_HP)
    m.on_epoch_start(0)  # stage (a): the adversarial set, every module's MRC, the choice
    ours = m.mrc
    x_adv, y = m.mrc_set()  # the same set again (fixed seed), for the reference
    names = candidate_modules(m.model)
    assert list(ours) == names
    want, left_ball = {}, False
    for name in names:
        g = torch.Generator().manual_seed(m.ctx.seed)
        want[name], ratios = ref.module_mrc(snapshot(m.ctx.parent_model), name, x_adv, y, 8,
                                            lambda g=g: torch.randperm(N, generator=g), epochs=4)
        left_ball |= max(ratios) == pytest.approx(0.1, rel=1e-9)
        assert all(r <= 0.1 + 1e-12 for r in ratios)
    assert left_ball  # the rescale was exercised
    for name in names:
        assert ours[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12), name
    assert len(set(round(v, 6) for v in want.values())) == len(want)  # the modules differ
    pool = {k: v for k, v in want.items() if k != head_module(m.model)}
    assert (m.chosen, m.module_source) == (min(pool, key=pool.get), "mrc_argmin")


def test_finetuning_steps_match_main_train():
    """Mutation: fine-tuning in eval mode (``self.model.eval()`` in ``loss``: BatchNorm statistics frozen) fails."""
    epochs = 2
    m, loader = build("rift", {"module": "body.2.0"}, epochs=epochs)
    r = snapshot(m.model)
    opt, sched = ref.finetune_setup(r, "body.2.0", epochs=epochs)
    start = snapshot(m.model)
    for epoch in range(epochs):
        m.on_epoch_start(epoch)
        for i, b in enumerate(batches(loader, epoch)):
            out = step(m, b, epoch, i)
            want = ref.finetune_step(r, opt, b.x, b.y)
            assert out["loss"].item() == pytest.approx(want, rel=1e-12), (epoch, i)
            assert_same_params(m.model, r, prefix=f"epoch {epoch} step {i}: ")
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1e-4)]  # the decay happened on both sides
    moved_params = {k for (k, p), q in zip(m.model.named_parameters(), start.parameters()) if not torch.equal(p, q)}
    assert moved_params == {"body.2.0.weight"} and moved(start, m.model) > 1e-6
    buffers = dict(m.model.named_buffers())
    assert not torch.equal(buffers["body.0.1.running_mean"], dict(start.named_buffers())["body.0.1.running_mean"])


def test_theta_ft_interpolation_and_alpha_match_the_code():
    """Mutation: ``ft_epoch`` keeping the LAST epoch's state (instead of the first epoch with the best held-out
    clean accuracy) fails here; so does ignoring the 0.1-point robustness tolerance in ``select_alpha``."""
    epochs, steps = 3, 3
    train = dataclasses.replace(RIFT_RECIPE, epochs=epochs, batch_size=8, lr=0.05)
    m, loader = build("rift", {"module": "fc", "heldout_fraction": 1.0, "attack_steps": steps}, train=train)
    _fit_parent(m)
    at = snapshot(m.ctx.parent_model).state_dict()
    states = []
    for epoch in range(epochs):
        m.on_epoch_start(epoch)
        for i, b in enumerate(batches(loader, epoch)):
            step(m, b, epoch, i)
        states.append({k: v.clone() for k, v in m.model.state_dict().items()})
    ev = Evaluator(tiny_split(8), EvalConfig(n_clean=8, n_pgd=8, n_aa=0, batch_size=16), EPS, torch.device("cpu"),
                   seed=5)
    extra = m.finalize(m.net, ev)

    # The code evaluates its float32 model; ours evaluates a float32 copy (Evaluator.prepare): so does the reference.
    x, y = _x(m)
    x = x.float()
    r = snapshot(m.model).float()
    epoch, ft = ref.best_epoch(states, r, x, y, 16)
    assert extra["rift_ft_epoch"] == epoch
    records = ref.interpolation_curve(at, ft, r, x, y, 16, seed=5, steps=steps)
    ours = [(p["a"], 100 * p["clean"], 100 * p["robust"]) for p in extra["rift_curve"]]
    assert [a for a, _, _ in ours] == pytest.approx([a for a, _, _ in records], abs=1e-15)
    assert [c for _, c, _ in ours] == pytest.approx([c for _, c, _ in records], abs=1e-9)
    assert [rb for _, _, rb in ours] == pytest.approx([rb for _, _, rb in records], abs=1e-9)
    a = ref.paper_choice(records)
    assert extra["rift_alpha"] == pytest.approx(a, abs=1e-15)
    want = ref.interpolate(at, ft, a)  # float64 states, as ours
    got = m.model.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        if got[k].is_floating_point():
            torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-15, msg=k)
        else:  # the code's float result copied into an int64 buffer: truncated
            assert torch.equal(got[k], v.to(got[k].dtype)), k
    # the case is not degenerate: the best epoch is not the last, the tolerance excludes a cleaner a
    assert epoch < epochs and 0 < a < 1
    assert max(c for _, c, _ in records) > [c for al, c, _ in records if al == pytest.approx(a)][0]
