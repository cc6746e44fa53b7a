"""One run on several processes: data-parallel training through torch.distributed (NCCL on GPUs, gloo on CPUs).

How a run is split (``bench.train.loop`` does it; nothing here knows about methods):

* **Data.** Every rank builds the same epoch order and augmentation (``bench.data.loader.Loader``: they depend only on
  (seed, epoch)) and takes its contiguous share of each global batch (rank r of k: positions
  ``[r*B/k, (r+1)*B/k)`` of batch B): the global batch is the recipe's, and a run resumed on another number of
  processes sees the same examples in the same batches. ``Batch.offset`` is a shard's first position in its batch.
* **Gradients.** Before every ``optimizer.step()``, whichever method code calls it (the base step, AFD's three
  as-run steps, Free-AT's replays, RiFT's MRC ascent), a step pre-hook (``torch.optim.Optimizer.register_step_pre_hook``)
  averages the gradients of that optimizer's parameters over the ranks (``all_reduce``, coalesced). With equal
  shards of mean-reduced losses this is the gradient of the global batch's loss. Gradient accumulated over
  several steps (AFD writes weight decay into ``p.grad`` between its steps) stays right: the part already
  averaged is the same on every rank, and averaging is linear.
* **BatchNorm.** On CUDA the model's BatchNorm layers become ``nn.SyncBatchNorm`` (batch statistics of the global
  batch: the single-process numbers up to reduction order). gloo has no SyncBatchNorm (torch runs it on GPUs
  only): on CPUs each rank normalises with its shard's statistics (B/k examples), and the running statistics
  (model and EMA) are averaged over the ranks at the end of every epoch, before the checkpoint and the
  evaluation. That is what differs from one process on a CPU; the equality tests state the tolerance it needs.
* **Randomness.** Attack starts and other draws from the global RNG are reseeded at every epoch from
  (seed, epoch, rank): ranks draw independent noise, and a resumed run draws what the uninterrupted run drew, on
  any number of processes. (One process keeps its historical RNG stream, saved in the checkpoint.)
* **Method state.** ``Method.sync_state(world)`` runs on every rank at each epoch's end: per-example buffers
  (ATAS) and per-position buffers (Free-AT) are made whole on every rank (``merge_latest``: each row from its latest writer). Batch-level
  decisions (ARREST's replay switch) use ``global_mean``, so every rank takes the same branch.
* **Files.** Rank 0 takes the run's lock and writes checkpoints, the exported model and the result; the others
  wait at a barrier, and every rank reads the checkpoint on resume.

``World`` is the rank's view; ``from_env`` reads torchrun's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) or SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``,
``SLURM_LOCALID``, the first host of ``SLURM_JOB_NODELIST``); ``spawn`` starts k local processes.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bench.core.config import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, lo: int, hi: int) -> tuple[int, int]:
        """This rank's contiguous share of positions [lo, hi) (sizes differ by at most one)."""
        n = hi - lo
        return lo + n * self.rank // self.size, lo + n * (self.rank + 1) // self.size


SINGLE = World()


