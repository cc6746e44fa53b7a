"""``bench eval``: the paper's evaluation of any classifier checkpoint, resumable, as one command.

    python -m bench eval --model resnet18 --checkpoint model.pt --dataset cifar10 [--n 10000] [--eps 8/255]

The model is one of ours (``bench list``), the user's own architecture (``--model pkg.module:factory``: a callable
returning an ``nn.Module`` that maps [0, 1] images to logits; called with ``num_classes=`` when it takes it), or a
RobustBench model (``--zoo NAME``, the ``zoo`` extra). The checkpoint may be any format of ``bench.core.checkpoints``.
Evaluation is exactly a run's (``bench.eval.evaluator.Evaluator``): clean, PGD-20 (step 0.003, random start), AutoAttack
standard with the per-example worst case, the feature gap on the last hidden layer, AA <= PGD-20 <= clean checked
per example, the indicators of attack failure (``bench.eval.indicators``: a result whose indicators trip says
"evaluation potentially unreliable" and names them), eval mode, fp32. It is stored in chunks under ``<results>/evals/<eval_id>.chunks/`` and resumes from
the last finished chunk after a kill; the result is ``<results>/evals/<eval_id>.json`` (config, metrics,
per-example correctness, seconds per measurement, provenance), ``eval_id`` a hash of the model, the checkpoint's
content and the protocol.

Threat models (``--threat``, comma-separated, default ``linf``): ``linf`` is the evaluation above; ``l2`` the same
evaluation in L2 (``bench.eval.l2``: PGD-20 with step eps/4, AutoAttack standard with norm='L2') at ``--eps-l2``
(default: the data set's, ``bench.data.L2_EPS``), stored under ``metrics["l2"]``; ``corruptions`` the accuracy on
every corruption and severity of the common-corruption set (``--corruptions published``: the files of CIFAR-10-C,
CIFAR-100-C or Tiny-ImageNet-C under the data root; ``generated``: ``bench.data.corruptions``' seeded CIFAR-sized
set) and their mean over all of them, under ``metrics["corruptions"]``. An evaluation of L-inf alone keeps the id it
always had.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import inspect
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from bench.core import determinism
from bench.core.checkpoints import check_checkpoint_path, load_into
from bench.core.config import EPS_8, ConfigError, EvalConfig, file_digest, parse_eps
from bench.core.provenance import provenance
from bench.core.runtime import Runtime, set_threads
from bench.core.store import Store, atomic_write_bytes
from bench.data import load_dataset
from bench.data.corruptions import SEVERITIES, load_corruption_set
from bench.eval.corruption_accuracy import render_corruptions
from bench.eval.evaluator import LAYOUTS, Evaluator
from bench.eval.indicators import IndicatorOptions, verdict
# The threat-model parsing lives in bench.eval.threats; re-exported here, where `bench eval` callers found it.
from bench.eval.threats import (CORRUPTION_SOURCES, THREATS, Threats, check_eps_l2,  # noqa: F401
                                measure_more, parse_eps_l2, parse_threats, timed_clean)
from bench.models.architectures import MODELS, Classifier, Normalized, build_model, feature_extractor_and_head
from bench.models.zoo import load_zoo_model


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    """What one ``bench eval`` measures; its canonical JSON names the evaluation."""

    model: str  # one of bench.models.architectures.MODELS, "pkg.module:factory", or "zoo:<name>"
    checkpoint: str | None  # path (None for a zoo model, whose weights come with it)
    checkpoint_digest: str | None
    dataset: str
    eval: EvalConfig
    eps: float = EPS_8
    seed: int = 0
    threats: tuple[str, ...] = ("linf",)  # in THREATS' order
    eps_l2: float | None = None  # the L2 radius, with "l2" only
    corruptions: str | None = None  # "published" or "generated", with "corruptions" only

    def eval_id(self) -> str:
        d = asdict(self)
        d.pop("checkpoint")  # the content names the weights, not the path
        if self.threats == ("linf",):  # what every evaluation was before threat models: the same ids
            for key in ("threats", "eps_l2", "corruptions"):
                d.pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _threat_fields(dataset: str, threat: str, eps_l2: Any, corruptions: str | None) -> dict:
    """EvalSpec's threat-model fields from the command line's values; ConfigError in one line."""
    threats = Threats.parse(threat, eps_l2, corruptions)
    threats.check(dataset)
    out: dict[str, Any] = {"threats": threats.names}
    if "l2" in threats.names:
        out["eps_l2"] = threats.radius(dataset)
    if "corruptions" in threats.names:
        out["corruptions"] = threats.source
    return out


def make_spec(*, model: str | None, zoo: str | None, checkpoint: str | None, dataset: str, n: int, n_aa: int | None,
              eps: float, batch_size: int, seed: int = 0, n_pgd: int | None = None, threat: str = "linf",
              eps_l2: Any = None, corruptions: str | None = None) -> EvalSpec:
    """What to evaluate: clean accuracy on the first ``n`` test images, PGD-20 on the first ``n_pgd`` (default
    ``n``), AutoAttack on the first ``n_aa`` (default ``n_pgd``; 0 skips it), under each threat model of
    ``threat`` (see the module doc)."""
    if (model is None) == (zoo is None):
        raise ConfigError("give one of --model (with --checkpoint) or --zoo NAME")
    if zoo is not None and checkpoint is not None:
        raise ConfigError("--zoo models come with their weights: leave out --checkpoint")
    if model is not None and checkpoint is None:
        raise ConfigError(f"--model {model} needs --checkpoint PATH (the weights to evaluate)")
    if n < 1:
        raise ConfigError(f"--n must be >= 1 (got {n})")
    if n_pgd is not None and not 0 <= n_pgd <= n:
        raise ConfigError(f"--n-pgd must be in [0, --n] = [0, {n}] (got {n_pgd})")
    n_pgd = n if n_pgd is None else n_pgd
    if n_aa is not None and not 0 <= n_aa <= n_pgd:
        raise ConfigError(f"--n-aa must be in [0, --n-pgd] = [0, {n_pgd}] (got {n_aa}): AA <= PGD-20 is checked on "
                          "the images they share")
    eps = parse_eps(eps, "--eps")
    threat_fields = _threat_fields(dataset, threat, eps_l2, corruptions)
    if checkpoint is not None:
        check_checkpoint_path(checkpoint)
    ev = EvalConfig(n_clean=n, n_pgd=n_pgd, n_aa=n_pgd if n_aa is None else n_aa, batch_size=batch_size)
    ev.validate()
    return EvalSpec(model=model if zoo is None else f"zoo:{zoo}",
                    checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
                    checkpoint_digest=file_digest(checkpoint) if checkpoint else None,
                    dataset=dataset, eval=ev, eps=eps, seed=seed, **threat_fields)


def build(spec: EvalSpec, num_classes: int, channels: int, rt: Runtime) -> tuple[nn.Module, list[str]]:
    """The model of ``spec`` with its weights loaded, and how the checkpoint's keys were mapped onto it (the
    usual classifier names, a normalisation layer in front: bench/core/checkpoints.py); ConfigError / ModelError
    in one line."""
    if spec.model.startswith("zoo:"):
        return load_zoo_model(spec.model, spec.dataset, rt), []
    if spec.model in MODELS:
        model = build_model(spec.model, num_classes, channels)
    elif ":" in spec.model:
        model = _from_factory(spec.model, num_classes)
    else:
        raise ConfigError(f"unknown model '{spec.model}'; known: {', '.join(MODELS)}, or pkg.module:factory for "
                          "your own architecture")
    meta = load_into(model, spec.checkpoint, allow_normalization=isinstance(model, Classifier))
    if "normalization" in meta:
        model = Normalized(model, *meta["normalization"])
    return model, meta["key_mapping"]


def _from_factory(ref: str, num_classes: int) -> nn.Module:
    module_name, _, attr = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ModuleNotFoundError as e:
        raise ConfigError(f"--model {ref}: no module named {e.name!r} (is its package installed?)") from None
    except AttributeError:
        raise ConfigError(f"--model {ref}: module {module_name} has no attribute {attr!r}") from None
    if not callable(factory):
        raise ConfigError(f"--model {ref}: {attr} is not callable")
    try:
        takes = "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes = False
    try:
        model = factory(num_classes=num_classes) if takes else factory()
    except Exception as e:  # noqa: BLE001 - the user's factory failing is bad input, said in one line
        raise ConfigError(f"--model {ref}: the factory raised {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {ref}: the factory returned a {type(model).__name__}, not a torch nn.Module")
    return model


def evaluate(spec: EvalSpec, rt: Runtime, log: Callable[[str], None] = print) -> dict:
    """Run (or resume, or return the finished) evaluation of ``spec``; writes and returns the result. Every check
    of the input (the data, the radius, the corruption files) comes before anything is written."""

    determinism.apply(rt.determinism, rt.torch_device())  # before any CUDA work
    store = Store(rt.results)
    store.check_writable()
    set_threads(rt.threads)
    eid = spec.eval_id()
    out = Path(rt.results) / "evals" / f"{eid}.json"
    if out.exists():
        try:
            done = json.loads(out.read_text())
            if done.get("status") == "done":
                log(f"[{eid}] already evaluated: {out}")
                return done
        except json.JSONDecodeError:
            log(f"[{eid}] result {out} is unreadable; evaluating again")
    _, test, info = load_dataset(spec.dataset, rt.data_root, rt.cache_dir)
    if spec.eps_l2 is not None:
        check_eps_l2(spec.eps_l2, info.channels, info.image_size)
    corrupted = (load_corruption_set(spec.dataset, spec.corruptions, test, info, rt.data_root, rt.cache_dir,
                                     log=log) if spec.corruptions else None)
    model, mapping = build(spec, info.num_classes, info.channels, rt)
    for note in mapping:
        log(f"[{eid}] checkpoint keys mapped: {note}")
    device = rt.torch_device()
    model = model.to(device).eval()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    metrics = _measure_threats(spec, model, test, corrupted, rt, device, log=lambda s: log(f"[{eid}] {s}"),
                               state_dir=out.with_suffix(".chunks"))
    result = {"eval_id": eid, "status": "done", "spec": asdict(spec), "metrics": metrics, "key_mapping": mapping,
              "sanity": "violated" if _violations(metrics) else "ok", "started": started,
              "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "wall_seconds": time.perf_counter() - t0, **provenance(device)}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    return result


def _measure_threats(spec: EvalSpec, model: nn.Module, test, corrupted, rt: Runtime, device,
                     log: Callable[[str], None], state_dir: Path) -> dict:
    """The metrics of every threat model of ``spec``: L-inf at the top level as always, L2 under ``"l2"`` (its
    clean accuracy is the top level's when L-inf is not measured), corruptions under ``"corruptions"``."""
    kw = dict(seed=spec.seed, memory_format=LAYOUTS[rt.eval_layout], fold_bn=rt.eval_fold_bn)
    metrics: dict[str, Any] = {}
    if "linf" in spec.threats:
        checks = IndicatorOptions(enabled=rt.eval_checks, n_costly=rt.eval_checks_n)
        metrics = Evaluator(test, spec.eval, spec.eps, device, checks=checks, **kw).run(
            model, log=log, features=_gap_features(model), state_dir=state_dir)
    threats = Threats(spec.threats, spec.eps_l2, spec.corruptions)
    more, l2_clean = measure_more(model, tuple(t for t in spec.threats if t != "linf"), test=test, eval_cfg=spec.eval,
                        device=device, dataset=spec.dataset, threats=threats, corrupted=corrupted,
                        features=_gap_features(model), log=log, state_dir=state_dir, **kw)
    if "linf" not in spec.threats:  # the clean accuracy the other threat models are read against
        if l2_clean is not None:
            metrics.update(l2_clean)
        else:
            ev = Evaluator(test, spec.eval, spec.eps, device, **kw)
            metrics.update(timed_clean(ev, ev.ready(model)[0], spec.eval.n_clean))
    return {**metrics, **more}


def _violations(metrics: dict) -> list[str]:
    """The order checks that failed, L-inf's and L2's (named so)."""
    return list(metrics.get("violations") or []) + [f"L2: {v}" for v in (metrics.get("l2") or {}).get("violations", [])]


class _Logits(nn.Module):
    """The feature gap's features for a model whose last hidden layer cannot be located: its logits, said so."""

    what = "logits (the model has no last Linear layer to take the features before)"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def _gap_features(model: nn.Module) -> nn.Module | None:

    try:
        feature_extractor_and_head(model)
        return None  # the evaluator's default: the last hidden layer
    except Exception:  # noqa: BLE001 - no recognisable last Linear layer
        return _Logits(model)


def render(result: dict) -> str:
    m = result["metrics"]
    l2 = m.get("l2") or {}
    rows = [("Clean", m.get("clean"), m.get("n_clean"), m.get("seconds", {}).get("clean")),
            ("PGD-20", m.get("pgd20"), m.get("n_pgd"), m.get("seconds", {}).get("pgd20")),
            ("AutoAttack", m.get("aa"), m.get("n_aa"), m.get("seconds", {}).get("aa"))]
    if l2:
        rows += [(f"L2 PGD-20 (eps {l2['eps']:g})", l2.get("pgd20"), l2.get("n_pgd"), l2["seconds"].get("pgd20")),
                 (f"L2 AutoAttack (eps {l2['eps']:g})", l2.get("aa"), l2.get("n_aa"), l2["seconds"].get("aa"))]
    corr = m.get("corruptions")
    if corr:
        rows.append((f"{corr['label']}: mean of {len(corr['accuracy']) * len(SEVERITIES)}", corr["mean"], corr["n"],
                     corr["seconds"]))
    lines = [f"| {result['spec']['model']} on {result['spec']['dataset']} | accuracy (%) | images | seconds |",
             "|:---|---:|---:|---:|"]
    for name, acc, n, secs in rows:
        if acc is not None:
            lines.append(f"| {name} | {100 * acc:.2f} | {n} | {float('nan') if secs is None else secs:.1f} |")
    if m.get("feature_gap") is not None:
        lines.append(f"\nfeature gap ({m.get('feature_gap_of')}): {m['feature_gap']:.4f}")
    if corr:
        lines.append(render_corruptions(corr))
    for note in result.get("key_mapping") or []:
        lines.append(f"checkpoint keys mapped: {note}")
    violations = _violations(m)
    lines.append(f"AA <= PGD-20 <= clean: {result['sanity']}" + (f" ({'; '.join(violations)})" if violations else ""))
    if "unreliable" in m:  # evaluations stored before the indicators have none: nothing is said about them
        lines.append(verdict(m["unreliable"]))
        lines += [f"  {name}: {d['value']:.4g} > {d['threshold']:g} ({d['what']}, n={d['n']})"
                  for name, d in sorted(m["indicators"].items()) if d["tripped"]]
    return "\n".join(lines) + "\n"


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, sort_keys=True)
