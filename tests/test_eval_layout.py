"""The evaluation's kernel choices (channels_last weights and conv -> BatchNorm folding, bench/eval/evaluator.py) change
speed, not results.

The per-example flags of clean, PGD-20 and AutoAttack are compared with the plain evaluation (NCHW, unfolded) and
with pyautoattack called directly on the plain NCHW model; any flip is counted (and fails the exact tests here,
where none is expected on these models)."""
from __future__ import annotations

import copy

import torch

from bench.eval.attacks import ContiguousInput
from bench.core.config import ConfigError, EvalConfig
from bench.data import DataError, load_dataset
from bench.eval.evaluator import Evaluator, FeatureMap, fold_batchnorm, fold_batchnorm_checked
from bench.models.architectures import MODELS, build_model
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
def test_fast_evaluation_gives_the_plain_per_example_results(tmp_path):
    net, test = _trained_tiny(tmp_path)
    cfg = EvalConfig(n_clean=24, n_pgd=24, n_aa=24, pgd_steps=20, batch_size=12, n_gap=24)
    fast = Evaluator(test, cfg, 8 / 255, torch.device("cpu"), memory_format=CL).run(net)
    slow = Evaluator(test, cfg, 8 / 255, torch.device("cpu"), memory_format=NCHW, fold_bn=False).run(net)
    assert fast["eval_layout"] == "channels_last" and slow["eval_layout"] == "nchw"
    assert fast["eval_bn_folded"] == 4 and slow["eval_bn_folded"] == 0
    assert 0 < fast["clean"] < 1, "the model must be partly right for the comparison to mean anything"
    for k in ("clean", "pgd20", "aa"):
        flips = sum(a != b for a, b in zip(fast["per_example"][k], slow["per_example"][k]))
        assert flips == 0, f"{k}: {flips} of {len(fast['per_example'][k])} flags flipped with the layout"
    # The gap is a mean over PGD-20 images, and the two evaluations' kernels sum in another order, so their x'
    # can differ where an input-gradient component is near 0 (its sign flips). Measured: 4.2e-5 apart on an
    # AVX2-only AMD EPYC (family 25 model 1) and 1.5e-5 on an Intel Xeon with AMX, where the gap's standard error
    # over these 24 images is 1.8e-3 (gap 0.099). The tolerance is 10% of that standard error (4x the largest
    # difference measured): inside the noise the gap is reported with, and far below any real change.
    diff, se = abs(fast["feature_gap"] - slow["feature_gap"]), slow["feature_gap_se"]
    print(f"feature gap {slow['feature_gap']:.6f} +- {se:.6f} (SE); layouts differ by {diff:.2e}")
    assert diff <= 0.1 * se, (diff, se)
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
    assert input_grad(ContiguousInput(odd)).is_contiguous()
    assert input_grad(ContiguousInput(model)).is_contiguous()


def test_stored_chunks_are_kept_apart_by_layout_and_folding(tmp_path):
    net, test = _trained_tiny(tmp_path)
    cfg = EvalConfig(n_clean=24, n_pgd=12, n_aa=0, pgd_steps=2, batch_size=12, n_gap=12)
    for fmt, fold in ((CL, True), (NCHW, True), (NCHW, False)):
        Evaluator(test, cfg, 8 / 255, torch.device("cpu"), memory_format=fmt, fold_bn=fold).run(
            net, state_dir=tmp_path / "st")
    assert len(list((tmp_path / "st").glob("eval-*"))) == 3


def _with_trained_bn_statistics(net: torch.nn.Module) -> torch.nn.Module:
    # Non-trivial running statistics and affine parameters, so that a wrong fold would show in the outputs
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.running_mean, m.running_var, m.weight, m.bias):
                t.data = torch.rand(t.shape, generator=g) + 0.5
    return net.eval()


# conv -> BN pairs each model has: every conv of the small CNN and the ResNets; in the pre-activation nets the conv
# a block's second BN follows (the others feed a sum, not a BatchNorm), and WRN's stem conv (its first block's BN)
FOLDABLE = {"small_cnn": 4, "resnet18": 20, "resnet18_afd": 20, "resnet50": 53, "resnet50_afd": 53, "preact_resnet18": 8, "wrn34_10": 16}


