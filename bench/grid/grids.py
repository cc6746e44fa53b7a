"""Grids: plain functions returning the run configs of an experiment.

A fine-tuning run names its parent run inside its own config, so a grid is a dependency graph: ``expand``
adds the parents, drops duplicates (same config hash = same run, whichever grid asked for it) and orders
parents before children. Fine-tuning runs of several seeds share one parent (seed 0), as the paper fine-tunes
one pre-trained model; the seed-to-seed spread is then the spread of the method, not of the pre-training.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from bench.core.config import ConfigError, EvalConfig, RunConfig
from bench.data import L2_EPS
from bench.eval.threats import Threats
from bench.grid.gridfile import MAX_SEEDS, is_grid_file, load
from bench.grid.runs import make_run, seeded, unique
from methods import get_method, parent_method

GRIDS: dict[str, Callable[[int], list[RunConfig]]] = {}


def grid(fn: Callable[[int], list[RunConfig]]) -> Callable[[int], list[RunConfig]]:
    GRIDS[fn.__name__] = fn
    return fn


def get_grid(name: str, seeds: int = 1) -> list[RunConfig]:
    """A grid's runs: a name from GRIDS, or a grid file (``*.toml``, bench/grid/gridfile.py)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (got {seeds})")
    if seeds > MAX_SEEDS:  # checked before the runs are expanded in memory
        raise ConfigError(f"--seeds {seeds}: at most {MAX_SEEDS} seeds (a sweep of seeds 0..N-1 never needs more)")
    if is_grid_file(name):
        return load(name, seeds).runs
    if "/" in name or "\\" in name:
        raise ConfigError(f"grid name '{name}' contains a path separator; known grids: {', '.join(sorted(GRIDS))}")
    if name not in GRIDS:
        raise ConfigError(f"unknown grid '{name}'; known: {', '.join(sorted(GRIDS))} (or a grid file, *.toml)")
    return GRIDS[name](seeds)


# -- grids ----------------------------------------------------------------------------------------------------
DEMO_EVAL = EvalConfig(n_clean=300, n_pgd=300, n_aa=50, batch_size=300, feature_gap_every_epoch=True, n_gap=300)


@grid
def demo(seeds: int = 1) -> list[RunConfig]:
    """Natural pre-training, then vAFT and AFD, on the embedded digits with the small CNN: offline, minutes."""
    # The parent's gap is needed after its last epoch only (Figure 1a's reference line): measuring it after each of
    # its 15 epochs cost 4x its training (PGD-20 on 300 images vs one pass over 1,497).
    parent = make_run("standard", model="small_cnn", dataset="digits", epochs=15,
                      eval=replace(DEMO_EVAL, feature_gap_every_epoch=False))
    common = dict(model="small_cnn", dataset="digits", eval=DEMO_EVAL, parent=parent)
    return seeded([make_run("vaft", epochs=4, **common), make_run("afd", epochs=4, **common)], seeds)


# -- the paper's grids (paper-scale: each method's full recipe, evaluation on 10,000 test images) ---------------
PAPER_EVAL = EvalConfig()
DATASETS_3 = ("cifar10", "cifar100", "tiny-imagenet")
# AFD Table 1 rows (ResNet18): AT from scratch, fast AT, then the fine-tuning methods.
TABLE1_METHODS = ("pgd_at", "trades", "free_at", "fgsm_ga", "atas", "vaft", "rift", "afkd", "arrest", "afd")
# AFD Table 2 rows (WideResNet-34-10): no fast-AT baselines.
TABLE2_METHODS = ("pgd_at", "trades", "vaft", "rift", "afkd", "arrest", "afd")
TABLE3_METHODS = ("vaft", "vaft_d", "vaft_a", "afd")
# AFD Table 5's claim: AFD's epoch costs little more than vAFT's (46 s vs 37 s); `bench speed` times this pair.
TABLE5_STEP_PAIR = ("vaft", "afd")
FIG1_METHODS = ("vaft", "afkd", "arrest", "afd")
# AFD Table 4: (model, data set) pairs on which the f1/f2 accuracies are reported.
TABLE4_CELLS = (("resnet18", "cifar10"), ("resnet18", "cifar100"), ("resnet18", "tiny-imagenet"),
                ("resnet50", "cifar10"), ("resnet50", "cifar100"),
                ("wrn34_10", "cifar10"), ("wrn34_10", "cifar100"), ("wrn34_10", "tiny-imagenet"))
