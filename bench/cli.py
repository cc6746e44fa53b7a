"""Command line: ``python -m bench {run,eval,list,report,compare,status,plan,plot,speed,speed-eval,doctor} ...``
(also installed as ``bench``).

Bad input (an unknown name, a malformed --set, eps given in pixels, a missing data folder, ...) prints one line
saying what is wrong and how to fix it, and exits with code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from bench.core.config import (
    PRECISIONS,
    ConfigError,
    EvalConfig,
    RunConfig,
    TrainConfig,
    coerce_like,
    parse_eps,
    parse_fraction,
    replace_path,
    run_id,
)
from bench.grid.grids import TABLE5_STEP_PAIR
from bench.train.rerun import RERUN_CHOICES
from methods import REGISTRY, get_method, resolve_hparams


class UsageError(ConfigError):
    pass


# -- --set ------------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """'3' -> 3, '0.1' -> 0.1, '8/255' -> 0.0313.., 'true' -> True, '0.5,0.75' -> (0.5, 0.75), else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if "," in text:
        return tuple(parse_value(t) for t in text.split(",") if t.strip())
    if "/" in text:
        try:
            return parse_fraction(text)
        except ValueError:
            return text
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text


def _check_type(key: str, old: Any, new: Any) -> Any:
    ok, new = coerce_like(old, new)
    if not ok:
        raise UsageError(f"--set {key}: expected a {type(old).__name__}, got {new!r}")
    return new


TOP_KEYS = {"model", "dataset", "seed", "eps", "norm"}


def apply_set(cfg: RunConfig, key: str, value: Any) -> tuple[RunConfig, bool]:
    """Apply one --set to a run and, recursively, to its parent; returns (run, whether it applied anywhere)."""
    applied = False
    parent = cfg.parent
    if parent is not None:
        parent, applied = apply_set(parent, key, value)
        cfg = dataclasses.replace(cfg, parent=parent)
    head, _, rest = key.partition(".")
    if head in ("train", "eval") and rest:
        sub = cfg.train if head == "train" else cfg.eval
        if rest not in {f.name for f in dataclasses.fields(sub)}:
            cls = TrainConfig if head == "train" else EvalConfig
            raise UsageError(f"--set {key}: unknown key; {head}.* keys are: "
                             + ", ".join(f.name for f in dataclasses.fields(cls)))
        return replace_path(cfg, key, _check_type(key, getattr(sub, rest), value)), True
    if key in TOP_KEYS:
        return dataclasses.replace(cfg, **{key: _check_type(key, getattr(cfg, key), value)}), True
    if rest and (head == "hparams" or head in REGISTRY):
        if head != "hparams" and head != cfg.method:
            return cfg, applied
        hp = dict(cfg.hparams)
        if rest not in hp:
            return cfg, applied
        hp[rest] = value
        return dataclasses.replace(cfg, hparams=resolve_hparams(cfg.method, hp)), True
    raise UsageError(f"--set {key}: unknown key; use train.<key>, eval.<key>, <method>.<hparam>, hparams.<hparam>, "
                     f"parent_file, or one of {', '.join(sorted(TOP_KEYS))}")


def apply_sets(runs: list[RunConfig], sets: Sequence[str]) -> list[RunConfig]:
    for item in sets:
        key, eq, text = item.partition("=")
        if not eq or not key.strip() or not text.strip():
            raise UsageError(f"--set '{item}' is malformed: write --set key=value, e.g. --set train.epochs=2")
        key, value = key.strip(), parse_value(text)
        if key == "parent_file":  # fine-tune the user's own checkpoint instead of a trained parent run
            from bench.core.config import with_parent_file

            fine = [i for i, cfg in enumerate(runs) if get_method(cfg.method).parent is not None]
            if not fine:
                raise UsageError("--set parent_file: no run of this grid fine-tunes a parent")
            runs = [with_parent_file(cfg, text.strip()) if i in fine else cfg for i, cfg in enumerate(runs)]
            continue
        hit = False
        out = []
        for cfg in runs:
            cfg, applied = apply_set(cfg, key, value)
            hit |= applied
            out.append(cfg)
        if not hit:
            raise UsageError(f"--set {key}: no run of this grid has that hyperparameter")
        runs = out
    return runs


# -- commands ----------------------------------------------------------------------------------------------
def _runtime(args) -> "Runtime":
    from bench.core.runtime import Runtime

    _check_threads(args)
    return Runtime(results=Path(args.results), data_root=Path(args.data_root) if args.data_root else None,
                   device=args.device, threads=args.threads, compile=args.compile, eval_layout=args.eval_layout,
                   eval_fold_bn=args.eval_fold_bn, procs=_procs(args), determinism=args.determinism,
                   **_eval_checks(args))


def _eval_checks(args) -> dict:
    """--no-eval-checks / --eval-checks-n of the commands that evaluate (bench.eval.indicators)."""
    n = getattr(args, "eval_checks_n", 50)
    if n < 0:
        raise UsageError(f"--eval-checks-n must be >= 0 (got {n}); 0 leaves out the eps sweep and unbounded PGD")
    return {"eval_checks": getattr(args, "eval_checks", True), "eval_checks_n": n}


