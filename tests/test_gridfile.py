"""Grid files (bench/grid/gridfile.py): validated before anything runs (one line, exit 2, nothing written), and a paper
grid written as a file expands to the same run ids."""
from __future__ import annotations

import pytest

from bench.cli import main
from bench.core.config import run_id
from bench.grid.gridfile import load, to_toml
from bench.grid.grids import get_grid

from bench.grid.runs import expand
GOOD = """
methods = ["vaft", "afd"]
models = ["small_cnn"]
datasets = ["digits"]
epochs = 1
[eval]
n_aa = 0
"""

BAD = [
    ("methods = [\"vaft\"\n", "not valid TOML"),
    ("methods = [\"vaft\"]\nmodels = [\"small_cnn\"]\ndatasets = [\"digits\"]\ncolour = 3\n", "colour: unknown key"),
    ("models = [\"small_cnn\"]\ndatasets = [\"digits\"]\n", "methods: missing"),
    ("methods = [\"vaftt\"]\nmodels = [\"small_cnn\"]\ndatasets = [\"digits\"]\n", "unknown name 'vaftt'"),
    ("methods = [\"vaft\"]\nmodels = [\"resnet19\"]\ndatasets = [\"digits\"]\n", "unknown name 'resnet19'"),
    ("methods = [\"vaft\"]\nmodels = [\"small_cnn\"]\ndatasets = [\"cifar11\"]\n", "unknown name 'cifar11'"),
    ("methods = \"\"\nmodels = [\"small_cnn\"]\ndatasets = [\"digits\"]\n", "non-empty list"),
    ("seeds = 0\n" + GOOD, "seeds: must be >= 1"),
    ("seeds = 100000000\n" + GOOD, "seeds: at most 10000 seeds"),
    ("seeds = \"two\"\n" + GOOD, "seeds: expected"),
    (GOOD.replace("epochs = 1", "epochs = 0"), "epochs: expected a whole number >= 1"),
    ("eps = 8\n" + GOOD, "write \"8/255\""),
    (GOOD + "[train]\nepoch = 2\n", "train.epoch: unknown key"),
    (GOOD + "[train]\nlr = \"fast\"\n", "train.lr: expected a float"),
    (GOOD.replace("n_aa = 0", "n_aa = 0\nn_pgd = -5"), "n_pgd must be >= 0"),
    (GOOD + "[hparams.afd]\ngama = 3.0\n", "hparams.afd.gama: unknown key"),
    (GOOD + "[hparams.afd]\ngamma = \"big\"\n", "expects float"),
    (GOOD + "[hparams.afd]\ngamma = []\n", "an empty list sweeps nothing"),
    (GOOD + "[hparams.trades]\nbeta = 3.0\n", "hparams.trades: unknown key"),
    (GOOD + "[parent]\nmethod = \"standard\"\nzoo = \"X\"\n", "give one of method, zoo, file"),
    (GOOD + "[parent]\nfile = \"nope.pt\"\n", "parent.file"),
    (GOOD + "[parent]\nepochs = -1\n", "parent.epochs"),
    (GOOD + "[table]\nmetrics = [\"speed\"]\n", "unknown name 'speed'"),
    ("plugins = [\"no_such_plugin_mod\"]\n" + GOOD, "cannot be imported"),
]


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_malformed_grid_file_is_one_line_exit_2_nothing_written(tmp_path, capsys, text, message):
    from bench.core.store import Store

    results = tmp_path / "results"
    Store(results).write("0123456789ab", {"run_id": "0123456789ab", "status": "done", "metrics": {"clean": 0.5}})
    before = _snapshot(results)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for command in (["run"], ["plan"], ["status"], ["report"]):
        code = main([*command, "--grid", str(path), "--results", str(results)])
        err = capsys.readouterr().err.strip()
        assert code == 2, (command, err)
        assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
        assert str(path) in err or "plugin" in err
    assert _snapshot(results) == before


def test_missing_grid_file_is_one_line(tmp_path, capsys):
    assert main(["run", "--grid", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("grid", ["table1", "table3", "table4"])
def test_a_paper_grid_as_files_expands_to_the_same_run_ids(tmp_path, grid):
    """A paper grid's rows differ in network (each row on its code's) and in evaluation (Figure 1a's rows measure
    the gap every epoch): one file per (network, evaluation) block, and together they are the grid."""
    runs = get_grid(grid)
    blocks: dict = {}
    for r in runs:
        blocks.setdefault((r.model, r.eval), []).append(r)
    from_files = []
    for i, block in enumerate(blocks.values()):
        path = tmp_path / f"{grid}_{i}.toml"
        path.write_text(to_toml(block))
        from_files += load(path).runs
    assert {run_id(r) for r in expand(from_files)} >= {run_id(r) for r in expand(runs)}
    if grid == "table3":  # table1's and table4's blocks are not full products: the files ask for more
        assert {run_id(r) for r in expand(from_files)} == {run_id(r) for r in expand(runs)}


def test_sweeps_seeds_and_parent_epochs(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text("seeds = [0, 3]\n" + GOOD + "[hparams.afd]\ngamma = [2.0, 10.0]\nalpha = 0.1\n[parent]\nepochs = 2\n")
    runs = load(path).runs
    afd = [r for r in runs if r.method == "afd"]
    assert sorted((r.seed, r.hp["gamma"], r.hp["alpha"]) for r in afd) == [
        (0, 2.0, 0.1), (0, 10.0, 0.1), (3, 2.0, 0.1), (3, 10.0, 0.1)]
    assert all(r.train.epochs == 1 and r.parent.train.epochs == 2 and r.parent.method == "standard" for r in runs)
    assert len({run_id(r.parent) for r in runs}) == 1  # one shared parent
