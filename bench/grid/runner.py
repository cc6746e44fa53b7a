"""Running a grid: preflight checks, then the runs in dependency order on this machine.

The local executor trains parents before children in one process; finished runs are skipped, half-done ones
resume from their checkpoint, failed ones are tried again. A run whose parent failed is recorded as failed
with that reason, and the rest of the grid goes on. A finished run computed by code that changed since (stale,
bench/core/fingerprint.py) is said so in its line and skipped, unless ``--rerun`` (bench/train/rerun.py) asks
for it to be archived and trained again from scratch.
"""
from __future__ import annotations

from typing import Callable

from bench.core.config import RunConfig, run_id
from bench.core.fingerprint import describe_changes
from bench.core.runtime import Runtime
from bench.core.store import CorruptFile, Store
from bench.data import load_dataset
from bench.grid.runs import expand
from bench.train.threat_evals import lacks_threats
from bench.models.architectures import MODELS, ModelError
from bench.train.attempt import execute_recording_crash
from bench.train.parents import load_parent_file, read_parent_file
from bench.train.rerun import Rerun
from bench.train.result import failed_result, stale_modules
from bench.train.validation import validate_run


def preflight(runs: list[RunConfig], rt: Runtime) -> None:
    """Every check that can fail on bad input, before anything is written: names, values, data, results."""
    for cfg in runs:
        validate_run(cfg, procs=rt.procs)
        if cfg.model not in MODELS:
            raise ModelError(f"unknown model '{cfg.model}'; known: {', '.join(MODELS)}")
    infos = {}
    for name in sorted({cfg.dataset for cfg in runs}):
        infos[name] = load_dataset(name, rt.data_root, rt.cache_dir)[2]  # raises DataError naming the folder
    rt.torch_device()
    store = Store(rt.results)
    store.check_writable()
    for cfg in runs:  # an existing parent model of another architecture or class count fails now, not mid-grid
        if cfg.parent_file is not None:

            info = infos[cfg.dataset]
            load_parent_file(cfg, info.num_classes, info.channels)
        if cfg.parent is not None and cfg.parent_zoo is None:
            path = store.model_path(run_id(cfg.parent))
            if path.exists():
                info = infos[cfg.dataset]
                read_parent_file(path, cfg, info.num_classes, info.channels, mmap=True)


def parents_needing_model(ordered: list[RunConfig], store: Store) -> set[str]:
    """Run ids that are done but whose exported model is missing while a run still to do fine-tunes them."""
    out = set()
    for cfg in ordered:
        if cfg.parent is None or cfg.parent_zoo is not None:
            continue
        pid = run_id(cfg.parent)
        if pid in out or store.model_path(pid).exists():
            continue
        if store.status(pid) == "done" and store.status(run_id(cfg)) != "done":
            out.add(pid)
    return out


def stale_note(cfg: RunConfig, stored: dict | None, rerun: Rerun, ordered: list[RunConfig]) -> str | None:
    """What a run's line says when its stored result is stale or ``rerun`` re-runs it, else None: the changed
    modules, skipped or re-run, and for a re-run parent the finished children of the grid that were fine-tuned
    from its old model (they stand, unless stale themselves or chosen by ``--rerun`` too)."""
    changed = stale_modules(stored) if stored is not None and stored.get("status") == "done" else None
    wanted = rerun.wants(stored)
    if not changed and not wanted:
        return None
    head = f"done, stale ({describe_changes(changed)} changed)" if changed else stored["status"]
    if not wanted:
        return f"{head}: skipped, its result stands; `bench run --rerun stale` re-runs it"
    rid = run_id(cfg)
    kids = [c for c in ordered if c.parent is not None and c.parent_zoo is None and run_id(c.parent) == rid]
    line = f"{head}: --rerun {rerun.what}, archived and trained again from scratch"
    if kids:
        line += ("; its children " + ", ".join(f"{run_id(c)} ({c.method})" for c in kids)
                 + " depend on it: a finished child stands unless it is stale itself or --rerun all")
    return line


def run_local(runs: list[RunConfig], rt: Runtime, log: Callable[[str], None] = print,
              rerun: str | None = None) -> dict[str, dict]:
    """Every run of ``runs`` and their parents, in order, in this process (``rerun``: ``bench run --rerun``)."""
    ordered = expand(runs)
    preflight(ordered, rt)
    store = Store(rt.results)
    again = Rerun(rerun)  # each run is decided once here: no need to tell this command's results from older ones
    results: dict[str, dict] = {}
    needed = parents_needing_model(ordered, store)
    for i, cfg in enumerate(ordered, 1):
        rid = run_id(cfg)
        pid = run_id(cfg.parent) if cfg.parent is not None else None
        if pid is not None and results.get(pid, {}).get("status") != "done":
            reason = f"parent {pid} ({cfg.parent.method}) did not finish"
            results[rid] = failed_result(cfg, reason, rt.torch_device())
            store.write(rid, results[rid])
            log(f"[{i}/{len(ordered)}] {rid} {cfg.method}: skipped, {reason}")
            continue
        try:
            stored = store.read(rid)
        except CorruptFile:
            stored = None
        status = stored["status"] if stored is not None else store.status(rid)
        redo = status == "done" and rid in needed
        note = stale_note(cfg, stored, again, ordered)
        log(f"[{i}/{len(ordered)}] {rid} {cfg.method} on {cfg.model}/{cfg.dataset} seed {cfg.seed}: "
            + (note if note and not redo else ("done" if lacks_threats(cfg, rt, store) else "done, skipped")
               if status == "done" and not redo else "training"))
        # bad input stops the whole grid with one line; a crash is recorded and the grid goes on
        results[rid] = execute_recording_crash(cfg, rt, log=log, need_model=rid in needed, rerun=again)
    return results
