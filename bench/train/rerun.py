"""``bench run --rerun stale|failed|all``: which stored results are set aside and their runs trained again.

Without ``--rerun`` a done run stands, stale or not (``bench status`` and ``bench run`` say that it is stale), and a
failed run is tried again, resuming from its last good checkpoint. With it, the chosen results are archived
(``Store.archive``: the result kept under ``runs/archive/``, the model and checkpoints removed) and their runs
trained from scratch, under the run's lock:

* ``stale``: done runs whose recorded code fingerprint differs from the current code's (never a result that
  recorded none: it predates fingerprints);
* ``failed``: failed runs, from scratch instead of resuming;
* ``all``: every done or failed run.

The local runner and the pool archive inside ``execute`` (under the run's lock, where it decides); a SLURM
submission archives before it submits, and the jobs find the runs missing.

The node-local pool's workers look at every run again and again: there only results finished before the pool
started are re-run (``before``), so that a run trained by this pool is not trained twice. The local runner decides
each run once and gives no ``before``.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.core.config import RunConfig, run_id
from bench.core.store import Store
from bench.train.result import stale_modules
from bench.train.tblog import run_dir

RERUN_CHOICES = ("stale", "failed", "all")


@dataclass(frozen=True)
class Rerun:
    what: str | None = None  # one of RERUN_CHOICES; None: the default described above
    before: str = ""  # UTC ISO time the pool started (results' "finished" is compared with it); "": every result

    def wants(self, result: dict | None) -> bool:
        """Whether the stored ``result`` is to be archived and its run trained again from scratch."""
        if self.what is None or result is None:
            return False
        if self.before and (result.get("finished") or "") >= self.before:
            return False
        status = result.get("status")
        if self.what == "all":
            return status in ("done", "failed")
        if self.what == "failed":
            return status == "failed"
        return status == "done" and bool(stale_modules(result))


def archive_if_chosen(cfg: RunConfig, store: Store, rerun: Rerun, result: dict | None) -> Path | None:
    """Archive the run's stored ``result`` when ``rerun`` chooses it (``Store.archive``: the model and checkpoints
    go, and the TensorBoard files, a view of the archived log); returns the archived file, else None. The caller
    holds the run's lock."""
    if not rerun.wants(result):
        return None
    path = store.archive(run_id(cfg))
    shutil.rmtree(run_dir(store.root, cfg.method, run_id(cfg)), ignore_errors=True)
    return path
