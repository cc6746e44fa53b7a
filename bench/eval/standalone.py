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
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import inspect
import json
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
from bench.eval.evaluator import LAYOUTS, Evaluator
from bench.eval.indicators import IndicatorOptions, verdict
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

    def eval_id(self) -> str:
        d = asdict(self)
        d.pop("checkpoint")  # the content names the weights, not the path
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def make_spec(*, model: str | None, zoo: str | None, checkpoint: str | None, dataset: str, n: int, n_aa: int | None,
              eps: float, batch_size: int, seed: int = 0, n_pgd: int | None = None) -> EvalSpec:
    """What to evaluate: clean accuracy on the first ``n`` test images, PGD-20 on the first ``n_pgd`` (default
    ``n``), AutoAttack on the first ``n_aa`` (default ``n_pgd``; 0 skips it)."""
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
    if checkpoint is not None:
        check_checkpoint_path(checkpoint)
    ev = EvalConfig(n_clean=n, n_pgd=n_pgd, n_aa=n_pgd if n_aa is None else n_aa, batch_size=batch_size)
    ev.validate()
    return EvalSpec(model=model if zoo is None else f"zoo:{zoo}",
                    checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
                    checkpoint_digest=file_digest(checkpoint) if checkpoint else None,
                    dataset=dataset, eval=ev, eps=eps, seed=seed)


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
    """Run (or resume, or return the finished) evaluation of ``spec``; writes and returns the result."""

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
    model, mapping = build(spec, info.num_classes, info.channels, rt)
    for note in mapping:
        log(f"[{eid}] checkpoint keys mapped: {note}")
    device = rt.torch_device()
    model = model.to(device).eval()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    ev = Evaluator(test, spec.eval, spec.eps, device, seed=spec.seed, memory_format=LAYOUTS[rt.eval_layout],
                   fold_bn=rt.eval_fold_bn, checks=IndicatorOptions(enabled=rt.eval_checks, n_costly=rt.eval_checks_n))
    metrics = ev.run(model, log=lambda s: log(f"[{eid}] {s}"), features=_gap_features(model),
                     state_dir=out.with_suffix(".chunks"))
    result = {"eval_id": eid, "status": "done", "spec": asdict(spec), "metrics": metrics, "key_mapping": mapping,
              "sanity": "violated" if metrics.get("violations") else "ok", "started": started,
              "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "wall_seconds": time.perf_counter() - t0, **provenance(device)}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    return result


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
    rows = [("Clean", m.get("clean"), m.get("n_clean")), ("PGD-20", m.get("pgd20"), m.get("n_pgd")),
            ("AutoAttack", m.get("aa"), m.get("n_aa"))]
    lines = [f"| {result['spec']['model']} on {result['spec']['dataset']} | accuracy (%) | images | seconds |",
             "|:---|---:|---:|---:|"]
    secs = m.get("seconds", {})
    for (name, acc, n), key in zip(rows, ("clean", "pgd20", "aa")):
        if acc is not None:
            lines.append(f"| {name} | {100 * acc:.2f} | {n} | {secs.get(key, float('nan')):.1f} |")
    if m.get("feature_gap") is not None:
        lines.append(f"\nfeature gap ({m.get('feature_gap_of')}): {m['feature_gap']:.4f}")
    for note in result.get("key_mapping") or []:
        lines.append(f"checkpoint keys mapped: {note}")
    lines.append(f"AA <= PGD-20 <= clean: {result['sanity']}" + (f" ({'; '.join(m['violations'])})"
                                                               if m.get("violations") else ""))
    if "unreliable" in m:  # evaluations stored before the indicators have none: nothing is said about them
        lines.append(verdict(m["unreliable"]))
        lines += [f"  {name}: {d['value']:.4g} > {d['threshold']:g} ({d['what']}, n={d['n']})"
                  for name, d in sorted(m["indicators"].items()) if d["tripped"]]
    return "\n".join(lines) + "\n"


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, sort_keys=True)