def _run_threats(args, runs: list[RunConfig]) -> dict:
    """The Runtime fields of `bench run`'s threat models: --threat and its options, else the grid's declared ones
    (bench.grid.grids.GRID_THREATS), else none beyond each run's own; checked for every data set of the grid."""
    from bench.eval.threats import Threats
    from bench.grid.grids import GRID_THREATS

    if args.threat is None and (args.eps_l2 is not None or args.corruptions is not None):
        raise UsageError("--eps-l2 / --corruptions go with --threat l2 / --threat corruptions: add --threat")
    if args.threat is not None:
        threats = Threats.parse(args.threat, args.eps_l2, args.corruptions)
    else:
        threats = GRID_THREATS.get(args.grid, Threats())
    for dataset in sorted({cfg.dataset for cfg in runs}):
        threats.check(dataset)
    return {"threats": threats.names, "eps_l2": threats.eps_l2, "corruptions": threats.corruptions}


def _check_threads(args) -> None:
    threads = args.threads
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1 (got {threads}); leave it out for torch's default "
                         "($SLURM_CPUS_PER_TASK under SLURM)")
    most = 8 * (os.cpu_count() or 1)  # 10^8 threads never answered
    if threads is not None and threads > most:
        raise UsageError(f"--threads must be <= {most} on this machine (8 per CPU core; got {threads})")


def _procs(args) -> int:
    """--procs-per-run (CPU processes, gloo) or --gpus-per-run (one process per GPU, NCCL): one run, k processes."""
    procs, gpus = args.procs_per_run, args.gpus_per_run
    if procs is not None and gpus is not None:
        raise UsageError("give --procs-per-run (CPU) or --gpus-per-run (CUDA), not both")
    k = gpus if gpus is not None else procs if procs is not None else 1
    if k < 1:
        raise UsageError(f"--{'gpus' if gpus is not None else 'procs'}-per-run must be >= 1 (got {k})")
    if gpus is not None and gpus > 1:
        import torch

        if torch.cuda.device_count() < gpus:
            raise UsageError(f"--gpus-per-run {gpus} but this machine has {torch.cuda.device_count()} CUDA "
                             "device(s): use fewer, or --procs-per-run on CPUs")
        if args.device not in ("auto", "cuda"):
            raise UsageError(f"--gpus-per-run puts rank r on cuda:r: drop --device {args.device}")
    return k


def grid_runs(args, procs: int = 1) -> list[RunConfig]:
    """The runs a command's --grid, --seeds, --set and --only name, through the validation gate once (at the
    run's process count: what a method cannot do on several processes is refused before anything runs)."""
    from bench.grid.grids import get_grid
    from bench.train.validation import validate_run

    runs = select_runs(apply_sets(get_grid(args.grid, args.seeds), args.set or []), args.only or [])
    for cfg in runs:
        validate_run(cfg, procs=procs)
    return runs


def results_folder(args, must_exist: bool = True) -> Path:
    """--results of a command that reads results (report, status, plot, compare; plan with ``must_exist`` False,
    since it predicts a grid that has not run). A folder that is missing is refused rather than read as "nothing
    has run": a typo in the path would otherwise print an empty table. An existing empty folder is fine."""
    path = Path(args.results)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--results {path} is a file, not a results folder: give the folder that `bench run` wrote")
    if must_exist and not path.exists():
        raise UsageError(f"--results {path} does not exist: check the path (the folder given to `bench run "
                         "--results`, default: results)")
    return path


def output_path(path: str, what: str, folder: bool) -> Path:
    """Where a command writes what it made (report --out: a file, plot --out: a folder), checked before anything
    is computed: a folder where a file is due or the reverse, or a place below a file, is one line."""
    out = Path(path)
    want, other = ("folder", "file") if folder else ("file", "folder")
    if out.exists() and out.is_dir() != folder:
        raise UsageError(f"{what} {out} is a {other}, not a {want}: give the path of a {want}")
    above = out if out.is_symlink() and not out.exists() else out.parent
    while not above.exists() and not above.is_symlink():
        above = above.parent
    if above.is_symlink() and not above.exists():
        raise UsageError(f"{what} {out}: the link {above} leads nowhere (a loop, or to nothing): give another path")
    if not above.is_dir():
        raise UsageError(f"{what} {out}: {above} is a file, so nothing can be written below it: give another path")
    return out


# -- --only -------------------------------------------------------------------------------------------------
ONLY_KEYS = ("method", "model", "dataset", "seed")


