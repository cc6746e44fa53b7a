"""`bench eval`: any checkpoint under the paper's protocol, equal to pyautoattack run directly, resumable after a
SIGKILL in the middle of AutoAttack with identical per-example results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bench.cli import main
from bench.data import load_dataset
from bench.models.architectures import build_model
from conftest import REPO, write_tiny_folder


FOUR = ("red", "green", "blue", "grey")  # AutoAttack's targeted DLR loss needs at least 4 classes


def _partly_robust(path, classes=4, seed=0):
    """A small CNN that is robust on part of the test set: the head's weights are scaled down so the bias decides
    on most images (class 0 there), so AutoAttack has robust points to work on, and fails on others."""
    torch.manual_seed(seed)
    m = build_model("small_cnn", classes, 3)
    with torch.no_grad():
        m.classifier.weight.mul_(0.05)
        m.classifier.bias.copy_(torch.tensor([0.02] + [0.0] * (classes - 1)))
    torch.save({"model": m.state_dict()}, path)
    return m


def _eval_argv(folder, ckpt, results, n=12, n_aa=12, bs=12):
    return ["eval", "--model", "small_cnn", "--checkpoint", str(ckpt), "--dataset", f"folder:{folder}", "--n", str(n),
            "--n-aa", str(n_aa), "--batch-size", str(bs), "--results", str(results), "--device", "cpu", "--threads", "1"]


def _result(results):
    (path,) = (results / "evals").glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_bench_eval_equals_pyautoattack_run_directly(tmp_path, capsys):
    folder = write_tiny_folder(tmp_path / "tiny", classes=FOUR, n_train=4, n_test=24)
    model = _partly_robust(tmp_path / "m.pt").eval()
    assert main(_eval_argv(folder, tmp_path / "m.pt", tmp_path / "r", n=24, n_aa=24, bs=24)) == 0
    res = _result(tmp_path / "r")
    flags = res["metrics"]["per_example"]["aa"]
    assert res["sanity"] == "ok" and len(flags) == 24
    assert 0 < flags.count("1") < flags.count("1") + flags.count("0")  # partly robust: AA had real work
    from pyautoattack import AutoAttack

    _, test, _ = load_dataset(f"folder:{folder}", None, None)
    x, y = test.images[:24].float().div(255), test.labels[:24]
    adversary = AutoAttack(model, norm="Linf", eps=8 / 255, version="standard", device="cpu", seed=0)
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = 3  # 4 classes (see attacks.py)
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=24)
    with torch.no_grad():
        direct = "".join("1" if b else "0" for b in (model(x_adv).argmax(1) == y).tolist())
    assert flags == direct
    out = capsys.readouterr().out
    assert "AutoAttack" in out and "AA <= PGD-20 <= clean: ok" in out


@pytest.mark.slow
def test_sigkill_during_autoattack_resumes_to_identical_per_example_results(tmp_path):
    folder = write_tiny_folder(tmp_path / "tiny", classes=FOUR, n_train=4, n_test=24)
    _partly_robust(tmp_path / "m.pt")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "bench", *_eval_argv(folder, tmp_path / "m.pt", tmp_path / "a", n=24, n_aa=24, bs=8)]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunk = None
    try:
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None:
            found = list((tmp_path / "a" / "evals").glob("*.chunks/eval-*/aa-00000.pt"))
            if found:
                chunk = found[0]
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert chunk is not None, f"the first AutoAttack chunk was never written: {proc.stderr.read().decode()[-500:]}"
    assert not list((tmp_path / "a" / "evals").glob("*.json"))  # killed before the result: nothing half-written
    first = chunk.stat().st_mtime_ns
    subprocess.run(argv, cwd=REPO, env=env, check=True, capture_output=True)
    assert chunk.stat().st_mtime_ns == first  # the finished chunk was reused, not recomputed
    resumed = _result(tmp_path / "a")
    argv_b = [a if a != str(tmp_path / "a") else str(tmp_path / "b") for a in argv]
    subprocess.run(argv_b, cwd=REPO, env=env, check=True, capture_output=True)
    straight = _result(tmp_path / "b")
    assert resumed["eval_id"] == straight["eval_id"]
    assert resumed["metrics"]["per_example"] == straight["metrics"]["per_example"]
    for k in ("clean", "pgd20", "aa", "feature_gap"):
        assert resumed["metrics"][k] == straight["metrics"][k]


def test_mismatched_checkpoint_and_bad_arguments_are_one_line(tmp_path, capsys):
    folder = write_tiny_folder(tmp_path / "tiny", n_train=3, n_test=6)
    torch.save(build_model("small_cnn", 10, 3).state_dict(), tmp_path / "c10.pt")
    cases = [
        (_eval_argv(folder, tmp_path / "c10.pt", tmp_path / "r"), "does not fit this architecture"),
        (_eval_argv(folder, tmp_path / "nope.pt", tmp_path / "r"), "does not exist"),
        (["eval", "--dataset", "digits"], "give one of --model"),
        (["eval", "--model", "small_cnn", "--dataset", "digits"], "needs --checkpoint"),
        (["eval", "--model", "no_such_pkg:factory", "--checkpoint", str(tmp_path / "c10.pt"), "--dataset",
          f"folder:{folder}", "--results", str(tmp_path / "r")], "no module named 'no_such_pkg'"),
        ([*_eval_argv(folder, tmp_path / "c10.pt", tmp_path / "r"), "--eps", "8"], "write 8/255"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "r" / "evals").exists()


def test_own_architecture_from_a_factory(tmp_path, capsys, monkeypatch):
    folder = write_tiny_folder(tmp_path / "tiny", n_train=3, n_test=6)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "my_arch.py").write_text(
        "import torch.nn as nn\n"
        "def make(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), nn.ReLU(), nn.Linear(8, num_classes))\n")
    monkeypatch.syspath_prepend(str(pkg))
    import importlib

    torch.manual_seed(0)
    torch.save(importlib.import_module("my_arch").make(3).state_dict(), tmp_path / "w.pt")
    argv = ["eval", "--model", "my_arch:make", "--checkpoint", str(tmp_path / "w.pt"), "--dataset", f"folder:{folder}",
            "--n", "6", "--n-aa", "0", "--results", str(tmp_path / "r"), "--device", "cpu"]
    assert main(argv) == 0
    res = _result(tmp_path / "r")
    assert res["metrics"]["n_clean"] == 6 and "aa" not in res["metrics"] and res["metrics"]["feature_gap"] >= 0
    assert res["metrics"]["feature_gap_of"] == "penultimate features"  # the input of the last Linear


def test_clean_on_more_images_than_pgd_and_bad_counts_are_one_line(tmp_path, capsys):
    """--n sets clean accuracy alone: PGD-20 has its own --n-pgd (a ResNet18's PGD-20 on all 10,000 test images
    takes tens of minutes on a CPU, its clean accuracy seconds)."""
    folder = write_tiny_folder(tmp_path / "tiny", n_train=3, n_test=12)
    _partly_robust(tmp_path / "m.pt", classes=3)
    argv = ["eval", "--model", "small_cnn", "--checkpoint", str(tmp_path / "m.pt"), "--dataset", f"folder:{folder}",
            "--n", "12", "--n-pgd", "4", "--n-aa", "0", "--batch-size", "12", "--results", str(tmp_path / "r"),
            "--device", "cpu", "--threads", "1"]
    assert main(argv) == 0
    res = _result(tmp_path / "r")
    assert len(res["metrics"]["per_example"]["clean"]) == 12 and len(res["metrics"]["per_example"]["pgd20"]) == 4
    capsys.readouterr()
    base = argv[:argv.index("--n-pgd")]
    rest = ["--batch-size", "12", "--results", str(tmp_path / "r2"), "--device", "cpu"]
    for extra, message in ((["--n-pgd", "20"], "--n-pgd must be in [0, --n] = [0, 12]"),
                           (["--n-pgd", "4", "--n-aa", "6"], "--n-aa must be in [0, --n-pgd] = [0, 4]")):
        assert main([*base, *extra, *rest]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert main([*base, "--threads", "0", *rest]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threads must be >= 1 (got 0)" in err, err


def test_threads_0_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["run", "--grid", "demo", "--results", str(tmp_path), "--threads", "0", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threads must be >= 1 (got 0)" in err
    assert main(["speed", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_a_checkpoint_of_the_afd_code_is_evaluated_on_its_own_network_and_the_mapping_said(tmp_path, capsys):
    """A ResNet18 saved as the AFD code saves it (``linear`` classifier, DataParallel's ``module.``) evaluated as
    ``resnet18_afd`` (unpadded first convolution): the mapping is printed and recorded, and its clean accuracy is
    the network's own, not that of the padded ``resnet18`` the same file also loads into."""
    folder = write_tiny_folder(tmp_path / "tiny", n_train=3, n_test=6)
    torch.manual_seed(0)
    net = build_model("resnet18_afd", 3, 3)
    state = {f"module.{k.replace('classifier.', 'linear.')}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "afd.pt")
    argv = ["eval", "--model", "resnet18_afd", "--checkpoint", str(tmp_path / "afd.pt"), "--dataset",
            f"folder:{folder}", "--n", "6", "--n-pgd", "0", "--n-aa", "0", "--results", str(tmp_path / "r"),
            "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "checkpoint keys mapped: linear.* -> classifier.*" in out
    res = _result(tmp_path / "r")
    assert res["key_mapping"] == ["linear.* -> classifier.*"] and res["spec"]["model"] == "resnet18_afd"
    _, test, _ = load_dataset(f"folder:{folder}", None, None)
    x, y = test.images[:6].float().div(255), test.labels[:6]
    with torch.no_grad():
        expected = (net.eval()(x).argmax(1) == y).float().mean().item()
    assert res["metrics"]["clean"] == pytest.approx(expected)
