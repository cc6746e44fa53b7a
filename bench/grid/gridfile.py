"""Grids from a TOML file: ``bench run --grid my_grid.toml`` (also ``plan``, ``status``, ``report``, ``plot``).

A grid file is methods x models x data sets x seeds, with per-method hyperparameter overrides and small sweeps,
the parent, train/eval overrides and the table layout::

    plugins  = ["my_method.vaft_clean"]    # optional: modules that register methods (or install an entry point)
    methods  = ["vaft", "vaft_clean"]
    models   = ["small_cnn"]
    datasets = ["digits"]
    seeds    = 2                           # seeds 0..1, or a list [0, 3]
    epochs   = 2                           # the recipes scaled to 2 epochs (each method keeps its schedule's shape)

    [train]                                # any TrainConfig field, for every run (after `epochs`)
    n_train = 1000
    [eval]                                 # any EvalConfig field
    n_aa = 0

    [hparams.vaft_clean]                   # per method; a list is a sweep (all combinations within the method)
    clean_weight = [0.5, 1.0]

    [parent]                               # one of: how our parents train, a RobustBench model, your own file
    epochs = 5                             #   our natural / PGD-AT parent, trained for 5 epochs
    # zoo  = "Carmon2019Unlabeled"         #   a RobustBench model (pip install -e '.[zoo]')
    # file = "natural.pt"                  #   your checkpoint, relative to this file; `model` must be the grid's
    # model = "small_cnn"

    [table]
    caption = "My method against vAFT"
    metrics = ["clean", "pgd20", "aa", "avg"]

Everything is checked before anything runs: an unknown key, a wrong type, an unknown method / model / data set or
hyperparameter, or a value out of range is one line naming the file, the key and the fix (``ConfigError``).
The paper's grids stay in Python (``bench.grid.grids``); ``to_toml`` writes one of them as a file that expands to the
same run ids.
"""
from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.config import (
    ConfigError,
    EvalConfig,
    RunConfig,
    TrainConfig,
    coerce_like,
    parse_eps,
    with_parent_file,
)
from bench.data import DATASETS
from bench.grid.runs import make_run
from bench.models.architectures import MODELS
from bench.train.validation import validate_run
from methods import REGISTRY, get_method, parent_method, plugins, resolve_hparams

TOP_KEYS = ("name", "plugins", "methods", "models", "datasets", "seeds", "epochs", "eps", "train", "eval",
            "hparams", "parent", "table")
PARENT_KEYS = ("epochs", "method", "zoo", "file", "model")
TABLE_KEYS = ("caption", "metrics")
METRICS = ("clean", "pgd20", "aa", "avg")


@dataclass(frozen=True)
class GridFile:
    path: Path
    name: str
    runs: list[RunConfig]
    plugins: tuple[str, ...] = ()
    table: dict[str, Any] = field(default_factory=dict)


def is_grid_file(name: str) -> bool:
    return name.endswith(".toml")


