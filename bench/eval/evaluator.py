"""Evaluation as the paper does it: clean accuracy, PGD-20 (step 0.003, random start, eps 8/255, CE),
AutoAttack standard with the per-example worst case, and the feature gap of Figure 1a.

Everything runs on the exported plain model, in eval mode and in fp32 (training precision never leaks into
the reported numbers), on the first n images of the test split, with a fixed seed for the random starts so
two evaluations of the same model give the same numbers. AA <= PGD-20 <= clean is checked on the images all
three share, and any violation is recorded on the run: it points at gradient masking or a bug.

The feature gap (Figure 1a) is the per-sample L-inf norm of f(x) - f(x'), x' = PGD-20 against the evaluated
(exported) model, averaged over the test images, where f is the features the method classifies from:
``Method.gap_features(net)`` (a :class:`FeatureMap`; by default the exported model's last hidden layer, for AFD
f1 = D1 g). The result records the mean (``feature_gap``), its standard error over the test images
(``feature_gap_se``), the number of images (``feature_gap_n``) and which features were measured
(``feature_gap_of``).

Long evaluations resume. Every measurement is done in chunks of ``eval.batch_size`` images, each chunk's random
start seeded by (seed, chunk index) so it does not depend on the chunks before it; with a ``state_dir``
(``bench run``: the run's checkpoint folder; ``bench eval``: its own), each finished chunk's per-example results
and seconds are written there atomically, keyed by a digest of the evaluated weights and the protocol, and a
killed or requeued evaluation continues from the last finished chunk with the same final numbers. The result
holds the per-example correctness (``per_example``: one '0'/'1' character per image) and the seconds each
measurement took (``seconds``: clean, pgd20 with the gap, aa), summed over chunks across restarts.

Indicators of attack failure (``bench.eval.indicators``, a runtime choice: ``checks``). The cheap ones are read off
PGD-20's own path in the same chunks (``pgd()`` with a trace: the same x_adv), the costlier ones measured on the
first ``checks.n_costly`` images in chunks of their own, AutoAttack's own check warnings kept with its chunks; so
they resume with the rest. The result then holds ``indicators`` (name -> value, threshold, tripped, n, what) and
``unreliable`` (the tripped names), and their seconds apart (``indicators``, ``indicators_subset``).

Layout. The evaluated copy keeps its weights in ``memory_format`` (default channels_last, the faster layout for
fp32 convolutions on GPUs and on these CPUs: PGD-20 of the small CNN 1.3x, ResNet18 1.1x on 2 AMD Zen 4 cores);
inputs stay NCHW (the first convolution converts them), so the attacks' random starts, projections and every
tensor they compare are the same as in an NCHW evaluation. What changes is the order in which the convolution
kernels sum, so a gradient sign or a logit comparison that sits on a float tie can come out the other way: rare
per-example flips, counted by ``tests/test_eval_layout.py`` and ``bench speed-eval`` (``flips``), never hidden.
AutoAttack gets NCHW-contiguous input gradients through ``bench.eval.attacks.autoattack``'s guard (pyautoattack
crashes on non-contiguous ones). ``memory_format=torch.contiguous_format`` (``bench run --eval-nchw``) evaluates as
before. The layout is recorded in the result (``eval_layout``) and is part of the key of stored chunks.

BatchNorm folding. In eval mode a BatchNorm right after a convolution is a fixed per-channel affine map, so the
evaluated copy folds it into the convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``, the
same arithmetic as inference engines): one memory-bound pass less per layer, forward and backward, in every PGD and
AutoAttack step. Which pairs fold is read from the model's traced graph (``torch.fx``): a Conv2d whose only
consumer is a BatchNorm2d that consumes nothing else, each called once. A model that does not trace is searched
child by child, and every folding is checked on real test images (outputs equal to 1e-4 of their scale) before it
is used; otherwise the copy stays unfolded. Mathematically the same function and input gradient; in floats the
sums are ordered differently, so as with the layout rare per-example flips are possible and counted. The number of
folded pairs is recorded (``eval_bn_folded``) and the choice is part of the chunk key; ``fold_bn=False``
(``--no-eval-fold-bn``) evaluates the model as it is.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from bench.core.compilation import maybe_compile
from bench.core.config import EvalConfig
from bench.core.distributed import all_gather_objects
from bench.core.numerics import exact_fp32
from bench.core.store import atomic_torch_save, content_digest
from bench.data import Split
from bench.eval import indicators
from bench.eval.attacks import AAChecks, PGDTrace, autoattack, fgsm, pgd
from bench.eval.indicators import IndicatorOptions
from bench.models.architectures import feature_extractor_and_head

PENULTIMATE = "penultimate features"  # FeatureMap's default: the last hidden layer of the exported model


class FeatureMap(nn.Module):
    """x -> the features the feature gap is measured on: ``post(features(model)(x))``, where ``features`` is
    the model's last hidden layer (``feature_extractor_and_head``) and ``post`` an optional module after it (AFD's
    disentangler D1). ``what`` says in words what is measured; it is recorded with the gap."""

    def __init__(self, model: nn.Module, post: nn.Module | None = None, what: str = PENULTIMATE):
        super().__init__()
        self.model, self.post, self.what = model, post, what

    def forward(self, x: Tensor) -> Tensor:
        # Looked up at every call, not kept as a closure: a deep copy (Evaluator.prepare) must use its own weights.
        f = feature_extractor_and_head(self.model)[0](x)
        return f if self.post is None else self.post(f)


@dataclass
class Evaluator:
    test: Split
    cfg: EvalConfig
    eps: float
    device: torch.device
    seed: int = 0
    # The evaluated copy's weight layout: a runtime choice, not part of a run's meaning (see the module doc).
    memory_format: torch.memory_format = torch.channels_last
    # Data-parallel runs: chunk k of every measurement is computed by rank k % size and gathered (see run)
    world: Any = None
    # Fold each conv -> BatchNorm pair of the evaluated copy into one conv (see the module doc); a runtime choice
    fold_bn: bool = True
    # Indicators of attack failure measured with the evaluation (bench/eval/indicators.py); a runtime choice
    checks: IndicatorOptions = IndicatorOptions()

    def _batches(self, n: int):
        n = min(n, len(self.test))
        for i in range(0, n, self.cfg.batch_size):
            j = min(i + self.cfg.batch_size, n)
            x = self.test.images[i:j].to(self.device, non_blocking=True).float().div_(255)
            y = self.test.labels[i:j].to(self.device, non_blocking=True)
            yield x, y

    @staticmethod
    def prepare(model: nn.Module, memory_format: torch.memory_format = torch.channels_last,
                compile: bool = True) -> nn.Module:
        # A private fp32 copy in eval mode with its weights in ``memory_format``: the caller's model (and its
        # train/eval mode, memory format, dtype) is left untouched.
        model = copy.deepcopy(model).float().to(memory_format=memory_format).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        # compiled inside bench.core.compilation.compiling(True) (bench run --compile)
        return maybe_compile(model) if compile else model

    def ready(self, model: nn.Module) -> tuple[nn.Module, int]:
        """The copy every measurement runs on: ``prepare`` in this evaluator's layout, with its conv -> BatchNorm
        pairs folded when ``fold_bn`` (checked on the first test images); also returns how many pairs folded."""
        model = self.prepare(model, self.memory_format, compile=not self.fold_bn)
        folded = 0
        if self.fold_bn:
            probe = self.test.images[:16].to(self.device).float().div_(255)
            model, folded = fold_batchnorm_checked(model, probe, self.memory_format)
            model = maybe_compile(model)
        return model, folded

    @exact_fp32()  # true fp32 (no TF32) inside every measurement, whatever training or the user set; restored after
    def correct(self, model: nn.Module, n: int) -> Tensor:
        """Per-example clean correctness on the first n test images."""
        out = []
        with torch.inference_mode():
            for x, y in self._batches(n):
                out.append(model(x).argmax(1) == y)
        return torch.cat(out).cpu()

    @exact_fp32()
    def pgd_correct(self, model: nn.Module, n: int, *, return_gap: bool = False,
                    features: Callable[[Tensor], Tensor] | None = None):
        """Per-example correctness under PGD-20 against ``model``, and optionally the per-example feature gap
        ||f(x) - f(x')||_inf with f = ``features`` (default: ``model``'s last hidden layer). Both ``model`` and
        ``features`` must already be prepared (``prepare``)."""
        correct, gaps = [], []
        for k, _ in enumerate(range(0, min(n, len(self.test)), self.cfg.batch_size)):
            got = self._pgd_chunk(model, k, n, features)
            correct.append(got["ok"])
            gaps.append(got["gap"])
        correct = torch.cat(correct)
        return (correct, torch.cat(gaps)) if return_gap else correct

    def _chunk(self, k: int, n: int) -> tuple[Tensor, Tensor]:
        """Images (float in [0, 1], on the device) and labels of chunk k of the first n test images."""
        i = k * self.cfg.batch_size
        j = min(i + self.cfg.batch_size, n, len(self.test))
        x = self.test.images[i:j].to(self.device, non_blocking=True).float().div_(255)
        return x, self.test.labels[i:j].to(self.device, non_blocking=True)

    def _pgd_chunk(self, model: nn.Module, k: int, n: int, features, checks: bool = False) -> dict[str, Tensor]:
        """PGD-20 correctness ("ok") and feature gap ("gap") of chunk k; its random start depends only on (seed, k).
        With ``checks``, also the per-example flags of the cheap indicators (``indicators.cheap_flags``), read off
        the same attack: its x_adv and every accuracy are the same with or without them."""
        x, y = self._chunk(k, n)
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003 * k)
        feats = features if features is not None else feature_extractor_and_head(model)[0]
        trace = PGDTrace(y) if checks else None
        x_adv = pgd(model, x, y, eps=self.eps, step_size=self.cfg.pgd_step_size, steps=self.cfg.pgd_steps,
                    random_start=True, generator=gen, clamp_start=self.cfg.pgd_clamp_start, trace=trace)
        with torch.inference_mode():
            logits = model(x_adv)
            ok = logits.argmax(1) == y
            # Figure 1a: per-sample L-inf norm of the feature difference
            gap = (feats(x) - feats(x_adv)).flatten(1).abs().amax(1)
        got = {"ok": ok.cpu(), "gap": gap.float().cpu()}
        if trace is not None:  # the noise corner has its own stream: the attack's draws stay as they were
            noise = torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003 * k + 1)
            got.update(indicators.cheap_flags(model, x, y, x_adv, trace, logits, eps=self.eps, generator=noise))
        return got

    @staticmethod
    def gap_stats(gaps: Tensor, features: nn.Module | None) -> dict:
        """feature_gap (mean over the images), feature_gap_se (its standard error, sample std / sqrt(n)),
        feature_gap_n (n images) and feature_gap_of (which features: ``features.what``)."""
        gaps = gaps.double()
        se = float(gaps.std(unbiased=True) / len(gaps) ** 0.5) if len(gaps) > 1 else None
        return {"feature_gap": float(gaps.mean()), "feature_gap_se": se, "feature_gap_n": len(gaps),
                "feature_gap_of": getattr(features, "what", PENULTIMATE if features is None else "custom features")}

    @exact_fp32()
    def feature_gap_stats(self, model: nn.Module, n: int | None = None,
                          features: nn.Module | None = None) -> dict:
        """The feature gap of ``model`` (the exported model: PGD-20 attacks it) measured on ``features``
        (``Method.gap_features(net)``; default the model's last hidden layer), on the first n (default
        eval.n_gap) test images: {feature_gap, feature_gap_se, feature_gap_n, feature_gap_of}."""
        model = self.ready(model)[0]
        prepared = self.ready(features)[0] if features is not None else None
        _, gaps = self.pgd_correct(model, n if n is not None else self.cfg.n_gap, return_gap=True, features=prepared)
        return self.gap_stats(gaps, features)

    def feature_gap(self, model: nn.Module, n: int | None = None, features: nn.Module | None = None) -> float:
        return self.feature_gap_stats(model, n, features)["feature_gap"]

    @exact_fp32()
    def fgsm_pgd_accuracy(self, model: nn.Module, n: int | None = None) -> tuple[float, float]:
        """(FGSM accuracy, PGD accuracy) on the first n (default eval.n_gap) test images: the per-epoch
        catastrophic-overfitting probe of single-step methods. FGSM is one step of eps without random start; PGD
        is the evaluation's attack with a fixed-seed random start. The global RNG is not touched."""
        model = self.ready(model)[0]
        n = n if n is not None else self.cfg.n_gap
        f_ok = []
        for x, y in self._batches(n):
            x_adv = fgsm(model, x, y, eps=self.eps)
            with torch.inference_mode():
                f_ok.append(model(x_adv).argmax(1) == y)
        p_ok = self.pgd_correct(model, n)
        return float(torch.cat(f_ok).float().mean()), float(p_ok.float().mean())

    def accuracy(self, model: nn.Module, n: int | None = None) -> float:
        return float(self.correct(self.ready(model)[0], n or self.cfg.n_clean).float().mean())

    @exact_fp32()
    def run(self, model: nn.Module, log: Callable[[str], None] = lambda s: None,
            features: nn.Module | None = None, state_dir: Path | None = None) -> dict:
        """Every metric of ``model`` (the exported model); the feature gap is measured on ``features``
        (``Method.gap_features(net)``; default the model's last hidden layer) under the PGD-20 attack on ``model``.
        With ``state_dir``, finished chunks are stored there and reused (see the module doc)."""
        prepared = self.ready(features)[0] if features is not None else None
        model, folded = self.ready(model)
        cfg = self.cfg
        chunks = _Chunks(state_dir, self._key(model, prepared)) if state_dir is not None else None
        seconds: dict[str, float] = {}

        def measure(name: str, n: int, fn: Callable[[int], dict[str, Tensor]]) -> dict[str, Tensor]:
            return self._measure(name, n, fn, chunks, seconds)

        clean = measure("clean", cfg.n_clean, lambda k: self._clean_chunk(model, k))["ok"]
        log(f"clean {clean.float().mean():.4f} on {len(clean)}")
        metrics: dict = {"clean": float(clean.float().mean()), "n_clean": len(clean)}
        per_example = {"clean": _bits(clean)}
        pgd_ok = aa_ok = None
        checks = self.checks.enabled
        pgd_flags = radii_ok = None
        if cfg.n_pgd:
            got = self._measure("pgd20", cfg.n_pgd, lambda k: self._pgd_chunk(model, k, cfg.n_pgd, prepared, checks),
                                chunks, seconds, need=("ok", "gap") + (indicators.CHEAP if checks else ()))
            pgd_ok = got["ok"]
            if checks:
                pgd_flags, radii_ok = self._checks_of(got, model, chunks, seconds)
            metrics.update(pgd20=float(pgd_ok.float().mean()), n_pgd=len(pgd_ok),
                           **self.gap_stats(got["gap"], features))
            per_example["pgd20"] = _bits(pgd_ok)
            log(f"PGD-{cfg.pgd_steps} {metrics['pgd20']:.4f} on {len(pgd_ok)}")
        aa_checks = None
        if cfg.n_aa:
            got = self._measure("aa", cfg.n_aa, lambda k: self._aa_chunk(model, k), chunks, seconds,
                                need=("ok", "aa_checks") if checks else ("ok",))
            aa_ok, aa_checks = got["ok"], got.get("aa_checks")
            metrics.update(aa=float(aa_ok.float().mean()), n_aa=len(aa_ok))
            per_example["aa"] = _bits(aa_ok)
            log(f"AutoAttack {metrics['aa']:.4f} on {len(aa_ok)}")
        metrics["violations"] = self.check_order(clean, pgd_ok, aa_ok)
        if checks:
            found = indicators.summarise(pgd_flags, radii_ok, aa_checks, cfg.n_aa)
            metrics["indicators"], metrics["unreliable"] = found, indicators.unreliable(found)
            log(indicators.verdict(metrics["unreliable"]))
        metrics["per_example"] = per_example
        metrics["seconds"] = seconds
        metrics["eval_layout"] = layout_name(self.memory_format)
        metrics["eval_bn_folded"] = folded
        return metrics

    def _measure(self, name: str, n: int, fn: Callable[[int], dict[str, Tensor]], chunks: "_Chunks | None",
                 seconds: dict[str, float], need: tuple[str, ...] = ()) -> dict[str, Tensor]:
        """fn(k) -> tensors of chunk k, concatenated over the chunks of the first n test images; chunks already
        stored are loaded instead of recomputed (unless they lack a tensor named in ``need``: stored before the
        indicators, or without them), and ``seconds[name]`` is set to the compute they cost. With
        several ranks, rank r computes the chunks k = r mod size and every rank gathers all of them (a chunk's
        result depends only on k: the same per-example results as one process)."""
        rank, size = (self.world.rank, self.world.size) if self.world is not None else (0, 1)
        mine: dict[int, dict[str, Tensor]] = {}
        for k in range(-(-min(n, len(self.test)) // self.cfg.batch_size)):
            if k % size != rank:
                continue
            got = chunks.load(name, k) if chunks is not None else None
            if got is None or not set(need) <= set(got):
                t0 = time.perf_counter()
                got = fn(k)
                got["seconds"] = torch.tensor(time.perf_counter() - t0, dtype=torch.float64)
                if chunks is not None:
                    chunks.save(name, k, got)
            mine[k] = got
        if size > 1:
            for part in all_gather_objects({k: {key: v.cpu() for key, v in t.items()} for k, t in mine.items()}):
                mine.update(part)
        parts = [mine[k] for k in sorted(mine)]
        # seconds: summed over chunks (and ranks): the compute the measurement cost
        seconds[name] = sum(float(p.pop("seconds")) for p in parts)
        # only what every chunk holds: chunks stored with and without the indicators' flags can meet
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0] if all(key in p for p in parts)}

    def _checks_of(self, got: dict[str, Tensor], model: nn.Module, chunks: "_Chunks | None",
                   seconds: dict[str, float]) -> tuple[dict[str, Tensor], Tensor | None]:
        """The cheap indicators' flags taken out of the PGD-20 chunks (their seconds moved from ``pgd20`` to
        ``indicators``), and the costly ones measured on the first ``checks.n_costly`` images of the PGD set
        (seconds: ``indicators_subset``), stored in chunks of their own (named by the options, so other options
        never reuse them)."""
        flags = {name: got.pop(name) for name in indicators.CHEAP}
        spent = float(got.pop("check_seconds").sum())
        seconds["pgd20"] -= spent
        seconds["indicators"] = spent
        opts = self.checks
        n = min(opts.n_costly, self.cfg.n_pgd)
        if n < 1:
            return flags, None
        name = "checks-" + hashlib.sha256(repr(opts).encode()).hexdigest()[:8]

        def chunk(k: int) -> dict[str, Tensor]:
            x, y = self._chunk(k, n)
            return indicators.costly_flags(model, x, y, eps=self.eps, opts=opts, seed=self.seed + 1_000_003 * k)

        radii = self._measure(name, n, chunk, chunks, seconds)["radii_ok"]
        seconds["indicators_subset"] = seconds.pop(name)
        return flags, radii

    def _clean_chunk(self, model: nn.Module, k: int) -> dict[str, Tensor]:
        """Clean correctness of chunk k of the first eval.n_clean test images."""
        x, y = self._chunk(k, self.cfg.n_clean)
        with torch.inference_mode():
            return {"ok": (model(x).argmax(1) == y).cpu()}

    def _aa_chunk(self, model: nn.Module, k: int) -> dict[str, Tensor]:
        """AutoAttack robustness of chunk k of the first eval.n_aa test images (AutoAttack moves them itself)."""
        cfg = self.cfg
        i = k * cfg.batch_size
        j = min(i + cfg.batch_size, cfg.n_aa, len(self.test))
        x = self.test.images[i:j].float().div(255)
        aa = autoattack(model, x, self.test.labels[i:j], eps=self.eps, version="standard",
                        batch_size=cfg.batch_size, device=self.device, seed=self.seed,
                        contiguous_weights=False)  # prepared in self.memory_format; grads made NCHW
        checks = torch.tensor([[aa["checks"][key] for key in AAChecks.KEYS]], dtype=torch.float64)
        return {"ok": aa["robust"].cpu(), "aa_checks": checks}

    def _key(self, model: nn.Module, features: nn.Module | None) -> str:
        """What a stored chunk is valid for: the evaluated weights (and gap features) and the protocol."""
        proto = {"eval": dataclasses.asdict(self.cfg), "eps": self.eps, "seed": self.seed, "n_test": len(self.test),
                 "weights": content_digest(model.state_dict()),
                 "features": content_digest(features.state_dict()) if features is not None else None,
                 "layout": layout_name(self.memory_format), "fold_bn": self.fold_bn}
        return hashlib.sha256(json.dumps(proto, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @staticmethod
    def check_order(clean: Tensor, pgd_ok: Tensor | None, aa_ok: Tensor | None) -> list[str]:
        """AA <= PGD-20 <= clean, compared on the images the measurements share."""
        out = []
        accs = {"clean": clean}
        if pgd_ok is not None:
            accs["pgd20"] = pgd_ok
        if aa_ok is not None:
            accs["aa"] = aa_ok
        names = list(accs)
        for hi, lo in zip(names, names[1:]):
            n = min(len(accs[hi]), len(accs[lo]))
            a_hi, a_lo = float(accs[hi][:n].float().mean()), float(accs[lo][:n].float().mean())
            if a_lo > a_hi:
                out.append(f"{lo} accuracy {a_lo:.4f} > {hi} accuracy {a_hi:.4f} on the first {n} test images")
        return out


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every eval-mode BatchNorm2d that is the only consumer of a Conv2d's output (and consumes
    nothing else; each module called once) into that conv; the BatchNorm becomes an Identity. The pairs are read
    from ``torch.fx``'s graph of ``model``; a model that does not trace is searched child by child. Returns the
    number of pairs folded. Unchecked: use :func:`fold_batchnorm_checked`."""
    import collections

    import torch.fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - data-dependent Python in forward: look inside instead
        return sum(fold_batchnorm(child) for child in model.children())
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn, src = model.get_submodule(node.target), node.args[0]
        if (type(bn) is not nn.BatchNorm2d or bn.training or bn.running_mean is None
                or not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1):
            continue
        conv = model.get_submodule(src.target)
        if type(conv) is nn.Conv2d and calls[src.target] == 1 and calls[node.target] == 1:
            pairs.append((src.target, node.target))
    for conv_name, bn_name in pairs:
        fused = fuse_conv_bn_eval(model.get_submodule(conv_name), model.get_submodule(bn_name))
        model.set_submodule(conv_name, fused)
        model.set_submodule(bn_name, nn.Identity())
    return len(pairs)


def fold_batchnorm_checked(model: nn.Module, probe: Tensor,
                           memory_format: torch.memory_format) -> tuple[nn.Module, int]:
    """A folded copy of the (eval-mode, prepared) ``model`` and its number of folded pairs, or ``(model, 0)``
    when nothing folds or the folded copy's outputs on ``probe`` differ from the model's by more than 1e-4 of
    their scale (a forward that uses its modules in a way the graph did not show)."""
    folded = copy.deepcopy(model)
    n = fold_batchnorm(folded)
    if n == 0:
        return model, 0
    folded = folded.to(memory_format=memory_format)
    for p in folded.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        want, got = model(probe), folded(probe)
    if (not isinstance(want, Tensor) or not isinstance(got, Tensor) or want.shape != got.shape
            or not torch.allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(want.abs().max())))):
        return model, 0
    return folded, n


LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}


def layout_name(memory_format: torch.memory_format) -> str:
    return next(k for k, v in LAYOUTS.items() if v == memory_format)


def _bits(flags: Tensor) -> str:
    """Per-example booleans as a compact string of '0'/'1', one character per test image, in test-set order."""
    return "".join("1" if b else "0" for b in flags.tolist())


class _Chunks:
    """Finished evaluation chunks under ``<dir>/eval-<key>/<measure>-<k>.pt``, written atomically. Chunks of
    another key (other weights or protocol) are never read: a retrained model starts its evaluation afresh."""

    def __init__(self, root: Path, key: str):
        self.dir = Path(root) / f"eval-{key}"

    def _path(self, name: str, k: int) -> Path:
        return self.dir / f"{name}-{k:05d}.pt"

    def load(self, name: str, k: int) -> dict[str, Tensor] | None:
        path = self._path(name, k)
        if not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.pop("digest", None) != content_digest(blob):
                raise ValueError("digest mismatch")
            return blob
        except Exception:  # noqa: BLE001 - a garbled chunk is recomputed, never trusted
            return None

    def save(self, name: str, k: int, tensors: dict[str, Tensor]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        blob = {key: v.detach().cpu() for key, v in tensors.items()}
        atomic_torch_save({**blob, "digest": content_digest(blob)}, self._path(name, k))
