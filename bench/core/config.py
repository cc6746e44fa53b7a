"""Run configurations: frozen, keyword-only dataclasses whose canonical JSON names a run.

A run is one method trained on one model and data set with one schedule, then evaluated:
``RunConfig(method, hparams, model, dataset, train, eval, seed, eps, parent, norm)``. Its identity
(``run_id``) is a short hash of its canonical JSON, so the same run asked for by two grids is
trained once, and a parent (the natural model behind vAFT, the PGD-AT model behind RiFT) is a
run of its own, nested in its children's configs.

Paths, device, worker counts and precision of evaluation are *runtime* settings
(``bench.core.runtime.Runtime``): they do not change what a run means and stay out of the hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

# Bump when the meaning of a config field changes, so old result files are not mistaken for new ones.
SCHEMA_VERSION = 1

EPS_8 = 8 / 255
# The threat model a run trains under: its attack's norm. "linf" (the paper's; ``eps`` in (0, 1] per pixel) or "l2"
# (``eps`` the radius over the whole image in [0, 1] pixels, e.g. bench.data.L2_EPS).
NORMS = ("linf", "l2")
DEFAULT_NORM = "linf"


def parse_fraction(text: str) -> float:
    """'8/255' -> 0.0313..., '0.5' -> 0.5 (ValueError otherwise): how radii and step sizes are written."""
    from fractions import Fraction

    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a number or a fraction: {text!r}") from None


def parse_eps(value: Any, what: str = "eps") -> float:
    """An L-inf radius in (0, 1] pixels from a number or a fraction like "8/255" (the command line, grid files,
    ``bench eval``); ConfigError in one line naming ``what`` otherwise."""
    eps = value
    if isinstance(value, str):
        try:
            eps = parse_fraction(value)
        except ValueError:
            raise ConfigError(f"{what} {value!r}: expected a number or a fraction like 8/255") from None
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ConfigError(f"{what} {value!r}: expected a number or a fraction like 8/255")
    if not 0 < eps <= 1:
        hint = " (pixels are in [0, 1]: write 8/255, not 8)" if eps > 1 else " (pixels are in [0, 1]: write 8/255)"
        raise ConfigError(f"{what} must be in (0, 1]{hint}, got {value}")
    return float(eps)

CYCLIC_BASE_MOMENTUM = 0.8  # torch.optim.lr_scheduler.CyclicLR(base_momentum=0.8) default
SCHEDULES = ("constant", "piecewise", "aft", "cosine", "cyclic")
# Training precision (bench/core/numerics.py): fp32 = true fp32 (TF32 off, also on GPUs); tf32 = TF32 convolutions and
# matmuls allowed on CUDA (on a CPU the same as fp32: the result records precision_effective "fp32"); bf16 =
# autocast bfloat16; fp16 = autocast float16 with a gradient scaler (GPUs without bf16; methods whose update goes
# through the scaler only). Evaluation is always true fp32.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


class ConfigError(ValueError):
    """A config that cannot be run; the message is one line saying what is wrong and how to fix it."""


# Bounds that only a typo crosses (10^8 epochs, a batch of 10^9 images): refused while a config is checked, before
# a grid is expanded or anything allocated, with the number that fits in the line. The paper's longest recipe
# trains 200 epochs; ten thousand is still days of a small CNN.
MAX_EPOCHS = 10_000
IMAGE_BYTES = 3 * 32 * 32 * 4  # one 32x32 RGB image in fp32: a step's input; activations and larger images need more


def machine_memory() -> int:
    """Bytes of this machine's memory (0 where the OS does not say: then no batch is refused for its size)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_batch(what: str, batch: int, image_bytes: int = IMAGE_BYTES) -> None:
    """ConfigError when ``batch`` images of ``image_bytes`` each fill more than this machine's memory."""
    mem = machine_memory()
    if mem and batch * image_bytes > mem:
        raise ConfigError(f"{what} must be at most {mem // image_bytes} on this machine (got {batch}): that many "
                          f"images alone are {batch * image_bytes / 2**30:,.0f} GiB, the machine has "
                          f"{mem / 2**30:,.0f} GiB")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimizer and schedule. Defaults are overridden by each method's paper recipe."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    # "piecewise": lr * gamma**k after each milestone, milestones given as FRACTIONS of the epochs so a
    # recipe keeps its shape when a grid scales the epochs down (110 epochs x0.1 at 100, 105 ->
    # (100/110, 105/110)). "aft": the AFT schedule of ARREST/AFD code, also by fraction (see schedules.py).
    # "cyclic": per-iteration triangle 0 -> lr at `cyclic_peak` -> 0 (FGSM-GA).
    schedule: str = "piecewise"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    cyclic_peak: float = 0.4
    # "cyclic" only: torch's CyclicLR with its default cycle_momentum=True (Free-AT, locuslab/fast_adversarial
    # train_free.py): momentum goes from `momentum` at lr 0 down to CYCLIC_BASE_MOMENTUM at the lr peak and back.
    cycle_momentum: bool = False
    ema: bool = False  # evaluate an EMA of weights and buffers, decay min(0.999, (t+1)/(t+10))
    precision: str = "fp32"  # training precision (PRECISIONS); evaluation is always true fp32
    augment: bool = True  # random crop (pad 4) + horizontal flip
    n_train: int = 0  # train on a fixed random subset of this many images (0: all); CPU-scale grids

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1 (got {self.epochs})")
        if self.epochs > MAX_EPOCHS:
            raise ConfigError(f"train.epochs must be <= {MAX_EPOCHS} (got {self.epochs}): a typo? the paper's "
                              "recipes train 10 to 200")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1 (got {self.batch_size})")
        check_batch("train.batch_size", self.batch_size)
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ConfigError(f"train.lr must be a finite number >= 0 (got {self.lr})")
        if self.n_train < 0:
            raise ConfigError(f"train.n_train must be >= 0 (0 = the whole training split), got {self.n_train}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0 (got {self.weight_decay})")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown train.schedule '{self.schedule}'; known: {', '.join(SCHEDULES)}")
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ConfigError(f"train.milestones are fractions of the epochs in (0, 1] (got {self.milestones})")
        if self.cycle_momentum and (self.schedule != "cyclic" or not CYCLIC_BASE_MOMENTUM <= self.momentum <= 1):
            raise ConfigError(f"train.cycle_momentum needs schedule 'cyclic' and momentum in "
                              f"[{CYCLIC_BASE_MOMENTUM}, 1] (got '{self.schedule}', {self.momentum})")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown train.precision '{self.precision}'; known: {', '.join(PRECISIONS)}")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluation protocol of the paper (TRADES pgd_attack_cifar10.py, AFD tl+sl.py): PGD-20, step 0.003,
    random start, eps 8/255, model in eval mode; AutoAttack standard, per-example worst case."""

    n_clean: int = 10_000  # test images for clean accuracy (first n of the test split)
    n_pgd: int = 10_000
    n_aa: int = 10_000  # 0 disables AutoAttack
    pgd_steps: int = 20
    pgd_step_size: float = 0.003
    # TRADES pgd_whitebox (pgd_attack_cifar10.py) and AFD tl+sl.py take PGD's first gradient at the UNCLAMPED
    # random start x + U(-eps, eps); True clamps it to [0, 1] first (bench.eval.attacks.pgd). Measured on a small CNN
    # after 2 PGD-AT epochs (CIFAR-10 JPEG, 1,000 test images, same seed): 10.2% of the x_adv pixels differ, 0 of
    # 1,000 robust flags flip (seed 0 vs seed 1 flips 1). pgd_whitebox's mean CE vs our summed CE: 0 sign changes.
    pgd_clamp_start: bool = False
    batch_size: int = 500
    feature_gap_every_epoch: bool = False  # Figure 1a: gap measured after every epoch
    n_gap: int = 1_000

    def validate(self) -> None:
        for name in ("n_clean", "n_pgd", "n_aa", "n_gap"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval.{name} must be >= 0 (got {getattr(self, name)})")
        if self.n_clean < 1:
            raise ConfigError("eval.n_clean must be >= 1")
        if self.pgd_steps < 1:
            raise ConfigError(f"eval.pgd_steps must be >= 1 (got {self.pgd_steps})")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1 (got {self.batch_size})")
        check_batch("eval.batch_size", self.batch_size)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    method: str
    # The method's FULL resolved hyperparameters as sorted (name, value) pairs: the hash then changes when a
    # default changes in code, so a result is never attributed to hyperparameters it was not trained with.
    hparams: tuple[tuple[str, Any], ...] = ()
    model: str = "small_cnn"
    dataset: str = "digits"
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    eps: float = EPS_8
    parent: "RunConfig | None" = None
    # A model from RobustBench's zoo used as the parent instead of a trained run ("zoo:<name>").
    parent_zoo: str | None = None
    # The user's own pre-trained model as the parent: a checkpoint file of this run's architecture
    # (bench.core.checkpoints formats). Its content digest is part of the run's identity (a changed file is a new
    # run); its path is not (moving the file does not), so canonical_json leaves the path out.
    parent_file: str | None = None
    parent_digest: str | None = None
    # The norm of the run's threat model (NORMS). Left out of to_dict (so of canonical_json) when it is the default:
    # the run ids of every L-inf run stay what they were before runs had a norm.
    norm: str = DEFAULT_NORM

    @property
    def hp(self) -> dict[str, Any]:
        return dict(self.hparams)

    def validate(self) -> None:
        check_norm_eps(self.norm, self.eps)
        self.train.validate()
        self.eval.validate()
        if self.parent is not None:
            self.parent.validate()
        if sum(x is not None for x in (self.parent, self.parent_zoo, self.parent_file)) > 1:
            raise ConfigError("a run has one parent: a trained run, a zoo model or a file, not several")
        if (self.parent_file is None) != (self.parent_digest is None):
            raise ConfigError("parent_file and parent_digest go together (bench.core.config.with_parent_file sets both)")


def check_norm_eps(norm: Any, eps: Any) -> None:
    """ConfigError in one line for an unknown norm or a radius that does not fit it: an L-inf eps in (0, 1], an L2
    eps finite and > 0 (its upper bound sqrt(C * H * W) depends on the data set: bench.eval.standalone.check_eps_l2)."""
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    if norm == "linf":
        parse_eps(eps)
    elif isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < math.inf):
        raise ConfigError(f"eps under norm l2 is the L2 radius over the whole image: a finite number > 0 (e.g. 0.5 "
                          f"on CIFAR-10), got {eps}")


def coerce_like(default: Any, value: Any) -> tuple[bool, Any]:
    """Whether ``value`` may replace ``default`` (same type; an int where a float is expected; a single value or
    a list where a tuple is expected), and the value converted to the default's type."""
    if isinstance(default, bool):
        return isinstance(value, bool), value
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(default, str):
        return isinstance(value, str), value
    if isinstance(default, tuple):
        return True, tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return default is None or isinstance(value, type(default)), value