# The network each row's public code trained, under the as-run rule. The AFD code (changzhang777/AFD tl+sl.py,
# ARREST.py; models/resnet.py) trains vAFT, AFKD, ARREST, AFD and its ablations, and the natural model they start
# from, on ResNets whose first convolution is unpadded (``resnet18_afd``, ``resnet50_afd``); its WideResNet pads
# like TRADES'. PGD-AT, TRADES, the fast-AT rows and RiFT (which fine-tunes the PGD-AT model) come from codes with
# the padded CIFAR ResNet (``resnet18``); AFA has no public code.
AFD_CODE_ROWS = ("vaft", "afkd", "arrest", "afd", "vaft_d", "vaft_a")
AFD_CODE_NETWORK = {"resnet18": "resnet18_afd", "resnet50": "resnet50_afd"}
# Table 1's cells the paper leaves empty ('-'): the fast-AT rows on Tiny-ImageNet (its numbers are excerpted from
# Huang et al. 2023, which has none there). `table1` leaves them out; `table1_full` runs them too.
TABLE1_EMPTY = {("free_at", "tiny-imagenet"), ("fgsm_ga", "tiny-imagenet"), ("atas", "tiny-imagenet")}
# Figure 1a plots the feature gap per epoch of four of Table 1's CIFAR-10 rows: those rows measure it after every
# epoch, so the figure is drawn from Table 1's own runs.
FIG1_EVAL = replace(PAPER_EVAL, feature_gap_every_epoch=True)
# AFD Figure 4 (read off the plot): each hyperparameter swept with the other two at the defaults (0.05, 0.25, 25).
FIG4_SWEEP = {"alpha": (0.01, 0.025, 0.05, 0.1, 0.2), "beta": (0.05, 0.1, 0.25, 0.5, 1.0),
              "gamma": (2.0, 4.0, 10.0, 25.0, 30.0)}


def as_run_network(method: str, model: str) -> str:
    """The network ``method``'s public code trained where the paper says ``model`` (``AFD_CODE_ROWS``)."""
    return AFD_CODE_NETWORK.get(model, model) if method in AFD_CODE_ROWS else model


def paper_run(method: str, model: str, dataset: str, *, eval: EvalConfig = PAPER_EVAL,
              hparams: dict[str, Any] | None = None) -> RunConfig:
    """A run at paper scale, on the network its public code trained (``as_run_network``; ``model`` is the
    paper's name for it). Its parent (if any) is on the same network and always built with the paper's
    evaluation, so a grid that changes only its own runs' evaluation shares the parents of Table 1."""
    model = as_run_network(method, model)
    parent = None
    if get_method(method).parent is not None:
        parent = make_run(parent_method(get_method(method).parent), model=model, dataset=dataset, eval=PAPER_EVAL)
    return make_run(method, model=model, dataset=dataset, eval=eval, hparams=hparams, parent=parent)


def _table1_run(method: str, dataset: str) -> RunConfig:
    """A cell of Table 1; Figure 1a's rows on CIFAR-10 measure the feature gap after every epoch."""
    ev = FIG1_EVAL if dataset == "cifar10" and method in FIG1_METHODS else PAPER_EVAL
    return paper_run(method, "resnet18", dataset, eval=ev)


@grid
def table1(seeds: int = 1) -> list[RunConfig]:
    """AFD Table 1: ResNet18 x CIFAR-10 / CIFAR-100 / Tiny-ImageNet x ten methods, less the cells the paper leaves
    empty (27 runs + 3 natural parents; PGD-AT is both a row and RiFT's parent). Figure 1a's four rows on CIFAR-10
    measure the feature gap after every epoch."""
    return seeded([_table1_run(m, d) for d in DATASETS_3 for m in TABLE1_METHODS if (m, d) not in TABLE1_EMPTY],
                  seeds)


