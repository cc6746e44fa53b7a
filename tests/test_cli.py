"""The command line: bad input gets one line and exit code 2, and nothing is written."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.cli import apply_sets, main, parse_value
from bench.grid.grids import get_grid
from conftest import REPO


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("8/255") == pytest.approx(8 / 255)
    assert parse_value("0.5,0.75") == (0.5, 0.75)
    assert parse_value("cifar10") == "cifar10"


def test_set_applies_to_runs_and_parents():
    runs = apply_sets(get_grid("demo"), ["train.epochs=1", "afd.gamma=10", "eps=4/255"])
    afd = next(r for r in runs if r.method == "afd")
    vaft = next(r for r in runs if r.method == "vaft")
    assert afd.train.epochs == 1 and afd.parent.train.epochs == 1
    assert afd.hp["gamma"] == 10.0 and "gamma" not in vaft.hp
    assert afd.eps == pytest.approx(4 / 255) and afd.parent.eps == pytest.approx(4 / 255)


BAD = [
    (["run", "--grid", "nope"], "unknown grid 'nope'"),
    (["run", "--grid", "../demo"], "path separator"),
    (["run", "--grid", "demo", "--set", "method=afx"], "unknown key"),
    (["run", "--grid", "demo", "--set", "model=resnet19"], "unknown model 'resnet19'"),
    (["run", "--grid", "demo", "--set", "dataset=cifar11"], "unknown data set 'cifar11'"),
    (["run", "--grid", "demo", "--set", "train.epochs"], "malformed"),
    (["run", "--grid", "demo", "--set", "train.epoch=3"], "unknown key"),
    (["run", "--grid", "demo", "--set", "train.epochs=two"], "expected a int"),
    (["run", "--grid", "demo", "--set", "train.epochs=0"], "epochs must be >= 1"),
    (["run", "--grid", "demo", "--set", "train.epochs=-3"], "epochs must be >= 1"),
    (["run", "--grid", "demo", "--set", "train.batch_size=-4"], "batch_size must be >= 1"),
    (["run", "--grid", "demo", "--set", "eval.pgd_steps=0"], "pgd_steps must be >= 1"),
    (["run", "--grid", "demo", "--seeds", "0"], "--seeds must be >= 1"),
    (["run", "--grid", "demo", "--set", "eps=8"], "write 8/255, not 8"),
    (["run", "--grid", "demo", "--set", "afd.gama=3"], "no run of this grid"),
    (["run", "--grid", "demo", "--set", "afd.gamma=abc"], "expects float"),
    (["run", "--grid", "demo", "--set", "afd.gamma=-1"], "afd.gamma must be >= 0.0"),
    (["run", "--grid", "demo", "--set", "afd.update_order=official"], "must be one of 'as_run', 'joint'"),
    (["run", "--grid", "demo", "--set", "dataset=folder:/nonexistent/x"], "/nonexistent/x"),
    (["run", "--grid", "demo", "--set", "dataset=folder:{empty}"], "has no class folders"),
    (["run", "--grid", "demo", "--set", "dataset=folder:{flat}"], "has no train/ folder"),
    (["run", "--grid", "demo", "--set", "dataset=cifar100"], "CIFAR-100"),
    (["run", "--grid", "demo", "--set", "dataset=tiny-imagenet"], "val_annotations.txt is missing"),
    (["run", "--grid", "demo", "--device", "cuda:7"], "CUDA is not available"),
    (["run", "--grid", "demo", "--profile", "nope", "--executor", "slurm"], "unknown SLURM profile 'nope'"),
    (["run", "--grid", "demo", "--set", "dataset=folder:{tiny}", "--results", "{file}/r"], "not writable"),
    (["run", "--grid", "demo", "--results", "/proc/forbidden"], "not writable"),
    (["run", "--grid", "demo", "--set", "dataset=folder:{tiny}", "{parent:resnet18:3}"], "is a resnet18 with 3"),
    (["run", "--grid", "demo", "--set", "dataset=folder:{tiny}", "{parent:small_cnn:10}"], "with 10 classes"),
    (["plot", "--figure", "fig1", "--grid", "demo", "--methods", "vaft,afdx"], "unknown method 'afdx'"),
    (["speed-eval", "--contenders", "ours,plain"], "--contenders ours,plain: choose from"),
    (["speed-eval", "--contenders", "ours_plain,direct"], "with ours and direct"),
    (["speed-eval", "--save-model", "{file}/m.pt"], "its folder does not exist"),
    (["speed-eval", "--n-images", "501"], "--n-images must be <= 500"),
    (["speed", "--eval", "--n-images", "200"], "bench speed-eval"),
    # a results folder that is a file, or that does not exist, where a command only reads results
    (["status", "--grid", "demo", "--results", "{file}"], "is a file, not a results folder"),
    (["plan", "--grid", "demo", "--results", "{file}"], "is a file, not a results folder"),
    (["report", "--grid", "demo", "--results", "{file}"], "is a file, not a results folder"),
    (["report", "--grid", "demo", "--results", "{missing}"], "does not exist"),
    (["report", "--grid", "demo", "--claims", "--results", "{missing}"], "does not exist"),
    (["report", "--evals", "--results", "{missing}"], "does not exist"),
    (["status", "--grid", "demo", "--results", "{missing}"], "does not exist"),
    (["compare", "--grid", "demo", "--a", "vaft", "--b", "afd", "--results", "{missing}"], "does not exist"),
    (["plot", "--figure", "fig1", "--grid", "demo", "--results", "{missing}"], "does not exist"),
    # seeds are bounded before a grid is expanded in memory (this once ran for minutes)
    (["run", "--grid", "demo", "--seeds", "100000000", "--dry-run"], "at most 10000"),
    (["plan", "--grid", "demo", "--seeds", "100000000"], "at most 10000"),
    (["eval", "--model", "small_cnn", "--checkpoint", "{folder}", "--dataset", "digits", "--n", "10"],
     "is a folder, not a checkpoint file"),
]


def _bad_setup(tmp_path, argv: list[str], results):
    """Fill the placeholders of a BAD case: tiny/empty/flat image folders, a Tiny-ImageNet tree without
    val_annotations.txt under the data root, a regular file, and a parent model file of the wrong kind."""
    import torch

    from bench.core.config import run_id
    from conftest import write_tiny_folder

    data = tmp_path / "data"
    ti = data / "tiny-imagenet-200"
    (ti / "train" / "n01" / "images").mkdir(parents=True)
    (ti / "val" / "images").mkdir(parents=True)
    (ti / "wnids.txt").write_text("n01\n")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    write_tiny_folder(tmp_path / "flat_src", n_train=3, n_test=3)
    (tmp_path / "flat").mkdir()
    for png in (tmp_path / "flat_src" / "train").rglob("*.png"):  # images with no train/<class>/ layout
        png.rename(tmp_path / "flat" / f"{png.parent.name}_{png.name}")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    subs = {"{empty}": str(tmp_path / "empty"), "{flat}": str(tmp_path / "flat"), "{file}": str(blocker),
            "{missing}": str(tmp_path / "no-such-results"), "{folder}": str(tmp_path / "empty")}
    if any("{tiny}" in a for a in argv):
        subs["{tiny}"] = str(write_tiny_folder(tmp_path / "tiny"))
    out = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        if a.startswith("{parent:"):
            _, model, classes = a.strip("{}").split(":")
            sets = [x for x, prev in zip(out, ["", *out]) if prev == "--set"]
            vaft = next(c for c in apply_sets(get_grid("demo"), sets) if c.method == "vaft")
            path = results / "models" / f"{run_id(vaft.parent)}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model, "num_classes": int(classes), "in_channels": 3, "run_id": run_id(vaft.parent),
                        "state_dict": {}}, path)
            continue
        out.append(a)
    return out


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[2:]) for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, argv, message):
    """Each bad input: one stderr line naming the problem, exit code 2, no traceback, and a results folder that
    already holds a finished run is left exactly as it was (no file created, changed or deleted)."""
    from bench.core.store import Store

    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    results = tmp_path / "results"
    Store(results).write("0123456789ab", {"run_id": "0123456789ab", "status": "done", "metrics": {"clean": 0.5}})
    argv = _bad_setup(tmp_path, argv, results)
    before = _snapshot(results)
    blocker = (tmp_path / "file").read_text()
    takes_results = "--results" not in argv and argv[0] not in ("speed", "speed-eval")  # these write no results
    code = main([*argv, *(["--results", str(results)] if takes_results else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert "Traceback" not in err
    assert _snapshot(results) == before
    assert (tmp_path / "file").read_text() == blocker


def test_speed_eval_checkpoint_without_cifar_is_refused(tmp_path, monkeypatch, capsys):
    """A CIFAR-10 checkpoint is never timed on the synthetic stand-in images (it would score near chance, and
    AutoAttack would look faster): one line naming BENCH_DATA_ROOT, exit 2."""
    from bench.data import DataError
    from bench.perf import speed_eval

    def no_data(*args, **kwargs):
        raise DataError("CIFAR-10 (JPEG) not found")

    monkeypatch.setattr(speed_eval, "load_dataset", no_data)  # whatever this machine holds
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    (tmp_path / "m.pt").write_bytes(b"")
    code = main(["speed-eval", "--checkpoint", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"not found under {tmp_path / 'data'}: set BENCH_DATA_ROOT" in err, err


def test_existing_empty_results_folder_is_read_and_plan_needs_none(tmp_path, capsys):
    """Only a MISSING results folder is refused where results are read: an existing empty one is a grid that has
    not run (an empty table), and `bench plan` predicts a grid without any folder."""
    (tmp_path / "empty").mkdir()
    assert main(["report", "--grid", "demo", "--results", str(tmp_path / "empty")]) == 0
    assert main(["status", "--grid", "demo", "--results", str(tmp_path / "empty")]) == 0
    assert main(["plan", "--grid", "demo", "--results", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().err == ""


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    code = main(["run", "--grid", "demo", "--set", f"dataset=folder:{tmp_path / 'empty'}",
                 "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "empty" in err
    assert not (tmp_path / "r").exists()


def test_results_folder_not_writable(tmp_path, tiny_folder, capsys):
    # (root ignores permission bits, so the unwritable place is a path below a regular file)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["run", "--grid", "demo", "--set", f"dataset=folder:{tiny_folder}", "--results", str(blocker / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not writable" in err
    assert blocker.read_text() == "not a folder"


def test_list_shows_methods_with_parents(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "afd" in out and "parent=natural" in out and "standard" in out and "parent=scratch" in out
    assert "demo" in out and "small_cnn" in out and "digits" in out


@pytest.mark.parametrize("argv,option", [(["speed", "--n-images", "5"], "--n-images"),
                                         (["speed-eval", "--methods", "vaft"], "--methods"),
                                         (["speed-eval", "--precision", "bf16"], "--precision")])
def test_speed_and_speed_eval_take_only_their_own_options(capsys, argv, option):
    """The training step's options are not the evaluation's, and the other way round: refused, never ignored."""
    assert main(argv) == 2
    assert f"unrecognized arguments: {option}" in capsys.readouterr().err


def test_console_script_and_module_agree():
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "nope"], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 2 and out.stderr.strip().startswith("bench: error: unknown grid")
