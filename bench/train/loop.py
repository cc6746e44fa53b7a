"""The one training loop, and what happens around it for a run: parent loading, resume, evaluation, result.

Every method, from natural pre-training to AFD, goes through ``execute``:

1. take the run's lock (a second runner waits, then finds the run done);
2. build the model, initialise it from the parent's exported model if the method fine-tunes;
3. resume from the last good end-of-epoch checkpoint (net, EMA, optimizers, method state, RNG, log);
4. train: per epoch, per batch, set the lr from the schedule, ``method.train_step`` at the run's precision
   (bench/core/numerics.py: true fp32, TF32, bf16 autocast, or fp16 autocast with a gradient scaler), update the
   EMA; metrics are summed on the device (no host sync per step);
5. after each epoch: check the losses are finite (else the run fails with the epoch and reason), optionally
   measure the feature gap (Figure 1a: on the exported EMA-or-live model, on ``method.gap_features``, as the final
   evaluation does), write an atomic checkpoint;
6. finalize (RiFT's interpolation), export the plain model, save it for the children, evaluate it, and write
   the result file last, atomically: a result with status "done" means everything before it exists.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as dt
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from tqdm import tqdm

from bench.core import compilation, determinism, distributed, memory, numerics, schedules
from bench.core.config import ConfigError, RunConfig, run_id, to_dict
from bench.core.provenance import provenance
from bench.core.runtime import Runtime, set_threads
from bench.core.store import CorruptFile, Store, content_digest
from bench.data.datasets import Loader, load_dataset
from bench.eval.evaluator import LAYOUTS, Evaluator
from bench.models.architectures import build_model
from bench.train.ema import EMA
from bench.train.parents import load_parent, save_model
from bench.train.precision import make_step
from bench.train.resume import CKPT_VERSION, load_checkpoint, resume_threads, save_checkpoint
from bench.train.tblog import EpochWriter
from bench.train.validation import validate_run
from methods import Context, StepInfo, get_method, make_hparams


class RunFailed(Exception):
    """Training could not finish (non-finite loss, ...); the reason and epoch go into the result."""

    def __init__(self, reason: str, epoch: int | None = None):
        super().__init__(reason)
        self.epoch = epoch


# -- catastrophic overfitting -------------------------------------------------------------------------------
# Single-step methods (``single_step = True``: Free-AT, FGSM-GA, ATAS) are measured after every epoch on the first
# eval.n_gap test images: FGSM accuracy (one step of eps, no random start) and PGD accuracy (eval.pgd_steps,
# eval.pgd_step_size, random start, fixed seed), logged as co_fgsm / co_pgd. Catastrophic overfitting (Wong et
# al. 2020) is recorded at the first epoch whose PGD accuracy fell below half the best earlier PGD accuracy while
# FGSM accuracy stays at least 0.3 above PGD accuracy (the model only resists the attack it trains on).
CO_PGD_DROP = 0.5
CO_FGSM_MARGIN = 0.3


def catastrophic_overfitting(epoch_log: list[dict]) -> dict | None:
    """The first epoch of ``epoch_log`` that meets the rule above, as {"epoch", "fgsm", "pgd", "best_pgd"}."""
    best = None
    for e in epoch_log:
        fgsm_acc, pgd_acc = e.get("co_fgsm"), e.get("co_pgd")
        if not isinstance(fgsm_acc, float) or not isinstance(pgd_acc, float):
            continue
        if best is not None and pgd_acc < CO_PGD_DROP * best and fgsm_acc >= pgd_acc + CO_FGSM_MARGIN:
            return {"epoch": e["epoch"], "fgsm": fgsm_acc, "pgd": pgd_acc, "best_pgd": best}
        best = pgd_acc if best is None else max(best, pgd_acc)
    return None


# -- the loop ---------------------------------------------------------------------------------------------------
def _autocast(device: torch.device, precision: str):
    """The numerics of a training step at ``precision``: TF32 policy and bf16/fp16 autocast (bench/core/numerics.py)."""
    return numerics.training_context(device, precision)


def execute(cfg: RunConfig, rt: Runtime, *, log: Callable[[str], None] = print,
            stop_after_epoch: int | None = None, need_model: bool = False, if_free: bool = False) -> dict:
    """Train and evaluate one run (resuming if it was cut off); return its result, which is also stored.

    A run that is already done is returned as stored, unless ``need_model`` (it is the parent of a run still to
    do) and its exported model is missing: result files are committed but models/ is not, so a fresh clone has
    the one without the other. Then the run is done again (from its final checkpoint if that is still there,
    else from scratch) and its result rewritten. ``stop_after_epoch`` (tests) returns after that many epochs
    with the checkpoint written, as if the process had been killed there. ``if_free`` (the node-local pool,
    bench/grid/pool.py): when another runner holds the run's lock, return ``{"status": "held"}`` at once instead
    of waiting for it.

    Data-parallel (bench/core/distributed.py): with ``rt.procs`` > 1 and no world yet, the run is done by that many
    local processes spawned here; a process that is already one rank of a world (torchrun, SLURM tasks) does
    its share directly. Either way the run id, the files and the result are those of a one-process run."""
    determinism.apply(rt.determinism, rt.torch_device())  # before any CUDA work (cuBLAS reads its workspace then)
    world = distributed.from_env()
    distributed.check_launch(rt.procs)
    validate_run(cfg, procs=max(rt.procs, world.size))  # the fp16 refusal on several processes included
    if rt.procs > 1 and not world.active:
        distributed.spawn(_rank_main, (cfg, rt, stop_after_epoch, need_model), rt.procs)
        store = Store(rt.results)
        got = store.read(run_id(cfg))
        if got is None or (stop_after_epoch is not None and got.get("status") != "done"):
            return {"run_id": run_id(cfg), "status": "interrupted", "epoch": stop_after_epoch}
        return got
    if world.active:
        return _execute_rank(cfg, rt, world, log, stop_after_epoch, need_model)
    return _execute_one(cfg, rt, distributed.SINGLE, log, stop_after_epoch, need_model, if_free)


def _rank_main(cfg: RunConfig, rt: Runtime, stop_after_epoch: int | None, need_model: bool) -> None:
    """One spawned rank (module-level: pickled by torch.multiprocessing)."""
    world = distributed.from_env()
    _execute_rank(cfg, rt, world, (lambda s: print(s, flush=True)) if world.main else (lambda s: None),
                  stop_after_epoch, need_model)


def _execute_rank(cfg: RunConfig, rt: Runtime, world: "distributed.World", log, stop_after_epoch, need_model) -> dict:
    device = _device(rt, world)
    distributed.init(world, device)
    try:
        return _execute_one(cfg, rt, world, log, stop_after_epoch, need_model)
    finally:
        distributed.shutdown()


def _execute_one(cfg: RunConfig, rt: Runtime, world: "distributed.World", log, stop_after_epoch,
                 need_model, if_free: bool = False) -> dict:
    store = Store(rt.results)
    rid = run_id(cfg)
    # Rank 0 holds the run's lock and decides; the others follow its decision.
    with (store.lock(rid, blocking=not if_free) if world.main else contextlib.nullcontext(True)) as got:
        if not got:  # if_free, and another runner holds it
            return {"run_id": rid, "status": "held"}
        decision: Any = None
        if world.main:
            try:
                existing = store.read(rid)
            except CorruptFile as e:
                log(f"result {e.path} is corrupt; redoing the run")
                existing = None
            decision = "train"
            if existing is not None and existing["status"] == "done":
                if not (need_model and not store.model_path(rid).exists()):
                    decision = existing
                else:
                    log(f"[{rid}] {cfg.method} is done but its model file {store.model_path(rid)} is missing and a "
                        "child needs it: training it again")
        decision = distributed.all_gather_objects(decision)[0]
        if decision != "train":
            return decision
        return _execute_locked(cfg, rt, store, rid, log, stop_after_epoch, world)


def _execute_locked(cfg: RunConfig, rt: Runtime, store: Store, rid: str, log, stop_after_epoch,
                    world: "distributed.World" = distributed.SINGLE) -> dict:
    # A run may change the process's torch thread count (``--threads``, or a resume that takes its checkpoint's);
    # the next run of the grid starts from the count the process had.
    threads_before = torch.get_num_threads()
    try:
        # fp32 everywhere outside the training steps (RiFT's module selection, finalize, export, the folding
        # check): PyTorch's default lets cuDNN convolutions run in TF32 on Ampere and newer GPUs. The steps set
        # their own precision inside (training_context).
        with numerics.exact_fp32():
            return _execute_run(cfg, rt, store, rid, log, stop_after_epoch, world)
    finally:
        torch.set_num_threads(threads_before)


def _device(rt: Runtime, world: "distributed.World") -> torch.device:
    """The run's device: on CUDA a rank's own GPU (``distributed.cuda_device``: local rank modulo the visible
    devices), and the current device set to it, so that nothing lands on GPU 0 by default (``--device cuda:N``
    in one process too)."""
    device = rt.torch_device()
    if device.type == "cuda":
        if world.active:
            device = distributed.cuda_device(world)
        elif device.index is not None:
            torch.cuda.set_device(device)
    return device


@dataclass
class _Run:
    """One run in progress, as its phases hand it on: what ``prepare`` builds, ``resume`` restores and
    ``train_epochs`` advances."""

    cfg: RunConfig
    rt: Runtime
    store: Store
    rid: str
    world: "distributed.World"
    log: Callable[[str], None]
    device: torch.device
    started: str
    cls: type
    hp: Any
    info: Any
    test_split: Any
    parent_model: Any
    loader: Loader
    method: Any
    ema: EMA | None
    step_fn: Callable
    evaluator: Evaluator
    bn_note: str | None
    # Wall time is the run's, over every process that worked on it in turn: a resumed run moves its origin back by
    # the wall seconds its checkpoint carries (work lost between that checkpoint and a kill is not counted).
    wall0: float = field(default_factory=time.perf_counter)
    wall_processes: int = 1
    thread_counts: list[int] = field(default_factory=list)  # torch threads of each process, in turn (resume_threads)
    start_epoch: int = 0
    epoch_log: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    peak_memory: dict = field(default_factory=dict)  # {"train", "eval"}: bench.core.memory.peak of each phase

    def result(self, status: str, **kw: Any) -> dict:
        return _result(self.cfg, self.rid, self.device, self.started, (self.wall0, self.wall_processes),
                       self.train_seconds, self.epoch_log, status=status, thread_counts=self.thread_counts, **kw)


def _execute_run(cfg: RunConfig, rt: Runtime, store: Store, rid: str, log, stop_after_epoch,
                 world: "distributed.World") -> dict:
    """A run's phases, in order: prepare, resume, train the epochs, finalize and export, evaluate, write."""
    run = _prepare(cfg, rt, store, rid, log, world)
    _resume(run)
    reset = memory.reset(run.device)
    try:
        stopped = _train_epochs(run, stop_after_epoch)
    except RunFailed as e:
        return _write_failed(run, e)
    if stopped is not None:
        return stopped
    run.peak_memory["train"] = memory.peak(run.device, reset)
    net, final, extra = _finalize_and_export(run)
    reset = memory.reset(run.device)
    metrics = _evaluate(run, net, final)
    run.peak_memory["eval"] = memory.peak(run.device, reset)
    return _write_done(run, net, metrics, extra)