def from_env(env: dict[str, str] | None = None) -> World:
    """The world of this process from torchrun's or SLURM's variables; one process when neither says more.

    Under SLURM the world is the current step's tasks (``SLURM_STEP_NUM_TASKS``, set by ``srun``), not the job's
    (``SLURM_NTASKS``): a process started by an ``sbatch --ntasks=4`` script without ``srun`` is alone, and taking
    it for rank 0 of 4 would wait forever for three ranks that never start. Such a process that was asked for
    several processes per run is refused by :func:`check_launch`."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    step_tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if step_tasks > 1 and "SLURM_PROCID" in env:
        return World(int(env["SLURM_PROCID"]), step_tasks, int(env.get("SLURM_LOCALID", 0)))
    return SINGLE


def check_launch(procs: int, env: dict[str, str] | None = None) -> None:
    """ConfigError (one line) when ``procs`` processes per run are asked for inside a SLURM job of several tasks
    whose tasks were not started by ``srun``: the world cannot form (the job's other tasks never run)."""
    env = os.environ if env is None else env
    job_tasks = int(env.get("SLURM_NTASKS", "1") or 1)
    step_tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if procs > 1 and job_tasks > 1 and step_tasks != job_tasks and "WORLD_SIZE" not in env:
        raise ConfigError(f"{procs} processes per run asked for in a SLURM job of {job_tasks} tasks, but this "
                          f"process is one of a {step_tasks}-task step: start it with `srun` (one task per GPU), "
                          "or give the job one task and let --gpus-per-run start the processes")


def cuda_device(world: World, count: int | None = None) -> torch.device:
    """The GPU of this rank: ``cuda:<local rank mod visible devices>``. A cluster that binds one GPU per task
    (``--gpus-per-task``, ``--gpu-bind``, per-task cgroups) shows every task its GPU as ``cuda:0``; one that does
    not shows all of them, numbered by local rank."""
    count = torch.cuda.device_count() if count is None else count
    if count < 1:
        raise ConfigError("a CUDA device was asked for but none is visible (CUDA_VISIBLE_DEVICES?)")
    return torch.device("cuda", world.local_rank % count)


def slurm_master(env: dict[str, str] | None = None) -> str:
    """The first host of the job's node list (``scontrol show hostnames`` without calling it: node[1-3,5] -> node1)."""
    env = os.environ if env is None else env
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    head = nodes.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        first = rest.split(",")[0].split("-")[0].rstrip("]")
        return prefix + first
    return head


# Control messages (the run's decision, barriers) travel on a gloo group with a long timeout: rank 0 may wait for
# the run's lock, write a checkpoint or evaluate while the others wait, and NCCL's watchdog would abort a rank that
# waits in an NCCL collective longer than its timeout (10 minutes by default).
CONTROL_TIMEOUT_S = 7 * 24 * 3600
_CONTROL: Any = None


def _timeout() -> Any:
    """The data group's timeout: torch's default, or $BENCH_DIST_TIMEOUT_S (tests shorten it to show that control
    messages do not depend on it)."""
    import datetime

    s = os.environ.get("BENCH_DIST_TIMEOUT_S")
    return datetime.timedelta(seconds=float(s)) if s else None


def init(world: World, device: torch.device, env: dict[str, str] | None = None) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) through MASTER_ADDR/MASTER_PORT, and the gloo control
    group (see CONTROL_TIMEOUT_S)."""
    if not world.active or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed: run with one process per run")
    env = os.environ if env is None else env
    if "MASTER_ADDR" not in env:
        os.environ["MASTER_ADDR"] = slurm_master(env)
    if "MASTER_PORT" not in env:
        # SLURM: a port derived from the job id, the same on every task and unlikely to clash between jobs
        os.environ["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    import datetime

    global _CONTROL
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = _timeout()
    dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                            **({"timeout": timeout} if timeout is not None else {}))
    _CONTROL = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=CONTROL_TIMEOUT_S))


def shutdown() -> None:
    global _CONTROL
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL = None


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank, on the control group (no NCCL watchdog)."""
    if _group_active():
        dist.barrier(group=_CONTROL)


# -- gradients and buffers -------------------------------------------------------------------------------------
def _all_reduce_mean(tensors: list[Tensor]) -> None:
    """Average tensors over the ranks in place, one flat all_reduce per dtype (coalesced)."""
    k = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat.div_(k)
        off = 0
        for t in group:
            t.copy_(flat[off:off + t.numel()].view_as(t))
            off += t.numel()


def average_gradients_before_steps(optimizers: Iterable[torch.optim.Optimizer]) -> list[Any]:
    """Register the pre-step hook that averages each optimizer's gradients over the ranks; returns the handles.
    Every rank must step the same optimizers in the same order with gradients on the same parameters, which
    holds when every rank runs the same method code on its shard."""
    handles = []

    def hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            _all_reduce_mean(grads)
        return None

    for opt in optimizers:
        handles.append(opt.register_step_pre_hook(hook))
    return handles


