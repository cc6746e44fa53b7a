"""The result store: one JSON file per run, checkpoints, exported models and per-run locks.

Layout under the results folder (default ``results/``)::

    runs/<run_id>.json      the result: config, status, metrics, per-epoch log, provenance (committed)
    runs/archive/<run_id>.<UTC time>.json
                            a result set aside by ``bench run --rerun`` before its run trained again (kept)
    models/<run_id>.pt      the exported plain model of a finished run (children load their parent from it)
    ckpt/<run_id>/last.pt   the latest end-of-epoch checkpoint, prev.pt the one before
    locks/<run_id>.lock     flock'd while a process trains the run

Every file is written to a temporary file in the same folder and moved into place with ``os.replace``, so a
reader sees the old file or the new one, never half of one. Locks are ``fcntl.flock`` locks: the kernel
releases them when the holding process dies, so a killed runner never blocks a run forever.

Test hook: with ``BENCH_TEST_SLOW_WRITES=<seconds>`` in the environment, every atomic write prints
``bench-test: writing <path>`` to stderr and sleeps that long between the complete temporary file and
``os.replace``, so the crash-consistency test (tests/test_reliability.py) can SIGKILL a process mid-write.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bench.core.config import ConfigError, EvalConfig, TrainConfig, coerce_like


class CorruptFile(Exception):
    """A result or checkpoint file that cannot be read; ``path`` names it."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path = path


def _test_pause(path: Path) -> None:
    """The BENCH_TEST_SLOW_WRITES hook (see the module doc); a no-op unless the variable is set."""
    delay = os.environ.get("BENCH_TEST_SLOW_WRITES")
    if delay:
        print(f"bench-test: writing {path}", file=sys.stderr, flush=True)
        time.sleep(float(delay))


