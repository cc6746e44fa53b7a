"""Config identity, schedules, the result store, grids and the registry."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from bench.core.config import ConfigError, EvalConfig, RunConfig, TrainConfig, canonical_json, from_dict, run_id, to_dict
from bench.grid.grids import get_grid
from bench.grid.runs import expand, make_run
from bench.core.schedules import lr_at, momentum_at
from bench.core.store import CorruptFile, Store
from methods import REGISTRY, MethodError, get_method, resolve_hparams


def test_run_id_stable_and_sensitive():
    a = make_run("afd", model="small_cnn", dataset="digits", epochs=2)
    b = make_run("afd", model="small_cnn", dataset="digits", epochs=2)
    assert run_id(a) == run_id(b) and len(run_id(a)) == 12
    assert run_id(replace(a, seed=1)) != run_id(a)
    assert run_id(make_run("afd", model="small_cnn", dataset="digits", epochs=2, hparams={"gamma": 10})) != run_id(a)
    # the parent's config is part of the child's identity
    assert run_id(make_run("afd", model="small_cnn", dataset="digits", epochs=2, parent_epochs=3)) != run_id(a)


def test_config_roundtrip_through_json():
    a = make_run("afd", model="small_cnn", dataset="digits", epochs=2, hparams={"gamma": 10})
    back = from_dict(json.loads(json.dumps(to_dict(a))))
    assert back == a and canonical_json(back) == canonical_json(a)


def test_full_hparams_recorded_and_unknown_rejected():
    hp = dict(resolve_hparams("afd", {"gamma": 10}))
    assert hp["gamma"] == 10.0 and hp["alpha"] == 0.05 and hp["beta"] == 0.25
    with pytest.raises(MethodError, match="no hyperparameter 'gama'.*known: alpha"):
        resolve_hparams("afd", {"gama": 1})
    with pytest.raises(MethodError, match="expects float"):
        resolve_hparams("afd", {"gamma": "x"})


def test_unknown_method_lists_known():
    with pytest.raises(MethodError, match="unknown method 'afx'; known: .*afd"):
        get_method("afx")


def test_registry_has_parents_and_recipes():
    assert get_method("standard").parent is None
    assert get_method("vaft").parent == "natural" and get_method("afd").parent == "natural"
    assert get_method("afd").recipe.ema and get_method("afd").recipe.epochs == 20
    for cls in REGISTRY.values():
        cls.Hparams()  # every default set builds


def test_eps_in_pixels_rejected():
    cfg = make_run("standard", model="small_cnn", dataset="digits")
    with pytest.raises(ConfigError, match="write 8/255, not 8"):
        replace(cfg, eps=8.0).validate()


@pytest.mark.parametrize("change,match", [
    (dict(epochs=0), "epochs"), (dict(batch_size=-1), "batch_size"), (dict(schedule="linear"), "schedule"),
    (dict(milestones=(50,)), "fractions"), (dict(precision="fp8"), "precision")])
def test_train_config_validation(change, match):
    with pytest.raises(ConfigError, match=match):
        replace(TrainConfig(), **change).validate()


def test_aft_schedule_matches_code_at_20_epochs():
    cfg = TrainConfig(epochs=20, lr=0.025, schedule="aft")
    got = [round(lr_at(cfg, e, 0, 10), 6) for e in range(20)]
    want = [0.025] * 10 + [0.02] * 2 + [0.01] * 2 + [0.005] * 2 + [0.0025] * 2 + [0.00125] * 2
    assert got == want


def test_piecewise_and_cyclic():
    cfg = TrainConfig(epochs=110, lr=0.1, schedule="piecewise", milestones=(100 / 110, 105 / 110))
    assert lr_at(cfg, 99, 0, 5) == pytest.approx(0.1)
    assert lr_at(cfg, 100, 0, 5) == pytest.approx(0.01)
    assert lr_at(cfg, 105, 0, 5) == pytest.approx(0.001)
    assert lr_at(replace(cfg, epochs=1, milestones=(0.5, 0.75)), 0, 0, 5) == pytest.approx(0.1)
    cyc = TrainConfig(epochs=10, lr=0.3, schedule="cyclic")
    assert lr_at(cyc, 0, 0, 10) == 0.0
    assert lr_at(cyc, 4, 0, 10) == pytest.approx(0.3)
    assert lr_at(cyc, 9, 9, 10) == pytest.approx(0.3 / 60)


def test_expand_dedupes_parents_and_orders_them_first():
    runs = get_grid("demo")
    full = expand(runs)
    assert [r.method for r in full] == ["standard", "vaft", "afd"]
    assert len({run_id(r) for r in full}) == 3
    two = expand(get_grid("demo", seeds=2))
    assert len(two) == 5  # one shared parent, two seeds of each fine-tuning method


@pytest.mark.parametrize("name", ["nope", "../demo", "a/b"])
def test_bad_grid_names(name):
    with pytest.raises(ConfigError, match="grid"):
        get_grid(name)


def test_store_atomic_and_corrupt_detection(tmp_path):
    s = Store(tmp_path)
    assert s.read("abc") is None and s.status("abc") == "missing"
    s.write("abc", {"run_id": "abc", "status": "done", "metrics": {"x": float("nan")}})
    assert s.read("abc")["metrics"]["x"] == "nan"
    assert not list((tmp_path / "runs").glob("*.tmp"))
    s.result_path("abc").write_text('{"run_id": "abc", "stat')
    with pytest.raises(CorruptFile, match="abc.json"):
        s.read("abc")
    assert s.status("abc") == "corrupt"


def test_lock_released_when_holder_dies(tmp_path):
    s = Store(tmp_path)
    code = ("import sys, time; sys.path.insert(0, %r); from bench.core.store import Store; "
            "cm = Store(%r).lock('r1'); cm.__enter__(); print('held', flush=True); time.sleep(60)"
            % (os.getcwd(), str(tmp_path)))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    assert s.is_locked("r1")
    p.kill()
    p.wait()
    assert not s.is_locked("r1")


def _lr_levels(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The distinct learning rates of a run in the order it uses them (consecutive repeats merged)."""
    out: list[float] = []
    for e in range(cfg.epochs):
        for s in range(steps_per_epoch):
            lr = round(lr_at(cfg, e, s, steps_per_epoch), 12)
            if not out or out[-1] != lr:
                out.append(lr)
    return out


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_every_recipe_keeps_its_phases_when_scaled_down(name, epochs):
    """A recipe scaled to 1-3 epochs keeps every lr phase of its paper's (TRADES' decay at 75 of 76
    epochs used to round to epoch 7 of 7 and never happen). Steps per epoch as in the cpu grid (10,000 / 128)."""
    full = REGISTRY[name].recipe
    small = replace(full, epochs=epochs)
    spe = 79
    if full.schedule in ("piecewise", "aft", "constant"):
        assert _lr_levels(small, spe) == _lr_levels(full, 20)  # same levels, same order
    elif full.schedule == "cyclic":
        lrs = [lr_at(small, e, s, spe) for e in range(epochs) for s in range(spe)]
        peak = lrs.index(max(lrs))
        assert lrs[0] == 0.0 and max(lrs) > 0.95 * full.lr and 0 < peak < len(lrs) - 1
        assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rises, then falls
        assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:])) and lrs[-1] < 0.05 * full.lr
    else:
        assert full.schedule == "cosine"


