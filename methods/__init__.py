"""Training methods, one plugin module each, registered by name. Every plugin is imported here explicitly so
the registry is complete and a typo in a name fails loudly instead of silently training something else."""
from methods.base import (REGISTRY, Context, Method, MethodError, StepInfo, get_method, make_hparams, parent_method,
                          register, resolve_hparams)

from methods import standard, pgd_at, vaft, afd, trades, free_at, fgsm_ga, atas, afkd, arrest, rift, afa  # noqa: E402,F401  (registration)

from methods.factory import build_method  # noqa: E402  (after the registry: it looks names up there)

# Methods from outside the package: installed entry points and $BENCH_PLUGINS (methods/plugins.py).
from methods import plugins, registry  # noqa: E402

try:
    plugins.load_entry_points()
    plugins.load_environment()
except MethodError as _e:  # a broken plugin must not make the package unimportable: the CLI reports it in one line
    registry.PLUGIN_LOAD_ERROR = _e  # read as methods.base.PLUGIN_LOAD_ERROR too

__all__ = ["REGISTRY", "Context", "Method", "MethodError", "StepInfo", "build_method", "get_method", "make_hparams",
           "parent_method", "register", "resolve_hparams"]
