"""`bench speed-eval`'s L2 AutoAttack (ours against pyautoattack direct) and corruption evaluation (against the clean
accuracy on the same images): measured in the same rounds as the L-inf rows and printed with min / median / max."""
from __future__ import annotations

import re

import torch

from bench.perf import speed_threats
from bench.perf.speed_eval import measure_eval, render_eval

NUM = r"[0-9][0-9.]*"
MMM = rf"{NUM} / {NUM} / {NUM}"


def test_speed_eval_prints_l2_autoattack_and_corruptions_with_min_median_max(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path))  # synthetic images: no CIFAR-10 here
    # a radius that APGD-CE breaks at once: L2 AutoAttack then takes seconds, not Square's 5,000 queries per image
    monkeypatch.setattr(speed_threats, "EPS_L2", 8.0)
    before = torch.get_num_threads()
    try:
        rep = measure_eval(n=8, reps=2, train_steps=0, contenders=("ours", "direct"), device="cpu", threads=1)
    finally:
        torch.set_num_threads(before)
    aa, corr = rep["threats"]["aa_l2"], rep["threats"]["corruptions"]
    for spread in (aa["ours_images_per_s"], aa["direct_images_per_s"], aa["speedup"], corr["images_per_s"],
                   corr["clean_images_per_s"], corr["ratio"]):
        assert 0 < spread["min"] <= spread["median"] <= spread["max"]
    assert aa["eps"] == 8.0 and aa["flips"] == 0 and corr["images"] == 40  # 5 severities of the 8 images
    text = render_eval(rep)
    assert re.search(rf"^L2 AutoAttack \(eps 8.0, 8 images\), images/s min / median / max over the rounds: "
                     rf"ours {MMM}, direct {MMM}; speed-up x{NUM} / x{NUM} / x{NUM}; accuracy {NUM}, flips 0$",
                     text, re.M), text
    assert re.search(rf"^corruption evaluation \(gaussian_noise, 5 severities, 40 images\), images/s min / median / "
                     rf"max: {MMM}; clean accuracy on the same images {MMM}; corruptions / clean "
                     rf"x{NUM} / x{NUM} / x{NUM}$", text, re.M), text
