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
from typing import Any, Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from bench.core import compilation, determinism, distributed, memory, numerics, schedules
from bench.core.config import ConfigError, RunConfig, run_id
from bench.core.runtime import Runtime, set_threads
from bench.core.store import CorruptFile, Store, content_digest
from bench.data import Batch, DatasetInfo, Loader, Split, load_dataset
from bench.eval.evaluator import LAYOUTS, Evaluator
from bench.eval.indicators import IndicatorOptions
from bench.eval.l2 import L2Evaluator
from bench.models.architectures import build_model
from bench.train.compiling import compile_unless_declared
from bench.train.ema import EMA
from bench.train.parents import load_parent, save_model
from bench.train.precision import make_step
from bench.train.rerun import Rerun, archive_if_chosen
from bench.train.result import current_code, run_result
from bench.train import threat_evals
from bench.train.resume import CKPT_VERSION, load_checkpoint, resume_threads, save_checkpoint
from bench.train.tblog import EpochWriter
from bench.train.validation import validate_run
from methods import Context, StepInfo, build_method, get_method, make_hparams
from methods.base import Method


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


# -- the run's story ----------------------------------------------------------------------------------------------
def _autocast(device: torch.device, precision: str):
    """The numerics of a training step at ``precision``: TF32 policy and bf16/fp16 autocast (bench/core/numerics.py)."""
    return numerics.training_context(device, precision)


@dataclass(frozen=True)
class RunOptions:
    """How ``execute`` was asked to do a run, carried once from the caller down to the phases."""

    log: Callable[[str], None] = print
    stop_after_epoch: int | None = None  # tests: "interrupted" after that many epochs, the checkpoint written
    need_model: bool = False  # a child needs the exported model: a done run whose model file is missing is redone
    if_free: bool = False  # another runner holds the run's lock: {"status": "held"} at once instead of waiting
    rerun: Rerun = Rerun()  # `bench run --rerun`: a stored result it chooses is archived and the run trained anew


def execute(cfg: RunConfig, rt: Runtime, *, log: Callable[[str], None] = print,
            stop_after_epoch: int | None = None, need_model: bool = False, if_free: bool = False,
            rerun: Rerun = Rerun()) -> dict:
    """Train and evaluate one run (resuming if it was cut off); return its result, which is also stored.

    A run that is already done is returned as stored, unless ``need_model`` (it is the parent of a run still to
    do) and its exported model is missing: result files are committed but models/ is not, so a fresh clone has
    the one without the other. Then the run is done again (from its final checkpoint if that is still there,
    else from scratch) and its result rewritten. ``stop_after_epoch`` (tests) returns after that many epochs
    with the checkpoint written, as if the process had been killed there. ``if_free`` (the node-local pool,
    bench/grid/pool.py): when another runner holds the run's lock, return ``{"status": "held"}`` at once instead
    of waiting for it. ``rerun`` (``bench run --rerun``, bench/train/rerun.py): a stored result it chooses is
    archived and the run trained again from scratch.

    Data-parallel (bench/core/distributed.py): with ``rt.procs`` > 1 and no world yet, this process claims the
    run and that many local processes spawned here train it; a process that is already one rank of a world
    (torchrun, SLURM tasks) does its share directly. Either way the run id, the files and the result are those
    of a one-process run."""
    opts = RunOptions(log=log, stop_after_epoch=stop_after_epoch, need_model=need_model, if_free=if_free,
                      rerun=rerun)
    determinism.apply(rt.determinism, rt.torch_device())  # before any CUDA work (cuBLAS reads its workspace then)
    world = distributed.from_env()
    distributed.check_launch(rt.procs)
    validate_run(cfg, procs=max(rt.procs, world.size))
    spawn = rt.procs > 1 and not world.active
    with _world_joined(rt, world) as device, _claimed(cfg, rt, world, opts) as verdict:
        if verdict is not None and verdict.get("status") == "done" and world.main:
            # done already: the threat models asked for beyond its own evaluation, measured on its saved model
            with _run_numerics():
                return threat_evals.add_to_finished(cfg, rt, verdict, device, opts.log)
        if verdict is not None:  # done already, or held by another runner
            return verdict
        if spawn:
            return _spawn_world(cfg, rt, opts)
        return _train(cfg, rt, world, device, opts)


