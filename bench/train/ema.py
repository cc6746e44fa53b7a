"""The exponential moving average of a run's net (``train.ema``), kept beside the live one by the loop."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Exponential moving average of weights AND buffers, decay min(0.999, (t+1)/(t+10)) (AFD tl+sl.py).

    Integer buffers (BatchNorm's num_batches_tracked) are copied, not averaged."""

    def __init__(self, net: nn.Module):
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.t = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        decay = min(0.999, (self.t + 1) / (self.t + 10))
        src = net.state_dict()
        for name, avg in self.net.state_dict().items():
            cur = src[name].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(decay).add_(cur.to(avg.dtype), alpha=1 - decay)
            else:
                avg.copy_(cur)
        self.t += 1
