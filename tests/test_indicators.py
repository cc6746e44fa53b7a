"""Indicators of attack failure (bench/eval/indicators.py): models built to defeat the attacks, from the families
the literature names, are each flagged by the indicator meant for them; honest models are not.

Every planted model wraps the same honest classifier (a small MLP trained here on the digits, in seconds), so what
an indicator sees is the defence and nothing else. The printed values (``pytest -s``) are each indicator's number.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.config import EvalConfig
from bench.data import load_dataset
from bench.eval import indicators
from bench.eval.attacks import PGDTrace, pgd
from bench.eval.evaluator import Evaluator
from bench.eval.indicators import INDICATORS, IndicatorOptions
from conftest import REPO, SHARED_CIFAR

EPS = 0.1  # a radius at which the honest MLP is partly robust, so that there is something to defend
N = 120


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None, None)


@pytest.fixture(scope="module")
def honest(digits) -> nn.Module:
    """A small MLP, adversarially trained for a few hundred steps (PGD-3 at EPS): partly robust at EPS."""
    train = digits[0]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(train), (64,), generator=g)
        x, y = train.images[idx].float() / 255, train.labels[idx]
        x = pgd(net, x, y, eps=EPS, step_size=EPS / 2, steps=3, generator=g)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def evaluate(model: nn.Module, test, *, steps: int = 20, step_size: float | None = None, n: int = N,
             opts: IndicatorOptions = IndicatorOptions(n_costly=60)) -> dict:
    cfg = EvalConfig(n_clean=n, n_pgd=n, n_aa=0, pgd_steps=steps, batch_size=n,
                     pgd_step_size=2.5 * EPS / steps if step_size is None else step_size)
    ev = Evaluator(test, cfg, EPS, torch.device("cpu"), checks=opts, fold_bn=False)
    m = ev.run(model, features=Logits(model))
    print(f"\n{type(model).__name__}: clean {m['clean']:.3f} pgd {m['pgd20']:.3f} unreliable {m.get('unreliable')}")
    for name, d in m.get("indicators", {}).items():
        print(f"  {name:24s} {d['value']:.4f} (threshold {d['threshold']}, n {d['n']})")
    return m


class Logits(nn.Module):
    """The feature gap on the outputs: the planted models have no hidden layer of their own."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


class Wrap(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net


# --- non-differentiable or gradient-free input transformations -------------------------------------------------
class Quantize(Wrap):
    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


class Threshold(Wrap):
    def forward(self, x):
        return self.net((x > 0.5).float() + 0 * x)  # no gradient through the comparison, as in the wild


class Detached(Wrap):
    """The input enters through a detached copy; a zero term keeps the graph (as ``x * 0`` pre-processing does)."""

    def forward(self, x):
        return self.net(x.detach()) + 0 * x.sum()


# --- saturated outputs ----------------------------------------------------------------------------------------
class Saturated(Wrap):
    scale = 1e4

    def forward(self, x):
        return self.net(x) * self.scale


class Saturated3(Saturated):
    scale = 1e3


class SaturatedProbabilities(Wrap):
    """Outputs probabilities of hugely scaled logits: one-hot in float32 for every confident example."""

    def forward(self, x):
        return F.softmax(self.net(x) * 1e4, dim=1)


class SaturatedFar(Wrap):
    """Honest near the data, saturated (zero gradient) once the input is noisy: its high-frequency content (the
    mean distance to a 3x3 average) is above that of any digit plus a uniform start of radius EPS (0.051 at most
    on the first 120 test images), below that of one of radius 2 EPS (0.069 at least)."""

    def forward(self, x):
        noisy = (x - F.avg_pool2d(x, 3, 1, 1)).abs().flatten(1).mean(1) > 0.06
        return self.net(x) * torch.where(noisy, 1e4, 1.0)[:, None]


# --- randomness in the forward pass ---------------------------------------------------------------------------
class InputNoise(Wrap):
    def forward(self, x):
        return self.net((x + 0.1 * torch.randn_like(x)).clamp(0, 1))


class DropoutAlwaysOn(Wrap):
    def forward(self, x):
        h = F.relu(self.net[1](self.net[0](x)))
        return self.net[3](F.dropout(h, 0.3, training=True))


class RandomLogits(Wrap):
    def forward(self, x):
        out = self.net(x)
        return out + 0.5 * torch.randn_like(out)


# --- gradients that point nowhere useful ----------------------------------------------------------------------
class _Backward(torch.autograd.Function):
    """Identity forward; the backward is ``Wrong.how``'s idea of the gradient."""

    @staticmethod
    def forward(ctx, x, owner):
        ctx.owner = owner
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.owner.wrong(grad), None


class Negated(Wrap):
    def forward(self, x):
        return self.net(_Backward.apply(x, self))

    def wrong(self, grad):
        return -grad


class RandomGradient(Negated):
    def wrong(self, grad):
        return torch.randn_like(grad)


class Permuted(Negated):
    """The gradient of other pixels: a fixed shuffle of the true one."""

    def wrong(self, grad):
        flat = grad.flatten(1)
        order = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(0))
        return flat[:, order].view_as(grad)