def select_runs(runs: list[RunConfig], only: Sequence[str]) -> list[RunConfig]:
    """The runs of a grid that every ``--only KEY=V1,V2`` selects (KEY one of ``ONLY_KEYS``); their parents come
    along when the runs are expanded. Selecting nothing is bad input, said in one line with what there is."""
    for item in only:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or key not in ONLY_KEYS or not values.strip():
            raise UsageError(f"--only {item}: expected KEY=VALUE[,VALUE...] with KEY one of {', '.join(ONLY_KEYS)} "
                             "(e.g. --only dataset=cifar10 --only method=vaft,afd)")
        wanted = {v.strip() for v in values.split(",") if v.strip()}
        have = {str(getattr(r, key)) for r in runs}
        kept = [r for r in runs if str(getattr(r, key)) in wanted]
        if not kept:
            raise UsageError(f"--only {item} selects none of the {len(runs)} run(s) left; their {key}s: "
                             f"{', '.join(sorted(have))}")
        runs = kept
    return runs


def cmd_run(args) -> int:
    from bench.grid.runner import run_local
    from bench.report.tables import report

    rt = _runtime(args)
    runs = grid_runs(args, procs=rt.procs)
    rt = dataclasses.replace(rt, **_run_threats(args, runs))
    if (args.gpus is not None or args.workers is not None) and args.executor == "slurm":
        raise UsageError("--gpus / --workers schedule runs on this machine: leave out --executor slurm")
    slurm_names = {"partition": args.partition, "account": args.account, "qos": args.qos}
    if args.executor != "slurm" and any(v is not None for v in slurm_names.values()):
        raise UsageError("--partition / --account / --qos are for SLURM jobs: add --executor slurm")
    if args.executor == "slurm":
        from bench.grid.slurm import run_slurm, wait

        plan = run_slurm(runs, rt, args.profile, dry_run=args.dry_run, rerun=args.rerun,
                         overrides=slurm_names)
        if args.wait and not args.dry_run:
            wait(plan)
            print()
            print(report(runs, rt.results, "markdown"))
            return cmd_status(args)
        return 0
    if args.dry_run:
        from bench.grid.runs import expand

        extra = [t for t in rt.threats if t != "linf"]
        if extra:
            print("beside each run's own evaluation: " + ", ".join(
                {"l2": f"l2 (eps {rt.eps_l2 if rt.eps_l2 is not None else 'of the data set'})",
                 "corruptions": f"corruptions ({rt.corruptions or 'published'})"}[t] for t in extra))
        for cfg in expand(runs):
            print(f"{run_id(cfg)}  {cfg.method:10s} {cfg.model}/{cfg.dataset} seed {cfg.seed} "
                  f"epochs {cfg.train.epochs}" + (f"  parent {run_id(cfg.parent)}" if cfg.parent else "")
                  + (f"  norm {cfg.norm} eps {cfg.eps:g}" if cfg.norm != "linf" else ""))
        return 0
    if args.gpus is not None or args.workers is not None:  # one worker per device, independent runs at once
        import torch

        from bench.grid.pool import devices_from, run_pool

        avail = torch.cuda.device_count() if torch.cuda.is_available() else 0
        results = run_pool(runs, rt, devices_from(args.gpus, args.workers, avail), rerun=args.rerun)
    else:
        results = run_local(runs, rt, rerun=args.rerun)
    print()
    print(report(runs, rt.results, "markdown", table=args.grid if args.grid.endswith(".toml") else None))
    failed = [r for r in results.values() if r.get("status") != "done"]
    return 1 if failed else 0


