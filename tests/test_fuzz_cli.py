"""The command line under generated input (Hypothesis): every subcommand with every one of its options, given odd
numbers, strings, paths and names and options that contradict each other. Each call ends, within a time bound, in
exit 0 or in exit 2 with exactly one stderr line and no traceback; a refused call writes nothing, and a valid one
writes only where that command writes (a finished result is never touched).

The work behind a valid call (training, evaluating, timing, submitting) is replaced by a stand-in that raises
``Reached`` once every check before it has passed: the fuzzing is of what the suite accepts, at a few
milliseconds a call, not of the work itself. The options come from the parser itself, so a new option is fuzzed
the day it is added.

CI runs a fixed budget (``BENCH_FUZZ_EXAMPLES``, default 400 calls, derandomized: the same calls every time);
``BENCH_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_cli.py`` searches longer. What a search found is kept below as
a fixed ``@example``.
"""
from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.cli import build_parser, main
from conftest import REPO, write_tiny_folder

EXAMPLES = int(os.environ.get("BENCH_FUZZ_EXAMPLES", "400"))
BOUND_S = 60  # one call, valid or not, answers within this (the slowest valid one here takes about a second)


class Reached(Exception):
    """A valid call got past every check to where it would start its real work."""


class Hang(Exception):
    pass


# -- the values --------------------------------------------------------------------------------------------
NUMBERS = ["-1", "0", "1", "2", "3", "-0", "1e8", "100000000", "10001", "500", "501", "99999999999999999999", "nan", "inf", "-inf",
           "0.5", "1.5", "1/2", "8/255", "0x10", "1_000", "", " ", "٣", "+7", "2**40"]
STRINGS = ["", " ", "x", "é", "日本語", "a" * 3000, "$(touch pwned)", "; touch pwned", "`touch pwned`", "-",
           "--", "a\nb", "a b", "%s%n", "../..", "*", "\\", "'", '"', "\t"]
PATH_KEYS = ["{file}", "{folder}", "{empty}", "{missing}", "{missing}/deeper", "{file}/below", "{loop}", "{loop}/x",
             "{unreadable}", "{tiny}", "{results}", "/proc/forbidden", "/dev/null", "", ".", "x" * 300,
             "{folder}/" + "y" * 300, "{box}/é日本", "{bad_toml}", "{grid_toml}", "{checkpoint}", "{garbage_pt}"]
NAMES = {
    "grid": ["demo", "table1", "nope", "../demo", "", "{grid_toml}", "{bad_toml}", "{missing}.toml", "{file}",
             "{folder}"],
    "plugin": ["nope_module", "os", "examples.my_method", "bench", "", "a.b.c", "json:loads", "{file}"],
    "model": ["small_cnn", "resnet18", "resnet19", "", "os:getcwd", "json:loads", "nope.mod:f", "small_cnn "],
    "dataset": ["digits", "cifar10", "cifar100", "tiny-imagenet", "nope", "", "folder:{tiny}", "folder:{empty}",
                "folder:{missing}", "folder:", "folder:{file}", "folder:{loop}"],
    "methods": ["vaft,afd", "vaft", "all", "", ",", "afdx", "vaft,vaft", "standard,afd"],
    "a": ["vaft", "afd", "nope", ""],
    "b": ["afd", "vaft", "nope", ""],
    "profile": ["gpu", "cpu", "nope", "", "{file}"],
    "zoo": ["Standard", "nope", ""],
    "device": ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "mps", "tpu", "", "cpu:1"],
    "gpus": ["0", "0,1", "0,0", "-1", "", ",", "a", "1e3"],
    "contenders": ["ours,ours_plain,direct", "ours,direct", "ours", "x", ""],
    "run": ["0123456789ab", "nope", ""],
}
SET_KEYS = ["train.epochs", "train.batch_size", "train.lr", "train.n_train", "train.milestones", "train.schedule",
            "train.precision", "eval.n_clean", "eval.n_pgd", "eval.n_aa", "eval.batch_size", "eval.pgd_steps", "eps",
            "seed", "model", "dataset", "afd.gamma", "hparams.gamma", "parent_file", "nope", "train.", ""]
SET_VALUES = NUMBERS + ["small_cnn", "digits", "folder:{tiny}", "{checkpoint}", "{missing}", "true", "0.5,0.75",
                        "x", "é"]
ONLY = ["method=vaft", "method=nope", "dataset=digits", "seed=0", "seed=9", "model=", "nope=1", "=", "method"]