class Constant(Negated):
    """Always 'brighten every pixel'."""

    def wrong(self, grad):
        return torch.ones_like(grad)


class Oscillating(Negated):
    """The true gradient for five calls, its negative for the next five: the attack walks out and back again,
    and returns a point near where it started."""

    def __init__(self, net):
        super().__init__(net)
        self.calls = 0

    def wrong(self, grad):
        self.calls += 1
        return grad if (self.calls - 1) // 5 % 2 == 0 else -grad


class FewPixels(Negated):
    """The true gradient on a fresh random fifth of the pixels at each call, zero elsewhere: each sign step moves
    a fifth of the image, so PGD-20 is still gaining when it stops (PGD accuracy 0.75 against the honest model's
    0.56). A tenth of the pixels (0.84) stops it so far from converging that few margins are near breaking, and
    the indicator, which asks whether another quarter of the steps would break them, stays below its threshold."""

    def wrong(self, grad):
        return grad * (torch.rand_like(grad) < 0.2)


class _OnlyAtData(torch.autograd.Function):
    """Identity forward; the true gradient at an image of the data set (every pixel on the 1/255 grid), its
    negative anywhere else."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(((x * 255 - (x * 255).round()).abs() < 1e-3).flatten(1).all(1))
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (at_data,) = ctx.saved_tensors
        return torch.where(at_data.view(-1, *[1] * (grad.dim() - 1)), grad, -grad)


class OnlyAtData(Wrap):
    """Gradients that point the right way only where FGSM starts (the clean image) and away everywhere PGD's
    random start and iterates lie."""

    def forward(self, x):
        return self.net(_OnlyAtData.apply(x))


# --- a defence that runs an optimisation in its forward pass (AutoAttack's "dynamic defense") ------------------
class Purifying(Wrap):
    """Test-time purification: one signed gradient step on the input towards a more confident prediction before
    classifying it. Its forward calls autograd, which AutoAttack's check_dynamic looks for."""

    def forward(self, x):
        with torch.inference_mode(False), torch.enable_grad():  # evaluation's clean pass runs in inference mode
            z = x.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.log_softmax(self.net(z), 1).amax(1).sum(), [z])
        return self.net((x + 0.01 * g.sign()).clamp(0, 1))


FAMILIES = {
    "zero_gradients": [Quantize, Threshold, Detached, Saturated, Saturated3, SaturatedProbabilities],
    "unbounded_pgd": [Quantize, Threshold, Detached, Negated, RandomGradient, Permuted, Constant],
    "unstable_predictions": [InputNoise, DropoutAlwaysOn, RandomLogits],
    "pgd_best_not_returned": [Oscillating],
    "noise_beats_pgd": [Negated],
    "eps_sweep_rises": [SaturatedFar, Negated],
    "pgd_loss_rising": [FewPixels],
    "fgsm_beats_pgd": [OnlyAtData],
}


