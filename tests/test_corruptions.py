"""Common corruptions: the published layouts (CIFAR-10-C / CIFAR-100-C .npy files, Tiny-ImageNet-C folders) read
from tiny fixtures written here and checked (all 15 present, shapes, truncated files, labels against the clean test
set); the accuracy per corruption and severity in batched forward passes; the generated CIFAR-sized set (seeded,
cached, named apart); ``bench eval --threat corruptions`` with bad input in one line, exit 2, nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import bench.eval.standalone as standalone
from bench.cli import main
from bench.data import DataError, DatasetInfo, Split
from bench.data import generated_corruptions as gen
from bench.data.corruptions import CORRUPTIONS, SEVERITIES, load_cifar_c, load_corruption_set, load_tiny_imagenet_c
from bench.eval.corruption_accuracy import corruption_accuracy

N = 6


def _cifar_test(n=N, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n) % classes)


def _write_cifar_c(folder, test, skip=()):
    """The published layout: <corruption>.npy uint8 (5 N, 32, 32, 3), severity s = the images plus 10 s (mod 256),
    and labels.npy (5 N,) uint8."""
    folder.mkdir(parents=True)
    hwc = test.images.permute(0, 2, 3, 1).numpy()
    for i, cor in enumerate(CORRUPTIONS):
        if cor not in skip:
            np.save(folder / f"{cor}.npy", np.concatenate([(hwc.astype(np.int64) + 10 * s + i) % 256
                                                           for s in SEVERITIES]).astype(np.uint8))
    np.save(folder / "labels.npy", np.tile(test.labels.numpy(), 5).astype(np.uint8))
    return folder


def test_cifar_c_layout_read_and_checked(tmp_path):
    test = _cifar_test()
    folder = _write_cifar_c(tmp_path / "CIFAR-10-C", test)
    cset = load_cifar_c(folder, test, dataset_name="cifar10-c", label="CIFAR-10-C")
    assert cset.corruptions == CORRUPTIONS and torch.equal(cset.labels, test.labels)
    imgs = cset.images("fog")
    assert imgs.shape == (5, N, 3, 32, 32) and imgs.dtype == torch.uint8
    assert torch.equal(imgs[2], ((test.images.long() + 30 + CORRUPTIONS.index("fog")) % 256).to(torch.uint8))


@pytest.mark.parametrize("break_it, message", [
    (lambda f: [(f / "fog.npy").unlink(), (f / "snow.npy").unlink()], "2 of the 15 corruptions missing (snow, fog)"),
    (lambda f: (f / "fog.npy").write_bytes((f / "fog.npy").read_bytes()[:5000]), "fog.npy is unreadable or truncated"),
    (lambda f: np.save(f / "fog.npy", np.zeros((5 * N, 32, 32, 1), np.uint8)), "expected uint8 (30, 32, 32, 3)"),
    (lambda f: np.save(f / "labels.npy", (np.tile(np.arange(N) % 10, 5) + 1).astype(np.uint8)),
     "labels.npy disagrees with the clean test set (30 labels)"),
    (lambda f: (f / "labels.npy").unlink(), "labels.npy is missing"),
])
def test_cifar_c_bad_files_are_one_line(tmp_path, break_it, message):
    test = _cifar_test()
    folder = _write_cifar_c(tmp_path / "CIFAR-10-C", test)
    break_it(folder)
    with pytest.raises(DataError) as e:
        load_cifar_c(folder, test, dataset_name="cifar10-c", label="CIFAR-10-C")
    assert message in str(e.value) and "\n" not in str(e.value)


def _write_tiny_c(folder, wnids, per_class, skip_severity=None):
    rng = np.random.default_rng(0)
    for cor in CORRUPTIONS:
        for s in SEVERITIES:
            if (cor, s) == skip_severity:
                continue
            for wnid in wnids:
                d = folder / cor / str(s) / wnid
                d.mkdir(parents=True)
                for i in range(per_class):
                    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"val_{i}.JPEG")


def test_tiny_imagenet_c_layout_read_and_checked(tmp_path):
    wnids = ("n01", "n02")
    info = DatasetInfo("tiny-imagenet", 2, 3, 64, wnids)
    test = Split(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), torch.tensor([1, 0, 1, 0]))
    _write_tiny_c(tmp_path / "Tiny-ImageNet-C", wnids, per_class=2)
    cset = load_tiny_imagenet_c(tmp_path / "Tiny-ImageNet-C", test, info, tmp_path / "cache")
    assert cset.name == "tiny-imagenet-c" and cset.labels.tolist() == [0, 0, 1, 1]
    assert cset.images("contrast").shape == (5, 4, 3, 64, 64)
    uneven = Split(test.images, torch.tensor([1, 1, 1, 0]))
    with pytest.raises(DataError, match="disagree with the clean val set"):
        load_tiny_imagenet_c(tmp_path / "Tiny-ImageNet-C", uneven, info, tmp_path / "cache")
    _write_tiny_c(tmp_path / "broken", wnids, per_class=2, skip_severity=("zoom_blur", 3))
    with pytest.raises(DataError, match=r"1 of the 15 corruptions missing \(zoom_blur\)"):
        load_tiny_imagenet_c(tmp_path / "broken", test, info, tmp_path / "cache")


class Counting(nn.Module):
    """Predicts class (mean pixel * 10) mod 10, counting its forward passes."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        pred = (x.mean(dim=(1, 2, 3)) * 10).long() % 10
        return nn.functional.one_hot(pred, 10).float()