def option_values(action: argparse.Action):
    """What to give an option, from its declaration: its name first, then its type and choices."""
    if action.option_strings and action.nargs == 0:
        return None  # a flag
    dest = action.dest
    if dest == "set":
        return st.builds(lambda k, v: f"{k}={v}", st.sampled_from(SET_KEYS), st.sampled_from(SET_VALUES)) | \
            st.sampled_from(["=", "train.epochs", "==", "train.epochs=", " = 1"])
    if dest == "only":
        return st.sampled_from(ONLY)
    if dest in NAMES:
        return st.sampled_from(NAMES[dest]) | st.sampled_from(STRINGS)
    if dest in ("results", "data_root", "out", "checkpoint", "save_model"):
        return st.sampled_from(PATH_KEYS)
    if action.choices:
        return st.sampled_from(list(action.choices)) | st.sampled_from(STRINGS)
    if action.type is int or dest in ("eps", "seeds"):
        return st.sampled_from(NUMBERS)
    return st.sampled_from(STRINGS + PATH_KEYS[:4])


def commands() -> dict[str, list[argparse.Action]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: [a for a in sp._actions if a.option_strings and a.dest != "help"]
            for name, sp in sub.choices.items()}


COMMANDS = commands()


# Values a careful user gives, by option: most calls are made of these with one odd value among them, so that the
# search reaches the checks behind argparse's and the valid calls behind every check.
SANE = {
    "grid": ["demo", "{grid_toml}"], "seeds": ["1", "2"], "only": ["method=vaft", "seed=0"],
    "set": ["train.epochs=1", "eval.n_aa=0", "afd.gamma=10", "dataset=folder:{tiny}", "eps=4/255"],
    "results": ["{results}", "{missing}", "{empty}"], "data_root": ["{box}/data"], "out": ["{box}/out.md"],
    "checkpoint": ["{checkpoint}"], "save_model": ["{box}/saved.pt"], "model": ["small_cnn"],
    "dataset": ["digits", "folder:{tiny}"], "methods": ["vaft,afd", "vaft"], "a": ["vaft"], "b": ["afd"],
    "device": ["cpu", "auto"], "threads": ["1", "2"], "eps": ["8/255", "0.03"], "contenders": ["ours,direct"],
    "plugin": ["examples.my_method"], "run": ["0123456789ab"], "profile": ["local", "cpu"],
    "n": ["4"], "n_pgd": ["2"], "n_aa": ["0"], "n_images": ["8"], "batch_size": ["4"], "steps": ["1"],
    "reps": ["1"], "train_steps": ["0", "1"], "warmup": ["0"],
}


# What a careful call of these commands gives besides the required options (bench eval: what to evaluate).
BASELINE = {"eval": ("model", "checkpoint", "n"), "speed-eval": ("n_images", "reps", "train_steps"),
            "speed": ("steps", "warmup", "batch_size")}


def sane_values(action: argparse.Action):
    if action.dest in SANE:
        return st.sampled_from(SANE[action.dest])
    if action.choices:
        return st.sampled_from(list(action.choices))
    return st.sampled_from(["1", "2", "0"]) if action.type is int else option_values(action)


@st.composite
def argvs(draw) -> list[str]:
    """One call: a command and a random subset of its options (some twice), the required ones mostly given. Its
    values: sane ones with one odd value among them (most calls), or odd ones throughout; now and then a stray
    word."""
    name = draw(st.sampled_from(sorted(COMMANDS)))
    argv = [name]
    actions = COMMANDS[name]
    wild = draw(st.integers(0, 3)) == 0
    chosen = draw(st.lists(st.sampled_from(actions), max_size=6))
    often = st.sampled_from([True] * 9 + [False])
    chosen += [a for a in actions if (a.required or not wild and a.dest in BASELINE.get(name, ()))
               and a not in chosen and draw(often)]
    if name == "report" and draw(st.booleans()):
        chosen.append(next(a for a in actions if a.dest == "grid"))
    odd = draw(st.integers(0, len(chosen))) if not wild else None  # the one odd value (len: none)
    for i, action in enumerate(chosen):
        values = option_values(action) if wild or i == odd else sane_values(action)
        argv.append(draw(st.sampled_from(action.option_strings)))
        if values is not None:
            argv.append(draw(values))
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(["stray", "--nope", "-x", "--set", ""])))
    return argv