@pytest.mark.parametrize("name,cls", [(k, c) for k, cs in FAMILIES.items() for c in cs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_planted_failure_trips_its_indicator(honest, digits, name, cls):
    torch.manual_seed(0)
    m = evaluate(cls(honest), digits[1])
    assert m["indicators"][name]["tripped"], (name, m["indicators"][name])
    assert name in m["unreliable"]


def test_honest_model_trips_nothing(honest, digits):
    m = evaluate(honest, digits[1])
    assert m["unreliable"] == [], m["indicators"]
    assert set(m["indicators"]) == set(INDICATORS) - {k for k in INDICATORS if k.startswith("aa_")}


@pytest.mark.parametrize("steps,step_size", [(20, 0.003), (30, 0.002)], ids=["paper-step", "smaller-step"])
def test_attack_stopped_before_it_converged_trips_loss_rising(honest, digits, steps, step_size):
    """The honest model, attacked by a PGD whose path cannot reach the radius: the paper's step 0.003 for 20 steps
    (0.06 < EPS), or 30 steps of 0.002."""
    m = evaluate(honest, digits[1], steps=steps, step_size=step_size)
    assert m["indicators"]["pgd_loss_rising"]["tripped"], m["indicators"]["pgd_loss_rising"]
    assert m["pgd20"] > evaluate(honest, digits[1])["pgd20"]  # and indeed the number was too high


def test_weak_attack_is_beaten_by_fgsm(honest, digits):
    m = evaluate(honest, digits[1], steps=20, step_size=0.003)
    assert m["indicators"]["fgsm_beats_pgd"]["tripped"], m["indicators"]["fgsm_beats_pgd"]


def test_trace_leaves_pgd_bit_identical(honest, digits):
    x, y = digits[1].images[:64].float() / 255, digits[1].labels[:64]
    plain = pgd(honest, x, y, eps=EPS, step_size=0.01, steps=7, generator=torch.Generator().manual_seed(3))
    trace = PGDTrace(y)
    traced = pgd(honest, x, y, eps=EPS, step_size=0.01, steps=7, generator=torch.Generator().manual_seed(3),
                 trace=trace)
    assert torch.equal(plain, traced)
    assert len(trace.margins) == len(trace.wrong) == 7 and trace.bad_first_grad.shape == (64,)


def test_result_format_and_printout(honest, digits):
    from bench.eval.standalone import render

    m = evaluate(Quantize(honest), digits[1], n=40)
    for d in m["indicators"].values():
        assert set(d) == {"value", "threshold", "tripped", "n", "what"} and isinstance(d["tripped"], bool)
    assert m["unreliable"] == sorted(k for k, d in m["indicators"].items() if d["tripped"])
    assert m["seconds"]["indicators"] > 0 and m["seconds"]["indicators_subset"] > 0
    out = render({"spec": {"model": "m", "dataset": "digits"}, "metrics": m, "sanity": "ok"})
    assert "evaluation potentially unreliable: unbounded_pgd, zero_gradients\n" in out
    assert "  zero_gradients: 1 > 0.001 (" in out
    assert "evaluation checks: no indicator" in render({"spec": {"model": "m", "dataset": "digits"}, "sanity": "ok",
                                                         "metrics": evaluate(honest, digits[1], n=40)})


def test_switched_off_leaves_no_keys_and_same_numbers(honest, digits):
    on = evaluate(honest, digits[1], n=40)
    off = evaluate(honest, digits[1], n=40, opts=IndicatorOptions(enabled=False))
    assert "indicators" not in off and "unreliable" not in off
    assert on["per_example"] == off["per_example"] and on["feature_gap"] == off["feature_gap"]


def test_resumed_evaluation_keeps_its_indicators(honest, digits, tmp_path):
    """Flags live in the stored chunks: a second run reads them back; a chunk stored without them (indicators
    off) is measured again when they are on."""
    cfg = EvalConfig(n_clean=40, n_pgd=40, n_aa=0, pgd_steps=5, batch_size=20, pgd_step_size=2.5 * EPS / 5)
    model = Quantize(honest)

    def run(opts):
        ev = Evaluator(digits[1], cfg, EPS, torch.device("cpu"), checks=opts, fold_bn=False)
        return ev.run(model, features=Logits(model), state_dir=tmp_path)

    run(IndicatorOptions(enabled=False))
    first = run(IndicatorOptions(n_costly=30))
    assert first["indicators"]["zero_gradients"]["tripped"]
    stored = sorted(p.name for p in tmp_path.glob("eval-*/*.pt"))
    assert any(name.startswith("checks-") for name in stored)
    again = run(IndicatorOptions(n_costly=30))
    assert again["indicators"] == first["indicators"]
    assert again["seconds"] == first["seconds"]  # nothing was measured again


def test_autoattack_warnings_are_captured_as_numbers():
    import logging

    from bench.eval.attacks import AAChecks

    heard = AAChecks(200)
    log = logging.getLogger("auto-attack-test")
    log.addHandler(heard)
    try:
        log.warning('it seems to be a randomized defense! Please use version="rand".')
        log.warning(f"there are {torch.tensor(7)} points with zero gradient! This might lead to unreliable")
        log.warning("Square Attack has decreased the robust accuracy of 1.50%. This might indicate")
    finally:
        log.removeHandler(heard)
    got = heard.values()
    assert got["aa_randomized"] == 1 and got["aa_dynamic"] == 0 and got["aa_probabilities"] == 0
    assert got["aa_zero_gradients"] == pytest.approx(7 / 200) and got["aa_square_beats_whitebox"] == pytest.approx(0.015)
    found = indicators.summarise(None, None, torch.tensor([list(got.values())]), 200)
    assert indicators.unreliable(found) == ["aa_randomized", "aa_square_beats_whitebox", "aa_zero_gradients"]


@pytest.mark.slow
@pytest.mark.parametrize("cls,name", [(SaturatedProbabilities, "aa_probabilities"), (RandomLogits, "aa_randomized"),
                                      (Detached, "aa_zero_gradients"), (Purifying, "aa_dynamic"),
                                      # white-box attacks follow the negated gradient away; Square needs none
                                      (Negated, "aa_square_beats_whitebox")],
                         ids=lambda v: getattr(v, "__name__", v))
def test_autoattack_checks_are_stored(honest, digits, cls, name):
    cfg = EvalConfig(n_clean=20, n_pgd=20, n_aa=20, pgd_steps=5, batch_size=20, pgd_step_size=2.5 * EPS / 5)
    model = cls(honest)
    m = Evaluator(digits[1], cfg, EPS, torch.device("cpu"), fold_bn=False).run(model, features=Logits(model))
    assert m["indicators"][name]["tripped"], {k: v["value"] for k, v in m["indicators"].items()}
    assert name in m["unreliable"]


@pytest.mark.slow
def test_honest_model_under_autoattack_trips_nothing(honest, digits):
    cfg = EvalConfig(n_clean=40, n_pgd=40, n_aa=40, batch_size=40, pgd_step_size=2.5 * EPS / 20)
    m = Evaluator(digits[1], cfg, EPS, torch.device("cpu"), fold_bn=False).run(honest, features=Logits(honest))
    print({k: v["value"] for k, v in m["indicators"].items()})
    assert m["unreliable"] == [] and {k for k in m["indicators"] if k.startswith("aa_")} == {
        "aa_randomized", "aa_probabilities", "aa_dynamic", "aa_zero_gradients", "aa_square_beats_whitebox"}


def test_speed_eval_reports_the_indicators_cost_beside_the_evaluation(tmp_path, monkeypatch):
    from bench.perf.speed_eval import measure_eval, render_eval

    from bench.perf import speed_threats

    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path))  # synthetic images: no CIFAR-10 here
    monkeypatch.setattr(speed_threats, "EPS_L2", 8.0)  # L2 AutoAttack done by APGD-CE at once: seconds, not minutes
    rep = measure_eval(n=16, reps=1, train_steps=0, contenders=("ours", "direct"), device="cpu")
    cost = rep["indicators"]
    assert cost["indicators_s"] > 0 and cost["indicators_subset_s"] > 0 and cost["evaluation_s"] > 0
    assert cost["indicators_share"] == pytest.approx(cost["indicators_s"] / cost["evaluation_s"])
    assert "indicators of attack failure (ours, in the same rounds): " in render_eval(rep)