def cmd_report(args) -> int:
    from bench.report.tables import report

    results = results_folder(args)
    if args.out:  # checked before the table is computed
        output_path(args.out, "--out", folder=False)
    if args.evals:
        from bench.report.evals import evals_report

        # the evaluations are no grid: what selects or compares a grid's runs does not apply
        given = [o for o, v in (("--seeds", args.seeds != 1), ("--set", args.set), ("--table", args.table),
                                ("--compare", args.compare), ("--claims", args.claims)) if v]
        if given:
            raise UsageError(f"--evals renders every result of bench eval: leave out {', '.join(given)}")
        if args.format == "html":
            raise UsageError("--format html renders a grid's page: leave out --evals")
        out = evals_report(results, args.format)
    elif args.claims:
        from bench.report.claims import claims

        out = claims(grid_runs(args), results, name=args.grid)  # --seeds and --set as for `run`
    elif args.format == "html":
        from bench.report.html import page

        out = page(grid_runs(args), results, name=args.grid, table=args.table or args.grid, compare=args.compare)
    else:
        out = report(grid_runs(args), results, args.format, table=args.table or args.grid,
                     compare=args.compare)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(out, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(out)
    return 0


def cmd_compare(args) -> int:
    """One method against another on a grid's results, per metric and model / data set, under the noise rule."""
    from bench.report.compare import compare

    results = results_folder(args)
    sys.stdout.write(compare(grid_runs(args), results, args.a, args.b, args.format, name=args.grid))
    return 0


def cmd_plot(args) -> int:
    from bench.report.plots import FIG1_METHODS, plot

    results = results_folder(args)
    out = output_path(args.out or str(results / "figures"), "--out", folder=True)
    methods = FIG1_METHODS if args.methods is None else (
        None if args.methods == "all" else tuple(m.strip() for m in args.methods.split(",") if m.strip()))
    for m in methods or ():
        get_method(m)  # an unknown name is bad input: one line, exit 2
    for path in plot(args.figure, grid_runs(args), results, out,
                     name=args.grid, run=args.run, n=args.n, data_root=args.data_root, methods=methods):
        print(f"wrote {path}")
    return 0


def cmd_status(args) -> int:
    """Per run (parents included): done / done (stale: the modules whose code changed since) / running / queued /
    failed (reason) / corrupt / missing, from the result files, local locks and the SLURM queue (jobs recorded by
    `bench run --executor slurm`); the last line counts each state ("stale" apart from "done"). A finished run whose
    evaluation's reliability indicators tripped says so with their names, and the last line counts those runs."""
    from bench.grid.slurm import grid_status
    from bench.report.labels import UNRELIABLE_WORDS

    statuses = grid_status(grid_runs(args), results_folder(args))
    counts: dict[str, int] = {}
    for st in statuses:
        cfg = st.cfg
        counts[st.state] = counts.get(st.state, 0) + 1
        job = f"  [job {st.job_id}]" if st.job_id and st.state not in ("done", "stale") else ""
        reason = f"  ({st.reason})" if st.reason and st.state not in ("done", "stale") else ""
        said = ([f"stale: {st.reason}"] if st.state == "stale" else []) + (
            [f"{UNRELIABLE_WORDS}: {', '.join(st.unreliable)}"] if st.unreliable else [])
        state = f"done ({'; '.join(said)})" if said else st.state
        print(f"{st.run_id}  {cfg.method:10s} {cfg.model}/{cfg.dataset} seed {cfg.seed}: {state}{reason}{job}")
    unreliable = sum(1 for st in statuses if st.unreliable)
    print(", ".join(f"{v} {k}" for k, v in counts.items())
          + (f"; {unreliable} run{'s' * (unreliable > 1)} with an {UNRELIABLE_WORDS}" if unreliable else ""))
    return 0


def cmd_plan(args) -> int:
    from bench.grid.plan import render

    if args.gpus_per_run < 1:
        raise UsageError(f"--gpus-per-run must be >= 1 (got {args.gpus_per_run})")
    results = results_folder(args, must_exist=False)
    sys.stdout.write(render(args.grid, grid_runs(args), results, gpus_per_run=args.gpus_per_run))
    return 0


def cmd_list(args) -> int:
    from bench.data import DATASETS
    from bench.grid.grids import GRIDS
    from bench.models.architectures import MODELS
    from methods import plugins

    print("methods:")
    for name, cls in sorted(REGISTRY.items()):
        hp = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Hparams))
        r = cls.recipe
        print(f"  {name:10s} parent={cls.parent or 'scratch'}  recipe: {r.epochs} epochs lr {r.lr} {r.schedule}"
              f"{' ema' if r.ema else ''}  {cls.summary}")
        print(f"  {'':10s} from: {plugins.origin(name)}")
        if hp:
            print(f"  {'':10s} hparams: {hp}")
    print("models:   " + ", ".join(MODELS))
    print("datasets: " + ", ".join(DATASETS) + ", folder:<path>")
    print("grids:    " + ", ".join(sorted(GRIDS)))
    return 0


def cmd_eval(args) -> int:
    from bench.eval.standalone import evaluate, make_spec, render

    eps = parse_eps(args.eps, "--eps")
    spec = make_spec(model=args.model, zoo=args.zoo, checkpoint=args.checkpoint, dataset=args.dataset, n=args.n,
                     n_pgd=args.n_pgd, n_aa=args.n_aa, eps=eps, batch_size=args.batch_size, seed=args.seed,
                     threat=args.threat, eps_l2=args.eps_l2, corruptions=args.corruptions)
    result = evaluate(spec, _runtime(args), log=lambda s: print(s, file=sys.stderr, flush=True))
    print(render(result), end="")
    print(f"result: {Path(args.results) / 'evals' / (result['eval_id'] + '.json')}")
    return 0


def _speed_setup(args) -> Callable[[str], None]:
    """What both timings do first (--threads checked, the determinism policy applied); returns their progress log:
    stderr, or nothing with --json, whose stdout is the JSON alone."""
    from bench.core import determinism
    from bench.core.runtime import resolve_device

    _check_threads(args)
    determinism.apply(args.determinism, resolve_device(args.device))
    return (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))


