"""Numerics (bench/core/numerics.py): exact fp32 evaluation, the training precision choice (fp32 | tf32 | bf16 | fp16
with a gradient scaler), the bf16-not-native warning, `bench speed`'s native default, the CPU's name and ISA
(bench/core/cpu.py), and --compile. All on the CPU: the TF32 policy is checked through the backend flags, which
exist without a GPU."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from bench.core import compilation
from bench.core import cpu as C
from bench.core import numerics as P
from bench.train import precision as TP
from bench.train.validation import check_method_precision
from bench.cli import main
from bench.core.config import ConfigError, EvalConfig
from bench.data import Split
from bench.eval.evaluator import Evaluator
from conftest import tiny_run

CPU = torch.device("cpu")


def _flags() -> tuple:
    return (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
            torch.get_float32_matmul_precision(), torch.backends.mkldnn.matmul.fp32_precision)


EXACT = (False, False, "highest", "ieee")


@pytest.fixture
def tf32_on():
    """TF32 allowed everywhere before the test (as a user or a tf32 training run leaves it); restored after."""
    saved = P._save()
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    yield _flags()
    P._restore(saved)


class _Recorder(nn.Module):
    """A classifier whose feature extractor records the TF32 flags every time it runs."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 8)
        self.classifier = nn.Linear(8, 3)
        self.seen: list[tuple] = []
        self.fail_after = fail_after

    def features(self, x):
        _Recorder.last = self  # the evaluator works on a deep copy: find it through the class
        self.seen.append(_flags())
        if self.fail_after is not None and len(self.seen) > self.fail_after:
            raise RuntimeError("boom")
        return torch.relu(self.fc(x.flatten(1)))

    def forward(self, x):
        return self.classifier(self.features(x))


def _evaluator(n: int = 6) -> Evaluator:
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8), torch.arange(n) % 3)
    cfg = EvalConfig(n_clean=n, n_pgd=n, n_aa=0, pgd_steps=2, batch_size=4, n_gap=n)
    return Evaluator(split, cfg, 8 / 255, CPU)


# -- exact fp32 evaluation -------------------------------------------------------------------------------------
def test_evaluation_is_exact_fp32_inside_and_restores_the_flags_after(tf32_on):
    assert tf32_on == (True, True, "high", "tf32")
    ev = _evaluator()
    for measure in (lambda m: ev.run(m), lambda m: ev.feature_gap_stats(m), lambda m: ev.fgsm_pgd_accuracy(m),
                    lambda m: ev.accuracy(m)):
        measure(_Recorder())
        seen = _Recorder.last.seen
        assert seen and set(seen) == {EXACT}
        assert _flags() == tf32_on  # TF32 back on afterwards


def test_evaluation_restores_the_flags_after_an_error(tf32_on):
    with pytest.raises(RuntimeError, match="boom"):
        _evaluator().run(_Recorder(fail_after=2))
    assert set(_Recorder.last.seen) == {EXACT}
    assert _flags() == tf32_on


def test_exact_fp32_overrides_and_restores_the_new_api_too():
    """A user who set oneDNN's fp32 matmuls to bf16 through the new API (AMX CPUs) gets exact fp32 inside."""
    saved = P._save()
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        with P.exact_fp32():
            assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    finally:
        P._restore(saved)