def test_milestones_fall_on_the_codes_epochs_at_full_length():
    trades = TrainConfig(epochs=76, lr=0.1, schedule="piecewise", milestones=(75 / 76,))
    assert [lr_at(trades, e, s, 391) for e, s in ((74, 390), (75, 0))] == pytest.approx([0.1, 0.01])
    small = replace(trades, epochs=7)  # the cpu grid's TRADES: the decay now happens inside its last epoch
    assert lr_at(small, 6, 78, 79) == pytest.approx(0.01) and lr_at(small, 6, 0, 79) == pytest.approx(0.1)


def test_cyclic_momentum_follows_torch_cyclic_lr():
    """Free-AT (train_free.py): CyclicLR's default cycle_momentum moves momentum 0.9 -> 0.8 at the lr peak -> 0.9,
    checked against torch's own CyclicLR stepped once per iteration."""
    cfg = TrainConfig(epochs=2, lr=0.04, momentum=0.9, schedule="cyclic", cyclic_peak=0.5, cycle_momentum=True)
    spe = 5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.0, max_lr=0.04, step_size_up=spe, step_size_down=spe)
    for t in range(2 * spe):
        e, s = divmod(t, spe)
        group = opt.param_groups[0]
        assert momentum_at(cfg, e, s, spe) == pytest.approx(group["momentum"])
        assert lr_at(cfg, e, s, spe) == pytest.approx(group["lr"])
        opt.step()
        sched.step()
    assert momentum_at(cfg, 1, 0, spe) == pytest.approx(0.8)
    assert momentum_at(replace(cfg, cycle_momentum=False), 1, 0, spe) == 0.9
    with pytest.raises(ConfigError, match="cycle_momentum"):
        replace(cfg, schedule="piecewise").validate()


def test_one_eps_parser_for_the_command_line_grid_files_and_configs():
    from bench.core.config import ConfigError, parse_eps, parse_fraction

    assert parse_eps("8/255") == parse_fraction("8/255") == 8 / 255
    assert parse_eps(0.5) == 0.5 and parse_eps(" 1 ") == 1.0
    for bad, says in (("8", "write 8/255, not 8"), (0, "must be in (0, 1]"), ("x/2", "fraction like 8/255"),
                      (True, "fraction like 8/255"), ("1/0", "fraction like 8/255")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            parse_eps(bad, "--eps")