def test_command_line_options_reach_the_runtime():
    from bench.cli import _runtime, build_parser

    parse = build_parser().parse_args
    for cmd in (["run", "--grid", "demo"], ["eval", "--model", "small_cnn", "--checkpoint", "m.pt", "--dataset", "digits"]):
        default = _runtime(parse(cmd))
        assert default.eval_checks and default.eval_checks_n == 50
        off = _runtime(parse(cmd + ["--no-eval-checks", "--eval-checks-n", "7"]))
        assert not off.eval_checks and off.eval_checks_n == 7


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"{SHARED_CIFAR} not present")
@pytest.mark.parametrize("rid", sorted(p.stem for p in (REPO / "results" / "cpu" / "models").glob("*.pt")))
def test_committed_cifar_models_trip_nothing(rid):
    """The committed SmallCNN checkpoints (results/cpu/models), under the cpu grid's PGD protocol on 500 images:
    no indicator trips (docs/evaluation-checks.md lists their values)."""
    from bench.core.checkpoints import load_into
    from bench.models.architectures import build_model

    _, test, _ = load_dataset("cifar10-jpeg", SHARED_CIFAR.parent, None)
    net = build_model("small_cnn", 10, 3)
    load_into(net, str(REPO / "results" / "cpu" / "models" / f"{rid}.pt"))
    m = Evaluator(test, EvalConfig(n_clean=500, n_pgd=500, n_aa=0, batch_size=500), 8 / 255,
                  torch.device("cpu")).run(net.eval())
    print(rid, {k: v["value"] for k, v in m["indicators"].items()})
    assert m["unreliable"] == []


