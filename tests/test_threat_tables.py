"""The tables' threat-model columns (L2 AA, corruption mean) and the breakdown per corruption and severity, from
results that hold them; results without them leave every table as it was (tests/test_cpu_results.py: the committed
tables regenerate byte for byte)."""
import json

import pytest

from bench.core.config import EvalConfig, run_id, to_dict
from bench.core.store import Store
from bench.grid.runs import expand, make_run
from bench.report.tables import report

EV = EvalConfig(n_clean=100, n_pgd=100, n_aa=50, batch_size=50)
GENERATED = ("gaussian_noise", "fog", "brightness")


def _runs():
    return [make_run(m, model="small_cnn", dataset="cifar10", epochs=1, eval=EV) for m in ("pgd_at", "vaft", "afd")]


def _write(results, runs, *, threats: bool):
    for i, c in enumerate(expand(runs)):
        m = {"clean": 0.6 - i / 20, "pgd20": 0.3, "aa": 0.25, "n_clean": 100, "n_pgd": 100, "n_aa": 50,
             "violations": [], "unreliable": []}
        if threats and c.method != "pgd_at":  # one run without them: its cells say "—"
            m["l2"] = {"eps": 0.5, "pgd20": 0.4 - i / 50, "aa": 0.35 - i / 50, "n_pgd": 100, "n_aa": 50}
            m["corruptions"] = {"dataset": "cifar10-c-generated", "label": "CIFAR-10-C-generated", "n": 100,
                                "mean": 0.5, "accuracy": {c_: [0.6, 0.55, 0.5, 0.45, 0.4] for c_ in GENERATED}}
        res = {"run_id": run_id(c), "status": "done", "config": to_dict(c), "metrics": m, "extra": {},
               "epochs": [], "train_seconds": 1.0, "seconds_per_epoch": 1.0}
        Store(results).write(run_id(c), res)


@pytest.mark.parametrize("fmt", ["markdown", "latex", "csv"])
def test_threat_columns_and_breakdown_where_results_have_them(tmp_path, fmt):
    runs = _runs()
    _write(tmp_path / "without", runs, threats=False)
    plain = report(runs, tmp_path / "without", fmt)
    assert "L2 AA" not in plain and "Corr." not in plain and "Gauss." not in plain
    _write(tmp_path / "with", runs, threats=True)
    out = report(runs, tmp_path / "with", fmt)
    for label in ("L2 PGD-20", "L2 AA", "Corr.", "Gauss.", "Fog", "Bright.", "s5"):
        assert label in out, label
    assert "Shot" not in out  # only the corruptions the results hold
    assert "CIFAR-10-C-generated" in out
    if fmt == "markdown":
        table = out.split("\n\n")[0]
        vaft = next(line for line in table.splitlines() if line.startswith("| vAFT"))
        assert "35.00" in vaft or "34.98" in vaft or any(f"{35 - 2 * i:.2f}" in vaft for i in range(4))
        assert "radius 0.5" in out and "not comparable with published CIFAR-10-C numbers" in out
        assert "| vAFT | 60.00 | 55.00 | 50.00 | 45.00 | 40.00 | 50.00 |" in out  # per severity
        assert "| vAFT | 50.0 | 50.0 | 50.0 |" in out  # per corruption
        assert "| PGD-AT | — | — | — |" in out


def test_misshapen_threat_entries_are_refused_by_the_store(tmp_path):
    runs = _runs()
    _write(tmp_path, runs, threats=True)
    rid = run_id(runs[1])
    path = tmp_path / "runs" / f"{rid}.json"
    res = json.loads(path.read_text())
    res["metrics"]["corruptions"]["mean"] = 7
    path.write_text(json.dumps(res))
    from bench.core.store import CorruptFile

    with pytest.raises(CorruptFile, match="corruptions"):
        Store(tmp_path).read(rid)


def test_evals_table_gets_the_threat_columns_only_where_an_evaluation_has_them(tmp_path):
    from bench.report.evals import evals_report

    (tmp_path / "evals").mkdir()

    def write(eid, metrics):
        res = {"eval_id": eid, "status": "done", "spec": {"model": "small_cnn", "dataset": "cifar10"},
               "metrics": {"clean": 0.5, "n_clean": 10, **metrics}, "sanity": "ok", "finished": f"2026-12-0{eid[-1]}"}
        (tmp_path / "evals" / f"{eid}.json").write_text(json.dumps(res))

    write("e1", {})
    assert "L2 AA" not in evals_report(tmp_path)
    write("e2", {"l2": {"eps": 0.5, "pgd20": 0.3, "n_pgd": 10, "aa": 0.25, "n_aa": 4},
                 "corruptions": {"label": "CIFAR-10-C", "mean": 0.42, "n": 10, "accuracy": {}}})
    out = evals_report(tmp_path)
    line = next(s for s in out.splitlines() if s.startswith("| e2"))
    assert "| 30.00 (10) | 25.00 (4) | 42.00 (10) |" in line and "L2 AA" in out and "of CIFAR-10-C" in out
    assert "| — | — | — |" in next(s for s in out.splitlines() if s.startswith("| e1"))
    csv = evals_report(tmp_path, "csv")
    assert "l2_aa" in csv.splitlines()[0] and "corruptions_mean" in csv.splitlines()[0]


def test_compare_reads_the_threat_models_with_the_noise_rule(tmp_path):
    from bench.report.compare import compare

    runs = _runs()
    _write(tmp_path, runs, threats=True)
    out = compare(runs, tmp_path, "vaft", "afd")
    l2 = next(line for line in out.splitlines() if "| L2 AA |" in line)
    assert "| 31.00 (1) | 29.00 (1) | +2.00 |" in l2 and "not distinguishable" in l2  # 2 points on 50 images
    assert "| Corr. mean |" in out
