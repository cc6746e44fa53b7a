"""The user's own pre-trained model as the parent (--set parent_file=..., or [parent] file in a grid file), and the
TensorBoard view of each run's per-epoch log."""
from __future__ import annotations

import pytest
import torch

from bench.cli import apply_sets, main
from bench.core.config import run_id
from bench.models.architectures import build_model
from bench.core.runtime import Runtime
from bench.grid.runner import run_local
from bench.core.store import Store
from conftest import tiny_run


def _save(path, classes=3, seed=0, model="small_cnn", wrap=True):
    torch.manual_seed(seed)
    state = build_model(model, classes, 3).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}} if wrap else state, path)
    return path


def test_parent_file_is_fine_tuned_its_digest_names_the_run_and_its_accuracy_is_recorded(tmp_path, tiny_folder):
    natural = _save(tmp_path / "natural.pt")  # a DataParallel-style wrapped checkpoint
    run = tiny_run("vaft", f"folder:{tiny_folder}", epochs=1)
    (mine,) = apply_sets([run], [f"parent_file={natural}"])
    assert mine.parent is None and mine.parent_digest and mine.parent_file == str(natural)
    rt = Runtime(results=tmp_path / "results", data_root=tiny_folder.parent, device="cpu", progress=False)
    res = run_local([mine], rt, log=lambda s: None)
    assert list(res) == [run_id(mine)]  # no parent run was trained
    out = res[run_id(mine)]
    assert out["status"] == "done"
    assert out["extra"]["parent_file"]["digest"] == mine.parent_digest
    assert 0 <= out["extra"]["parent_file"]["clean"] <= 1
    # the path is not part of the run's identity, the content is
    moved = tmp_path / "moved.pt"
    moved.write_bytes(natural.read_bytes())
    (same,) = apply_sets([run], [f"parent_file={moved}"])
    assert run_id(same) == run_id(mine)
    _save(natural, seed=1)
    (changed,) = apply_sets([run], [f"parent_file={natural}"])
    assert run_id(changed) != run_id(mine)
    # TensorBoard: one folder per run, named by method and run id, one scalar per logged field and epoch
    tb = Store(rt.results).root / "tensorboard" / f"vaft-{run_id(mine)}"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert {"loss", "lr", "adv_acc"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [1]
    assert acc.Scalars("loss")[0].value == pytest.approx(out["epochs"][0]["loss"], rel=1e-6)


@pytest.mark.parametrize("model,classes,message", [("resnet18", 3, "does not fit"), ("small_cnn", 10, "(10,")])
def test_parent_file_of_another_architecture_is_refused_before_training(tmp_path, tiny_folder, capsys, model, classes,
                                                                         message):
    bad = _save(tmp_path / "bad.pt", classes=classes, model=model, wrap=False)
    results = tmp_path / "results"
    code = main(["run", "--grid", "demo", "--set", f"dataset=folder:{tiny_folder}", "--set", f"parent_file={bad}",
                 "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert not (results / "runs").exists() or not any((results / "runs").iterdir())


def test_missing_parent_file_is_one_line(tmp_path, capsys):
    assert main(["run", "--grid", "demo", "--set", f"parent_file={tmp_path / 'nope.pt'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
