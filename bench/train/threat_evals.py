"""A run's evaluation under the threat models beyond its own (``bench run --threat``, a grid's declared ones).

The run's own evaluation is part of what the run is (its config; L-inf at ``eps``, or L2 for a run trained under
L2); the threat models of ``bench.eval.threats`` (L2, common corruptions) are further measurements of the same
model, so they never change a run id. A run being trained gets them after its own evaluation; a finished run that
lacks one is measured from its saved model (``models/<run_id>.pt``) and its result file rewritten, atomically,
under the run's lock, with the new entries only: nothing it held before changes. A finished run without its model
file (models are not committed) keeps its result as it is and says so in one line: its model is needed.
"""
from __future__ import annotations

import datetime as dt
from typing import Callable

import torch
from torch import nn

from bench.core.config import RunConfig, run_id
from bench.core.runtime import Runtime
from bench.core.store import Store
from bench.data import DatasetInfo, Split, load_dataset
from bench.data.corruptions import CorruptionSet, load_corruption_set
from bench.eval.evaluator import LAYOUTS
from bench.eval.threats import Threats, check_eps_l2, measure_more
from bench.models.architectures import build_model
from bench.train.parents import read_parent_file


def threats_of(rt: Runtime) -> Threats:
    return Threats(tuple(rt.threats), rt.eps_l2, rt.corruptions)


def own_norm(cfg: RunConfig) -> str:
    """The norm of the run's own threat model (runs without one are L-inf)."""
    return cfg.norm


def corruption_set(cfg: RunConfig, rt: Runtime, test: Split, info: DatasetInfo,
                   log: Callable[[str], None]) -> CorruptionSet | None:
    """The checked corruption set the run is to be measured on (None when none is asked for), and the L2 radius
    checked against the images' size: before the run trains, so that a missing or damaged file or a radius larger
    than any two images are apart is said in one line before anything is written."""
    threats = threats_of(rt)
    if "l2" in threats.names:
        check_eps_l2(threats.radius(cfg.dataset), info.channels, info.image_size)
    if "corruptions" not in threats.names:
        return None
    return load_corruption_set(cfg.dataset, threats.source, test, info, rt.data_root, rt.cache_dir, log=log)


def measure(cfg: RunConfig, rt: Runtime, model: nn.Module, which: tuple[str, ...], *, test: Split,
            corrupted: CorruptionSet | None, device: torch.device, log: Callable[[str], None],
            state_dir) -> dict:
    """The metrics entries of ``which`` for ``model`` (the run's exported plain model), stamped with when they
    were measured. The L2 feature gap is measured on the last hidden layer of every method's model, whatever
    features its own evaluation used (a finished run's saved model is a plain classifier)."""
    more, _ = measure_more(model, which, test=test, eval_cfg=cfg.eval, device=device, dataset=cfg.dataset,
                           threats=threats_of(rt), corrupted=corrupted, seed=cfg.seed,
                           memory_format=LAYOUTS[rt.eval_layout], fold_bn=rt.eval_fold_bn, features=None, log=log,
                           state_dir=state_dir)
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for entry in more.values():
        entry["measured"] = when
    return more


def missing(cfg: RunConfig, rt: Runtime, metrics: dict) -> tuple[str, ...]:
    return threats_of(rt).missing(metrics, cfg.dataset, own_norm(cfg))


def lacks_threats(cfg: RunConfig, rt: Runtime, store: Store) -> bool:
    """Whether a done run lacks a threat model ``rt`` asks for and its saved model is here to measure it (the
    schedulers' question: a run without its model is not queued again for nothing)."""
    if not rt.threats or all(t == "linf" for t in rt.threats):
        return False
    rid = run_id(cfg)
    try:
        result = store.read(rid)
    except Exception:  # noqa: BLE001 - a corrupt result is the run's own business (it is redone), not this one's
        return False
    return (result is not None and result.get("status") == "done" and store.model_path(rid).exists()
            and bool(missing(cfg, rt, result.get("metrics") or {})))


def with_more(result: dict, more: dict) -> dict:
    """``result`` with the entries of ``more`` added to its metrics and L2's order check counted in its sanity."""
    metrics = {**result["metrics"], **more}
    l2_violations = (more.get("l2") or {}).get("violations") or []
    sanity = "violated" if result.get("sanity") == "violated" or l2_violations else result.get("sanity", "ok")
    return {**result, "metrics": metrics, "sanity": sanity}


def add_to_finished(cfg: RunConfig, rt: Runtime, result: dict, device: torch.device,
                    log: Callable[[str], None]) -> dict:
    """A finished run's result with the threat models it lacks measured from its saved model and stored (the
    caller holds the run's lock); as it is, with one line said, when its model file is missing."""
    store, rid = Store(rt.results), run_id(cfg)
    which = missing(cfg, rt, result.get("metrics") or {})
    if not which:
        return result
    path = store.model_path(rid)
    if not path.exists():
        log(f"[{rid}] {cfg.method}: done, but --threat {','.join(which)} needs its model {path}, which is not here "
            f"(models are not committed): copy it there, or train the run again with --rerun all")
        return result
    _, test, info = load_dataset(cfg.dataset, rt.data_root, rt.cache_dir)
    corrupted = corruption_set(cfg, rt, test, info, log)
    blob = read_parent_file(path, cfg, info.num_classes, info.channels)
    model = build_model(cfg.model, info.num_classes, info.channels)
    model.load_state_dict(blob["state_dict"])
    model = model.to(device).eval()
    log(f"[{rid}] {cfg.method}: done; measuring {', '.join(which)} on its saved model")
    more = measure(cfg, rt, model, which, test=test, corrupted=corrupted, device=device,
                   log=lambda s: log(f"[{rid}] {cfg.method} {s}"), state_dir=store.ckpt_dir(rid))
    out = with_more(result, more)
    store.write(rid, out)
    return out
