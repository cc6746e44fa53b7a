"""The training loop end to end on a tiny image folder: results, resume, kills, failures, AFD's export."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.core.config import run_id
from bench.core.runtime import Runtime
from bench.grid.runner import run_local
from bench.core.store import Store
from bench.train.ema import EMA
from bench.train.loop import execute
from conftest import REPO, tiny_run


def _rt(tmp_path, data):
    return Runtime(results=tmp_path / "results", data_root=data.parent, device="cpu", progress=False)


def _strip(result):
    """The parts of a result that must be identical between two runs of the same config."""
    return {"metrics": {k: v for k, v in result["metrics"].items() if k != "seconds"},
            "epochs": [{k: v for k, v in e.items() if k not in ("seconds", "probe_seconds")} for e in result["epochs"]]}


def test_parent_then_children_write_results(tmp_path, tiny_folder):
    rt = _rt(tmp_path, tiny_folder)
    runs = [tiny_run("vaft", f"folder:{tiny_folder}"), tiny_run("afd", f"folder:{tiny_folder}")]
    res = run_local(runs, rt, log=lambda s: None)
    assert len(res) == 3 and all(r["status"] == "done" for r in res.values())
    store = Store(rt.results)
    for rid, r in res.items():
        on_disk = store.read(rid)
        assert on_disk["status"] == "done" and on_disk["config"]["method"] in ("standard", "vaft", "afd")
        m = on_disk["metrics"]
        assert 0 <= m["pgd20"] <= m["clean"] <= 1 and m["violations"] == []
        assert len(on_disk["epochs"]) == 2 and on_disk["versions"]["torch"] == torch.__version__
        assert store.model_path(rid).exists()
    afd = next(r for r in res.values() if r["config"]["method"] == "afd")
    assert {"f1_clean", "f2_clean", "feature_gap"} <= set(afd["metrics"])
    # a second run of the grid trains nothing: every run is already done
    t0 = time.perf_counter()
    again = run_local(runs, rt, log=lambda s: None)
    assert time.perf_counter() - t0 < 5 and again.keys() == res.keys()


def _registered_methods() -> list[str]:
    import methods  # noqa: F401 - registers the built-in methods
    from methods.base import REGISTRY

    return sorted(REGISTRY)


@pytest.mark.parametrize("method", _registered_methods())
def test_every_method_resumes_exactly(tmp_path, tiny_folder, method):
    """Each method stopped after its first of three epochs and resumed gives the result of the uninterrupted run: its own
    state (optimizer, schedules, EMA, per-method buffers such as Free-AT's perturbation, ATAS's step sizes, RiFT's
    chosen module) and the RNG streams are all in the checkpoint; the wall time counts both processes."""
    cfg = tiny_run(method, f"folder:{tiny_folder}", epochs=3, parent_epochs=1)  # resumed for two epochs
    rt_a, rt_b = _rt(tmp_path / "a", tiny_folder), _rt(tmp_path / "b", tiny_folder)
    if cfg.parent is not None:
        run_local([cfg.parent], rt_a, log=lambda s: None)
        run_local([cfg.parent], rt_b, log=lambda s: None)
    full = execute(cfg, rt_a, log=lambda s: None)
    part = execute(cfg, rt_b, log=lambda s: None, stop_after_epoch=1)
    assert full["status"] == "done" and part["status"] == "interrupted"
    last = Store(rt_b.results).ckpt_dir(run_id(cfg)) / "last.pt"
    assert last.exists()
    ckpt_wall = torch.load(last, weights_only=False)["wall_seconds"]
    resumed = execute(cfg, rt_b, log=lambda s: None)
    assert _strip(resumed) == _strip(full)
    # the wall time is the run's over both processes: the first one's (carried by its checkpoint) plus the second's
    assert full["wall_processes"] == 1 and resumed["wall_processes"] == 2
    assert resumed["wall_seconds"] > ckpt_wall > 0
    assert resumed["wall_seconds"] >= resumed["train_seconds"]


def test_resume_takes_the_thread_count_of_its_checkpoint(tmp_path, tiny_folder):
    """CPU float sums depend on the torch thread count (the cpu grid's TRADES, resumed with 1 thread where it had
    2, ended 45 clean flags away from the uninterrupted run): a resume without --threads takes its checkpoint's
    count, so it stays bit-identical; an explicit other --threads is said in one line; each process's count is
    recorded; the process's own count is given back after the run."""
    cfg = tiny_run("vaft", f"folder:{tiny_folder}", epochs=3, parent_epochs=1)
    base = torch.get_num_threads()  # the tests' 1 (conftest)
    other = base + 1

    def rt(name, threads):
        return replace(_rt(tmp_path / name, tiny_folder), threads=threads)

    for name in ("full", "kept", "forced"):
        run_local([cfg.parent], rt(name, other), log=lambda s: None)
    full = execute(cfg, rt("full", other), log=lambda s: None)
    assert full["thread_counts"] == [other] and torch.get_num_threads() == base
    for name in ("kept", "forced"):
        assert execute(cfg, rt(name, other), log=lambda s: None, stop_after_epoch=1)["status"] == "interrupted"

    msgs: list[str] = []
    kept = execute(cfg, rt("kept", None), log=msgs.append)  # no --threads: the checkpoint's count
    assert any(f"resuming with {other} torch threads, as its checkpoint was written" in m for m in msgs), msgs
    assert kept["thread_counts"] == [other, other] and kept["threads"] == other
    assert _strip(kept) == _strip(full)
    assert torch.get_num_threads() == base

    msgs.clear()
    forced = execute(cfg, rt("forced", base), log=msgs.append)  # --threads asks for another count: said, kept
    assert any(f"--threads {base} where its checkpoint was written with {other}" in m for m in msgs), msgs
    assert forced["thread_counts"] == [other, base] and forced["status"] == "done"


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, tiny_folder):
    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=3)
    rt = _rt(tmp_path, tiny_folder)
    full = execute(cfg, _rt(tmp_path / "ref", tiny_folder), log=lambda s: None)
    execute(cfg, rt, log=lambda s: None, stop_after_epoch=2)
    last = Store(rt.results).ckpt_dir(run_id(cfg)) / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated mid-write by a dying node
    msgs = []
    resumed = execute(cfg, rt, log=msgs.append)
    assert any("unreadable" in m for m in msgs) and any("resuming standard at epoch 2" in m for m in msgs)
    assert _strip(resumed) == _strip(full)