@grid
def table1_full(seeds: int = 1) -> list[RunConfig]:
    """Table 1 with the cells the paper leaves empty too (Free-AT, FGSM-GA, ATAS on Tiny-ImageNet): 30 runs."""
    return seeded([_table1_run(m, d) for d in DATASETS_3 for m in TABLE1_METHODS], seeds)


def l2_run(run: RunConfig, eps: float) -> RunConfig:
    """``run`` trained under the L2 threat model of radius ``eps``. A natural parent is kept as it is (natural
    training has no attack: the same run, the same id, as the L-inf grids'); a parent trained with an attack (RiFT's
    PGD-AT) is trained under L2 too, so the child fine-tunes a model of its own threat model."""
    parent = run.parent
    if parent is not None and get_method(parent.method).produces != "natural":
        parent = l2_run(parent, eps)
    return replace(run, norm="l2", eps=eps, parent=parent)


@grid
def table1_l2(seeds: int = 1) -> list[RunConfig]:
    """Table 1's CIFAR-10 fine-tuning rows (vAFT, RiFT, AFKD, ARREST, AFD) trained under the L2 threat model, eps
    0.5 (bench.data.L2_EPS): the same runs with ``norm="l2"``, their natural parent Table 1's own (RiFT's PGD-AT
    parent trained under L2 too). Every fine-tuning method attacks through ``Method.pgd``, so all of them train
    under L2; Table 1's from-scratch rows are not fine-tuning and are not here (of them Free-AT, FGSM-GA and ATAS
    could not anyway: their sign steps are an L-inf attack by construction, and they refuse norm l2). The paper has
    no L2 numbers: the report shows none beside these rows."""
    methods = [m for m in TABLE1_METHODS if get_method(m).parent is not None and "l2" in get_method(m).norms]
    return seeded([l2_run(_table1_run(m, "cifar10"), L2_EPS["cifar10"]) for m in methods], seeds)


@grid
def table2(seeds: int = 1) -> list[RunConfig]:
    """AFD Table 2: WideResNet-34-10 x the three data sets x seven methods."""
    return seeded([paper_run(m, "wrn34_10", d) for d in DATASETS_3 for m in TABLE2_METHODS], seeds)


@grid
def table3(seeds: int = 1) -> list[RunConfig]:
    """AFD Table 3 (ablation): vAFT, vAFT + disentangler, vAFT + alignment, AFD on ResNet18 CIFAR-10."""
    return seeded([_table1_run(m, "cifar10") for m in TABLE3_METHODS], seeds)  # vAFT and AFD: Table 1's runs


@grid
def table4(seeds: int = 1) -> list[RunConfig]:
    """AFD Table 4: AFD's f1/f2 natural accuracies on RN18 (3 data sets), RN50 (CIFAR) and WRN-34-10 (3)."""
    return seeded([_table1_run("afd", d) if m == "resnet18" else paper_run("afd", m, d) for m, d in TABLE4_CELLS],
                  seeds)


@grid
def table5(seeds: int = 1) -> list[RunConfig]:
    """AFD Table 5: training time of every method on ResNet18 CIFAR-10, natural pre-training included (the
    same runs as Table 1's CIFAR-10 column: the seconds per epoch are in every result)."""
    runs = [make_run("standard", model=as_run_network("afd", "resnet18"), dataset="cifar10", eval=PAPER_EVAL)]
    runs += [_table1_run(m, "cifar10") for m in TABLE1_METHODS]
    return seeded(runs, seeds)


@grid
def fig1(seeds: int = 1) -> list[RunConfig]:
    """AFD Figure 1(a): feature gap after every epoch for vAFT, AFKD, ARREST and AFD (ResNet18 CIFAR-10): Table 1's
    own runs of those rows (the same run ids)."""
    return seeded([_table1_run(m, "cifar10") for m in FIG1_METHODS], seeds)