@pytest.mark.parametrize("name", MODELS)
def test_batchnorm_folding_finds_every_conv_bn_pair_and_keeps_the_function(name):
    torch.manual_seed(0)
    net = _with_trained_bn_statistics(build_model(name, 10, 3))
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    folded, n = fold_batchnorm_checked(Evaluator.prepare(net, CL), x.detach(), CL)
    assert n == FOLDABLE[name]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) - n
    assert all(not p.requires_grad and p.is_contiguous(memory_format=CL) for p in folded.parameters() if p.dim() == 4)
    # In float64 the folded model is the same function with the same input gradient (what the attacks use) to
    # rounding; in float32 only the summation order differs
    net64, x64 = net.double(), x.detach().double().requires_grad_(True)
    folded64 = copy.deepcopy(net64)
    assert fold_batchnorm(folded64) == n
    want, got = net64(x64), folded64(x64)
    assert torch.allclose(got, want, atol=1e-10 * float(want.abs().max()), rtol=0)
    gw, gg = (torch.autograd.grad(out.logsumexp(1).sum(), [x64])[0] for out in (want, got))
    assert torch.allclose(gg, gw, atol=1e-9 * float(gw.abs().max()), rtol=0)


class _Untraceable(torch.nn.Module):
    """Data-dependent Python in forward (fx cannot trace it): the children are folded one by one."""

    def __init__(self):
        super().__init__()
        self.net = build_model("small_cnn", 10, 3)

    def forward(self, x):
        return self.net(x) if float(x.mean()) >= 0 else -self.net(x)


class _BnOnAnotherPath(torch.nn.Module):
    """Its child's forward is conv -> BN, but the parent applies the BN to the raw input and the conv after it."""

    def __init__(self):
        super().__init__()
        self.block = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1, bias=False), torch.nn.BatchNorm2d(3))
        self.flag = True

    def forward(self, x):
        if self.flag is not None and float(x.sum()) > -1:  # untraceable: the search goes into the children
            return self.block[0](self.block[1](x)).mean((2, 3))
        return x


def test_folding_falls_back_to_children_and_is_checked_on_real_outputs():
    m = _with_trained_bn_statistics(_Untraceable())
    assert fold_batchnorm(Evaluator.prepare(m, CL)) == 4
    # Tracing the child alone finds a conv -> BN pair that the parent does not use that way: the output check
    # catches it and the copy stays unfolded (the same outputs as the model)
    odd = _with_trained_bn_statistics(_BnOnAnotherPath())
    x = torch.rand(4, 3, 8, 8)
    assert fold_batchnorm(Evaluator.prepare(odd, CL)) == 1
    kept, n = fold_batchnorm_checked(Evaluator.prepare(odd, CL), x, CL)
    assert n == 0 and torch.allclose(kept(x), odd(x), atol=1e-6)