def cmd_speed(args) -> int:
    from bench.perf.speed import measure, render, to_json

    log = _speed_setup(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UsageError("--methods is empty: give a comma-separated list, e.g. --methods vaft,afd")
    rep = measure(model=args.model, methods=methods, precision=args.precision, baseline=args.baseline,
                  batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, device=args.device,
                  threads=args.threads, matmul_size=args.matmul_size, baseline_workers=args.baseline_workers,
                  compile=args.compile,
                  log=log)
    sys.stdout.write(to_json(rep) + "\n" if args.json else render(rep))
    return 0


def cmd_speed_eval(args) -> int:
    """The evaluation (clean, PGD-20, AutoAttack) timed: ours against pyautoattack called directly."""
    from bench.perf.speed import to_json
    from bench.perf.speed_eval import measure_eval, render_eval

    log = _speed_setup(args)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    if args.save_model is not None and args.checkpoint is not None:
        raise UsageError("--save-model saves the model made here; it cannot be used with --checkpoint")
    if args.save_model is not None:
        target = Path(os.path.abspath(args.save_model))  # not resolve(): a link that loops would raise there
        if not target.parent.is_dir():
            raise UsageError(f"--save-model {args.save_model}: its folder does not exist")
        if target.is_dir() or (target.is_symlink() and not target.exists()):
            raise UsageError(f"--save-model {args.save_model}: a folder or a link that leads nowhere; give a file "
                             "path to write the model to")
    rep = measure_eval(model=args.model, checkpoint=args.checkpoint, n=args.n_images, reps=args.reps,
                       train_steps=args.train_steps, device=args.device, threads=args.threads,
                       contenders=[c.strip() for c in args.contenders.split(",") if c.strip()],
                       save_model=args.save_model, threats=args.threats, log=log)
    sys.stdout.write(to_json(rep) + "\n" if args.json else render_eval(rep))
    return 0


def cmd_doctor(args) -> int:
    from bench.perf.doctor import info, run_checks

    print(info(args.determinism), end="", flush=True)
    if not args.check:
        return 0
    print(flush=True)
    return 1 if run_checks(args.device, args.determinism, log=lambda s: print(s, flush=True)) else 0


# -- the parser --------------------------------------------------------------------------------------------
# An option that several commands take is defined once, by the function of its family below, and shows up in each
# command's --help under that family's title. Where a command gives an option its own meaning (plot's --data-root
# is for fig3 only, eval's results are evals/<eval_id>.json), the command passes its help text. Combinations that
# exclude each other (--procs-per-run and --gpus-per-run, --checkpoint and --save-model, ...) stay checked in the
# commands: argparse's mutually exclusive groups would answer with its usage block, not with our one line.
DATA_ROOT_HELP = "data folder (default: $BENCH_DATA_ROOT or ./data)"
RESULTS_HELP = "results folder (default: results)"


def _add_plugin(g) -> None:
    g.add_argument("--plugin", action="append", metavar="MODULE", default=[],
                   help="import this module first: the methods it @register's join the registry "
                        "(repeatable; installed packages use the 'afd_bench.methods' entry-point group)")


def _add_grid(sp, data_root: str | None = None, or_evals: bool = False) -> None:
    """The grid a command works on (and the plugins that define its methods), with its results folder and, where
    ``data_root`` gives its help text, the data folder. ``or_evals``: --evals (bench report) instead of a grid."""
    g = sp.add_argument_group("grid")
    _add_plugin(g)
    one = g.add_mutually_exclusive_group(required=True) if or_evals else g
    one.add_argument("--grid", required=not or_evals, help="grid name (see `bench list`)")
    if or_evals:
        one.add_argument("--evals", action="store_true", help="instead of a grid: a table of the results of "
                         "`bench eval` (<results>/evals/*.json), one row per evaluation")
    g.add_argument("--seeds", type=int, default=1, help="repeat the grid's runs with seeds 0..N-1")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field for every run (train.epochs=2, eval.n_aa=0, afd.gamma=10)")
    g.add_argument("--only", action="append", metavar="KEY=VALUE[,VALUE]",
                   help="only the grid's runs with this method, model, dataset or seed (repeatable; parents come "
                        "along): --only dataset=cifar10 --only method=vaft,afd")
    _add_folders(sp, results=RESULTS_HELP, data_root=data_root)


def _add_folders(sp, results: str, data_root: str | None = None) -> None:
    """--results, and --data-root where its help text is given."""
    g = sp.add_argument_group("folders")
    g.add_argument("--results", default="results", help=results)
    if data_root is not None:
        g.add_argument("--data-root", default=None, help=data_root)


def _add_runtime(sp, threads: bool = True, trains: bool = False, evaluates: bool = False) -> None:
    """Where and how a command runs (bench.core.runtime.Runtime), never what it computes: same run ids.
    ``trains``: compilation and processes per run; ``evaluates``: the evaluated copy's kernel choices."""
    g = sp.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    if threads:
        g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--determinism", default="strict", choices=["strict", "fast"],
                   help="strict (default): deterministic cuDNN and kernels, no cuDNN benchmarking, what "
                        "bit-identical resume rests on on GPUs; fast: cuDNN may benchmark and use atomics "
                        "(a runtime option: same run ids; recorded in every result)")
    if trains:
        g.add_argument("--compile", action="store_true", help="torch.compile the model for training and the final "
                       "evaluation (a runtime option: same run ids; tens of seconds of warm-up per run on a CPU)")
        g.add_argument("--procs-per-run", type=int, default=None, metavar="K",
                       help="train and evaluate each run on K local CPU processes (torch.distributed, gloo)")
        g.add_argument("--gpus-per-run", type=int, default=None, metavar="K",
                       help="train and evaluate each run on K local GPUs (torch.distributed, NCCL, SyncBatchNorm)")
    if evaluates:
        g.add_argument("--eval-layout", default="channels_last", choices=["channels_last", "nchw"],
                       help="weight layout of the evaluated fp32 copy (a runtime option: same ids; "
                            "channels_last is faster, nchw is the contiguous format)")
        g.add_argument("--no-eval-fold-bn", dest="eval_fold_bn", action="store_false",
                       help="evaluate the model as it is, without folding each conv -> BatchNorm pair into one "
                            "conv (a runtime option: same ids; folding is faster)")
        g.add_argument("--no-eval-checks", dest="eval_checks", action="store_false",
                       help="leave out the indicators of attack failure (docs/evaluation-checks.md; a runtime "
                            "option: same ids and numbers, the result then says nothing about them)")
        g.add_argument("--eval-checks-n", type=int, default=50, metavar="N",
                       help="images (the first N of the PGD set) for the costlier indicators, the eps sweep and "
                            "the unbounded PGD (default 50; 0 leaves them out)")