def test_bench_run_prints_and_stores_the_verdict(tmp_path, tiny_folder):
    """`bench run`'s final evaluation: the indicators in the result, the verdict in its printout; with
    --no-eval-checks neither (the same run id: the option is not part of the run)."""
    from bench.core.config import run_id
    from bench.core.runtime import Runtime
    from bench.train.loop import execute
    from conftest import tiny_run

    cfg = tiny_run("vaft", f"folder:{tiny_folder}").parent
    lines: list[str] = []
    rt = Runtime(results=tmp_path / "on", data_root=tiny_folder.parent, device="cpu", progress=False)
    res = execute(cfg, rt, log=lines.append)
    m = res["metrics"]
    assert isinstance(m["unreliable"], list) and set(m["indicators"]) >= set(indicators.CHEAP)
    verdict = indicators.verdict(m["unreliable"])
    assert any(line.endswith(verdict) and line.startswith(f"[{run_id(cfg)}]") for line in lines), lines[-5:]
    off = execute(cfg, Runtime(results=tmp_path / "off", data_root=tiny_folder.parent, device="cpu", progress=False,
                               eval_checks=False), log=lambda s: None)
    assert "indicators" not in off["metrics"] and off["metrics"]["per_example"] == m["per_example"]


class ConstantClass(Wrap):
    """Answers class 0 for every input (its zero gradient is real, and so is its robustness on class 0)."""

    def forward(self, x):
        return F.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float() + 0 * x.flatten(1).sum(1, keepdim=True)


def test_a_constant_classifier_is_no_failed_unbounded_attack(digits):
    """At radius 1 an example can be broken only if the model gives some image another class: a constant
    classifier keeps its class-0 examples at every radius, and that is no attack failure."""
    m = evaluate(ConstantClass(nn.Identity()), digits[1])
    assert m["clean"] > 0 and m["indicators"]["unbounded_pgd"]["value"] == 0
    assert not m["indicators"]["unbounded_pgd"]["tripped"]
