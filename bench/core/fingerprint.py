"""Which code produced a result: a fingerprint of the code a run goes through, so that a result computed by other
code is known as such ("stale") instead of being shown as if the current code had produced it.

Counted: every module of the packages that train and evaluate (``COUNTED_PACKAGES``: configs, numerics, data,
models, attacks and the evaluator, the training loop), and the modules of the method's class and of every class
it derives from (a plugin's own module included, wherever it is installed). Not counted: the grid runner, the
report, the command line, and in every counted module its comments, docstrings and formatting: each module's
digest is taken over ``ast.unparse`` of its syntax tree without docstrings, so rewrapping a comment or a docstring
changes nothing, and any change to what the code does changes the module's digest.

A module's source is read once per process, the first time it is asked for: a long grid records the code that
process imported (editing a file while a grid runs does not change what that process runs, nor what it records).
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import sys
from pathlib import Path
from typing import Iterable

BENCH = Path(__file__).resolve().parents[1]  # the bench package
COUNTED_PACKAGES = ("core", "data", "models", "eval", "train")
_DIGESTS: dict[str, str] = {}  # module file -> digest, read once per process


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def source_digest(source: str) -> str:
    """12 hex digits naming what ``source`` does: its syntax tree without docstrings, comments or layout."""
    text = ast.unparse(_without_docstrings(ast.parse(source)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    key = str(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = source_digest(path.read_text(encoding="utf-8"))
    return _DIGESTS[key]


def _bench_modules() -> dict[str, Path]:
    out = {}
    for pkg in COUNTED_PACKAGES:
        for path in sorted((BENCH / pkg).rglob("*.py")):
            parts = path.relative_to(BENCH.parent).with_suffix("").parts
            out[".".join(p for p in parts if p != "__init__")] = path
    return out


def _class_modules(cls: type) -> dict[str, Path]:
    """The modules defining ``cls`` and every class it derives from (not the standard library's ``object``)."""
    out = {}
    for c in cls.__mro__:
        module = sys.modules.get(c.__module__)
        if c is object or module is None:
            continue
        try:
            path = inspect.getsourcefile(module)
        except TypeError:  # a built-in module: nothing to read
            continue
        if path:
            out[c.__module__] = Path(path).resolve()
    return out


def code_fingerprint(method_cls: type) -> dict:
    """``{"digest": 12 hex digits over every counted module, "modules": {module name: digest}}`` for a run of the
    method class ``method_cls``."""
    modules = {**_bench_modules(), **_class_modules(method_cls)}
    digests = {name: file_digest(path) for name, path in sorted(modules.items())}
    overall = hashlib.sha256(repr(sorted(digests.items())).encode()).hexdigest()[:12]
    return {"digest": overall, "modules": digests}


def changed_modules(recorded: dict | None, current: dict) -> list[str] | None:
    """The modules whose code differs between a result's recorded fingerprint and the current one (added and
    removed modules included), sorted; None when the result recorded none (it predates fingerprints)."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("modules"), dict):
        return None
    if recorded.get("digest") == current["digest"]:
        return []
    old, new = recorded["modules"], current["modules"]
    return sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))


def describe_changes(changed: Iterable[str], limit: int = 4) -> str:
    """'bench.train.loop, methods.afd and 3 more' — for one line of ``bench status`` or ``bench run``."""
    changed = list(changed)
    if len(changed) <= limit:
        return ", ".join(changed)
    return ", ".join(changed[:limit]) + f" and {len(changed) - limit} more"