@grid
def fig4(seeds: int = 1) -> list[RunConfig]:
    """AFD Figure 4: alpha, beta, gamma of AFD one at a time around the defaults (13 distinct runs)."""
    default = get_method("afd").Hparams()
    # the default point of each sweep is Table 1's AFD run (same evaluation, so the same run id)
    runs = [paper_run("afd", "resnet18", "cifar10", hparams={name: v},
                      eval=FIG1_EVAL if v == getattr(default, name) else PAPER_EVAL)
            for name, values in FIG4_SWEEP.items() for v in values]
    return seeded(unique(runs), seeds)


@grid
def afa(seeds: int = 1) -> list[RunConfig]:
    """AFA (Park et al. 2024) alone and jointly with TRADES (beta 6), ResNet18 CIFAR-10."""
    runs = [paper_run("afa", "resnet18", "cifar10"),
            paper_run("afa", "resnet18", "cifar10", hparams={"trades_beta": 6.0})]
    return seeded(runs, seeds)


# -- the CPU-scale reproduction: every method on CIFAR-10 (JPEG) with the small CNN -----------------
# Budgets keep the paper's RELATIVE sizes: PGD-AT's 110 epochs become CPU_SCRATCH_EPOCHS and every other recipe is
# scaled by the same factor (fine-tuning 20 -> 2, TRADES 76 -> 7, FGSM-GA/ATAS 30 -> 3, Free-AT 10 passes -> 1,
# RiFT 10 -> 1, natural pre-training 100 -> 15: pre-training is cheap and a better parent helps every child).
# Training uses a fixed 10,000-image subset of the 50,000 (same for every run); evaluation the first 1,000 test
# images (a fixed random sample) for clean and PGD-20, the first 200 for AutoAttack.
CPU_DATASET = "cifar10-jpeg"
CPU_N_TRAIN = 10_000
CPU_SCRATCH_EPOCHS = 10
CPU_EVAL = EvalConfig(n_clean=1000, n_pgd=1000, n_aa=200, batch_size=500, n_gap=500)
CPU_SCRATCH = {"pgd_at": 10, "trades": 7, "free_at": 1, "fgsm_ga": 3, "atas": 3, "afa": 10}
CPU_FINETUNE = ("vaft", "rift", "afkd", "arrest", "afd", "vaft_d", "vaft_a")
CPU_FT_EPOCHS = {"rift": 1}  # RiFT's 10 epochs are half the AFT methods' 20
CPU_FIG4 = {"alpha": (0.01, 0.2), "beta": (0.05, 1.0), "gamma": (2.0, 10.0)}  # ends of the paper's ranges


def _cpu_run(method: str, *, epochs: int, seed: int = 0, hparams: dict[str, Any] | None = None,
             eval: EvalConfig = CPU_EVAL) -> RunConfig:
    cls = get_method(method)
    parent = None
    if cls.parent is not None:
        parent = (_cpu_run("standard", epochs=15) if cls.parent == "natural"
                  else _cpu_run("pgd_at", epochs=CPU_SCRATCH["pgd_at"]))
    return make_run(method, model="small_cnn", dataset=CPU_DATASET, epochs=epochs, eval=eval, seed=seed,
                    hparams=hparams, parent=parent, n_train=CPU_N_TRAIN)