def test_accuracy_per_corruption_and_severity_in_batched_forward_passes(tmp_path):
    test = _cifar_test(n=20)
    cset = load_cifar_c(_write_cifar_c(tmp_path / "C", test), test, dataset_name="cifar10-c", label="CIFAR-10-C")
    model = Counting()
    out = corruption_accuracy(model, cset, torch.device("cpu"), batch_size=8)
    assert model.calls == 15 * 5 * 3  # ceil(20 / 8) batches per severity: never one image at a time
    for cor in CORRUPTIONS:
        imgs = cset.images(cor)
        want = [float((Counting()(imgs[s].float() / 255).argmax(1) == test.labels).float().mean()) for s in range(5)]
        assert out["accuracy"][cor] == pytest.approx(want)
    assert out["mean"] == pytest.approx(np.mean([a for accs in out["accuracy"].values() for a in accs]))
    assert out["n"] == 20 and out["dataset"] == "cifar10-c"


def test_generated_corruptions_seeded_graded_and_cached(tmp_path):
    clean = np.random.default_rng(0).integers(40, 216, (4, 32, 32, 3)).astype(np.uint8)  # texture to blur
    for cor in gen.GENERATED:
        a, b = gen.corrupt(clean, cor, 3), gen.corrupt(clean, cor, 3)
        assert a.shape == clean.shape and a.dtype == np.uint8 and np.array_equal(a, b), cor  # seeded
        change = [np.abs(gen.corrupt(clean, cor, s).astype(float) - clean).mean() for s in SEVERITIES]
        assert change[4] > 0.5, cor  # the strongest severity changes the images
        # not for the two that move pixels: elastic's severity 1 has make_cifar_c.py's largest affine jitter, and
        # glass blur swaps neighbours at every severity (on noise texture any swap changes as much)
        if cor not in ("elastic_transform", "glass_blur"):
            assert change[4] >= change[0], cor
    # make_cifar_c.py's parameters, not ImageNet-C's: Gaussian noise of sigma 0.04 at severity 1, contrast 0.15 at 5
    noise = gen.corrupt(np.full((64, 32, 32, 3), 128, np.uint8), "gaussian_noise", 1).astype(float) / 255
    assert noise.std() == pytest.approx(0.04, rel=0.05)
    low = gen.corrupt(clean, "contrast", 5).astype(float)
    assert low.std(axis=(1, 2)).mean() == pytest.approx(0.15 * clean.astype(float).std(axis=(1, 2)).mean(), rel=0.05)
    assert "frost" not in gen.GENERATED and "snow" not in gen.GENERATED and len(gen.GENERATED) == 12

    test = _cifar_test(n=4)
    info = DatasetInfo("cifar10", 10, 3, 32, tuple("abcdefghij"))
    cset = load_corruption_set("cifar10", "generated", test, info, tmp_path, tmp_path / "cache", log=lambda s: None)
    assert cset.name == "cifar10-c-generated" and cset.label == "CIFAR-10-C-generated"
    assert cset.corruptions == gen.GENERATED and (tmp_path / "CIFAR-10-C-generated" / "manifest.json").is_file()
    stamp = (tmp_path / "CIFAR-10-C-generated" / "fog.npy").stat().st_mtime_ns
    again = load_corruption_set("cifar10", "generated", test, info, tmp_path, None, log=lambda s: None)
    assert (tmp_path / "CIFAR-10-C-generated" / "fog.npy").stat().st_mtime_ns == stamp  # read, not made again
    assert torch.equal(again.images("fog"), cset.images("fog"))
    assert not (tmp_path / "CIFAR-10-C").exists()  # never where the published set lives


