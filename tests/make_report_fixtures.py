"""Writes the result files behind tests/test_report.py (deterministic; no training).

    python tests/make_report_fixtures.py            # rewrite the result files
    python tests/make_report_fixtures.py --expected  # also rewrite the expected renderings (review the diff!)

Configs are built with RunConfig directly (explicit hparams, no method recipes), so the fixtures do not move when a
method's defaults change. Metrics come from a fixed formula of (method, data set, seed). Scenario: ResNet18 on
CIFAR-10 with every Table 1 method (vAFT and AFD with two seeds; Free-AT failed, ATAS missing, FGSM-GA corrupt),
three methods on CIFAR-100, Table 3's ablations, AFD on WRN-34-10 and ResNet50 (Table 4), per-epoch feature gaps
for vAFT and AFD but not ARREST (Figure 1a), an AFD hyperparameter sweep (Figure 4), and two results of `bench eval`
(evals/, for `bench report --evals`).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.core.config import EvalConfig, RunConfig, TrainConfig, run_id, to_dict  # noqa: E402

HERE = Path(__file__).resolve().parent / "fixtures" / "report"
RESULTS = HERE / "results"
EV = EvalConfig(n_clean=100, n_pgd=100, n_aa=50)
PARENT = {"vaft": "standard", "afkd": "standard", "arrest": "standard", "afd": "standard", "vaft_d": "standard",
          "vaft_a": "standard", "rift": "pgd_at"}
EPOCHS = {"standard": 100, "pgd_at": 120, "trades": 120, "free_at": 10, "fgsm_ga": 30, "atas": 30, "rift": 10}
BASE = {"standard": (94.0, 0.0, 0.0), "pgd_at": (84.0, 48.0, 44.0), "trades": (82.0, 53.0, 48.5),
        "free_at": (78.0, 41.0, 36.0), "fgsm_ga": (80.0, 49.0, 43.0), "atas": (81.0, 50.0, 45.0),
        "vaft": (84.0, 51.4, 45.5), "rift": (84.5, 49.2, 43.7), "afkd": (84.7, 51.3, 46.1),
        "arrest": (85.7, 51.2, 46.2), "afd": (84.9, 52.7, 47.4), "vaft_d": (84.6, 52.7, 46.9),
        "vaft_a": (84.6, 51.7, 46.8)}
AFD_HP = {"alpha": 0.05, "beta": 0.25, "gamma": 25.0}


def cfg(method: str, model: str = "resnet18", dataset: str = "cifar10", seed: int = 0, **hp) -> RunConfig:
    parent = cfg(PARENT[method], model, dataset) if method in PARENT else None
    hparams = {**AFD_HP, **hp} if method in ("afd", "vaft_d") else hp
    return RunConfig(method=method, hparams=tuple(sorted(hparams.items())), model=model, dataset=dataset,
                     train=TrainConfig(epochs=EPOCHS.get(method, 20)), eval=EV, seed=seed, parent=parent)


def table_runs() -> list[RunConfig]:
    runs = [cfg(m) for m in ("pgd_at", "trades", "free_at", "fgsm_ga", "atas", "vaft", "rift", "afkd", "arrest",
                             "afd", "vaft_d", "vaft_a")]
    runs += [cfg("vaft", seed=1), cfg("afd", seed=1)]
    runs += [cfg(m, dataset="cifar100") for m in ("pgd_at", "vaft", "afd")]
    runs += [cfg(m, model="wrn34_10") for m in ("pgd_at", "afd")]
    runs += [cfg("afd", model="resnet50")]
    return runs


def fig4_runs() -> list[RunConfig]:
    sweep = [("alpha", 0.01), ("alpha", 0.05), ("alpha", 0.2), ("beta", 0.1), ("beta", 1.0),
             ("gamma", 4.0), ("gamma", 30.0)]
    return [cfg("afd", dataset="cifar10", **{k: v}) for k, v in sweep]


FAILED = {("free_at", "resnet18", "cifar10", 0): "non-finite loss in epoch 3"}
MISSING = {("atas", "resnet18", "cifar10", 0)}
CORRUPT = {("fgsm_ga", "resnet18", "cifar10", 0)}


def metrics(c: RunConfig) -> dict:
    clean, pgd, aa = BASE[c.method]
    shift = {"cifar10": 0.0, "cifar100": -20.0, "tiny-imagenet": -28.0}[c.dataset]
    shift += {"resnet18": 0.0, "wrn34_10": 3.0, "resnet50": 2.0}[c.model]
    hp = dict(c.hparams)
    shift += 0.25 * c.seed + 4 * (hp.get("alpha", 0.05) - 0.05) - 0.5 * (hp.get("beta", 0.25) - 0.25) \
        + 0.01 * (hp.get("gamma", 25.0) - 25.0)
    m = {"clean": round((clean + shift) / 100, 4), "pgd20": round((pgd + shift / 2) / 100, 4) if pgd else 0.0,
         "aa": round((aa + shift / 2) / 100, 4) if aa else 0.0, "n_clean": 100, "n_pgd": 100, "n_aa": 50,
         "feature_gap": round(0.2 + 0.01 * len(c.method), 4), "violations": []}
    if c.method in ("afd", "vaft_d"):
        m["f1_clean"] = m["clean"]
        m["f2_clean"] = round(m["clean"] - (0.40 if c.dataset == "cifar10" else 0.08) - 0.01 * c.seed, 4)
    return m


def epoch_log(c: RunConfig, spe: float) -> list[dict]:
    log = []
    for e in range(1, c.train.epochs + 1):
        entry = {"epoch": e, "lr": 0.01, "seconds": spe, "loss": round(2.0 / e, 4)}
        if c.method in ("vaft", "afd") and c.model == "resnet18" and c.dataset == "cifar10" \
                and dict(c.hparams).get("alpha", 0.05) == 0.05:
            rise = 0.004 if c.method == "vaft" else 0.001
            entry["feature_gap"] = round(0.15 + rise * e + 0.002 * c.seed + (0.03 if c.method == "afd" and e > 2
                                                                              else 0.0), 4)
        log.append(entry)
    return log


SECONDS = {"standard": 6.0, "pgd_at": 37.0, "trades": 53.0, "free_at": 119.0, "fgsm_ga": 68.0, "atas": 36.0,
           "vaft": 37.0, "rift": 25.0, "afkd": 40.0, "arrest": 36.0, "afd": 46.0, "vaft_d": 44.0, "vaft_a": 39.0}


def write(runs: list[RunConfig]) -> None:
    from bench.grid.runs import expand

    for c in expand(runs):
        rid = run_id(c)
        key = (c.method, c.model, c.dataset, c.seed)
        path = RESULTS / "runs" / f"{rid}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if key in MISSING:
            path.unlink(missing_ok=True)
            continue
        if key in CORRUPT:
            path.write_text('{"run_id": "' + rid + '", "status": "do')  # truncated mid-write
            continue
        spe = SECONDS[c.method] * (1 + 0.1 * c.seed) * {"resnet18": 1, "wrn34_10": 4, "resnet50": 2}[c.model]
        log = epoch_log(c, spe)
        failed = key in FAILED
        if failed:
            log = log[:2]
        res = {"run_id": rid, "status": "failed" if failed else "done", "reason": FAILED.get(key),
               "config": to_dict(c), "metrics": {} if failed else metrics(c), "extra": {}, "epochs": log,
               "train_seconds": spe * len(log), "seconds_per_epoch": spe, "device_name": "Fixture GPU X1"}
        path.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")


def eval_result(eid: str, *, aa: float | None = 0.31, mapping=(), sanity="ok", finished="2026-12-02T04:09:28+00:00",
                model="small_cnn", checkpoint="/home/someone/runs/model_final.pt") -> dict:
    """A result of `bench eval` as bench/eval/standalone.py writes it (the fields `bench report --evals` reads)."""
    metrics = {"clean": 0.8125, "pgd20": 0.4375, "n_clean": 1000, "n_pgd": 1000, "n_aa": 200 if aa is not None else 0,
               "violations": [] if sanity == "ok" else ["AA above PGD-20 on 3 images"]}
    if aa is not None:
        metrics["aa"] = aa
    return {"eval_id": eid, "status": "done", "metrics": metrics, "key_mapping": list(mapping), "sanity": sanity,
            "spec": {"model": model, "checkpoint": checkpoint, "dataset": "cifar10", "seed": 0},
            "started": finished, "finished": finished, "device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3"}


def write_evals() -> None:
    """Two results of `bench eval`: a checkpoint loaded with a key mapping, and a RobustBench model evaluated
    without AutoAttack whose order check failed."""
    ev = RESULTS / "evals"
    shutil.rmtree(ev, ignore_errors=True)
    ev.mkdir(parents=True)
    for res in (eval_result("aaaaaaaaaaaa", mapping=["stripped the prefix 'module.'"],
                            finished="2026-12-03T10:00:00+00:00"),
                eval_result("bbbbbbbbbbbb", aa=None, model="zoo:Carmon2019Unlabeled", checkpoint=None,
                            sanity="violated")):
        (ev / f"{res['eval_id']}.json").write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    shutil.rmtree(RESULTS / "runs", ignore_errors=True)
    write(table_runs() + fig4_runs())
    write_evals()
    print(f"wrote {len(list((RESULTS / 'runs').glob('*.json')))} result files under {RESULTS}")
    if "--expected" in sys.argv:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from test_report import CASES, render_case

        for name, fmt, compare, _ in CASES:
            path = HERE / "expected" / f"{name}{'_paper' if compare else ''}.{ {'markdown': 'md', 'latex': 'tex', 'csv': 'csv'}[fmt]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render_case(name, fmt, compare), encoding="utf-8")
            print(f"wrote {path}")