@grid
def cpu(seeds: int = 2) -> list[RunConfig]:
    """Every method at CPU scale on CIFAR-10 (JPEG), small CNN, eps 8/255 (2-3 hours on 2 cores).

    Fine-tuning methods run with at least 2 seeds (the spread says whether a difference is real); the feature
    gap is measured after every epoch for Figure 1a's methods; a reduced Figure 4 sweep around AFD's defaults."""
    seeds = max(seeds, 2)
    runs = [_cpu_run(m, epochs=e) for m, e in CPU_SCRATCH.items()]  # recipes scaled keep every phase
    runs.append(_cpu_run("afa", epochs=CPU_SCRATCH["afa"], hparams={"trades_beta": 6.0}))
    gap_eval = replace(CPU_EVAL, feature_gap_every_epoch=True)
    for seed in range(seeds):
        for m in CPU_FINETUNE:
            ev = gap_eval if m in ("vaft", "afkd", "arrest", "afd") else CPU_EVAL
            # RiFT's held-out set here is 2,000 images, where the paper's 0.1-point tolerance is one image: the
            # tolerance follows the paired standard error instead (methods/rift.py, select_rule)
            hp = {"select_rule": "paired_se"} if m == "rift" else None
            runs.append(_cpu_run(m, epochs=CPU_FT_EPOCHS.get(m, 2), seed=seed, eval=ev, hparams=hp))
    for name, values in CPU_FIG4.items():
        for v in values:
            runs.append(_cpu_run("afd", epochs=2, hparams={name: v}, eval=gap_eval))
    return unique(runs)


# -- the paper's fine-tuning length at CPU scale: does the feature gap grow over 20 epochs, and does AFD stop it? --
# The `cpu` grid keeps each recipe's relative budget (fine-tuning: 2 epochs); Figure 1a's rising gap spans the
# paper's 20. Same natural parent (the cpu grid's, so both grids share it), data subset and evaluation as `cpu`,
# the paper's 20 fine-tuning epochs (1,580 steps of 128 on the 10,000-image subset: a fifth of the paper's
# 7,800), the gap after every epoch for every run.
CPU20_METHODS = ("vaft", "afkd", "arrest", "afd")  # Figure 1a's four, two seeds each
CPU20_ABLATION = ("vaft_d", "vaft_a")  # Table 3's ablations, seed 0
CPU20_EPOCHS = 20


@grid
def cpu20(seeds: int = 2) -> list[RunConfig]:
    """Figure 1a's methods (2 seeds) and Table 3's ablations (seed 0) fine-tuned for the paper's 20 epochs at
    CPU scale, from the cpu grid's natural parent; the feature gap after every epoch (10 runs, ~5 h on 2 cores)."""
    gap_eval = replace(CPU_EVAL, feature_gap_every_epoch=True)
    runs = [_cpu_run(m, epochs=CPU20_EPOCHS, seed=seed, eval=gap_eval)
            for seed in range(max(seeds, 2)) for m in CPU20_METHODS]
    runs += [_cpu_run(m, epochs=CPU20_EPOCHS, eval=gap_eval) for m in CPU20_ABLATION]
    return unique(runs)


# -- threat models beyond L-inf at CPU scale: does a method's L-inf gain carry over to L2 and to corruptions? --------
# Threat models a grid measures beyond each run's own evaluation when `bench run` names none (--threat); they are
# measurements of the same models, so the runs keep the ids they have in the grids they come from.
GRID_THREATS: dict[str, Threats] = {}
THREATS_METHODS = ("vaft", "afkd", "arrest", "afd")


@grid
def cpu_threats(seeds: int = 1) -> list[RunConfig]:
    """The cpu grid's natural and PGD-AT parents and its vAFT, AFKD, ARREST and AFD runs (2 epochs from the natural
    parent: the same run ids as in `cpu`), measured in L-inf (8/255), L2 (0.5) and on the generated corruptions of
    CIFAR-10's test images (CIFAR-10-JPEG-C-generated). Its finished runs' saved models are measured, not retrained."""
    gap_eval = replace(CPU_EVAL, feature_gap_every_epoch=True)
    runs = [_cpu_run("standard", epochs=15), _cpu_run("pgd_at", epochs=CPU_SCRATCH["pgd_at"])]
    runs += [_cpu_run(m, epochs=2, seed=seed, eval=gap_eval) for seed in range(seeds) for m in THREATS_METHODS]
    return unique(runs)


GRID_THREATS["cpu_threats"] = Threats(("linf", "l2", "corruptions"), corruptions="generated")
