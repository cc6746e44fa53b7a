"""Row-by-row comparison of two result folders of the same grid, e.g. a grid before and after a change of code.

    python scripts/compare_results.py results/cpu-before-as-run results/cpu [--markdown]

Runs are matched by (method, model, data set, seed) and the values of the hyperparameters that vary between
that method's runs within either folder (AFD's alpha/beta/gamma sweep, AFA's TRADES variant, ...): run ids cannot
be matched, since any new config field changes them. Prints clean / PGD-20 / AA (percent) old -> new with the
difference, and the wall seconds of each run. Unmatched runs are listed, never dropped silently.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load(folder: Path) -> list[dict]:
    out = []
    for p in sorted((folder / "runs").glob("*.json")):
        r = json.loads(p.read_text())
        if r.get("status") == "done":
            out.append(r)
    return out


def _varying(runs: list[dict]) -> dict[str, set[str]]:
    """method -> hyperparameter names whose value differs between that method's runs."""
    seen: dict[str, dict[str, set]] = {}
    for r in runs:
        c = r["config"]
        for k, v in dict(map(tuple, c.get("hparams") or [])).items():
            seen.setdefault(c["method"], {}).setdefault(k, set()).add(json.dumps(v))
    return {m: {k for k, vs in hp.items() if len(vs) > 1} for m, hp in seen.items()}


def _key(r: dict, varying: dict[str, set[str]]) -> tuple:
    c = r["config"]
    hp = dict(map(tuple, c.get("hparams") or []))
    return (c["method"], c["model"], c["dataset"], c["seed"],
            tuple(sorted((k, json.dumps(hp.get(k))) for k in varying.get(c["method"], ()))))


def _label(key: tuple) -> str:
    method, _, _, seed, hp = key
    extra = ", ".join(f"{k}={json.loads(v)}" for k, v in hp)
    return f"{method}{f' ({extra})' if extra else ''} s{seed}"


def compare(old_dir: Path, new_dir: Path) -> tuple[list[dict], list[str]]:
    old, new = _load(old_dir), _load(new_dir)
    # names that vary within either folder (AFD's sweep), not values that changed between them (its update order)
    varying = {m: _varying(old).get(m, set()) | _varying(new).get(m, set())
               for m in set(_varying(old)) | set(_varying(new))}
    old_by = {_key(r, varying): r for r in old}
    rows, unmatched = [], []
    for r in new:
        k = _key(r, varying)
        o = old_by.pop(k, None)
        if o is None:
            unmatched.append(f"new only: {_label(k)} ({r['run_id']})")
            continue
        row = {"run": _label(k), "old_id": o["run_id"], "new_id": r["run_id"],
               "old_wall": o.get("wall_seconds"), "new_wall": r.get("wall_seconds")}
        for m in ("clean", "pgd20", "aa"):
            a, b = o["metrics"].get(m), r["metrics"].get(m)
            row[m] = (None if a is None else 100 * a, None if b is None else 100 * b)
        rows.append(row)
    rows.sort(key=lambda r: r["run"])
    unmatched += [f"old only: {_label(k)} ({o['run_id']})" for k, o in old_by.items()]
    return rows, unmatched


def render(rows: list[dict], unmatched: list[str]) -> str:
    def cell(pair):
        a, b = pair
        if a is None or b is None:
            return "—"
        return f"{a:.1f} → {b:.1f} ({b - a:+.1f})"

    lines = ["| run | clean | PGD-20 | AA | wall s |", "|:---|---:|---:|---:|---:|"]
    for r in rows:
        wall = f"{r['old_wall']:.0f} → {r['new_wall']:.0f}" if r["old_wall"] and r["new_wall"] else "—"
        lines.append(f"| {r['run']} | {cell(r['clean'])} | {cell(r['pgd20'])} | {cell(r['aa'])} | {wall} |")
    lines += [f"- {u}" for u in unmatched]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    args = ap.parse_args(argv)
    for d in (args.old, args.new):
        if not (d / "runs").is_dir():
            print(f"error: {d} has no runs/ folder: give two results folders", file=sys.stderr)
            return 2
    sys.stdout.write(render(*compare(args.old, args.new)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