def _fake_cifar10(test):
    info = DatasetInfo("cifar10", 10, 3, 32, tuple("abcdefghij"))
    return lambda name, root, cache: (test, test, info)


def test_bench_eval_threat_corruptions(tmp_path, monkeypatch, capsys):
    test = _cifar_test(n=10)
    monkeypatch.setattr(standalone, "load_dataset", _fake_cifar10(test))
    torch.manual_seed(0)
    from bench.models.architectures import build_model

    torch.save(build_model("small_cnn", 10, 3).state_dict(), tmp_path / "m.pt")
    _write_cifar_c(tmp_path / "data" / "CIFAR-10-C", test)

    def argv(results, *extra):
        return ["eval", "--model", "small_cnn", "--checkpoint", str(tmp_path / "m.pt"), "--dataset", "cifar10",
                "--n", "10", "--n-aa", "0", "--batch-size", "10", "--results", str(results), "--data-root",
                str(tmp_path / "data"), "--device", "cpu", "--threads", "1", *extra]

    assert main(argv(tmp_path / "r", "--threat", "corruptions")) == 0
    out = capsys.readouterr().out
    assert "| CIFAR-10-C: mean of 75 |" in out and "| gaussian_noise |" in out and "| PGD-20 |" not in out
    res = json.loads(next((tmp_path / "r" / "evals").glob("*.json")).read_text())
    corr = res["metrics"]["corruptions"]
    assert len(corr["accuracy"]) == 15 and all(len(a) == 5 for a in corr["accuracy"].values())
    assert res["metrics"]["n_clean"] == 10 and res["spec"]["corruptions"] == "published"

    assert main(argv(tmp_path / "g", "--threat", "linf,corruptions", "--corruptions", "generated", "--n-pgd", "2")) == 0
    out = capsys.readouterr().out
    assert "| CIFAR-10-C-generated: mean of 60 |" in out and "| PGD-20 |" in out
    (tmp_path / "data" / "CIFAR-10-C" / "snow.npy").unlink()
    assert main(argv(tmp_path / "bad", "--threat", "corruptions")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 of the 15 corruptions missing (snow)" in err
    assert not (tmp_path / "bad" / "evals").exists()


def test_zoom_of_all_images_at_once_equals_make_cifar_c_image_by_image():
    from scipy.ndimage import zoom

    x = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)

    def one(img, factor):  # make_cifar_c.py's clipped_zoom on one (H, W, C) image
        ch = int(np.ceil(32 / factor))
        top = (32 - ch) // 2
        out = zoom(img[top:top + ch, top:top + ch], (factor, factor, 1), order=1)
        trim = (out.shape[0] - 32) // 2
        return out[trim:trim + 32, trim:trim + 32]

    for factor in (1.0, 1.07, 1.25):
        assert np.allclose(gen.clipped_zoom(x, factor), np.stack([one(img, factor) for img in x]), atol=1e-6)
