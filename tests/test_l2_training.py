"""Training under the L2 threat model: the run's norm (identity, validation, --set), the L2 PGD of
``bench.eval.attacks.pgd``, the step rule of ``Method.pgd``, the methods that refuse L2, the ``table1_l2`` grid and
its report without paper numbers, and a tiny PGD-AT run in L2."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from bench.cli import apply_sets, main
from bench.core.config import (EPS_8, SCHEMA_VERSION, ConfigError, RunConfig, canonical_json, from_dict, run_id,
                               to_dict)
from bench.core.store import Store
from bench.data import L2_EPS, DatasetInfo, Split
from bench.eval.attacks import l2_norms, pgd
from bench.eval.evaluator import Evaluator
from bench.eval.l2 import L2Evaluator
from bench.grid.grids import GRIDS, get_grid
from bench.grid.runs import expand, make_run
from bench.models.architectures import build_model
from bench.report.build import load_paper
from bench.report.tables import report
from bench.train.validation import validate_run
from methods import REGISTRY, Context, build_method, get_method, make_hparams, resolve_hparams
from conftest import tiny_run

LINF_ONLY = ("free_at", "fgsm_ga", "atas")


def _pre_norm_canonical(cfg: RunConfig) -> str:
    """canonical_json as it was before runs had a norm: no parent file path, no norm key, at any level."""
    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in ("parent_file", "norm")}
        return d
    return json.dumps({"schema": SCHEMA_VERSION, "run": strip(to_dict(cfg))}, sort_keys=True, separators=(",", ":"))


# -- the norm of a run ----------------------------------------------------------------------------------------------
def test_linf_run_ids_of_every_grid_are_unchanged():
    """Every registered grid's L-inf runs (parents included) keep the id they had before runs had a norm."""
    for name in GRIDS:
        for cfg in expand(get_grid(name)):
            if cfg.norm == "linf":
                assert canonical_json(cfg) == _pre_norm_canonical(cfg), (name, cfg.method)
            else:
                assert name == "table1_l2" and '"norm":"l2"' in canonical_json(cfg)


def test_default_norm_left_out_at_every_level():
    child = make_run("vaft", model="small_cnn", dataset="digits")
    l2 = replace(child, norm="l2", eps=0.5)
    assert canonical_json(l2).count('"norm"') == 1  # the child's; its L-inf parent's is left out
    assert run_id(l2.parent) == run_id(child.parent) and run_id(l2) != run_id(child)
    assert run_id(replace(l2, norm="linf", eps=child.eps)) == run_id(child)


def test_norm_survives_to_dict_from_dict():
    """SLURM jobs rebuild their config with from_dict: the norm, the parent's norm and the L2 eps come back."""
    rift = get_grid("table1_l2")[1]
    assert rift.method == "rift" and rift.parent.norm == "l2"
    back = from_dict(json.loads(json.dumps(to_dict(rift))))
    assert back == rift and run_id(back) == run_id(rift)
    old = to_dict(make_run("vaft", model="small_cnn", dataset="digits"))
    assert "norm" not in old and "norm" not in old["parent"]  # an L-inf config reads as before runs had a norm
    assert from_dict(old).norm == "linf" and from_dict(old).parent.norm == "linf"


@pytest.mark.parametrize("norm,eps,message", [
    ("l3", 8 / 255, "unknown norm 'l3'; known: linf, l2"),
    ("l2", 0.0, "finite number > 0"), ("l2", -0.5, "finite number > 0"), ("l2", math.inf, "finite number > 0"),
    ("l2", math.nan, "finite number > 0"), ("linf", 0.5 + 1, "eps must be in (0, 1]"),
])
def test_bad_norm_or_eps_refused_in_one_line(norm, eps, message):
    cfg = replace(make_run("pgd_at", model="small_cnn", dataset="digits"), norm=norm, eps=eps)
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_l2_radius_may_exceed_one():
    replace(make_run("pgd_at", model="small_cnn", dataset="digits"), norm="l2", eps=3.0).validate()