def average_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks; integer ones are equal."""
    if not _group_active():
        return
    bufs = [b for b in module.buffers() if b.dtype.is_floating_point]
    if bufs:
        with torch.no_grad():
            _all_reduce_mean(bufs)


def sync_batchnorm(model: nn.Module, device: torch.device, refuse: str | None = None) -> tuple[nn.Module, str]:
    """(model, how BatchNorm statistics are shared): SyncBatchNorm on CUDA; per rank on CPU (see module doc), and
    on CUDA too when ``refuse`` says why the method cannot use SyncBatchNorm (a double backward through it is not
    implemented: pytorch issue 61222)."""
    if device.type == "cuda" and refuse is None:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), "synchronised (SyncBatchNorm)"
    if device.type == "cuda":
        return model, f"per rank ({refuse}); running statistics averaged every epoch"
    return model, "per rank (gloo has no SyncBatchNorm); running statistics averaged every epoch"


def plain_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every SyncBatchNorm turned back into a BatchNorm2d (the only BatchNorm the models have),
    the same parameters, running statistics and mode (in place; torch has no inverse of
    convert_sync_batchnorm): the exported model of a multi-GPU run is the plain model a one-process run exports,
    so evaluation folds it the same way."""
    for name, child in list(module.named_children()):
        if not isinstance(child, nn.SyncBatchNorm):
            plain_batchnorm(child)
            continue
        plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
        plain.load_state_dict(child.state_dict())
        plain.to(next(iter(child.state_dict().values())).device).train(child.training)
        if child.affine:
            plain.weight.requires_grad_(child.weight.requires_grad)
            plain.bias.requires_grad_(child.bias.requires_grad)
        setattr(module, name, plain)
    return module


# -- method helpers ----------------------------------------------------------------------------------------------
def global_mean(value: Tensor, n: int) -> Tensor:
    """Mean over the global batch of a per-shard mean of ``n`` examples (identity on one process): batch-level
    decisions then come out the same on every rank."""
    if not _group_active():
        return value
    pair = torch.stack([value.detach().double() * n, torch.tensor(float(n), dtype=torch.float64,
                                                                   device=value.device)])
    dist.all_reduce(pair)
    return (pair[0] / pair[1]).to(value.dtype)


def merge_latest(buffer: Tensor, stamp: Tensor) -> None:
    """Make a buffer whole on every rank: ``stamp`` (float, one per row of ``buffer``) holds the global step at
    which this rank last wrote each row (-1: not written since the last merge). Every row takes the value of
    its latest writer, as one process writing in step order would have left it; rows nobody wrote keep their
    value. Stamps are reset to -1 afterwards. Within one step no two ranks write the same row (their shards
    are disjoint), so the latest writer is unique."""
    if not _group_active():
        stamp.fill_(-1)
        return
    latest = stamp.clone()
    dist.all_reduce(latest, op=dist.ReduceOp.MAX)
    mine = ((stamp == latest) & (latest >= 0)).view(-1, *([1] * (buffer.dim() - 1)))
    summed = torch.where(mine, buffer, torch.zeros((), dtype=buffer.dtype, device=buffer.device))
    dist.all_reduce(summed)
    written = (latest >= 0).view(-1, *([1] * (buffer.dim() - 1)))
    buffer.copy_(torch.where(written, summed, buffer))
    stamp.fill_(-1)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, over the control group."""
    if not _group_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_CONTROL)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity on one process): a decision taken from floats that could
    come out differently on another rank (RiFT's module, epoch and interpolation weight) is taken once."""
    if not _group_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_CONTROL)
    return box[0]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729 + 17) % (1 << 62)


# -- launching ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank))
    fn(*args)


def spawn(fn: Callable, args: tuple, procs: int) -> None:
    """Run ``fn(*args)`` in ``procs`` fresh local processes that form one world (torch.multiprocessing); raises
    if any of them fails."""
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(procs, free_port(), fn, args), nprocs=procs, join=True, start_method="spawn")
