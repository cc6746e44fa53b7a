"""`bench speed` on a tiny setting (seconds), its JSON fields, and the precision facts it relies on."""
from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main
from bench.perf.speed import measure, render

ROW_FIELDS = {"method", "step_s", "step_s_min", "step_s_all", "images_per_s", "epoch_s", "batch_s", "batch_share",
              "flops_per_step", "flops_per_s", "mfu", "baseline_step_s", "baseline_images_per_s", "baseline_epoch_s",
              "speedup", "compiled"}
TOP_FIELDS = {"model", "precision", "batch_size", "steps", "warmup", "image_size", "data", "device", "device_name",
              "threads", "torch", "loadavg", "baseline", "baseline_workers", "peak_flops_per_s", "reference", "step_ratios",
              "methods", "precision_effective", "precision_native", "compile", "cpu"}


def test_speed_cli_json_has_every_field(capsys):
    code = main(["speed", "--model", "small_cnn", "--methods", "vaft,afd", "--precision", "bf16", "--baseline",
                 "--baseline-workers", "0", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                 "--matmul-size", "128", "--device", "cpu", "--json"])
    assert code == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep) == TOP_FIELDS
    assert [r["method"] for r in rep["methods"]] == ["vaft", "afd"]
    for row in rep["methods"]:
        assert set(row) == ROW_FIELDS
        assert row["images_per_s"] > 0 and row["flops_per_step"] > 0 and 0 < row["batch_share"] < 1
        assert row["speedup"] > 0 and len(row["step_s_all"]) == 2
    assert rep["reference"] == "vaft"
    assert rep["step_ratios"] == {"afd": pytest.approx(rep["methods"][1]["step_s"] / rep["methods"][0]["step_s"])}
    assert rep["peak_flops_per_s"] > 0
    text = render(rep)
    assert "afd step / vaft step" in text and "speedup" in text


def test_speed_without_baseline_or_afd():
    rep = measure(model="small_cnn", methods=["pgd_at"], precision="fp32", batch_size=4, steps=1, warmup=0,
                  device="cpu", matmul_size=64)
    assert rep["step_ratios"] == {} and rep["methods"][0]["speedup"] is None
    assert "pgd_at" in render(rep)


def test_speed_bad_input_is_one_line(capsys):
    assert main(["speed", "--methods", "nope", "--steps", "1"]) == 2
    assert "unknown method" in capsys.readouterr().err


def _conv_dtypes(model):
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(torch.get_autocast_dtype("cpu")
                                                                        if torch.is_autocast_enabled("cpu")
                                                                        else args[0].dtype))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return seen, hooks


def test_training_attack_runs_under_bf16_autocast_and_evaluation_in_fp32():
    """The attack is inside train_step, so the loop's autocast covers it; Evaluator works on an fp32 copy."""
    from bench.core.config import EvalConfig
    from bench.data import Loader
    from bench.eval.evaluator import Evaluator
    from bench.perf.speed import build_timed_method, synthetic_split
    from bench.train.loop import _autocast
    from methods import StepInfo

    dev = torch.device("cpu")
    split = synthetic_split(16, 0)
    method, _ = build_timed_method("vaft", "small_cnn", split, 8, "bf16", dev, torch.channels_last, 2, 0)
    batch = next(Loader(split, 8, device=dev, shuffle=True, augment=True, seed=0).epoch(0))
    seen, hooks = _conv_dtypes(method.model)
    with _autocast(dev, "bf16"):
        method.train_step(batch, StepInfo(epoch=0, step=0, global_step=0))
    for h in hooks:
        h.remove()
    assert len(seen) == 4 * 11 and set(seen) == {torch.bfloat16}  # 10 attack forwards + 1 training forward
    # The conv really computes in bf16 there (autocast casts its inputs):
    with _autocast(dev, "bf16"):
        assert method.model.body[0][0](batch.x).dtype == torch.bfloat16

    prepared = Evaluator.prepare(method.model)
    # fp32, in the evaluation's layout (channels_last for the conv weights: bench/eval/evaluator.py)
    assert all(p.dtype == torch.float32 and p.is_contiguous(memory_format=torch.channels_last if p.dim() == 4
                                                             else torch.contiguous_format)
               for p in prepared.parameters())
    seen, _ = _conv_dtypes(prepared)
    ev = Evaluator(split, EvalConfig(n_clean=8, n_pgd=8, n_aa=0), 8 / 255, dev)
    ev.pgd_correct(prepared, 8)
    assert seen and set(seen) == {torch.float32}
