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
        """avg = decay * avg + (1 - decay) * cur for every floating tensor, as one multi-tensor (_foreach)
        operation each (the same arithmetic as a loop over them, without a kernel launch per tensor)."""
        decay = min(0.999, (self.t + 1) / (self.t + 10))
        src = net.state_dict()
        avgs, curs = [], []
        for name, avg in self.net.state_dict().items():
            cur = src[name].detach()
            if avg.dtype.is_floating_point:
                avgs.append(avg)
                curs.append(cur.to(avg.dtype))
            else:
                avg.copy_(cur)
        if avgs:
            torch._foreach_mul_(avgs, decay)
            torch._foreach_add_(avgs, curs, alpha=1 - decay)
        self.t += 1