# -- the sandbox -------------------------------------------------------------------------------------------
def make_box(root: Path) -> dict[str, str]:
    """The folder the calls run in, with a finished run in its results, and the placeholders' paths."""
    from bench.core.store import Store

    box = root / "box"
    box.mkdir()
    results = box / "results"
    Store(results).write("0123456789ab", {"run_id": "0123456789ab", "status": "done", "metrics": {"clean": 0.5}})
    (box / "file").write_text("not a folder")
    (box / "folder").mkdir()
    (box / "folder" / "inside.txt").write_text("x")
    (box / "empty" / "train").mkdir(parents=True)
    (box / "empty" / "test").mkdir()
    (box / "loop").symlink_to(box / "loop")
    (box / "unreadable").write_text("secret")
    (box / "unreadable").chmod(0)
    (box / "bad.toml").write_text("name = [unclosed\n")
    (box / "grid.toml").write_text('methods = ["vaft"]\nmodels = ["small_cnn"]\ndatasets = ["digits"]\n'
                                   'epochs = 1\n')
    (box / "garbage.pt").write_bytes(b"\x80\x04not a pickle")
    from bench.models.architectures import build_model

    torch.save(build_model("small_cnn", 10, 3).state_dict(), box / "model.pt")
    write_tiny_folder(box / "tiny", n_train=6, n_test=3, size=8)
    (box / "data").mkdir()
    return {"{box}": str(box), "{results}": str(results), "{file}": str(box / "file"),
            "{folder}": str(box / "folder"), "{empty}": str(box / "empty"), "{missing}": str(box / "missing"),
            "{loop}": str(box / "loop"), "{unreadable}": str(box / "unreadable"), "{tiny}": str(box / "tiny"),
            "{bad_toml}": str(box / "bad.toml"), "{grid_toml}": str(box / "grid.toml"),
            "{checkpoint}": str(box / "model.pt"), "{garbage_pt}": str(box / "garbage.pt")}


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under ``roots`` (symlinks not followed) with its kind, size and modification time (a folder's
    time aside: the check that a results folder is writable makes and removes a probe in it, leaving nothing)."""
    out = {}
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(dirpath) / name
                s = p.lstat()
                kind = stat.S_IFMT(s.st_mode)
                out[str(p)] = (kind, None if kind == stat.S_IFDIR else (s.st_size, s.st_mtime_ns))
    return out


def allowed_writes(argv: list[str], box: Path) -> list[Path]:
    """Where a valid call may write: report --out, plot's figures folder, and (run, eval) its results folder."""
    def opt(name, default=None):  # the last one given wins, as in argparse
        at = [i for i, a in enumerate(argv[:-1]) if a == name]
        return argv[at[-1] + 1] if at else default

    results = Path(box, opt("--results", "results"))
    return {"report": [Path(box, opt("--out", "-"))],
            "plot": [Path(box, opt("--out") or results / "figures")],
            "run": [results], "eval": [results / "evals", results]}.get(argv[0], [])


@contextmanager
def bounded(seconds: int):
    def alarm(*_):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def stand_ins(mp: pytest.MonkeyPatch):
    """The real work replaced by ``Reached`` and the process-wide torch settings restored after each call."""
    import bench.eval.standalone as standalone
    import bench.grid.pool as pool
    import bench.grid.runner as runner
    import bench.grid.slurm.submission as submission
    import bench.perf.doctor as doctor
    import bench.perf.speed as speed
    import bench.perf.speed_eval as speed_eval

    def reached(*args, **kwargs):
        raise Reached()

    class NoProcesses:
        @staticmethod
        def get_context(*args, **kwargs):
            raise Reached()

    for module, name in ((runner, "execute_recording_crash"), (submission, "submit"), (doctor, "run_checks"),
                         (speed, "synthetic_split"), (speed_eval, "partly_robust_model"),
                         (speed_eval, "_rounds"), (standalone, "Evaluator")):
        mp.setattr(module, name, reached)
    mp.setattr(pool, "multiprocessing", NoProcesses)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn.deterministic
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
        torch.backends.cudnn.deterministic = cudnn


@contextmanager
def plugins_undone():
    """A --plugin loaded by one call is forgotten after it (the registry, $BENCH_PLUGINS and the imported example
    module), so that no call and no later test sees another call's methods."""
    from methods import REGISTRY

    env, registry, modules = dict(os.environ), dict(REGISTRY), set(sys.modules)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        REGISTRY.clear()
        REGISTRY.update(registry)
        for name in [m for m in set(sys.modules) - modules if m.split(".")[0] == "examples"]:
            del sys.modules[name]


