"""A researcher's four jobs, end to end on the CPU with the project's own small data (an image folder the tests
write), each through the commands the docs show:

(a) a three-seed grid through run, status, report, claims, plot and compare with the same options, every count right;
(b) her method (a plugin) beside vAFT and AFD in Table 1's rows, with the paper's numbers and the method-against-AFD
    verdict; then an edit to her method shows as stale and `--rerun stale` re-runs it;
(c) checkpoints as the field saves them: the AFD code's ResNet18 (unpadded first convolution, ``linear``
    classifier, DataParallel's ``module.``) evaluated on its own network, and one with an ``fc`` classifier;
(d) the LaTeX tables with their captions compile (pdflatex, which CI installs).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.models.architectures import build_model
from conftest import REPO

EVAL = "[eval]\nn_clean = 12\nn_pgd = 12\nn_aa = 0\npgd_steps = 3\nbatch_size = 12\nn_gap = 12\n"


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def _latex_compiles(tex: str, folder: Path) -> None:
    doc = folder / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
                   "\\usepackage[margin=1cm,landscape]{geometry}\n\\begin{document}\n" + tex + "\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (folder / "doc.pdf").stat().st_size > 0


@pytest.mark.slow
def test_a_three_seed_grid_through_every_command_with_the_same_options(tmp_path, tiny_folder, capsys):
    grid = tmp_path / "three.toml"
    grid.write_text(f'methods = ["vaft", "afd"]\nmodels = ["small_cnn"]\ndatasets = ["folder:{tiny_folder}"]\n'
                    "epochs = 1\n[parent]\nepochs = 1\n[train]\nbatch_size = 8\n"
                    + EVAL + "feature_gap_every_epoch = true\n")
    where = ["--grid", str(grid), "--seeds", "3", "--results", str(tmp_path / "r")]
    assert main(["run", *where, "--device", "cpu", "--threads", "1"]) == 0
    capsys.readouterr()

    assert main(["status", *where]) == 0
    # 2 methods x 3 seeds and their one natural parent (PGD-3 is a weak evaluation: the indicators may say so)
    assert re.fullmatch(r"7 done(; \d runs? with an evaluation potentially unreliable)?", _lines(capsys)[-1])
    assert main(["status", *where[:2], *where[4:]]) == 0
    # without --seeds: seed 0 only, and says so by its count
    assert re.fullmatch(r"3 done(; \d runs? with an evaluation potentially unreliable)?", _lines(capsys)[-1])

    assert main(["report", *where]) == 0
    md = "\n".join(_lines(capsys))
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert " ± " in rows["vAFT"] and " ± " in rows["AFD"]  # means over the seeds, with their spread
    assert "over 3 seeds" in md

    assert main(["report", *where, "--claims"]) == 0
    claims = "\n".join(_lines(capsys))
    assert "Runs: 7 of 7 finished" in claims

    assert main(["plot", "--figure", "fig1", *where, "--out", str(tmp_path / "fig")]) == 0
    assert [p.suffix for p in sorted((tmp_path / "fig").iterdir())] == [".pdf", ".png"]
    capsys.readouterr()

    assert main(["compare", *where, "--a", "afd", "--b", "vaft"]) == 0
    out = "\n".join(_lines(capsys))
    assert re.search(r"AFD ahead|vAFT ahead|not distinguishable", out)
    assert "3" in out  # the seeds each mean is over

    assert main(["report", *where, "--format", "latex", "--out", str(tmp_path / "t.tex")]) == 0
    tex = (tmp_path / "t.tex").read_text()
    assert "\\caption{" in tex and "3 seeds" in tex
    if shutil.which("pdflatex"):  # (d): CI installs it (.ci/run); elsewhere the structure is checked above
        _latex_compiles(tex, tmp_path)


PLUGIN = '''from methods import get_method, register

VAFT = get_method("vaft")


@register
class Mine(VAFT):
    """vAFT under another name: the researcher's method."""
    name = "mine_job"
    label = "Mine"
    SCALE = 1.0