# -- the training precision ----------------------------------------------------------------------------------
def test_training_numerics_per_precision(tf32_on):
    for precision, dtype in (("fp32", None), ("tf32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with P.training_context(CPU, precision):
            assert _flags() == EXACT  # tf32 on a CPU trains in exact fp32
            assert torch.is_autocast_enabled("cpu") == (dtype is not None)
            if dtype is not None:
                assert torch.get_autocast_dtype("cpu") == dtype
        assert _flags() == tf32_on
    with P.allow_tf32():  # what tf32 training uses on CUDA
        assert _flags()[:3] == (True, True, "high")
    assert P.effective_precision("tf32", CPU) == "fp32" and P.effective_precision("bf16", CPU) == "bf16"


def test_unknown_precision_is_refused_in_one_line(capsys):
    assert main(["run", "--grid", "demo", "--set", "train.precision=fp8", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown train.precision 'fp8'; known: fp32, tf32, bf16, fp16" in err


def test_fp16_is_refused_for_a_method_with_its_own_step(capsys):
    # the demo grid has AFD, whose as-run update (three optimizers, no zero_grad between) bypasses the scaler
    assert main(["run", "--grid", "demo", "--set", "train.precision=fp16", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "method afd does not support fp16: use bf16 or fp32" in err
    from methods import get_method

    for name in ("free_at", "fgsm_ga", "pgd_at", "afd"):
        cls = get_method(name)
        with pytest.raises(ConfigError, match=f"method {name} does not support fp16"):
            check_method_precision(cls, cls.Hparams(), "fp16")
    for name in ("standard", "vaft", "trades", "afkd", "arrest", "rift"):
        cls = get_method(name)  # base train_step: loss -> scaled backward -> scaler.step
        check_method_precision(cls, cls.Hparams(), "fp16")
    # the same runs are fine in bf16
    assert main(["run", "--grid", "demo", "--set", "train.precision=bf16", "--dry-run"]) == 0


def test_grad_scaler_support_can_be_declared():
    from methods.base import Method

    class Custom(Method):
        def train_step(self, batch, step):  # pragma: no cover - never run
            return {}

    assert Custom.grad_scaler_problem(None) is not None  # its own step: refused unless it says otherwise
    assert Method.grad_scaler_problem(None) is None

    class Declared(Custom):  # e.g. a method whose step scales only in one update order
        name = "declared"

        @classmethod
        def grad_scaler_problem(cls, hp):
            return None if hp == "joint" else "scales only the joint update"

    assert Declared.grad_scaler_problem("joint") is None and Declared.grad_scaler_problem("as_run")
    with pytest.raises(ConfigError, match="scales only the joint update"):
        check_method_precision(Declared, "as_run", "fp16")


def test_fp16_base_step_goes_through_the_grad_scaler_on_cpu(tmp_path, tiny_folder):
    """A real 1-epoch fp16 run (CPU autocast supports float16, GradScaler("cpu") exists): the convolutions run in
    fp16, every backward is scaled, the update is unscaled (same size as fp32's), and the scaler is checkpointed."""
    from bench.core.runtime import Runtime
    from bench.perf.speed import build_timed_method, synthetic_split
    from bench.data import Loader
    from bench.train.loop import execute
    from methods import StepInfo

    split = synthetic_split(8, 0)
    batch = next(Loader(split, 8, device=CPU, shuffle=False, augment=False, seed=0).epoch(0))
    updates = {}
    for precision in ("fp32", "fp16"):
        method, _ = build_timed_method("standard", "small_cnn", split, 8, precision, CPU, torch.channels_last, 1, 0)
        before = [p.detach().clone() for p in method.model.parameters()]
        step = TP.make_step(method, precision, CPU)
        calls, dtypes = [], []
        if precision == "fp16":
            assert isinstance(method.grad_scaler, torch.amp.GradScaler)
            scale = method.grad_scaler.scale
            method.grad_scaler.scale = lambda loss: calls.append(loss) or scale(loss)
        conv = method.model.body[0][0]
        hook = conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        out = step(batch, StepInfo(epoch=0, step=0, global_step=0))
        hook.remove()
        assert torch.isfinite(out["loss"])
        assert dtypes == [torch.float16 if precision == "fp16" else torch.float32]
        assert len(calls) == (1 if precision == "fp16" else 0)
        updates[precision] = torch.cat([(p.detach() - b).flatten() for p, b in
                                        zip(method.model.parameters(), before)])
    assert method.grad_scaler.get_scale() == 65536.0  # no inf/NaN gradient: nothing skipped, scale unchanged
    ratio = updates["fp16"].norm() / updates["fp32"].norm()
    assert 0.9 < ratio < 1.1  # an unscaled fp16 update; a missing unscale would be 65536x

    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=1)
    cfg = replace(cfg, train=replace(cfg.train, precision="fp16"))
    rt = Runtime(results=tmp_path / "results", data_root=tiny_folder.parent, device="cpu", progress=False)
    res = execute(cfg, rt, log=lambda s: None)
    assert res["status"] == "done" and res["precision_effective"] == "fp16"
    assert res["config"]["train"]["precision"] == "fp16"
    ckpt = torch.load(next((tmp_path / "results").rglob("last.pt")), weights_only=True)
    assert ckpt["grad_scaler"]["scale"] == 65536.0


def test_make_step_refuses_fp16_for_a_custom_step_method():
    from bench.perf.speed import build_timed_method, synthetic_split

    method, _ = build_timed_method("free_at", "small_cnn", synthetic_split(8, 0), 8, "fp16", CPU,
                              torch.channels_last, 1, 0)
    with pytest.raises(ConfigError, match="method free_at does not support fp16: use bf16 or fp32"):
        TP.make_step(method, "fp16", CPU)


# -- bf16 where it is not native ------------------------------------------------------------------------------
def _speed(capsys, *extra):
    code = main(["speed", "--methods", "standard", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                 "--matmul-size", "64", "--device", "cpu", "--json", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out), [line for line in out.err.splitlines() if "warning" in line]


def test_bf16_warning_and_speed_default_follow_the_detector(capsys, monkeypatch):
    real = C.cpu_native
    monkeypatch.setattr(C, "cpu_native", lambda precision: False if precision == "bf16" else real(precision))
    rep, warnings = _speed(capsys)
    assert rep["precision"] == "fp32" and rep["precision_native"] and warnings == []  # default: fastest native
    rep, warnings = _speed(capsys, "--precision", "bf16")
    assert rep["precision"] == "bf16" and not rep["precision_native"]
    assert len(warnings) == 1
    line = warnings[0]
    assert "without native bf16" in line and "~100x slower than fp32" in line and "amx_tile or avx512_bf16" in line
    assert rep["cpu"]["name"] in line and " ".join(rep["cpu"]["isa"]) in line

    monkeypatch.setattr(C, "cpu_native", lambda precision: True)
    rep, warnings = _speed(capsys)
    assert rep["precision"] == "bf16" and warnings == []
    rep, warnings = _speed(capsys, "--precision", "bf16")
    assert warnings == []


def test_bf16_warning_before_training(tmp_path, tiny_folder, capsys, monkeypatch):
    from bench.core.runtime import Runtime
    from bench.train.loop import execute

    monkeypatch.setattr(C, "cpu_native", lambda precision: precision != "bf16")
    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=1)
    rt = Runtime(results=tmp_path / "results", data_root=tiny_folder.parent, device="cpu", progress=False)
    lines = []
    res = execute(replace(cfg, train=replace(cfg.train, precision="bf16")), rt, log=lines.append)
    err = capsys.readouterr().err
    assert res["status"] == "done" and err.count("without native bf16") == 1
    # printed before the first epoch's log line, on stderr; an fp32 run prints nothing
    assert not any("native bf16" in s for s in lines)
    execute(cfg, rt, log=lambda s: None)
    assert "warning" not in capsys.readouterr().err


def test_onednn_max_cpu_isa_is_respected(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not C.cpu_native("bf16") and not C.cpu_native("fp16") and C.cpu_native("fp32")
    assert "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN off them" in P.slow_precision_warning("bf16", CPU)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert C._onednn_allows(C._BIT_BF16) and not C._onednn_allows(C._BIT_AMX)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert C._onednn_allows(C._BIT_AMX) and C._onednn_allows(C._BIT_BF16)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "default")
    assert C.onednn_max_isa() is None
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    hw = C._torch_cpu_check("amx_tile", "amx_tile") or C._torch_cpu_check("avx512_bf16", "avx512_bf16")
    assert C.cpu_native("bf16") == hw


# -- the CPU's name and ISA ------------------------------------------------------------------------------------
def test_cpu_name_and_isa(tmp_path):
    from pathlib import Path

    from bench.core.provenance import provenance

    name = C.cpu_name()
    assert name and name not in ("x86_64", "unknown CPU")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "model name" in cpuinfo.read_text():
        assert name == C._cpuinfo_field("model name")
    info = C.cpu_info()
    assert set(info["isa"]) <= set(C.ISA_FLAGS) and info["name"] == name
    assert name in C.describe_cpu(info)
    if cpuinfo.exists() and "cpu family" in cpuinfo.read_text():  # x86 Linux: the generation behind the name
        assert info["model"] == f"family {C._cpuinfo_field('cpu family')} model {C._cpuinfo_field('model')}"
        assert info["model"] in C.describe_cpu(info)
    assert C.describe_cpu({**info, "model": None}).startswith(f"{name} (")  # reports from before it was recorded
    prov = provenance(CPU)
    assert prov["device_name"] == name and prov["cpu_isa"] == info["isa"] and prov["cpu_model"] == info["model"]


# -- --compile -----------------------------------------------------------------------------------------------------
def test_compile_model_is_in_place_and_deep_copies_stay_eager():
    import copy

    from bench.models.architectures import build_model

    model = compilation.compile_model(build_model("small_cnn", 10, 3))
    assert getattr(model.body, "_compiled_call_impl", None) is not None  # the conv trunk
    assert getattr(model.classifier, "_compiled_call_impl", None) is None
    assert all(not k.startswith("_orig_mod") for k in model.state_dict())
    assert getattr(copy.deepcopy(model).body, "_compiled_call_impl", None) is None
    with compilation.compiling(True):
        assert Evaluator.prepare(model).body._compiled_call_impl is not None
    assert getattr(Evaluator.prepare(model).body, "_compiled_call_impl", None) is None


def test_methods_that_cannot_be_compiled_train_eagerly():
    import dataclasses

    from methods import get_method

    afd = get_method("afd")
    assert "StaleGraph" in afd.compile_problem(afd.Hparams())
    assert afd.compile_problem(dataclasses.replace(afd.Hparams(), update_order="joint")) is None
    assert get_method("vaft_a").compile_problem(get_method("vaft_a").Hparams()) is not None
    assert "GradAlign" in get_method("fgsm_ga").compile_problem(get_method("fgsm_ga").Hparams())
    for name in ("standard", "vaft", "pgd_at", "trades", "free_at"):
        assert get_method(name).compile_problem(get_method(name).Hparams()) is None

    class Declared(afd):
        @classmethod
        def compile_problem(cls, hp):
            return None

    assert Declared.compile_problem(afd.Hparams()) is None


@pytest.mark.slow
def test_compiled_run_gives_the_same_metrics(tmp_path, tiny_folder):
    """vAFT fine-tuned from one (eager) parent and evaluated, with and without --compile: per-epoch losses within
    1e-4 (relative), the feature gap within 1e-3 (a max of feature differences: relative float noise is amplified;
    5e-5 seen), clean and PGD accuracy within one test image. Inductor fuses and reorders float32 sums, so bit
    equality is not promised. Compiling is slow on a CPU: ~5-20 s with a warm inductor cache, 3.5 min cold on 2
    loaded cores (73 s of CPU time)."""
    import shutil

    from bench.grid.runner import run_local
    from bench.core.runtime import Runtime
    from bench.train.loop import execute

    cfg = tiny_run("vaft", f"folder:{tiny_folder}", epochs=1, parent_epochs=1)
    rt = {c: Runtime(results=tmp_path / str(c), data_root=tiny_folder.parent, device="cpu", progress=False,
                     compile=c) for c in (False, True)}
    run_local([cfg.parent], rt[False], log=lambda s: None)
    shutil.copytree(rt[False].results, rt[True].results)  # the same parent model for both
    eager, comp = (execute(cfg, rt[c], log=lambda s: None) for c in (False, True))
    assert eager["status"] == comp["status"] == "done"
    for e, c in zip(eager["epochs"], comp["epochs"], strict=True):
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-4)
    m, n = eager["metrics"], eager["metrics"]["n_clean"]
    for k in ("clean", "pgd20"):
        assert abs(comp["metrics"][k] - m[k]) <= 1 / n + 1e-9
    assert comp["metrics"]["feature_gap"] == pytest.approx(m["feature_gap"], rel=1e-3)
