"""Differential tests: our Free-AT against ref_free_at.py (locuslab/fast_adversarial CIFAR10/train_free.py as run),
in float64 from identical weights on identical batches (Free-AT draws no random numbers)."""
from __future__ import annotations

import torch

import harness
from ref_free_at import FreeATReference

REPLAYS = 3
EPOCHS = 2
N = 20  # batches of 8, 8, 4: the short last batch uses the first rows of the perturbation buffer


def _pair(hp=None):
    m, loader = harness.build("free_at", {"replays": REPLAYS, **(hp or {})}, epochs=EPOCHS, batch_size=8, n=N)
    ref_model = harness.snapshot(m.model).train()
    cfg = m.ctx.train_cfg
    ref = FreeATReference(ref_model, batch_size=cfg.batch_size, image_shape=(3, harness.S, harness.S),
                          eps=harness.EPS, lr_max=cfg.lr, epochs=cfg.epochs, batches_per_epoch=len(loader),
                          replays=REPLAYS, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # What our replays used: the lr and momentum at each optimizer step, and each forward's logits.
    seen = {"lr": [], "momentum": [], "logits": []}
    (opt,) = m.optimizers
    real_step = opt.step

    def step(*a, **k):
        seen["lr"].append(opt.param_groups[0]["lr"])
        seen["momentum"].append(opt.param_groups[0]["momentum"])
        return real_step(*a, **k)

    opt.step = step
    m.model.register_forward_hook(lambda mod, inp, out: seen["logits"].append(out.detach()))
    return m, loader, ref, seen


def _assert_same_optimizer_state(m, ref):
    (opt,) = m.optimizers
    for (name, p), q in zip(m.model.named_parameters(), ref.model.parameters()):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref.opt.state[q]["momentum_buffer"],
                                   rtol=1e-10, atol=1e-12, msg=lambda s, n=name: f"momentum buffer {n}: {s}")


def test_free_at_matches_train_free_replay_by_replay_over_a_whole_cycling_run():
    """Two passes over 3 batches (the last one short), 3 replays each: 18 optimizer steps, the whole CyclicLR
    triangle (lr 0 -> 0.04 -> 0, momentum 0.9 -> 0.8 -> 0.9). Per replay: equal logits, loss, lr and momentum;
    per batch: equal parameters, BatchNorm buffers, momentum buffers and the persistent perturbation (all rows).

    Mutation that fails it (checked): momentum held at 0.9 (Free-AT's recipe with cycle_momentum=False)."""
    m, loader, ref, seen = _pair()
    start = harness.snapshot(m.model)
    k = 0
    for epoch in range(EPOCHS):
        for i, batch in enumerate(harness.batches(loader, epoch)):
            out = harness.step(m, batch, epoch, i)
            replays = ref.batch(batch.x, batch.y)
            for r, (loss, logits, lr, mom) in enumerate(replays):
                where = f"epoch {epoch} batch {i} replay {r}"
                assert abs(seen["lr"][k] - lr) < 1e-15, f"{where}: lr {seen['lr'][k]} != {lr}"
                assert abs(seen["momentum"][k] - mom) < 1e-15, f"{where}: momentum {seen['momentum'][k]} != {mom}"
                torch.testing.assert_close(seen["logits"][k], logits, rtol=1e-10, atol=1e-12,
                                           msg=lambda s, w=where: f"{w} logits: {s}")
                k += 1
            torch.testing.assert_close(out["loss"], replays[-1][0], rtol=1e-10, atol=1e-12)
            harness.assert_same_params(m.model, ref.model, prefix=f"epoch {epoch} batch {i}: ")
            _assert_same_optimizer_state(m, ref)
            torch.testing.assert_close(m.delta, ref.delta.detach(), rtol=0, atol=1e-12,
                                       msg=lambda s, e=epoch, b=i: f"epoch {e} batch {b} delta: {s}")
    assert k == EPOCHS * len(loader) * REPLAYS == 18
    # The run really cycled: lr from 0 up to the peak and back, momentum down to 0.8 and back up.
    assert seen["lr"][0] == 0 and max(seen["lr"]) == m.ctx.train_cfg.lr
    assert seen["momentum"][0] == 0.9 and abs(min(seen["momentum"]) - 0.8) < 1e-15 and seen["momentum"][-1] > 0.88
    with torch.no_grad():
        assert harness.moved(start, m.model) > 1e-3
    assert m.delta.abs().max() > 0 and m.delta.abs().max() <= harness.EPS + 1e-15


def test_free_at_first_replay_of_a_batch_forwards_the_carried_perturbation_unboxed():
    """train_free.py:97 forwards X + delta where delta was boxed for the PREVIOUS batch's images: at the first
    replay of the second batch some inputs leave [0, 1], in the reference and in ours alike (same logits).

    Mutation that fails it (checked): rebox_carried defaulting to True (delta re-boxed for the current images
    before the first forward)."""
    m, loader, ref, seen = _pair()
    b1, b2 = harness.batches(loader, 0)[:2]
    harness.step(m, b1, 0, 0)
    ref.batch(b1.x, b1.y)
    carried = ref.delta.detach()[: len(b2.y)].clone()
    outside = ((b2.x + carried < 0) | (b2.x + carried > 1)).double().mean().item()
    assert outside > 0.005, outside  # the case this test is about does occur (~3% of the inputs here)
    n_before = len(seen["logits"])
    harness.step(m, b2, 0, 1)
    (loss, logits, _, _), *_ = ref.batch(b2.x, b2.y)
    torch.testing.assert_close(seen["logits"][n_before], logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.delta, ref.delta.detach(), rtol=0, atol=1e-12)


def test_free_at_rebox_variant_differs_from_the_code_only_at_the_first_replay_of_a_batch():
    """The principled variant (rebox_carried=True) forwards x + delta boxed for the current images: its first
    forward of the second batch differs from the code's, every input is in [0, 1], and it equals the reference
    fed the re-boxed perturbation.

    Mutation that fails it (checked): the re-box applied to a copy that is not the tensor forwarded (i.e. the
    hyperparameter has no effect)."""
    m, loader, ref, seen = _pair({"rebox_carried": True})
    b1, b2 = harness.batches(loader, 0)[:2]
    harness.step(m, b1, 0, 0)
    ref.batch(b1.x, b1.y)
    harness.assert_same_params(m.model, ref.model)  # first batch: delta starts at 0, boxing changes nothing
    with torch.no_grad():
        ref.delta[: len(b2.y)] = torch.max(torch.min(ref.delta[: len(b2.y)], 1 - b2.x), -b2.x)
    n_before = len(seen["logits"])
    harness.step(m, b2, 0, 1)
    replays = ref.batch(b2.x, b2.y)
    for r, (_, logits, _, _) in enumerate(replays):
        torch.testing.assert_close(seen["logits"][n_before + r], logits, rtol=1e-10, atol=1e-12)
    harness.assert_same_params(m.model, ref.model)
    torch.testing.assert_close(m.delta, ref.delta.detach(), rtol=0, atol=1e-12)