class _Checker:
    """One-line errors that name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, msg: str) -> None:
        raise ConfigError(f"grid file {self.path}: {key}: {msg}")

    def table(self, data: Any, key: str, known: tuple[str, ...]) -> dict:
        if not isinstance(data, dict):
            self.fail(key, f"expected a table ([{key}]), got {type(data).__name__}")
        for k in data:
            if k not in known:
                self.fail(f"{key}.{k}" if key else k, f"unknown key; known: {', '.join(known)}")
        return data

    def names(self, data: dict, key: str, known: tuple[str, ...] | None, *, required: bool = True,
              prefix_ok: tuple[str, ...] = ()) -> list[str]:
        value = data.get(key)
        if value is None:
            if required:
                self.fail(key, "missing; give a list, e.g. " + (f'{key} = ["{known[0]}"]' if known else f"{key} = []"))
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            self.fail(key, f"expected a non-empty list of names, got {value!r}")
        for v in value:
            if known is not None and v not in known and not v.startswith(prefix_ok or ("\0",)):
                self.fail(key, f"unknown name '{v}'; known: {', '.join(known)}")
        return list(dict.fromkeys(value))

    def dataclass_overrides(self, data: Any, key: str, cls: type) -> dict[str, Any]:
        data = self.table(data, key, tuple(f.name for f in dataclasses.fields(cls)))
        defaults = cls()
        out = {}
        for k, v in data.items():
            ok, v2 = coerce_like(getattr(defaults, k), v)
            if not ok:
                self.fail(f"{key}.{k}", f"expected a {type(getattr(defaults, k)).__name__}, got {v!r}")
            out[k] = v2
        return out


def load(path: str | Path, seeds: int | None = None) -> GridFile:
    """Read, validate and expand a grid file. ``seeds`` (the command line's --seeds, when given > 1) overrides
    the file's ``seeds``. The keys are checked in the order they are read below: the first bad one is reported."""
    path = Path(path)
    chk = _Checker(path)
    data = _read(path)
    chk.table(data, "", TOP_KEYS)

    mods = chk.names(data, "plugins", None, required=False)
    plugins.load_modules(mods)

    methods = chk.names(data, "methods", tuple(sorted(REGISTRY)))
    models = chk.names(data, "models", MODELS)
    datasets = chk.names(data, "datasets", DATASETS, prefix_ok=("folder:",))
    seed_list = _seeds(chk, data.get("seeds", 1), seeds)
    epochs = data.get("epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        chk.fail("epochs", f"expected a whole number >= 1, got {epochs!r}")
    eps = _eps(chk, data.get("eps"))
    train_over = chk.dataclass_overrides(data.get("train", {}), "train", TrainConfig)
    eval_over = chk.dataclass_overrides(data.get("eval", {}), "eval", EvalConfig)
    sweeps = _sweeps(chk, chk.table(data.get("hparams", {}), "hparams", tuple(methods)), methods)
    parent = _parent(chk, data.get("parent", {}), models)
    parent_file = None
    if "file" in parent:
        parent_file = (path.parent / parent["file"]).resolve()
        if not parent_file.is_file():
            chk.fail("parent.file", f"{parent_file} does not exist")
        if "model" in parent:
            models = [parent["model"]]
    table = _table(chk, data.get("table", {}))

    runs = [run for seed in seed_list for model in models for dataset in datasets for m in methods
            for run in _runs(m, sweeps[m], model=model, dataset=dataset, seed=seed, epochs=epochs, eps=eps,
                             train_over=train_over, eval_over=eval_over, parent=parent, parent_file=parent_file)]
    for r in runs:
        try:
            validate_run(r)
        except ConfigError as e:
            chk.fail("values", str(e))
    return GridFile(path=path, name=str(data.get("name") or path.stem), runs=runs, plugins=tuple(mods), table=table)


def _read(path: Path) -> dict[str, Any]:
    """The file's TOML (ConfigError in one line when it is missing, not TOML, or not UTF-8)."""
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist (a grid is a name from `bench list` or a .toml file)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"grid file {path}: not valid TOML ({e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"grid file {path}: not a UTF-8 text file") from None


# The most seeds a grid may repeat its runs with. The paper reports 3 and a careful sweep uses tens; a bigger number
# is a typo, and the runs are expanded in memory before anything else looks at them (10^8 seeds never answered).
MAX_SEEDS = 10_000


def _seeds(chk: _Checker, raw: Any, seeds: int | None) -> list[int]:
    """``seeds``: a count (seeds 0..n-1) or a list of seeds; the command line's --seeds > 1 wins."""
    if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, list) and raw and all(
            isinstance(s, int) and not isinstance(s, bool) for s in raw))):
        chk.fail("seeds", f"expected a number of seeds (>= 1) or a list of seeds, got {raw!r}")
    if isinstance(raw, int):
        if raw < 1:
            chk.fail("seeds", f"must be >= 1 (got {raw})")
        if raw > MAX_SEEDS:
            chk.fail("seeds", f"at most {MAX_SEEDS} seeds (got {raw})")
        seed_list = list(range(raw))
    else:
        if any(s < 0 for s in raw):
            chk.fail("seeds", f"seeds must be >= 0 (got {raw})")
        seed_list = list(dict.fromkeys(raw))
    if seeds is not None and seeds > 1:
        seed_list = list(range(seeds))
    return seed_list


def _eps(chk: _Checker, raw: Any) -> float | None:
    """``eps``: a number or a fraction like "8/255", in (0, 1]."""
    if raw is None:
        return None
    try:
        return parse_eps(raw)
    except ConfigError:
        chk.fail("eps", f"a number or a fraction like \"8/255\" in (0, 1] (pixels are in [0, 1]: write \"8/255\"), "
                        f"got {raw!r}")