def test_nan_loss_fails_run_with_reason(tmp_path, tiny_folder):
    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=2)
    cfg = replace(cfg, train=replace(cfg.train, lr=1e30))
    res = execute(cfg, _rt(tmp_path, tiny_folder), log=lambda s: None)
    assert res["status"] == "failed" and "non-finite" in res["reason"] and "epoch 1" in res["reason"]


def test_ema_decay_rule():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # t=0: decay 1/10
    assert ema.net.weight.item() == pytest.approx(0.9)
    for _ in range(2000):
        ema.update(net)
    assert ema.net.weight.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches(tmp_path, tiny_folder):
    """`bench run` killed with SIGKILL mid-epoch resumes from its checkpoint; final metrics equal a clean run."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")  # see each log line as it happens
    args = ["--grid", "demo", "--set", f"dataset=folder:{tiny_folder}", "--set", "train.epochs=4",
            "--set", "train.batch_size=4", "--set", "eval.n_clean=12", "--set", "eval.n_pgd=12",
            "--set", "eval.n_aa=0", "--set", "eval.pgd_steps=3", "--device", "cpu", "--threads", "1"]
    ref = subprocess.run([sys.executable, "-m", "bench", "run", *args, "--results", str(tmp_path / "ref")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bench", "run", *args, "--results", str(out)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # wait until the AFD run has checkpointed an epoch, then kill mid-way through the next one
    for line in p.stdout:
        if " afd epoch 2/4" in line:  # epoch 2's checkpoint is written: kill during epoch 3
            p.send_signal(signal.SIGKILL)
            break
    p.wait()
    assert p.returncode == -signal.SIGKILL
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming afd at epoch 3/4" in again.stdout or "resuming afd at epoch 4/4" in again.stdout
    for f in (tmp_path / "ref" / "runs").glob("*.json"):
        a, b = json.loads(f.read_text()), json.loads((out / "runs" / f.name).read_text())
        assert _strip(a) == _strip(b)


# -- the feature gap (Figure 1a) goes through Method.gap_features, on the evaluated (EMA) model -------------------
class _Tag(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("value", torch.zeros(()))


class _TaggedPixels(torch.nn.Module):
    """Gap features that are not the model's: tag x the input pixels, so the gap is tag x ||x - x'||_inf."""

    what = "tag x pixels"

    def __init__(self, tag: torch.nn.Module):
        super().__init__()
        self.tag = tag

    def forward(self, x):
        return self.tag.value * x.flatten(1)


def _gap_probe_class(ema: bool):
    """A method that never changes its model, sets a buffer ``tag`` to the global step + 1 after each step (the
    EMA lags behind it), and measures its gap on tag x pixels through the hook."""
    from dataclasses import dataclass

    from bench.core.config import TrainConfig
    from methods.base import REGISTRY, Method, register

    name = f"_gap_probe_{'ema' if ema else 'live'}"
    if name in REGISTRY:
        return REGISTRY[name]

    class GapProbe(Method):
        parent = None
        recipe = TrainConfig(epochs=2, lr=0.0, ema=ema)

        @dataclass(frozen=True)
        class Hparams:
            pass

        def __init__(self, model, hp, ctx):
            super().__init__(model, hp, ctx)
            self.net["tag"] = _Tag()

        def train_step(self, batch, step):
            with torch.no_grad():
                self.net["tag"].value.fill_(step.global_step + 1)
            return {"loss": torch.zeros((), device=batch.x.device)}

        def gap_features(self, net):
            return _TaggedPixels(net["tag"])

    GapProbe.name = name
    return register(GapProbe)


@pytest.mark.parametrize("ema", [True, False])
def test_feature_gap_goes_through_the_hook_on_the_evaluated_model(tmp_path, tiny_folder, ema):
    from bench.data import load_dataset
    from bench.eval.evaluator import Evaluator
    from bench.grid.runs import make_run
    from conftest import tiny_run

    cls = _gap_probe_class(ema)
    ev = replace(tiny_run("standard", "x").eval, feature_gap_every_epoch=True)
    cfg = make_run(cls.name, model="small_cnn", dataset=f"folder:{tiny_folder}", epochs=2, eval=ev, batch_size=8)
    rt = _rt(tmp_path, tiny_folder)
    res = execute(cfg, rt, log=lambda s: None)
    assert res["status"] == "done", res.get("reason")
    steps = 3  # 24 training images, batch 8

    # ||x - x'||_inf per image under the evaluation's PGD against the (never trained) exported model
    _, test, _ = load_dataset(cfg.dataset, rt.data_root, rt.cache_dir)
    blob = torch.load(Store(rt.results).model_path(run_id(cfg)), weights_only=True)
    from bench.models.architectures import build_model

    model = build_model("small_cnn", 3, 3)
    model.load_state_dict(blob["state_dict"])
    one = _Tag()
    one.value.fill_(1.0)
    pixel_gap = Evaluator(test, cfg.eval, cfg.eps, torch.device("cpu"), seed=cfg.seed).feature_gap(
        model, features=_TaggedPixels(one))
    assert 0.5 * cfg.eps < pixel_gap <= cfg.eps + 1e-6

    def tag_after(t: int) -> float:  # the tag of the net the gap must be measured on, after t steps
        if not ema:
            return float(t)
        v = 0.0  # EMA rule of bench.train.ema.EMA, from the initial copy (tag 0)
        for i in range(t):
            d = min(0.999, (i + 1) / (i + 10))
            v = v * d + (i + 1) * (1 - d)
        return v

    for e in res["epochs"]:
        assert e["feature_gap"] == pytest.approx(tag_after(steps * e["epoch"]) * pixel_gap, rel=1e-5)
        assert e["feature_gap_of"] == "tag x pixels" and e["feature_gap_se"] >= 0  # every image at eps: SE 0
    m = res["metrics"]
    assert m["feature_gap"] == pytest.approx(tag_after(2 * steps) * pixel_gap, rel=1e-5)
    assert m["feature_gap_of"] == "tag x pixels" and m["feature_gap_se"] >= 0
    if ema:  # the EMA lags the live tag (6 after 6 steps): not the live net's gap
        assert abs(m["feature_gap"] - 2 * steps * pixel_gap) > 0.05 * m["feature_gap"]


def test_default_gap_features_are_the_exported_models_last_hidden_layer():
    import copy

    from bench.eval.evaluator import PENULTIMATE, FeatureMap
    from bench.models.architectures import build_model, feature_extractor_and_head
    from methods.base import Method

    model = build_model("small_cnn", 3, 3).eval()
    method = Method.__new__(Method)
    method.net = torch.nn.ModuleDict({"model": model})
    fm = method.gap_features(method.net)
    assert isinstance(fm, FeatureMap) and fm.what == PENULTIMATE
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(fm(x), feature_extractor_and_head(model)[0](x))
    copied = copy.deepcopy(fm)  # the evaluator's private copy uses its own weights
    with torch.no_grad():
        for p in copied.parameters():
            p.zero_()
    assert not torch.equal(copied(x), fm(x))


def test_afd_gap_features_are_f1_on_the_net_it_is_given(tmp_path, tiny_folder):
    """AFD classifies from f1 = D1 g(x): its gap is measured there, not on the exported model's features
    (which are g: the export folds D1 into the classifier)."""
    from bench.data import load_dataset
    from bench.models.architectures import build_model, feature_extractor_and_head
    from methods import Context, get_method, make_hparams, resolve_hparams

    train, _, info = load_dataset(f"folder:{tiny_folder}", tiny_folder.parent)
    ctx = Context(info=info, eps=8 / 255, device=torch.device("cpu"), epochs=1, steps_per_epoch=1, seed=0,
                  train=train, parent_model=build_model("small_cnn", 3, 3))
    method = get_method("afd")(build_model("small_cnn", 3, 3), make_hparams("afd", resolve_hparams("afd")), ctx)
    with torch.no_grad():
        method.net["d1"].weight.copy_(torch.eye(method.w.in_features) * 3.0)  # f1 = 3 g
    fm = method.gap_features(method.net).eval()
    x = torch.rand(4, 3, 16, 16)
    g = feature_extractor_and_head(method.export(method.net).eval())[0](x)
    assert torch.allclose(fm(x), 3.0 * g), "AFD.gap_features must return f1 = D1 g (see bench/eval/evaluator.py)"
    assert "D1" in fm.what
