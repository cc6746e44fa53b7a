"""Methods from outside this package: installed plugins and modules named on the command line.

A method is a ``Method`` subclass decorated with ``@register`` in any importable module. Such a module joins the
registry in one of three ways, all before any run is built:

- an installed package declares it under the entry-point group ``afd_bench.methods``
  (``[project.entry-points."afd_bench.methods"] my_method = "my_pkg.my_method"``): loaded whenever ``methods`` is
  imported, so every process (a cluster job, a spawned rank) has it;
- ``--plugin pkg.module`` on the command line, or ``plugins = ["pkg.module"]`` in a grid file: imported by
  ``load_modules``, which also records the names in ``$BENCH_PLUGINS`` so child processes and SLURM jobs (which
  inherit the environment) import them too;
- ``$BENCH_PLUGINS`` itself (comma-separated module names).

``origin(name)`` says where a registered method came from (``bench list`` shows it).
"""
from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from methods.registry import REGISTRY, MethodError

ENTRY_POINT_GROUP = "afd_bench.methods"
ENV = "BENCH_PLUGINS"
_SOURCES: dict[str, str] = {}  # module name -> how it was loaded


def _import(module: str, how: str) -> None:
    if module in _SOURCES:
        return
    before = set(REGISTRY)
    try:
        importlib.import_module(module)
    except MethodError:
        raise
    except ModuleNotFoundError as e:
        raise MethodError(f"plugin {module} ({how}) cannot be imported: no module named {e.name!r}; install its "
                          "package (pip install -e <path>) or fix the module path") from None
    except Exception as e:  # noqa: BLE001 - a broken plugin is the user's bad input: one line
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise MethodError(f"plugin {module} ({how}) failed to import: {type(e).__name__}: {first}") from None
    _SOURCES[module] = how
    if not set(REGISTRY) - before and not any(c.__module__ == module for c in REGISTRY.values()):
        raise MethodError(f"plugin {module} ({how}) registered no method: decorate its Method subclass with "
                          "@methods.register")


def load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        _import(ep.value.split(":")[0], f"entry point of {dist}")


def load_modules(modules: list[str] | tuple[str, ...]) -> None:
    """Import ``--plugin`` modules and remember them in $BENCH_PLUGINS for child processes."""
    mods = [m.strip() for m in modules if m and m.strip()]
    for m in mods:
        _import(m, "--plugin")
    known = [m for m in os.environ.get(ENV, "").split(",") if m]
    os.environ[ENV] = ",".join(dict.fromkeys(known + mods))


def load_environment() -> None:
    for m in os.environ.get(ENV, "").split(","):
        if m.strip():
            _import(m.strip(), f"${ENV}")


def origin(name: str) -> str:
    """'afd-bench' for a built-in method, else '<module> (<how it was loaded>)'."""
    module = REGISTRY[name].__module__
    if module.startswith("methods."):
        return "afd-bench"
    return f"{module} ({_SOURCES.get(module, 'imported')})"