# Fields written only where they differ from their default: added after runs were first hashed and stored, they are
# left out of an L-inf run's dict at every level (parents too), so its run id, its result file's config and the
# report's pages read as before they existed. from_dict reads an absent one as its default.
OMITTED_AT_DEFAULT = frozenset({"norm"})


def to_dict(cfg: Any) -> Any:
    """Plain JSON-able structure of a config (tuples become lists; ``OMITTED_AT_DEFAULT`` fields at their default
    left out)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)
                if not (f.name in OMITTED_AT_DEFAULT and getattr(cfg, f.name) == f.default)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    return cfg


def _identity(d: Any) -> Any:
    """to_dict(run) without what does not change a run's meaning: the path of a parent file (its digest stays)."""
    if isinstance(d, dict):
        return {k: _identity(v) for k, v in d.items() if k != "parent_file"}
    return d


def canonical_json(cfg: RunConfig) -> str:
    return json.dumps({"schema": SCHEMA_VERSION, "run": _identity(to_dict(cfg))}, sort_keys=True,
                      separators=(",", ":"))


def file_digest(path: str) -> str:
    """Content digest of a parent file (SHA-256 of its bytes, 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def run_id(cfg: RunConfig) -> str:
    """Short stable hash naming the run (12 hex digits: collisions are negligible for any real grid)."""
    return hashlib.sha256(canonical_json(cfg).encode()).hexdigest()[:12]


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def from_dict(d: Mapping[str, Any]) -> RunConfig:
    """Inverse of ``to_dict`` for a RunConfig (used to rebuild a run inside a cluster job)."""
    d = dict(d)
    parent = d.pop("parent", None)
    return RunConfig(
        method=d["method"],
        hparams=tuple((k, _tupled(v)) for k, v in d["hparams"]),
        model=d["model"],
        dataset=d["dataset"],
        train=TrainConfig(**{k: _tupled(v) for k, v in d["train"].items()}),
        eval=EvalConfig(**d["eval"]),
        seed=d["seed"],
        eps=d["eps"],
        parent=from_dict(parent) if parent else None,
        parent_zoo=d.get("parent_zoo"),
        parent_file=d.get("parent_file"),
        parent_digest=d.get("parent_digest"),
        norm=d.get("norm", DEFAULT_NORM),
    )


def with_parent_file(cfg: RunConfig, path: str) -> RunConfig:
    """``cfg`` fine-tuning the user's checkpoint at ``path`` instead of a trained parent run."""
    import os

    if not os.path.isfile(path):
        raise ConfigError(f"parent file {path} does not exist: give the path of your pre-trained checkpoint")
    return replace(cfg, parent=None, parent_zoo=None, parent_file=os.path.abspath(path),
                   parent_digest=file_digest(path))


def replace_path(cfg: Any, path: str, value: Any) -> Any:
    """``replace`` through a dotted path: replace_path(run, "train.epochs", 3)."""
    head, _, rest = path.partition(".")
    if not rest:
        return replace(cfg, **{head: value})
    return replace(cfg, **{head: replace_path(getattr(cfg, head), rest, value)})
