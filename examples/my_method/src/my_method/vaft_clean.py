"""vAFT plus a clean cross-entropy term: an afd-bench method defined outside the suite.

    loss = CE(f(x'), y) + clean_weight * CE(f(x), y),   x' = vAFT's PGD-10 adversarial example

A method writes five names (``name``, ``Hparams``, ``parent``, ``recipe``, ``loss``); everything else is optional.
This one takes its parent, recipe, attack and hyperparameters from vAFT, so a grid can compare the two on the same
budget. Registered through the ``afd_bench.methods`` entry point in pyproject.toml.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from methods import get_method, register
from methods.base import WEIGHT

VAFT = get_method("vaft")


@register
class VAFTClean(VAFT):
    # -- the five names every method writes (methods/base.py) -----------------------------------------------
    name = "vaft_clean"
    parent = VAFT.parent  # "natural": fine-tunes a naturally pre-trained model, as vAFT does
    recipe = VAFT.recipe  # vAFT's schedule, so the comparison is on the same budget

    @dataclass(frozen=True)
    class Hparams(VAFT.Hparams):
        clean_weight: float = 0.5  # weight of the clean cross-entropy

    def loss(self, batch, step):
        out = super().loss(batch, step)
        out["clean_ce"] = F.cross_entropy(self.model(batch.x), batch.y)
        out["loss"] = out["loss"] + self.hp.clean_weight * out["clean_ce"]
        return out

    # -- optional: one line for `bench list`, and the valid values of the hyperparameters ------------------
    summary = "example plugin: vAFT + clean_weight * CE on the clean images"
    ranges = {**VAFT.ranges, "clean_weight": WEIGHT}  # refused in one line before anything runs: --set ...=-1

    # -- what the suite reads (methods/declarations.py). The label and the planner's prior are the class's own
    # (not inherited: this is not vAFT); the rest is vAFT's: its step goes through the base train_step, so fp16,
    # torch.compile and several processes per run all work.
    label = "vAFT+clean"
    plan_seconds_per_epoch = 38.0  # vAFT's 37 s (AFD Table 5) plus one clean forward+backward
    plan_seconds_guessed = True
