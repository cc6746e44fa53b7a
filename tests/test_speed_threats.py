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


class _ClassZero(torch.nn.Module):
    """Always class 0, whatever the image: right on exactly the images labelled 0."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(1, 10)

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float() + 0 * self.head.weight.sum()


def test_corruptions_and_clean_count_the_same_images_with_counts_not_float_means(tmp_path):
    """One image in three right: 1/3 as a float32 mean is not 1 / 3 as a double; the check compares counts."""
    from bench.core.config import EvalConfig
    from bench.data import Split

    g = torch.Generator().manual_seed(0)
    test = Split(torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8), torch.tensor([0, 1, 2]))
    cset = speed_threats.corruption_set(test, tmp_path)
    assert cset.images(speed_threats.CORRUPTION).shape == (5, 3, 3, 32, 32)
    flags, secs = speed_threats.corruptions_vs_clean(_ClassZero(), cset, EvalConfig(batch_size=3), torch.device("cpu"), 0)
    assert flags["clean_c"].tolist() == [True, False, False] * 5
    assert secs["corruptions"] > 0 and secs["clean_c"] > 0