def call(argv: list[str], box: dict[str, str], capsys) -> None:
    """Run one generated call and check the promise."""
    root = Path(box["{box}"])
    for key in sorted(box, key=len, reverse=True):
        argv = [a.replace(key, box[key]) for a in argv]
    before = snapshot(root, REPO / "results")
    finished = (root / "results" / "runs" / "0123456789ab.json").read_bytes()
    capsys.readouterr()
    reached = False
    try:
        with bounded(BOUND_S), plugins_undone():
            code = main(argv)
    except Reached:
        code, reached = 0, True
    except SystemExit as e:  # pragma: no cover - main() answers with a code; never exits itself
        pytest.fail(f"{argv}: SystemExit({e.code}) out of main()")
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, code, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])
    after = snapshot(root, REPO / "results")
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bench"), (argv, err[-2000:])
        assert changed == [], (argv, changed)
    else:
        allowed = allowed_writes(argv, root)
        outside = [p for p in changed if not any(Path(p).is_relative_to(a) for a in allowed)]
        assert outside == [], (argv, reached, outside)
    assert (root / "results" / "runs" / "0123456789ab.json").read_bytes() == finished, argv
    assert not any(Path(p).name == "pwned" for p in after), argv


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    old = os.getcwd()
    paths = make_box(tmp_path_factory.mktemp("fuzz_cli"))
    os.chdir(paths["{box}"])  # the default --results (results) lands in the sandbox
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_DATA_ROOT", str(Path(paths["{box}"]) / "data"))
        mp.setenv("BENCH_SLURM_PROFILE", "gpu")
        with stand_ins(mp):
            yield paths
    os.chdir(old)


# Bounds where a typo costs hours or the machine: refused before anything is expanded or allocated, with what fits.
BOUNDS = [
    (["run", "--grid", "demo", "--dry-run", "--set", "train.epochs=100000000"], "train.epochs must be <= 10000"),
    (["plan", "--grid", "demo", "--set", "train.batch_size=1000000000000"], "train.batch_size must be at most"),
    (["run", "--grid", "demo", "--dry-run", "--set", "eval.batch_size=1000000000000"], "eval.batch_size must be at"),
    (["eval", "--model", "small_cnn", "--checkpoint", "{checkpoint}", "--dataset", "digits", "--batch-size",
      "1000000000000"], "eval.batch_size must be at most"),
    (["speed", "--batch-size", "1000000000000"], "--batch-size must be at most"),
    (["speed", "--batch-size", "100000", "--steps", "9000"], "(--steps + --warmup + 2) must be at most"),
    (["speed", "--steps", "100000000"], "--steps + --warmup must be <= 10000"),
    (["speed", "--matmul-size", "10000000"], "--matmul-size must be in [1, "),
    (["speed", "--baseline-workers", "100000"], "--baseline-workers must be in [0, "),
    (["speed-eval", "--train-steps", "100000000"], "--train-steps <= 100000"),
    (["speed-eval", "--reps", "100000000"], "--reps <= 100"),
    (["run", "--grid", "demo", "--dry-run", "--threads", "100000000"], "--threads must be <= "),
    (["run", "--grid", "demo", "--dry-run", "--seeds", "100000000"], "at most 10000 seeds"),
]


@pytest.mark.parametrize("argv,message", BOUNDS, ids=[" ".join(a) for a, _ in BOUNDS])
def test_bounds_are_refused_with_what_fits(box, capsys, argv, message):
    call(argv, box, capsys)  # call() reads the line: run again to see what it says
    assert main([a.replace("{checkpoint}", box["{checkpoint}"]) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err


# Found by the search and kept: each failed once.
@example(["run", "--grid", "demo", "--seeds", "100000000", "--dry-run"])
@example(["plan", "--grid", "demo", "--seeds", "100000000"])
@example(["run", "--grid", "demo", "--seeds", "1e8", "--dry-run"])
@example(["status", "--grid", "demo", "--results", "{file}"])
@example(["report", "--grid", "demo", "--results", "{missing}"])
@example(["eval", "--model", "small_cnn", "--checkpoint", "{folder}", "--dataset", "digits", "--n", "10"])
@example(["speed-eval", "--checkpoint", "{checkpoint}"])
@example(["speed-eval", "--save-model", "{loop}"])
@example(["run", "--grid"])  # argparse's usage block: now one line
@example(["run", "--grid", "a\nb"])  # a name with a line break, quoted in the message
@example(["report", "--results", "x" * 300, "--grid", "demo"])  # a name too long for the file system
@example(["plan", "--grid", "demo"])  # a finished result without its config
@example(["plot", "--out", "{file}/below", "--grid", "demo", "--figure", "fig1"])
@example(["plot", "--out", "{loop}/x", "--grid", "demo", "--figure", "fig1"])
@example(["report", "--grid", "demo", "--out", "{folder}"])
@example(["plot", "--grid", "{grid_toml}", "--figure", "fig4"])  # a grid without AFD: KeyError, now one line
@example(["eval", "--zoo", "Standard", "--dataset", "digits"])  # refused after the writable probe: nothing left
@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(argv=argvs())
def test_any_call_answers_in_one_line_or_runs(box, capsys, argv):
    call(argv, box, capsys)
