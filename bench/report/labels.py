"""How the tables, figures and claims name methods, models, data sets, devices and counts of runs, and the marks
they share (a dash for no value, a double dagger for a run that failed its sanity check, a section sign for a run
whose evaluation is potentially unreliable)."""
from __future__ import annotations

import pandas as pd

from methods import REGISTRY

DASH = "—"
SANITY = "‡"  # marks a value from a run whose evaluation violated clean >= PGD-20 >= AA (footnote lists them)
# marks a value from a run whose evaluation's reliability indicators tripped (the result's metrics.unreliable names
# them; a footnote lists the runs and the names): the numbers stand, but they may overstate robustness
UNRELIABLE = "§"
UNRELIABLE_WORDS = "evaluation potentially unreliable"  # what every report says beside the tripped names

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny-imagenet": "Tiny-ImageNet",
                  "cifar10-jpeg": "CIFAR-10 (JPEG)", "digits": "Digits"}
MODEL_LABELS = {"resnet18": "RN18", "resnet50": "RN50", "wrn34_10": "WRN-34-10", "preact_resnet18": "PreAct-RN18",
                "small_cnn": "SmallCNN", "resnet18_afd": "RN18 (AFD code)", "resnet50_afd": "RN50 (AFD code)"}
# The networks the paper calls by one name: its rows ran on the network of their public code (the AFD code's ResNets
# have an unpadded first convolution), and its tables name the architecture. A paper table selects the family.
MODEL_FAMILIES = {"resnet18": ("resnet18", "resnet18_afd"), "resnet50": ("resnet50", "resnet50_afd")}
NETWORK_NOTES = {"resnet18": "the TRADES code's CIFAR ResNet18", "resnet18_afd": "the AFD code's ResNet18, first "
                 "convolution unpadded", "resnet50": "the TRADES code's CIFAR ResNet50",
                 "resnet50_afd": "the AFD code's ResNet50, first convolution unpadded"}


def family(model: str) -> tuple[str, ...] | str:
    """What a paper table selects for the architecture ``model``: the networks of that name, or ``model``."""
    return MODEL_FAMILIES.get(model, model)


def method_label(m: str) -> str:
    """A method's name in tables and figures: its declared ``label`` (a result of a method no longer registered
    keeps its name)."""
    return REGISTRY[m].display_label() if m in REGISTRY else m


def n_runs(n: int) -> str:
    """"1 run", "2 runs"."""
    return f"{n} run{'s' * (n != 1)}"


def runs_per_device(names) -> str:
    """"AMD EPYC (27 runs); AMD EPYC, family 25 model 17 (1 run)": where a set of runs was measured, most first."""
    counts = pd.Series(list(names), dtype=object).value_counts()
    return "; ".join(f"{d} ({n_runs(n)})" for d, n in counts.items())