def test_set_norm_applies_to_runs_and_parents():
    runs = apply_sets(get_grid("demo"), ["norm=l2", "eps=0.5"])
    assert {(c.norm, c.eps) for c in expand(runs)} == {("l2", 0.5)}


def test_set_unknown_norm_exit_2(tmp_path, capsys):
    code = main(["run", "--grid", "demo", "--set", "norm=l3", "--dry-run", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown norm 'l3'" in err


# -- the attack ---------------------------------------------------------------------------------------------------
def _tiny_model_and_data(seed=0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", 4, 3).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 3, 16, 16, generator=g)
    y = torch.arange(16) % 4
    return model, x, y


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_pgd_l2_stays_in_the_ball_and_the_box_and_raises_the_loss(loss):
    model, x, y = _tiny_model_and_data()
    eps = 0.5
    x_adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=10, loss=loss, norm="l2",
                generator=torch.Generator().manual_seed(1), clamp_start=False)
    assert (l2_norms(x_adv - x) <= eps + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (l2_norms(x_adv - x) > 0.5 * eps).any()  # it moved: not the start, not L-inf's tiny steps
    with torch.no_grad():
        if loss == "ce":
            before, after = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
        else:
            p = F.softmax(model(x), 1)
            before = torch.tensor(0.0)
            after = F.kl_div(F.log_softmax(model(x_adv), 1), p, reduction="sum")
    assert after > before


def test_pgd_l2_steps_are_not_sign_steps():
    """Under L2 a step moves along the normalised gradient: pixels move by different amounts (a sign step would
    move every unclamped pixel by exactly step_size)."""
    model, x, y = _tiny_model_and_data()
    x = x * 0.5 + 0.25  # away from the box: no clamping
    x_adv = pgd(model, x, y, eps=10.0, step_size=0.05, steps=1, random_start=False, norm="l2")
    d = (x_adv - x).abs().flatten(1)
    assert torch.allclose(l2_norms(x_adv - x), torch.full((len(x),), 0.05), atol=1e-5)
    assert (d.amax(1) > 2 * d.median(1).values).all()


def test_pgd_unknown_norm_refused():
    model, x, y = _tiny_model_and_data()
    with pytest.raises(ValueError, match="unknown PGD norm 'l1'"):
        pgd(model, x, y, eps=0.5, step_size=0.1, steps=1, norm="l1")


def _method(name: str, norm: str, eps: float):
    cls = get_method(name)
    split = Split(torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8), torch.arange(16) % 4)
    info = DatasetInfo(name="random", num_classes=4, channels=3, image_size=16, classes=tuple("abcd"))
    torch.manual_seed(0)
    parent = build_model("small_cnn", 4, 3).eval() if cls.parent else None
    model = build_model("small_cnn", 4, 3)
    ctx = Context(info=info, eps=eps, device=torch.device("cpu"), epochs=1, steps_per_epoch=2, seed=0, train=split,
                  parent_model=parent, train_cfg=cls.recipe, norm=norm)
    return build_method(cls, model, make_hparams(name, resolve_hparams(name, None)), ctx, cls.recipe)


@pytest.mark.parametrize("norm,eps,step", [("linf", EPS_8, 2 / 255), ("linf", 4 / 255, 2 / 255),
                                           ("l2", 0.5, 2 / 255 * 0.5 / EPS_8)])
def test_method_pgd_attacks_in_the_run_norm_with_the_step_scaled_under_l2(monkeypatch, norm, eps, step):
    """PGD-AT's 2/255: as given under L-inf (whatever eps), eps / 4 under L2 (the same fraction of the radius)."""
    seen = {}
    monkeypatch.setattr("methods.base.pgd", lambda *a, **kw: seen.update(kw) or a[1])
    m = _method("pgd_at", norm, eps)
    m.pgd(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), steps=10, step_size=m.hp.step_size)
    assert seen["norm"] == norm and seen["eps"] == eps and seen["step_size"] == pytest.approx(step, rel=1e-12)


def test_rift_adversarial_set_is_an_l2_attack(monkeypatch):
    seen = {}

    def fake(model, x, y, **kw):
        seen.update(kw)
        return x

    monkeypatch.setattr("methods.rift.pgd", fake)
    m = _method("rift", "l2", 0.5)
    m.mrc_set()
    assert seen["norm"] == "l2" and seen["step_size"] == pytest.approx(m.hp.attack_step_size * 0.5 / EPS_8)
    # theta_FT's epoch and a are chosen by held-out robustness in the run's threat model
    assert type(m._heldout_evaluator(torch.device("cpu"))) is L2Evaluator
    assert type(_method("rift", "linf", EPS_8)._heldout_evaluator(torch.device("cpu"))) is Evaluator


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_arrest_noise_branch_is_the_start_of_the_run_norm(monkeypatch, norm):
    """ARREST's noisy replay trains on its attack's random start: a point of the L2 ball under norm l2 (uniform L-inf
    noise of radius 0.5 would be ~8 in L2 on 16x16x3 images)."""
    from methods.base import StepInfo

    monkeypatch.setattr("methods.arrest.use_noisy_replay", lambda *a, **kw: True)
    m = _method("arrest", norm, 0.5 if norm == "l2" else EPS_8)
    got = {}
    monkeypatch.setattr(m, "rgkd_losses", lambda x, x_train, y, target: got.update(x=x, x_train=x_train) or {})
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    m.loss(type("B", (), {"x": x, "y": torch.arange(4)})(), StepInfo(epoch=0, step=0, global_step=0))
    d = got["x_train"] - got["x"]
    if norm == "l2":
        assert (l2_norms(d) <= 0.5 + 1e-6).all() and (l2_norms(d) > 0).all()
    else:
        assert d.abs().max() <= EPS_8 + 1e-7 and (d.abs().flatten(1).amax(1) > 0.9 * EPS_8).all()


# -- methods that refuse L2 -----------------------------------------------------------------------------------------
def test_every_method_but_the_sign_step_ones_trains_under_l2():
    assert {n for n, cls in REGISTRY.items() if "l2" not in cls.norms} == set(LINF_ONLY)
    for name in REGISTRY:
        cfg = replace(make_run(name, model="small_cnn", dataset="digits"), norm="l2", eps=0.5)
        if name in LINF_ONLY:
            with pytest.raises(ConfigError) as e:
                validate_run(cfg)
            msg = str(e.value)
            assert msg.startswith(f"method {name} trains with sign (FGSM) steps") and "\n" not in msg
            assert msg.endswith("an L-inf attack by construction: it cannot train under norm l2")
        else:
            validate_run(cfg)


def test_linf_only_methods_refused_via_the_cli_before_anything_is_written(tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", "--grid", "cpu", "--set", "norm=l2", "--set", "eps=0.5", "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "method free_at trains with sign (FGSM) steps" in err and "cannot train under norm l2" in err
    assert not results.exists()


# -- the grid and its report --------------------------------------------------------------------------------------------
def test_table1_l2_is_table1s_cifar10_fine_tuning_rows_under_l2():
    runs = get_grid("table1_l2")
    t1 = {c.method: c for c in get_grid("table1") if c.dataset == "cifar10"}
    assert [c.method for c in runs] == ["vaft", "rift", "afkd", "arrest", "afd"]
    for c in runs:
        assert (c.norm, c.eps) == ("l2", L2_EPS["cifar10"]) == ("l2", 0.5)
        assert replace(c, norm="linf", eps=EPS_8, parent=t1[c.method].parent) == t1[c.method]
        if c.method == "rift":  # its parent is adversarially trained: PGD-AT under L2 too
            assert (c.parent.method, c.parent.norm, c.parent.eps) == ("pgd_at", "l2", 0.5)
        else:  # natural training has no attack: Table 1's own parent run
            assert run_id(c.parent) == run_id(t1[c.method].parent) and c.parent.norm == "linf"


def test_bench_list_and_dry_run_show_the_grid(tmp_path, capsys):
    assert main(["list"]) == 0
    assert "table1_l2" in capsys.readouterr().out
    assert main(["run", "--grid", "table1_l2", "--dry-run", "--results", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and sum(line.endswith("norm l2 eps 0.5") for line in lines) == 6
    assert lines[0].split()[1] == "standard" and "norm" not in lines[0]


def _paper_cifar10_numbers() -> set[str]:
    paper = load_paper("table1")
    rows = paper[(paper.dataset == "cifar10") & paper.method.isin(["vaft", "rift", "afkd", "arrest", "afd"])]
    return {f"{v:.2f}" for k in ("clean", "pgd20", "aa", "avg") for v in rows[k].dropna()}


@pytest.mark.parametrize("table", [None, "table1"])
def test_report_never_shows_paper_numbers_beside_l2_runs(tmp_path, table):
    """With a finished L2 run (fake result), rendered as its own table or as Table 1 with --compare paper: no paper
    number of the CIFAR-10 column appears, and the notes say why."""
    results = tmp_path / "results"
    vaft = get_grid("table1_l2")[0]
    Store(results).write(run_id(vaft), {"run_id": run_id(vaft), "status": "done",
                                        "metrics": {"clean": 0.8111, "pgd20": 0.5222, "aa": 0.4333}})
    for compare in (None, "paper"):
        out = report("table1_l2", results, "markdown", table=table, compare=compare)
        assert "81.11" in out and "L2 (eps 0.5): no paper numbers" in out
        assert not _paper_cifar10_numbers() & set(out.replace("|", " ").split()), out


def test_claims_refused_for_l2_runs(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    assert main(["report", "--grid", "table1_l2", "--claims", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "made under L-inf" in err


# -- a tiny run --------------------------------------------------------------------------------------------------
def test_tiny_pgd_at_run_trains_under_l2_inside_the_ball(tmp_path, monkeypatch):
    """PGD-AT on the embedded digits, one epoch on 32 images, norm l2 eps 0.5: it finishes, and every training
    attack ran in L2 with the scaled step and returned points inside the L2 ball and [0, 1]."""
    import methods.base
    from bench.core.runtime import Runtime
    from bench.train.loop import execute

    seen = []
    real = methods.base.pgd

    def recording(model, x, y, **kw):
        x_adv = real(model, x, y, **kw)
        seen.append((kw["norm"], kw["step_size"], float(l2_norms(x_adv - x).max()), float(x_adv.min()),
                     float(x_adv.max())))
        return x_adv

    monkeypatch.setattr(methods.base, "pgd", recording)
    cfg = tiny_run("pgd_at", "digits", epochs=1)
    cfg = replace(cfg, norm="l2", eps=0.5, train=replace(cfg.train, n_train=32))
    rt = Runtime(results=tmp_path / "results", device="cpu", progress=False)
    res = execute(cfg, rt, log=lambda s: None)
    assert res["status"] == "done", res.get("reason")
    assert len(seen) == 4  # 32 images in batches of 8
    assert all(norm == "l2" and step == pytest.approx(0.5 / 4) for norm, step, *_ in seen)
    assert all(worst <= 0.5 + 1e-5 and lo >= 0 and hi <= 1 for _, _, worst, lo, hi in seen)
    assert max(worst for _, _, worst, _, _ in seen) > 0.25  # the attack used the ball, not an L-inf corner of it
    # its own evaluation is in L2 at its eps (the L2 evaluator: PGD-20 with step eps/4, no L-inf indicators), so
    # --threat l2 has nothing to add to it
    from bench.eval import l2 as l2_mod

    steps = []
    real_l2 = l2_mod.pgd_l2
    monkeypatch.setattr(l2_mod, "pgd_l2", lambda *a, **kw: steps.append(kw["step_size"]) or real_l2(*a, **kw))
    rt = replace(rt, results=tmp_path / "again")  # trained anew: its evaluation is not read back from chunks
    res = execute(cfg, rt, log=lambda s: None)
    assert steps and all(s == pytest.approx(0.5 / 4) for s in steps) and "indicators" not in res["metrics"]
    assert 0 <= res["metrics"]["pgd20"] <= res["metrics"]["clean"] and "l2" not in res["metrics"]
    again = execute(cfg, replace(rt, threats=("linf", "l2")), log=lambda s: None)
    assert "l2" not in again["metrics"] and again["metrics"] == res["metrics"]