def _add_json(sp) -> None:
    sp.add_argument("--json", action="store_true", help="print every field as JSON instead of the table")


def _add_evaluation(sp) -> None:
    """How much of the paper's evaluation `bench eval` runs, and with which radius and seed."""
    g = sp.add_argument_group("evaluation")
    g.add_argument("--n", type=int, default=10_000, help="test images for clean accuracy (default 10000)")
    g.add_argument("--n-pgd", type=int, default=None, help="test images for PGD-20 (default: --n; 0 skips it)")
    g.add_argument("--n-aa", type=int, default=None, help="test images for AutoAttack (default: --n-pgd; 0 skips it)")
    g.add_argument("--eps", default="8/255", help="L-inf radius in [0, 1] pixels (default 8/255)")
    g.add_argument("--batch-size", type=int, default=500, help="images per chunk and batch (default 500)")
    g.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts (default 0)")
    _add_threats(g, default="linf")


def _add_threats(g, default: str | None) -> None:
    """--threat, --eps-l2, --corruptions (bench.eval.threats) of `bench eval` and `bench run`."""
    g.add_argument("--threat", default=default, help="threat models, comma-separated: linf, l2, corruptions "
                   + ("(default linf)" if default else "(default: the grid's own, else linf: each run's own "
                      "evaluation; l2 and corruptions are measured beside it, finished runs on their saved model)"))
    g.add_argument("--eps-l2", default=None, help="L2 radius of --threat l2 in [0, 1] pixels over the whole image "
                   "(default: the data set's, 0.5 for CIFAR-10)")
    g.add_argument("--corruptions", default=None, help="the set of --threat corruptions: published (CIFAR-10-C, "
                   "CIFAR-100-C, Tiny-ImageNet-C under --data-root; the default) or generated (CIFAR-sized, seeded, "
                   "12 of the 15 corruptions, named CIFAR-10-C-generated)")


def _run_parser(sub) -> None:
    sp = sub.add_parser("run", help="train and evaluate a grid (resumes; skips finished runs)")
    _add_grid(sp, data_root=DATA_ROOT_HELP)
    _add_runtime(sp, trains=True, evaluates=True)
    _add_threats(sp.add_argument_group("threat models beyond each run's own evaluation (same run ids)"), None)
    g = sp.add_argument_group("scheduling")
    g.add_argument("--executor", default="local", choices=["local", "slurm"],
                   help="local: in order on this machine; slurm: job arrays through submitit")
    g.add_argument("--profile", default=None,
                   help="SLURM resource profile (default: $BENCH_SLURM_PROFILE or gpu) in $BENCH_SLURM_PROFILES, "
                        "else ~/.config/afd-bench/profiles.toml when present, else slurm/profiles.toml")
    g.add_argument("--partition", default=None, help="slurm: the partition of every job, over the profile's")
    g.add_argument("--account", default=None, help="slurm: the account every job is charged to, over the profile's")
    g.add_argument("--qos", default=None, help="slurm: the quality of service of every job, over the profile's")
    g.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, then print the table")
    g.add_argument("--dry-run", action="store_true", help="print the runs that would execute, train nothing")
    g.add_argument("--gpus", default=None, metavar="LIST",
                   help="one worker per GPU (e.g. 0,1,2,3): independent runs train at once, parents first; a run "
                   "held by another runner is skipped for the next, a dead worker's run resumes on the others")
    g.add_argument("--workers", type=int, default=None, metavar="K",
                   help="the same with K workers on the CPU (each with --threads threads)")
    g.add_argument("--rerun", default=None, choices=RERUN_CHOICES,
                   help="archive these runs' results (results/runs/archive/) and train them again from scratch: "
                   "stale (done by code that changed since, see bench status), failed (by default a failed run is "
                   "tried again from its last checkpoint), all (every done or failed run). Without it done runs "
                   "are skipped, stale ones with a line saying so")
    sp.set_defaults(func=cmd_run)