def _train(cfg: RunConfig, rt: Runtime, world: distributed.World, device: torch.device, opts: RunOptions) -> dict:
    """A claimed run's phases, in order: prepare, resume, train the epochs, finalize and export, evaluate, write."""
    with _run_numerics():
        run = Run.prepare(cfg, rt, world, device, opts)
        run.resume()
        try:
            interrupted = run.train_epochs()
        except RunFailed as e:
            return run.write_failed(e)
        if interrupted is not None:
            return interrupted
        net, final, extra = run.finalize_and_export()
        metrics = run.evaluate(net, final)
        return run.write_done(metrics, extra)


def _spawn_world(cfg: RunConfig, rt: Runtime, opts: RunOptions) -> dict:
    """``rt.procs`` fresh local processes train the run as one world (this process holds its claim meanwhile);
    their result is read back from the store."""
    distributed.spawn(_rank_main, (cfg, rt, opts.stop_after_epoch), rt.procs)
    got = Store(rt.results).read(run_id(cfg))
    if got is None or (opts.stop_after_epoch is not None and got.get("status") != "done"):
        return {"run_id": run_id(cfg), "status": "interrupted", "epoch": opts.stop_after_epoch}
    return got


def _rank_main(cfg: RunConfig, rt: Runtime, stop_after_epoch: int | None) -> None:
    """One spawned rank (module-level: pickled by torch.multiprocessing). The spawning process holds the run's
    claim and decided that it is to be trained."""
    world = distributed.from_env()
    opts = RunOptions(log=(lambda s: print(s, flush=True)) if world.main else (lambda s: None),
                      stop_after_epoch=stop_after_epoch)
    with _world_joined(rt, world) as device:
        _train(cfg, rt, world, device, opts)


@contextlib.contextmanager
def _world_joined(rt: Runtime, world: distributed.World) -> Iterator[torch.device]:
    """This process's device, inside the process group of ``world`` when the run has several processes."""
    device = _device(rt, world)
    if not world.active:
        yield device
        return
    distributed.init(world, device)
    try:
        yield device
    finally:
        distributed.shutdown()


@contextlib.contextmanager
def _claimed(cfg: RunConfig, rt: Runtime, world: distributed.World, opts: RunOptions) -> Iterator[dict | None]:
    """Rank 0 holds the run's lock (a second runner waits, then finds the run done) for as long as the run is
    being done, and decides; the other ranks follow its decision. Yields None when the run is to be trained,
    else what ``execute`` returns at once: the stored result of a done run, or ``{"status": "held"}`` (``if_free``,
    and another runner holds the lock)."""
    store = Store(rt.results)
    rid = run_id(cfg)
    with (store.lock(rid, blocking=not opts.if_free) if world.main else contextlib.nullcontext(True)) as got:
        verdict = None
        if world.main:
            verdict = _decide(cfg, store, rid, opts) if got else {"run_id": rid, "status": "held"}
        yield distributed.all_gather_objects(verdict)[0]


def _decide(cfg: RunConfig, store: Store, rid: str, opts: RunOptions) -> dict | None:
    """Rank 0's decision under the lock: the stored result of a done run, or None (train it)."""
    try:
        existing = store.read(rid)
    except CorruptFile as e:
        opts.log(f"result {e.path} is corrupt; redoing the run")
        return None
    archived = archive_if_chosen(cfg, store, opts.rerun, existing)
    if archived is not None:
        opts.log(f"[{rid}] {cfg.method}: --rerun {opts.rerun.what}: its {existing['status']} result is archived as "
                 f"{archived}; training it from scratch")
        return None
    if existing is None or existing["status"] != "done":
        return None
    if not (opts.need_model and not store.model_path(rid).exists()):
        return existing
    opts.log(f"[{rid}] {cfg.method} is done but its model file {store.model_path(rid)} is missing and a "
             "child needs it: training it again")
    return None