def _prepare(cfg: RunConfig, rt: Runtime, store: Store, rid: str, log, world: "distributed.World") -> _Run:
    """Threads and device, data, the parent, the model (from the parent when fine-tuning), the method with its
    optimizers, the EMA, the per-batch step, the evaluator."""
    threads = rt.threads
    if threads is None and world.active and rt.torch_device().type == "cpu":  # share the cores between ranks
        threads = max(1, (os.cpu_count() or 1) // world.size)
    set_threads(threads)
    device = _device(rt, world)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    wall0 = time.perf_counter()
    cls = get_method(cfg.method)
    hp = make_hparams(cfg.method, cfg.hparams)

    train_split, test_split, info = load_dataset(cfg.dataset, rt.data_root, rt.cache_dir)
    if cfg.train.n_train:
        train_split = train_split.sample(cfg.train.n_train)
    torch.manual_seed(cfg.seed)
    no_sync = cls.batchnorm_sync_problem(hp)
    model, parent_model = _model_and_parent(cfg, cls, store, info, device, world, rt, no_sync)
    # channels_last is faster for convolutions on GPUs and on this CPU alike (PGD-10 step of the small CNN:
    # 1.6x on 2 cores); evaluation works on its own fp32 copy (bench/eval/evaluator.py, channels_last by default).
    model = model.to(device).to(memory_format=torch.channels_last)
    bn_note = None
    if world.active:
        model, bn_note = distributed.sync_batchnorm(model, device, refuse=no_sync)

    loader = Loader(train_split, cfg.train.batch_size, device=device, shuffle=True, augment=cfg.train.augment,
                    seed=cfg.seed, drop_last=cls.drop_last, rank=world.rank, world_size=world.size)
    ctx = Context(info=info, eps=cfg.eps, device=device, epochs=cfg.train.epochs, steps_per_epoch=len(loader),
                  seed=cfg.seed, train=train_split, parent_model=parent_model, train_cfg=cfg.train)
    method = cls(model, hp, ctx)
    method.net.to(device)
    method.optimizers = method.configure_optimizers(cfg.train)
    if world.active:  # gradients averaged over the ranks before every optimizer step, whoever calls it
        distributed.average_gradients_before_steps(method.optimizers)
    ema = EMA(method.net) if cfg.train.ema else None  # before compiling: the EMA copy stays an eager module
    # fp16: refused here or given a scaler; cuDNN benchmarks only under the "fast" determinism policy
    step_fn = make_step(method, cfg.train.precision, device, benchmark=determinism.cudnn_benchmark())
    if rt.compile:  # a runtime option: a method whose step cannot be compiled trains eagerly (same numbers)
        why = cls.compile_problem(hp)
        if why is None:
            compilation.compile_model(method.model)
        else:
            log(f"[{rid}] {cfg.method}: training not compiled: {why}")
    evaluator = Evaluator(test_split, cfg.eval, cfg.eps, device, seed=cfg.seed, memory_format=LAYOUTS[rt.eval_layout],
                          fold_bn=rt.eval_fold_bn, world=world)
    return _Run(cfg=cfg, rt=rt, store=store, rid=rid, world=world, log=log, device=device, started=started, cls=cls,
                hp=hp, info=info, test_split=test_split, parent_model=parent_model, loader=loader, method=method,
                ema=ema, step_fn=step_fn, evaluator=evaluator, bn_note=bn_note, wall0=wall0)


def _model_and_parent(cfg: RunConfig, cls: type, store: Store, info, device: torch.device,
                      world: "distributed.World", rt: Runtime, no_sync: str | None) -> tuple[Any, Any]:
    """The model to train (the parent's weights when the method fine-tunes) and the parent's frozen copy."""
    parent_model = None
    if cls.parent is not None:
        if cfg.parent is None and cfg.parent_zoo is None and cfg.parent_file is None:
            raise ConfigError(f"method '{cfg.method}' fine-tunes a {cls.parent} model but the run has no parent")
        parent_model = load_parent(cfg, store, info.num_classes, info.channels, rt)
    if parent_model is not None and cfg.parent_zoo is not None:
        model = parent_model  # a zoo architecture: fine-tune it as it is
        parent_model = copy.deepcopy(model)
    else:
        model = build_model(cfg.model, info.num_classes, info.channels)
        if parent_model is not None:
            model.load_state_dict(parent_model.state_dict())
    if parent_model is not None:
        parent_model = parent_model.to(device).eval()
        if world.active:  # a teacher run in train mode (AFKD/ARREST as run) normalises over the global batch too
            parent_model = distributed.sync_batchnorm(parent_model, device, refuse=no_sync)[0]
    return model, parent_model


def _resume(run: _Run) -> None:
    """Restore the last good end-of-epoch checkpoint, if any: net, optimizers, method state, scaler, EMA, RNG,
    log, the wall time and thread counts so far."""
    ckpt = load_checkpoint(run.store, run.rid, run.log)
    method, ema, device = run.method, run.ema, run.device
    if ckpt is not None:
        method.net.load_state_dict(ckpt["net"])
        for opt, state in zip(method.optimizers, ckpt["optimizers"], strict=True):
            opt.load_state_dict(state)
        method.load_state_dict(ckpt["method"])
        if method.grad_scaler is not None and ckpt.get("grad_scaler"):
            method.grad_scaler.load_state_dict(ckpt["grad_scaler"])
        if ema is not None:
            ema.net.load_state_dict(ckpt["ema"])
            ema.t = ckpt["ema_t"]
        torch.set_rng_state(ckpt["rng"])
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        run.start_epoch, run.epoch_log, run.train_seconds = ckpt["epoch"], ckpt["log"], ckpt["train_seconds"]
        run.wall0 -= ckpt.get("wall_seconds", 0.0)  # absent in checkpoints written before it was carried over
        run.wall_processes = ckpt.get("wall_processes", 1) + 1
        resume_threads(ckpt, run.rt, device, run.world, run.log, run.rid)
        run.thread_counts = list(ckpt.get("thread_counts") or [])  # absent in checkpoints written before it was kept
        run.log(f"[{run.rid}] resuming {run.cfg.method} at epoch {run.start_epoch + 1}/{run.cfg.train.epochs}")
    run.thread_counts.append(torch.get_num_threads())


def _train_epochs(run: _Run, stop_after_epoch: int | None) -> dict | None:
    """The remaining epochs, each followed by the ranks' agreement, the per-epoch probes and a checkpoint.
    Returns the "interrupted" result when ``stop_after_epoch`` (tests) cuts the run short, else None."""
    cfg, method, ema, world, rid = run.cfg, run.method, run.ema, run.world, run.rid
    if run.start_epoch < cfg.train.epochs:
        numerics.warn_if_slow(cfg.train.precision, run.device)  # one line on stderr: bf16 on a CPU without native bf16
    curves = EpochWriter(run.rt.results, cfg.method, rid, run.start_epoch)  # TensorBoard view of the log, if installed
    try:
        for epoch in range(run.start_epoch, cfg.train.epochs):
            entry = _train_epoch(cfg, method, run.loader, ema, epoch, run.device, run.rt, rid, run.step_fn, world)
            run.train_seconds += entry["seconds"]
            if world.active:
                _sync_ranks(run, epoch)
            entry.update(_epoch_probes(run))
            run.epoch_log.append(entry)
            if world.main:  # one writer; the other ranks wait for the file before going on
                _save_epoch_checkpoint(run, epoch)
                curves.write(entry)
            distributed.barrier()
            run.log(f"[{rid}] {cfg.method} epoch {epoch + 1}/{cfg.train.epochs} "
                    + " ".join(f"{k} {v:.4g}" for k, v in entry.items() if isinstance(v, float)))
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.train.epochs:
                return {"run_id": rid, "status": "interrupted", "epoch": epoch + 1}
    finally:
        curves.close()
    return None


def _sync_ranks(run: _Run, epoch: int) -> None:
    """The state every rank must agree on before the checkpoint and the probes."""
    method, ema, world = run.method, run.ema, run.world
    method.sync_state(world)
    distributed.average_buffers(method.net)
    if ema is not None:
        distributed.average_buffers(ema.net)
    # An invariant, checked every epoch: the ranks hold the same weights, EMA and method state (a method that
    # branched differently on one rank would otherwise go on silently).
    digest = content_digest({"net": method.net.state_dict(), "method": _tensors(method.state_dict()),
                             "ema": ema.net.state_dict() if ema is not None else None})
    if len(set(distributed.all_gather_objects(digest))) > 1:
        raise RunFailed(f"the {world.size} processes hold different weights after epoch {epoch + 1}: "
                        "a method step that is not data-parallel safe", epoch + 1)


def _epoch_probes(run: _Run) -> dict:
    """Per-epoch measurements on the model that is evaluated (the EMA when the run keeps one, as at the end):
    Figure 1a's feature gap on the features the method classifies from, and single-step methods' FGSM / PGD
    accuracy (catastrophic overfitting). Their time is evaluation time, not training time."""
    cfg, cls, method, evaluator = run.cfg, run.cls, run.method, run.evaluator
    out: dict = {}
    probe0 = time.perf_counter()
    net = run.ema.net if run.ema is not None else method.net
    if cfg.eval.feature_gap_every_epoch:
        out.update(evaluator.feature_gap_stats(method.export(net), features=method.gap_features(net)))
    if getattr(cls, "single_step", False) and cfg.eval.n_gap:
        out["co_fgsm"], out["co_pgd"] = evaluator.fgsm_pgd_accuracy(method.export(net))
    if cfg.eval.feature_gap_every_epoch or (getattr(cls, "single_step", False) and cfg.eval.n_gap):
        out["probe_seconds"] = time.perf_counter() - probe0
    return out


def _save_epoch_checkpoint(run: _Run, epoch: int) -> None:
    method, ema, device = run.method, run.ema, run.device
    save_checkpoint(run.store, run.rid, {
        "version": CKPT_VERSION, "run_id": run.rid, "epoch": epoch + 1, "log": run.epoch_log,
        "train_seconds": run.train_seconds, "wall_seconds": time.perf_counter() - run.wall0,
        "wall_processes": run.wall_processes, "thread_counts": run.thread_counts, "net": method.net.state_dict(),
        "optimizers": [o.state_dict() for o in method.optimizers], "method": method.state_dict(),
        "grad_scaler": method.grad_scaler.state_dict() if method.grad_scaler is not None else None,
        "ema": ema.net.state_dict() if ema is not None else None, "ema_t": ema.t if ema else 0,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})


def _write_failed(run: _Run, e: RunFailed) -> dict:
    result = run.result("failed", reason=str(e))
    result["failed_epoch"] = e.epoch
    if run.world.main:
        run.store.write(run.rid, result)
    run.log(f"[{run.rid}] {run.cfg.method} FAILED: {e}")
    return result


def _finalize_and_export(run: _Run) -> tuple[Any, Any, dict]:
    """The method's post-training stage (RiFT's interpolation), then the plain exported model, saved for the
    children. Returns (the net evaluated: EMA or live, the exported model, result fields)."""
    cfg, method = run.cfg, run.method
    net = run.ema.net if run.ema is not None else method.net
    if run.world.active:  # the plain model a one-process run exports (evaluation folds it the same way)
        distributed.plain_batchnorm(net)
    extra = method.finalize(net, run.evaluator) or {}
    if cfg.parent_file is not None:  # the user's own model: its clean accuracy beside its children's
        extra["parent_file"] = {"path": cfg.parent_file, "digest": cfg.parent_digest,
                                "clean": run.evaluator.accuracy(run.parent_model), "n_clean": cfg.eval.n_clean}
    final = method.export(net)
    if run.world.main:
        save_model(run.store, run.rid, cfg, final, run.info.num_classes, run.info.channels)
    return net, final, extra


def _evaluate(run: _Run, net, final) -> dict:
    """Clean, PGD-20, AutoAttack and the feature gap of the exported model, plus the method's own metrics.
    Finished evaluation chunks live beside the checkpoints: a run killed mid-AutoAttack resumes there."""
    cfg, method, rid = run.cfg, run.method, run.rid
    with compilation.compiling(run.rt.compile):  # --compile: the evaluated fp32 copy is compiled too
        metrics = run.evaluator.run(final, log=lambda s: run.log(f"[{rid}] {cfg.method} {s}"),
                                    features=method.gap_features(net), state_dir=run.store.ckpt_dir(rid))
    metrics.update(method.extra_metrics(net, run.test_split, run.evaluator))
    return metrics


def _write_done(run: _Run, net, metrics: dict, extra: dict) -> dict:
    """The result, checked and written last, atomically: "done" means everything before it exists."""
    cfg, rid = run.cfg, run.rid
    result = run.result("done", metrics=metrics, extra=extra)
    # clean >= PGD-20 >= AA, checked by the evaluator: a violation points at gradient masking or a bug
    result["sanity"] = "violated" if metrics.get("violations") else "ok"
    if getattr(run.cls, "single_step", False):
        result["catastrophic_overfitting"] = catastrophic_overfitting(run.epoch_log)
        if result["catastrophic_overfitting"]:
            run.log(f"[{rid}] {cfg.method} catastrophic overfitting at epoch "
                    f"{result['catastrophic_overfitting']['epoch']}")
    result["peak_memory"] = run.peak_memory
    if run.world.active:  # how the run was split: not part of its meaning, recorded beside it
        result["processes"] = {"count": run.world.size, "batchnorm": run.bn_note}
    if run.world.main:
        run.store.write(rid, result)
    distributed.barrier()  # the result exists before any rank returns
    return result


def _tensors(obj: Any) -> Any:
    """The tensors of a nested state (plain values such as RiFT's MRC timing may differ between ranks)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items() if isinstance(v, (torch.Tensor, dict, list, tuple))}
    if isinstance(obj, (list, tuple)):
        return [_tensors(v) for v in obj if isinstance(v, (torch.Tensor, dict, list, tuple))]
    return None


def _train_epoch(cfg: RunConfig, method, loader: Loader, ema: EMA | None, epoch: int, device, rt: Runtime,
                 rid: str, step_fn: Callable, world: "distributed.World" = distributed.SINGLE) -> dict:
    """One epoch; ``step_fn`` (``bench.train.precision.make_step``) runs a batch at the run's precision."""
    method.net.train()
    if world.active:
        # Epoch-start hooks (RiFT's MRC, ...) draw the same numbers on every rank; the epoch's own draws (attack
        # starts) are independent per rank. Both depend only on (seed, epoch, rank): resumable on any world.
        torch.manual_seed(distributed.epoch_seed(cfg.seed, epoch, 0))
    method.on_epoch_start(epoch)
    if world.active:
        torch.manual_seed(distributed.epoch_seed(cfg.seed, epoch, world.rank) + 1)
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    lr = 0.0
    steps = len(loader)
    bar = None
    if rt.progress or (rt.progress is None and sys.stderr.isatty()):
        bar = tqdm(total=steps, desc=f"{cfg.method} {epoch + 1}/{cfg.train.epochs}", leave=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for step, batch in enumerate(loader.epoch(epoch)):
        lr = schedules.apply(cfg.train, method.optimizers, epoch, step, steps)
        out = step_fn(batch, StepInfo(epoch=epoch, step=step, global_step=epoch * steps + step))
        n = batch.y.shape[0]
        for k, v in out.items():  # summed on the device: no host synchronisation inside the epoch
            v = v.detach().float() * n
            sums[k] = sums[k] + v if k in sums else v
        seen += n
        if ema is not None:
            ema.update(method.net)
        if bar is not None:
            bar.update()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if world.active:  # the global batch's means: sums and counts over the ranks
        keys = sorted(sums)
        packed = torch.stack([sums[k].double() for k in keys] + [torch.tensor(float(seen), dtype=torch.float64,
                                                                              device=device)])
        torch.distributed.all_reduce(packed)
        sums, seen = {k: packed[i] for i, k in enumerate(keys)}, float(packed[-1])
    means = {k: float(v) / seen for k, v in sums.items()}
    bad = [k for k, v in means.items() if not math.isfinite(v)]
    if bad:
        raise RunFailed(f"non-finite {', '.join(bad)} in epoch {epoch + 1}", epoch + 1)
    return {"epoch": epoch + 1, "lr": lr, "seconds": seconds, **means}


def _result(cfg: RunConfig, rid: str, device, started: str, wall: tuple[float, int] | None, train_seconds: float,
            epoch_log: list, *, status: str, reason: str | None = None, metrics: dict | None = None,
            extra: dict | None = None, thread_counts: list[int] | None = None) -> dict:
    """A run's result file. ``wall`` is (perf_counter origin, processes so far), or None for a run that never
    started (its parent failed, or it crashed before training: the runner records it as failed)."""
    wall_seconds, processes = (time.perf_counter() - wall[0], wall[1]) if wall is not None else (0.0, 0)
    return {
        "run_id": rid, "status": status, "reason": reason, "config": to_dict(cfg), "metrics": metrics or {},
        "extra": extra or {}, "epochs": epoch_log, "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / max(1, len(epoch_log)),
        "precision_effective": numerics.effective_precision(cfg.train.precision, torch.device(device)),
        # wall_seconds over every process that ran it (wall_processes: 1 = never interrupted)
        "wall_seconds": wall_seconds, "wall_processes": processes, "started": started,
        "thread_counts": thread_counts or [],  # torch threads of each process that trained it; `threads`: this one's
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **provenance(device),
    }