def _report_parser(sub) -> None:
    sp = sub.add_parser("report", help="render a grid's table from the result files (or, with --evals, those of "
                        "`bench eval`)")
    _add_grid(sp, or_evals=True)
    sp.add_argument("--format", default="markdown", choices=["markdown", "latex", "csv", "html"],
                    help="html: one self-contained page of the grid (tables, figures, claims, every run)")
    sp.add_argument("--out", default=None, help="write to this file instead of stdout")
    sp.add_argument("--compare", default=None, choices=["paper"],
                    help="put the paper's published numbers and the difference under ours")
    sp.add_argument("--table", default=None, help="declared table to render (default: the grid's name: "
                    "table1..table5; other grids get a generic accuracy table)")
    sp.add_argument("--claims", action="store_true", help="instead of tables: the AFD paper's six claims checked "
                    "against the results, with seed spread and a verdict (Markdown)")
    sp.set_defaults(func=cmd_report)


def _compare_parser(sub) -> None:
    sp = sub.add_parser("compare", help="method A against method B on a grid's results: per metric, mean ± std "
                        "over seeds, difference, noise and verdict (ahead / not distinguishable)")
    _add_grid(sp)
    sp.add_argument("--a", required=True, metavar="METHOD", help="the method compared (e.g. yours)")
    sp.add_argument("--b", required=True, metavar="METHOD", help="the method it is compared with (e.g. afd)")
    sp.add_argument("--format", default="markdown", choices=["markdown", "csv"])
    sp.set_defaults(func=cmd_compare)


def _plot_parser(sub) -> None:
    sp = sub.add_parser("plot", help="draw a paper figure (PNG and PDF) from a grid's results")
    _add_grid(sp, data_root="fig3: data folder (default: $BENCH_DATA_ROOT or ./data)")
    sp.add_argument("--figure", required=True, choices=["fig1", "fig3", "fig4"],
                    help="fig1: feature gap per epoch; fig3: t-SNE before/after disentanglement; fig4: hparams")
    sp.add_argument("--out", default=None, help="output folder (default: <results>/figures)")
    sp.add_argument("--run", default=None, help="fig3: the AFD run id (default: the grid's first finished AFD run)")
    sp.add_argument("--n", type=int, default=1000, help="fig3: test images to embed (default 1000)")
    sp.add_argument("--methods", default=None, help="fig1: comma-separated fine-tuning methods to draw, or 'all' "
                    "(default: the paper's Figure 1a: vaft,afkd,arrest,afd)")
    sp.set_defaults(func=cmd_plot)


def _status_and_plan_parsers(sub) -> None:
    sp = sub.add_parser("status", help="per run: done / done (stale: computed by code that changed since; evaluation "
                        "potentially unreliable: the indicators tripped) / running / queued / failed (with reason) / "
                        "corrupt / missing")
    _add_grid(sp)
    sp.set_defaults(func=cmd_status)
    sp = sub.add_parser("plan", help="runs, epochs and estimated GPU-hours of a grid; nothing is run")
    _add_grid(sp)
    sp.add_argument("--gpus-per-run", type=int, default=4, metavar="K",
                    help="also show the critical path's wall time with K GPUs per run (default 4)")
    sp.set_defaults(func=cmd_plan)


def _speed_parser(sub) -> None:
    sp = sub.add_parser("speed", help="images/s of each method's full training step, data share, FLOP/s, baseline")
    sp.add_argument("--model", default="small_cnn", help="model (default small_cnn)")
    sp.add_argument("--methods", default=",".join(TABLE5_STEP_PAIR),
                    help="comma-separated methods, each timed against the first (default "
                    f"{','.join(TABLE5_STEP_PAIR)}: AFD Table 5's comparison)")
    sp.add_argument("--precision", default=None, choices=list(PRECISIONS),
                    help="training precision (default: the fastest this device runs natively: bf16 where it has "
                    "native bf16 (AMX, AVX512-BF16, bf16 GPUs), else fp32)")
    sp.add_argument("--compile", action="store_true", help="torch.compile each method's model (warm-up untimed)")
    sp.add_argument("--baseline", action="store_true",
                    help="also time each method fed by torchvision's DataLoader + PIL transforms in fp32 NCHW")
    sp.add_argument("--baseline-workers", type=int, default=2, help="DataLoader workers of the baseline (default 2)")
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--steps", type=int, default=10, help="timed steps per method, after the warm-up (default 10)")
    sp.add_argument("--warmup", type=int, default=2, help="untimed steps per method first (default 2)")
    sp.add_argument("--matmul-size", type=int, default=None, help="side of the peak-FLOP/s matmul (default 2048 "
                    "on CPU, 8192 on CUDA)")
    _add_json(sp)
    sp.add_argument("--eval", action=_MovedToSpeedEval)
    _add_runtime(sp)
    _add_plugin(sp)
    sp.set_defaults(func=cmd_speed)


