"""The L2 threat model: PGD-20 in L2 (ball, box, model hygiene), AutoAttack standard with norm='L2' against the exact
robustness of a linear model and against pyautoattack run directly, the L2 evaluation (order check, chunks kept apart
from L-inf's, resume), and ``bench eval --threat`` with its bad input answered in one line, exit 2, nothing written."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.cli import main
from bench.core.config import EvalConfig
from bench.data import L2_EPS, Split, load_dataset
from bench.eval.evaluator import Evaluator
from bench.eval.l2 import L2Evaluator, autoattack_l2, l2_norms, pgd_l2, project_l2
from bench.eval.standalone import EvalSpec
from bench.models.architectures import build_model
from conftest import write_tiny_folder


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only contend on a shared machine
    yield
    torch.set_num_threads(before)


def _net(num_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Dropout(0.5), nn.Linear(32, num_classes))


def _data(n=16, num_classes=4):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=g)
    x[0], x[1] = 0.0, 1.0  # the pixel range's edges: the clamp after the projection must keep the ball
    return x, torch.randint(0, num_classes, (n,), generator=g)


def test_projection_keeps_ball_and_box():
    x, _ = _data()
    far = x + 3 * torch.randn_like(x)
    p = project_l2(far, x, 0.5)
    assert (l2_norms(p - x) <= 0.5 + 1e-6).all() and p.min() >= 0 and p.max() <= 1
    near = torch.clamp(x + 1e-3 * torch.randn_like(x), 0, 1)
    assert torch.allclose(project_l2(near, x, 0.5), near)  # inside: untouched


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_l2_in_ball_raises_loss_and_restores_the_model(random_start):
    model = _net().train()
    x, y = _data()
    flags = [p.requires_grad for p in model.parameters()]
    x_adv = pgd_l2(model, x, y, eps=0.5, step_size=0.125, steps=10, random_start=random_start,
                   generator=torch.Generator().manual_seed(1))
    assert (l2_norms(x_adv - x) <= 0.5 + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    again = pgd_l2(model, x, y, eps=0.5, step_size=0.125, steps=10, random_start=random_start,
                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(x_adv, again)  # seeded: the same points
    with pytest.raises(ValueError):
        pgd_l2(model, x, y, eps=0.0, step_size=0.1, steps=1)


def _separable_problem(n=30, num_classes=10, eps=1.5):
    """A linear model with +-1 class prototypes and images 0.5 + a * prototype (a from 0.02 to 0.3): the exact L2
    robustness is margin - eps * ||w_y - w_j||_2 > 0 for every other class j (the box is never reached here)."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randint(0, 2, (num_classes, 3, 8, 8), generator=g).float() * 2 - 1
    y = torch.arange(n) % num_classes
    x = 0.5 + torch.linspace(0.02, 0.3, n).view(-1, 1, 1, 1) * protos[y]
    conv = nn.Conv2d(3, num_classes, 8)
    with torch.no_grad():
        conv.weight.copy_(protos)
        conv.bias.copy_(-0.5 * protos.flatten(1).sum(1))
    model = nn.Sequential(conv, nn.Flatten()).eval()
    w = protos.flatten(1)
    with torch.no_grad():
        logits = model(x)
        worst = logits.gather(1, y[:, None]) - logits - eps * (w[y][:, None, :] - w[None]).norm(dim=-1)
        worst[torch.arange(n), y] = float("inf")
    return model, x, y, worst.min(1).values > 0


def test_autoattack_l2_is_the_exact_robustness_of_a_linear_model_and_pyautoattack_direct():
    from pyautoattack import AutoAttack

    eps = 1.5
    model, x, y, exact = _separable_problem(eps=eps)
    assert 0.2 < exact.float().mean() < 0.9  # some robust, some not: APGD-T, FAB-T and Square really run
    rng = torch.get_rng_state()
    out = autoattack_l2(model.to(memory_format=torch.channels_last), x, y, eps=eps, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(out["robust"], exact)
    assert (l2_norms(out["x_adv"] - x) <= eps + 1e-4).all()
    direct_x, _ = AutoAttack(model.to(memory_format=torch.contiguous_format), norm="L2", eps=eps,
                             version="standard", device="cpu", seed=0).run_standard_evaluation(x, y, batch_size=500)
    with torch.no_grad():
        assert torch.equal(out["robust"], model(direct_x).argmax(1) == y)
        pgd_acc = (model(pgd_l2(model, x, y, eps=eps, step_size=eps / 4, steps=20)).argmax(1) == y).float().mean()
    assert out["accuracy"] <= pgd_acc <= 1.0


def _tiny_model_and_split(n=12):
    torch.manual_seed(0)
    model = build_model("small_cnn", 4, 3)
    with torch.no_grad():  # robust on part of the images: the bias decides where the head is weak
        model.classifier.weight.mul_(0.05)
        model.classifier.bias.copy_(torch.tensor([0.02, 0.0, 0.0, 0.0]))
    g = torch.Generator().manual_seed(3)
    return model.eval(), Split(torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8), torch.arange(n) % 4)