def _sweeps(chk: _Checker, hp_table: dict, methods: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per method, the hyperparameter combinations to run: the product of the values listed (one each if none)."""
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for m in methods:
        over = hp_table.get(m, {})
        known = tuple(f.name for f in dataclasses.fields(get_method(m).Hparams))
        chk.table(over, f"hparams.{m}", known)
        names = list(over)
        values = [v if isinstance(v, list) else [v] for v in over.values()]
        for n, vs in zip(names, values):
            if not vs:
                chk.fail(f"hparams.{m}.{n}", "an empty list sweeps nothing; give at least one value")
        combos = [dict(zip(names, c)) for c in itertools.product(*values)] or [{}]
        for c in combos:
            try:
                resolve_hparams(m, c)  # types and ranges, one line each
            except ConfigError as e:
                chk.fail(f"hparams.{m}", str(e))
        sweeps[m] = combos
    return sweeps


def _parent(chk: _Checker, raw: Any, models: list[str]) -> dict[str, Any]:
    """``[parent]``: one of method, zoo, file (with the file's model), and the parent's epochs."""
    parent = chk.table(raw, "parent", PARENT_KEYS)
    chosen = [k for k in ("method", "zoo", "file") if k in parent]
    if len(chosen) > 1:
        chk.fail("parent", f"give one of method, zoo, file (got {', '.join(chosen)})")
    p_epochs = parent.get("epochs")
    if p_epochs is not None and (isinstance(p_epochs, bool) or not isinstance(p_epochs, int) or p_epochs < 1):
        chk.fail("parent.epochs", f"expected a whole number >= 1, got {p_epochs!r}")
    for k in ("method", "zoo", "file", "model"):
        if k in parent and (not isinstance(parent[k], str) or not parent[k]):
            chk.fail(f"parent.{k}", f"expected a name, got {parent[k]!r}")
    if "method" in parent and parent["method"] not in REGISTRY:
        chk.fail("parent.method", f"unknown method '{parent['method']}'; known: {', '.join(sorted(REGISTRY))}")
    if "model" in parent and "file" not in parent:
        chk.fail("parent.model", "only goes with parent.file (the architecture of your checkpoint)")
    if "model" in parent and parent["model"] not in models:
        chk.fail("parent.model", f"'{parent['model']}' is not among the grid's models {models}: a parent file is "
                                 "fine-tuned in its own architecture")
    return parent


def _table(chk: _Checker, raw: Any) -> dict[str, Any]:
    """``[table]``: the layout of the grid's table (caption, metrics)."""
    table = chk.table(raw, "table", TABLE_KEYS)
    if "caption" in table and not isinstance(table["caption"], str):
        chk.fail("table.caption", f"expected a string, got {table['caption']!r}")
    if "metrics" in table:
        chk.names(table, "metrics", METRICS)
    return table


def _runs(m: str, sweep: list[dict[str, Any]], *, model: str, dataset: str, seed: int, epochs: int | None,
          eps: float | None, train_over: dict[str, Any], eval_over: dict[str, Any], parent: dict[str, Any],
          parent_file: Path | None) -> list[RunConfig]:
    """The runs of method ``m`` in one cell (model, data set, seed): one per hyperparameter combination."""
    cls = get_method(m)
    out = []
    for hp in sweep:
        train = dataclasses.replace(cls.recipe, **({"epochs": epochs} if epochs else {}))
        train = dataclasses.replace(train, **train_over)
        ev = dataclasses.replace(EvalConfig(), **eval_over)
        p_epochs = parent.get("epochs")
        parent_run = None
        if cls.parent is not None and "method" in parent:
            parent_run = make_run(parent["method"], model=model, dataset=dataset, eval=ev,
                                  epochs=p_epochs, **_parent_train(train_over))
        run = make_run(m, model=model, dataset=dataset, train=train, hparams=hp, eval=ev, seed=seed,
                       parent=parent_run, parent_epochs=p_epochs, parent_train=_scaled_parent_train(cls, train_over))
        if run.parent is not None and run.parent.eval.feature_gap_every_epoch:
            # the parent measures the feature gap after its last epoch only, as the paper grids' parents do: the
            # per-epoch curve is its children's, and a file that asks for it shares the paper grids' parents
            run = dataclasses.replace(run, parent=dataclasses.replace(
                run.parent, eval=dataclasses.replace(run.parent.eval, feature_gap_every_epoch=False)))
        if eps is not None:
            run = _with_eps(run, eps)
        if cls.parent is not None and "zoo" in parent:
            run = dataclasses.replace(run, parent=None, parent_zoo=f"zoo:{parent['zoo']}")
        if cls.parent is not None and parent_file is not None:
            run = with_parent_file(run, str(parent_file))
        out.append(run)
    return out


def _parent_train(train_over: dict[str, Any]) -> dict[str, Any]:
    # The parent shares the grid's data-subset size (n_train) so it is trained on the same images; its schedule
    # and epochs stay its own recipe's.
    return {k: v for k, v in train_over.items() if k in ("n_train", "precision", "batch_size")}


def _scaled_parent_train(cls: Any, train_over: dict[str, Any]) -> TrainConfig | None:
    if cls.parent is None:
        return None
    return dataclasses.replace(get_method(parent_method(cls.parent)).recipe, **_parent_train(train_over))


def _with_eps(run: RunConfig, eps: float) -> RunConfig:
    parent = _with_eps(run.parent, eps) if run.parent is not None else None
    return dataclasses.replace(run, eps=eps, parent=parent)


def to_toml(runs: list[RunConfig]) -> str:
    """A grid file for a Python grid made of full-recipe runs with default parents: one (methods x models x
    data sets x seeds) block per distinct hyperparameter set is not expressible in general, so this writes the
    common case and refuses the rest (ConfigError), which is what the test of the format needs."""
    methods = list(dict.fromkeys(r.method for r in runs))
    models = list(dict.fromkeys(r.model for r in runs))
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    seeds = sorted({r.seed for r in runs})
    evals = {r.eval for r in runs}
    if len(evals) != 1:
        raise ConfigError("to_toml: the runs use several evaluation settings")
    ev = evals.pop()
    lines = [f"methods = {_toml(methods)}", f"models = {_toml(models)}", f"datasets = {_toml(datasets)}",
             f"seeds = {_toml(seeds)}"]
    diff = {f.name: getattr(ev, f.name) for f in dataclasses.fields(EvalConfig)
            if getattr(ev, f.name) != getattr(EvalConfig(), f.name)}
    if diff:
        lines.append("\n[eval]")
        lines += [f"{k} = {_toml(v)}" for k, v in diff.items()]
    return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)
