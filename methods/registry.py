"""The one registry that names methods: ``@register`` adds a ``Method`` subclass, the rest of the suite finds it
by name and turns ``--set`` overrides into its checked hyperparameters.

Methods (``methods/base.py``, its subclasses) and the plugin loader (``methods/plugins.py``) import from here;
``methods.base`` re-exports the names so that ``from methods.base import register`` keeps working. This module
knows a method only through what it reads (``name``, ``Hparams``, ``parent``, ``ranges``, ``produces``), so it
does not import ``methods.base`` (which imports it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any

from bench.core.config import ConfigError, coerce_like


class MethodError(ConfigError):
    """Unknown method or bad hyperparameters (one line, exit code 2 at the CLI)."""


# name -> its ``methods.base.Method`` subclass
REGISTRY: dict[str, type] = {}
PARENT_KINDS = (None, "natural", "adversarial")
# Set by methods/__init__.py when an installed plugin failed to load: named where a method is not found.
PLUGIN_LOAD_ERROR: MethodError | None = None


def register(cls: type) -> type:
    if not dataclasses.is_dataclass(cls.Hparams) or not cls.Hparams.__dataclass_params__.frozen:
        raise TypeError(f"{cls.__name__}.Hparams must be a frozen dataclass")
    if cls.name in REGISTRY:
        raise ValueError(f"method name '{cls.name}' registered twice ({REGISTRY[cls.name].__name__}, {cls.__name__})")
    if cls.parent not in PARENT_KINDS:
        raise ValueError(f"{cls.__name__}.parent must be None, 'natural' or 'adversarial'")
    produces = vars(cls).get("produces")
    if produces is not None:
        if produces not in PARENT_KINDS[1:]:
            raise ValueError(f"{cls.__name__}.produces must be 'natural' or 'adversarial'")
        other = [m for m in REGISTRY.values() if vars(m).get("produces") == produces]
        if other:
            raise ValueError(f"{cls.__name__} and {other[0].__name__} both produce {produces} parents: one may")
    REGISTRY[cls.name] = cls
    return cls


def parent_method(kind: str) -> str:
    """The registered method that trains parents of ``kind`` ("natural", "adversarial")."""
    for name, cls in REGISTRY.items():
        if vars(cls).get("produces") == kind:
            return name
    raise MethodError(f"no registered method produces {kind} parents")


def get_method(name: str) -> type:
    try:
        return REGISTRY[name]
    except KeyError:
        why = f" (a plugin failed to load: {PLUGIN_LOAD_ERROR})" if PLUGIN_LOAD_ERROR else ""
        raise MethodError(f"unknown method '{name}'; known: {', '.join(sorted(REGISTRY))}{why}") from None


def resolve_hparams(name: str, overrides: dict[str, Any] | None = None) -> tuple[tuple[str, Any], ...]:
    """The method's full hyperparameters (paper defaults + overrides) as sorted pairs for a RunConfig."""
    cls = get_method(name)
    known = {f.name: f for f in fields(cls.Hparams)}
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if key not in known:
            raise MethodError(f"method '{name}' has no hyperparameter '{key}'; known: {', '.join(sorted(known)) or 'none'}")
        overrides[key] = _coerce(name, key, value, getattr(cls.Hparams(), key))
    hp = cls.Hparams(**overrides)
    check_ranges(name, cls.ranges, hp)
    return tuple(sorted(dataclasses.asdict(hp).items()))


def check_ranges(name: str, ranges: dict, hp: Any) -> None:
    """MethodError (one line) for the first hyperparameter outside its declared Range / OneOf."""
    for key, rule in ranges.items():
        if hasattr(hp, key):
            why = rule.problem(getattr(hp, key))
            if why:
                raise MethodError(f"hyperparameter {name}.{key} {why} (got {getattr(hp, key)!r})")


def make_hparams(name: str, pairs: tuple[tuple[str, Any], ...]) -> Any:
    return get_method(name).Hparams(**dict(pairs))


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    ok, value = coerce_like(default, value)
    if not ok:
        raise MethodError(f"hyperparameter {method}.{key} expects {type(default).__name__}, got {value!r}")
    return value