def test_l2_evaluator_orders_resumes_and_keeps_its_chunks_apart(tmp_path):
    model, test = _tiny_model_and_split()
    cfg = EvalConfig(n_clean=12, n_pgd=12, n_aa=0, batch_size=4)
    l2 = L2Evaluator(test, cfg, 0.5, torch.device("cpu"))
    first = l2.run(model, state_dir=tmp_path)
    assert first["violations"] == [] and first["pgd20"] <= first["clean"]
    linf = Evaluator(test, cfg, 8 / 255, torch.device("cpu")).run(model, state_dir=tmp_path)
    assert len(list(tmp_path.glob("eval-*"))) == 2  # one key per threat model: nothing read across
    chunk = next(iter(sorted(p for d in tmp_path.glob("eval-*") for p in d.glob("pgd20-00001.pt"))))
    chunk.unlink()  # a lost chunk is recomputed, the others read: the same flags
    again = L2Evaluator(test, cfg, 0.5, torch.device("cpu")).run(model, state_dir=tmp_path)
    assert again["per_example"] == first["per_example"]
    again_linf = Evaluator(test, cfg, 8 / 255, torch.device("cpu")).run(model, state_dir=tmp_path)
    assert again_linf["per_example"] == linf["per_example"]


def test_default_radius_per_data_set_and_unchanged_linf_ids():
    assert L2_EPS["cifar10"] == 0.5 and L2_EPS["tiny-imagenet"] == 1.0
    base = EvalSpec(model="small_cnn", checkpoint=None, checkpoint_digest="d", dataset="cifar10",
                    eval=EvalConfig(n_clean=10, n_aa=0))
    old = asdict(base)  # the spec as it was before threat models: its id must not move
    for key in ("checkpoint", "threats", "eps_l2", "corruptions"):
        old.pop(key)
    assert base.eval_id() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    assert replace(base, threats=("linf", "l2"), eps_l2=0.5).eval_id() != base.eval_id()
    assert replace(base, threats=("linf", "l2"), eps_l2=1.0).eval_id() != replace(base, threats=("linf", "l2"),
                                                                                   eps_l2=0.5).eval_id()


def _argv(folder, ckpt, results, *extra):
    return ["eval", "--model", "small_cnn", "--checkpoint", str(ckpt), "--dataset", f"folder:{folder}", "--n", "8",
            "--n-aa", "0", "--batch-size", "8", "--results", str(results), "--device", "cpu", "--threads", "1", *extra]


def test_bench_eval_threat_l2_and_bad_input(tmp_path, capsys):
    folder = write_tiny_folder(tmp_path / "tiny", classes=("a", "b", "c", "d"), n_train=4, n_test=8)
    model, _ = _tiny_model_and_split()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert main(_argv(folder, tmp_path / "m.pt", tmp_path / "r", "--threat", "l2,linf", "--eps-l2", "1/2")) == 0
    out = capsys.readouterr().out
    assert "| L2 PGD-20 (eps 0.5) |" in out and "| PGD-20 |" in out and "AA <= PGD-20 <= clean: ok" in out
    (path,) = (tmp_path / "r" / "evals").glob("*.json")
    res = json.loads(path.read_text())
    assert res["spec"]["threats"] == ["linf", "l2"] and res["metrics"]["l2"]["eps"] == 0.5
    assert len(res["metrics"]["l2"]["per_example"]["pgd20"]) == 8 and "clean" not in res["metrics"]["l2"]
    assert main(_argv(folder, tmp_path / "m.pt", tmp_path / "l2only", "--threat", "l2", "--eps-l2", "0.5")) == 0
    only = json.loads(next((tmp_path / "l2only" / "evals").glob("*.json")).read_text())["metrics"]
    assert "pgd20" not in only and only["clean"] == res["metrics"]["clean"]
    assert only["l2"]["per_example"] == res["metrics"]["l2"]["per_example"]
    cases = [(("--threat", "linf,l3"), "unknown threat model 'l3'"),
             (("--threat", "l2"), "has no default L2 radius"),  # an image folder: the radius must be given
             (("--threat", "l2", "--eps-l2", "-1"), "--eps-l2 must be a finite number > 0"),
             (("--threat", "l2", "--eps-l2", "nan"), "expected a number like 0.5"),
             (("--threat", "l2", "--eps-l2", "30"), "--eps-l2 30.0 is outside (0, 27.71]"),
             (("--eps-l2", "0.5"), "add l2 to --threat"),
             (("--threat", "corruptions"), "no published corruption set"),
             (("--corruptions", "generated"), "add corruptions to --threat")]
    capsys.readouterr()
    for extra, message in cases:
        assert main(_argv(folder, tmp_path / "m.pt", tmp_path / "bad", *extra)) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_bench_eval_l2_autoattack_equals_pyautoattack_direct(tmp_path, capsys):
    """Example by example, on the evaluator's channels_last copy with folded BatchNorm against the plain model."""
    from pyautoattack import AutoAttack

    folder = write_tiny_folder(tmp_path / "tiny", classes=("a", "b", "c", "d"), n_train=4, n_test=16)
    model, _ = _tiny_model_and_split()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    argv = _argv(folder, tmp_path / "m.pt", tmp_path / "r", "--threat", "l2", "--eps-l2", "0.5")
    argv[argv.index("--n") + 1], argv[argv.index("--n-aa") + 1], argv[argv.index("--batch-size") + 1] = "16", "16", "16"
    assert main(argv) == 0
    res = json.loads(next((tmp_path / "r" / "evals").glob("*.json")).read_text())
    flags = res["metrics"]["l2"]["per_example"]["aa"]
    assert 0 < flags.count("1") < flags.count("1") + flags.count("0")
    _, test, _ = load_dataset(f"folder:{folder}", None, None)
    x, y = test.images[:16].float().div(255), test.labels[:16]
    adversary = AutoAttack(model, norm="L2", eps=0.5, version="standard", device="cpu", seed=0)
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = 3  # 4 classes
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=16)
    with torch.no_grad():
        assert flags == "".join("1" if b else "0" for b in (model(x_adv).argmax(1) == y).tolist())