def content_digest(obj: Any) -> str:
    """BLAKE2b over a nested structure: each tensor's dtype, shape and bytes, and the repr of every plain value.
    Stored inside checkpoints and exported models and checked on load: torch's zip format has no checksum on
    tensor data, so a garbled (not truncated) file would otherwise load silently with wrong weights."""
    h = hashlib.blake2b(digest_size=16)

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(o, dict):
            h.update(b"D%d" % len(o))
            for k, v in o.items():
                h.update(repr(k).encode())
                walk(v)
        elif isinstance(o, (list, tuple)):
            h.update(b"L%d" % len(o))
            for v in o:
                walk(v)
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(file)`` into a temp file beside ``path``, fsync, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _test_pause(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON: store them as strings so a diverged run's log is still valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# The shape of a result that its readers (status, tables, claims, plan, figures) rely on: a field that is present
# has this type. A file that differs (cut and mended by hand, of another schema version, written by other code) is
# corrupt, reported as such on its run's line, and never half-read by a table. NUMBER admits the strings that
# _json_safe stores for NaN and inf; None stands for a measurement that was not taken.
NUMBER = (int, float, str, type(None))
RESULT_SHAPE: dict[str, Any] = {
    "status": str, "reason": (str, type(None)), "config": dict, "metrics": dict, "epochs": list, "extra": dict,
    "seconds_per_epoch": NUMBER, "train_seconds": NUMBER, "wall_seconds": NUMBER, "wall_processes": NUMBER,
    "peak_memory": dict, "versions": dict, "device": str, "device_name": (str, type(None)),
}
METRICS_SHAPE: dict[str, Any] = {"violations": (list, type(None)), "seconds": dict, "per_example": dict,
                                 "unreliable": (list, type(None)), "indicators": dict, "l2": dict,
                                 "corruptions": dict}
CONFIG_SHAPE: dict[str, Any] = {"method": str, "model": str, "dataset": str, "seed": int, "eps": (int, float),
                                "train": dict, "eval": dict, "hparams": list, "parent": (dict, type(None))}


def misshapen(result: dict) -> str | None:
    """What in ``result`` is not of the shape its readers rely on (RESULT_SHAPE), else None."""
    def wrong(where: str, d: dict, shape: dict[str, Any]) -> str | None:
        for key, kind in shape.items():
            if key in d and (not isinstance(d[key], kind) or isinstance(d[key], bool) and kind in ((int, float), int)):
                return f"field {where}{key} is a {type(d[key]).__name__}, not what a result holds there"
        return None

    metrics, config = result.get("metrics") or {}, result.get("config") or {}
    why = wrong("", result, RESULT_SHAPE) or wrong("metrics.", metrics, METRICS_SHAPE) \
        or wrong("config.", config, CONFIG_SHAPE)
    if why:
        return why
    for key in ("clean", "pgd20", "aa", "f1_clean", "f2_clean"):  # accuracies: fractions (NaN: not measured)
        v = metrics.get(key)
        if isinstance(v, (int, float)) and not (0 <= v <= 1 or math.isnan(v)):
            return f"metrics.{key} is {v}, not an accuracy in [0, 1]"
    why = misshapen_threats(metrics)
    if why:
        return why
    for key in ("n_clean", "n_pgd", "n_aa"):
        v = metrics.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            return f"metrics.{key} is {v!r}, not a count of test images"
    for part, cls in (("train", TrainConfig), ("eval", EvalConfig)):
        given = config.get(part) or {}
        for f in dataclasses.fields(cls):
            if f.name in given and not coerce_like(f.default, given[f.name])[0]:
                return f"config.{part}.{f.name} is {given[f.name]!r}, not a {type(f.default).__name__}"
    nested = [("epochs", result.get("epochs") or [], dict), ("metrics.violations", metrics.get("violations") or [], str),
              ("metrics.seconds", list((metrics.get("seconds") or {}).values()), NUMBER),
              ("peak_memory", list((result.get("peak_memory") or {}).values()), (dict, type(None)))]
    for where, items, kind in nested:
        if any(not isinstance(v, kind) for v in items):
            return f"an entry of {where} is not of the kind a result holds there"
    return None


def _accuracy(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (0 <= v <= 1 or math.isnan(v))


def misshapen_threats(metrics: dict) -> str | None:
    """What in the L2 and corruption entries (bench.eval.threats) is not what the tables read, else None."""
    l2 = metrics.get("l2") or {}
    for key in ("pgd20", "aa"):
        if key in l2 and l2[key] is not None and not _accuracy(l2[key]):
            return f"metrics.l2.{key} is {l2[key]!r}, not an accuracy in [0, 1]"
    if "l2" in metrics and not (isinstance(l2.get("eps"), (int, float)) and not isinstance(l2.get("eps"), bool)):
        return "metrics.l2.eps is not a number"
    corr = metrics.get("corruptions")
    if corr is None:
        return None
    acc = corr.get("accuracy")
    if not (_accuracy(corr.get("mean")) and isinstance(corr.get("label"), str) and isinstance(acc, dict)
            and all(isinstance(a, list) and a and all(_accuracy(v) for v in a) for a in acc.values())):
        return "metrics.corruptions is not a mean, a label and accuracies per corruption and severity in [0, 1]"
    return None


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------------------------------
    def result_path(self, rid: str) -> Path:
        return self.root / "runs" / f"{rid}.json"

    def model_path(self, rid: str) -> Path:
        return self.root / "models" / f"{rid}.pt"

    def ckpt_dir(self, rid: str) -> Path:
        return self.root / "ckpt" / rid

    def check_writable(self) -> None:
        """Fail early, with one line, if results cannot be written (before any training is spent)."""
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise ConfigError(f"results folder {self.root} is not writable: choose another with --results")
        # Permission bits do not tell everything (root, read-only or pseudo file systems like /proc): create and
        # remove a temporary folder where the results folder would be made, leaving nothing behind.
        try:
            tempfile.TemporaryDirectory(dir=probe, prefix=".bench-probe-").cleanup()
        except OSError as e:
            raise ConfigError(f"results folder {self.root} is not writable ({e.strerror}): choose another with "
                              "--results") from None

    # -- results -----------------------------------------------------------------------------------------
    def read(self, rid: str) -> dict | None:
        """The result of a run, None if it has none; raises CorruptFile if the file is unreadable."""
        path = self.result_path(rid)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as e:
            raise CorruptFile(path, f"not a UTF-8 text file (byte {e.start})") from None
        try:
            result = json.loads(text)
        except json.JSONDecodeError as e:
            raise CorruptFile(path, f"not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(result, dict) or result.get("run_id") != rid or "status" not in result:
            raise CorruptFile(path, "not a result file of this run (run_id or status missing)")
        wrong = misshapen(result)
        if wrong:
            raise CorruptFile(path, wrong)
        return result

    def status(self, rid: str) -> str:
        """done / failed / corrupt / missing (from the result file only)."""
        try:
            result = self.read(rid)
        except CorruptFile:
            return "corrupt"
        return "missing" if result is None else result["status"]

    def write(self, rid: str, result: dict) -> None:
        text = json.dumps(_json_safe(result), indent=1, sort_keys=True) + "\n"
        atomic_write_bytes(self.result_path(rid), text.encode())

    def archive(self, rid: str) -> Path:
        """Set the run's result aside as ``runs/archive/<run_id>.<UTC time>.json`` (moved atomically, never
        deleted) and remove its exported model and checkpoints, so that the run trains again from scratch instead
        of resuming from what other code wrote. Returns the archived file. Hold the run's lock."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        dest = self.root / "runs" / "archive" / f"{rid}.{stamp}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        # The model and checkpoints go first: a kill in between leaves the old result in place (archived by the
        # next --rerun), never a missing result beside a checkpoint that a plain `bench run` would resume from.
        with contextlib.suppress(FileNotFoundError):
            self.model_path(rid).unlink()
        shutil.rmtree(self.ckpt_dir(rid), ignore_errors=True)
        os.replace(self.result_path(rid), dest)
        return dest

    def all_results(self) -> Iterator[tuple[Path, dict | CorruptFile]]:
        for path in sorted((self.root / "runs").glob("*.json")):
            try:
                yield path, self.read(path.stem)
            except CorruptFile as e:
                yield path, e

    # -- locks -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, rid: str, *, blocking: bool = True) -> Iterator[bool]:
        """Hold the run's lock; yields False (without waiting) when non-blocking and another holds it."""
        path = self.root / "locks" / f"{rid}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def is_locked(self, rid: str) -> bool:
        with self.lock(rid, blocking=False) as got:
            return not got
