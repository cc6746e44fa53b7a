"""The evaluation's weight layout (channels_last by default, bench/evaluate.py) changes speed, not results.

The per-example flags of clean, PGD-20 and AutoAttack are compared with the contiguous (NCHW) evaluation and with
pyautoattack called directly on the plain NCHW model; any flip is counted (and fails the exact tests here, where
none is expected on these models)."""
from __future__ import annotations

import torch

from bench.attacks import _AAModel
from bench.config import EvalConfig
from bench.data import load_dataset
from bench.evaluate import Evaluator
from bench.models import build_model
from conftest import SHARED_CIFAR, write_tiny_folder

import pytest

CL, NCHW = torch.channels_last, torch.contiguous_format


def _trained_tiny(tmp_path):
    """A small CNN that has seen a few steps on a 4-colour folder: some test images right, some wrong."""
    folder = write_tiny_folder(tmp_path / "four", classes=("red", "green", "blue", "redgreen"), n_train=64, n_test=24)
    train, test, info = load_dataset(f"folder:{folder}", None, None)
    torch.manual_seed(0)
    net = build_model("small_cnn", info.num_classes, info.channels)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = train.images.float() / 255, train.labels
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), test


@pytest.mark.slow  # AutoAttack on a partly right model: ~30 s
def test_channels_last_evaluation_gives_the_nchw_per_example_results(tmp_path):
    net, test = _trained_tiny(tmp_path)
    cfg = EvalConfig(n_clean=24, n_pgd=24, n_aa=24, pgd_steps=20, batch_size=12, n_gap=24)
    fast = Evaluator(test, cfg, 8 / 255, torch.device("cpu"), memory_format=CL).run(net)
    slow = Evaluator(test, cfg, 8 / 255, torch.device("cpu"), memory_format=NCHW).run(net)
    assert fast["eval_layout"] == "channels_last" and slow["eval_layout"] == "nchw"
    assert 0 < fast["clean"] < 1, "the model must be partly right for the comparison to mean anything"
    for k in ("clean", "pgd20", "aa"):
        flips = sum(a != b for a, b in zip(fast["per_example"][k], slow["per_example"][k]))
        assert flips == 0, f"{k}: {flips} of {len(fast['per_example'][k])} flags flipped with the layout"
    assert abs(fast["feature_gap"] - slow["feature_gap"]) <= 1e-5 * max(1.0, slow["feature_gap"])
    assert next(net.parameters()).is_contiguous()  # the caller's model keeps its layout


class _ToChannelsLast(torch.nn.Module):
    def forward(self, x):
        return x.contiguous(memory_format=CL)


def test_autoattack_gets_contiguous_input_gradients_from_a_channels_last_copy():
    torch.manual_seed(0)
    model = Evaluator.prepare(build_model("small_cnn", 10, 3), CL)
    assert model.body[0][0].weight.is_contiguous(memory_format=CL)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)

    def input_grad(m):  # as pyautoattack takes it (torch.autograd.grad: no .grad layout contract)
        return torch.autograd.grad(m(x).sum(), [x])[0]

    # A model that moves its input to channels_last hands back a non-contiguous input gradient (the pitfall of
    # methods.md: pyautoattack's grad.view then crashes) ...
    odd = torch.nn.Sequential(_ToChannelsLast(), model)
    assert not input_grad(odd).is_contiguous()
    # ... and the guard hands AutoAttack a contiguous one, for it and for the evaluator's copy alike
    assert input_grad(_AAModel(odd)).is_contiguous()
    assert input_grad(_AAModel(model)).is_contiguous()


def test_stored_chunks_are_kept_apart_by_layout(tmp_path):
    net, test = _trained_tiny(tmp_path)
    cfg = EvalConfig(n_clean=24, n_pgd=12, n_aa=0, pgd_steps=2, batch_size=12, n_gap=12)
    for fmt in (CL, NCHW):
        Evaluator(test, cfg, 8 / 255, torch.device("cpu"), memory_format=fmt).run(net, state_dir=tmp_path / "st")
    assert len(list((tmp_path / "st").glob("eval-*"))) == 2


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"{SHARED_CIFAR} not present")
def test_speed_eval_against_pyautoattack_direct_on_cifar():
    """`bench speed --eval` on a partly robust small CNN (real CIFAR-10-JPEG test images): our NCHW evaluation
    equals pyautoattack called directly flag by flag; the channels_last one too (flips counted)."""
    from bench.speed_eval import measure_eval, render_eval

    rep = measure_eval(model="small_cnn", n=40, reps=1, train_steps=25, device="cpu")
    rows = {r["measure"]: r for r in rep["rows"]}
    assert "cifar10-jpeg" in rep["model"]
    assert 0 < rows["aa"]["accuracy"]["direct"] < rows["clean"]["accuracy"]["direct"], "AA must do real work"
    for k in ("clean", "pgd20", "aa"):
        assert rows[k]["flips_nchw"] == 0, f"{k}: our NCHW evaluation differs from pyautoattack direct"
        assert rows[k]["flips"] == 0, f"{k}: {rows[k]['flips']} channels_last flips"
        assert rows[k]["ours_s"] > 0 and rows[k]["direct_s"] > 0
    assert rows["pgd20+aa"]["speedup"] == pytest.approx(rows["pgd20+aa"]["direct_s"] / rows["pgd20+aa"]["ours_s"])
    assert "| aa |" in render_eval(rep)
