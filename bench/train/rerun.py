"""``bench run --rerun stale|failed|all``: which stored results are set aside and their runs trained again.

Without ``--rerun`` a done run stands, stale or not (``bench status`` and ``bench run`` say that it is stale), and a
failed run is tried again, resuming from its last good checkpoint. With it, the chosen results are archived
(``Store.archive``: the result kept under ``runs/archive/``, the model and checkpoints removed) and their runs
trained from scratch, under the run's lock:

* ``stale``: done runs whose recorded code fingerprint differs from the current code's (never a result that
  recorded none: it predates fingerprints);
* ``failed``: failed runs, from scratch instead of resuming;
* ``all``: every done or failed run.

The node-local pool's workers look at every run again and again: there only results finished before the pool
started are re-run (``before``), so that a run trained by this pool is not trained twice. The local runner decides
each run once and gives no ``before``.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.train.result import stale_modules

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
