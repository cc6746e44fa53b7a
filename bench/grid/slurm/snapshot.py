"""The code a SLURM job runs, frozen at submission: ``bench/``, ``methods/`` and every plugin loaded from elsewhere.

A job may wait in the queue for hours; what it imports must be what was submitted, not what the source folders
hold when it starts. :func:`snapshot_code` copies the packages into ``<results>/slurm/snapshots/<content hash>/``;
the job runs with that folder as its working directory and first on ``PYTHONPATH``, so ``bench``, ``methods`` and
the plugins resolve there before anywhere else.

A plugin (an installed entry point of ``afd_bench.methods``, a module in ``$BENCH_PLUGINS``, which ``--plugin`` and
a grid file's ``plugins`` fill) is frozen whole: its top-level package folder, or its single module file. What
cannot be frozen is refused in one line before anything is written: a namespace package (no ``__init__.py``: its
parts may lie in several folders) and compiled code (a C extension, a built-in module), which a copy of its
source would not reproduce. The plugin's own dependencies are not frozen: they come from the environment.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from importlib.metadata import entry_points
from pathlib import Path

from bench.core.config import ConfigError
from bench.grid.slurm.profiles import REPO
from methods import plugins

SNAPSHOT_PACKAGES = ("bench", "methods")
COMPILED = (".so", ".pyd", ".dylib")


class SnapshotError(ConfigError):
    """A plugin whose code cannot be frozen into the job's snapshot."""


def plugin_modules() -> tuple[str, ...]:
    """The plugin modules this process loaded, in load order: installed entry points, then ``$BENCH_PLUGINS``
    (``--plugin`` and grid files record theirs there). The job imports the same names from its snapshot."""
    names = [ep.value.split(":")[0].strip() for ep in entry_points(group=plugins.ENTRY_POINT_GROUP)]
    names += [m.strip() for m in os.environ.get(plugins.ENV, "").split(",") if m.strip()]
    return tuple(dict.fromkeys(names))


def plugin_sources(modules: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Top-level name -> the folder or file to freeze, for every plugin outside ``bench``/``methods``; raises
    :class:`SnapshotError` (one line) for a plugin that cannot be frozen."""
    sources: dict[str, Path] = {}
    for module in plugin_modules() if modules is None else modules:
        top = module.split(".")[0]
        if top in SNAPSHOT_PACKAGES or top in sources:
            continue
        sources[top] = _source_of(module, top)
    return sources


def _source_of(module: str, top: str) -> Path:
    mod = sys.modules.get(top)
    if mod is None:  # loaded plugins are imported already; this is for a name given directly
        raise SnapshotError(f"plugin {module} is not imported in this process, so its code cannot be frozen for "
                            "the SLURM jobs: name it with --plugin or in $BENCH_PLUGINS")
    where = f"plugin {module}: its top-level {'package' if hasattr(mod, '__path__') else 'module'} {top}"
    file = getattr(mod, "__file__", None)
    if hasattr(mod, "__path__"):
        paths = list(mod.__path__)
        if file is None or len(paths) != 1:
            raise SnapshotError(f"{where} is a namespace package (no __init__.py; in {', '.join(paths)}), which "
                                "the SLURM code snapshot cannot freeze: add an __init__.py to its folder")
        folder = Path(file).resolve().parent
        compiled = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in COMPILED)
        if compiled:
            raise SnapshotError(f"{where} holds compiled code ({', '.join(compiled[:3])}) that the SLURM code "
                                f"snapshot cannot freeze: move the method into a pure-Python module of its own")
        return folder
    if file is None or Path(file).suffix != ".py":
        raise SnapshotError(f"{where} is compiled ({file or 'built in'}), which the SLURM code snapshot cannot "
                            "freeze: write the method in a pure-Python module")
    return Path(file).resolve()


def _files(src: Path) -> list[tuple[Path, str]]:
    """(file, its path inside the snapshot) for a folder (without bytecode caches) or a single file."""
    if src.is_file():
        return [(src, src.name)]
    return [(p, f"{src.name}/{p.relative_to(src).as_posix()}") for p in sorted(src.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def snapshot_code(results: Path, frozen: dict[str, Path] | None = None) -> Path:
    """Copy the code a job runs (bench/, methods/ and the plugins, ``frozen`` or else :func:`plugin_sources`) into
    <results>/slurm/snapshots/<hash>/ (reused when the content is identical)."""
    frozen = plugin_sources() if frozen is None else frozen
    ours = sorted(p for pkg in SNAPSHOT_PACKAGES for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    files = [(p, p.relative_to(REPO).as_posix()) for p in ours]
    for src in frozen.values():
        files += _files(src)
    h = hashlib.sha256()
    for p, rel in files:  # without plugins, the same hash (hence folder) as before plugins were frozen
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    dest = Path(results).resolve() / "slurm" / "snapshots" / h.hexdigest()[:12]
    if not dest.exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for p, rel in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        try:
            tmp.rename(dest)
        except OSError:  # another submitter made the same snapshot at the same time
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
