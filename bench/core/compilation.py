"""torch.compile for training and evaluation (the runtime option ``--compile``).

:func:`compile_model` compiles the model's convolutional trunk in place for training; the final evaluation
compiles its private fp32 copy (:func:`compiling`, :func:`maybe_compile`, called by the evaluator). Which methods'
steps may be compiled is theirs to declare (``Method.compile_problem``), asked by the training loop.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

_COMPILE_EVAL = False
# Every compiled module's call goes through one code object, so Dynamo's per-code recompile limit (8) is shared by
# all of them: each compiled child has ~4 variants (attack with frozen parameters, training step, no-grad
# evaluation, the evaluator's contiguous copy), and a ResNet has 5 compiled children. Past the limit Dynamo would
# silently run the rest eagerly.
RECOMPILE_LIMIT = 64


def raise_recompile_limit(cfg) -> str:
    """Raise Dynamo's per-code recompile limit to RECOMPILE_LIMIT under the name this torch has: ``recompile_limit``
    (torch >= 2.7; the old name is an alias there) or ``cache_size_limit`` (older). Returns the name used."""
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))
    return name


def compile_model(model: nn.Module) -> nn.Module:
    """Compile, in place, every top-level child of ``model`` that holds a convolution (the trunk: nearly all the
    FLOPs), so every path through the model (forward, ``features``, hooks) runs compiled; the glue between them
    (pooling, the head) stays eager. In place (``nn.Module.compile``): parameter names, state dicts and EMA copies
    are unchanged, and a deep copy is an eager module of its own (it never calls the original's compiled code).
    A model without such children is compiled whole."""
    import torch  # noqa: F401 - lazy, with the two below: torch's compiler stack loads only when --compile asks
    import torch._dynamo
    import torch._functorch.config

    raise_recompile_limit(torch._dynamo.config)
    # A compiled backward with donated buffers refuses a second backward through one forward (retain_graph=True,
    # as AFD's as-run update does; it is not compiled for another reason, see compile_problem). Older torch
    # (< 2.5) has no donated buffers.
    if hasattr(torch._functorch.config, "donated_buffer"):
        torch._functorch.config.donated_buffer = False
    heavy = [m for m in model.children() if any(isinstance(s, nn.modules.conv._ConvNd) for s in m.modules())]
    for m in heavy or [model]:
        m.compile()
    return model


@contextlib.contextmanager
def compiling(enabled: bool) -> Iterator[None]:
    """Inside, :func:`maybe_compile` (called by ``Evaluator.prepare``) compiles the evaluated copy."""
    global _COMPILE_EVAL
    old, _COMPILE_EVAL = _COMPILE_EVAL, bool(enabled)
    try:
        yield
    finally:
        _COMPILE_EVAL = old


def maybe_compile(model: nn.Module) -> nn.Module:
    return compile_model(model) if _COMPILE_EVAL else model