@contextlib.contextmanager
def _run_numerics() -> Iterator[None]:
    """fp32 everywhere outside the training steps (RiFT's module selection, finalize, export, the folding check):
    PyTorch's default lets cuDNN convolutions run in TF32 on Ampere and newer GPUs; the steps set their own
    precision inside (training_context). A run may change the process's torch thread count (``--threads``, or
    a resume that takes its checkpoint's): the next run of the grid starts from the count the process had."""
    threads_before = torch.get_num_threads()
    try:
        with numerics.exact_fp32():
            yield
    finally:
        torch.set_num_threads(threads_before)


def _device(rt: Runtime, world: distributed.World) -> torch.device:
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


# -- the run in progress ------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """What the epochs have done so far: restored from the checkpoint on a resume, written into it after each
    epoch and into the result at the end."""

    # Wall time is the run's, over every process that worked on it in turn: a resumed run moves its origin back by
    # the wall seconds its checkpoint carries (work lost between that checkpoint and a kill is not counted).
    wall0: float = field(default_factory=time.perf_counter)
    wall_processes: int = 1
    thread_counts: list[int] = field(default_factory=list)  # torch threads of each process, in turn (resume_threads)
    start_epoch: int = 0
    epoch_log: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


@dataclass
class Run:
    """One run in progress: what ``prepare`` builds, ``resume`` restores, ``train_epochs`` advances and the last
    phases export, evaluate and write."""

    cfg: RunConfig
    rt: Runtime
    world: distributed.World
    opts: RunOptions
    store: Store
    rid: str
    device: torch.device
    started: str
    info: DatasetInfo
    test_split: Split
    parent_model: nn.Module | None
    loader: Loader
    method: Method
    ema: EMA | None
    step_fn: Callable[[Batch, StepInfo], dict]
    evaluator: Evaluator
    corrupted: Any  # the common-corruption set to measure the model on (bench.train.threat_evals), or None
    bn_note: str | None
    progress: Progress
    code: dict | None  # the fingerprint of the code that trains and evaluates it, recorded in its result
    peak_memory: dict = field(default_factory=dict)  # {"train", "eval"}: bench.core.memory.peak of each phase

    @property
    def log(self) -> Callable[[str], None]:
        return self.opts.log

    @property
    def net(self) -> nn.Module:
        """The network that is probed, exported and evaluated: the EMA when the run keeps one, else the live one."""
        return self.ema.net if self.ema is not None else self.method.net

    def result(self, status: str, **kw: Any) -> dict:
        p = self.progress
        return run_result(self.cfg, self.rid, self.device, self.started, (p.wall0, p.wall_processes),
                          p.train_seconds, p.epoch_log, status=status, thread_counts=p.thread_counts,
                          code=self.code, **kw)

    @classmethod
    def prepare(cls, cfg: RunConfig, rt: Runtime, world: distributed.World, device: torch.device,
                opts: RunOptions) -> Run:
        """Threads, data, the parent, the model (from the parent when fine-tuning), the method with its
        optimizers, the EMA, the per-batch step, the evaluator."""
        threads = rt.threads
        if threads is None and world.active and rt.torch_device().type == "cpu":  # share the cores between ranks
            threads = max(1, (os.cpu_count() or 1) // world.size)
        set_threads(threads)
        store, rid = Store(rt.results), run_id(cfg)
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        progress = Progress(wall0=time.perf_counter())
        method_cls = get_method(cfg.method)
        hp = make_hparams(cfg.method, cfg.hparams)

        train_split, test_split, info = load_dataset(cfg.dataset, rt.data_root, rt.cache_dir)
        if cfg.train.n_train:
            train_split = train_split.sample(cfg.train.n_train)
        torch.manual_seed(cfg.seed)
        no_sync = method_cls.batchnorm_sync_problem(hp)
        model, parent_model = _model_and_parent(cfg, method_cls, store, info, device, world, rt, no_sync)
        # channels_last is faster for convolutions on GPUs and on this CPU alike (PGD-10 step of the small CNN:
        # 1.6x on 2 cores); evaluation works on its own fp32 copy (bench/eval/evaluator.py, channels_last by default).
        model = model.to(device).to(memory_format=torch.channels_last)
        bn_note = None
        if world.active:
            model, bn_note = distributed.sync_batchnorm(model, device, refuse=no_sync)

        loader = Loader(train_split, cfg.train.batch_size, device=device, shuffle=True, augment=cfg.train.augment,
                        seed=cfg.seed, drop_last=method_cls.drop_last, rank=world.rank, world_size=world.size)
        ctx = Context(info=info, eps=cfg.eps, device=device, epochs=cfg.train.epochs, steps_per_epoch=len(loader),
                      seed=cfg.seed, train=train_split, parent_model=parent_model, train_cfg=cfg.train, norm=cfg.norm)
        method = build_method(method_cls, model, hp, ctx, cfg.train, device)
        if world.active:  # gradients averaged over the ranks before every optimizer step, whoever calls it
            distributed.average_gradients_before_steps(method.optimizers)
        ema = EMA(method.net) if cfg.train.ema else None  # before compiling: the EMA copy stays an eager module
        # fp16: refused here or given a scaler; cuDNN benchmarks only under the "fast" determinism policy
        step_fn = make_step(method, cfg.train.precision, device, benchmark=determinism.cudnn_benchmark())
        if rt.compile:  # a runtime option: a method whose step cannot be compiled trains eagerly (same numbers)
            why = compile_unless_declared(method)
            if why is not None:
                opts.log(f"[{rid}] {cfg.method}: training not compiled: {why}")
        # the run's own evaluation is in the norm it trained under (L2Evaluator: the indicators are L-inf's)
        evaluator_cls = L2Evaluator if threat_evals.own_norm(cfg) == "l2" else Evaluator
        evaluator = evaluator_cls(test_split, cfg.eval, cfg.eps, device, seed=cfg.seed,
                                  memory_format=LAYOUTS[rt.eval_layout], fold_bn=rt.eval_fold_bn, world=world,
                                  checks=IndicatorOptions(enabled=rt.eval_checks, n_costly=rt.eval_checks_n))
        corrupted = threat_evals.corruption_set(cfg, rt, test_split, info, opts.log) if world.main else None
        return cls(cfg=cfg, rt=rt, world=world, opts=opts, store=store, rid=rid, device=device, started=started,
                   info=info, test_split=test_split, parent_model=parent_model, loader=loader, method=method,
                   ema=ema, step_fn=step_fn, evaluator=evaluator, corrupted=corrupted, bn_note=bn_note,
                   progress=progress,
                   code=current_code(cfg.method))

    def resume(self) -> None:
        """Restore the last good end-of-epoch checkpoint, if any: net, optimizers, method state, scaler, EMA, RNG,
        log, the wall time and thread counts so far."""
        ckpt = load_checkpoint(self.store, self.rid, self.log)
        method, ema, device, p = self.method, self.ema, self.device, self.progress
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
            p.start_epoch, p.epoch_log, p.train_seconds = ckpt["epoch"], ckpt["log"], ckpt["train_seconds"]
            p.wall0 -= ckpt.get("wall_seconds", 0.0)  # absent in checkpoints written before it was carried over
            p.wall_processes = ckpt.get("wall_processes", 1) + 1
            resume_threads(ckpt, self.rt, device, self.world, self.log, self.rid)
            p.thread_counts = list(ckpt.get("thread_counts") or [])  # absent in checkpoints written before it was kept
            self.log(f"[{self.rid}] resuming {self.cfg.method} at epoch {p.start_epoch + 1}/{self.cfg.train.epochs}")
        p.thread_counts.append(torch.get_num_threads())

    def train_epochs(self) -> dict | None:
        """The remaining epochs, each followed by the ranks' agreement, the per-epoch probes and a checkpoint.
        Returns the "interrupted" result when ``stop_after_epoch`` (tests) cuts the run short, else None; the
        training phase's peak memory is recorded."""
        cfg, world, rid, p = self.cfg, self.world, self.rid, self.progress
        stop_after_epoch = self.opts.stop_after_epoch
        reset = memory.reset(self.device)
        if p.start_epoch < cfg.train.epochs:
            numerics.warn_if_slow(cfg.train.precision, self.device)  # one line on stderr: bf16 on a CPU without bf16
        curves = EpochWriter(self.rt.results, cfg.method, rid, p.start_epoch)  # TensorBoard view of the log
        try:
            for epoch in range(p.start_epoch, cfg.train.epochs):
                entry = _train_epoch(cfg, self.method, self.loader, self.ema, epoch, self.device, self.rt,
                                     self.step_fn, world)
                p.train_seconds += entry["seconds"]
                if world.active:
                    self.sync_ranks(epoch)
                entry.update(self.epoch_probes())
                p.epoch_log.append(entry)
                if world.main:  # one writer; the other ranks wait for the file before going on
                    self.save_epoch_checkpoint(epoch)
                    curves.write(entry)
                distributed.barrier()
                self.log(f"[{rid}] {cfg.method} epoch {epoch + 1}/{cfg.train.epochs} "
                         + " ".join(f"{k} {v:.4g}" for k, v in entry.items() if isinstance(v, float)))
                if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.train.epochs:
                    return {"run_id": rid, "status": "interrupted", "epoch": epoch + 1}
        finally:
            curves.close()
        self.peak_memory["train"] = memory.peak(self.device, reset)
        return None

    def sync_ranks(self, epoch: int) -> None:
        """The state every rank must agree on before the checkpoint and the probes."""
        method, ema, world = self.method, self.ema, self.world
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

    def epoch_probes(self) -> dict:
        """Per-epoch measurements on the model that is evaluated (the EMA when the run keeps one, as at the end):
        Figure 1a's feature gap on the features the method classifies from, and single-step methods' FGSM / PGD
        accuracy (catastrophic overfitting). Their time is evaluation time, not training time."""
        cfg, method, evaluator = self.cfg, self.method, self.evaluator
        single_step = getattr(type(method), "single_step", False)
        out: dict = {}
        probe0 = time.perf_counter()
        net = self.net
        if cfg.eval.feature_gap_every_epoch:
            out.update(evaluator.feature_gap_stats(method.export(net), features=method.gap_features(net)))
        if single_step and cfg.eval.n_gap:
            out["co_fgsm"], out["co_pgd"] = evaluator.fgsm_pgd_accuracy(method.export(net))
        if cfg.eval.feature_gap_every_epoch or (single_step and cfg.eval.n_gap):
            out["probe_seconds"] = time.perf_counter() - probe0
        return out

    def save_epoch_checkpoint(self, epoch: int) -> None:
        method, ema, device, p = self.method, self.ema, self.device, self.progress
        save_checkpoint(self.store, self.rid, {
            "version": CKPT_VERSION, "run_id": self.rid, "epoch": epoch + 1, "log": p.epoch_log,
            "train_seconds": p.train_seconds, "wall_seconds": time.perf_counter() - p.wall0,
            "wall_processes": p.wall_processes, "thread_counts": p.thread_counts, "net": method.net.state_dict(),
            "optimizers": [o.state_dict() for o in method.optimizers], "method": method.state_dict(),
            "grad_scaler": method.grad_scaler.state_dict() if method.grad_scaler is not None else None,
            "ema": ema.net.state_dict() if ema is not None else None, "ema_t": ema.t if ema else 0,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})

    def write_failed(self, e: RunFailed) -> dict:
        result = self.result("failed", reason=str(e))
        result["failed_epoch"] = e.epoch
        if self.world.main:
            self.store.write(self.rid, result)
        self.log(f"[{self.rid}] {self.cfg.method} FAILED: {e}")
        return result

    def finalize_and_export(self) -> tuple[nn.Module, nn.Module, dict]:
        """The method's post-training stage (RiFT's interpolation), then the plain exported model, saved for the
        children. Returns (the net evaluated: EMA or live, the exported model, result fields)."""
        cfg, method = self.cfg, self.method
        net = self.net
        if self.world.active:  # the plain model a one-process run exports (evaluation folds it the same way)
            distributed.plain_batchnorm(net)
        extra = method.finalize(net, self.evaluator) or {}
        if cfg.parent_file is not None:  # the user's own model: its clean accuracy beside its children's
            extra["parent_file"] = {"path": cfg.parent_file, "digest": cfg.parent_digest,
                                    "clean": self.evaluator.accuracy(self.parent_model), "n_clean": cfg.eval.n_clean}
        final = method.export(net)
        if self.world.main:
            save_model(self.store, self.rid, cfg, final, self.info.num_classes, self.info.channels)
        return net, final, extra

    def evaluate(self, net: nn.Module, final: nn.Module) -> dict:
        """Clean, PGD-20, AutoAttack and the feature gap of the exported model, plus the method's own metrics.
        Finished evaluation chunks live beside the checkpoints: a run killed mid-AutoAttack resumes there. The
        evaluation's peak memory is recorded."""
        cfg, method, rid = self.cfg, self.method, self.rid
        reset = memory.reset(self.device)
        with compilation.compiling(self.rt.compile):  # --compile: the evaluated fp32 copy is compiled too
            metrics = self.evaluator.run(final, log=lambda s: self.log(f"[{rid}] {cfg.method} {s}"),
                                         features=method.gap_features(net), state_dir=self.store.ckpt_dir(rid))
        metrics.update(method.extra_metrics(net, self.test_split, self.evaluator))
        which = threat_evals.missing(cfg, self.rt, metrics)
        if which and self.world.main:  # the threat models asked for beyond the run's own (one process measures)
            metrics.update(threat_evals.measure(cfg, self.rt, final, which, test=self.test_split,
                                                corrupted=self.corrupted, device=self.device,
                                                log=lambda s: self.log(f"[{rid}] {cfg.method} {s}"),
                                                state_dir=self.store.ckpt_dir(rid)))
        self.peak_memory["eval"] = memory.peak(self.device, reset)
        return metrics

    def write_done(self, metrics: dict, extra: dict) -> dict:
        """The result, checked and written last, atomically: "done" means everything before it exists."""
        cfg, rid = self.cfg, self.rid
        result = self.result("done", metrics=metrics, extra=extra)
        # clean >= PGD-20 >= AA, checked by the evaluator: a violation points at gradient masking or a bug
        l2_violations = (metrics.get("l2") or {}).get("violations")
        result["sanity"] = "violated" if metrics.get("violations") or l2_violations else "ok"
        if getattr(type(self.method), "single_step", False):
            result["catastrophic_overfitting"] = catastrophic_overfitting(self.progress.epoch_log)
            if result["catastrophic_overfitting"]:
                self.log(f"[{rid}] {cfg.method} catastrophic overfitting at epoch "
                         f"{result['catastrophic_overfitting']['epoch']}")
        result["peak_memory"] = self.peak_memory
        if self.world.active:  # how the run was split: not part of its meaning, recorded beside it
            result["processes"] = {"count": self.world.size, "batchnorm": self.bn_note}
        if self.world.main:
            self.store.write(rid, result)
        distributed.barrier()  # the result exists before any rank returns
        return result


def _model_and_parent(cfg: RunConfig, cls: type[Method], store: Store, info: DatasetInfo, device: torch.device,
                      world: distributed.World, rt: Runtime,
                      no_sync: str | None) -> tuple[nn.Module, nn.Module | None]:
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


def _tensors(obj: Any) -> Any:
    """The tensors of a nested state (plain values such as RiFT's MRC timing may differ between ranks)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items() if isinstance(v, (torch.Tensor, dict, list, tuple))}
    if isinstance(obj, (list, tuple)):
        return [_tensors(v) for v in obj if isinstance(v, (torch.Tensor, dict, list, tuple))]
    return None


def _train_epoch(cfg: RunConfig, method: Method, loader: Loader, ema: EMA | None, epoch: int, device: torch.device,
                 rt: Runtime, step_fn: Callable[[Batch, StepInfo], dict], world: distributed.World) -> dict:
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