def _speed_eval_parser(sub) -> None:
    sp = sub.add_parser("speed-eval", help="time the evaluation (clean, PGD-20, AutoAttack): ours (channels_last "
                        "and NCHW) against pyautoattack called directly on the NCHW model")
    sp.add_argument("--model", default="small_cnn", help="model (default small_cnn)")
    sp.add_argument("--checkpoint", default=None, help="evaluate this checkpoint of --model (default: make one "
                    "partly robust here with --train-steps FGSM-RS steps)")
    sp.add_argument("--n-images", type=int, default=200, help="first N test images (<= 500; default 200)")
    sp.add_argument("--reps", type=int, default=2, help="interleaved rounds, median reported (default 2)")
    sp.add_argument("--train-steps", type=int, default=100, help="FGSM-RS steps of the model made here")
    sp.add_argument("--contenders", default="ours,ours_plain,direct",
                    help="which evaluations to time (ours and direct required; default all three)")
    sp.add_argument("--save-model", default=None, help="save the model made here, for --checkpoint later")
    sp.add_argument("--no-threats", dest="threats", action="store_false", help="leave out L2 AutoAttack and the "
                    "corruption evaluation (L2 AutoAttack's Square: 5,000 queries per robust image)")
    _add_json(sp)
    _add_runtime(sp)
    sp.set_defaults(func=cmd_speed_eval)


class _MovedToSpeedEval(argparse.Action):
    """`bench speed --eval` was the evaluation's timing behind a flag; it is `bench speed-eval` now. The old
    spelling gets one line naming the new command (exit 2), at the flag, before argparse complains about the
    evaluation options that `bench speed` no longer has."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.exit(2, "bench: error: `bench speed --eval` is now its own command: bench speed-eval "
                       "(the same options without --eval; see bench speed-eval --help)\n")


def _doctor_parser(sub) -> None:
    sp = sub.add_parser("doctor", help="versions, devices, native precisions, determinism, data roots; --check: "
                        "the suite's promises on this machine (a few minutes)")
    sp.add_argument("--check", action="store_true", help="run the checks: every method's step in fp32 and bf16, "
                    "resume equals uninterrupted, evaluations agree, CPU vs GPU, export after SyncBatchNorm, speed")
    _add_runtime(sp, threads=False)
    sp.set_defaults(func=cmd_doctor)


def _eval_parser(sub) -> None:
    sp = sub.add_parser("eval", help="the paper's evaluation (clean, PGD-20, AutoAttack) of any checkpoint; resumes")
    sp.add_argument("--model", default=None, help="one of ours (bench list), or pkg.module:factory for your own")
    sp.add_argument("--checkpoint", default=None, help="weights: a state dict or a {'state_dict'|'model'|'net': ...} "
                    "wrapper, DataParallel prefixes fine, or one of our exported models")
    sp.add_argument("--zoo", default=None, help="a RobustBench model name instead of --model/--checkpoint")
    sp.add_argument("--dataset", required=True, help="test set (bench list)")
    _add_plugin(sp)
    _add_evaluation(sp)
    _add_folders(sp, results="results folder: evals/<eval_id>.json (default: results)", data_root=DATA_ROOT_HELP)
    _add_runtime(sp, evaluates=True)
    # An evaluation is neither compiled nor spread over processes: the runtime that `bench run` configures with
    # --compile and --procs-per-run/--gpus-per-run gets their off values here.
    sp.set_defaults(func=cmd_eval, compile=False, procs_per_run=None, gpus_per_run=None)


class _OneLineParser(argparse.ArgumentParser):
    """argparse's refusals as one line with where to look, like the suite's own: its usage block would bury the
    line that says what is wrong (a subcommand's parser is made by the same class)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="bench", description="afd-bench: adversarial fine-tuning benchmark")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_run_parser, _report_parser, _compare_parser, _plot_parser, _status_and_plan_parsers, _speed_parser,
                _speed_eval_parser, _doctor_parser, _eval_parser):
        add(sub)
    sp = sub.add_parser("list", help="methods, models, data sets and grids")
    _add_plugin(sp)
    sp.set_defaults(func=cmd_list)
    return p


# A path that the operating system refuses as a path (too long, a symlink loop, a file where a folder is due, no
# permission), wherever in a command it is first used, is bad input: one line naming it.
PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.ENOENT, errno.EROFS}


def one_line(message: str) -> str:
    """A message on one line whatever it quotes (a name given with a line break in it)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed one usage line; keep its exit code 2
        return int(e.code or 0)
    from bench.data import DataError
    from bench.models.architectures import ModelError

    try:
        from methods import base, plugins

        if base.PLUGIN_LOAD_ERROR is not None:
            raise base.PLUGIN_LOAD_ERROR
        plugins.load_modules(getattr(args, "plugin", None) or [])
        return args.func(args)
    except (ConfigError, DataError, ModelError) as e:
        print(f"bench: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in PATH_ERRNOS:  # a disk that fills up mid-run is no bad input: its traceback stands
            raise
        print(f"bench: error: {one_line(str(e.filename))}: {e.strerror}: check the path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
