"""``bench report --evals``: the results of ``bench eval`` (``<results>/evals/*.json``) as one table, a row per
evaluation: the model, the checkpoint's file name, the data set, clean / PGD-20 / AutoAttack accuracy with the
number of test images each was measured on, the order check, the checkpoint keys mapped to load it, and when and on
what device it ran. A file that is unreadable or not finished is a note, never silently dropped. An evaluation whose
reliability indicators tripped has its accuracies marked (labels.UNRELIABLE) and its tripped indicators in a note.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.report.frame import device_label
from bench.report.labels import DASH, UNRELIABLE, UNRELIABLE_WORDS
from bench.report.render import RENDERERS, Listing, render_listing

# (the label, the metric in the result, its image count)
MEASURES = (("Clean", "clean", "n_clean"), ("PGD-20", "pgd20", "n_pgd"), ("AA", "aa", "n_aa"))
# The threat models beyond L-inf (bench/eval/threats.py), columns only where an evaluation measured them:
# (the label, the entry of the metrics, the metric in it, its image count)
THREAT_MEASURES = (("L2 PGD-20", "l2", "pgd20", "n_pgd"), ("L2 AA", "l2", "aa", "n_aa"),
                   ("Corr.", "corruptions", "mean", "n"))
CAPTION = ("The results of bench eval (evals/*.json): accuracy (%) of each evaluated checkpoint on clean, PGD-20 and "
           "AutoAttack inputs, with the number of test images each was measured on in parentheses; one evaluation "
           "per row (no seeds averaged, no ±). Order: AA <= PGD-20 <= clean on the images they share. Keys: the "
           "checkpoint key mappings applied to load it (listed below).")


def load_evals(results: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The finished evaluations under ``<results>/evals`` (in the order they finished), and a note for each file
    that is unreadable or not finished."""
    done, notes = [], []
    for path in sorted((Path(results) / "evals").glob("*.json")):
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            notes.append(f"evals/{path.name}: unreadable ({type(e).__name__}), not in the table")
            continue
        if not isinstance(res, dict) or res.get("status") != "done":
            status = res.get("status") if isinstance(res, dict) else None
            notes.append(f"evals/{path.name}: {status or 'no status'}, not in the table")
            continue
        done.append(res)
    done.sort(key=lambda r: (str(r.get("finished", "")), str(r.get("eval_id", ""))))
    return done, notes


def _acc(m: dict, key: str, count: str) -> tuple[str, float, float]:
    """(the cell's text, the accuracy in percent, its image count); NaN where not measured (AutoAttack off). The
    text carries the mark of an evaluation whose indicators tripped (``metrics.unreliable``; none where the result
    predates them)."""
    acc, n = m.get(key), m.get(count)
    if not isinstance(acc, (int, float)) or not n:
        return DASH, math.nan, float(n or 0)
    flag = UNRELIABLE if m.get("unreliable") else ""
    return f"{100 * acc:.2f}{flag} ({n})", 100 * float(acc), float(n)


def _when(stamp: Any) -> str:
    """"2026-12-02 04:09 UTC" from the ISO time the result records (UTC)."""
    return f"{stamp[:10]} {stamp[11:16]} UTC" if isinstance(stamp, str) and len(stamp) >= 16 else DASH


def listing(results: str | Path) -> Listing:
    """The evaluations of a results folder as a table every renderer writes."""
    evals, problems = load_evals(results)
    more = [t for t in THREAT_MEASURES if any(isinstance((r.get("metrics") or {}).get(t[1]), dict) for r in evals)]
    header = ("Eval", "Model", "Checkpoint", "Data set", *(label for label, _, _ in MEASURES),
              *(t[0] for t in more), "Order", "Keys", "Finished", "Device")
    rows, records, mapped = [], [], []
    for res in evals:
        spec, m = res.get("spec") or {}, res.get("metrics") or {}
        ckpt = Path(spec["checkpoint"]).name if spec.get("checkpoint") else DASH  # the name: paths differ by machine
        accs = [_acc(m, key, count) for _, key, count in MEASURES]
        accs += [_acc(m.get(entry) or {}, key, count) for _, entry, key, count in more]
        names = [(key, count) for _, key, count in MEASURES] + [(f"{e}_{k}", f"{e}_{c}") for _, e, k, c in more]
        keys = list(res.get("key_mapping") or [])
        mapped += [f"\t{res['eval_id']}: {k}" for k in keys]
        rows.append((res["eval_id"], str(spec.get("model", DASH)), ckpt, str(spec.get("dataset", DASH)),
                     *(text for text, _, _ in accs), str(res.get("sanity", DASH)), str(len(keys)) if keys else "none",
                     _when(res.get("finished")), device_label(res) or str(res.get("device", DASH))))
        records.append({"eval_id": res["eval_id"], "model": spec.get("model"), "checkpoint": ckpt,
                        "dataset": spec.get("dataset"),
                        **{k: v for (key, count), (_, acc, n) in zip(names, accs)
                           for k, v in ((key, "" if math.isnan(acc) else f"{acc:.2f}"), (count, int(n)))},
                        "sanity": res.get("sanity"), "unreliable": "; ".join(m.get("unreliable") or []),
                        "key_mapping": "; ".join(keys),
                        "finished": res.get("finished"), "device": rows[-1][-1]})
    notes = ([f"{DASH}: no finished result of bench eval under evals/."] if not evals else []) + problems
    violated = [f"\t{r['eval_id']}: " + "; ".join((r.get("metrics") or {}).get("violations") or [])
                for r in evals if r.get("sanity") == "violated"]
    if violated:
        notes += ["Order violated (gradient masking or a bug):", *violated]
    unreliable = [f"\t{r['eval_id']}: " + "; ".join(r["metrics"]["unreliable"])
                  for r in evals if (r.get("metrics") or {}).get("unreliable")]
    if unreliable:
        notes += [f"{UNRELIABLE}: {UNRELIABLE_WORDS} (reliability indicators tripped):", *unreliable]
    if mapped:
        notes += ["Checkpoint keys mapped:", *mapped]
    corr_sets = sorted({str(r["metrics"]["corruptions"].get("label")) for r in evals
                        if isinstance((r.get("metrics") or {}).get("corruptions"), dict)})
    if more:
        notes.append("L2 PGD-20 / L2 AA: the L2 threat model at each evaluation's radius (its eps_l2); Corr.: the mean "
                     "accuracy over every corruption and severity" + (f" of {', '.join(corr_sets)}" if corr_sets
                                                                      else "") + "; not in the paper.")
    return Listing(header=header, align="llll" + "r" * (len(MEASURES) + len(more)) + "llll", rows=rows,
                   records=records, caption=CAPTION, notes=notes)


def evals_report(results: str | Path = "results", fmt: str = "markdown") -> str:
    """The evaluations table in ``fmt`` (markdown, latex, csv)."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt}; known: {', '.join(RENDERERS)}")
    return render_listing(listing(results), fmt)