def test_feature_map_folds_the_model_inside_it():
    torch.manual_seed(0)
    net = _with_trained_bn_statistics(build_model("small_cnn", 10, 3))
    feats = FeatureMap(net, torch.nn.Linear(256, 8), what="D1 g")
    x = torch.rand(3, 3, 32, 32)
    folded, n = fold_batchnorm_checked(Evaluator.prepare(feats, CL), x, CL)
    assert n == 4 and folded.what == "D1 g"
    assert torch.allclose(folded(x), feats.eval()(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"{SHARED_CIFAR} not present")
def test_speed_eval_against_pyautoattack_direct_on_cifar():
    """`bench speed-eval` on a partly robust small CNN (real CIFAR-10-JPEG test images): our NCHW evaluation
    equals pyautoattack called directly flag by flag; the channels_last one too (flips counted)."""
    from bench.perf.speed_eval import measure_eval, render_eval

    rep = measure_eval(model="small_cnn", n=40, reps=1, train_steps=25, device="cpu", threats=False)
    assert rep["threats"] == {}  # L2 AutoAttack and the corruptions: tests/test_speed_threats.py
    rows = {r["measure"]: r for r in rep["rows"]}
    assert "cifar10-jpeg" in rep["model"]
    assert 0 < rows["aa"]["accuracy"]["direct"] < rows["clean"]["accuracy"]["direct"], "AA must do real work"
    for k in ("clean", "pgd20", "aa"):
        assert rows[k]["flips_plain"] == 0, f"{k}: our plain (NCHW, unfolded) evaluation differs from pyautoattack direct"
        assert rows[k]["flips"] == 0, f"{k}: {rows[k]['flips']} channels_last flips"
        assert rows[k]["ours_s"] > 0 and rows[k]["direct_s"] > 0
    assert rows["pgd20+aa"]["speedup"] == pytest.approx(rows["pgd20+aa"]["direct_s"] / rows["pgd20+aa"]["ours_s"])
    assert "| aa |" in render_eval(rep)


@pytest.mark.slow
def test_speed_eval_contenders_and_saved_model(tmp_path):
    """`--contenders ours,direct` leaves the plain diagnosis out (reported as absent, not as zero); `--save-model`
    writes the model made here, and evaluating that checkpoint gives the same flags; bad choices are refused."""
    from bench.perf.speed_eval import measure_eval, render_eval

    saved = tmp_path / "m.pt"
    rep = measure_eval(model="small_cnn", n=6, reps=1, train_steps=2, device="cpu", contenders=["direct", "ours"],
                       save_model=str(saved), threats=False)
    assert rep["contenders"] == ["ours", "direct"]
    rows = {r["measure"]: r for r in rep["rows"]}
    assert rows["aa"]["flips_plain"] is None and rows["aa"]["speedup_plain"] is None
    assert "ours_plain_s" not in rows["aa"] and rows["aa"]["ours_s"] > 0 and rows["aa"]["direct_s"] > 0
    assert "| aa | " in render_eval(rep) and "(-)" in render_eval(rep)
    if rep["data"] == "cifar10-jpeg":
        again = measure_eval(model="small_cnn", checkpoint=str(saved), n=6, reps=1, device="cpu",
                             contenders=["ours", "direct"], threats=False)
        assert [r.get("accuracy") for r in again["rows"]] == [r.get("accuracy") for r in rep["rows"]]
    else:  # a checkpoint is never measured on synthetic images
        assert "data: synthetic colour classes" in render_eval(rep)
        with pytest.raises(ConfigError, match="BENCH_DATA_ROOT"):
            measure_eval(model="small_cnn", checkpoint=str(saved), n=6, reps=1, device="cpu")
    for bad in (["ours"], ["ours", "direct", "mine"]):
        with pytest.raises(ConfigError, match="--contenders"):
            measure_eval(model="small_cnn", n=6, contenders=bad)


def test_speed_eval_render_small_rates_and_absent_plain():
    """ResNet18 AutoAttack on a CPU runs at ~0.1 images/s: shown with three significant digits, not as 0.1 for
    both contenders; a contender left out is '-', never a number."""
    from bench.perf.speed_eval import render_eval

    row = {"measure": "aa", "ours_images_per_s": 0.1218, "direct_images_per_s": 0.1083, "speedup": 1.125,
           "speedup_plain": None, "accuracy": {"ours": 0.219, "direct": 0.219}, "flips": 0, "flips_plain": None}
    rep = {"device_name": "x", "device": "cuda", "model": "resnet18", "n": 32, "reps": 1, "threads": 2,
           "rows": [row]}
    line = next(l for l in render_eval(rep).splitlines() if l.startswith("| aa |"))
    assert line == "| aa | 0.122 | - | 0.108 | x1.12 | - | 0.219 | 0 (-) |"
    assert "synthetic" not in render_eval(rep)


def test_speed_eval_names_synthetic_data(monkeypatch, tmp_path):
    """Without CIFAR-10-JPEG, the model made here trains and is measured on synthetic images: the JSON's ``data``
    and the printed header say so (they once showed no sign of it); a checkpoint is refused instead."""
    from bench.perf import speed_eval

    def no_data(*args, **kwargs):
        raise DataError("CIFAR-10 (JPEG) not found")

    monkeypatch.setattr(speed_eval, "load_dataset", no_data)  # whatever this machine holds
    monkeypatch.setattr(speed_eval, "_rounds", lambda runs, reps, log: (
        {c: [{k: 1.0 for k in speed_eval.MEASURES}] for c in runs},
        {c: {k: torch.ones(4, dtype=torch.bool) for k in speed_eval.MEASURES} for c in runs}))
    rep = speed_eval.measure_eval(model="small_cnn", n=4, reps=1, train_steps=0, device="cpu")
    assert rep["data"] == speed_eval.SYNTHETIC
    assert "data: synthetic colour classes" in speed_eval.render_eval(rep).splitlines()[1]
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(ConfigError, match="not found under .*BENCH_DATA_ROOT"):
        speed_eval.measure_eval(model="small_cnn", checkpoint=str(ckpt), n=4, reps=1, device="cpu")