'''


def _bench(tmp_path: Path, *argv: str) -> str:
    """A fresh process, as a researcher runs it (the code's fingerprint is read once per process)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "plug"), str(REPO)]), BENCH_PLUGINS="",
               BENCH_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_her_method_in_table1_beside_afd_with_a_verdict_then_stale_and_rerun(tmp_path, tiny_folder):
    (tmp_path / "plug").mkdir()
    plugin = tmp_path / "plug" / "mine_job.py"
    plugin.write_text(PLUGIN)
    grid = tmp_path / "mine.toml"
    # Table 1's network for vAFT and AFD (the AFD code's ResNet18), at a size a CPU test affords
    grid.write_text(f'plugins = ["mine_job"]\nmethods = ["vaft", "afd", "mine_job"]\nmodels = ["resnet18_afd"]\n'
                    f'datasets = ["folder:{tiny_folder}"]\nepochs = 1\n[parent]\nepochs = 1\n[train]\nbatch_size = 12\n'
                    + EVAL)
    where = ["--grid", str(grid), "--seeds", "2", "--results", str(tmp_path / "r")]
    _bench(tmp_path, "run", *where, "--device", "cpu", "--threads", "2")

    table = _bench(tmp_path, "report", *where, "--table", "table1", "--compare", "paper")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows if r.split("|")[2].strip() == "ours"][-1] == "Mine"
    assert "no paper number: not in the paper: Mine." in table
    assert any(r.split("|")[1].strip() == "" and r.split("|")[2].strip() == "paper" for r in rows)

    verdict = _bench(tmp_path, "compare", *where, "--a", "mine_job", "--b", "afd")
    assert "Mine" in verdict and "AFD" in verdict
    assert re.search(r"Mine ahead|AFD ahead|not distinguishable", verdict)

    plugin.write_text(PLUGIN.replace("SCALE = 1.0", "SCALE = 2.0"))
    status = _bench(tmp_path, "status", *where)
    assert sum("(stale: mine_job changed" in line for line in status.splitlines()) == 2  # both seeds
    # parent, vAFT and AFD x 2 seeds stand (PGD-3 is a weak evaluation: the indicators may say so)
    assert re.fullmatch(r"5 done, 2 stale(; \d runs? with an evaluation potentially unreliable)?",
                        status.strip().splitlines()[-1])
    rerun = _bench(tmp_path, "run", *where, "--device", "cpu", "--threads", "2", "--rerun", "stale")
    assert rerun.count("archived and trained again from scratch") == 2
    assert "(stale" not in _bench(tmp_path, "status", *where)
    assert len(list((tmp_path / "r" / "runs" / "archive").glob("*.json"))) == 2


def test_the_fields_checkpoints_are_evaluated_on_their_own_network(tmp_path, tiny_folder, capsys):
    torch.manual_seed(0)
    afd_code = build_model("resnet18_afd", 3, 3)  # as the AFD code saves it: linear, module.
    torch.save({"state_dict": {f"module.{k.replace('classifier.', 'linear.')}": v
                               for k, v in afd_code.state_dict().items()}}, tmp_path / "afd.pt")
    torch.manual_seed(1)
    tv = build_model("resnet18", 3, 3)  # as torchvision-style codes name the classifier: fc
    torch.save({k.replace("classifier.", "fc."): v for k, v in tv.state_dict().items()}, tmp_path / "fc.pt")
    for model, ckpt, mapping in (("resnet18_afd", "afd.pt", "linear.* -> classifier.*"),
                                 ("resnet18", "fc.pt", "fc.* -> classifier.*")):
        argv = ["eval", "--model", model, "--checkpoint", str(tmp_path / ckpt), "--dataset", f"folder:{tiny_folder}",
                "--n", "12", "--n-pgd", "0", "--n-aa", "0", "--results", str(tmp_path / "r"), "--device", "cpu"]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"checkpoint keys mapped: {mapping}" in out
    results = [json.loads(p.read_text()) for p in (tmp_path / "r" / "evals").glob("*.json")]
    assert sorted(r["spec"]["model"] for r in results) == ["resnet18", "resnet18_afd"]
    assert main(["report", "--evals", "--results", str(tmp_path / "r")]) == 0
    listing = capsys.readouterr().out
    assert "afd.pt" in listing and "fc.pt" in listing
