"""A method's model compiled for training (``torch.compile``, bench/core/compilation.py), unless the method
declares it cannot be: then it trains eagerly, with the same numbers."""
from __future__ import annotations

from bench.core import compilation
from methods.base import Method


def compile_unless_declared(method: Method) -> str | None:
    """Compile ``method.model`` unless ``Method.compile_problem`` names a reason; return that reason, or None
    when the model was compiled."""
    why = type(method).compile_problem(method.hp)
    if why is None:
        compilation.compile_model(method.model)
    return why
