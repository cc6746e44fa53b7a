"""Training methods, one plugin module each, registered by name. Every plugin is imported here explicitly so
the registry is complete and a typo in a name fails loudly instead of silently training something else."""
from methods.base import (REGISTRY, Context, Method, MethodError, StepInfo, get_method, make_hparams, register,
                          resolve_hparams)

from methods import standard, pgd_at, vaft, afd, trades, free_at, fgsm_ga, atas, afkd, arrest, rift, afa  # noqa: E402,F401  (registration)

__all__ = ["REGISTRY", "Context", "Method", "MethodError", "StepInfo", "get_method", "make_hparams", "register",
           "resolve_hparams"]
