"""Parents from RobustBench's model zoo (the optional extra ``zoo``: ``pip install -e '.[zoo]'``).

A run with ``parent_zoo="zoo:<name>"`` (or ``"zoo:<name>@<threat>"``, threat Linf by default) fine-tunes a zoo
model instead of a parent trained here: a standard model (``Standard``) for the fine-tuning methods, an
adversarially trained one for RiFT. ``load_zoo_model`` goes through ``robustbench.utils.load_model``, which
reads ``<model_dir>/<dataset>/<threat>/<name>.pt`` (a dict with a ``state_dict``, ``module.``/``model.``
prefixes stripped) and downloads it there first when it is absent and the machine is online. ``model_dir`` is
``$BENCH_ZOO_DIR``, else ``<cache>/robustbench`` (``$BENCH_CACHE_DIR`` or ``~/.cache/afd-bench``).

RobustBench models take images in [0, 1] and normalise inside the model where they need it, the convention of
this benchmark, so eps = 8/255 means the same thing. Feature-level methods (AFD, AFKD, ARREST, AFA) find the
last hidden layer of any zoo architecture with ``bench.models.architectures.feature_extractor_and_head`` (the input of the
final Linear); a model without one is refused here, before training.

Packaging: robustbench 1.1.1 imports ``pkg_resources`` (gone from setuptools >= 81, hence ``setuptools<81`` in
the extra) and ``autoattack`` at import time, while PyPI ships AutoAttack as ``pyautoattack``. Loading a model
never runs AutoAttack, so when ``autoattack`` is not importable we register ``pyautoattack`` under that name
before importing robustbench (``_autoattack_shim``). robustbench's own ``benchmark()`` still expects fra31's
AutoAttack wrapper and is not used by this project (it evaluates with pyautoattack directly).
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from torch import nn

from bench.core.config import ConfigError
from bench.models.architectures import feature_extractor_and_head

ZOO_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100"}
THREATS = ("Linf", "L2", "corruptions")


class ZooError(ConfigError):
    """A zoo model that cannot be loaded: extra not installed, unknown name, offline without the file."""


def parse_name(name: str) -> tuple[str, str]:
    """"zoo:Standard" -> ("Standard", "Linf"); "zoo:Foo@L2" -> ("Foo", "L2")."""
    base = name.removeprefix("zoo:")
    model, _, threat = base.partition("@")
    threat = threat or "Linf"
    if not model:
        raise ZooError(f"zoo parent '{name}' names no model: write zoo:<RobustBench name>, e.g. zoo:Standard")
    if threat not in THREATS:
        raise ZooError(f"zoo parent '{name}': unknown threat model '{threat}'; known: {', '.join(THREATS)}")
    return model, threat


def zoo_dir(cache_dir: Path | None = None) -> Path:
    if os.environ.get("BENCH_ZOO_DIR"):
        return Path(os.environ["BENCH_ZOO_DIR"]).expanduser()
    cache = cache_dir or Path(os.environ.get("BENCH_CACHE_DIR") or "~/.cache/afd-bench").expanduser()
    return Path(cache) / "robustbench"


def _autoattack_shim() -> None:
    """Make ``import autoattack`` work for robustbench's import-time references (see the module docstring)."""
    try:
        importlib.import_module("autoattack")
        return
    except ImportError:
        pass
    try:
        sys.modules["autoattack"] = importlib.import_module("pyautoattack")
    except ImportError:
        raise ZooError("robustbench needs an importable AutoAttack: pip install pyautoattack") from None


def import_robustbench_load_model():
    try:
        _autoattack_shim()
        from robustbench.utils import load_model
    except ModuleNotFoundError as e:
        hint = " (robustbench needs setuptools<81)" if e.name == "pkg_resources" else ""
        raise ZooError(f"zoo parents need the optional extra: pip install -e '.[zoo]' ({e.name} missing){hint}") from None
    return load_model


def load_zoo_model(name: str, dataset: str, rt) -> nn.Module:
    """The zoo model ``name`` for ``dataset`` as a plain classifier in train-ready form (CPU, eval mode)."""

    model_name, threat = parse_name(name)
    if dataset not in ZOO_DATASETS:
        raise ZooError(f"zoo parent '{name}': RobustBench has no {dataset} models used here; "
                       f"zoo parents exist for {', '.join(ZOO_DATASETS)}")
    load_model = import_robustbench_load_model()
    model_dir = zoo_dir(getattr(rt, "cache_dir", None))
    path = model_dir / ZOO_DATASETS[dataset] / threat / f"{model_name}.pt"
    try:
        model = load_model(model_name=model_name, model_dir=str(model_dir), dataset=ZOO_DATASETS[dataset],
                           threat_model=threat)
    except KeyError:
        raise ZooError(f"RobustBench has no {dataset}/{threat} model named '{model_name}' "
                       "(see robustbench.model_zoo)") from None
    except Exception as e:  # noqa: BLE001 - offline download, corrupt file, mismatched state_dict
        where = f"{path} exists" if path.exists() else f"{path} is absent and the download failed"
        raise ZooError(f"zoo model {dataset}/{threat}/{model_name} did not load ({where}): "
                       f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}") from None
    try:
        feature_extractor_and_head(model)
    except Exception as e:  # noqa: BLE001
        raise ZooError(f"zoo model {model_name} has no final Linear layer to take features from: {e}") from None
    return model.cpu().eval()
