"""A method ready to train, built the one way the loop, ``bench speed`` and the tests build it."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.core.config import TrainConfig
from methods.base import Context, Method, get_method


def build_method(cls_or_name: type[Method] | str, model: nn.Module, hp: Any, ctx: Context, train_cfg: TrainConfig,
                 device: torch.device | None = None, *, dtype: torch.dtype | None = None) -> Method:
    """Construct the method around ``model``, move its network (the method may add modules of its own: AFD's
    disentanglers) to ``device`` and, in the reference tests, to ``dtype``, then configure its optimizers,
    which must see the parameters where they will train. ``hp``: the method's hyperparameters
    (``make_hparams``)."""
    cls = get_method(cls_or_name) if isinstance(cls_or_name, str) else cls_or_name
    method = cls(model, hp, ctx)
    if device is not None:
        method.net.to(device)
    if dtype is not None:
        method.net.to(dtype)
    method.optimizers = method.configure_optimizers(train_cfg)
    return method
